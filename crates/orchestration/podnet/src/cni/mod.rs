//! Orchestration: CNI — the plugin edge (`plugin`) and what each verb does to the kernel
//! (`bridge`). The runtime side (running conflists the way libcni does) is
//! `podnet_kubelet::cni`.

pub mod bridge;
pub mod plugin;
