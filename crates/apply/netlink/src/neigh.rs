//! Apply: permanent neighbour (ARP) entries and VXLAN forwarding-database entries.
//!
//! Invariant: only entries podnet asked for are touched — reads filter by link, writes
//! name the exact (link, address, MAC/destination) triple, never a flush.
//!
//! An FDB entry on a VXLAN device is what `bridge fdb append MAC dev vxlan0 dst IP` makes:
//! an `RTM_NEWNEIGH` of family `AF_BRIDGE`, flag `NTF_SELF` (the entry belongs to the
//! device itself, not to a bridge it is a port of), state `NUD_PERMANENT`, with
//! `NLM_F_APPEND` so several destinations per MAC may coexist (as iproute2 does).

use crate::{Netlink, Op, Result};
use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::net::Ipv4Addr;

/// A permanent IPv4 neighbour entry: `ip neigh replace IP lladdr MAC dev #link nud permanent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub link: u32,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// A VXLAN FDB entry: frames for `mac` leave link `link` towards underlay address `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub link: u32,
    pub mac: [u8; 6],
    pub dst: Ipv4Addr,
}

impl Neighbour {
    fn to_message(self) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = self.link;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                self.ip,
            )));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(self.mac.to_vec()));
        msg
    }
}

impl FdbEntry {
    fn to_message(self) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = self.link;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(self.mac.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                self.dst,
            )));
        msg
    }
}

impl Op {
    /// Creates or replaces a permanent neighbour entry.
    pub fn replace_neighbour(n: &Neighbour) -> Op {
        Op::new(
            RouteNetlinkMessage::NewNeighbour(n.to_message()),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!(
                "replace neighbour {} lladdr {} on link #{}",
                n.ip,
                crate::link::format_mac(n.mac),
                n.link
            ),
        )
    }

    /// Deletes a neighbour entry; `NotFound` if it is not there.
    pub fn delete_neighbour(n: &Neighbour) -> Op {
        Op::new(
            RouteNetlinkMessage::DelNeighbour(n.to_message()),
            0,
            format!("delete neighbour {} on link #{}", n.ip, n.link),
        )
    }

    /// Appends an FDB entry (`bridge fdb append`); `Exists` if this exact one is there.
    pub fn append_fdb(e: &FdbEntry) -> Op {
        Op::new(
            RouteNetlinkMessage::NewNeighbour(e.to_message()),
            NLM_F_CREATE | NLM_F_APPEND,
            format!(
                "append fdb {} dst {} on link #{}",
                crate::link::format_mac(e.mac),
                e.dst,
                e.link
            ),
        )
    }

    /// Deletes one FDB entry (MAC and destination); `NotFound` if it is not there.
    pub fn delete_fdb(e: &FdbEntry) -> Op {
        Op::new(
            RouteNetlinkMessage::DelNeighbour(e.to_message()),
            0,
            format!(
                "delete fdb {} dst {} on link #{}",
                crate::link::format_mac(e.mac),
                e.dst,
                e.link
            ),
        )
    }
}

impl Netlink {
    /// Permanent IPv4 neighbour entries of link `link` (learnt/dynamic ones are skipped).
    pub fn permanent_neighbours(&mut self, link: u32) -> Result<Vec<Neighbour>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetNeighbour(msg), NLM_F_DUMP, || {
            "list neighbours".into()
        })?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewNeighbour(m) = r else {
                continue;
            };
            if m.header.ifindex != link || m.header.state != NeighbourState::Permanent {
                continue;
            }
            if let (Some(ip), Some(mac)) = (dst_v4(&m), lladdr(&m)) {
                out.push(Neighbour { link, ip, mac });
            }
        }
        Ok(out)
    }

    /// FDB entries of link `link` that carry a remote destination (a VXLAN's own entries).
    pub fn fdb_entries(&mut self, link: u32) -> Result<Vec<FdbEntry>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        let replies = self.request(RouteNetlinkMessage::GetNeighbour(msg), NLM_F_DUMP, || {
            "list fdb".into()
        })?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewNeighbour(m) = r else {
                continue;
            };
            if m.header.ifindex != link {
                continue;
            }
            if let (Some(dst), Some(mac)) = (dst_v4(&m), lladdr(&m)) {
                out.push(FdbEntry { link, mac, dst });
            }
        }
        Ok(out)
    }
}

fn dst_v4(m: &NeighbourMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        // AF_BRIDGE dumps carry NDA_DST undecoded (the family says nothing of its size).
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
            Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
        _ => None,
    })
}

fn lladdr(m: &NeighbourMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => b.as_slice().try_into().ok(),
        _ => None,
    })
}
