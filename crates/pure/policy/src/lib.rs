//! Pure: NetworkPolicy (networking.k8s.io/v1) for podnet — the semantics ([`model`]), a
//! node's nf_tables table ([`render`]) and verdict explanations ([`explain`]).
//!
//! Flow: `read_policies` (normalize; unreadable policies reported, isolating without
//! allowing) → `plan_pods` (per isolated pod and direction: the policies and the allowed
//! address segments with port sets) → `render` (classes of equal allowances → chains and
//! interval maps). The agent's path is [`incremental`]: a [`Planner`] fed one object at a
//! time plans only the local pods an event can change and builds the transaction from the
//! classes and map elements that changed; `plan_pods` + `render` are its reference.

pub mod explain;
pub mod incremental;
pub mod model;
pub mod render;

pub use explain::{Explanation, Finding, explain};
pub use incremental::{NamespaceInput, Planner, PodInput, PolicyInput, PolicySync};
pub use model::{
    Allowed, Cluster, Direction, PodPolicy, PodView, Policy, PortSet, Problem, SCTP, Segment, TCP,
    UDP, plan_pods, read_policies, read_policy,
};
pub use render::{TABLE, render};
