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
        namespaces_of(&self.name)
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

/// The network namespaces of lab `name`.
fn namespaces_of(name: &str) -> Vec<String> {
    let prefix = format!("pn-{name}-");
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect()
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
    // 6 pods: 36 pod→pod, 2×6 node→pod, 1 localhost, 6 external; Services: 8 sources ×
    // 2 cluster IPs (one without endpoints, refused), the node port on 2 nodes.
    assert!(check.contains("73 probes"), "{check}");
    assert!(
        check.contains("node port 30080 on every node") && check.contains("default/nobody:80"),
        "{check}"
    );
    if mode == "vxlan" {
        // The overlay's outer packets are not tracked (the agent's tunnel-* chains), though
        // the check just sent cross-node traffic through the tunnel.
        let node = format!("pn-{}-node-1", lab.name);
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &node,
                "conntrack",
                "-L",
                "-p",
                "udp",
                "--dport",
                "4789",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let flows = String::from_utf8_lossy(&out.stdout);
        assert!(
            !flows.contains("dport=4789"),
            "tracked tunnel packets:\n{flows}"
        );
    }

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
    let left = namespaces_of(&name);
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

fn routes_in(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "route", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pod namespace holding `ip`.
fn pod_netns(lab: &Lab, ip: &str) -> String {
    lab.namespaces()
        .into_iter()
        .filter(|n| n.contains("-pod-"))
        .find(|n| {
            let out = Command::new("ip")
                .args(["-n", n, "-4", "addr"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&format!("inet {ip}/"))
        })
        .unwrap_or_else(|| panic!("no pod namespace has {ip}"))
}

fn pod_ip_on(lab: &Lab, node: &str) -> String {
    let out = lab.ok(&[
        "kubectl",
        "--",
        "get",
        "pods",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.podIP} {.spec.nodeName}{\"\\n\"}{end}",
    ]);
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() == 3 && f[0].starts_with("echo") && f[2] == node)
        .map(|f| f[1].to_string())
        .unwrap_or_else(|| panic!("no echo pod on {node}:\n{out}"))
}

fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let fd = podnet_netlink::netns::open(podnet_netlink::netns::named_path(ns)).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _g = podnet_netlink::netns::enter(&fd).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// A node leaves (its Node object is deleted): the other node's route to its pods goes.
/// It comes back with the same pod CIDR: the route returns and the model holds again. Then
/// the agent is killed and restarted while a TCP connection crosses the nodes: the
/// connection survives and nothing is reprogrammed.
#[test]
fn host_gw_node_leaves_and_returns_and_an_agent_restart_keeps_connections() {
    node_leaves_and_returns("host-gw", "n", |cidr| format!("{cidr} via 172.18.0.12"));
}

#[test]
fn vxlan_node_leaves_and_returns_and_an_agent_restart_keeps_connections() {
    node_leaves_and_returns("vxlan", "x", |cidr| {
        let network = cidr.split('/').next().unwrap_or_default();
        format!("{cidr} via {network} dev podnet.vxlan")
    });
}

/// `route(podCIDR)`: the route node-1 must have to node-2's pods.
fn node_leaves_and_returns(mode: &str, tag: &str, route: fn(&str) -> String) {
    use std::io::{Read, Write};
    let lab = Lab::up(tag, &["--nodes", "2", "--mode", mode]);
    // Which /24 node-2 got depends on the order the nodes registered in.
    let cidr = lab.ok(&[
        "kubectl",
        "--",
        "get",
        "node",
        "node-2",
        "-o",
        "jsonpath={.spec.podCIDR}",
    ]);
    let cidr = cidr.trim();
    let route = &route(cidr);
    let ns1 = format!("pn-{}-node-1", lab.name);
    wait_for("a route to node-2's pods", || {
        routes_in(&ns1).contains(route)
    });

    let node2 = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-2\n  labels: {{kubernetes.io/hostname: node-2}}\nspec:\n  podCIDR: {cidr}\n  podCIDRs: [{cidr}]\nstatus:\n  addresses: [{{type: InternalIP, address: 172.18.0.12}}]\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
    );
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), node2).unwrap();
    let file = f.path().to_str().unwrap();
    lab.ok(&["delete", "-f", file]);
    wait_for("node-2's route to go", || !routes_in(&ns1).contains(cidr));
    lab.ok(&["apply", "-f", file]);
    wait_for("node-2's route to return", || {
        routes_in(&ns1).contains(route)
    });
    lab.ok(&["check"]);

    // A connection from a pod on node-1 to a listener in a pod on node-2.
    let (ip1, ip2) = (pod_ip_on(&lab, "node-1"), pod_ip_on(&lab, "node-2"));
    let (pns1, pns2) = (pod_netns(&lab, &ip1), pod_netns(&lab, &ip2));
    let listener = in_netns(&pns2, || {
        std::net::TcpListener::bind((ip2.as_str(), 7000)).unwrap()
    });
    let mut client = in_netns(&pns1, || {
        std::net::TcpStream::connect((ip2.as_str(), 7000)).unwrap()
    });
    let (mut server, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip().to_string(), ip1, "no NAT between pods");
    client.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    server.read_exact(&mut buf).unwrap();

    // Kill node-1's agent and start it again with the same command line.
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("/run/podnet/labs/{}/lab.json", lab.name)).unwrap(),
    )
    .unwrap();
    let pid = rec["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "agent" && p["member"] == "node-1")
        .unwrap()["pid"]
        .as_u64()
        .unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let routes_before = routes_in(&ns1);
    let mut agent = in_netns(&ns1, || {
        Command::new(&args[0])
            .args(&args[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        agent.try_wait().unwrap(),
        None,
        "the restarted agent exited"
    );
    client.write_all(b"after!").unwrap();
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after!");
    assert_eq!(
        routes_in(&ns1),
        routes_before,
        "a restart must not reprogram routes"
    );
    lab.ok(&["check"]);
    agent.kill().unwrap();
    agent.wait().unwrap();
}

const SERVICES_MANIFEST: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: s-1, labels: {app: s, solo: \"yes\"}}
spec:
  nodeName: node-1
  containers: [{name: echo, image: podnet/echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: s-2, labels: {app: s}}
spec:
  nodeName: node-1
  containers: [{name: echo, image: podnet/echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  nodeName: node-2
  containers: [{name: echo, image: podnet/echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: s}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: s}
  ports: [{port: 80, targetPort: 8080, nodePort: 30090}]
---
apiVersion: v1
kind: Service
metadata: {name: itp}
spec:
  internalTrafficPolicy: Local
  selector: {app: s}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: solo}
spec:
  selector: {solo: \"yes\"}
  ports: [{port: 80, targetPort: 8080}]
";

/// `name value` pairs from a kubectl jsonpath listing.
fn listing(lab: &Lab, what: &str, field: &str) -> std::collections::BTreeMap<String, String> {
    let out = lab.ok(&[
        "kubectl",
        "--",
        "get",
        what,
        "-o",
        &format!("jsonpath={{range .items[*]}}{{.metadata.name}} {{{field}}}{{\"\\n\"}}{{end}}"),
    ]);
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.trim().to_string()))
        .collect()
}

/// One TCP exchange with an echo server from namespace `ns`: (pod, peer IP) it reported.
fn echo_from(ns: &str, dst: &str) -> std::io::Result<(String, String)> {
    use std::io::Read;
    let dst: std::net::SocketAddr = dst.parse().unwrap();
    in_netns(ns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut line = String::new();
        s.read_to_string(&mut line)?;
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(k))
                .unwrap_or_default()
                .to_string()
        };
        let peer = field("peer=");
        let peer = peer
            .rsplit_once(':')
            .map_or(peer.clone(), |(ip, _)| ip.to_string());
        Ok((field("pod="), peer))
    })
}

/// Services' traffic policies, affinity, hairpin and the dump, with real traffic: two
/// endpoints on node-1, none on node-2.
#[test]
fn services_policies_affinity_and_hairpin_in_the_lab() {
    let lab = Lab::up("s", &["--nodes", "2", "--no-workload"]);
    let out = lab.apply(SERVICES_MANIFEST);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("pods running", || {
        let phases = listing(&lab, "pods", ".status.phase");
        phases.len() == 3 && phases.values().all(|p| p == "Running")
    });
    let ips = listing(&lab, "pods", ".status.podIP");
    let vips = listing(&lab, "services", ".spec.clusterIP");
    let client = pod_netns(&lab, &ips["client"]);
    let s1 = pod_netns(&lab, &ips["s-1"]);
    let external = format!("pn-{}-external", lab.name);
    let vip = |name: &str| format!("{}:80", vips[name]);
    wait_for("sticky answers", || {
        echo_from(&client, &vip("sticky")).is_ok()
    });

    // ClientIP affinity: every connection from one client lands on the same endpoint.
    let first = echo_from(&client, &vip("sticky")).unwrap().0;
    assert!(first == "s-1" || first == "s-2", "{first}");
    for _ in 0..10 {
        assert_eq!(echo_from(&client, &vip("sticky")).unwrap().0, first);
    }

    // externalTrafficPolicy Local: node-1 (endpoints) answers and the client's source IP
    // is kept; node-2 (none) drops the connection.
    let (pod, peer) = echo_from(&external, "172.18.0.11:30090").unwrap();
    assert!(pod == "s-1" || pod == "s-2", "{pod}");
    assert_eq!(peer, "172.18.0.200", "the client's address must be kept");
    assert!(echo_from(&external, "172.18.0.12:30090").is_err());

    // internalTrafficPolicy Local: a client on node-2 (no local endpoint) gets nothing; a
    // pod on node-1 is answered by a node-1 endpoint.
    assert!(echo_from(&client, &vip("itp")).is_err());
    let (pod, _) = echo_from(&s1, &vip("itp")).unwrap();
    assert!(pod == "s-1" || pod == "s-2", "{pod}");

    // Hairpin: s-1 reaches itself through its own Service.
    let (pod, peer) = echo_from(&s1, &vip("solo")).unwrap();
    assert_eq!(pod, "s-1");
    assert_ne!(peer, ips["s-1"], "a hairpin connection is masqueraded");

    // The programmed table, readable.
    let dump = lab.ok(&["services", "--node", "node-1"]);
    for want in [
        "table ip podnet-services",
        "chain svc-default/sticky/tcp",
        "chain local-default/local/tcp",
        "tcp . 30090 : goto ext-default/local/tcp",
    ] {
        assert!(dump.contains(want), "{want} missing in\n{dump}");
    }
}
