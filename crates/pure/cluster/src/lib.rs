//! Pure: what a Kubernetes control plane's controllers decide — pod CIDRs per node,
//! scheduling, EndpointSlices per Service, label selectors — as functions of objects.
