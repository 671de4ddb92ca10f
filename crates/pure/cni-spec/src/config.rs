//! Pure: podnet's network configuration (stdin) and the request it forms with the
//! environment, validated per verb so the edge can act without further checks.
//!
//! ```json
//! { "cniVersion": "1.1.0", "name": "podnet", "type": "podnet",
//!   "bridge": "podnet0", "mtu": 1500, "hairpinMode": true,
//!   "isGateway": true, "isDefaultGateway": true,
//!   "ipam": { "ranges": [[{"subnet": "10.244.1.0/24"}]], "routes": [], "dataDir": "…" },
//!   "dns": { "nameservers": ["10.96.0.10"] },
//!   "capabilities": { "ips": true, "mac": true } }
//! ```
//! JSON that does not parse is code 6; JSON of the wrong shape or with bad values is
//! code 7; a field podnet knows but will not honour (`ipMasq`, a foreign `ipam.type`) is
//! code 2. Unknown fields are ignored, as runtimes add their own.

use crate::env::{Command, Environment, is_cni_name, validate_ifname};
use crate::error::{CniError, ErrorCode};
use crate::result::{CniResult, Dns};
use crate::version::CniVersion;
use ipnet::IpNet;
use podnet_ipam::{IpamSpec, Owner, Pool};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::IpAddr;

/// Where allocations live unless `ipam.dataDir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/podnet";
pub const DEFAULT_BRIDGE: &str = "podnet0";

/// One attachment named in GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// `runtimeConfig`: what the runtime passes for the capabilities podnet declares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RuntimeConfig {
    /// Capability `ips`: static addresses, with or without prefix length.
    #[serde(default)]
    pub ips: Vec<String>,
    /// Capability `mac`.
    #[serde(default)]
    pub mac: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    #[serde(default)]
    cni_versions: Vec<String>,
    name: Option<String>,
    bridge: Option<String>,
    mtu: Option<u32>,
    hairpin_mode: Option<bool>,
    is_gateway: Option<bool>,
    is_default_gateway: Option<bool>,
    ip_masq: Option<bool>,
    ipam: Option<IpamSpec>,
    #[serde(default)]
    dns: Dns,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    prev_result: Option<Value>,
    args: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    /// The name an earlier draft of the spec used; libcni sends both.
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<Attachment>>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub version: CniVersion,
    pub name: String,
    pub bridge: String,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    /// The bridge carries the gateway address of each range.
    pub is_gateway: bool,
    /// The pod gets a default route via the gateway.
    pub is_default_gateway: bool,
    pub pool: Pool,
    pub data_dir: String,
    pub dns: Dns,
    /// Static addresses from `runtimeConfig.ips` and `args.cni.ips`.
    pub static_ips: Vec<IpAddr>,
    pub mac: Option<[u8; 6]>,
    pub prev_result: Option<CniResult>,
    /// GC only: who keeps their allocations.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The version an error about `stdin` should be written in: the request's own when it can
/// be read, the latest otherwise.
pub fn version_for_errors(stdin: &[u8]) -> CniVersion {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .and_then(|s| CniVersion::parse(&s).ok())
        .unwrap_or(CniVersion::LATEST)
}

/// Reads only the version (all `VERSION` needs).
pub fn parse_version(stdin: &[u8]) -> Result<CniVersion, CniError> {
    pick_version(&parse_raw(stdin)?)
}

/// stdin → the podnet entry's raw fields: syntax errors are code 6, shape errors code 7.
fn parse_raw(stdin: &[u8]) -> Result<RawConf, CniError> {
    serde_json::from_value(select_plugin(parse_json(stdin)?)?)
        .map_err(|e| CniError::invalid_config(format!("network configuration: {e}")))
}

fn parse_json(stdin: &[u8]) -> Result<Value, CniError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::new(
            ErrorCode::Decode,
            "no network configuration on stdin",
        ));
    }
    serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            ErrorCode::Decode,
            format!("network configuration is not JSON: {e}"),
        )
    })
}

/// A conflist handed straight to the plugin: use its podnet entry, with the list's name
/// and version, as a runtime would.
fn select_plugin(value: Value) -> Result<Value, CniError> {
    let Some(plugins) = value.get("plugins").and_then(Value::as_array) else {
        return Ok(value);
    };
    let mut entry = plugins
        .iter()
        .find(|p| p.get("type").and_then(Value::as_str) == Some("podnet"))
        .cloned()
        .ok_or_else(|| CniError::invalid_config("conflist has no plugin of type \"podnet\""))?;
    for key in ["name", "cniVersion", "cniVersions"] {
        if let Some(v) = value.get(key) {
            entry[key] = v.clone();
        }
    }
    Ok(entry)
}

fn pick_version(raw: &RawConf) -> Result<CniVersion, CniError> {
    if !raw.cni_versions.is_empty() {
        return CniVersion::highest_supported(raw.cni_versions.iter().map(String::as_str))
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::IncompatibleVersion,
                    format!("none of cniVersions {:?} is supported", raw.cni_versions),
                )
            });
    }
    match &raw.cni_version {
        Some(v) => CniVersion::parse(v),
        None => Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            "cniVersion is missing",
        )),
    }
}

impl NetConf {
    /// Parses and validates stdin.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let raw = parse_raw(stdin)?;
        let version = pick_version(&raw)?;
        let name = raw
            .name
            .clone()
            .ok_or_else(|| CniError::invalid_config("\"name\" is missing"))?;
        validate_network_name(&name)?;
        let bridge = raw
            .bridge
            .clone()
            .unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        validate_ifname(&bridge).map_err(|_| {
            CniError::invalid_config(format!("bridge {bridge:?} is not a valid interface name"))
        })?;
        if let Some(mtu) = raw.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(CniError::invalid_config(format!(
                "mtu {mtu} is outside 68..=65535"
            )));
        }
        if raw.ip_masq == Some(true) {
            return Err(CniError::new(
                ErrorCode::UnsupportedField,
                "ipMasq: the podnet plugin does not masquerade; the podnet agent masquerades pod egress",
            ));
        }
        let ipam = raw
            .ipam
            .clone()
            .ok_or_else(|| CniError::invalid_config("\"ipam\" is missing"))?;
        if let Some(kind) = ipam.kind.as_deref()
            && !matches!(kind, "podnet" | "host-local")
        {
            return Err(CniError::new(
                ErrorCode::UnsupportedField,
                format!(
                    "ipam.type {kind:?}: podnet has IPAM built in (use \"podnet\" or leave it out)"
                ),
            ));
        }
        let pool = ipam
            .validate()
            .map_err(|e| CniError::invalid_config(e.to_string()))?;
        let mut static_ips = Vec::new();
        for s in raw
            .runtime_config
            .ips
            .iter()
            .chain(&args_cni_ips(raw.args.as_ref())?)
        {
            static_ips.push(parse_ip_or_cidr(s)?);
        }
        let mac = raw
            .runtime_config
            .mac
            .as_deref()
            .map(parse_mac)
            .transpose()?;
        let prev_result = raw.prev_result.as_ref().map(CniResult::parse).transpose()?;
        Ok(NetConf {
            version,
            name,
            bridge,
            mtu: raw.mtu,
            hairpin: raw.hairpin_mode.unwrap_or(true),
            is_gateway: raw.is_gateway.unwrap_or(true),
            is_default_gateway: raw.is_default_gateway.unwrap_or(true),
            pool,
            data_dir: ipam
                .data_dir
                .unwrap_or_else(|| DEFAULT_DATA_DIR.to_string()),
            dns: raw.dns,
            static_ips,
            mac,
            prev_result,
            valid_attachments: raw.valid_attachments.or(raw.attachments),
        })
    }
}

/// `args.cni.ips` (the CNI conventions document).
fn args_cni_ips(args: Option<&Value>) -> Result<Vec<String>, CniError> {
    let Some(ips) = args.and_then(|a| a.get("cni")).and_then(|c| c.get("ips")) else {
        return Ok(Vec::new());
    };
    serde_json::from_value(ips.clone())
        .map_err(|_| CniError::invalid_config("args.cni.ips must be a list of strings"))
}

fn parse_ip_or_cidr(s: &str) -> Result<IpAddr, CniError> {
    s.parse::<IpAddr>()
        .or_else(|_| s.parse::<IpNet>().map(|n| n.addr()))
        .map_err(|_| CniError::invalid_config(format!("static address {s:?} is not an IP address")))
}

/// `aa:bb:cc:dd:ee:ff`; must be unicast.
pub fn parse_mac(s: &str) -> Result<[u8; 6], CniError> {
    let bad = || CniError::invalid_config(format!("{s:?} is not a MAC address"));
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(bad());
        }
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 == 1 {
        return Err(CniError::invalid_config(format!(
            "{s:?} is a multicast MAC address"
        )));
    }
    Ok(mac)
}

/// Spec: starts alphanumeric, then alphanumerics, `_`, `.`, `-`. It also names the IPAM
/// directory, so this check keeps paths inside the data dir.
fn validate_network_name(name: &str) -> Result<(), CniError> {
    if is_cni_name(name) {
        Ok(())
    } else {
        Err(CniError::invalid_config(format!(
            "network name {name:?} is not valid"
        )))
    }
}

/// One invocation: environment and configuration, checked against each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub env: Environment,
    pub conf: NetConf,
}

impl Request {
    /// Validates what a verb other than VERSION needs.
    pub fn new(env: Environment, mut conf: NetConf) -> Result<Request, CniError> {
        let v = conf.version;
        match env.command {
            Command::Check if !v.allows_check() => {
                return Err(CniError::new(
                    ErrorCode::IncompatibleVersion,
                    format!("CHECK needs cniVersion 0.4.0 or later, got {v}"),
                ));
            }
            Command::Check if conf.prev_result.is_none() => {
                return Err(CniError::invalid_config("CHECK needs prevResult"));
            }
            Command::Status | Command::Gc if !v.is_1_1() => {
                return Err(CniError::new(
                    ErrorCode::IncompatibleVersion,
                    format!(
                        "{} needs cniVersion 1.1.0 or later, got {v}",
                        env.command.as_str()
                    ),
                ));
            }
            Command::Gc if conf.valid_attachments.is_none() => {
                return Err(CniError::invalid_config(
                    "GC needs cni.dev/valid-attachments",
                ));
            }
            _ => {}
        }
        conf.static_ips.extend(env.args.ips.iter().copied());
        if conf.mac.is_none()
            && let Some(m) = &env.args.mac
        {
            conf.mac = Some(
                parse_mac(m)
                    .map_err(|e| CniError::invalid_env(format!("CNI_ARGS MAC: {}", e.msg)))?,
            );
        }
        Ok(Request { env, conf })
    }

    /// The attachment this request is about (ADD, DEL, CHECK).
    pub fn owner(&self) -> Option<Owner> {
        Some(Owner::new(
            self.env.container_id.clone()?,
            self.env.ifname.clone()?,
        ))
    }
}
