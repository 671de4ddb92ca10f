//! Pure: the few fields of a Service and an EndpointSlice that the zone is made of.
//!
//! The server keeps these instead of the `k8s-openapi` objects (with their metadata,
//! managed fields, annotations and status): at 10k Services that is the difference
//! between a few and tens of MiB. Converting keeps everything the zone needs, so
//! `render(from(object))` is what rendering the object itself would give.

use crate::zone::SERVICE_NAME_LABEL;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::net::IpAddr;

/// A Service's port, as the zone needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub name: Option<Box<str>>,
    pub port: i32,
    pub protocol: Option<Box<str>>,
}

/// What a Service contributes to the zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub namespace: Box<str>,
    pub name: Box<str>,
    /// `Some` for `type: ExternalName`: the `externalName` (if any).
    pub external_name: Option<Option<Box<str>>>,
    /// `clusterIPs`, or `clusterIP` when that list is empty; `None` is headless.
    pub cluster_ips: Box<[Box<str>]>,
    pub publish_not_ready: bool,
    pub ports: Box<[PortInfo]>,
}

/// A port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    pub name: Option<Box<str>>,
    pub port: Option<i32>,
    pub protocol: Option<Box<str>>,
}

/// One endpoint of a slice (addresses that do not parse are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    pub addresses: Box<[IpAddr]>,
    pub hostname: Option<Box<str>>,
    /// `conditions.ready`, true when unset.
    pub ready: bool,
}

/// What an EndpointSlice contributes to the zone (through its Service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    pub namespace: Box<str>,
    pub name: Box<str>,
    /// The `kubernetes.io/service-name` label.
    pub service: Option<Box<str>>,
    /// `addressType` is IPv4 or IPv6 (FQDN slices are not served).
    pub ip: bool,
    pub endpoints: Box<[EndpointInfo]>,
    pub ports: Box<[SlicePort]>,
}

fn boxed(s: &str) -> Box<str> {
    s.into()
}

impl ServiceInfo {
    /// `None` for a Service without a name or a spec (never served).
    pub fn from_service(svc: &Service) -> Option<ServiceInfo> {
        let name = svc.metadata.name.as_deref()?;
        let spec = svc.spec.as_ref()?;
        let cluster_ips: Box<[Box<str>]> = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(v), _) if !v.is_empty() => v.iter().map(|s| boxed(s)).collect(),
            (_, Some(ip)) if !ip.is_empty() => Box::new([boxed(ip)]),
            _ => Box::new([]),
        };
        Some(ServiceInfo {
            namespace: boxed(svc.metadata.namespace.as_deref().unwrap_or("default")),
            name: boxed(name),
            external_name: (spec.type_.as_deref() == Some("ExternalName"))
                .then(|| spec.external_name.as_deref().map(boxed)),
            cluster_ips,
            publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
            ports: spec
                .ports
                .iter()
                .flatten()
                .map(|p| PortInfo {
                    name: p.name.as_deref().map(boxed),
                    port: p.port,
                    protocol: p.protocol.as_deref().map(boxed),
                })
                .collect(),
        })
    }
}

impl SliceInfo {
    /// `None` for a slice without a name.
    pub fn from_slice(s: &EndpointSlice) -> Option<SliceInfo> {
        Some(SliceInfo {
            namespace: boxed(s.metadata.namespace.as_deref().unwrap_or("default")),
            name: boxed(s.metadata.name.as_deref()?),
            service: s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .map(|v| boxed(v)),
            ip: matches!(s.address_type.as_str(), "IPv4" | "IPv6"),
            endpoints: s
                .endpoints
                .iter()
                .map(|ep| EndpointInfo {
                    addresses: ep.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                    hostname: ep.hostname.as_deref().map(boxed),
                    ready: ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
                })
                .collect(),
            ports: s
                .ports
                .iter()
                .flatten()
                .map(|p| SlicePort {
                    name: p.name.as_deref().map(boxed),
                    port: p.port,
                    protocol: p.protocol.as_deref().map(boxed),
                })
                .collect(),
        })
    }
}
