//! Pure: Services and EndpointSlices → what one node's proxy programs, as nf_tables
//! objects. No I/O, no kernel.
//!
//! - [`plan_services`] turns the cluster's Services and EndpointSlices into one
//!   [`ServicePort`] per (Service, port) with the endpoints this node may send each kind of
//!   traffic to, following kube-proxy's endpoint categorisation
//!   (`pkg/proxy/topology.go: CategorizeEndpoints`): ready endpoints first, serving-and-
//!   terminating ones only when no ready one is left; `internalTrafficPolicy: Local` and
//!   `externalTrafficPolicy: Local` restricted to this node's endpoints. A Service that
//!   cannot be programmed is reported as a [`Problem`] and skipped; it never blocks the
//!   others.
//! - [`Planner`] keeps that plan up to date object by object: a change re-plans only
//!   its own Service (the agent's path; `plan_services` is the whole-snapshot reference).
//! - [`render`] turns a port into the objects of the `ip podnet-services` table (its module
//!   doc is the table's contract).
//! - [`Proxy`] remembers what the table holds and produces, per sync, one transaction:
//!   the whole table first, then only the differences ([`Proxy::sync_services`] takes
//!   the changed Services only).

mod incremental;
mod model;
mod proxy;
pub mod render;

pub use incremental::{ObjectName, Planner, ServiceInput, SliceInput};
pub use model::{
    DEFAULT_NODE_PORT_RANGE, Endpoint, NodeContext, PortName, Problem, Protocol,
    SERVICE_PROXY_NAME_LABEL, ServicePort, Snapshot, plan_services,
};
pub use proxy::{Proxy, SyncPlan};
pub use render::{FAMILY, MASQ_MARK, ProxyConfig, TABLE};
