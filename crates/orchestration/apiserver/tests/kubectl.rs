//! Orchestration test: real kubectls against `serve` on 127.0.0.1 with a temporary
//! kubeconfig (plain HTTP, no auth), each with its default validation: the machine's
//! `/usr/bin/kubectl` (Google's 1.32 here; server-side `fieldValidation=Strict` through the
//! OpenAPI v3 documents) and Debian's kubernetes-client 1.20 (client-side validation from
//! the OpenAPI v2 document), which `scripts/setup` unpacks to [`DEBIAN_KUBECTL`].

use std::path::Path;
use std::process::{Command, Output};

/// Where `scripts/setup` unpacks Debian's kubernetes-client (without installing it, so it
/// never replaces a kubectl the machine already has).
const DEBIAN_KUBECTL: &str = "/var/cache/podnet/kubernetes-client/usr/bin/kubectl";

/// Every kubectl the test runs against the server: each must be present.
fn kubectls() -> Vec<&'static str> {
    let all = ["/usr/bin/kubectl", DEBIAN_KUBECTL];
    for k in all {
        assert!(Path::new(k).exists(), "{k} missing: run ./scripts/setup");
    }
    all.to_vec()
}

fn minor_version(bin: &str) -> u32 {
    let out = Command::new(bin)
        .args(["version", "--client", "-o", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["clientVersion"]["minor"]
        .as_str()
        .unwrap()
        .trim_end_matches('+')
        .parse()
        .unwrap()
}

struct Kubectl {
    bin: &'static str,
    dir: tempfile::TempDir,
}

impl Kubectl {
    async fn start(bin: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(podnet_apiserver::serve(
            listener,
            podnet_apiserver::Config::default(),
        ));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config"),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: http://127.0.0.1:{port}\n\
                 users:\n- name: lab\n  user: {{}}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n\
                 current-context: lab\n"
            ),
        )
        .unwrap();
        Kubectl { bin, dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Runs kubectl off the async runtime (the server runs on it).
    async fn run(&self, args: &[&str]) -> Output {
        let config = self.path("config");
        let cache = self.path("cache");
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let bin = self.bin;
        tokio::task::spawn_blocking(move || {
            Command::new(bin)
                .arg(format!("--kubeconfig={}", config.display()))
                .arg(format!("--cache-dir={}", cache.display()))
                .args(&args)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{} {args:?} failed:\n{stdout}\n{}",
            self.bin,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

fn write(p: &Path, s: &str) {
    std::fs::write(p, s).unwrap();
}

const MANIFEST: &str = "\
apiVersion: v1
kind: Node
metadata:
  name: worker-1
status:
  conditions:
  - type: Ready
    status: \"True\"
  addresses:
  - type: InternalIP
    address: 192.168.50.11
---
apiVersion: v1
kind: Pod
metadata:
  name: echo
  labels:
    app: echo
spec:
  containers:
  - name: echo
    image: podnet/echo
    ports:
    - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  type: NodePort
  selector:
    app: echo
  ports:
  - port: 80
    targetPort: 8080
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_get_delete() {
    for bin in kubectls() {
        create_get_delete(Kubectl::start(bin).await).await;
    }
}

async fn create_get_delete(k: Kubectl) {
    let file = k.path("app.yaml");
    write(&file, MANIFEST);
    let out = k.ok(&["create", "-f", file.to_str().unwrap()]).await;
    assert!(
        out.contains("pod/echo created") && out.contains("service/echo created"),
        "{out}"
    );

    let pods = k.ok(&["get", "pods", "-A"]).await;
    assert!(
        pods.contains("NAMESPACE") && pods.contains("default") && pods.contains("echo"),
        "{pods}"
    );
    assert!(
        pods.contains("worker-1") && pods.contains("Pending"),
        "{pods}"
    );
    let nodes = k.ok(&["get", "nodes"]).await;
    assert!(
        nodes.contains("worker-1")
            && nodes.contains("Ready")
            && nodes.contains("10.244.0.0/24")
            && nodes.contains("192.168.50.11"),
        "{nodes}"
    );
    let svc = k.ok(&["get", "svc"]).await;
    assert!(
        svc.contains("NodePort") && svc.contains("10.96.1.0") && svc.contains("80:30000/TCP"),
        "{svc}"
    );
    let eps = k.ok(&["get", "endpointslices"]).await;
    assert!(eps.contains("echo-"), "{eps}");
    let ns = k.ok(&["get", "ns"]).await;
    assert!(ns.contains("kube-system"), "{ns}");
    let json = k.ok(&["get", "pod", "echo", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["spec"]["nodeName"], "worker-1");

    // The pod is bound to worker-1, where no kubelet runs: a graceful delete only marks it
    // (kubectl would wait for ever), a forced one removes it, as in a real cluster.
    let out = k.ok(&["delete", "pod", "echo", "--wait=false"]).await;
    assert!(out.contains("pod \"echo\" deleted"), "{out}");
    let marked = k
        .ok(&[
            "get",
            "pod",
            "echo",
            "-o",
            "jsonpath={.metadata.deletionGracePeriodSeconds}",
        ])
        .await;
    assert_eq!(marked.trim(), "30");
    let out = k
        .ok(&["delete", "pod", "echo", "--grace-period=0", "--force"])
        .await;
    assert!(out.contains("\"echo\" force deleted"), "{out}");
    let out = k
        .ok(&["delete", "--ignore-not-found", "-f", file.to_str().unwrap()])
        .await;
    assert!(out.contains("service \"echo\" deleted"), "{out}");
    let out = k.run(&["get", "pod", "echo"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let pods = k.ok(&["get", "pods", "-A"]).await;
    assert!(!pods.contains("echo"), "{pods}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_bad_manifest_names_the_field() {
    for bin in kubectls() {
        bad_manifest_names_the_field(Kubectl::start(bin).await).await;
    }
}

async fn bad_manifest_names_the_field(k: Kubectl) {
    let file = k.path("bad.yaml");
    write(
        &file,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports:\n  - port: 70000\n    protocol: TCP\n",
    );
    let out = k.run(&["create", "-f", file.to_str().unwrap()]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("spec.ports[0].port") && err.contains("\"bad\""),
        "{err}"
    );
    let svc = k.ok(&["get", "svc"]).await;
    assert!(!svc.contains("bad"), "{svc}");
}

/// A field the types do not know: kubectl ≥ 1.27 asks for Strict and the server refuses the
/// object, naming the field; kubectl 1.20 sends no fieldValidation, so the server's default
/// (Warn) creates it without the field and kubectl prints the warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_unknown_field() {
    for bin in kubectls() {
        let k = Kubectl::start(bin).await;
        let file = k.path("typo.yaml");
        write(
            &file,
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: typo\nspec:\n  selector:\n    app: x\n  ports:\n  - port: 80\n    targetPrt: 8080\n",
        );
        let out = k.run(&["create", "-f", file.to_str().unwrap()]).await;
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        let svc = k.ok(&["get", "svc"]).await;
        if minor_version(bin) >= 27 {
            assert!(!out.status.success(), "{bin}: {err}");
            assert!(
                err.contains("strict decoding error: unknown field \"spec.ports[0].targetPrt\""),
                "{bin}: {err}"
            );
            assert!(!svc.contains("typo"), "{bin}: {svc}");
        } else {
            assert!(out.status.success(), "{bin}: {err}");
            assert!(
                err.contains("Warning: unknown field \"spec.ports[0].targetPrt\""),
                "{bin}: {err}"
            );
            assert!(svc.contains("typo"), "{bin}: {svc}");
        }
    }
}
