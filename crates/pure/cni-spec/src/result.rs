//! Pure: the ADD result in one internal form, parsed from and rendered to every spec
//! version podnet speaks.
//!
//! Differences by version (spec section 5 and the version upgrade notes):
//! - 0.3.0 – 0.4.0: each `ips` entry carries `"version": "4" | "6"`.
//! - 1.0.0: `version` is gone from `ips`.
//! - 1.1.0: interfaces may carry `mtu`, `socketPath`, `pciID`; routes may carry `mtu`,
//!   `advmss`, `priority`, `table`, `scope`.
//!
//! Fields a version does not know are left out when rendering for it.

use crate::error::{CniError, ErrorCode};
use crate::version::CniVersion;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside a sandbox; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with its prefix length, e.g. `10.244.1.5/24`.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

/// An ADD result, independent of spec version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

/// The wire form of one `ips` entry, lenient about `version` so every version parses.
#[derive(Deserialize)]
struct WireIp {
    address: IpNet,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct WireResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<WireIp>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
}

impl CniResult {
    /// Parses a result (e.g. a `prevResult`) of any supported version.
    pub fn parse(value: &Value) -> Result<Self, CniError> {
        let wire: WireResult = serde_json::from_value(value.clone()).map_err(|e| {
            CniError::new(ErrorCode::Decode, format!("cannot decode prevResult: {e}"))
        })?;
        let result = CniResult {
            interfaces: wire.interfaces,
            ips: wire
                .ips
                .into_iter()
                .map(|ip| IpConfig {
                    address: ip.address,
                    gateway: ip.gateway,
                    interface: ip.interface,
                })
                .collect(),
            routes: wire.routes,
            dns: wire.dns,
        };
        for ip in &result.ips {
            if ip.interface.is_some_and(|i| i >= result.interfaces.len()) {
                return Err(CniError::invalid_config(format!(
                    "prevResult: ip {} points at interface {:?}, but there are {} interfaces",
                    ip.address,
                    ip.interface,
                    result.interfaces.len()
                )));
            }
        }
        Ok(result)
    }

    /// Appends `other` after `self`, shifting `other`'s interface indexes. A chained plugin
    /// must return its predecessor's result plus its own changes.
    pub fn merge(mut self, other: CniResult) -> CniResult {
        let offset = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(other.routes);
        if self.dns.is_empty() {
            self.dns = other.dns;
        }
        self
    }

    /// Renders the result as the given spec version defines it.
    pub fn render(&self, version: CniVersion) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), version.as_str().into());
        if !self.interfaces.is_empty() {
            let ifaces = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut v = serde_json::to_value(i).expect("interface serializes");
                    if !version.is_1_1() {
                        strip(&mut v, &["mtu", "socketPath", "pciID"]);
                    }
                    v
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(ifaces));
        }
        let ips = self
            .ips
            .iter()
            .map(|ip| {
                let mut m = Map::new();
                if version.ips_carry_version() {
                    let fam = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    m.insert("version".into(), fam.into());
                }
                m.insert("address".into(), ip.address.to_string().into());
                if let Some(gw) = ip.gateway {
                    m.insert("gateway".into(), gw.to_string().into());
                }
                if let Some(i) = ip.interface {
                    m.insert("interface".into(), i.into());
                }
                Value::Object(m)
            })
            .collect();
        out.insert("ips".into(), Value::Array(ips));
        if !self.routes.is_empty() {
            let routes = self
                .routes
                .iter()
                .map(|r| {
                    let mut v = serde_json::to_value(r).expect("route serializes");
                    if !version.is_1_1() {
                        strip(&mut v, &["mtu", "advmss", "priority", "table", "scope"]);
                    }
                    v
                })
                .collect();
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert(
            "dns".into(),
            serde_json::to_value(&self.dns).expect("dns serializes"),
        );
        Value::Object(out)
    }
}

fn strip(v: &mut Value, keys: &[&str]) {
    if let Value::Object(m) = v {
        for k in keys {
            m.remove(*k);
        }
    }
}
