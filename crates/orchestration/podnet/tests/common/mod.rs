//! Test fixtures: a node namespace and pod namespaces with a unique prefix, removed on
//! drop (also when the test fails), and a way to exec the plugin exactly as a runtime does.

#![allow(dead_code)]

use podnet_cni_spec::naming::{is_host_veth_name, is_tombstone_name};
use podnet_netlink::{Netlink, netns};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub const PODNET: &str = env!("CARGO_BIN_EXE_podnet");

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces and must run as root (it does not skip)"
    );
}

/// A node namespace plus pods, all removed on drop.
pub struct Node {
    pub prefix: String,
    pub node: PathBuf,
    pub work: tempfile::TempDir,
    names: Vec<String>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Node {
    pub fn new() -> Node {
        require_root();
        let prefix = format!(
            "pnt{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let name = format!("{prefix}-node");
        let node = netns::create_named(&name).expect("create node namespace");
        Node {
            prefix,
            node,
            work: tempfile::tempdir().unwrap(),
            names: vec![name],
        }
    }

    /// A fresh pod namespace.
    pub fn pod(&mut self, id: &str) -> PathBuf {
        let name = format!("{}-{id}", self.prefix);
        let path = netns::create_named(&name).expect("create pod namespace");
        self.names.push(name);
        path
    }

    pub fn data_dir(&self) -> PathBuf {
        self.work.path().join("ipam")
    }

    /// A single-plugin config for this node.
    pub fn conf(&self, version: &str, ipam_ranges: &str) -> String {
        format!(
            r#"{{"cniVersion": "{version}", "name": "testnet", "type": "podnet", "bridge": "pnbr0",
                "ipam": {{"ranges": {ipam_ranges}, "dataDir": "{}"}}}}"#,
            self.data_dir().display()
        )
    }

    pub fn v4_conf(&self) -> String {
        self.conf("1.1.0", r#"[[{"subnet": "10.99.0.0/24"}]]"#)
    }

    /// Runs the plugin inside the node namespace.
    pub fn plugin(&self, env: &[(&str, &str)], stdin: &str) -> Outcome {
        exec_in(&self.node, PODNET, env, stdin)
    }

    pub fn add(&self, conf: &str, id: &str, ns: &Path) -> Outcome {
        self.plugin(&attach_env("ADD", id, ns), conf)
    }

    pub fn del(&self, conf: &str, id: &str, ns: &Path) -> Outcome {
        self.plugin(&attach_env("DEL", id, ns), conf)
    }

    pub fn netlink(&self) -> Netlink {
        Netlink::open_in(netns::open(&self.node).unwrap()).unwrap()
    }

    /// The IPAM table's entries (address → container ID).
    pub fn allocations(&self) -> Vec<(String, String)> {
        let path = self.data_dir().join("testnet/allocations.json");
        let Ok(bytes) = std::fs::read(&path) else {
            return Vec::new();
        };
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        v["entries"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(ip, o)| (ip.clone(), o["containerID"].as_str().unwrap().to_string()))
            .collect()
    }

    /// Host veths podnet made on the node.
    /// Host veths of live attachments.
    pub fn host_veths(&self) -> Vec<String> {
        self.veths_named(is_host_veth_name)
    }

    /// Veth pairs DEL retired and the reaper has not deleted yet.
    pub fn retired_veths(&self) -> Vec<String> {
        self.veths_named(is_tombstone_name)
    }

    fn veths_named(&self, f: fn(&str) -> bool) -> Vec<String> {
        self.netlink()
            .links()
            .unwrap()
            .into_iter()
            .filter(|l| f(&l.name) && l.kind.as_deref() == Some("veth"))
            .map(|l| l.name)
            .collect()
    }

    /// Waits (up to 5 s) until DEL's detached reapers have deleted every retired pair.
    pub fn wait_reaped(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.retired_veths();
            if left.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "retired veths not reaped: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn remove_pod(&mut self, ns: &Path) {
        let name = ns.file_name().unwrap().to_str().unwrap().to_string();
        netns::delete_named(&name).unwrap();
        self.names.retain(|n| *n != name);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for n in self.names.drain(..).rev() {
            let _ = netns::delete_named(&n);
        }
    }
}

pub fn attach_env<'a>(cmd: &'a str, id: &'a str, ns: &'a Path) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", id),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", ns.to_str().unwrap()),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts success and returns the parsed result.
    pub fn ok(&self) -> Value {
        assert_eq!(self.code, Some(0), "plugin failed: {self:?}");
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts failure with the spec error `code` and returns the error object.
    pub fn err(&self, code: u64) -> Value {
        assert_ne!(
            self.code,
            Some(0),
            "plugin unexpectedly succeeded: {self:?}"
        );
        let v = self.json();
        assert_eq!(v["code"].as_u64(), Some(code), "wrong error code: {self:?}");
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "error without msg: {self:?}"
        );
        v
    }

    pub fn first_ip(&self) -> IpAddr {
        let v = self.ok();
        v["ips"][0]["address"]
            .as_str()
            .unwrap()
            .parse::<ipnet::IpNet>()
            .unwrap()
            .addr()
    }
}

/// Execs `bin` with a clean environment plus `env`, inside `ns`, feeding `stdin`.
pub fn exec_in(ns: &Path, bin: &str, env: &[(&str, &str)], stdin: &str) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fd = netns::open(ns).unwrap();
    // A child inherits the namespace of the thread that spawns it.
    let mut child = std::thread::scope(|s| {
        s.spawn(|| {
            let _inside = netns::enter(&fd).unwrap();
            cmd.spawn().unwrap()
        })
        .join()
        .unwrap()
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Outcome {
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Serves one TCP connection in `ns` on `ip:port`: replies with the peer address it saw.
pub fn serve_once(ns: &Path, ip: IpAddr, port: u16) -> std::thread::JoinHandle<()> {
    let listener = netns::run_in(netns::open(ns).unwrap(), || TcpListener::bind((ip, port)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        conn.write_all(format!("peer={}", peer.ip()).as_bytes())
            .unwrap();
    })
}

/// Connects from `ns` to `ip:port` and returns what the server said.
pub fn connect_from(ns: &Path, ip: IpAddr, port: u16) -> std::io::Result<String> {
    netns::run_in(netns::open(ns).unwrap(), || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(3))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .unwrap()
}
