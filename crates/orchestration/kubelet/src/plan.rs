//! Pure: (Pod from the API, this node's record of it, process liveness) → what to do, and
//! the Pod/Node status to report. No I/O, no clock: `now` comes in as an argument.
//!
//! The decision table ([`plan_pod`]) is kubelet's `SyncPod`/`HandlePodCleanups` pair folded
//! into one total function over three inputs, so restart safety is a table row rather than
//! a code path: a record whose pod is still in the API with live processes is *adopted*
//! (nothing touches the kernel), a record without a pod is torn down, a pod without a record
//! is created, a record left half-made by a crash is recreated. kubelet reaches the same
//! outcomes by asking the CRI runtime for its sandboxes; here the record on disk plays the
//! runtime's part, and process start times guard against pid reuse.

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Node, NodeAddress, NodeCondition, NodeStatus,
    Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The image whose containers run the built-in echo workload (any tag).
pub const ECHO_IMAGE: &str = "podnet/echo";
/// The interface name inside every pod.
pub const POD_IFNAME: &str = "eth0";
/// Longest network namespace name we make.
pub const MAX_NETNS_NAME: usize = 60;
/// `PATH` of every container process (Docker's default).
pub const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// This node's record of one pod: `<state_dir>/pods/<uid>/state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The CNI container ID (the UID without dashes).
    pub container_id: String,
    /// The pod's named network namespace; `None` for `hostNetwork` pods.
    pub netns: Option<String>,
    /// False from the moment the record is first written until the sandbox and every
    /// container are up: a crash in between leaves a record that says "tear me down".
    pub complete: bool,
    /// The conflist the sandbox was attached with (its text), so DEL works even after the
    /// file changed or vanished.
    pub conflist: Option<String>,
    /// The CNI ADD result.
    pub cni_result: Option<serde_json::Value>,
    pub pod_ips: Vec<IpAddr>,
    pub started_at: Time,
    pub containers: Vec<ContainerRecord>,
}

/// One container of a [`PodRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    pub restart_count: i32,
    pub state: ProcState,
    /// The previous run, once the container restarted.
    pub last: Option<Exit>,
}

/// A container's process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcState {
    /// Started: `pid` plus its start time in clock ticks since boot (`/proc/PID/stat`
    /// field 22), which tells our process from a later one that reused the pid.
    Running {
        pid: u32,
        start_ticks: u64,
        started_at: Time,
    },
    /// Gone for good (restart policy said so).
    Terminated(Exit),
}

/// How one run of a container ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exit {
    pub pid: u32,
    /// `None` when the process was not our child (adopted after a restart): its status
    /// went to its new parent.
    pub code: Option<i32>,
    pub started_at: Time,
    pub finished_at: Time,
}

/// The pod as the plan needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiState {
    /// Not in the API (deleted, or not bound here).
    Absent,
    /// Has a deletionTimestamp: stop it.
    Deleting,
    /// Phase Succeeded or Failed: never run again.
    Terminal,
    /// Should run.
    Live,
}

/// Pure: classifies a pod from the API.
pub fn api_state(pod: Option<&Pod>) -> ApiState {
    let Some(pod) = pod else {
        return ApiState::Absent;
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return ApiState::Deleting;
    }
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded" | "Failed") => ApiState::Terminal,
        _ => ApiState::Live,
    }
}

/// What to do with one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing here and nothing wanted.
    Nothing,
    /// Wanted, but the node's CNI config is not there yet.
    WaitNetwork,
    /// Make the sandbox and start the containers.
    Create,
    /// Everything runs: keep it (adopt after a restart); refresh the status if needed.
    Keep,
    /// Some containers exited: restart these, mark those terminated for good.
    Containers {
        restart: Vec<String>,
        terminate: Vec<String>,
    },
    /// Every container is done: report the final phase, then tear down.
    Finish { succeeded: bool },
    /// Being deleted and some container still runs: SIGTERM (once), SIGKILL when the
    /// grace period ([`plan_termination_grace`]) is over; meanwhile report the status (the
    /// pod stays Ready while every container runs, so its endpoint keeps serving).
    Terminate,
    /// Stop the processes, CNI DEL, delete the namespace, forget the record.
    Teardown,
    /// A half-made record of a pod that should run: tear it down, then create.
    Recreate,
}

/// Liveness of the record's running containers: name → exit code when known; a container
/// not in the map is alive.
pub type Exited = BTreeMap<String, Option<i32>>;

/// Pure: the decision table.
pub fn plan_pod(
    api: ApiState,
    pod: Option<&Pod>,
    record: Option<&PodRecord>,
    exited: &Exited,
    network_ready: bool,
) -> Action {
    match (api, record) {
        (ApiState::Deleting, Some(r))
            if r.complete
                && r.containers.iter().any(|c| {
                    matches!(c.state, ProcState::Running { .. }) && !exited.contains_key(&c.name)
                }) =>
        {
            Action::Terminate
        }
        (ApiState::Absent | ApiState::Deleting | ApiState::Terminal, None) => Action::Nothing,
        (ApiState::Absent | ApiState::Deleting | ApiState::Terminal, Some(_)) => Action::Teardown,
        (ApiState::Live, None) => {
            if network_ready || pod.is_some_and(host_network) {
                Action::Create
            } else {
                Action::WaitNetwork
            }
        }
        (ApiState::Live, Some(r)) if !r.complete => Action::Recreate,
        (ApiState::Live, Some(r)) => {
            let policy = pod
                .and_then(|p| p.spec.as_ref())
                .and_then(|s| s.restart_policy.as_deref())
                .unwrap_or("Always");
            let (mut restart, mut terminate) = (Vec::new(), Vec::new());
            let mut still_running = false;
            let mut all_zero = true;
            for c in &r.containers {
                match &c.state {
                    ProcState::Terminated(e) => all_zero &= e.code == Some(0),
                    ProcState::Running { .. } => match exited.get(&c.name) {
                        None => still_running = true,
                        Some(code) => {
                            let again = match policy {
                                "Never" => false,
                                "OnFailure" => *code != Some(0),
                                _ => true,
                            };
                            if again {
                                restart.push(c.name.clone());
                            } else {
                                all_zero &= *code == Some(0);
                                terminate.push(c.name.clone());
                            }
                        }
                    },
                }
            }
            if !still_running && restart.is_empty() {
                Action::Finish {
                    succeeded: all_zero,
                }
            } else if restart.is_empty() && terminate.is_empty() {
                Action::Keep
            } else {
                Action::Containers { restart, terminate }
            }
        }
    }
}

/// Longest grace between SIGTERM and SIGKILL for a pod being deleted (the lab's cap).
pub const MAX_TERMINATION_GRACE: Duration = Duration::from_secs(60);
/// Shortest grace (kubelet's `minimumGracePeriodInSeconds`).
pub const MIN_TERMINATION_GRACE: Duration = Duration::from_secs(2);

/// Pure: how long a pod being deleted may take to stop after SIGTERM: its
/// `deletionGracePeriodSeconds` (else `terminationGracePeriodSeconds`, else 30), within
/// [`MIN_TERMINATION_GRACE`, `MAX_TERMINATION_GRACE`].
pub fn plan_termination_grace(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64).clamp(MIN_TERMINATION_GRACE, MAX_TERMINATION_GRACE)
}

/// Whether the pod shares the node's network namespace.
pub fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// Pure: the CNI container ID: the UID without dashes when that is a valid ID, else a hash.
pub fn plan_container_id(uid: &str) -> String {
    let plain: String = uid.chars().filter(|c| *c != '-').collect();
    if !plain.is_empty() && plain.len() <= 64 && plain.chars().all(|c| c.is_ascii_alphanumeric()) {
        plain.to_ascii_lowercase()
    } else {
        format!(
            "{:016x}{:016x}",
            fnv1a(uid.as_bytes(), 0),
            fnv1a(uid.as_bytes(), 1)
        )
    }
}

/// Pure: the pod's namespace name: the prefix plus 16 hex digits of a hash of the UID
/// (UIDs made by a small API server may share a long prefix, so no truncation of the UID).
pub fn plan_netns_name(prefix: &str, uid: &str) -> Result<String, String> {
    let name = format!("{prefix}{:016x}", fnv1a(uid.as_bytes(), 0));
    if name.len() > MAX_NETNS_NAME {
        return Err(format!(
            "netns prefix {prefix:?} too long: {name:?} exceeds {MAX_NETNS_NAME} characters"
        ));
    }
    Ok(name)
}

fn fnv1a(bytes: &[u8], seed: u8) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in std::iter::once(seed).chain(bytes.iter().copied()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Pure: `CNI_ARGS` as kubelet/containerd pass them.
pub fn plan_cni_args(pod: &Pod, container_id: &str) -> Vec<(String, String)> {
    let meta = &pod.metadata;
    vec![
        ("IgnoreUnknown".into(), "1".into()),
        (
            "K8S_POD_NAMESPACE".into(),
            meta.namespace.clone().unwrap_or_else(|| "default".into()),
        ),
        ("K8S_POD_NAME".into(), meta.name.clone().unwrap_or_default()),
        ("K8S_POD_INFRA_CONTAINER_ID".into(), container_id.into()),
        ("K8S_POD_UID".into(), meta.uid.clone().unwrap_or_default()),
    ]
}

/// Pure: the addresses in a CNI result, in order (IPv4 first, as Kubernetes lists them).
pub fn plan_pod_ips(result: &serde_json::Value) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = result
        .get("ips")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address")?.as_str())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect();
    ips.sort_by_key(|ip| !ip.is_ipv4());
    ips.dedup();
    ips
}

/// One container process to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Bind-mounted over `/etc/resolv.conf` in the process's own mount namespace (the
    /// pod's DNS settings, [`crate::dns`]); `None`: the node's file.
    pub resolv_conf: Option<PathBuf>,
    /// A directory bind-mounted (read-only) at [`SERVICE_ACCOUNT_DIR`] in the same mount
    /// namespace: the pod's `token`, `ca.crt` and `namespace`; `None`: nothing mounted.
    pub service_account: Option<PathBuf>,
}

/// Where a container finds its service account's credentials (client-go's and kube's
/// in-cluster configuration read them there).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Whether the pod gets its service account's credentials: unless
/// `automountServiceAccountToken: false` (the lab has no ServiceAccount objects, whose own
/// field the pod's would override).
pub fn mounts_service_account(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.automount_service_account_token)
        != Some(false)
}

/// The environment kubelet gives every container for the `kubernetes` Service in
/// `default` (how in-cluster clients find the API): `KUBERNETES_SERVICE_HOST` (its cluster
/// IP), `KUBERNETES_SERVICE_PORT` (its first port) and one `KUBERNETES_SERVICE_PORT_<NAME>`
/// per named port. Nothing for a Service without a cluster IP or port.
pub fn plan_kubernetes_env(svc: &k8s_openapi::api::core::v1::Service) -> Vec<(String, String)> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let ip = spec.cluster_ip.as_deref().unwrap_or("");
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ip.is_empty() || ip == "None" || ports.is_empty() {
        return Vec::new();
    }
    let mut env = vec![
        ("KUBERNETES_SERVICE_HOST".to_string(), ip.to_string()),
        (
            "KUBERNETES_SERVICE_PORT".to_string(),
            ports[0].port.to_string(),
        ),
    ];
    for p in ports {
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            env.push((
                format!(
                    "KUBERNETES_SERVICE_PORT_{}",
                    name.to_ascii_uppercase().replace('-', "_")
                ),
                p.port.to_string(),
            ));
        }
    }
    env
}

/// Adds `extra` to a container's environment where the container does not set the name
/// itself (its own `env` wins, as over kubelet's Service variables).
pub fn add_env(env: &mut Vec<(String, String)>, extra: &[(String, String)]) {
    for (k, v) in extra {
        if !env.iter().any(|(name, _)| name == k) {
            env.push((k.clone(), v.clone()));
        }
    }
}

/// Pure: how to run one container. `podnet/echo` runs the built-in echo server; any other
/// image runs its `command` + `args` on this host's filesystem (the lab has no registry and
/// pulls nothing).
pub fn plan_process(
    pod: &Pod,
    container: &Container,
    echo_exe: &Path,
    pod_ip: &str,
    node: &str,
) -> Result<ProcessSpec, String> {
    let mut env = vec![
        ("PATH".to_string(), CONTAINER_PATH.to_string()),
        (
            "HOSTNAME".into(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        (
            "POD_NAME".into(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        (
            "POD_NAMESPACE".into(),
            pod.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
        ),
        ("POD_IP".into(), pod_ip.into()),
        ("NODE_NAME".into(), node.into()),
        ("CONTAINER_NAME".into(), container.name.clone()),
    ];
    let (mut tcp, mut udp, mut sctp) = (Vec::new(), Vec::new(), Vec::new());
    for p in container.ports.iter().flatten() {
        match p.protocol.as_deref().unwrap_or("TCP") {
            "UDP" => udp.push(p.container_port.to_string()),
            "TCP" => tcp.push(p.container_port.to_string()),
            "SCTP" => sctp.push(p.container_port.to_string()),
            _ => {}
        }
    }
    env.push(("ECHO_TCP_PORTS".into(), tcp.join(",")));
    env.push(("ECHO_UDP_PORTS".into(), udp.join(",")));
    env.push(("ECHO_SCTP_PORTS".into(), sctp.join(",")));
    // The container's own `env` (literal values) comes last and wins, for the echo
    // workload too (`ECHO_DRAIN_SECONDS`).
    for e in container.env.iter().flatten() {
        if e.value_from.is_some() {
            continue;
        }
        let value = e.value.clone().unwrap_or_default();
        match env.iter_mut().find(|(k, _)| *k == e.name) {
            Some(slot) => slot.1 = value,
            None => env.push((e.name.clone(), value)),
        }
    }
    let image = container.image.as_deref().unwrap_or("");
    let cwd = PathBuf::from(container.working_dir.as_deref().unwrap_or("/"));
    if is_echo_image(image) {
        let mut args = vec!["echo".to_string()];
        args.extend(container.args.iter().flatten().cloned());
        return Ok(ProcessSpec {
            program: echo_exe.to_path_buf(),
            args,
            env,
            cwd,
            resolv_conf: None,
            service_account: None,
        });
    }
    let mut argv = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .cloned();
    if container.command.as_ref().is_none_or(Vec::is_empty) {
        return Err(format!(
            "container {}: image {image:?} is not {ECHO_IMAGE} and has no command (the lab pulls no images)",
            container.name
        ));
    }
    let program = PathBuf::from(argv.next().expect("command is not empty"));
    Ok(ProcessSpec {
        program,
        args: argv.collect(),
        env,
        cwd,
        resolv_conf: None,
        service_account: None,
    })
}

/// Whether `image` names the echo workload (any tag or digest, optional `docker.io/`).
pub fn is_echo_image(image: &str) -> bool {
    let repo = image.split('@').next().unwrap_or("");
    let repo = match repo.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repo,
    };
    let repo = repo.strip_prefix("docker.io/").unwrap_or(repo);
    repo == ECHO_IMAGE
}

/// Why a pod is not running, for its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: String,
    pub message: String,
}

impl Problem {
    pub fn network_not_ready() -> Problem {
        Problem {
            reason: "NetworkNotReady".into(),
            message: "NetworkNotReady: no CNI config".into(),
        }
    }
}

/// Pure: the pod status to report. `prev` (the status in the API) keeps condition
/// transition times and the start time stable, so rendering twice gives the same object
/// and an unchanged pod costs no write.
pub fn render_pod_status(
    pod: &Pod,
    record: Option<&PodRecord>,
    exited: &Exited,
    host_ip: Ipv4Addr,
    problem: Option<&Problem>,
    now: &Time,
) -> PodStatus {
    let prev = pod.status.as_ref();
    let containers: &[Container] = pod.spec.as_ref().map_or(&[], |s| &s.containers);
    let mut statuses = Vec::new();
    let mut all_ready = !containers.is_empty();
    let mut all_terminated = record.is_some();
    let mut all_zero = true;
    for c in containers {
        let rec = record.and_then(|r| r.containers.iter().find(|rc| rc.name == c.name));
        let image = c.image.clone().unwrap_or_default();
        let mut st = ContainerStatus {
            name: c.name.clone(),
            image: image.clone(),
            image_id: String::new(),
            ready: false,
            started: Some(false),
            restart_count: rec.map_or(0, |r| r.restart_count),
            last_state: rec
                .and_then(|r| r.last.as_ref())
                .map(|e| terminated_state(e, &c.name)),
            ..Default::default()
        };
        match rec.map(|r| &r.state) {
            None => {
                all_ready = false;
                all_terminated = false;
                let (reason, message) = match problem {
                    Some(p) => (p.reason.clone(), Some(p.message.clone())),
                    None => ("ContainerCreating".to_string(), None),
                };
                st.state = Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason),
                        message,
                    }),
                    ..Default::default()
                });
            }
            Some(ProcState::Running {
                pid, started_at, ..
            }) => {
                all_terminated = false;
                st.container_id = Some(container_uri(*pid));
                if exited.contains_key(&c.name) {
                    all_ready = false;
                    st.state = Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some("CrashLoopBackOff".into()),
                            message: Some(format!("container {} exited; restarting", c.name)),
                        }),
                        ..Default::default()
                    });
                } else {
                    st.ready = true;
                    st.started = Some(true);
                    st.state = Some(ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: Some(started_at.clone()),
                        }),
                        ..Default::default()
                    });
                }
            }
            Some(ProcState::Terminated(e)) => {
                all_ready = false;
                all_zero &= e.code == Some(0);
                st.container_id = Some(container_uri(e.pid));
                st.state = Some(terminated_state(e, &c.name));
            }
        }
        statuses.push(st);
    }
    let sandbox = record.is_some_and(|r| r.complete) && !all_terminated;
    let phase = match record {
        _ if all_terminated && all_zero => "Succeeded",
        _ if all_terminated => "Failed",
        Some(r) if r.complete => "Running",
        _ => "Pending",
    };
    let not_ready = problem.cloned().unwrap_or_else(|| Problem {
        reason: "ContainersNotReady".into(),
        message: format!(
            "containers with unready status: [{}]",
            statuses
                .iter()
                .filter(|s| !s.ready)
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ),
    });
    let cond = |type_: &str, ok: bool, why: Option<&Problem>| {
        let status = if ok { "True" } else { "False" }.to_string();
        let old = prev
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == type_));
        let since = match old {
            Some(o) if o.status == status => o.last_transition_time.clone(),
            _ => Some(now.clone()),
        };
        PodCondition {
            type_: type_.into(),
            status,
            last_transition_time: since,
            reason: why.filter(|_| !ok).map(|p| p.reason.clone()),
            message: why.filter(|_| !ok).map(|p| p.message.clone()),
            ..Default::default()
        }
    };
    let scheduled = prev
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
        .cloned()
        .unwrap_or_else(|| cond("PodScheduled", true, None));
    let conditions = vec![
        cond("PodReadyToStartContainers", sandbox, problem),
        cond("Initialized", true, None),
        cond("Ready", all_ready, Some(&not_ready)),
        cond("ContainersReady", all_ready, Some(&not_ready)),
        scheduled,
    ];
    let ips: Vec<IpAddr> = record.map(|r| r.pod_ips.clone()).unwrap_or_default();
    let start_time = record
        .map(|r| r.started_at.clone())
        .or_else(|| prev.and_then(|s| s.start_time.clone()))
        .unwrap_or_else(|| now.clone());
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: host_ip.to_string(),
        }]),
        pod_ip: ips.first().map(IpAddr::to_string),
        pod_ips: (!ips.is_empty())
            .then(|| ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
        start_time: Some(start_time),
        container_statuses: Some(statuses),
        reason: problem
            .filter(|_| record.is_none())
            .map(|p| p.reason.clone()),
        message: problem
            .filter(|_| record.is_none())
            .map(|p| p.message.clone()),
        qos_class: prev.and_then(|s| s.qos_class.clone()),
        ..Default::default()
    }
}

/// Status fields that may have to be cleared (a JSON merge patch leaves absent keys alone).
const CLEARABLE: [&str; 4] = ["reason", "message", "podIP", "podIPs"];

/// Pure: the JSON merge patch (`{"status": …}`) that turns `prev` into `new`, or `None`
/// when every field this kubelet owns already matches (fields others own, such as
/// `nominatedNodeName`, are left alone).
pub fn diff_pod_status(prev: Option<&PodStatus>, new: &PodStatus) -> Option<serde_json::Value> {
    let prev = serde_json::to_value(prev.cloned().unwrap_or_default()).ok()?;
    let mut new = serde_json::to_value(new).ok()?;
    let obj = new.as_object_mut()?;
    for key in CLEARABLE {
        if !obj.contains_key(key) && prev.get(key).is_some_and(|v| !v.is_null()) {
            obj.insert(key.into(), serde_json::Value::Null);
        }
    }
    let same = obj
        .iter()
        .all(|(k, v)| prev.get(k).unwrap_or(&serde_json::Value::Null) == v);
    (!same).then(|| serde_json::json!({ "status": new }))
}

/// The `containerID` of a container status.
pub fn container_uri(pid: u32) -> String {
    format!("podnet://{pid}")
}

fn terminated_state(e: &Exit, _name: &str) -> ContainerState {
    let (code, reason, message) = match e.code {
        Some(0) => (0, "Completed", None),
        Some(c) => (c, "Error", None),
        None => (
            137,
            "ContainerStatusUnknown",
            Some("the process ended while another kubelet run owned it; exit status unknown"),
        ),
    };
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            container_id: Some(container_uri(e.pid)),
            exit_code: code,
            reason: Some(reason.into()),
            message: message.map(Into::into),
            started_at: Some(e.started_at.clone()),
            finished_at: Some(e.finished_at.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Pure: the Node this kubelet registers: `existing` (if any) with our labels, addresses,
/// capacity and Ready condition merged in; its spec (podCIDR, taints) is left alone.
pub fn render_node(name: &str, ip: Ipv4Addr, existing: Option<&Node>, now: &Time) -> Node {
    let mut node = existing.cloned().unwrap_or_else(|| Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    });
    let labels = node.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert("kubernetes.io/hostname".into(), name.into());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert(
        "kubernetes.io/arch".into(),
        std::env::consts::ARCH
            .replace("x86_64", "amd64")
            .replace("aarch64", "arm64"),
    );
    node.status = Some(render_node_status(name, ip, node.status.as_ref(), now));
    node
}

/// Pure: the node status with a fresh heartbeat.
pub fn render_node_status(
    name: &str,
    ip: Ipv4Addr,
    prev: Option<&NodeStatus>,
    now: &Time,
) -> NodeStatus {
    let mut status = prev.cloned().unwrap_or_default();
    status.addresses = Some(vec![
        NodeAddress {
            type_: "InternalIP".into(),
            address: ip.to_string(),
        },
        NodeAddress {
            type_: "Hostname".into(),
            address: name.into(),
        },
    ]);
    let pods = BTreeMap::from([("pods".to_string(), Quantity("110".into()))]);
    for q in [&mut status.capacity, &mut status.allocatable] {
        q.get_or_insert_with(BTreeMap::new).extend(pods.clone());
    }
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let since = conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    conditions.retain(|c| c.type_ != "Ready");
    conditions.push(NodeCondition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: Some("KubeletReady".into()),
        message: Some("kubelet is posting ready status".into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(since),
    });
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn pod(extra: serde_json::Value) -> Pod {
        let mut base = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "1b4e28ba-2fa1-11d2-883f-0016d3cca427"},
            "spec": {"nodeName": "w1", "containers": [
                {"name": "echo", "image": "podnet/echo:latest",
                 "ports": [{"containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"},
                           {"containerPort": 9000, "protocol": "TCP"}, {"containerPort": 7, "protocol": "SCTP"}]}
            ]}
        });
        merge(&mut base, extra);
        serde_json::from_value(base).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn record(complete: bool) -> PodRecord {
        PodRecord {
            uid: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
            namespace: "default".into(),
            name: "web".into(),
            container_id: "1b4e28ba2fa111d2883f0016d3cca427".into(),
            netns: Some("lab-pod-0123456789abcdef".into()),
            complete,
            conflist: Some("{}".into()),
            cni_result: Some(json!({"ips": [{"address": "10.244.1.5/24"}]})),
            pod_ips: vec!["10.244.1.5".parse().unwrap()],
            started_at: t("2025-01-01T00:00:00Z"),
            containers: vec![ContainerRecord {
                name: "echo".into(),
                image: "podnet/echo:latest".into(),
                restart_count: 0,
                state: ProcState::Running {
                    pid: 4242,
                    start_ticks: 99,
                    started_at: t("2025-01-01T00:00:01Z"),
                },
                last: None,
            }],
        }
    }

    fn dead(code: Option<i32>) -> Exited {
        Exited::from([("echo".to_string(), code)])
    }

    #[test]
    fn decision_table() {
        let live = pod(json!({}));
        let none = Exited::new();
        let rec = record(true);
        let half = record(false);
        let cases: Vec<(ApiState, Option<&PodRecord>, Exited, bool, Action)> = vec![
            (ApiState::Absent, None, none.clone(), true, Action::Nothing),
            (
                ApiState::Absent,
                Some(&rec),
                none.clone(),
                true,
                Action::Teardown,
            ),
            // Being deleted: terminate while a container runs; tear down once all have
            // exited, or when the record is half-made.
            (
                ApiState::Deleting,
                Some(&rec),
                none.clone(),
                true,
                Action::Terminate,
            ),
            (
                ApiState::Deleting,
                Some(&rec),
                dead(Some(0)),
                true,
                Action::Teardown,
            ),
            (
                ApiState::Deleting,
                Some(&half),
                none.clone(),
                true,
                Action::Teardown,
            ),
            (
                ApiState::Deleting,
                None,
                none.clone(),
                true,
                Action::Nothing,
            ),
            (
                ApiState::Terminal,
                Some(&rec),
                none.clone(),
                true,
                Action::Teardown,
            ),
            (
                ApiState::Terminal,
                None,
                none.clone(),
                true,
                Action::Nothing,
            ),
            (ApiState::Live, None, none.clone(), true, Action::Create),
            (
                ApiState::Live,
                None,
                none.clone(),
                false,
                Action::WaitNetwork,
            ),
            // Restart safety: a complete record with live processes is adopted as is,
            // whether or not the CNI config is there right now.
            (
                ApiState::Live,
                Some(&rec),
                none.clone(),
                false,
                Action::Keep,
            ),
            (ApiState::Live, Some(&rec), none.clone(), true, Action::Keep),
            (
                ApiState::Live,
                Some(&half),
                none.clone(),
                true,
                Action::Recreate,
            ),
            (
                ApiState::Live,
                Some(&rec),
                dead(Some(1)),
                true,
                Action::Containers {
                    restart: vec!["echo".into()],
                    terminate: vec![],
                },
            ),
        ];
        for (i, (api, r, exited, net, want)) in cases.into_iter().enumerate() {
            let p = (api != ApiState::Absent).then_some(&live);
            assert_eq!(plan_pod(api, p, r, &exited, net), want, "case {i}");
        }
    }

    #[test]
    fn restart_policies() {
        let rec = record(true);
        let with = |policy: &str| pod(json!({"spec": {"restartPolicy": policy}}));
        let plan = |p: &Pod, e: &Exited| plan_pod(ApiState::Live, Some(p), Some(&rec), e, true);
        assert_eq!(
            plan(&with("Never"), &dead(Some(0))),
            Action::Finish { succeeded: true }
        );
        assert_eq!(
            plan(&with("Never"), &dead(Some(2))),
            Action::Finish { succeeded: false }
        );
        assert_eq!(
            plan(&with("Never"), &dead(None)),
            Action::Finish { succeeded: false }
        );
        assert_eq!(
            plan(&with("OnFailure"), &dead(Some(0))),
            Action::Finish { succeeded: true }
        );
        assert!(matches!(
            plan(&with("OnFailure"), &dead(None)),
            Action::Containers { .. }
        ));
        assert!(matches!(
            plan(&with("Always"), &dead(Some(0))),
            Action::Containers { .. }
        ));
    }

    #[test]
    fn a_record_with_every_container_terminated_finishes() {
        let p = pod(json!({"spec": {"restartPolicy": "Never"}}));
        let mut rec = record(true);
        rec.containers[0].state = ProcState::Terminated(Exit {
            pid: 1,
            code: Some(0),
            started_at: t("2025-01-01T00:00:00Z"),
            finished_at: t("2025-01-01T00:00:01Z"),
        });
        assert_eq!(
            plan_pod(ApiState::Live, Some(&p), Some(&rec), &Exited::new(), true),
            Action::Finish { succeeded: true }
        );
    }

    #[test]
    fn one_of_two_containers_exits_under_never() {
        let p = pod(json!({"spec": {"restartPolicy": "Never"}}));
        let mut rec = record(true);
        let mut second = rec.containers[0].clone();
        second.name = "side".into();
        rec.containers.push(second);
        assert_eq!(
            plan_pod(ApiState::Live, Some(&p), Some(&rec), &dead(Some(0)), true),
            Action::Containers {
                restart: vec![],
                terminate: vec!["echo".into()],
            }
        );
    }

    #[test]
    fn termination_grace_from_the_deletion_capped() {
        let grace = |extra| plan_termination_grace(&pod(extra));
        assert_eq!(grace(json!({})), Duration::from_secs(30));
        assert_eq!(
            grace(json!({"spec": {"terminationGracePeriodSeconds": 12}})),
            Duration::from_secs(12)
        );
        assert_eq!(
            grace(json!({"metadata": {"deletionGracePeriodSeconds": 5},
                         "spec": {"terminationGracePeriodSeconds": 12}})),
            Duration::from_secs(5)
        );
        assert_eq!(
            grace(json!({"metadata": {"deletionGracePeriodSeconds": 0}})),
            MIN_TERMINATION_GRACE
        );
        assert_eq!(
            grace(json!({"metadata": {"deletionGracePeriodSeconds": 3600}})),
            MAX_TERMINATION_GRACE
        );
    }

    #[test]
    fn api_states() {
        assert_eq!(api_state(None), ApiState::Absent);
        assert_eq!(api_state(Some(&pod(json!({})))), ApiState::Live);
        assert_eq!(
            api_state(Some(&pod(json!({"status": {"phase": "Failed"}})))),
            ApiState::Terminal
        );
        assert_eq!(
            api_state(Some(&pod(
                json!({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"}})
            ))),
            ApiState::Deleting
        );
    }

    #[test]
    fn hostnetwork_pods_need_no_cni_config() {
        let p = pod(json!({"spec": {"hostNetwork": true}}));
        assert_eq!(
            plan_pod(ApiState::Live, Some(&p), None, &Exited::new(), false),
            Action::Create
        );
    }

    #[test]
    fn names() {
        assert_eq!(
            plan_container_id("1B4E28BA-2fa1-11d2-883f-0016d3cca427"),
            "1b4e28ba2fa111d2883f0016d3cca427"
        );
        let odd = plan_container_id("a/b");
        assert_eq!(odd.len(), 32);
        assert!(odd.chars().all(|c| c.is_ascii_hexdigit()));
        let a = plan_netns_name("lab1-w1-", "uid-1").unwrap();
        let b = plan_netns_name("lab1-w1-", "uid-2").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("lab1-w1-") && a.len() == 8 + 16);
        assert_eq!(a, plan_netns_name("lab1-w1-", "uid-1").unwrap());
        assert!(plan_netns_name(&"p".repeat(44), "u").is_ok());
        assert!(plan_netns_name(&"p".repeat(45), "u").is_err());
    }

    #[test]
    fn cni_args_are_kubelets() {
        let args = plan_cni_args(&pod(json!({})), "cid");
        let s: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            s.join(";"),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=cid;K8S_POD_UID=1b4e28ba-2fa1-11d2-883f-0016d3cca427"
        );
    }

    #[test]
    fn kubernetes_service_env_and_automount() {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1",
                     "ports": [{"name": "https", "port": 443, "targetPort": 6443}]}}))
        .unwrap();
        let env = plan_kubernetes_env(&svc);
        assert_eq!(
            env,
            [
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("KUBERNETES_SERVICE_PORT", "443"),
                ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let headless: k8s_openapi::api::core::v1::Service = serde_json::from_value(
            json!({"spec": {"clusterIP": "None", "ports": [{"port": 443}]}}),
        )
        .unwrap();
        assert!(plan_kubernetes_env(&headless).is_empty());

        // The container's own value wins.
        let mut mine = vec![("KUBERNETES_SERVICE_HOST".to_string(), "1.2.3.4".to_string())];
        add_env(&mut mine, &env);
        assert_eq!(mine[0].1, "1.2.3.4");
        assert_eq!(mine.len(), 3);

        let pod = |v: serde_json::Value| -> Pod { serde_json::from_value(v).unwrap() };
        assert!(mounts_service_account(&pod(
            json!({"spec": {"containers": []}})
        )));
        assert!(mounts_service_account(&pod(
            json!({"spec": {"automountServiceAccountToken": true, "containers": []}})
        )));
        assert!(!mounts_service_account(&pod(
            json!({"spec": {"automountServiceAccountToken": false, "containers": []}})
        )));
    }

    #[test]
    fn pod_ips_from_result() {
        let r = json!({"ips": [{"address": "fd00::5/64"}, {"address": "10.244.1.5/24", "gateway": "10.244.1.1"}]});
        let ips = plan_pod_ips(&r);
        assert_eq!(
            ips,
            vec![
                "10.244.1.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert!(plan_pod_ips(&json!({})).is_empty());
    }

    #[test]
    fn echo_process() {
        let p = pod(json!({}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let spec = plan_process(&p, c, Path::new("/opt/podnet"), "10.244.1.5", "w1").unwrap();
        assert_eq!(spec.program, PathBuf::from("/opt/podnet"));
        assert_eq!(spec.args, vec!["echo"]);
        let env: BTreeMap<_, _> = spec.env.into_iter().collect();
        assert_eq!(env["POD_NAME"], "web");
        assert_eq!(env["POD_NAMESPACE"], "default");
        assert_eq!(env["POD_IP"], "10.244.1.5");
        assert_eq!(env["NODE_NAME"], "w1");
        assert_eq!(env["CONTAINER_NAME"], "echo");
        assert_eq!(env["ECHO_TCP_PORTS"], "8080,9000");
        assert_eq!(env["ECHO_UDP_PORTS"], "53");
        assert_eq!(env["ECHO_SCTP_PORTS"], "7");
        // The container's env reaches the echo workload too.
        let p = pod(
            json!({"spec": {"containers": [{"name": "echo", "image": "podnet/echo",
            "env": [{"name": "ECHO_DRAIN_SECONDS", "value": "20"}]}]}}),
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        let spec = plan_process(&p, c, Path::new("/opt/podnet"), "10.244.1.5", "w1").unwrap();
        let env: BTreeMap<_, _> = spec.env.into_iter().collect();
        assert_eq!(env["ECHO_DRAIN_SECONDS"], "20");
    }

    #[test]
    fn command_process() {
        let p = pod(json!({"spec": {"containers": [{
            "name": "sh", "image": "busybox", "command": ["/bin/sh", "-c"], "args": ["sleep 1"],
            "env": [{"name": "A", "value": "1"}, {"name": "POD_IP", "value": "override"},
                    {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
        }]}}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let spec = plan_process(&p, c, Path::new("/x"), "10.0.0.1", "w1").unwrap();
        assert_eq!(spec.program, PathBuf::from("/bin/sh"));
        assert_eq!(spec.args, vec!["-c", "sleep 1"]);
        let env: BTreeMap<_, _> = spec.env.into_iter().collect();
        assert_eq!(env["A"], "1");
        assert_eq!(env["POD_IP"], "override");
        assert!(!env.contains_key("B"));
        assert_eq!(env["PATH"], CONTAINER_PATH);

        let no_cmd = pod(json!({"spec": {"containers": [{"name": "n", "image": "nginx"}]}}));
        let c = &no_cmd.spec.as_ref().unwrap().containers[0];
        let err = plan_process(&no_cmd, c, Path::new("/x"), "", "w1").unwrap_err();
        assert!(err.contains("no command"), "{err}");
    }

    #[test]
    fn echo_images() {
        for yes in [
            "podnet/echo",
            "podnet/echo:1.0",
            "docker.io/podnet/echo:latest",
            "podnet/echo@sha256:00",
        ] {
            assert!(is_echo_image(yes), "{yes}");
        }
        for no in ["podnet/echoes", "busybox", "example.com/podnet/echo"] {
            assert!(!is_echo_image(no), "{no}");
        }
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    #[test]
    fn running_status() {
        let now = t("2025-01-01T00:00:05Z");
        let p = pod(json!({}));
        let s = render_pod_status(
            &p,
            Some(&record(true)),
            &Exited::new(),
            "192.168.50.11".parse().unwrap(),
            None,
            &now,
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["phase"], "Running");
        assert_eq!(v["podIP"], "10.244.1.5");
        assert_eq!(v["podIPs"], json!([{"ip": "10.244.1.5"}]));
        assert_eq!(v["hostIP"], "192.168.50.11");
        assert_eq!(v["hostIPs"], json!([{"ip": "192.168.50.11"}]));
        assert_eq!(v["startTime"], "2025-01-01T00:00:00Z");
        for c in [
            "PodScheduled",
            "Initialized",
            "ContainersReady",
            "Ready",
            "PodReadyToStartContainers",
        ] {
            assert_eq!(cond(&s, c).status, "True", "{c}");
        }
        let cs = &v["containerStatuses"][0];
        assert_eq!(cs["name"], "echo");
        assert_eq!(cs["image"], "podnet/echo:latest");
        assert_eq!(cs["ready"], true);
        assert_eq!(cs["started"], true);
        assert_eq!(cs["restartCount"], 0);
        assert_eq!(cs["containerID"], "podnet://4242");
        assert_eq!(cs["state"]["running"]["startedAt"], "2025-01-01T00:00:01Z");

        // Rendering again over the reported status gives the same object: no write.
        let mut p2 = p.clone();
        p2.status = Some(s.clone());
        let later = t("2025-01-01T00:10:00Z");
        let again = render_pod_status(
            &p2,
            Some(&record(true)),
            &Exited::new(),
            "192.168.50.11".parse().unwrap(),
            None,
            &later,
        );
        assert_eq!(again, s);
    }

    #[test]
    fn status_diff() {
        let now = t("2025-01-01T00:00:05Z");
        let host = "192.168.50.11".parse().unwrap();
        let waiting = render_pod_status(
            &pod(json!({})),
            None,
            &Exited::new(),
            host,
            Some(&Problem::network_not_ready()),
            &now,
        );
        let first = diff_pod_status(None, &waiting).unwrap();
        assert_eq!(first["status"]["phase"], "Pending");
        assert_eq!(diff_pod_status(Some(&waiting), &waiting), None);
        // Others' fields do not make a difference.
        let mut theirs = waiting.clone();
        theirs.nominated_node_name = Some("w2".into());
        assert_eq!(diff_pod_status(Some(&theirs), &waiting), None);
        // Going from a problem to running clears the reason and message.
        let mut p = pod(json!({}));
        p.status = Some(waiting.clone());
        let running = render_pod_status(&p, Some(&record(true)), &Exited::new(), host, None, &now);
        let patch = diff_pod_status(Some(&waiting), &running).unwrap();
        assert_eq!(patch["status"]["reason"], serde_json::Value::Null);
        assert!(patch["status"].as_object().unwrap().contains_key("reason"));
        assert_eq!(patch["status"]["podIP"], "10.244.1.5");
    }

    #[test]
    fn network_not_ready_status() {
        let now = t("2025-01-01T00:00:05Z");
        let s = render_pod_status(
            &pod(json!({})),
            None,
            &Exited::new(),
            "192.168.50.11".parse().unwrap(),
            Some(&Problem::network_not_ready()),
            &now,
        );
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(s.pod_ip, None);
        let ready = cond(&s, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("NetworkNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("NetworkNotReady: no CNI config")
        );
        assert_eq!(cond(&s, "PodReadyToStartContainers").status, "False");
        assert_eq!(s.reason.as_deref(), Some("NetworkNotReady"));
    }

    #[test]
    fn exited_and_terminated_statuses() {
        let now = t("2025-01-01T00:01:00Z");
        let host = "192.168.50.11".parse().unwrap();
        // Exited, waiting for its restart.
        let s = render_pod_status(
            &pod(json!({})),
            Some(&record(true)),
            &dead(Some(1)),
            host,
            None,
            &now,
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "Ready").last_transition_time, Some(now.clone()));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(!cs.ready);
        assert_eq!(
            cs.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("CrashLoopBackOff")
        );
        // Terminated for good.
        let mut rec = record(true);
        rec.containers[0].state = ProcState::Terminated(Exit {
            pid: 4242,
            code: Some(3),
            started_at: t("2025-01-01T00:00:01Z"),
            finished_at: t("2025-01-01T00:00:30Z"),
        });
        let s = render_pod_status(
            &pod(json!({})),
            Some(&rec),
            &Exited::new(),
            host,
            None,
            &now,
        );
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        let term = s.container_statuses.as_ref().unwrap()[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!(term.exit_code, 3);
        assert_eq!(term.reason.as_deref(), Some("Error"));
        assert_eq!(cond(&s, "Ready").status, "False");
    }

    #[test]
    fn node_rendering_keeps_spec_and_transition() {
        let existing: Node = serde_json::from_value(json!({
            "metadata": {"name": "w1", "labels": {"custom": "x"}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        }))
        .unwrap();
        let t0 = t("2025-01-01T00:00:00Z");
        let n = render_node("w1", "192.168.50.11".parse().unwrap(), Some(&existing), &t0);
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["spec"]["podCIDR"], "10.244.1.0/24");
        assert_eq!(v["metadata"]["labels"]["custom"], "x");
        assert_eq!(v["metadata"]["labels"]["kubernetes.io/hostname"], "w1");
        assert_eq!(v["metadata"]["labels"]["kubernetes.io/os"], "linux");
        assert_eq!(
            v["status"]["addresses"],
            json!([{"type": "InternalIP", "address": "192.168.50.11"}, {"type": "Hostname", "address": "w1"}])
        );
        assert_eq!(v["status"]["capacity"]["pods"], "110");
        assert_eq!(v["status"]["allocatable"]["pods"], "110");
        let ready = &v["status"]["conditions"][0];
        assert_eq!(ready["type"], "Ready");
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["reason"], "KubeletReady");

        let t1 = t("2025-01-01T00:00:10Z");
        let s = render_node_status(
            "w1",
            "192.168.50.11".parse().unwrap(),
            n.status.as_ref(),
            &t1,
        );
        let c = &s.conditions.unwrap()[0];
        assert_eq!(c.last_heartbeat_time, Some(t1));
        assert_eq!(c.last_transition_time, Some(t0));
    }

    #[test]
    fn record_round_trips_through_json() {
        let rec = record(true);
        let text = serde_json::to_string_pretty(&rec).unwrap();
        let back: PodRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, rec);
    }
}
