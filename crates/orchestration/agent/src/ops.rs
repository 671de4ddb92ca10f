//! Apply (behind capability traits): the node's kernel as the agent sees it — podnet's
//! routes, VXLAN device, FDB and neighbours (`NodeNetOps`) and its nftables table
//! (`NftOps`). `Linux*` speak netlink (rtnetlink, nf_tables); `Fake*` are stateful models
//! that count writes, for sync tests without a kernel.
//!
//! Invariant: `apply` performs exactly the writes listed in `Changes`, in their order,
//! never a flush; deletes that find nothing and appends that find the entry are success
//! (the goal state holds), every other error is collected and reported after the rest
//! was tried (as netavark's teardown does).

use anyhow::{Context, Result, anyhow};
use ipnet::{IpNet, Ipv4Net};
use podnet_netlink::nftables::Nftables;
use podnet_netlink::{FdbEntry, Neighbour, Netlink, Op, RouteSpec, VxlanSpec};
use podnet_nft::{Family, Table, Transaction, family_name};
use podnet_nodenet::{
    Changes, Fdb, KernelState, Neigh, ROUTE_PROTOCOL, Route, VXLAN_DEVICE, VxlanDevice, VxlanState,
};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

/// The kernel objects podnet owns on a node.
pub trait NodeNetOps {
    /// Reads podnet's routes (by route protocol) and its VXLAN device with its entries.
    fn read_state(&mut self) -> Result<KernelState>;
    /// Applies `changes`; returns the number of kernel writes made.
    fn apply(&mut self, changes: &Changes) -> Result<usize>;
    /// `net.ipv4.ip_forward = 1` in the node's namespace.
    fn ensure_forwarding(&mut self) -> Result<()>;
    /// The name of the link that holds address `ip` (the node IP's: the underlay), if any.
    fn link_with_address(&mut self, ip: Ipv4Addr) -> Result<Option<String>>;
    /// Every link of the node (one dump): what the fast path hooks and sends to.
    fn links(&mut self) -> Result<Vec<LinkInfo>>;
}

/// What the agent reads of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    /// The bridge it is a port of.
    pub master: Option<u32>,
}

/// The node's nftables tables.
pub trait NftOps {
    /// Replaces `table` whole (created if missing) in one atomic transaction.
    fn replace_table(&mut self, table: &Table) -> Result<()>;
    /// Removes table `name` of `family`, if it exists.
    fn remove_table(&mut self, family: Family, name: &str) -> Result<()>;
}

/// [`NodeNetOps`] over rtnetlink, in the namespace the socket was opened in.
pub struct LinuxNodeNet {
    nl: Netlink,
}

impl LinuxNodeNet {
    /// Opens a netlink socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        Ok(LinuxNodeNet {
            nl: Netlink::open().context("open rtnetlink")?,
        })
    }

    fn vxlan_index(&mut self) -> Result<u32> {
        self.nl
            .link_by_name(VXLAN_DEVICE)?
            .map(|l| l.index)
            .ok_or_else(|| anyhow!("link {VXLAN_DEVICE} is missing"))
    }
}

fn route_spec(r: &Route, vxlan: Option<u32>) -> RouteSpec {
    RouteSpec {
        dst: IpNet::V4(r.dst),
        gateway: Some(IpAddr::V4(r.gateway)),
        oif: if r.onlink { vxlan } else { None },
        onlink: r.onlink,
    }
}

impl NodeNetOps for LinuxNodeNet {
    fn read_state(&mut self) -> Result<KernelState> {
        let mut state = KernelState::default();
        for r in self.nl.routes_with_protocol(ROUTE_PROTOCOL)? {
            if let (IpNet::V4(dst), Some(IpAddr::V4(gateway))) = (r.dst, r.gateway) {
                state.routes.insert(Route {
                    dst,
                    gateway,
                    onlink: r.onlink,
                });
            }
        }
        let Some(v) = self.nl.vxlan_by_name(VXLAN_DEVICE)? else {
            return Ok(state);
        };
        let index = v.link.index;
        let device = match (v.vni, v.port, v.local, v.learning, v.link.mac, v.link.mtu) {
            (Some(vni), Some(port), Some(local), Some(false), Some(mac), Some(mtu)) => {
                Some(VxlanDevice {
                    name: v.link.name.clone(),
                    vni,
                    port,
                    local,
                    mac,
                    mtu,
                })
            }
            _ => None,
        };
        let addresses = self
            .nl
            .addresses(Some(index))?
            .into_iter()
            .filter_map(|a| match a.net {
                IpNet::V4(n) => Some(n),
                IpNet::V6(_) => None,
            })
            .collect();
        let fdb = self
            .nl
            .fdb_entries(index)?
            .into_iter()
            .map(|e| Fdb {
                mac: e.mac,
                dst: e.dst,
            })
            .collect();
        let neighbours = self
            .nl
            .permanent_neighbours(index)?
            .into_iter()
            .map(|n| Neigh {
                ip: n.ip,
                mac: n.mac,
            })
            .collect();
        state.vxlan = Some(VxlanState {
            device,
            up: v.link.up,
            addresses,
            fdb,
            neighbours,
        });
        Ok(state)
    }

    fn apply(&mut self, c: &Changes) -> Result<usize> {
        let mut errors: Vec<String> = Vec::new();
        let mut writes = 0;
        let mut run = |nl: &mut Netlink, op: Op, ok_exists: bool, errors: &mut Vec<String>| {
            writes += 1;
            match nl.run(op) {
                Ok(()) => {}
                Err(e) if e.is_not_found() || (ok_exists && e.is_exists()) => {}
                Err(e) => errors.push(e.to_string()),
            }
        };
        let needs_index = !c.delete_neighbours.is_empty()
            || !c.delete_fdb.is_empty()
            || !c.delete_addresses.is_empty();
        let old = if needs_index {
            Some(self.vxlan_index()?)
        } else {
            None
        };
        for r in &c.delete_routes {
            run(
                &mut self.nl,
                Op::delete_route_with_protocol(&route_spec(r, None), ROUTE_PROTOCOL),
                false,
                &mut errors,
            );
        }
        if let Some(link) = old {
            for n in &c.delete_neighbours {
                let n = Neighbour {
                    link,
                    ip: n.ip,
                    mac: n.mac,
                };
                run(&mut self.nl, Op::delete_neighbour(&n), false, &mut errors);
            }
            for f in &c.delete_fdb {
                let e = FdbEntry {
                    link,
                    mac: f.mac,
                    dst: f.dst,
                };
                run(&mut self.nl, Op::delete_fdb(&e), false, &mut errors);
            }
            for a in &c.delete_addresses {
                run(
                    &mut self.nl,
                    Op::delete_address(link, IpNet::V4(*a)),
                    false,
                    &mut errors,
                );
            }
        }
        if c.delete_vxlan {
            match self.nl.link_by_name(VXLAN_DEVICE) {
                Ok(Some(l)) => run(&mut self.nl, Op::delete_link(l.index), false, &mut errors),
                Ok(None) => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
        if let Some(d) = &c.create_vxlan {
            let spec = VxlanSpec {
                name: d.name.clone(),
                vni: d.vni,
                port: d.port,
                local: d.local,
                learning: false,
                mac: d.mac,
                mtu: d.mtu,
            };
            run(&mut self.nl, Op::create_vxlan(&spec), false, &mut errors);
        }
        let vx = if c.set_vxlan_up
            || !c.add_addresses.is_empty()
            || !c.add_fdb.is_empty()
            || !c.add_neighbours.is_empty()
            || c.replace_routes.iter().any(|r| r.onlink)
        {
            match self.vxlan_index() {
                Ok(i) => Some(i),
                Err(e) => {
                    errors.push(e.to_string());
                    None
                }
            }
        } else {
            None
        };
        if let Some(link) = vx {
            if c.set_vxlan_up {
                run(&mut self.nl, Op::set_up(link, true), false, &mut errors);
            }
            for a in &c.add_addresses {
                run(
                    &mut self.nl,
                    Op::add_address(link, IpNet::V4(*a)),
                    true,
                    &mut errors,
                );
            }
            for f in &c.add_fdb {
                let e = FdbEntry {
                    link,
                    mac: f.mac,
                    dst: f.dst,
                };
                run(&mut self.nl, Op::append_fdb(&e), true, &mut errors);
            }
            for n in &c.add_neighbours {
                let n = Neighbour {
                    link,
                    ip: n.ip,
                    mac: n.mac,
                };
                run(&mut self.nl, Op::replace_neighbour(&n), false, &mut errors);
            }
        }
        for r in &c.replace_routes {
            if r.onlink && vx.is_none() {
                continue;
            }
            run(
                &mut self.nl,
                Op::replace_route(&route_spec(r, vx), ROUTE_PROTOCOL),
                false,
                &mut errors,
            );
        }
        if errors.is_empty() {
            Ok(writes)
        } else {
            Err(anyhow!(
                "{} of {writes} kernel writes failed: {}",
                errors.len(),
                errors.join("; ")
            ))
        }
    }

    fn ensure_forwarding(&mut self) -> Result<()> {
        // /proc/sys/net resolves to the network namespace of the *calling thread* (the
        // sysctl lookup uses current->nsproxy), so this is the namespace the agent's
        // kernel thread entered, never the host's unless the agent runs there.
        let path = "/proc/sys/net/ipv4/ip_forward";
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
            return Ok(());
        }
        std::fs::write(path, "1\n").with_context(|| format!("write {path}"))
    }

    fn link_with_address(&mut self, ip: Ipv4Addr) -> Result<Option<String>> {
        let Some(a) = self
            .nl
            .addresses(None)?
            .into_iter()
            .find(|a| a.net.addr() == IpAddr::V4(ip))
        else {
            return Ok(None);
        };
        Ok(self.nl.link_by_index(a.index)?.map(|l| l.name))
    }

    fn links(&mut self) -> Result<Vec<LinkInfo>> {
        Ok(self
            .nl
            .links()?
            .into_iter()
            .map(|l| LinkInfo {
                name: l.name,
                index: l.index,
                master: l.master,
            })
            .collect())
    }
}

/// [`NftOps`] over nf_tables netlink, in the calling thread's network namespace (a socket
/// per transaction: the table changes only when nodes or settings do).
#[derive(Debug, Default)]
pub struct LinuxNft;

impl NftOps for LinuxNft {
    fn replace_table(&mut self, table: &Table) -> Result<()> {
        let mut nft = Nftables::open().context("open nf_tables netlink")?;
        nft.apply(&Transaction::replace_table(table))
            .with_context(|| format!("replace table {} {}", family_name(table.family), table.name))
    }

    fn remove_table(&mut self, family: Family, name: &str) -> Result<()> {
        let mut nft = Nftables::open().context("open nf_tables netlink")?;
        nft.apply(&Transaction::remove_table(family, name))
            .with_context(|| format!("remove table {} {name}", family_name(family)))
    }
}

/// A model of the kernel for sync tests: applies `Changes` with the kernel's semantics
/// (deleting the device takes its routes and entries with it; deleting what is not
/// there is `NotFound`) and counts every write.
#[derive(Debug, Default, Clone)]
pub struct FakeNodeNet {
    pub state: KernelState,
    pub writes: usize,
    pub forwarding: bool,
    /// Routes of other owners (other protocols): must never be touched.
    pub foreign_routes: BTreeSet<Ipv4Net>,
    /// The links' addresses ([`NodeNetOps::link_with_address`]); none holds the node IP
    /// unless a test puts it here.
    pub addresses: Vec<(Ipv4Addr, String)>,
    /// The links ([`NodeNetOps::links`]).
    pub links: Vec<LinkInfo>,
}

impl NodeNetOps for FakeNodeNet {
    fn read_state(&mut self) -> Result<KernelState> {
        Ok(self.state.clone())
    }

    fn apply(&mut self, c: &Changes) -> Result<usize> {
        let s = &mut self.state;
        let mut missing = Vec::new();
        for r in &c.delete_routes {
            if !s.routes.remove(r) {
                missing.push(format!("route {}", r.dst));
            }
        }
        if let Some(v) = s.vxlan.as_mut() {
            for n in &c.delete_neighbours {
                if !v.neighbours.remove(n) {
                    missing.push(format!("neigh {}", n.ip));
                }
            }
            for f in &c.delete_fdb {
                if !v.fdb.remove(f) {
                    missing.push(format!("fdb {}", f.dst));
                }
            }
            for a in &c.delete_addresses {
                v.addresses.remove(a);
            }
        }
        if c.delete_vxlan {
            if s.vxlan.take().is_none() {
                missing.push("vxlan device".into());
            }
            s.routes.retain(|r| !r.onlink);
        }
        if let Some(d) = &c.create_vxlan {
            if s.vxlan.is_some() {
                return Err(anyhow!("create {}: exists", d.name));
            }
            s.vxlan = Some(VxlanState {
                device: Some(d.clone()),
                up: true,
                addresses: BTreeSet::new(),
                fdb: BTreeSet::new(),
                neighbours: BTreeSet::new(),
            });
        }
        let needs_device = c.set_vxlan_up
            || !c.add_addresses.is_empty()
            || !c.add_fdb.is_empty()
            || !c.add_neighbours.is_empty()
            || c.replace_routes.iter().any(|r| r.onlink);
        if needs_device {
            let v = s
                .vxlan
                .as_mut()
                .ok_or_else(|| anyhow!("vxlan device missing"))?;
            if c.set_vxlan_up {
                v.up = true;
            }
            v.addresses.extend(c.add_addresses.iter().copied());
            v.fdb.extend(c.add_fdb.iter().copied());
            for n in &c.add_neighbours {
                v.neighbours.retain(|o| o.ip != n.ip);
                v.neighbours.insert(*n);
            }
        }
        for r in &c.replace_routes {
            s.routes.retain(|o| o.dst != r.dst);
            s.routes.insert(*r);
        }
        self.writes += c.len();
        if missing.is_empty() {
            Ok(c.len())
        } else {
            Err(anyhow!("not found: {}", missing.join(", ")))
        }
    }

    fn ensure_forwarding(&mut self) -> Result<()> {
        self.forwarding = true;
        Ok(())
    }

    fn link_with_address(&mut self, ip: Ipv4Addr) -> Result<Option<String>> {
        Ok(self
            .addresses
            .iter()
            .find(|(a, _)| *a == ip)
            .map(|(_, l)| l.clone()))
    }

    fn links(&mut self) -> Result<Vec<LinkInfo>> {
        Ok(self.links.clone())
    }
}

/// Records the tables it was given, rendered (`podnet_nft::render_table`), and the
/// removals (`remove table FAMILY NAME`), in order.
#[derive(Debug, Default, Clone)]
pub struct FakeNft {
    pub tables: Vec<String>,
}

impl NftOps for FakeNft {
    fn replace_table(&mut self, table: &Table) -> Result<()> {
        self.tables.push(podnet_nft::render_table(table));
        Ok(())
    }

    fn remove_table(&mut self, family: Family, name: &str) -> Result<()> {
        self.tables
            .push(format!("remove table {} {name}", family_name(family)));
        Ok(())
    }
}
