//! Pure: NetworkPolicy (networking.k8s.io/v1) for podnet — the semantics ([`model`]), a
//! node's nf_tables table ([`render`]) and verdict explanations ([`explain`]).
//!
//! Flow: `read_policies` (normalize; unreadable policies reported, isolating without
//! allowing) → `plan_pods` (per isolated pod and direction: the policies and the allowed
//! address segments with port sets) → `render` (classes of equal allowances → chains and
//! interval maps) → `podnet_nft::diff_tables` against what the kernel holds.

pub mod explain;
pub mod model;
pub mod render;

pub use explain::{Explanation, Finding, explain};
pub use model::{
    Allowed, Cluster, Direction, PodPolicy, PodView, Policy, PortSet, Problem, SCTP, Segment, TCP,
    UDP, plan_pods, read_policies, read_policy,
};
pub use render::{TABLE, render};
