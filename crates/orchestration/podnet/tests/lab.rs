//! Whole-lab scenarios: `podnet lab up` builds a real cluster out of namespaces, `lab
//! check` proves the networking model with real packets, and `lab down` leaves nothing.
//! Each test uses its own lab name (unique per process), removed on drop, also on failure.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PODNET: &str = env!("CARGO_BIN_EXE_podnet");

struct Lab {
    name: String,
}

impl Lab {
    fn up(tag: &str, extra: &[&str]) -> Lab {
        assert!(
            nix::unistd::geteuid().is_root(),
            "lab tests need root (they do not skip)"
        );
        let name = format!("t{}{tag}", std::process::id() % 100000);
        let lab = Lab { name };
        let out = lab.run(&[&["up"], extra].concat());
        assert!(out.status.success(), "lab up failed:\n{}", text(&out));
        lab
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(PODNET);
        cmd.arg("lab").arg(args[0]).arg("--name").arg(&self.name);
        cmd.args(&args[1..]);
        cmd.output().expect("run podnet lab")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podnet lab {args:?} failed:\n{}",
            text(&out)
        );
        text(&out)
    }

    fn namespaces(&self) -> Vec<String> {
        let prefix = format!("pn-{}-", self.name);
        std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix))
            .collect()
    }

    fn apply(&self, yaml: &str) -> Output {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), yaml).unwrap();
        self.run(&["apply", "-f", f.path().to_str().unwrap()])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(PODNET)
            .args(["lab", "down", "--name", &self.name])
            .output();
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn lab_proves_the_model(mode: &str, tag: &str) {
    let lab = Lab::up(tag, &["--nodes", "2", "--mode", mode]);
    let status = lab.ok(&["status"]);
    for want in ["node-1", "node-2", "10.244.", "echo-1", "web", "Running"] {
        assert!(status.contains(want), "status lacks {want}:\n{status}");
    }
    let check = lab.ok(&["check"]);
    assert!(
        check.contains("all") && check.contains("probes passed"),
        "{check}"
    );
    // 6 pods: 36 pod→pod, 2×6 node→pod, 1 localhost, 6 external.
    assert!(check.contains("55 probes"), "{check}");

    // Bad manifests are refused with the object and field named, and change nothing.
    let bad = lab.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: fine}\nspec: {containers: [{name: a, image: podnet/echo}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: broken}\nspec: {containers: [{name: a, image: podnet/echo, ports: [{containerPort: x}]}]}\n",
    );
    assert!(!bad.status.success());
    let msg = text(&bad);
    assert!(
        msg.contains("Pod default/broken") && msg.contains("containerPort"),
        "{msg}"
    );
    assert!(
        !lab.ok(&["status"]).contains("fine"),
        "nothing may be applied"
    );

    let name = lab.name.clone();
    drop(lab);
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("pn-{name}-")))
        .collect();
    assert!(left.is_empty(), "lab down left namespaces: {left:?}");
    assert!(!std::path::Path::new(&format!("/run/podnet/labs/{name}")).exists());
}

#[test]
fn host_gw_lab_proves_the_model_and_down_leaves_nothing() {
    lab_proves_the_model("host-gw", "h");
}

#[test]
fn vxlan_lab_proves_the_model_and_down_leaves_nothing() {
    lab_proves_the_model("vxlan", "v");
}

#[test]
fn lab_down_cleans_up_after_a_killed_lab_up() {
    assert!(nix::unistd::geteuid().is_root());
    let lab = Lab {
        name: format!("t{}k", std::process::id() % 100000),
    };
    let mut child = Command::new(PODNET)
        .args(["lab", "up", "--name", &lab.name, "--nodes", "1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it has made namespaces.
    let deadline = Instant::now() + Duration::from_secs(20);
    while lab.namespaces().len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!lab.namespaces().is_empty());
    lab.ok(&["down"]);
    assert!(lab.namespaces().is_empty(), "{:?}", lab.namespaces());
}
