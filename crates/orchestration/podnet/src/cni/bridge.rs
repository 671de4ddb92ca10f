//! Orchestration: what each CNI verb does to the node — a Linux bridge, a veth pair per
//! attachment, addresses and routes in the pod, and IPAM in the store.
//!
//! Compared with the reference `bridge` + `host-local` plugins:
//! - IPAM is built in: one process, one lock, no second exec;
//! - the pod end of the veth is created directly inside the pod's namespace (no rename,
//!   no move), and IPv6 addresses skip DAD, so ADD never waits;
//! - the bridge gets a fixed MAC, so pods' ARP entries for the gateway stay valid as ports
//!   come and go;
//! - every step of ADD is undone if a later step fails; DEL and GC collect every error
//!   instead of stopping at the first;
//! - the host veth's name derives from (container ID, ifname), so DEL and GC find it
//!   without any state, and GC also removes veths that a killed ADD left behind.

use podnet_cni_spec::naming::{
    bridge_mac, host_veth_name, is_host_veth_name, is_tombstone_name, tombstone_name,
};
use podnet_cni_spec::{CniError, CniResult, ErrorCode, Interface, IpConfig, Request, Route};
use podnet_ipam::{IpamError, Lease, Owner};
use podnet_netlink::{Link, Netlink, Op, RouteSpec, VethSpec, netns};
use podnet_store::Store;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;

fn nl_err(e: podnet_netlink::Error) -> CniError {
    CniError::io(e.to_string())
}

fn store_err(e: podnet_store::Error) -> CniError {
    CniError::io(e.to_string())
}

fn ipam_err(e: IpamError) -> CniError {
    match e {
        IpamError::Exhausted { .. } => CniError::new(ErrorCode::TryAgainLater, e.to_string()),
        _ => CniError::invalid_config(e.to_string()),
    }
}

/// Test-only fault injection: `PODNET_CNI_FAULT=after-ipam|after-veth` makes the plugin
/// kill itself with SIGKILL at that point, as a runtime timeout or an OOM kill would.
fn fault_point(name: &str) {
    if std::env::var("PODNET_CNI_FAULT").is_ok_and(|v| v == name) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

fn open_pod_netns(path: &str) -> Result<OwnedFd, CniError> {
    netns::open(path).map_err(|e| {
        CniError::new(
            ErrorCode::UnknownContainer,
            format!("network namespace {path} cannot be opened"),
        )
        .with_details(e.to_string())
    })
}

/// ADD: reserve addresses, then wire the pod. On failure, undo what this ADD did.
pub fn add(req: &Request) -> Result<CniResult, CniError> {
    let conf = &req.conf;
    let owner = req.owner().expect("ADD has an attachment");
    let netns_path = req.env.netns.as_deref().expect("ADD has a netns");
    let pod_ns = open_pod_netns(netns_path)?;
    let mut host = Netlink::open().map_err(nl_err)?;
    let mut pod = Netlink::open_in(&pod_ns).map_err(nl_err)?;

    let store = Store::new(&conf.data_dir, &conf.name);
    let (leases, fresh) = {
        let mut tx = store.lock().map_err(store_err)?;
        let fresh = tx.table.held_by(&owner).is_empty();
        let leases = tx
            .table
            .allocate(&conf.pool, &owner, &conf.static_ips)
            .map_err(ipam_err)?;
        tx.save().map_err(store_err)?;
        (leases, fresh)
    };
    fault_point("after-ipam");

    let host_if = host_veth_name(&owner.container_id, &owner.ifname);
    match wire(req, &mut host, &mut pod, &pod_ns, &host_if, &leases) {
        Ok(result) => Ok(match &conf.prev_result {
            Some(prev) => prev.clone().merge(result),
            None => result,
        }),
        Err(e) => {
            // Undo: the veth (its peer goes with it), then the reservation if it was ours.
            let mut undo = Vec::new();
            if let Err(u) = host.delete_link_by_name(&host_if) {
                undo.push(u.to_string());
            }
            if fresh && let Err(u) = store.update(|t| !t.release(&owner).is_empty()) {
                undo.push(u.to_string());
            }
            Err(if undo.is_empty() {
                e
            } else {
                e.with_details(format!("rollback also failed: {}", undo.join("; ")))
            })
        }
    }
}

/// The kernel side of ADD; idempotent for a repeated ADD of the same attachment.
///
/// The common case costs five netlink round trips: look up the bridge; add its gateway
/// address(es); create the veth already up and attached (pod end named `CNI_IFNAME`
/// inside the pod's namespace); hairpin; look up the pod end; and one batch for the pod
/// (loopback up, addresses, routes). The reference `bridge` plugin makes about twenty.
fn wire(
    req: &Request,
    host: &mut Netlink,
    pod: &mut Netlink,
    pod_ns: &OwnedFd,
    host_if: &str,
    leases: &[Lease],
) -> Result<CniResult, CniError> {
    let conf = &req.conf;
    let ifname = req.env.ifname.as_deref().expect("ADD has an ifname");
    let bridge = ensure_bridge(host, req, leases)?;
    let spec = VethSpec {
        name: host_if,
        peer_name: ifname,
        peer_netns: pod_ns,
        mtu: conf.mtu,
        peer_mac: conf.mac,
        master: Some(bridge.index),
        up: true,
    };
    let host_link = match host.create_veth(&spec) {
        Ok(Some(link)) => link,
        Ok(None) => host
            .link_by_name(host_if)
            .map_err(nl_err)?
            .ok_or_else(|| CniError::io(format!("host veth {host_if} vanished")))?,
        Err(e) if e.is_exists() => reconcile_veth(req, host, pod, &spec, &bridge)?,
        Err(e) => return Err(nl_err(e)),
    };
    fault_point("after-veth");
    if conf.hairpin {
        host.set_hairpin(host_link.index, true).map_err(nl_err)?;
    }

    // Pod side: one round trip for loopback, link, addresses and routes.
    let pod_link = pod
        .link_by_name(ifname)
        .map_err(nl_err)?
        .ok_or_else(|| CniError::io(format!("pod interface {ifname} vanished")))?;
    let routes = plan_routes(req, leases);
    let mut ops = vec![
        Op::set_up(LOOPBACK_IFINDEX, true),
        Op::set_up(pod_link.index, true),
    ];
    ops.extend(
        leases
            .iter()
            .map(|l| Op::add_address(pod_link.index, l.address)),
    );
    ops.extend(routes.iter().map(|r| {
        Op::add_route(&RouteSpec {
            dst: r.dst,
            gateway: r.gw,
            oif: Some(pod_link.index),
            onlink: false,
        })
    }));
    for r in pod.batch(ops).map_err(nl_err)? {
        tolerate_exists(r)?;
    }

    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: bridge.name.clone(),
                mac: bridge.mac_string(),
                ..Default::default()
            },
            Interface {
                name: host_link.name.clone(),
                mac: host_link.mac_string(),
                ..Default::default()
            },
            Interface {
                name: pod_link.name.clone(),
                mac: pod_link.mac_string(),
                mtu: pod_link.mtu,
                sandbox: req.env.netns.clone(),
                ..Default::default()
            },
        ],
        ips: leases
            .iter()
            .map(|l| IpConfig {
                address: l.address,
                gateway: Some(l.gateway),
                interface: Some(2),
            })
            .collect(),
        routes,
        dns: conf.dns.clone(),
    })
}

/// The kernel gives every network namespace's loopback index 1 (`LOOPBACK_IFINDEX`).
const LOOPBACK_IFINDEX: u32 = 1;

/// Creating the veth found a name taken: a repeated ADD (both ends there: keep them, make
/// sure they are attached and up), an ADD killed half-way (host end only: start over), or
/// a foreign interface in the pod (refuse).
fn reconcile_veth(
    req: &Request,
    host: &mut Netlink,
    pod: &mut Netlink,
    spec: &VethSpec<'_, &OwnedFd>,
    bridge: &Link,
) -> Result<Link, CniError> {
    let existing_host = host.link_by_name(spec.name).map_err(nl_err)?;
    let existing_pod = pod.link_by_name(spec.peer_name).map_err(nl_err)?;
    let link = match (existing_host, existing_pod) {
        (Some(h), Some(_)) => h,
        (None, Some(_)) => {
            return Err(CniError::io(format!(
                "interface {} already exists in {} and was not made by podnet for this container",
                spec.peer_name,
                req.env.netns.as_deref().unwrap_or("?")
            )));
        }
        (Some(h), None) => {
            host.delete_link(h.index).map_err(nl_err)?;
            create_veth_or_lookup(host, spec)?
        }
        (None, None) => create_veth_or_lookup(host, spec)?,
    };
    if link.master != Some(bridge.index) {
        host.set_master(link.index, bridge.index).map_err(nl_err)?;
    }
    host.set_up(link.index, true).map_err(nl_err)?;
    Ok(link)
}

fn create_veth_or_lookup(
    host: &mut Netlink,
    spec: &VethSpec<'_, &OwnedFd>,
) -> Result<Link, CniError> {
    match host.create_veth(spec).map_err(nl_err)? {
        Some(link) => Ok(link),
        None => host
            .link_by_name(spec.name)
            .map_err(nl_err)?
            .ok_or_else(|| CniError::io(format!("host veth {} vanished", spec.name))),
    }
}

fn tolerate_exists(r: podnet_netlink::Result<()>) -> Result<(), CniError> {
    match r {
        Err(e) if !e.is_exists() => Err(nl_err(e)),
        _ => Ok(()),
    }
}

/// The bridge, created if missing, up, with the gateway address of each lease's range
/// (added unconditionally in one batch; "exists" is success).
fn ensure_bridge(host: &mut Netlink, req: &Request, leases: &[Lease]) -> Result<Link, CniError> {
    let conf = &req.conf;
    let name = conf.bridge.as_str();
    let link = match host.link_by_name(name).map_err(nl_err)? {
        Some(l) => l,
        None => {
            // Two ADDs may race to create it; the loser sees Exists and uses the winner's.
            tolerate_exists(host.create_bridge(name, bridge_mac(name), conf.mtu))?;
            host.link_by_name(name)
                .map_err(nl_err)?
                .ok_or_else(|| CniError::io(format!("bridge {name} vanished")))?
        }
    };
    if link.kind.as_deref() != Some("bridge") {
        return Err(CniError::invalid_config(format!(
            "{name} exists but is a {}, not a bridge",
            link.kind.as_deref().unwrap_or("plain interface")
        )));
    }
    let mut ops = Vec::new();
    if conf.is_gateway {
        for l in leases {
            let gw =
                ipnet::IpNet::new(l.gateway, l.address.prefix_len()).expect("prefix from a lease");
            ops.push(Op::add_address(link.index, gw));
        }
    }
    if !link.up {
        ops.push(Op::set_up(link.index, true));
    }
    if !ops.is_empty() {
        for r in host.batch(ops).map_err(nl_err)? {
            tolerate_exists(r)?;
        }
    }
    Ok(link)
}

/// The pod's routes: `ipam.routes` (gateway defaulting to the lease's of that family),
/// plus a default route per family via the gateway when `isDefaultGateway`.
fn plan_routes(req: &Request, leases: &[Lease]) -> Vec<Route> {
    let gw_for = |ip: IpAddr| {
        leases
            .iter()
            .find(|l| l.gateway.is_ipv4() == ip.is_ipv4())
            .map(|l| l.gateway)
    };
    let mut routes: Vec<Route> = Vec::new();
    let mut push = |r: Route| {
        if !routes.iter().any(|x| x.dst == r.dst) {
            routes.push(r);
        }
    };
    for r in &req.conf.pool.routes {
        if let Some(gw) = r.gw.or_else(|| gw_for(r.dst.addr())) {
            push(Route {
                dst: r.dst,
                gw: Some(gw),
                ..Default::default()
            });
        }
    }
    if req.conf.is_default_gateway {
        for l in leases {
            let any: ipnet::IpNet = if l.gateway.is_ipv4() {
                "0.0.0.0/0"
            } else {
                "::/0"
            }
            .parse()
            .expect("literal");
            push(Route {
                dst: any,
                gw: Some(l.gateway),
                ..Default::default()
            });
        }
    }
    routes
}

/// DEL: retire the veth pair (if any) and release the reservation; succeed when things
/// are already gone. Every failure is reported, not only the first.
pub fn del(req: &Request) -> Result<(), CniError> {
    let owner = req.owner().expect("DEL has an attachment");
    let mut errors = Vec::new();
    let host_if = host_veth_name(&owner.container_id, &owner.ifname);
    match Netlink::open() {
        Ok(mut host) => {
            if let Err(e) = retire_veth(&mut host, req, &owner.ifname, &host_if) {
                errors.push(e.to_string());
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    let store = Store::new(&req.conf.data_dir, &req.conf.name);
    if let Err(e) = store.update(|t| !t.release(&owner).is_empty()) {
        errors.push(e.to_string());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::io(errors.join("; ")))
    }
}

/// Takes an attachment's veth pair out of service at once and leaves the kernel's slow
/// part of deleting it to a detached `podnet reap-link` process.
///
/// Deleting a veth costs ~23 ms on this kernel (6.18), nearly all of it the RCU wait in
/// `netdev_run_todo` after the interface is already unreachable — and that wait is most of
/// the reference plugin's DEL. podnet's DEL instead, in three round trips, sets both ends
/// down, detaches the host end from the bridge and renames both ends to
/// [`tombstone_name`]: when DEL returns the pod has no `CNI_IFNAME`, the bridge has no
/// port for it, the address is released, and the same attachment can be added again at
/// once. The reaper deletes the renamed pair a moment later; if it cannot be started the
/// pair is deleted here, and if it dies, GC deletes what it left.
///
/// The host end is found by name, so this works without the pod's namespace; when that
/// namespace is already gone, so is the pair (or the kernel is removing it).
fn retire_veth(
    host: &mut Netlink,
    req: &Request,
    ifname: &str,
    host_if: &str,
) -> podnet_netlink::Result<()> {
    let Some(link) = host.link_by_name(host_if)? else {
        return Ok(());
    };
    let tomb = tombstone_name(host_if);
    let retired = host.batch(vec![
        Op::set_up(link.index, false),
        Op::set_master(link.index, 0),
        Op::rename(link.index, &tomb),
    ])?;
    if retired
        .iter()
        .any(|r| r.as_ref().is_err_and(|e| !e.is_not_found()))
    {
        // E.g. a tombstone of that name is still being reaped: delete the slow way.
        return ignore_not_found(host.delete_link(link.index));
    }
    if let Some(pod_ns) = req.env.netns.as_deref()
        && let Ok(ns) = netns::open(pod_ns)
    {
        let mut pod = Netlink::open_in(&ns)?;
        if let Some(pl) = pod.link_by_name(ifname)?
            && pl.peer == Some(link.index)
        {
            let renamed = pod.batch(vec![
                Op::set_up(pl.index, false),
                Op::rename(pl.index, &tomb),
            ])?;
            if renamed
                .iter()
                .any(|r| r.as_ref().is_err_and(|e| !e.is_not_found()))
            {
                return ignore_not_found(host.delete_link(link.index));
            }
        }
    }
    let reaper = std::env::current_exe().and_then(|exe| {
        std::process::Command::new(exe)
            .args(["reap-link", &tomb])
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
    });
    match reaper {
        Ok(_detached) => Ok(()),
        Err(_) => ignore_not_found(host.delete_link(link.index)),
    }
}

fn ignore_not_found(r: podnet_netlink::Result<()>) -> podnet_netlink::Result<()> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        r => r,
    }
}

/// `podnet reap-link NAME`: deletes a veth pair DEL retired. Only a link with a tombstone
/// name is touched; one already gone is success.
pub fn reap(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        is_tombstone_name(name),
        "{name} is not a retired podnet veth"
    );
    let mut host = Netlink::open()?;
    host.delete_link_by_name(name)?;
    Ok(())
}

/// CHECK: compare the live attachment with `prevResult`; list every difference.
pub fn check(req: &Request) -> Result<(), CniError> {
    let owner = req.owner().expect("CHECK has an attachment");
    let prev = req
        .conf
        .prev_result
        .as_ref()
        .expect("validated: CHECK has prevResult");
    let netns_path = req.env.netns.as_deref().expect("CHECK has a netns");
    let ifname = owner.ifname.as_str();
    let mut diffs: Vec<String> = Vec::new();

    let Some(want_if) = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.as_deref() == Some(netns_path))
    else {
        return Err(CniError::new(
            ErrorCode::CheckFailed,
            format!("prevResult lists no interface {ifname} in sandbox {netns_path}"),
        ));
    };
    let pod_ns = open_pod_netns(netns_path)?;
    let mut pod = Netlink::open_in(&pod_ns).map_err(nl_err)?;
    let mut host = Netlink::open().map_err(nl_err)?;

    match pod.link_by_name(ifname).map_err(nl_err)? {
        None => diffs.push(format!("interface {ifname} is missing from {netns_path}")),
        Some(link) => {
            let want = &prev.interfaces[want_if];
            if want.mac.is_some() && link.mac_string() != want.mac {
                diffs.push(format!(
                    "{ifname} has MAC {:?}, prevResult says {:?}",
                    link.mac_string(),
                    want.mac
                ));
            }
            if !link.up {
                diffs.push(format!("{ifname} is down"));
            }
            let have = pod.addresses(Some(link.index)).map_err(nl_err)?;
            for ip in prev.ips.iter().filter(|ip| ip.interface == Some(want_if)) {
                if !have.iter().any(|a| a.net == ip.address) {
                    diffs.push(format!("address {} is missing from {ifname}", ip.address));
                }
            }
            let routes = pod.routes().map_err(nl_err)?;
            for r in &prev.routes {
                if !routes
                    .iter()
                    .any(|x| x.dst == r.dst && (r.gw.is_none() || x.gateway == r.gw))
                {
                    diffs.push(format!("route {} via {:?} is missing", r.dst, r.gw));
                }
            }
        }
    }
    let host_if = host_veth_name(&owner.container_id, &owner.ifname);
    let bridge = host.link_by_name(&req.conf.bridge).map_err(nl_err)?;
    match (host.link_by_name(&host_if).map_err(nl_err)?, bridge) {
        (None, _) => diffs.push(format!("host veth {host_if} is missing")),
        (Some(_), None) => diffs.push(format!("bridge {} is missing", req.conf.bridge)),
        (Some(h), Some(b)) => {
            if h.master != Some(b.index) {
                diffs.push(format!("host veth {host_if} is not a port of {}", b.name));
            }
            if !h.up {
                diffs.push(format!("host veth {host_if} is down"));
            }
        }
    }
    let table = Store::new(&req.conf.data_dir, &req.conf.name)
        .read()
        .map_err(store_err)?;
    let held: BTreeSet<IpAddr> = table.held_by(&owner).into_iter().collect();
    for ip in prev.ips.iter().filter(|ip| ip.interface == Some(want_if)) {
        if !held.contains(&ip.address.addr()) {
            diffs.push(format!(
                "address {} is not reserved for this container in IPAM",
                ip.address.addr()
            ));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::CheckFailed,
            format!("{} difference(s) from prevResult", diffs.len()),
        )
        .with_details(diffs.join("; ")))
    }
}

/// GC: release every reservation not in `cni.dev/valid-attachments`, and remove podnet
/// veths on this network's bridge that belong to no valid attachment (left by killed ADDs).
pub fn gc(req: &Request) -> Result<(), CniError> {
    let valid: BTreeSet<Owner> = req
        .conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| Owner::new(a.container_id.clone(), a.ifname.clone()))
        .collect();
    let keep: BTreeSet<String> = valid
        .iter()
        .map(|o| host_veth_name(&o.container_id, &o.ifname))
        .collect();
    let mut errors = Vec::new();
    let store = Store::new(&req.conf.data_dir, &req.conf.name);
    if let Err(e) = store.update(|t| !t.retain_valid(&valid).is_empty()) {
        errors.push(e.to_string());
    }
    match Netlink::open() {
        Err(e) => errors.push(e.to_string()),
        Ok(mut host) => match sweep_veths(&mut host, &req.conf.bridge, &keep) {
            Ok(errs) => errors.extend(errs),
            Err(e) => errors.push(e.to_string()),
        },
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::io(errors.join("; ")))
    }
}

fn sweep_veths(
    host: &mut Netlink,
    bridge: &str,
    keep: &BTreeSet<String>,
) -> podnet_netlink::Result<Vec<String>> {
    let bridge = host.link_by_name(bridge)?.map(|b| b.index);
    let mut errors = Vec::new();
    for l in host.links()? {
        let veth = l.kind.as_deref() == Some("veth");
        // Left on the bridge by an ADD killed half-way.
        let leaked = bridge.is_some() && l.master == bridge && is_host_veth_name(&l.name);
        // Retired by a DEL whose reaper never finished.
        let retired = is_tombstone_name(&l.name);
        if veth
            && (leaked || retired)
            && !keep.contains(&l.name)
            && let Err(e) = host.delete_link(l.index)
            && !e.is_not_found()
        {
            errors.push(e.to_string());
        }
    }
    Ok(errors)
}

/// STATUS: ready unless a range set has no free address or the store cannot be read.
pub fn status(req: &Request) -> Result<(), CniError> {
    let table = Store::new(&req.conf.data_dir, &req.conf.name)
        .read()
        .map_err(|e| {
            CniError::new(ErrorCode::NotAvailable, "IPAM store is unusable")
                .with_details(e.to_string())
        })?;
    for (set, free) in req
        .conf
        .pool
        .sets
        .iter()
        .zip(table.free_per_set(&req.conf.pool))
    {
        if free == 0 {
            return Err(CniError::new(
                ErrorCode::NotAvailable,
                format!("no free address left in {}", set.key()),
            ));
        }
    }
    Ok(())
}
