//! Pure: facts about types and expressions that text and netlink share (names, widths,
//! nft's datatype numbers and byte orders).

use crate::ir::{Expr, Type};

/// nft's byte orders, as stored in set userdata.
pub(crate) const BYTEORDER_NONE: u32 = 0;
pub(crate) const BYTEORDER_HOST: u32 = 1;
pub(crate) const BYTEORDER_BIG: u32 = 2;

/// A datatype as nft knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TypeInfo {
    /// nft's datatype number (`enum datatypes`): concatenations combine these.
    pub id: u32,
    /// Width in bytes, unpadded.
    pub len: u32,
    pub byteorder: u32,
    pub name: &'static str,
}

pub(crate) const INTEGER: TypeInfo = TypeInfo {
    id: 4,
    len: 4,
    byteorder: BYTEORDER_HOST,
    name: "integer",
};

/// `integer` of 1 byte in network order: what `ip ttl` produces (its `typeof`).
pub(crate) const BYTE: TypeInfo = TypeInfo {
    id: 4,
    len: 1,
    byteorder: BYTEORDER_BIG,
    name: "integer",
};

/// nft's verdict datatype (`NFT_DATA_VERDICT`).
pub(crate) const VERDICT_TYPE: u32 = 0xffff_ff00;

pub(crate) fn type_info(t: Type) -> TypeInfo {
    let (id, len, byteorder, name) = match t {
        Type::Ipv4Addr => (7, 4, BYTEORDER_BIG, "ipv4_addr"),
        Type::Ipv6Addr => (8, 16, BYTEORDER_BIG, "ipv6_addr"),
        Type::InetProto => (12, 1, BYTEORDER_BIG, "inet_proto"),
        Type::InetService => (13, 2, BYTEORDER_BIG, "inet_service"),
        Type::Mark => (19, 4, BYTEORDER_HOST, "mark"),
        Type::IfName => (41, 16, BYTEORDER_HOST, "ifname"),
    };
    TypeInfo {
        id,
        len,
        byteorder,
        name,
    }
}

/// The datatype an expression produces, where it can key a set.
pub(crate) fn expr_type(e: Expr) -> Option<TypeInfo> {
    Some(match e {
        Expr::IpSaddr | Expr::IpDaddr => type_info(Type::Ipv4Addr),
        Expr::Ip6Saddr | Expr::Ip6Daddr => type_info(Type::Ipv6Addr),
        Expr::ThSport | Expr::ThDport => type_info(Type::InetService),
        Expr::MetaL4Proto => type_info(Type::InetProto),
        Expr::MetaMark => type_info(Type::Mark),
        Expr::MetaIifname | Expr::MetaOifname => type_info(Type::IfName),
        Expr::Numgen { .. } => INTEGER,
        Expr::IpTtl => BYTE,
        Expr::FibDaddrType | Expr::CtStatus | Expr::CtState => return None,
    })
}

/// Width in bytes of the value an expression loads.
pub(crate) fn expr_len(e: Expr) -> u32 {
    match e {
        Expr::IpSaddr | Expr::IpDaddr => 4,
        Expr::Ip6Saddr | Expr::Ip6Daddr => 16,
        Expr::ThSport | Expr::ThDport => 2,
        Expr::MetaL4Proto | Expr::IpTtl => 1,
        Expr::MetaIifname | Expr::MetaOifname => 16,
        Expr::MetaMark
        | Expr::FibDaddrType
        | Expr::CtStatus
        | Expr::CtState
        | Expr::Numgen { .. } => 4,
    }
}

/// Padded to the 4-byte registers concatenations use.
pub(crate) fn padded(len: u32) -> u32 {
    len.div_ceil(4) * 4
}

/// The combined datatype number of a concatenation, as nft computes it:
/// `(t1 << 6*(n-1)) | … | tn`.
pub(crate) fn concat_id(types: &[TypeInfo]) -> u32 {
    types.iter().fold(0, |acc, t| (acc << 6) | t.id)
}
