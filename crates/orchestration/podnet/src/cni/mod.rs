//! Orchestration: CNI — the plugin edge (`plugin`), what each verb does to the kernel
//! (`bridge`), and a runtime that executes conflists the way libcni does (`runtime`).

pub mod bridge;
pub mod plugin;
