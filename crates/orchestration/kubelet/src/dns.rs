//! Pure: a pod's `/etc/resolv.conf`, decided as kubelet decides it
//! (pkg/kubelet/network/dns): `spec.dnsPolicy` picks the base, `spec.dnsConfig` is merged
//! into it, and the resolver's limits are applied.
//!
//! - `ClusterFirst` (the default): the cluster DNS Service (`nameserver 10.96.0.10`),
//!   `search <ns>.svc.<domain> svc.<domain> <domain>` plus the node's own search domains,
//!   `options ndots:5` — so `web` and `web.other-ns` resolve as in any cluster. A
//!   hostNetwork pod with `ClusterFirst` gets the node's file instead (kubelet's rule), as
//!   does every pod when no cluster DNS address is configured.
//! - `ClusterFirstWithHostNet`: the cluster DNS, also for hostNetwork pods.
//! - `Default`: the node's resolver configuration (what the DNS server pods themselves use,
//!   as CoreDNS's do, so they never ask themselves).
//! - `None`: only `spec.dnsConfig`.
//!
//! `dnsConfig` nameservers and searches are appended without duplicates; its options
//! replace options of the same name. At most 3 nameservers (glibc's `MAXNS`) and 32 search
//! domains are written, the rest dropped, as kubelet does.

use k8s_openapi::api::core::v1::Pod;
use std::net::IpAddr;

/// glibc reads at most three nameservers.
pub const MAX_NAMESERVERS: usize = 3;
/// kubelet's limit on search domains (since 1.28).
pub const MAX_SEARCHES: usize = 32;

/// A resolver configuration: the three kinds of lines a pod's resolv.conf has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    /// `name` or `name:value`.
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Reads `nameserver`, `search`/`domain` and `options` lines; others are ignored.
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => conf.nameservers.extend(words.next().map(String::from)),
                Some("search") | Some("domain") => {
                    conf.searches = words.map(String::from).collect();
                }
                Some("options") => conf.options.extend(words.map(String::from)),
                _ => {}
            }
        }
        conf
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for n in &self.nameservers {
            out.push_str(&format!("nameserver {n}\n"));
        }
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

fn option_name(option: &str) -> &str {
    option.split(':').next().unwrap_or(option)
}

/// The pod's resolver configuration, or `None` when it simply uses the node's file
/// unchanged. `node` is the node's own configuration (kubelet's `--resolv-conf`).
/// An unknown `dnsPolicy` is an error naming the field.
pub fn plan_resolv_conf(
    pod: &Pod,
    cluster_dns: &[IpAddr],
    cluster_domain: &str,
    node: &ResolvConf,
) -> Result<Option<ResolvConf>, String> {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirst" => !host_network,
        "ClusterFirstWithHostNet" => true,
        "Default" | "None" => false,
        other => {
            return Err(format!(
                "spec.dnsPolicy: unsupported value {other:?} (ClusterFirst, ClusterFirstWithHostNet, Default, None)"
            ));
        }
    };
    let dns_config = spec.and_then(|s| s.dns_config.as_ref());
    let mut conf = if policy == "None" {
        ResolvConf::default()
    } else if cluster && !cluster_dns.is_empty() {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let domain = cluster_domain.trim_end_matches('.');
        let mut searches = vec![
            format!("{ns}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.to_string(),
        ];
        push_unique(&mut searches, node.searches.iter().cloned());
        ResolvConf {
            nameservers: cluster_dns.iter().map(IpAddr::to_string).collect(),
            searches,
            options: vec!["ndots:5".into()],
        }
    } else if dns_config.is_none() {
        return Ok(None);
    } else {
        node.clone()
    };
    if let Some(dc) = dns_config {
        push_unique(
            &mut conf.nameservers,
            dc.nameservers.iter().flatten().cloned(),
        );
        push_unique(&mut conf.searches, dc.searches.iter().flatten().cloned());
        for o in dc.options.iter().flatten() {
            let Some(name) = o.name.as_deref() else {
                continue;
            };
            let rendered = match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.to_string(),
            };
            conf.options.retain(|x| option_name(x) != name);
            conf.options.push(rendered);
        }
    }
    if policy == "None" && conf.nameservers.is_empty() {
        return Err("spec.dnsConfig.nameservers: required when spec.dnsPolicy is None".to_string());
    }
    conf.nameservers.truncate(MAX_NAMESERVERS);
    conf.searches.truncate(MAX_SEARCHES);
    Ok(Some(conf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        let mut base = json!({"metadata": {"name": "p", "namespace": "shop"},
                              "spec": {"containers": [{"name": "c"}]}});
        for (k, v) in spec.as_object().unwrap() {
            base["spec"][k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn dns() -> Vec<IpAddr> {
        vec!["10.96.0.10".parse().unwrap()]
    }

    fn node() -> ResolvConf {
        ResolvConf::parse("# node\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0\n")
    }

    #[test]
    fn cluster_first_is_the_cluster_dns_with_the_pods_namespace_first() {
        let conf = plan_resolv_conf(&pod(json!({})), &dns(), "cluster.local", &node())
            .unwrap()
            .unwrap();
        assert_eq!(
            conf.render(),
            "nameserver 10.96.0.10\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
             options ndots:5\n"
        );
    }

    #[test]
    fn host_network_and_default_use_the_nodes_file() {
        let host = pod(json!({"hostNetwork": true}));
        assert_eq!(
            plan_resolv_conf(&host, &dns(), "cluster.local", &node()),
            Ok(None)
        );
        let with = pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}));
        let conf = plan_resolv_conf(&with, &dns(), "cluster.local", &node())
            .unwrap()
            .unwrap();
        assert_eq!(conf.nameservers, ["10.96.0.10"]);
        let default = pod(json!({"dnsPolicy": "Default"}));
        assert_eq!(
            plan_resolv_conf(&default, &dns(), "cluster.local", &node()),
            Ok(None)
        );
        // No cluster DNS configured: ClusterFirst falls back to the node's file.
        assert_eq!(
            plan_resolv_conf(&pod(json!({})), &[], "cluster.local", &node()),
            Ok(None)
        );
    }

    #[test]
    fn dns_config_is_merged_and_limits_apply() {
        let p = pod(json!({"dnsConfig": {
            "nameservers": ["10.96.0.10", "1.1.1.1", "8.8.8.8", "9.9.9.9"],
            "searches": ["extra.example", "svc.cluster.local"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        let conf = plan_resolv_conf(&p, &dns(), "cluster.local.", &node())
            .unwrap()
            .unwrap();
        assert_eq!(conf.nameservers, ["10.96.0.10", "1.1.1.1", "8.8.8.8"]);
        assert_eq!(
            conf.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example",
                "extra.example"
            ]
        );
        assert_eq!(conf.options, ["ndots:2", "edns0"]);
        // Default + dnsConfig: the node's file with the additions.
        let d = pod(json!({"dnsPolicy": "Default", "dnsConfig": {"searches": ["a.example"]}}));
        let conf = plan_resolv_conf(&d, &dns(), "cluster.local", &node())
            .unwrap()
            .unwrap();
        assert_eq!(conf.nameservers, ["192.0.2.53"]);
        assert_eq!(conf.searches, ["corp.example", "a.example"]);
    }

    #[test]
    fn policy_none_takes_only_dns_config_and_needs_a_nameserver() {
        let p = pod(json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["192.0.2.1"]}}));
        let conf = plan_resolv_conf(&p, &dns(), "cluster.local", &node())
            .unwrap()
            .unwrap();
        assert_eq!(conf.render(), "nameserver 192.0.2.1\n");
        let bad = pod(json!({"dnsPolicy": "None"}));
        let err = plan_resolv_conf(&bad, &dns(), "cluster.local", &node()).unwrap_err();
        assert!(err.contains("spec.dnsConfig.nameservers"), "{err}");
        let unknown = pod(json!({"dnsPolicy": "Sometimes"}));
        let err = plan_resolv_conf(&unknown, &dns(), "cluster.local", &node()).unwrap_err();
        assert!(err.contains("spec.dnsPolicy"), "{err}");
    }
}
