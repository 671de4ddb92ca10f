//! Pure: nodes → `NodePlan` (what the kernel should hold) and `diff` against what it
//! holds → `Changes` (the only writes). Invariant: `diff(state_after(plan), plan)` is empty.

use crate::{Mode, ROUTE_PROTOCOL, VXLAN_DEVICE, VXLAN_PORT, VXLAN_VNI, format_mac, vtep_mac};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// What podnet needs of a Node: its name, InternalIP and podCIDR.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeInfo {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

/// A route to a peer's pod CIDR. `onlink` routes go over the VXLAN device (the gateway
/// is the peer's VTEP address, on no local subnet); the others let the kernel find the
/// underlay link of `gateway`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub onlink: bool,
}

/// The VXLAN device's fixed parameters (learning is always off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// A VXLAN FDB entry: frames for `mac` are sent in UDP to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fdb {
    pub mac: [u8; 6],
    pub dst: Ipv4Addr,
}

/// A permanent neighbour entry on the VXLAN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neigh {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// The VXLAN part of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPlan {
    pub device: VxlanDevice,
    /// `<own podCIDR network>/32`: the source of packets the node itself sends to pods
    /// on other nodes, and the peers' gateway towards this node's pods.
    pub address: Ipv4Net,
    pub fdb: BTreeSet<Fdb>,
    pub neighbours: BTreeSet<Neigh>,
}

/// Everything podnet wants in the node's kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// By destination: one route per peer pod CIDR.
    pub routes: BTreeMap<Ipv4Net, Route>,
    pub vxlan: Option<VxlanPlan>,
    /// Peers that were left out, and why (one bad Node never blocks the rest).
    pub skipped: Vec<String>,
}

/// What the kernel holds of podnet's: routes carrying [`ROUTE_PROTOCOL`] and the VXLAN
/// device with its addresses, FDB and permanent neighbours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    pub routes: BTreeSet<Route>,
    pub vxlan: Option<VxlanState>,
}

/// The VXLAN device as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanState {
    /// `None` when a link of that name exists but is not a VXLAN podnet can read.
    pub device: Option<VxlanDevice>,
    pub up: bool,
    pub addresses: BTreeSet<Ipv4Net>,
    pub fdb: BTreeSet<Fdb>,
    pub neighbours: BTreeSet<Neigh>,
}

/// The writes that turn a [`KernelState`] into a [`NodePlan`], in the order they must be
/// applied: removals first, then the device, then additions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub delete_routes: Vec<Route>,
    pub delete_neighbours: Vec<Neigh>,
    pub delete_fdb: Vec<Fdb>,
    pub delete_addresses: Vec<Ipv4Net>,
    /// Delete the device (mode switch, or parameters that cannot change in place). Its
    /// routes, addresses, FDB and neighbours go with it.
    pub delete_vxlan: bool,
    pub create_vxlan: Option<VxlanDevice>,
    pub set_vxlan_up: bool,
    pub add_addresses: Vec<Ipv4Net>,
    pub add_fdb: Vec<Fdb>,
    pub add_neighbours: Vec<Neigh>,
    /// `ip route replace`: new routes and routes whose next hop changed.
    pub replace_routes: Vec<Route>,
}

impl Changes {
    /// Kernel writes these changes take.
    pub fn len(&self) -> usize {
        self.delete_routes.len()
            + self.delete_neighbours.len()
            + self.delete_fdb.len()
            + self.delete_addresses.len()
            + usize::from(self.delete_vxlan)
            + usize::from(self.create_vxlan.is_some())
            + usize::from(self.set_vxlan_up)
            + self.add_addresses.len()
            + self.add_fdb.len()
            + self.add_neighbours.len()
            + self.replace_routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One line per write, as iproute2 commands, in application order.
    pub fn render(&self) -> String {
        let dev = VXLAN_DEVICE;
        let mut s = String::new();
        for r in &self.delete_routes {
            let _ = writeln!(s, "ip route del {} proto {ROUTE_PROTOCOL}", r.dst);
        }
        for n in &self.delete_neighbours {
            let _ = writeln!(s, "ip neigh del {} dev {dev}", n.ip);
        }
        for f in &self.delete_fdb {
            let _ = writeln!(
                s,
                "bridge fdb del {} dev {dev} dst {}",
                format_mac(f.mac),
                f.dst
            );
        }
        for a in &self.delete_addresses {
            let _ = writeln!(s, "ip addr del {a} dev {dev}");
        }
        if self.delete_vxlan {
            let _ = writeln!(s, "ip link del {dev}");
        }
        if let Some(d) = &self.create_vxlan {
            let _ = writeln!(s, "{}", render_device(d));
        }
        if self.set_vxlan_up {
            let _ = writeln!(s, "ip link set {dev} up");
        }
        for a in &self.add_addresses {
            let _ = writeln!(s, "ip addr add {a} dev {dev}");
        }
        for f in &self.add_fdb {
            let _ = writeln!(s, "{}", render_fdb(f));
        }
        for n in &self.add_neighbours {
            let _ = writeln!(s, "{}", render_neigh(n));
        }
        for r in &self.replace_routes {
            let _ = writeln!(s, "{}", render_route(r));
        }
        s
    }
}

fn render_device(d: &VxlanDevice) -> String {
    format!(
        "ip link add {} address {} mtu {} up type vxlan id {} local {} dstport {} nolearning",
        d.name,
        format_mac(d.mac),
        d.mtu,
        d.vni,
        d.local,
        d.port
    )
}

fn render_fdb(f: &Fdb) -> String {
    format!(
        "bridge fdb append {} dev {VXLAN_DEVICE} dst {}",
        format_mac(f.mac),
        f.dst
    )
}

fn render_neigh(n: &Neigh) -> String {
    format!(
        "ip neigh replace {} lladdr {} dev {VXLAN_DEVICE} nud permanent",
        n.ip,
        format_mac(n.mac)
    )
}

fn render_route(r: &Route) -> String {
    if r.onlink {
        format!(
            "ip route replace {} via {} dev {VXLAN_DEVICE} onlink proto {ROUTE_PROTOCOL}",
            r.dst, r.gateway
        )
    } else {
        format!(
            "ip route replace {} via {} proto {ROUTE_PROTOCOL}",
            r.dst, r.gateway
        )
    }
}

impl NodePlan {
    /// The plan as the iproute2 commands that would build it from nothing.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(v) = &self.vxlan {
            let _ = writeln!(s, "{}", render_device(&v.device));
            let _ = writeln!(s, "ip addr add {} dev {}", v.address, v.device.name);
            for f in &v.fdb {
                let _ = writeln!(s, "{}", render_fdb(f));
            }
            for n in &v.neighbours {
                let _ = writeln!(s, "{}", render_neigh(n));
            }
        }
        for r in self.routes.values() {
            let _ = writeln!(s, "{}", render_route(r));
        }
        for k in &self.skipped {
            let _ = writeln!(s, "# skipped: {k}");
        }
        s
    }

    /// The kernel state right after this plan was applied to an empty kernel.
    pub fn as_state(&self) -> KernelState {
        KernelState {
            routes: self.routes.values().copied().collect(),
            vxlan: self.vxlan.as_ref().map(|v| VxlanState {
                device: Some(v.device.clone()),
                up: true,
                addresses: BTreeSet::from([v.address]),
                fdb: v.fdb.clone(),
                neighbours: v.neighbours.clone(),
            }),
        }
    }
}

/// The plan of node `me` towards `peers` (`me` may appear among them; it is skipped).
/// Peers are taken in name order; one whose pod CIDR overlaps an earlier one's (or
/// ours), whose IP is ours, or (VXLAN) whose VTEP MAC collides, is skipped and named in
/// `skipped`.
pub fn plan_node(me: &NodeInfo, peers: &[NodeInfo], mode: Mode, underlay_mtu: u32) -> NodePlan {
    let mut sorted: Vec<&NodeInfo> = peers.iter().filter(|p| p.name != me.name).collect();
    sorted.sort();
    let my_mac = vtep_mac(&me.name);
    let mut taken: Vec<Ipv4Net> = vec![me.pod_cidr];
    let mut macs: BTreeSet<[u8; 6]> = BTreeSet::from([my_mac]);
    let mut routes = BTreeMap::new();
    let mut fdb = BTreeSet::new();
    let mut neighbours = BTreeSet::new();
    let mut skipped = Vec::new();
    for p in sorted {
        if let Some(t) = taken
            .iter()
            .find(|t| t.contains(&p.pod_cidr) || p.pod_cidr.contains(*t))
        {
            skipped.push(format!(
                "node {}: pod CIDR {} overlaps {t}",
                p.name, p.pod_cidr
            ));
            continue;
        }
        if p.ip == me.ip {
            skipped.push(format!("node {}: has our node IP {}", p.name, p.ip));
            continue;
        }
        let cidr = p.pod_cidr.trunc();
        match mode {
            Mode::HostGw => {
                routes.insert(
                    cidr,
                    Route {
                        dst: cidr,
                        gateway: p.ip,
                        onlink: false,
                    },
                );
            }
            Mode::Vxlan => {
                let mac = vtep_mac(&p.name);
                if !macs.insert(mac) {
                    skipped.push(format!(
                        "node {}: VTEP MAC {} collides with another node's",
                        p.name,
                        format_mac(mac)
                    ));
                    continue;
                }
                let vtep = cidr.network();
                routes.insert(
                    cidr,
                    Route {
                        dst: cidr,
                        gateway: vtep,
                        onlink: true,
                    },
                );
                fdb.insert(Fdb { mac, dst: p.ip });
                neighbours.insert(Neigh { ip: vtep, mac });
            }
        }
        taken.push(p.pod_cidr);
    }
    let vxlan = (mode == Mode::Vxlan).then(|| VxlanPlan {
        device: VxlanDevice {
            name: VXLAN_DEVICE.to_string(),
            vni: VXLAN_VNI,
            port: VXLAN_PORT,
            local: me.ip,
            mac: my_mac,
            mtu: mode.pod_mtu(underlay_mtu),
        },
        address: Ipv4Net::new(me.pod_cidr.network(), 32).expect("/32 is valid"),
        fdb,
        neighbours,
    });
    NodePlan {
        routes,
        vxlan,
        skipped,
    }
}

/// The writes that turn `current` into `desired`. Removing the device takes its routes,
/// addresses, FDB and neighbours with it, so those are neither deleted one by one nor
/// counted as present afterwards.
pub fn diff(current: &KernelState, desired: &NodePlan) -> Changes {
    let mut c = Changes::default();
    // Does the current device survive?
    let keep_device = match (&current.vxlan, &desired.vxlan) {
        (Some(cur), Some(want)) => cur.device.as_ref() == Some(&want.device),
        _ => false,
    };
    c.delete_vxlan = current.vxlan.is_some() && !keep_device;
    let survivor = current.vxlan.as_ref().filter(|_| keep_device);
    if let Some(want) = &desired.vxlan {
        if !keep_device {
            c.create_vxlan = Some(want.device.clone());
        }
        let empty = BTreeSet::new();
        let (addrs, fdb, neigh) = match survivor {
            Some(s) => (&s.addresses, &s.fdb, &s.neighbours),
            None => (&empty, &BTreeSet::new(), &BTreeSet::new()),
        };
        c.set_vxlan_up = survivor.is_some_and(|s| !s.up);
        c.delete_addresses = addrs
            .iter()
            .filter(|a| **a != want.address)
            .copied()
            .collect();
        if !addrs.contains(&want.address) {
            c.add_addresses.push(want.address);
        }
        c.delete_fdb = fdb.difference(&want.fdb).copied().collect();
        c.add_fdb = want.fdb.difference(fdb).copied().collect();
        // A neighbour whose MAC changed is replaced in place, not deleted first.
        let wanted_ips: BTreeSet<Ipv4Addr> = want.neighbours.iter().map(|n| n.ip).collect();
        c.delete_neighbours = neigh
            .iter()
            .filter(|n| !wanted_ips.contains(&n.ip))
            .copied()
            .collect();
        c.add_neighbours = want.neighbours.difference(neigh).copied().collect();
    }
    // Onlink routes live on the VXLAN device: they vanish with it.
    let present: Vec<&Route> = current
        .routes
        .iter()
        .filter(|r| survivor.is_some() || !(r.onlink && current.vxlan.is_some()))
        .collect();
    for r in &present {
        if !desired.routes.contains_key(&r.dst) {
            c.delete_routes.push(**r);
        }
    }
    for r in desired.routes.values() {
        if !present.contains(&r) {
            c.replace_routes.push(*r);
        }
    }
    c
}
