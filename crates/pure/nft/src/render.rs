//! Pure: IR → canonical `nft -f` text. Deterministic (same IR, same bytes): golden tests,
//! `podnet` dump commands and humans read it; `nft -f` accepts it, with the meaning the
//! netlink encoding has (proven in podnet-netlink's `tests/nftables.rs`).

use crate::ir::*;
use crate::types::type_info;
use std::fmt::Write as _;
use std::time::Duration;

/// `ip`, `ip6`, `inet`, `netdev`.
pub fn family_name(f: Family) -> &'static str {
    match f {
        Family::Ip => "ip",
        Family::Ip6 => "ip6",
        Family::Inet => "inet",
        Family::Netdev => "netdev",
    }
}

/// The whole transaction as an `nft -f` script, one command per line (an `AddElements`
/// with no elements is no operation and prints nothing).
pub fn render_transaction(tx: &Transaction) -> String {
    let mut out = String::new();
    for op in &tx.ops {
        let line = render_op(tx.family, &tx.table, op);
        if !line.is_empty() {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// One operation as one `nft` command (without newline).
pub fn render_op(family: Family, table: &str, op: &Op) -> String {
    let ft = format!("{} {table}", family_name(family));
    match op {
        Op::AddTable => format!("add table {ft}"),
        Op::DeleteTable => format!("delete table {ft}"),
        Op::AddChain(c) => match &c.base {
            None => format!("add chain {ft} {}", c.name),
            Some(b) => format!("add chain {ft} {} {{ {} }}", c.name, render_base(b)),
        },
        Op::FlushChain(c) => format!("flush chain {ft} {c}"),
        Op::DeleteChain(c) => format!("delete chain {ft} {c}"),
        Op::AddRule { chain, rule } => format!("add rule {ft} {chain} {}", render_rule(rule)),
        Op::AddSet(s) => format!(
            "add {} {ft} {} {{ {} }}",
            if s.is_map() { "map" } else { "set" },
            s.name,
            render_set_body(s).join("; ") + ";"
        ),
        Op::FlushSet(s) => format!("flush set {ft} {s}"),
        Op::FlushMap(s) => format!("flush map {ft} {s}"),
        Op::DeleteSet(s) => format!("delete set {ft} {s}"),
        Op::AddElements { set, elems } if !elems.is_empty() => {
            format!("add element {ft} {set} {{ {} }}", render_elements(elems))
        }
        Op::DeleteElements { set, elems } if !elems.is_empty() => {
            let keys: Vec<Element> = elems.iter().map(|e| Element::key(e.key.clone())).collect();
            format!("delete element {ft} {set} {{ {} }}", render_elements(&keys))
        }
        Op::AddElements { .. } | Op::DeleteElements { .. } => String::new(),
    }
}

/// A whole table in nft's block syntax (sets first, then chains, in IR order).
pub fn render_table(t: &Table) -> String {
    let mut out = format!("table {} {} {{\n", family_name(t.family), t.name);
    let mut first = true;
    for (s, elems) in &t.sets {
        if !first {
            out.push('\n');
        }
        first = false;
        let _ = writeln!(
            out,
            "\t{} {} {{",
            if s.is_map() { "map" } else { "set" },
            s.name
        );
        for line in render_set_body(s) {
            let _ = writeln!(out, "\t\t{line}");
        }
        if !elems.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", render_elements(elems));
        }
        out.push_str("\t}\n");
    }
    for (c, rules) in &t.chains {
        if !first {
            out.push('\n');
        }
        first = false;
        let _ = writeln!(out, "\tchain {} {{", c.name);
        if let Some(b) = &c.base {
            let _ = writeln!(out, "\t\t{}", render_base(b));
        }
        for r in rules {
            let _ = writeln!(out, "\t\t{}", render_rule(r));
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
}

fn render_base(b: &BaseChain) -> String {
    let kind = match b.kind {
        ChainKind::Filter => "filter",
        ChainKind::Nat => "nat",
    };
    let hook = match b.hook {
        Hook::Prerouting => "prerouting",
        Hook::Input => "input",
        Hook::Forward => "forward",
        Hook::Output => "output",
        Hook::Postrouting => "postrouting",
        Hook::Ingress => "ingress",
    };
    let policy = match b.policy {
        Policy::Accept => "accept",
        Policy::Drop => "drop",
    };
    let device = match &b.device {
        Some(d) => format!(" device \"{d}\""),
        None => String::new(),
    };
    format!(
        "type {kind} hook {hook}{device} priority {}; policy {policy};",
        b.priority
    )
}

/// The declaration lines of a set (`type …`, `flags …`, …), without separators.
fn render_set_body(s: &Set) -> Vec<String> {
    let mut lines = Vec::new();
    let typeof_form =
        matches!(s.key, KeyDecl::Typeof(_)) || matches!(s.data, Some(SetData::Typeof(_)));
    let key = match &s.key {
        KeyDecl::Types(ts) if !typeof_form => join_types(ts),
        KeyDecl::Types(ts) => join_exprs(&ts.iter().map(|t| type_expr(*t)).collect::<Vec<_>>()),
        KeyDecl::Typeof(es) => join_exprs(es),
    };
    let data = s.data.as_ref().map(|d| match d {
        SetData::Verdict => "verdict".to_string(),
        SetData::Types(ts) if !typeof_form => join_types(ts),
        SetData::Types(ts) => join_exprs(&ts.iter().map(|t| type_expr(*t)).collect::<Vec<_>>()),
        SetData::Typeof(es) => join_exprs(es),
    });
    let kw = if typeof_form { "typeof" } else { "type" };
    match data {
        Some(d) => lines.push(format!("{kw} {key} : {d}")),
        None => lines.push(format!("{kw} {key}")),
    }
    let mut flags = Vec::new();
    if s.flags.interval {
        flags.push("interval");
    }
    if s.flags.timeout {
        flags.push("timeout");
    }
    if s.flags.dynamic {
        flags.push("dynamic");
    }
    if !flags.is_empty() {
        lines.push(format!("flags {}", flags.join(",")));
    }
    if let Some(t) = s.timeout {
        lines.push(format!("timeout {}", render_duration(t)));
    }
    if let Some(n) = s.size {
        lines.push(format!("size {n}"));
    }
    if let Some(c) = &s.comment {
        lines.push(format!("comment {}", quote(c)));
    }
    lines
}

/// An expression whose type is `t`, for `typeof` declarations of `type`-declared parts.
fn type_expr(t: Type) -> Expr {
    match t {
        Type::Ipv4Addr => Expr::IpDaddr,
        Type::Ipv6Addr => Expr::Ip6Daddr,
        Type::InetProto => Expr::MetaL4Proto,
        Type::InetService => Expr::ThDport,
        Type::Mark => Expr::MetaMark,
        Type::IfName => Expr::MetaIifname,
    }
}

fn join_types(ts: &[Type]) -> String {
    ts.iter()
        .map(|t| type_info(*t).name)
        .collect::<Vec<_>>()
        .join(" . ")
}

fn join_exprs(es: &[Expr]) -> String {
    es.iter()
        .map(|e| render_expr(*e))
        .collect::<Vec<_>>()
        .join(" . ")
}

/// Durations as nft writes them: `1d2h3m4s5ms`.
pub fn render_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if ms >= len {
            let _ = write!(out, "{}{unit}", ms / len);
            ms %= len;
        }
    }
    out
}

fn render_elements(elems: &[Element]) -> String {
    elems
        .iter()
        .map(render_element)
        .collect::<Vec<_>>()
        .join(", ")
}

fn render_element(e: &Element) -> String {
    let key = join_values(&e.key);
    match &e.data {
        None => key,
        Some(ElemData::Verdict(v)) => format!("{key} : {}", render_verdict(v)),
        Some(ElemData::Values(vs)) => format!("{key} : {}", join_values(vs)),
    }
}

fn join_values(vs: &[Value]) -> String {
    vs.iter().map(render_value).collect::<Vec<_>>().join(" . ")
}

/// A value in nft syntax.
pub fn render_value(v: &Value) -> String {
    match v {
        Value::Ipv4(a) => a.to_string(),
        Value::Ipv6(a) => a.to_string(),
        Value::Proto(p) => match p {
            1 => "icmp".into(),
            6 => "tcp".into(),
            17 => "udp".into(),
            58 => "ipv6-icmp".into(),
            132 => "sctp".into(),
            n => n.to_string(),
        },
        Value::Port(p) => p.to_string(),
        Value::Mark(m) => format!("0x{m:08x}"),
        Value::Integer(n) => n.to_string(),
        Value::Byte(n) => n.to_string(),
        Value::IfName(n) => quote(n),
        Value::AddrType(t) => match t {
            AddrType::Unicast => "unicast",
            AddrType::Local => "local",
            AddrType::Broadcast => "broadcast",
            AddrType::Multicast => "multicast",
        }
        .into(),
        Value::Ipv4Prefix(a, 32) => a.to_string(),
        Value::Ipv6Prefix(a, 128) => a.to_string(),
        Value::Ipv4Prefix(a, l) => format!("{a}/{l}"),
        Value::Ipv6Prefix(a, l) => format!("{a}/{l}"),
        Value::Ipv4Range(a, b) if a == b => a.to_string(),
        Value::Ipv4Range(a, b) => format!("{a}-{b}"),
        Value::PortRange(a, b) if a == b => a.to_string(),
        Value::PortRange(a, b) => format!("{a}-{b}"),
    }
}

/// A verdict in nft syntax.
pub fn render_verdict(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
    }
}

/// An expression in nft syntax.
pub fn render_expr(e: Expr) -> String {
    match e {
        Expr::IpSaddr => "ip saddr".into(),
        Expr::IpDaddr => "ip daddr".into(),
        Expr::IpTtl => "ip ttl".into(),
        Expr::Ip6Saddr => "ip6 saddr".into(),
        Expr::Ip6Daddr => "ip6 daddr".into(),
        Expr::ThSport => "th sport".into(),
        Expr::ThDport => "th dport".into(),
        Expr::MetaL4Proto => "meta l4proto".into(),
        Expr::MetaMark => "meta mark".into(),
        Expr::MetaIifname => "iifname".into(),
        Expr::MetaOifname => "oifname".into(),
        Expr::FibDaddrType => "fib daddr type".into(),
        Expr::CtStatus => "ct status".into(),
        Expr::CtState => "ct state".into(),
        Expr::Numgen { modulus, offset: 0 } => {
            format!("numgen random mod {modulus}")
        }
        Expr::Numgen { modulus, offset } => {
            format!("numgen random mod {modulus} offset {offset}")
        }
    }
}

/// Names of the bits of `ct state` / `ct status`, joined by `sep`; `None` for other
/// expressions or unnamed bits.
fn bit_names(expr: Expr, bits: u32, sep: &str) -> Option<String> {
    let table: &[(u32, &str)] = match expr {
        Expr::CtState => &[
            (ct_state::INVALID, "invalid"),
            (ct_state::ESTABLISHED, "established"),
            (ct_state::RELATED, "related"),
            (ct_state::NEW, "new"),
            (ct_state::UNTRACKED, "untracked"),
        ],
        Expr::CtStatus => &[
            (ct_status::EXPECTED, "expected"),
            (ct_status::SEEN_REPLY, "seen-reply"),
            (ct_status::ASSURED, "assured"),
            (ct_status::CONFIRMED, "confirmed"),
            (ct_status::SNAT, "snat"),
            (ct_status::DNAT, "dnat"),
            (ct_status::DYING, "dying"),
        ],
        _ => return None,
    };
    let mut names = Vec::new();
    let mut rest = bits;
    for (bit, name) in table {
        if bits & bit != 0 {
            names.push(*name);
            rest &= !bit;
        }
    }
    (rest == 0 && !names.is_empty()).then(|| names.join(sep))
}

fn render_stmt(s: &Stmt) -> String {
    match s {
        Stmt::Match { expr, op, value } => {
            let v = render_value(value);
            match op {
                CmpOp::Eq => format!("{} {v}", render_expr(*expr)),
                CmpOp::Ne => format!("{} != {v}", render_expr(*expr)),
                CmpOp::Gt => format!("{} > {v}", render_expr(*expr)),
            }
        }
        Stmt::MatchBits {
            expr,
            mask,
            op,
            value,
        } => {
            let e = render_expr(*expr);
            let names = bit_names(*expr, *mask, ",");
            match (names, op, value) {
                (Some(n), CmpOp::Ne, 0) => format!("{e} {n}"),
                (Some(_), _, _) => {
                    let m = bit_names(*expr, *mask, "|").unwrap_or_default();
                    let v = if *value == 0 {
                        "0".to_string()
                    } else {
                        bit_names(*expr, *value, "|").unwrap_or_else(|| value.to_string())
                    };
                    format!("{e} & ({m}) {} {v}", op_text(*op))
                }
                (None, _, _) => format!("{e} & 0x{mask:08x} {} 0x{value:08x}", op_text(*op)),
            }
        }
        Stmt::InSet { keys, set, negate } => {
            let neg = if *negate { "!= " } else { "" };
            format!("{} {neg}@{set}", join_exprs(keys))
        }
        Stmt::Vmap { keys, map } => format!("{} vmap @{map}", join_exprs(keys)),
        Stmt::Dnat { addr, port } => {
            let fam = if addr.is_ipv4() { "ip" } else { "ip6" };
            match (addr, port) {
                (std::net::IpAddr::V4(a), Some(p)) => format!("dnat {fam} to {a}:{p}"),
                (std::net::IpAddr::V6(a), Some(p)) => format!("dnat {fam} to [{a}]:{p}"),
                (a, None) => format!("dnat {fam} to {a}"),
            }
        }
        Stmt::DnatMap { keys, map, ipv6 } => format!(
            "dnat {} addr . port to {} map @{map}",
            if *ipv6 { "ip6" } else { "ip" },
            join_exprs(keys)
        ),
        Stmt::Masquerade { fully_random } => {
            if *fully_random {
                "masquerade fully-random".into()
            } else {
                "masquerade".into()
            }
        }
        Stmt::MarkSetOr(bits) => format!("meta mark set meta mark | 0x{bits:08x}"),
        Stmt::Reject(r) => match r {
            Reject::TcpReset => "reject with tcp reset".into(),
            Reject::IcmpPortUnreachable => "reject with icmp type port-unreachable".into(),
            Reject::IcmpxPortUnreachable => "reject with icmpx type port-unreachable".into(),
            Reject::IcmpAdminProhibited => "reject with icmp type admin-prohibited".into(),
        },
        Stmt::Counter => "counter".into(),
        Stmt::SetUpdate { set, keys, timeout } => match timeout {
            Some(t) => format!(
                "update @{set} {{ {} timeout {} }}",
                join_exprs(keys),
                render_duration(*t)
            ),
            None => format!("update @{set} {{ {} }}", join_exprs(keys)),
        },
        Stmt::NoTrack => "notrack".into(),
        Stmt::Fwd { to, device } => {
            let to = match to {
                FwdTo::Key(e) => render_expr(*e),
                FwdTo::Map { keys, map } => format!("{} map @{map}", join_exprs(keys)),
            };
            format!("fwd ip to {to} device {}", quote(&device.name))
        }
        Stmt::Verdict(v) => render_verdict(v),
    }
}

fn op_text(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "==",
        CmpOp::Ne => "!=",
        CmpOp::Gt => ">",
    }
}

/// A rule's statements (and comment) on one line.
pub fn render_rule(r: &Rule) -> String {
    let mut out = r
        .stmts
        .iter()
        .map(render_stmt)
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(c) = &r.comment {
        let _ = write!(out, " comment {}", quote(c));
    }
    out
}

/// A double-quoted nft string (nft strings cannot contain `"`; they are dropped).
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', ""))
}
