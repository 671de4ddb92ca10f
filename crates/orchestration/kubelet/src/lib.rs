//! Orchestration: the lab's per-node pod runtime (what kubelet and a container runtime do)
//! and the built-in echo workload.

pub mod cni;
