//! Pure: what a Kubernetes control plane's controllers decide — pod CIDRs per node,
//! scheduling, service addresses, load-balancer IPs, EndpointSlices per Service, label
//! selectors — as functions of objects. No I/O, no clock, no randomness: the API server
//! (`podnet-apiserver`) feeds these functions its store and writes what they return.
//!
//! Compared with the real control plane: kube-controller-manager's node IPAM, endpointslice
//! controller and kube-scheduler each keep informer caches and work queues; their decisions
//! are buried in reconcile loops that need a fake API to test. Here each decision is a plain
//! function of the objects, so every rule (taints, named ports, readiness, CIDR reuse) is a
//! unit test of a few lines.

pub mod cidr;
pub mod claim;
pub mod endpoints;
pub mod loadbalancer;
pub mod schedule;
pub mod selector;
pub mod service;

pub use cidr::{CidrError, plan_pod_cidr};
pub use claim::{claim_name, parse_claim_name, pick_index, plan_claim};
pub use endpoints::{
    LABEL_MANAGED_BY, LABEL_SERVICE_NAME, MANAGED_BY, SlicePlan, plan_endpoint_conditions,
    plan_endpoint_slices, pod_is_ready,
};
pub use loadbalancer::{
    LbError, needs_health_check_node_port, plan_load_balancer_ip, wants_load_balancer,
};
pub use schedule::{Unschedulable, node_is_ready, plan_schedule, tolerates};
pub use selector::{Requirement, Selector, SelectorError};
pub use service::{plan_cluster_ip, plan_node_port};
