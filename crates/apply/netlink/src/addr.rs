//! Apply: interface addresses.

use crate::{Netlink, Op, Result};
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::net::IpAddr;

/// An address on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub net: IpNet,
}

impl Netlink {
    /// Adds `net` to link `index`; `Exists` if it is there. IPv6 addresses skip duplicate
    /// address detection (`nodad`): the address comes from IPAM and is unique by
    /// construction, and DAD would hold it "tentative" (unusable) for about a second.
    pub fn add_address(&mut self, index: u32, net: IpNet) -> Result<()> {
        self.run(Op::add_address(index, net))
    }

    /// Every address, optionally only those of link `index`.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>> {
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
            || "list addresses".into(),
        )?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewAddress(m) = r else {
                continue;
            };
            if index.is_some_and(|i| i != m.header.index) {
                continue;
            }
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
            // point-to-point links, so prefer LOCAL when present.
            let ip = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                })
                .or_else(|| {
                    m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                });
            if let Some(ip) = ip
                && let Ok(net) = IpNet::new(ip, m.header.prefix_len)
            {
                out.push(Address {
                    index: m.header.index,
                    net,
                });
            }
        }
        Ok(out)
    }
}

impl Op {
    /// Adds `net` to link `index` (IPv6 without DAD, see [`Netlink::add_address`]).
    pub fn add_address(index: u32, net: IpNet) -> Op {
        let mut msg = address_message(index, net);
        if net.addr().is_ipv6() {
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        Op::new(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add address {net} to link #{index}"),
        )
    }

    /// Removes `net` from link `index`; `NotFound` if it is not there.
    pub fn delete_address(index: u32, net: IpNet) -> Op {
        let msg = address_message(index, net);
        Op::new(
            RouteNetlinkMessage::DelAddress(msg),
            0,
            format!("delete address {net} from link #{index}"),
        )
    }
}

/// The message naming address `net` on link `index`, as both add and delete send it.
fn address_message(index: u32, net: IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(net.addr());
    msg.header.prefix_len = net.prefix_len();
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(net.addr()));
    msg.attributes.push(AddressAttribute::Address(net.addr()));
    msg
}

pub(crate) fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}
