//! Apply: VXLAN links — create one with fixed parameters, read its parameters back.
//!
//! Invariant: a VXLAN link is created whole in one request (VNI, port, local address,
//! learning off, MAC, MTU, up); there is no partial update — a caller whose read-back
//! differs deletes and recreates it.

use crate::link::Link;
use crate::{Netlink, Op, Result};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use std::net::Ipv4Addr;

/// A VXLAN device as podnet makes it: unicast only (no group), no learning — the FDB is
/// programmed (`ip link add NAME type vxlan id VNI local IP dstport PORT nolearning`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// UDP destination port; give it explicitly (the Linux default, 8472, is not IANA's 4789).
    pub port: u16,
    pub local: Ipv4Addr,
    pub learning: bool,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// A VXLAN link read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanLink {
    pub link: Link,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<Ipv4Addr>,
    pub learning: Option<bool>,
}

impl VxlanLink {
    /// Whether the link has exactly the parameters of `spec` (name aside).
    pub fn matches(&self, spec: &VxlanSpec) -> bool {
        self.vni == Some(spec.vni)
            && self.port == Some(spec.port)
            && self.local == Some(spec.local)
            && self.learning == Some(spec.learning)
            && self.link.mac == Some(spec.mac)
            && self.link.mtu == Some(spec.mtu)
    }
}

impl Op {
    /// Creates the VXLAN link of `spec`, up; `Exists` if a link of that name is there.
    pub fn create_vxlan(spec: &VxlanSpec) -> Op {
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.clone()));
        msg.attributes
            .push(LinkAttribute::Address(spec.mac.to_vec()));
        msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(spec.vni),
                InfoVxlan::Local(spec.local),
                InfoVxlan::Port(spec.port),
                InfoVxlan::Learning(spec.learning),
            ])),
        ]));
        Op::new(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            format!(
                "create vxlan {} id {} local {} dstport {}",
                spec.name, spec.vni, spec.local, spec.port
            ),
        )
    }
}

impl Netlink {
    /// Creates the VXLAN link of `spec`, up; `Exists` if a link of that name is there.
    pub fn create_vxlan(&mut self, spec: &VxlanSpec) -> Result<()> {
        self.run(Op::create_vxlan(spec))
    }

    /// The link called `name` with its VXLAN parameters, or `None` if there is no link of
    /// that name. A link of another kind comes back with every VXLAN field `None`.
    pub fn vxlan_by_name(&mut self, name: &str) -> Result<Option<VxlanLink>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let replies = match self.request(RouteNetlinkMessage::GetLink(msg), 0, || {
            format!("get link {name}")
        }) {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(m) = replies.iter().find_map(|r| match r {
            RouteNetlinkMessage::NewLink(m) => Some(m),
            _ => None,
        }) else {
            return Ok(None);
        };
        let mut out = VxlanLink {
            link: Link::from_message(m),
            vni: None,
            port: None,
            local: None,
            learning: None,
        };
        for a in &m.attributes {
            let LinkAttribute::LinkInfo(infos) = a else {
                continue;
            };
            for i in infos {
                let LinkInfo::Data(InfoData::Vxlan(nlas)) = i else {
                    continue;
                };
                for n in nlas {
                    match n {
                        InfoVxlan::Id(v) => out.vni = Some(*v),
                        InfoVxlan::Port(v) => out.port = Some(*v),
                        InfoVxlan::Local(v) => out.local = Some(*v),
                        InfoVxlan::Learning(v) => out.learning = Some(*v),
                        _ => {}
                    }
                }
            }
        }
        Ok(Some(out))
    }
}
