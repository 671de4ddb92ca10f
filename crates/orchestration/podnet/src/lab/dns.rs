//! Pure: the lab's cluster DNS — what a kubeadm cluster gets from its CoreDNS add-on, with
//! `podnet dns` in CoreDNS's place.
//!
//! - The `kube-dns` Service in `kube-system` at [`CLUSTER_DNS_IP`] (10.96.0.10: in the
//!   static band of the service range, which dynamic allocation leaves free), ports
//!   53/UDP `dns`, 53/TCP `dns-tcp`, 9153/TCP `metrics` — CoreDNS's names and numbers.
//! - [`DNS_REPLICAS`] pods labelled `k8s-app: kube-dns`, each running `podnet dns`, with
//!   `dnsPolicy: Default` (a DNS server never resolves through itself) and the external
//!   host's resolver as upstream for names outside the cluster. They reach the API as
//!   CoreDNS does, in-cluster: the `kubernetes` Service from their environment, the token
//!   and CA their kubelet mounted (no API option on their command line).
//! - Every kubelet writes `nameserver 10.96.0.10`, `search <ns>.svc.cluster.local
//!   svc.cluster.local cluster.local`, `options ndots:5` into its pods.
//! - The external host runs Debian's dnsmasq as the outside world's resolver: it answers
//!   [`EXTERNAL_ZONE`] (every name in it is the external host) and nothing else (no
//!   upstream of its own: lab namespaces have no route off the machine).

use super::topology::EXTERNAL_IP;
use std::net::Ipv4Addr;
use std::path::Path;

pub const CLUSTER_DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const CLUSTER_DOMAIN: &str = "cluster.local";
pub const DNS_REPLICAS: usize = 2;
pub const DNS_METRICS_PORT: u16 = 9153;
/// The zone the external host's resolver answers.
pub const EXTERNAL_ZONE: &str = "external.test";

/// The kube-dns Service and its pods, as YAML for `apply`.
pub fn manifests(exe: &Path) -> String {
    let mut out = format!(
        "apiVersion: v1
kind: Namespace
metadata:
  name: kube-system
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  clusterIP: {CLUSTER_DNS_IP}
  selector: {{k8s-app: kube-dns}}
  ports:
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
  - {{name: metrics, port: {DNS_METRICS_PORT}, protocol: TCP}}
"
    );
    for i in 1..=DNS_REPLICAS {
        out.push_str(&format!(
            "---
apiVersion: v1
kind: Pod
metadata:
  name: podnet-dns-{i}
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  dnsPolicy: Default
  containers:
  - name: dns
    image: podnet/podnet
    command: [{exe:?}, dns, --zone, {CLUSTER_DOMAIN}, --upstream, \"{EXTERNAL_IP}:53\", --metrics-addr, \"0.0.0.0:{DNS_METRICS_PORT}\"]
    ports:
    - {{name: dns, containerPort: 53, protocol: UDP}}
    - {{name: dns-tcp, containerPort: 53, protocol: TCP}}
    - {{name: metrics, containerPort: {DNS_METRICS_PORT}, protocol: TCP}}
",
            exe = exe.display().to_string(),
        ));
    }
    out
}

/// dnsmasq's command line on the external host: authoritative-style answers for
/// [`EXTERNAL_ZONE`] from the command line, no configuration file, no upstream, in the
/// foreground (the lab records its pid and `lab down` stops it with the namespace).
pub fn external_resolver_args() -> Vec<String> {
    [
        "--keep-in-foreground".to_string(),
        "--conf-file=/dev/null".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--no-poll".into(),
        "--user=root".into(),
        "--pid-file".into(),
        format!("--listen-address={EXTERNAL_IP}"),
        "--bind-interfaces".into(),
        format!("--address=/{EXTERNAL_ZONE}/{EXTERNAL_IP}"),
        "--log-facility=-".into(),
    ]
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Pod, Service};

    #[test]
    fn manifests_are_the_kube_dns_service_and_its_pods() {
        let yaml = manifests(Path::new("/opt/podnet bin/podnet"));
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).unwrap();
        assert_eq!(docs.len(), 2 + DNS_REPLICAS);
        let svc: Service = serde_json::from_value(docs[1].clone()).unwrap();
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
        assert_eq!(spec.ports.unwrap().len(), 3);
        let pod: Pod = serde_json::from_value(docs[2].clone()).unwrap();
        let pspec = pod.spec.unwrap();
        assert_eq!(pspec.dns_policy.as_deref(), Some("Default"));
        let cmd = pspec.containers[0].command.clone().unwrap();
        assert_eq!(cmd[0], "/opt/podnet bin/podnet");
        assert_eq!(cmd[1], "dns");
        assert!(cmd.contains(&"172.18.0.200:53".to_string()), "{cmd:?}");
        // In-cluster configuration: no API option, and the service account is mounted.
        assert!(
            !cmd.iter().any(|a| a == "--server" || a == "--kubeconfig"),
            "{cmd:?}"
        );
        assert_ne!(pspec.automount_service_account_token, Some(false));
    }
}
