//! Orchestration (admission): decode a body into its `k8s-openapi` type (errors name the JSON
//! path), apply the defaults the real API server applies, and check the semantic rules.
//! Invariant: an object that leaves `admit` decodes as its kind and passes every check; the
//! stored form is the typed round trip (unknown fields dropped, as the real server does).

use ipnet::IpNet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::net::IpAddr;

use crate::error::{ApiError, ApiResult, Cause};
use crate::resource::Kind;

/// The name in a raw body, for error messages before decoding.
pub fn raw_name(v: &Value) -> String {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .or_else(|| v.pointer("/metadata/generateName").and_then(Value::as_str))
        .unwrap_or("")
        .to_string()
}

fn decode<T: DeserializeOwned>(kind: Kind, v: &Value) -> ApiResult<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        ApiError::undecodable(kind, &raw_name(v), &path, &e.inner().to_string())
    })
}

fn encode<T: Serialize>(t: &T) -> ApiResult<Value> {
    serde_json::to_value(t).map_err(|e| ApiError::internal(format!("encode: {e}")))
}

/// Decode, default, validate; returns the normalized object.
pub fn admit(kind: Kind, v: &Value, service_cidr: IpNet) -> ApiResult<Value> {
    let name = raw_name(v);
    let mut causes = Vec::new();
    let out = match kind {
        Kind::Namespace => {
            let ns: Namespace = decode(kind, v)?;
            check_meta(&mut causes, &ns.metadata, true);
            encode(&ns)?
        }
        Kind::Node => {
            let node: Node = decode(kind, v)?;
            check_meta(&mut causes, &node.metadata, false);
            for (i, c) in node
                .spec
                .iter()
                .flat_map(|s| s.pod_cidrs.iter().flatten())
                .enumerate()
            {
                if c.parse::<IpNet>().is_err() {
                    causes.push(cause(
                        format!("spec.podCIDRs[{i}]"),
                        format!("Invalid value: {c:?}: must be a CIDR"),
                    ));
                }
            }
            encode(&node)?
        }
        Kind::Pod => {
            let mut pod: Pod = decode(kind, v)?;
            check_meta(&mut causes, &pod.metadata, false);
            validate_pod(&mut causes, &mut pod);
            encode(&pod)?
        }
        Kind::Service => {
            let mut svc: Service = decode(kind, v)?;
            check_meta(&mut causes, &svc.metadata, true);
            validate_service(&mut causes, &mut svc, service_cidr);
            encode(&svc)?
        }
        Kind::EndpointSlice => {
            let es: EndpointSlice = decode(kind, v)?;
            check_meta(&mut causes, &es.metadata, false);
            if !matches!(es.address_type.as_str(), "IPv4" | "IPv6" | "FQDN") {
                causes.push(cause(
                    "addressType",
                    format!(
                        "Unsupported value: {:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\"",
                        es.address_type
                    ),
                ));
            }
            for (i, p) in es.ports.iter().flatten().enumerate() {
                if let Some(n) = p.port {
                    check_port(&mut causes, &format!("ports[{i}].port"), n, false);
                }
            }
            validate_slice(&mut causes, &es);
            encode(&es)?
        }
        Kind::NetworkPolicy => {
            let np: NetworkPolicy = decode(kind, v)?;
            check_meta(&mut causes, &np.metadata, false);
            validate_network_policy(&mut causes, &np);
            encode(&np)?
        }
        Kind::Lease => {
            let lease: Lease = decode(kind, v)?;
            check_meta(&mut causes, &lease.metadata, false);
            validate_lease(&mut causes, &lease);
            encode(&lease)?
        }
    };
    if causes.is_empty() {
        Ok(out)
    } else {
        Err(ApiError::invalid(kind, &name, causes))
    }
}

/// What the server does with fields the kind's type does not know (`?fieldValidation=`), as
/// the real API server: Strict refuses the write, Warn (the default) accepts it and says so
/// in `Warning` headers, Ignore drops them silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

impl FieldValidation {
    pub fn from_query(value: Option<&str>) -> ApiResult<Self> {
        match value {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Strict") => Ok(Self::Strict),
            Some("Ignore") => Ok(Self::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\" or \"Strict\", not {other:?}"
            ))),
        }
    }

    /// The warnings to send with a successful write of `v`, or the Strict refusal.
    pub fn check(self, kind: Kind, v: &Value) -> ApiResult<Vec<String>> {
        if self == Self::Ignore {
            return Ok(Vec::new());
        }
        let unknown: Vec<String> = unknown_fields(kind, v)
            .into_iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        if self == Self::Strict && !unknown.is_empty() {
            let k = kind.kind();
            return Err(ApiError::bad_request(format!(
                "{k} in version \"v1\" cannot be handled as a {k}: strict decoding error: {}",
                unknown.join(", ")
            ))
            .on(kind, &raw_name(v)));
        }
        Ok(unknown)
    }
}

/// Paths (`spec.foo`, `spec.ports[0].bar`) present in `v` that the kind's type does not
/// know: what the typed round trip drops. Empty when `v` does not decode at all (admission
/// reports that, naming the path).
pub fn unknown_fields(kind: Kind, v: &Value) -> Vec<String> {
    fn round<T: DeserializeOwned + Serialize>(v: &Value) -> Option<Value> {
        serde_json::from_value::<T>(v.clone())
            .ok()
            .and_then(|t| serde_json::to_value(t).ok())
    }
    fn diff(input: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
        match (input, kept) {
            (Value::Object(i), Value::Object(k)) => {
                for (key, iv) in i.iter().filter(|(_, iv)| !iv.is_null()) {
                    let p = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    match k.get(key) {
                        Some(kv) => diff(iv, kv, &p, out),
                        None => out.push(p),
                    }
                }
            }
            (Value::Array(i), Value::Array(k)) => {
                for (n, (iv, kv)) in i.iter().zip(k).enumerate() {
                    diff(iv, kv, &format!("{path}[{n}]"), out);
                }
            }
            _ => {}
        }
    }
    let kept = match kind {
        Kind::Namespace => round::<Namespace>(v),
        Kind::Node => round::<Node>(v),
        Kind::Pod => round::<Pod>(v),
        Kind::Service => round::<Service>(v),
        Kind::EndpointSlice => round::<EndpointSlice>(v),
        Kind::NetworkPolicy => round::<NetworkPolicy>(v),
        Kind::Lease => round::<Lease>(v),
    };
    let mut out = Vec::new();
    if let Some(kept) = kept {
        diff(v, &kept, "", &mut out);
    }
    out
}

fn cause(field: impl Into<String>, message: impl Into<String>) -> Cause {
    Cause {
        field: field.into(),
        message: message.into(),
    }
}

/// The name (`None` is fine here when generateName will fill it; the store checks
/// presence) and the labels.
fn check_meta(causes: &mut Vec<Cause>, meta: &ObjectMeta, label: bool) {
    check_name(causes, meta.name.as_deref(), label);
    for (k, v) in meta.labels.iter().flatten() {
        check_label(causes, "metadata.labels", k, v);
    }
}

/// A label's key (a qualified name) and value, as the API server checks them.
fn check_label(causes: &mut Vec<Cause>, field: &str, key: &str, value: &str) {
    if let Err(m) = qualified_name(key) {
        causes.push(cause(field, format!("Invalid value: {key:?}: {m}")));
    }
    if let Err(m) = label_value(value) {
        causes.push(cause(
            format!("{field}[{key}]"),
            format!("Invalid value: {value:?}: {m}"),
        ));
    }
}

/// `[prefix/]name`: the prefix a DNS subdomain, the name at most 63 characters of
/// alphanumerics, `-`, `_`, `.`, starting and ending with an alphanumeric.
pub fn qualified_name(s: &str) -> Result<(), String> {
    let name = match s.split_once('/') {
        Some((prefix, name)) => {
            dns1123_subdomain(prefix).map_err(|m| format!("prefix part {m}"))?;
            name
        }
        None => s,
    };
    if name.is_empty() || name.len() > 63 || !label_chars(name) {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63 characters), with an optional DNS subdomain prefix and '/'".into());
    }
    Ok(())
}

/// Empty, or at most 63 characters of alphanumerics, `-`, `_`, `.`, starting and ending
/// with an alphanumeric.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || (s.len() <= 63 && label_chars(s)) {
        Ok(())
    } else {
        Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63 characters)".into())
    }
}

fn label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter()
        .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// A `LabelSelector` as the API server checks it: label syntax in `matchLabels`; in
/// `matchExpressions` a known operator, values for In/NotIn and none for
/// Exists/DoesNotExist.
fn check_selector(causes: &mut Vec<Cause>, field: &str, sel: &LabelSelector) {
    for (k, v) in sel.match_labels.iter().flatten() {
        check_label(causes, &format!("{field}.matchLabels"), k, v);
    }
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        if let Err(m) = qualified_name(&e.key) {
            causes.push(cause(
                format!("{f}.key"),
                format!("Invalid value: {:?}: {m}", e.key),
            ));
        }
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => causes.push(cause(
                format!("{f}.values"),
                "Required value: must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => causes.push(cause(
                format!("{f}.values"),
                "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => causes.push(cause(
                format!("{f}.operator"),
                format!(
                    "Unsupported value: {other:?}: supported values: \"DoesNotExist\", \"Exists\", \"In\", \"NotIn\""
                ),
            )),
        }
        for (j, v) in values.iter().enumerate() {
            if let Err(m) = label_value(v) {
                causes.push(cause(
                    format!("{f}.values[{j}]"),
                    format!("Invalid value: {v:?}: {m}"),
                ));
            }
        }
    }
}

/// A port name (IANA_SVC_NAME): at most 15 lowercase alphanumerics or `-`, at least one
/// letter, no `-` at either end and no `--`.
pub fn port_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err("must be no more than 15 characters, contain only lowercase alphanumerics or '-', contain at least one letter, and not begin or end with '-' or contain '--'".into())
    }
}

fn check_name(causes: &mut Vec<Cause>, name: Option<&str>, label: bool) {
    if let Some(n) = name
        && let Err(m) = if label {
            dns1123_label(n)
        } else {
            dns1123_subdomain(n)
        }
    {
        causes.push(cause("metadata.name", format!("Invalid value: {n:?}: {m}")));
    }
}

pub fn dns1123_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (at most 63 characters)".into())
    }
}

pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| dns1123_label(l).is_ok());
    if ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into())
    }
}

fn check_port(causes: &mut Vec<Cause>, field: &str, n: i32, zero_ok: bool) {
    let lo = if zero_ok { 0 } else { 1 };
    if !(lo..=65535).contains(&n) {
        causes.push(cause(
            field,
            format!("Invalid value: {n}: must be between {lo} and 65535, inclusive"),
        ));
    }
}

fn check_protocol(causes: &mut Vec<Cause>, field: &str, p: Option<&str>) {
    if let Some(p) = p
        && !matches!(p, "TCP" | "UDP" | "SCTP")
    {
        causes.push(cause(
            field,
            format!("Unsupported value: {p:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
        ));
    }
}

fn validate_pod(causes: &mut Vec<Cause>, pod: &mut Pod) {
    let Some(spec) = pod.spec.as_mut() else {
        causes.push(cause("spec", "Required value"));
        return;
    };
    if spec.containers.is_empty() {
        causes.push(cause("spec.containers", "Required value"));
    }
    for (i, c) in spec.containers.iter_mut().enumerate() {
        let f = format!("spec.containers[{i}]");
        if c.name.is_empty() {
            causes.push(cause(format!("{f}.name"), "Required value"));
        } else if let Err(m) = dns1123_label(&c.name) {
            causes.push(cause(
                format!("{f}.name"),
                format!("Invalid value: {:?}: {m}", c.name),
            ));
        }
        if c.image.as_deref().unwrap_or("").is_empty() {
            causes.push(cause(format!("{f}.image"), "Required value"));
        }
        for (j, p) in c.ports.iter_mut().flatten().enumerate() {
            if let Some(name) = &p.name
                && let Err(m) = port_name(name)
            {
                causes.push(cause(
                    format!("{f}.ports[{j}].name"),
                    format!("Invalid value: {name:?}: {m}"),
                ));
            }
            check_port(
                causes,
                &format!("{f}.ports[{j}].containerPort"),
                p.container_port,
                false,
            );
            if let Some(h) = p.host_port {
                check_port(causes, &format!("{f}.ports[{j}].hostPort"), h, true);
            }
            check_protocol(
                causes,
                &format!("{f}.ports[{j}].protocol"),
                p.protocol.as_deref(),
            );
            p.protocol.get_or_insert_with(|| "TCP".into());
        }
    }
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
}

fn validate_service(causes: &mut Vec<Cause>, svc: &mut Service, service_cidr: IpNet) {
    let spec = svc.spec.get_or_insert_with(Default::default);
    let ty = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
    if !matches!(
        ty.as_str(),
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        causes.push(cause("spec.type", format!("Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"")));
    }
    if ty == "ExternalName" && spec.external_name.as_deref().unwrap_or("").is_empty() {
        causes.push(cause("spec.externalName", "Required value"));
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if let Some(ip) = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
    {
        match ip.parse::<std::net::IpAddr>() {
            Ok(a) if service_cidr.contains(&a) => {}
            Ok(_) => causes.push(cause("spec.clusterIP", format!("Invalid value: {ip:?}: provided IP is not in the valid range. The range of valid IPs is {service_cidr}"))),
            Err(_) => causes.push(cause("spec.clusterIP", format!("Invalid value: {ip:?}: must be a valid IP address or \"None\""))),
        }
    }
    if headless && ty != "ClusterIP" {
        causes.push(cause(
            "spec.clusterIP",
            format!("Invalid value: \"None\": may not be set to 'None' for {ty} services"),
        ));
    }
    let ports = spec.ports.get_or_insert_with(Vec::new);
    if ports.is_empty() && ty != "ExternalName" && !headless {
        causes.push(cause("spec.ports", "Required value"));
    }
    let multi = ports.len() > 1;
    for (i, p) in ports.iter_mut().enumerate() {
        let f = format!("spec.ports[{i}]");
        check_port(causes, &format!("{f}.port"), p.port, false);
        check_protocol(causes, &format!("{f}.protocol"), p.protocol.as_deref());
        p.protocol.get_or_insert_with(|| "TCP".into());
        if multi && p.name.as_deref().unwrap_or("").is_empty() {
            causes.push(cause(format!("{f}.name"), "Required value"));
        }
        match &p.target_port {
            None => p.target_port = Some(IntOrString::Int(p.port)),
            Some(IntOrString::Int(n)) => check_port(causes, &format!("{f}.targetPort"), *n, false),
            Some(IntOrString::String(s)) if s.is_empty() => causes.push(cause(
                format!("{f}.targetPort"),
                "Invalid value: \"\": must be a port number or name",
            )),
            Some(IntOrString::String(_)) => {}
        }
        if let Some(np) = p.node_port.filter(|n| *n != 0) {
            if !matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
                causes.push(cause(
                    format!("{f}.nodePort"),
                    format!("Forbidden: may not be used when `type` is '{ty}'"),
                ));
            }
            check_port(causes, &format!("{f}.nodePort"), np, false);
        }
    }
    if ty != "ExternalName" {
        spec.session_affinity.get_or_insert_with(|| "None".into());
        spec.internal_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
        spec.ip_families.get_or_insert_with(|| vec!["IPv4".into()]);
        spec.ip_family_policy
            .get_or_insert_with(|| "SingleStack".into());
    }
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        spec.external_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
    }
    validate_service_policies(causes, spec, &ty);
}

/// Affinity, traffic policies and external addresses, with the real API server's messages
/// (pkg/apis/core/validation: ValidateService).
fn validate_service_policies(causes: &mut Vec<Cause>, spec: &ServiceSpec, ty: &str) {
    let one_of = |field: &str, v: &str, allowed: &[&str]| {
        let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        cause(
            field,
            format!(
                "Unsupported value: {v:?}: supported values: {}",
                list.join(", ")
            ),
        )
    };
    if let Some(a) = spec.session_affinity.as_deref()
        && !matches!(a, "ClientIP" | "None")
    {
        causes.push(one_of("spec.sessionAffinity", a, &["ClientIP", "None"]));
    }
    if let Some(t) = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
    {
        let field = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
        if spec.session_affinity.as_deref() != Some("ClientIP") {
            causes.push(cause(
                field,
                format!(
                    "Invalid value: {t}: must not be set when `sessionAffinity` is not ClientIP"
                ),
            ));
        } else if !(1..=MAX_AFFINITY_SECONDS).contains(&t) {
            causes.push(cause(
                field,
                format!("Invalid value: {t}: must be greater than 0 and less than {MAX_AFFINITY_SECONDS}"),
            ));
        }
    }
    if let Some(p) = spec.external_traffic_policy.as_deref() {
        if !matches!(ty, "NodePort" | "LoadBalancer") {
            causes.push(cause(
                "spec.externalTrafficPolicy",
                format!("Invalid value: {p:?}: may only be set when `type` is 'NodePort' or 'LoadBalancer'"),
            ));
        } else if !matches!(p, "Cluster" | "Local") {
            causes.push(one_of(
                "spec.externalTrafficPolicy",
                p,
                &["Cluster", "Local"],
            ));
        }
    }
    if let Some(p) = spec.internal_traffic_policy.as_deref()
        && !matches!(p, "Cluster" | "Local")
    {
        causes.push(one_of(
            "spec.internalTrafficPolicy",
            p,
            &["Cluster", "Local"],
        ));
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        if ip.parse::<IpAddr>().is_err() {
            causes.push(cause(
                format!("spec.externalIPs[{i}]"),
                format!("Invalid value: {ip:?}: must be a valid IP address"),
            ));
        }
    }
    if let Some(ip) = spec.load_balancer_ip.as_deref().filter(|s| !s.is_empty()) {
        if ty != "LoadBalancer" {
            causes.push(cause(
                "spec.loadBalancerIP",
                format!("Invalid value: {ip:?}: may only be used when `type` is 'LoadBalancer'"),
            ));
        } else if ip.parse::<IpAddr>().is_err() {
            causes.push(cause(
                "spec.loadBalancerIP",
                format!("Invalid value: {ip:?}: must be a valid IP address"),
            ));
        }
    }
}

/// `sessionAffinityConfig.clientIP.timeoutSeconds` upper bound (core/v1 MaxClientIPServiceAffinitySeconds).
const MAX_AFFINITY_SECONDS: i32 = 86400;

/// Endpoints of an IP slice: exactly one address of the slice's family (the real API's
/// ValidateEndpointSlice), and port protocols the API knows.
fn validate_slice(causes: &mut Vec<Cause>, es: &EndpointSlice) {
    for (i, p) in es.ports.iter().flatten().enumerate() {
        check_protocol(
            causes,
            &format!("ports[{i}].protocol"),
            p.protocol.as_deref(),
        );
    }
    if es.address_type == "FQDN" {
        return;
    }
    for (i, e) in es.endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}].addresses");
        if e.addresses.len() != 1 {
            causes.push(cause(
                field.clone(),
                format!(
                    "Invalid value: {}: must contain exactly 1 address",
                    e.addresses.len()
                ),
            ));
        }
        for (j, a) in e.addresses.iter().enumerate() {
            let ok = match es.address_type.as_str() {
                "IPv4" => a.parse::<std::net::Ipv4Addr>().is_ok(),
                _ => a.parse::<std::net::Ipv6Addr>().is_ok(),
            };
            if !ok {
                causes.push(cause(
                    format!("{field}[{j}]"),
                    format!(
                        "Invalid value: {a:?}: must be a valid {} address",
                        es.address_type
                    ),
                ));
            }
        }
    }
}

/// Upstream's `ValidateLeaseSpec`: a duration must be positive, a transition count not
/// negative.
fn validate_lease(causes: &mut Vec<Cause>, lease: &Lease) {
    let Some(spec) = &lease.spec else { return };
    if let Some(d) = spec.lease_duration_seconds
        && d <= 0
    {
        causes.push(cause(
            "spec.leaseDurationSeconds",
            format!("Invalid value: {d}: must be greater than 0"),
        ));
    }
    if let Some(t) = spec.lease_transitions
        && t < 0
    {
        causes.push(cause(
            "spec.leaseTransitions",
            format!("Invalid value: {t}: must be greater than or equal to 0"),
        ));
    }
}

fn validate_network_policy(causes: &mut Vec<Cause>, np: &NetworkPolicy) {
    let Some(spec) = np.spec.as_ref() else {
        return;
    };
    if let Some(sel) = &spec.pod_selector {
        check_selector(causes, "spec.podSelector", sel);
    }
    for (i, t) in spec.policy_types.iter().flatten().enumerate() {
        if !matches!(t.as_str(), "Ingress" | "Egress") {
            causes.push(cause(
                format!("spec.policyTypes[{i}]"),
                format!("Unsupported value: {t:?}: supported values: \"Egress\", \"Ingress\""),
            ));
        }
    }
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        peers(
            causes,
            &format!("spec.ingress[{i}].from"),
            r.from.as_deref(),
        );
        np_ports(
            causes,
            &format!("spec.ingress[{i}].ports"),
            r.ports.as_deref(),
        );
    }
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        peers(causes, &format!("spec.egress[{i}].to"), r.to.as_deref());
        np_ports(
            causes,
            &format!("spec.egress[{i}].ports"),
            r.ports.as_deref(),
        );
    }
}

fn peers(causes: &mut Vec<Cause>, field: &str, peers: Option<&[NetworkPolicyPeer]>) {
    for (i, p) in peers.unwrap_or_default().iter().enumerate() {
        if let Some(sel) = &p.pod_selector {
            check_selector(causes, &format!("{field}[{i}].podSelector"), sel);
        }
        if let Some(sel) = &p.namespace_selector {
            check_selector(causes, &format!("{field}[{i}].namespaceSelector"), sel);
        }
        let Some(b) = p.ip_block.as_ref() else {
            continue;
        };
        let f = format!("{field}[{i}].ipBlock");
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            causes.push(cause(
                f.clone(),
                "Forbidden: may not be specified with podSelector or namespaceSelector",
            ));
        }
        let Ok(cidr) = b.cidr.parse::<IpNet>() else {
            causes.push(cause(
                format!("{f}.cidr"),
                format!("Invalid value: {:?}: must be a valid CIDR", b.cidr),
            ));
            continue;
        };
        for (j, e) in b.except.iter().flatten().enumerate() {
            match e.parse::<IpNet>() {
                Ok(ex) if cidr.contains(&ex) && ex.prefix_len() > cidr.prefix_len() => {}
                Ok(_) => causes.push(cause(
                    format!("{f}.except[{j}]"),
                    format!(
                        "Invalid value: {e:?}: must be a strict subset of `cidr` {}",
                        b.cidr
                    ),
                )),
                Err(_) => causes.push(cause(
                    format!("{f}.except[{j}]"),
                    format!("Invalid value: {e:?}: must be a valid CIDR"),
                )),
            }
        }
    }
}

fn np_ports(causes: &mut Vec<Cause>, field: &str, ports: Option<&[NetworkPolicyPort]>) {
    for (i, p) in ports.unwrap_or_default().iter().enumerate() {
        let f = format!("{field}[{i}]");
        check_protocol(causes, &format!("{f}.protocol"), p.protocol.as_deref());
        match (&p.port, p.end_port) {
            (Some(IntOrString::Int(n)), end) => {
                check_port(causes, &format!("{f}.port"), *n, false);
                if let Some(e) = end
                    && e < *n
                {
                    causes.push(cause(
                        format!("{f}.endPort"),
                        format!("Invalid value: {e}: must be greater than or equal to `port`"),
                    ));
                }
            }
            (Some(IntOrString::String(name)), _) if port_name(name).is_err() => {
                causes.push(cause(
                    format!("{f}.port"),
                    format!("Invalid value: {name:?}: {}", port_name(name).unwrap_err()),
                ));
            }
            (Some(IntOrString::String(_)), Some(_)) => causes.push(cause(
                format!("{f}.endPort"),
                "Forbidden: may not be specified when `port` is non-numeric",
            )),
            (None, Some(_)) => causes.push(cause(
                format!("{f}.endPort"),
                "Forbidden: may not be specified when `port` is not specified",
            )),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn np_causes(spec: Value) -> Vec<String> {
        let np: NetworkPolicy =
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap();
        let mut causes = Vec::new();
        validate_network_policy(&mut causes, &np);
        causes.into_iter().map(|c| c.field).collect()
    }

    #[test]
    fn selectors_labels_and_port_names_are_checked_as_the_api_does() {
        assert!(
            np_causes(json!({"podSelector": {"matchExpressions": [
                {"key": "app", "operator": "In", "values": ["a", "b"]},
                {"key": "example.com/tier", "operator": "DoesNotExist"}]},
                "ingress": [{"ports": [{"port": "serve-80-tcp"}]}]}))
            .is_empty()
        );
        assert_eq!(
            np_causes(json!({"podSelector": {
                "matchLabels": {"bad key!": "v", "ok": "bad value!"},
                "matchExpressions": [
                    {"key": "app", "operator": "In"},
                    {"key": "app", "operator": "Exists", "values": ["x"]},
                    {"key": "app", "operator": "Near", "values": ["x"]}]},
                "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                    {"key": "-x", "operator": "Exists"}]}}],
                    "ports": [{"port": "Not_A_Name"}, {"port": "http--alt"}]}]})),
            [
                "spec.podSelector.matchLabels",
                "spec.podSelector.matchLabels[ok]",
                "spec.podSelector.matchExpressions[0].values",
                "spec.podSelector.matchExpressions[1].values",
                "spec.podSelector.matchExpressions[2].operator",
                "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].key",
                "spec.ingress[0].ports[0].port",
                "spec.ingress[0].ports[1].port",
            ]
        );
        assert!(qualified_name("kubernetes.io/metadata.name").is_ok());
        assert!(qualified_name("Upper_Case.ok").is_ok());
        assert!(qualified_name("a/b/c").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value(&"a".repeat(64)).is_err());
        assert!(port_name("dns-tcp").is_ok());
        assert!(port_name("80").is_err());
        assert!(port_name("a-very-long-port-name").is_err());
    }

    #[test]
    fn unknown_fields_are_named_by_path() {
        let svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "labels": {"any": "label"}, "bogus": 1},
            "spec": {"ports": [{"port": 80}, {"port": 81, "targetPrt": 8081}],
                     "selector": {"app": "web"}, "clusterIP": null, "typo": "x"}});
        assert_eq!(
            unknown_fields(Kind::Service, &svc),
            ["metadata.bogus", "spec.ports[1].targetPrt", "spec.typo"]
        );
        let clean =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}, "spec": {}});
        assert!(unknown_fields(Kind::Namespace, &clean).is_empty());
        // A body that does not decode is admission's to report, with its path.
        assert!(unknown_fields(Kind::Service, &json!({"spec": {"ports": "no"}})).is_empty());
    }

    #[test]
    fn field_validation_modes() {
        let bad = json!({"metadata": {"name": "x"}, "spec": {"typo": 1}});
        assert_eq!(
            FieldValidation::from_query(None).unwrap(),
            FieldValidation::Warn
        );
        assert!(FieldValidation::from_query(Some("strict")).is_err());
        let e = FieldValidation::Strict
            .check(Kind::Namespace, &bad)
            .unwrap_err();
        assert_eq!(e.code, 400);
        assert!(
            e.message
                .contains("strict decoding error: unknown field \"spec.typo\""),
            "{e}"
        );
        assert_eq!(
            FieldValidation::Warn.check(Kind::Namespace, &bad).unwrap(),
            ["unknown field \"spec.typo\""]
        );
        assert!(
            FieldValidation::Ignore
                .check(Kind::Namespace, &bad)
                .unwrap()
                .is_empty()
        );
    }

    fn fields_of(kind: Kind, v: serde_json::Value) -> Vec<String> {
        let cidr: IpNet = "10.96.0.0/12".parse().unwrap();
        match admit(kind, &v, cidr) {
            Ok(_) => vec![],
            Err(e) => e.causes.iter().map(|c| c.field.clone()).collect(),
        }
    }

    #[test]
    fn service_policies_and_addresses_are_checked() {
        let svc = |spec: serde_json::Value| {
            let mut s = json!({"metadata": {"name": "web"},
                               "spec": {"ports": [{"port": 80}], "selector": {"a": "b"}}});
            for (k, v) in spec.as_object().unwrap() {
                s["spec"][k] = v.clone();
            }
            fields_of(Kind::Service, s)
        };
        assert!(
            svc(json!({"sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}))
            .is_empty()
        );
        assert_eq!(
            svc(json!({"sessionAffinity": "Sticky"})),
            ["spec.sessionAffinity"]
        );
        assert_eq!(
            svc(json!({"sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}})),
            ["spec.sessionAffinityConfig.clientIP.timeoutSeconds"]
        );
        assert_eq!(
            svc(json!({"externalTrafficPolicy": "Local"})),
            ["spec.externalTrafficPolicy"],
            "only NodePort and LoadBalancer have an external policy"
        );
        assert_eq!(
            svc(json!({"type": "NodePort", "externalTrafficPolicy": "Nearest"})),
            ["spec.externalTrafficPolicy"]
        );
        assert_eq!(
            svc(json!({"internalTrafficPolicy": "Node"})),
            ["spec.internalTrafficPolicy"]
        );
        assert_eq!(
            svc(json!({"externalIPs": ["172.18.254.1", "300.1.1.1"]})),
            ["spec.externalIPs[1]"]
        );
        assert_eq!(
            svc(json!({"loadBalancerIP": "172.18.255.9"})),
            ["spec.loadBalancerIP"]
        );
        assert!(svc(json!({"type": "LoadBalancer", "loadBalancerIP": "172.18.255.9"})).is_empty());
    }

    #[test]
    fn endpoint_slice_addresses_and_protocols_are_checked() {
        let slice = |addresses: serde_json::Value, protocol: &str| {
            fields_of(
                Kind::EndpointSlice,
                json!({"metadata": {"name": "web-1"}, "addressType": "IPv4",
                       "endpoints": [{"addresses": addresses}],
                       "ports": [{"port": 80, "protocol": protocol}]}),
            )
        };
        assert!(slice(json!(["10.244.1.5"]), "TCP").is_empty());
        assert_eq!(
            slice(json!(["fd00::1"]), "TCP"),
            ["endpoints[0].addresses[0]"]
        );
        assert_eq!(
            slice(json!(["10.244.1.5", "10.244.1.6"]), "UDP"),
            ["endpoints[0].addresses"]
        );
        assert_eq!(slice(json!(["10.244.1.5"]), "ICMP"), ["ports[0].protocol"]);
    }
}
