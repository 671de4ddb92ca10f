//! Orchestration: the lab's kernel side — namespaces, the underlay bridge, each member's
//! link onto it, processes started inside namespaces, and teardown.
//!
//! Nothing here touches the host's own network namespace: every netlink socket is opened
//! inside a lab namespace, and processes are spawned from a thread that entered one.

use super::topology::{EXTERNAL_RANGES, Member, SERVICE_RANGES, Topology, UNDERLAY_PREFIX};
use anyhow::{Context, Result};
use podnet_netlink::{Netlink, Op, VethSpec, netns};
use std::collections::BTreeSet;
use std::os::linux::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Creates a named namespace with loopback up.
pub fn create_namespace(name: &str) -> Result<()> {
    let path = netns::create_named(name).with_context(|| format!("create namespace {name}"))?;
    let mut nl = Netlink::open_in(netns::open(&path)?)?;
    nl.run(Op::set_up(1, true))?;
    Ok(())
}

/// The underlay: a bridge in its own namespace, the lab's "physical" network.
pub fn create_underlay(t: &Topology) -> Result<()> {
    let mut nl = Netlink::open_in(netns::open(netns::named_path(&t.underlay_netns))?)?;
    nl.create_bridge(
        &t.underlay_bridge,
        podnet_cni_spec::naming::bridge_mac(&t.underlay_bridge),
        None,
    )?;
    let br = nl
        .link_by_name(&t.underlay_bridge)?
        .context("underlay bridge vanished")?;
    nl.set_up(br.index, true)?;
    Ok(())
}

/// Plugs `m` into the underlay: a veth whose `eth0` end is in the member's namespace with
/// the member's address. No default route: the lab has no way out of the machine.
pub fn plug_member(t: &Topology, m: &Member) -> Result<()> {
    let member_ns = netns::open(netns::named_path(&m.netns))?;
    let mut ul = Netlink::open_in(netns::open(netns::named_path(&t.underlay_netns))?)?;
    let br = ul
        .link_by_name(&t.underlay_bridge)?
        .context("underlay bridge missing")?;
    ul.create_veth(&VethSpec {
        name: &m.underlay_port,
        peer_name: "eth0",
        peer_netns: &member_ns,
        mtu: None,
        peer_mac: None,
        master: Some(br.index),
        up: true,
    })
    .with_context(|| format!("plug {} into the underlay", m.name))?;
    let mut nl = Netlink::open_in(&member_ns)?;
    let eth0 = nl.link_by_name("eth0")?.context("eth0 vanished")?;
    let net = ipnet::IpNet::new(m.ip.into(), UNDERLAY_PREFIX).expect("prefix");
    for r in nl.batch(vec![
        Op::add_address(eth0.index, net),
        Op::set_up(eth0.index, true),
    ])? {
        r?;
    }
    Ok(())
}

/// A worker node's routes for the Service ranges (cluster, load-balancer and external
/// IPs) through its underlay interface: what a real node's default route does for them,
/// without giving the lab a way out. They let the node's own processes connect to Services
/// (the agent's table DNATs them on the way out) and let a Service without endpoints be
/// refused by the table rather than by routing.
pub fn route_service_ranges(m: &Member) -> Result<()> {
    let mut nl = Netlink::open_in(netns::open(netns::named_path(&m.netns))?)?;
    let eth0 = nl.link_by_name("eth0")?.context("eth0 missing")?;
    for range in SERVICE_RANGES {
        nl.add_route(&podnet_netlink::RouteSpec {
            dst: range.parse().expect("literal CIDR"),
            gateway: None,
            oif: Some(eth0.index),
            onlink: false,
        })
        .with_context(|| format!("route {range} on {}", m.name))?;
    }
    Ok(())
}

/// The external host's routes to load-balancer and external IPs: one ECMP route per range
/// with a next hop per worker (see `topology::SERVICE_RANGES`).
pub fn route_external_ranges(t: &Topology) -> Result<()> {
    let mut nl = Netlink::open_in(netns::open(netns::named_path(&t.external.netns))?)?;
    let eth0 = nl.link_by_name("eth0")?.context("eth0 missing")?;
    let nexthops: Vec<podnet_netlink::NextHop> = t
        .workers
        .iter()
        .map(|w| podnet_netlink::NextHop {
            gateway: w.ip.into(),
            oif: eth0.index,
        })
        .collect();
    for range in EXTERNAL_RANGES {
        nl.run(Op::add_multipath_route(
            &podnet_netlink::MultipathRouteSpec {
                dst: range.parse().expect("literal CIDR"),
                nexthops: nexthops.clone(),
            },
        ))
        .with_context(|| format!("route {range} on the external host"))?;
    }
    Ok(())
}

/// Starts `exe args…` inside namespace `ns`, detached (own process group, stdin closed,
/// output appended to `log`), and returns its pid.
pub fn spawn_in(
    ns: &str,
    exe: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<u32> {
    let fd = netns::open(netns::named_path(ns))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0);
    // A child inherits the network namespace of the thread that spawns it.
    let child = netns::run_in(&fd, || cmd.spawn())?
        .with_context(|| format!("start {} in {ns}", exe.display()))?;
    Ok(child.id())
}

/// Network namespaces whose name starts with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// Every process whose network namespace is one of `namespaces` — the lab's control
/// plane, agents, pod runtimes and containers, and nothing else.
pub fn processes_in(namespaces: &[String]) -> Vec<u32> {
    let inodes: BTreeSet<(u64, u64)> = namespaces
        .iter()
        .filter_map(|n| std::fs::metadata(netns::named_path(n)).ok())
        .map(|m| (m.st_dev(), m.st_ino()))
        .collect();
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| inodes.contains(&(m.st_dev(), m.st_ino())))
        })
        .collect()
}

/// SIGTERM, then SIGKILL after `grace` for those still there.
pub fn stop_processes(pids: &[u32], grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for pid in pids {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    let alive = |pid: &u32| Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(*pid);
    while pids.iter().any(alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in pids.iter().filter(|p| alive(p)) {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}
