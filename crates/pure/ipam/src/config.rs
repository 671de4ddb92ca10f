//! Pure: the `ipam` section of a network configuration, validated into a [`Pool`].
//!
//! Accepted shape (host-local's): either `ranges: [[{subnet, rangeStart, rangeEnd,
//! gateway}, …], …]` — one inner list per address family/range set, each pod gets one
//! address from every set — or the single-range shorthand `subnet`/`rangeStart`/
//! `rangeEnd`/`gateway` at the top level.

use crate::IpamError;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RangeSpec {
    pub subnet: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// A route the pod gets (`gw` defaults to the gateway of the address's range).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticRoute {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// The raw `ipam` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamSpec {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<Vec<RangeSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<StaticRoute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
}

/// One validated range: `start..=end` inside `subnet`, `gateway` never handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl Range {
    pub fn contains(&self, ip: IpAddr) -> bool {
        same_family(ip, self.start)
            && to_u128(ip) >= to_u128(self.start)
            && to_u128(ip) <= to_u128(self.end)
    }

    /// Number of addresses in `start..=end` (gateway included).
    pub fn len(&self) -> u128 {
        to_u128(self.end) - to_u128(self.start) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    fn overlaps(&self, other: &Range) -> bool {
        same_family(self.start, other.start)
            && to_u128(self.start) <= to_u128(other.end)
            && to_u128(other.start) <= to_u128(self.end)
    }
}

/// Ranges of one family; a pod gets exactly one address from each set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ranges: Vec<Range>,
}

impl RangeSet {
    /// A stable name for messages and for the round-robin cursor: the first subnet.
    pub fn key(&self) -> String {
        self.ranges[0].subnet.to_string()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    pub fn range_of(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    pub fn is_ipv4(&self) -> bool {
        self.ranges[0].start.is_ipv4()
    }
}

/// A validated pool: what the allocator works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub sets: Vec<RangeSet>,
    pub routes: Vec<StaticRoute>,
}

impl IpamSpec {
    /// Checks the section and fills in defaults: `rangeStart` = network + 1, `rangeEnd` =
    /// last address (IPv4: the one before broadcast), `gateway` = network + 1.
    pub fn validate(&self) -> Result<Pool, IpamError> {
        let mut raw_sets = self.ranges.clone();
        if let Some(subnet) = &self.subnet {
            if !raw_sets.is_empty() {
                return Err(IpamError::InvalidConfig(
                    "give either \"subnet\" or \"ranges\", not both".into(),
                ));
            }
            raw_sets.push(vec![RangeSpec {
                subnet: subnet.clone(),
                range_start: self.range_start,
                range_end: self.range_end,
                gateway: self.gateway,
            }]);
        }
        if raw_sets.is_empty() {
            return Err(IpamError::InvalidConfig(
                "no \"ranges\" (or \"subnet\") given".into(),
            ));
        }
        let mut sets: Vec<RangeSet> = Vec::new();
        for (i, raw) in raw_sets.iter().enumerate() {
            if raw.is_empty() {
                return Err(IpamError::InvalidConfig(format!("ranges[{i}] is empty")));
            }
            let ranges = raw
                .iter()
                .enumerate()
                .map(|(j, r)| {
                    validate_range(r).map_err(|e| prefix(e, &format!("ranges[{i}][{j}]")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let fam = ranges[0].start.is_ipv4();
            if ranges.iter().any(|r| r.start.is_ipv4() != fam) {
                return Err(IpamError::InvalidConfig(format!(
                    "ranges[{i}] mixes IPv4 and IPv6; put each family in its own range set"
                )));
            }
            let set = RangeSet { ranges };
            for (a, ra) in set.ranges.iter().enumerate() {
                for rb in &set.ranges[a + 1..] {
                    if ra.overlaps(rb) {
                        return Err(IpamError::InvalidConfig(format!(
                            "ranges[{i}]: {} and {} overlap",
                            ra.subnet, rb.subnet
                        )));
                    }
                }
            }
            for (k, other) in sets.iter().enumerate() {
                if other
                    .ranges
                    .iter()
                    .any(|ro| set.ranges.iter().any(|r| r.overlaps(ro)))
                {
                    return Err(IpamError::InvalidConfig(format!(
                        "ranges[{i}] overlaps ranges[{k}]"
                    )));
                }
            }
            sets.push(set);
        }
        Ok(Pool {
            sets,
            routes: self.routes.clone(),
        })
    }
}

fn prefix(e: IpamError, at: &str) -> IpamError {
    match e {
        IpamError::InvalidConfig(m) => IpamError::InvalidConfig(format!("{at}: {m}")),
        other => other,
    }
}

fn validate_range(r: &RangeSpec) -> Result<Range, IpamError> {
    let subnet: IpNet = r
        .subnet
        .parse()
        .map_err(|_| IpamError::InvalidConfig(format!("subnet {:?} is not a CIDR", r.subnet)))?;
    if subnet.trunc() != subnet {
        return Err(IpamError::InvalidConfig(format!(
            "subnet {subnet} has host bits set (did you mean {}?)",
            subnet.trunc()
        )));
    }
    let host_bits = subnet.max_prefix_len() - subnet.prefix_len();
    if host_bits < 2 {
        return Err(IpamError::InvalidConfig(format!(
            "subnet {subnet} is too small"
        )));
    }
    let net = to_u128(subnet.network());
    let last = to_u128(subnet.broadcast());
    let is_v4 = subnet.addr().is_ipv4();
    let default_end = if is_v4 { last - 1 } else { last };
    let start = r.range_start.map(to_u128).unwrap_or(net + 1);
    let end = r.range_end.map(to_u128).unwrap_or(default_end);
    let gateway = r.gateway.map(to_u128).unwrap_or(net + 1);
    for (what, ip) in [
        ("rangeStart", r.range_start),
        ("rangeEnd", r.range_end),
        ("gateway", r.gateway),
    ] {
        if let Some(ip) = ip
            && (!same_family(ip, subnet.addr()) || !subnet.contains(&ip))
        {
            return Err(IpamError::InvalidConfig(format!(
                "{what} {ip} is not in subnet {subnet}"
            )));
        }
    }
    if start <= net || end > default_end || start > end {
        return Err(IpamError::InvalidConfig(format!(
            "range {}-{} is empty or includes the network or broadcast address of {subnet}",
            from_u128(start, is_v4),
            from_u128(end, is_v4)
        )));
    }
    Ok(Range {
        subnet,
        start: from_u128(start, is_v4),
        end: from_u128(end, is_v4),
        gateway: from_u128(gateway, is_v4),
    })
}

pub(crate) fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub(crate) fn from_u128(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((n as u32).into())
    } else {
        IpAddr::V6(n.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> IpamSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn shorthand_gets_host_local_defaults() {
        let pool = spec(r#"{"subnet":"10.1.0.0/24"}"#).validate().unwrap();
        let r = &pool.sets[0].ranges[0];
        assert_eq!(r.start.to_string(), "10.1.0.1");
        assert_eq!(r.end.to_string(), "10.1.0.254");
        assert_eq!(r.gateway.to_string(), "10.1.0.1");
        let pool = spec(r#"{"subnet":"fd00::/120"}"#).validate().unwrap();
        assert_eq!(pool.sets[0].ranges[0].end.to_string(), "fd00::ff");
    }

    #[test]
    fn bad_ranges_are_named() {
        let cases = [
            (r#"{"subnet":"10.1.0.5/24"}"#, "host bits"),
            (r#"{"subnet":"10.1.0.0/31"}"#, "too small"),
            (r#"{"subnet":"nope"}"#, "not a CIDR"),
            (
                r#"{"subnet":"10.1.0.0/24","rangeStart":"10.2.0.1"}"#,
                "not in subnet",
            ),
            (
                r#"{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.9","rangeEnd":"10.1.0.3"}"#,
                "empty",
            ),
            (
                r#"{"subnet":"10.1.0.0/24","rangeEnd":"10.1.0.255"}"#,
                "broadcast",
            ),
            (
                r#"{"ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"fd00::/64"}]]}"#,
                "mixes",
            ),
            (
                r#"{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.1.0.0/25"}]]}"#,
                "overlaps",
            ),
            (
                r#"{"ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"10.1.0.0/24"}]]}"#,
                "overlap",
            ),
            (r#"{"ranges":[[]]}"#, "is empty"),
            (r#"{}"#, "no \"ranges\""),
            (
                r#"{"subnet":"10.1.0.0/24","ranges":[[{"subnet":"10.2.0.0/24"}]]}"#,
                "not both",
            ),
        ];
        for (json, want) in cases {
            let err = spec(json).validate().unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err} (want {want:?})");
        }
    }
}
