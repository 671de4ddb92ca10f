//! Orchestration: the lab's control plane — the subset of the Kubernetes API podnet needs,
//! served over HTTP, with the controllers a real control plane runs.
