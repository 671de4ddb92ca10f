//! Apply: links — bridges, veth pairs, and their settings.

use crate::{Error, Netlink, Op, Result};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use std::os::fd::{AsFd, AsRawFd};

/// What podnet reads back about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// Index of the bridge it is a port of.
    pub master: Option<u32>,
    pub up: bool,
    /// `IFLA_INFO_KIND` (`bridge`, `veth`, `vxlan`, …).
    pub kind: Option<String>,
    /// `IFLA_LINK`: for a veth, the index of its peer (in the peer's namespace).
    pub peer: Option<u32>,
}

impl Link {
    /// `aa:bb:cc:dd:ee:ff`, as results carry it.
    pub fn mac_string(&self) -> Option<String> {
        self.mac.map(format_mac)
    }

    pub(crate) fn from_message(m: &LinkMessage) -> Link {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: None,
            master: None,
            up: m.header.flags.contains(LinkFlags::Up),
            kind: None,
            peer: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(b) if b.len() == 6 => {
                    link.mac = Some(b.as_slice().try_into().expect("six bytes"));
                }
                LinkAttribute::Mtu(v) => link.mtu = Some(*v),
                LinkAttribute::Controller(v) => link.master = Some(*v),
                LinkAttribute::Link(v) => link.peer = Some(*v),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            link.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// A veth pair whose peer is created directly inside another namespace — its name there
/// (e.g. `eth0`) never exists in the node's namespace, even for an instant.
pub struct VethSpec<'a, F: AsFd> {
    pub name: &'a str,
    pub peer_name: &'a str,
    pub peer_netns: F,
    pub mtu: Option<u32>,
    pub peer_mac: Option<[u8; 6]>,
    /// Bridge to attach the host end to, at creation.
    pub master: Option<u32>,
    /// Bring the host end up at creation (the peer stays down, see `create_veth`).
    pub up: bool,
}

impl Netlink {
    /// The link called `name`, or `None`.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg, || format!("get link {name}"))
    }

    /// The link with index `index`, or `None`.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg, || format!("get link #{index}"))
    }

    fn get_link(&mut self, msg: LinkMessage, op: impl Fn() -> String) -> Result<Option<Link>> {
        match self.request(RouteNetlinkMessage::GetLink(msg), 0, op) {
            Ok(replies) => Ok(first_link(&replies)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link in the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            || "list links".into(),
        )?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(Link::from_message(m)),
                _ => None,
            })
            .collect())
    }

    /// Creates a bridge with a fixed MAC; `Exists` if a link of that name is there.
    pub fn create_bridge(&mut self, name: &str, mac: [u8; 6], mtu: Option<u32>) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("create bridge {name}"),
        )
        .map(drop)
    }

    /// Creates a veth pair, peer end inside `spec.peer_netns`, in one request: MTU, MACs,
    /// master and up state are set at creation rather than by follow-up requests.
    ///
    /// Returns the host end as the kernel echoes it (`NLM_F_ECHO` on link creation is
    /// honoured since Linux 6.3; this machine runs 6.18). `None` from an older kernel —
    /// look the link up then.
    pub fn create_veth<F: AsFd>(&mut self, spec: &VethSpec<'_, F>) -> Result<Option<Link>> {
        let up = |msg: &mut LinkMessage| {
            if spec.up {
                msg.header.flags = LinkFlags::Up;
                msg.header.change_mask = LinkFlags::Up;
            }
        };
        // The peer cannot be brought up here: veth_newlink configures it before the pair
        // is linked, and veth_open then fails with ENOTCONN (seen on 6.18). Callers set it
        // up in its own namespace.
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(spec.peer_name.to_string()));
        peer.attributes
            .push(LinkAttribute::NetNsFd(spec.peer_netns.as_fd().as_raw_fd()));
        if let Some(mtu) = spec.mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = spec.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        let mut msg = LinkMessage::default();
        up(&mut msg);
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.to_string()));
        if let Some(mtu) = spec.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(master) = spec.master {
            msg.attributes.push(LinkAttribute::Controller(master));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        let replies = self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
            || format!("create veth {} (peer {})", spec.name, spec.peer_name),
        )?;
        // The kernel echoes one message per change (registration, up, master): the last
        // one describes the finished link.
        Ok(replies
            .iter()
            .rev()
            .find_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(Link::from_message(m)),
                _ => None,
            })
            .filter(|l| l.name == spec.name))
    }

    /// Sets a link up (or down).
    pub fn set_up(&mut self, index: u32, up: bool) -> Result<()> {
        self.run(Op::set_up(index, up))
    }

    /// Makes `index` a port of the bridge `master`.
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        self.run(Op::set_master(index, master))
    }

    /// Hairpin mode on a bridge port: frames may leave by the port they came in on, so a
    /// pod can reach itself through a Service address.
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<()> {
        self.run(Op::set_hairpin(index, on))
    }

    /// Deletes a link (a veth takes its peer with it); `NotFound` if it is gone.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        self.run(Op::delete_link(index))
    }

    /// Deletes the link called `name`; `Ok(false)` if there was none.
    pub fn delete_link_by_name(&mut self, name: &str) -> Result<bool> {
        let Some(link) = self.link_by_name(name)? else {
            return Ok(false);
        };
        match self.delete_link(link.index) {
            Ok(()) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn first_link(replies: &[RouteNetlinkMessage]) -> Option<Link> {
    replies.iter().find_map(|r| match r {
        RouteNetlinkMessage::NewLink(m) => Some(Link::from_message(m)),
        _ => None,
    })
}

/// Link operations, for [`Netlink::run`] or [`Netlink::batch`].
impl Op {
    /// Sets link `index` up or down.
    pub fn set_up(index: u32, up: bool) -> Op {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.change_mask = LinkFlags::Up;
        if up {
            msg.header.flags = LinkFlags::Up;
        }
        Op::new(
            RouteNetlinkMessage::SetLink(msg),
            0,
            format!("set link #{index} up={up}"),
        )
    }

    /// Makes link `index` a port of `master`; `master` 0 detaches it from its bridge.
    pub fn set_master(index: u32, master: u32) -> Op {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Controller(master));
        Op::new(
            RouteNetlinkMessage::SetLink(msg),
            0,
            format!("attach link #{index} to #{master}"),
        )
    }

    /// Renames link `index` (the kernel refuses while the link is up).
    pub fn rename(index: u32, name: &str) -> Op {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        Op::new(
            RouteNetlinkMessage::SetLink(msg),
            0,
            format!("rename link #{index} to {name}"),
        )
    }

    /// Hairpin mode on bridge port `index`.
    pub fn set_hairpin(index: u32, on: bool) -> Op {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )])),
        ]));
        Op::new(
            RouteNetlinkMessage::NewLink(msg),
            0,
            format!("set hairpin on link #{index}"),
        )
    }

    /// Deletes link `index`.
    pub fn delete_link(index: u32) -> Op {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        Op::new(
            RouteNetlinkMessage::DelLink(msg),
            0,
            format!("delete link #{index}"),
        )
    }
}
