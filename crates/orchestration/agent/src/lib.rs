//! Orchestration: `podnet agent`, one per node — watches Nodes, writes the node's CNI
//! config, programs routes/VXLAN and masquerade, serves /healthz and /metrics.
