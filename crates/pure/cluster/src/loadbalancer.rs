//! Pure: the lab's load-balancer controller decisions (what kind's cloud-provider-kind,
//! k3s' ServiceLB or MetalLB decide) and the API server's `healthCheckNodePort` rule.
//! Invariant: a load-balancer IP is derived from the Services that hold one, never stored
//! apart, so a deleted Service's IP is free at once and one IP can never go to two Services.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;

/// Why a Service gets no load-balancer IP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LbError {
    #[error("spec.loadBalancerIP {ip} is not in the load-balancer pool {pool}")]
    NotInPool { ip: IpAddr, pool: IpNet },
    #[error("spec.loadBalancerIP {ip} is already assigned to another Service")]
    InUse { ip: IpAddr },
    #[error("the load-balancer pool {pool} is exhausted")]
    PoolFull { pool: IpNet },
}

/// Whether this controller owns the Service's `status.loadBalancer`: type LoadBalancer and
/// no `spec.loadBalancerClass` (a class names another implementation, as in Kubernetes).
pub fn wants_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer")
            && s.load_balancer_class.as_deref().unwrap_or("").is_empty()
    })
}

/// Whether a Service needs a `healthCheckNodePort`: type LoadBalancer with
/// `externalTrafficPolicy: Local` (the API server's `needsHCNodePort`).
pub fn needs_health_check_node_port(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer")
            && s.external_traffic_policy.as_deref() == Some("Local")
    })
}

/// The IP a Service gets from `pool`: the one it `wanted` (`spec.loadBalancerIP`) if that is
/// in the pool and not `used` by another Service; otherwise the one it holds (`current`,
/// when still in the pool); otherwise the first free host address. `used` holds the
/// addresses of every other Service.
pub fn plan_load_balancer_ip(
    pool: IpNet,
    wanted: Option<IpAddr>,
    current: Option<IpAddr>,
    used: &BTreeSet<IpAddr>,
) -> Result<IpAddr, LbError> {
    if let Some(ip) = wanted {
        if !pool.contains(&ip) {
            return Err(LbError::NotInPool { ip, pool });
        }
        if used.contains(&ip) {
            return Err(LbError::InUse { ip });
        }
        return Ok(ip);
    }
    if let Some(ip) = current.filter(|ip| pool.contains(ip) && !used.contains(ip)) {
        return Ok(ip);
    }
    pool.hosts()
        .find(|ip| !used.contains(ip))
        .ok_or(LbError::PoolFull { pool })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pool() -> IpNet {
        "172.18.255.0/30".parse().unwrap()
    }

    #[test]
    fn first_free_then_exhausted() {
        let mut used = BTreeSet::new();
        let a = plan_load_balancer_ip(pool(), None, None, &used).unwrap();
        assert_eq!(a, ip("172.18.255.1"));
        used.insert(a);
        let b = plan_load_balancer_ip(pool(), None, None, &used).unwrap();
        assert_eq!(b, ip("172.18.255.2"));
        used.insert(b);
        assert_eq!(
            plan_load_balancer_ip(pool(), None, None, &used),
            Err(LbError::PoolFull { pool: pool() })
        );
        // A released address is free at once.
        used.remove(&a);
        assert_eq!(plan_load_balancer_ip(pool(), None, None, &used), Ok(a));
    }

    #[test]
    fn keeps_what_it_holds() {
        let used = BTreeSet::from([ip("172.18.255.1")]);
        assert_eq!(
            plan_load_balancer_ip(pool(), None, Some(ip("172.18.255.2")), &used),
            Ok(ip("172.18.255.2"))
        );
        // Held outside the pool (the pool changed): a new one.
        assert_eq!(
            plan_load_balancer_ip(pool(), None, Some(ip("10.0.0.1")), &used),
            Ok(ip("172.18.255.2"))
        );
        // Held, but another Service has it too (written by hand): never twice.
        assert_eq!(
            plan_load_balancer_ip(pool(), None, Some(ip("172.18.255.1")), &used),
            Ok(ip("172.18.255.2"))
        );
    }

    #[test]
    fn honours_a_wanted_ip_in_the_pool_and_free() {
        let used = BTreeSet::from([ip("172.18.255.1")]);
        assert_eq!(
            plan_load_balancer_ip(pool(), Some(ip("172.18.255.2")), None, &used),
            Ok(ip("172.18.255.2"))
        );
        // Moving to a wanted address replaces the held one.
        assert_eq!(
            plan_load_balancer_ip(
                pool(),
                Some(ip("172.18.255.2")),
                Some(ip("172.18.255.3")),
                &used
            ),
            Ok(ip("172.18.255.2"))
        );
        assert_eq!(
            plan_load_balancer_ip(pool(), Some(ip("172.18.255.1")), None, &used),
            Err(LbError::InUse {
                ip: ip("172.18.255.1")
            })
        );
        let e = plan_load_balancer_ip(pool(), Some(ip("172.18.0.11")), None, &used).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.loadBalancerIP 172.18.0.11 is not in the load-balancer pool 172.18.255.0/30"
        );
    }

    fn svc(ty: &str, class: Option<&str>, etp: Option<&str>) -> Service {
        Service {
            spec: Some(ServiceSpec {
                type_: Some(ty.into()),
                load_balancer_class: class.map(String::from),
                external_traffic_policy: etp.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn which_services() {
        assert!(wants_load_balancer(&svc("LoadBalancer", None, None)));
        assert!(wants_load_balancer(&svc("LoadBalancer", Some(""), None)));
        assert!(!wants_load_balancer(&svc(
            "LoadBalancer",
            Some("example.com/other"),
            None
        )));
        assert!(!wants_load_balancer(&svc("NodePort", None, None)));
        assert!(!wants_load_balancer(&Service::default()));
        assert!(needs_health_check_node_port(&svc(
            "LoadBalancer",
            None,
            Some("Local")
        )));
        assert!(!needs_health_check_node_port(&svc(
            "LoadBalancer",
            None,
            Some("Cluster")
        )));
        assert!(!needs_health_check_node_port(&svc(
            "NodePort",
            None,
            Some("Local")
        )));
    }
}
