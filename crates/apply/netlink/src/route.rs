//! Apply: routes in the main table.

use crate::addr::family;
use crate::{Netlink, Op, Result};
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHop,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::net::IpAddr;

/// A unicast route in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// The next hop is on the link even if no address says so (VXLAN peers).
    pub onlink: bool,
}

impl RouteSpec {
    fn to_message(&self) -> RouteMessage {
        self.to_message_with(RouteProtocol::Boot)
    }

    fn to_message_with(&self, protocol: RouteProtocol) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(self.dst.addr());
        msg.header.destination_prefix_length = self.dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = protocol;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if self.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if self.onlink {
            msg.header.flags = RouteFlags::Onlink;
        }
        if self.dst.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    self.dst.addr(),
                )));
        }
        if let Some(gw) = self.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        msg
    }
}

/// One next hop of a [`MultipathRouteSpec`], weight 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    pub gateway: IpAddr,
    pub oif: u32,
}

/// An equal-cost multipath route in the main table
/// (`ip route add DST nexthop via A dev X nexthop via B dev X`): the kernel picks a next hop
/// per flow by hashing its addresses (`fib_multipath_hash_policy`, L3 by default), so one
/// flow always takes the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipathRouteSpec {
    pub dst: IpNet,
    pub nexthops: Vec<NextHop>,
}

impl MultipathRouteSpec {
    fn to_message(&self) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(self.dst.addr());
        msg.header.destination_prefix_length = self.dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = RouteScope::Universe;
        if self.dst.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    self.dst.addr(),
                )));
        }
        let hops = self
            .nexthops
            .iter()
            .map(|h| {
                let mut nh = RouteNextHop::default();
                nh.interface_index = h.oif;
                nh.attributes
                    .push(RouteAttribute::Gateway(RouteAddress::from(h.gateway)));
                nh
            })
            .collect();
        msg.attributes.push(RouteAttribute::MultiPath(hops));
        msg
    }
}

impl Op {
    /// Adds the multipath `route`; `Exists` if one for the same destination is there.
    pub fn add_multipath_route(route: &MultipathRouteSpec) -> Op {
        let via: Vec<String> = route
            .nexthops
            .iter()
            .map(|h| h.gateway.to_string())
            .collect();
        Op::new(
            RouteNetlinkMessage::NewRoute(route.to_message()),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add route {} nexthops via {}", route.dst, via.join(", ")),
        )
    }

    /// Adds `route`; `Exists` if one for the same destination is there.
    pub fn add_route(route: &RouteSpec) -> Op {
        Op::new(
            RouteNetlinkMessage::NewRoute(route.to_message()),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add route {} via {:?}", route.dst, route.gateway),
        )
    }

    /// Creates or replaces the route to `route.dst` (`ip route replace … proto PROTOCOL`),
    /// tagged with `protocol` so its owner can recognise it later.
    pub fn replace_route(route: &RouteSpec, protocol: u8) -> Op {
        Op::new(
            RouteNetlinkMessage::NewRoute(route.to_message_with(RouteProtocol::from(protocol))),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!(
                "replace route {} via {:?} proto {protocol}",
                route.dst, route.gateway
            ),
        )
    }

    /// Deletes the route to `route.dst` only if it carries `protocol` (the kernel matches
    /// a non-zero protocol on delete); `NotFound` otherwise.
    pub fn delete_route_with_protocol(route: &RouteSpec, protocol: u8) -> Op {
        Op::new(
            RouteNetlinkMessage::DelRoute(route.to_message_with(RouteProtocol::from(protocol))),
            0,
            format!("delete route {} proto {protocol}", route.dst),
        )
    }
}

impl Netlink {
    /// Adds a route; `Exists` if one for the same destination is there.
    pub fn add_route(&mut self, route: &RouteSpec) -> Result<()> {
        self.run(Op::add_route(route))
    }

    /// Deletes a route; `NotFound` if it is not there.
    pub fn delete_route(&mut self, route: &RouteSpec) -> Result<()> {
        self.request(RouteNetlinkMessage::DelRoute(route.to_message()), 0, || {
            format!("delete route {}", route.dst)
        })
        .map(drop)
    }

    /// Unicast routes of the main table, IPv4 and IPv6.
    pub fn routes(&mut self) -> Result<Vec<RouteSpec>> {
        self.dump_routes(None)
    }

    /// Unicast routes of the main table that carry route protocol `protocol`.
    pub fn routes_with_protocol(&mut self, protocol: u8) -> Result<Vec<RouteSpec>> {
        self.dump_routes(Some(RouteProtocol::from(protocol)))
    }

    fn dump_routes(&mut self, protocol: Option<RouteProtocol>) -> Result<Vec<RouteSpec>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = fam;
            let replies = self.request(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP, || {
                "list routes".into()
            })?;
            for r in replies {
                let RouteNetlinkMessage::NewRoute(m) = r else {
                    continue;
                };
                if m.header.table != RouteHeader::RT_TABLE_MAIN
                    || m.header.kind != RouteType::Unicast
                    || protocol.is_some_and(|p| p != m.header.protocol)
                {
                    continue;
                }
                let mut dst = None;
                let mut gateway = None;
                let mut oif = None;
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Destination(d) => dst = route_ip(d),
                        RouteAttribute::Gateway(g) => gateway = route_ip(g),
                        RouteAttribute::Oif(o) => oif = Some(*o),
                        _ => {}
                    }
                }
                let unspecified: IpAddr = if fam == AddressFamily::Inet {
                    IpAddr::from([0u8; 4])
                } else {
                    IpAddr::from([0u16; 8])
                };
                let Ok(dst) = IpNet::new(
                    dst.unwrap_or(unspecified),
                    m.header.destination_prefix_length,
                ) else {
                    continue;
                };
                out.push(RouteSpec {
                    dst,
                    gateway,
                    oif,
                    onlink: m.header.flags.contains(RouteFlags::Onlink),
                });
            }
        }
        Ok(out)
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}
