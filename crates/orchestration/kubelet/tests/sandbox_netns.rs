//! Netns integration: a pod sandbox made the way the kubelet makes it (named namespace +
//! CNI ADD through the conflist executor + a process started inside), with Debian's
//! reference bridge + host-local plugins, inside a test node namespace; then torn down
//! (kill, DEL, namespace deleted) with nothing left. Needs root; makes only namespaces
//! named `pnkt<pid>…` and removes them, also on failure.

use podnet_kubelet::cni::{Attachment, ConfList, Runtime};
use podnet_kubelet::echo;
use podnet_kubelet::plan::{self, ProcessSpec};
use podnet_kubelet::sandbox::{self, ExitLog, SandboxSpec};
use podnet_netlink::netns;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PLUGINS: &str = "/usr/lib/cni";

/// A named namespace removed on drop.
struct Ns(String);

impl Ns {
    fn new(name: String) -> Ns {
        let _ = netns::delete_named(&name);
        netns::create_named(&name).expect("create namespace");
        Ns(name)
    }
    fn path(&self) -> PathBuf {
        netns::named_path(&self.0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete_named(&self.0);
    }
}

struct Fixture {
    node: Ns,
    tmp: tempfile::TempDir,
    rt: Runtime,
    bridge: String,
}

fn fixture(tag: &str) -> Fixture {
    let pid = std::process::id();
    let node = Ns::new(format!("pnkt{pid}{tag}node"));
    let tmp = tempfile::tempdir().unwrap();
    let rt = Runtime {
        plugin_dirs: vec![PLUGINS.into()],
        cache_dir: tmp.path().join("cache"),
        exec_netns: Some(node.path()),
    };
    Fixture {
        node,
        bridge: format!("pk{}{tag}", pid % 100_000),
        tmp,
        rt,
    }
}

impl Fixture {
    fn ipam_dir(&self) -> PathBuf {
        self.tmp.path().join("ipam")
    }

    fn conflist(&self, extra: Option<serde_json::Value>) -> ConfList {
        let mut plugins = vec![serde_json::json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "dataDir": self.ipam_dir(),
                "ranges": [[{"subnet": "10.99.7.0/24"}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        })];
        plugins.extend(extra);
        let v =
            serde_json::json!({"cniVersion": "1.0.0", "name": "kubelet-test", "plugins": plugins});
        ConfList::parse(&serde_json::to_vec(&v).unwrap()).unwrap()
    }

    fn sandbox(&self, pod: &str, cid: &str) -> (Ns, SandboxSpec) {
        // The spec's namespace is made by apply_sandbox; the guard only cleans up.
        let name = format!("pnkt{}{pod}", std::process::id());
        let guard = Ns(name.clone());
        let spec = SandboxSpec {
            netns_name: name.clone(),
            attachment: Attachment {
                container_id: cid.into(),
                netns: netns::named_path(&name).display().to_string(),
                ifname: plan::POD_IFNAME.into(),
                args: vec![
                    ("IgnoreUnknown".into(), "1".into()),
                    ("K8S_POD_NAMESPACE".into(), "default".into()),
                    ("K8S_POD_NAME".into(), pod.into()),
                ],
                capability_args: Default::default(),
            },
        };
        (guard, spec)
    }

    /// Links in the node namespace other than loopback and the bridge.
    fn node_veths(&self) -> Vec<String> {
        let out = std::process::Command::new("ip")
            .args(["-n", &self.node.0, "-o", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_string())
            .filter(|n| n != "lo" && *n != self.bridge)
            .collect()
    }

    fn reserved_ips(&self) -> Vec<String> {
        let dir = self.ipam_dir().join("kubelet-test");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return vec![];
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<IpAddr>().is_ok())
            .collect()
    }
}

fn ns_inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn sandbox_lifecycle_leaves_nothing() {
    let f = fixture("a");
    let list = f.conflist(None);
    let (_guard, spec) = f.sandbox("web", "0123456789abcdef0123456789abcdef");

    let result = sandbox::apply_sandbox(&f.rt, &list, &spec).unwrap();
    let ips = plan::plan_pod_ips(&result);
    assert_eq!(ips.len(), 1, "{result}");
    let IpAddr::V4(ip) = ips[0] else {
        panic!("not IPv4: {}", ips[0])
    };
    assert_eq!(ip.octets()[..3], [10, 99, 7]);
    assert_eq!(f.reserved_ips(), vec![ip.to_string()]);
    assert_eq!(f.node_veths().len(), 1);

    // A container process runs inside the pod's namespace, in its own process group.
    let exits = ExitLog::default();
    let log = f.tmp.path().join("pods/uid/sleep.log");
    let proc_spec = ProcessSpec {
        program: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            "ip -o addr show dev eth0; exec sleep 300".into(),
        ],
        env: vec![("PATH".into(), plan::CONTAINER_PATH.into())],
        cwd: "/".into(),
        resolv_conf: None,
        service_account: None,
    };
    let p = sandbox::start_process(Some(&spec.netns_path()), &proc_spec, &log, &exits).unwrap();
    assert!(sandbox::is_alive(p.pid, p.start_ticks));
    assert_eq!(
        ns_inode(Path::new(&format!("/proc/{}/ns/net", p.pid))),
        ns_inode(&spec.netns_path())
    );
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&format!("inet {ip}/24")) {
            break;
        }
        assert!(std::time::Instant::now() < until, "log: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The echo workload in the pod answers the node with the node's own address as peer
    // (the bridge gateway: no NAT between node and pod).
    let pod_fd = netns::open(spec.netns_path()).unwrap();
    let listener = netns::run_in(&pod_fd, || std::net::TcpListener::bind((ip, 8080)))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let servers = echo::Servers {
                tcp: vec![tokio::net::TcpListener::from_std(listener).unwrap()],
                udp: vec![],
                sctp: None,
            };
            let id = echo::Identity {
                pod: "web".into(),
                namespace: "default".into(),
                ip: ip.to_string(),
                node: "n1".into(),
                container: "c".into(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), echo::serve(id, servers)).await;
        })
    });
    let node_fd = netns::open(f.node.path()).unwrap();
    let line = netns::run_in(&node_fd, || {
        use std::io::Read;
        let mut c =
            TcpStream::connect_timeout(&SocketAddr::from((ip, 8080)), Duration::from_secs(5))
                .unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    })
    .unwrap();
    let reply = echo::parse_reply(&line).unwrap_or_else(|| panic!("bad reply {line:?}"));
    assert_eq!(reply.pod, "web");
    assert_eq!(reply.peer.ip().to_string(), "10.99.7.1");
    drop(server);

    // Teardown: kill, DEL, delete the namespace.
    sandbox::stop_processes(&[p], Duration::from_secs(2)).unwrap();
    assert!(!sandbox::is_alive(p.pid, p.start_ticks));
    sandbox::teardown_sandbox(&f.rt, Some(&list), &spec).unwrap();
    assert!(!spec.netns_path().exists());
    assert!(f.reserved_ips().is_empty(), "{:?}", f.reserved_ips());
    assert!(f.node_veths().is_empty(), "{:?}", f.node_veths());
    // Teardown is idempotent.
    sandbox::teardown_sandbox(&f.rt, Some(&list), &spec).unwrap();
}

#[test]
fn failed_add_is_undone() {
    let f = fixture("b");
    // bridge succeeds, then a plugin that does not exist fails the chain.
    let list = f.conflist(Some(serde_json::json!({"type": "no-such-plugin"})));
    let (_guard, spec) = f.sandbox("bad", "fedcba9876543210fedcba9876543210");
    let err = sandbox::apply_sandbox(&f.rt, &list, &spec).unwrap_err();
    assert!(format!("{err:#}").contains("no-such-plugin"), "{err:#}");
    assert!(!spec.netns_path().exists());
    assert!(f.reserved_ips().is_empty(), "{:?}", f.reserved_ips());
    assert!(f.node_veths().is_empty(), "{:?}", f.node_veths());
}

#[test]
fn a_stale_namespace_is_replaced() {
    let f = fixture("c");
    let list = f.conflist(None);
    let (_guard, spec) = f.sandbox("stale", "00112233445566778899aabbccddeeff");
    netns::create_named(&spec.netns_name).unwrap();
    // Mark the stale namespace: its loopback is up (a fresh one's is down; bridge leaves
    // loopback alone).
    let lo_up = || {
        let out = std::process::Command::new("ip")
            .args(["-n", &spec.netns_name, "-o", "link", "show", "lo"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(",UP")
    };
    let st = std::process::Command::new("ip")
        .args(["-n", &spec.netns_name, "link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(lo_up());
    sandbox::apply_sandbox(&f.rt, &list, &spec).unwrap();
    assert!(!lo_up(), "the stale namespace was reused");
    sandbox::teardown_sandbox(&f.rt, Some(&list), &spec).unwrap();
    assert!(f.reserved_ips().is_empty());
}
