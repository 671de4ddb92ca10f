//! Pure: the node's CNI config for the podnet plugin — a function of the node's pod
//! CIDR, so pod creation depends on the file, never on the agent being up.

use ipnet::Ipv4Net;
use serde::Serialize;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfList<'a> {
    cni_version: &'a str,
    name: &'a str,
    plugins: [Plugin<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Plugin<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    bridge: &'a str,
    is_gateway: bool,
    is_default_gateway: bool,
    hairpin_mode: bool,
    mtu: u32,
    ipam: Ipam<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Ipam<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    ranges: [[Range; 1]; 1],
    data_dir: &'a str,
}

#[derive(Serialize)]
struct Range {
    subnet: String,
}

/// `10-podnet.conflist` for a node: bridge `podnet0` as the pods' gateway, one range
/// (the node's pod CIDR), the pod MTU. The IPAM table's directory is `ipam.dataDir`
/// — where the plugin reads it (cni-spec's `NetConf::parse`); a top-level `dataDir`
/// would be ignored. Pretty-printed, newline-terminated, byte-stable.
pub fn render_cni_conflist(pod_cidr: Ipv4Net, pod_mtu: u32, data_dir: &str) -> String {
    let conf = ConfList {
        cni_version: "1.1.0",
        name: "podnet",
        plugins: [Plugin {
            kind: "podnet",
            bridge: crate::POD_BRIDGE,
            is_gateway: true,
            is_default_gateway: true,
            hairpin_mode: true,
            mtu: pod_mtu,
            ipam: Ipam {
                kind: "podnet",
                ranges: [[Range {
                    subnet: pod_cidr.trunc().to_string(),
                }]],
                data_dir,
            },
        }],
    };
    let mut s = serde_json::to_string_pretty(&conf).expect("plain data serialises");
    s.push('\n');
    s
}
