//! Orchestration: the per-node loop — register the Node and keep it Ready, watch the
//! pods bound here, and drive each one with [`plan::plan_pod`]: create (namespace + CNI ADD
//! + processes), adopt, restart containers, finish, tear down.
//!
//! Compared with kubelet: one sequential sync over (pods from a field-selected watch) ∪
//! (records on disk), every second and on every watch event, instead of one goroutine per
//! pod; the records on disk replace the CRI runtime's sandbox list, so a restarted kubelet
//! adopts running pods without touching the kernel (established connections keep
//! flowing), exactly as kubelet + containerd do. Pods are only torn down for being absent
//! once the watch has delivered a complete list, so a restart never kills a pod it has
//! merely not heard of yet. A pod being deleted (`deletionTimestamp`) gets SIGTERM, stays
//! Ready while every container still runs, gets SIGKILL when its
//! `deletionGracePeriodSeconds` (capped, [`plan::MAX_TERMINATION_GRACE`]) is over, and is
//! deleted with grace 0 once torn down. What kubelet does and this does not: images,
//! volumes, probes (a running process is ready), resource limits, init containers,
//! ephemeral containers, events, preStop hooks; `env.valueFrom` is ignored.

use crate::Config;
use crate::cni::{Attachment, ConfList, Runtime};
use crate::plan::{
    self, Action, ApiState, ContainerRecord, Exit, Exited, PodRecord, Problem, ProcState,
};
use crate::sandbox::{self, ExitLog, SandboxSpec, Started};
use crate::state::StateDir;
use anyhow::{Context, Result, anyhow, bail};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Grace between SIGTERM and SIGKILL when a pod is stopped.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often the node's Ready condition is refreshed.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How often every pod is looked at even without a watch event (process exits, CNI config).
const RESYNC: Duration = Duration::from_secs(1);
/// Longest wait between two attempts to create a pod or restart a container.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A container that ran this long before exiting restarts without delay.
const CLEAN_RUN: Duration = Duration::from_secs(30);

/// The current time as the API shows it (whole seconds).
fn now() -> Time {
    let s = k8s_openapi::jiff::Timestamp::now().as_second();
    Time(k8s_openapi::jiff::Timestamp::from_second(s).expect("now is representable"))
}

/// Retry state of one pod (creation) or container (restarts).
#[derive(Debug, Clone)]
struct Backoff {
    failures: u32,
    not_before: Instant,
    problem: Option<Problem>,
}

fn delay(failures: u32) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(1 << failures.min(10))
        .min(MAX_BACKOFF)
}

/// The node's CNI configuration, if there is one.
#[derive(Debug, Clone)]
struct Network {
    list: ConfList,
    text: String,
}

/// The first `*.conflist` in `dir` (by name, as libcni picks), parsed.
fn read_network(dir: &Path) -> Option<Network> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .collect();
    files.sort();
    let path = files.into_iter().next()?;
    let text = std::fs::read_to_string(&path).ok()?;
    match ConfList::parse(text.as_bytes()) {
        Ok(list) => Some(Network { list, text }),
        Err(e) => {
            warn!("CNI config {}: {e:#}", path.display());
            None
        }
    }
}

struct Kubelet {
    cfg: Config,
    client: kube::Client,
    rt: Runtime,
    states: StateDir,
    exits: ExitLog,
    /// Pods bound to this node, by UID, as the watch last showed them.
    api: BTreeMap<String, Pod>,
    /// Whether `api` comes from a complete list.
    listed: bool,
    records: BTreeMap<String, PodRecord>,
    backoff: HashMap<String, Backoff>,
    /// Pods being deleted whose containers got SIGTERM: (when, SIGKILL deadline), by UID.
    terminating: HashMap<String, (Instant, Instant)>,
    gc_done: bool,
    /// The variables for the `kubernetes` Service every container gets; `None` until the
    /// Service has been read (containers wait for it, as kubelet's do for its service
    /// informer), empty when the cluster has none.
    kubernetes_env: Option<Vec<(String, String)>>,
}

/// Runs the kubelet until the watch ends for good.
pub async fn run(cfg: Config, client: kube::Client) -> Result<()> {
    plan::plan_netns_name(&cfg.netns_prefix, "probe").map_err(|e| anyhow!(e))?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let rt = Runtime {
        plugin_dirs: cfg.cni_bin_dirs.clone(),
        cache_dir: cfg.cni_cache_dir.clone(),
        // This process already runs in the node's namespace.
        exec_netns: None,
    };
    let mut k = Kubelet {
        states: StateDir::new(&cfg.state_dir),
        cfg,
        client,
        rt,
        exits: ExitLog::default(),
        api: BTreeMap::new(),
        listed: false,
        records: BTreeMap::new(),
        backoff: HashMap::new(),
        terminating: HashMap::new(),
        gc_done: false,
        kubernetes_env: None,
    };
    k.load_records().await?;
    k.register_node().await;

    let pods: Api<Pod> = Api::all(k.client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", k.cfg.node_name));
    let mut events = watcher(pods, wc).default_backoff().boxed();
    let mut init: Option<BTreeMap<String, Pod>> = None;
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(node = %k.cfg.node_name, "kubelet running");
    loop {
        tokio::select! {
            ev = events.next() => {
                let Some(ev) = ev else { bail!("pod watch ended") };
                k.on_event(ev, &mut init);
                // Take whatever else is already there before syncing once.
                while let Some(Some(ev)) = events.next().now_or_never() {
                    k.on_event(ev, &mut init);
                }
                k.sync().await;
            }
            _ = resync.tick() => k.sync().await,
            _ = heartbeat.tick() => k.heartbeat().await,
        }
    }
}

fn uid_of(p: &Pod) -> Option<String> {
    p.metadata.uid.clone()
}

impl Kubelet {
    fn on_event(
        &mut self,
        ev: Result<watcher::Event<Pod>, watcher::Error>,
        init: &mut Option<BTreeMap<String, Pod>>,
    ) {
        // The field selector is checked here too: a server that ignores it must not make
        // this node run other nodes' pods.
        let node = self.cfg.node_name.clone();
        let mine = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&node);
        let ev = ev.map(|ev| match ev {
            watcher::Event::Apply(p) if !mine(&p) => watcher::Event::Delete(p),
            other => other,
        });
        match ev {
            Ok(watcher::Event::Init) => *init = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(p)) => {
                if let (Some(buf), Some(uid), true) = (init.as_mut(), uid_of(&p), mine(&p)) {
                    buf.insert(uid, p);
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(buf) = init.take() {
                    self.api = buf;
                    self.listed = true;
                }
            }
            Ok(watcher::Event::Apply(p)) => {
                if let Some(uid) = uid_of(&p) {
                    self.api.insert(uid, p);
                }
            }
            Ok(watcher::Event::Delete(p)) => {
                if let Some(uid) = uid_of(&p) {
                    self.api.remove(&uid);
                }
            }
            Err(e) => warn!("pod watch: {e}"),
        }
    }

    /// Reads the records; a record that cannot be read is torn down by what its UID
    /// tells (namespace name and container ID are derived from it) and removed.
    async fn load_records(&mut self) -> Result<()> {
        let (records, broken) = self.states.load_all()?;
        for (uid, why) in broken {
            warn!(%uid, "unreadable pod record, tearing down what it names: {why:#}");
            let rt = self.rt.clone();
            let states = self.states.clone();
            let net = read_network(&self.cfg.cni_conf_dir);
            let prefix = self.cfg.netns_prefix.clone();
            let res = tokio::task::spawn_blocking(move || -> Result<()> {
                let spec = SandboxSpec {
                    netns_name: plan::plan_netns_name(&prefix, &uid).map_err(|e| anyhow!(e))?,
                    attachment: Attachment {
                        container_id: plan::plan_container_id(&uid),
                        ifname: plan::POD_IFNAME.into(),
                        ..Default::default()
                    },
                };
                let mut spec = spec;
                spec.attachment.netns = spec.netns_path().display().to_string();
                sandbox::teardown_sandbox(&rt, net.as_ref().map(|n| &n.list), &spec)?;
                states.remove(&uid)
            })
            .await?;
            if let Err(e) = res {
                warn!("cleaning an unreadable record: {e:#}");
            }
        }
        for r in records {
            info!(uid = %r.uid, pod = %format!("{}/{}", r.namespace, r.name), "found pod record");
            self.records.insert(r.uid.clone(), r);
        }
        Ok(())
    }

    async fn register_node(&mut self) {
        let mut wait = Duration::from_millis(200);
        loop {
            match self.write_node(true).await {
                Ok(()) => {
                    info!(node = %self.cfg.node_name, "node registered");
                    return;
                }
                Err(e) => warn!("registering node: {e:#}"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    async fn heartbeat(&mut self) {
        if let Err(e) = self.write_node(false).await {
            warn!("node heartbeat: {e:#}");
        }
    }

    /// Creates or updates the Node object (`register`), then its status.
    async fn write_node(&self, register: bool) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let name = &self.cfg.node_name;
        let t = now();
        let mut existing = nodes.get_opt(name).await.context("reading node")?;
        if register {
            let want = plan::render_node(name, self.cfg.node_ip, existing.as_ref(), &t);
            existing = Some(match &existing {
                None => nodes
                    .create(&PostParams::default(), &want)
                    .await
                    .context("creating node")?,
                Some(old) if old.metadata.labels != want.metadata.labels => nodes
                    .replace(name, &PostParams::default(), &want)
                    .await
                    .context("updating node labels")?,
                Some(old) => old.clone(),
            });
        }
        let Some(node) = existing else {
            bail!("node {name} does not exist");
        };
        let status = plan::render_node_status(name, self.cfg.node_ip, node.status.as_ref(), &t);
        let patch = serde_json::json!({ "status": status });
        match nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                debug!("node status merge patch failed ({e}); replacing");
                let mut n = node;
                n.status = Some(status);
                nodes
                    .replace_status(name, &PostParams::default(), &n)
                    .await
                    .context("writing node status")?;
                Ok(())
            }
        }
    }

    /// Liveness of a record's running containers.
    fn exited(&self, r: &PodRecord) -> Exited {
        let mut out = Exited::new();
        for c in &r.containers {
            if let ProcState::Running {
                pid, start_ticks, ..
            } = c.state
                && !sandbox::is_alive(pid, start_ticks)
            {
                out.insert(c.name.clone(), self.exits.peek(pid));
            }
        }
        out
    }

    async fn sync(&mut self) {
        if !self.listed {
            return;
        }
        if self.kubernetes_env.is_none() {
            self.read_kubernetes_service().await;
        }
        let net = read_network(&self.cfg.cni_conf_dir);
        let uids: BTreeSet<String> = self
            .api
            .keys()
            .chain(self.records.keys())
            .cloned()
            .collect();
        for uid in uids {
            if let Err(e) = self.sync_pod(&uid, net.as_ref()).await {
                warn!(%uid, "{e:#}");
            }
        }
        if !self.gc_done
            && let Some(net) = net
        {
            self.gc_done = true;
            let valid: Vec<(String, String)> = self
                .records
                .values()
                .filter(|r| r.netns.is_some())
                .map(|r| (r.container_id.clone(), plan::POD_IFNAME.to_string()))
                .collect();
            let rt = self.rt.clone();
            let res = tokio::task::spawn_blocking(move || rt.gc(&net.list, &valid)).await;
            match res {
                Ok(Err(e)) => warn!("CNI GC: {e:#}"),
                Err(e) => warn!("CNI GC: {e}"),
                Ok(Ok(())) => {}
            }
        }
    }

    async fn sync_pod(&mut self, uid: &str, net: Option<&Network>) -> Result<()> {
        let pod = self.api.get(uid).cloned();
        let record = self.records.get(uid).cloned();
        let exited = record.as_ref().map(|r| self.exited(r)).unwrap_or_default();
        let api = plan::api_state(pod.as_ref());
        let action = plan::plan_pod(api, pod.as_ref(), record.as_ref(), &exited, net.is_some());
        match action {
            Action::Nothing => Ok(()),
            Action::WaitNetwork => {
                let pod = pod.expect("live pods are in the API");
                self.report(&pod, None, &exited, Some(&Problem::network_not_ready()))
                    .await
            }
            Action::Keep => {
                let pod = pod.expect("live pods are in the API");
                self.report(&pod, record.as_ref(), &exited, None).await
            }
            Action::Create => self.create(pod.expect("live"), net).await,
            Action::Recreate => {
                self.teardown(record.expect("recreate has a record"), net)
                    .await?;
                self.create(pod.expect("live"), net).await
            }
            Action::Teardown => {
                let mut record = record.expect("teardown has a record");
                info!(%uid, pod = %format!("{}/{}", record.namespace, record.name), "tearing down");
                if api == ApiState::Deleting
                    && let Some(pod) = &pod
                    && record.complete
                {
                    // The containers are gone: say so (Ready False, so no endpoint serves
                    // from here) before the sandbox goes.
                    let all: Vec<String> = exited.keys().cloned().collect();
                    self.mark_terminated(&mut record, &all);
                    if let Err(e) = self.report(pod, Some(&record), &Exited::new(), None).await {
                        debug!(%uid, "final status: {e:#}");
                    }
                }
                self.teardown(record, net).await?;
                if api == ApiState::Deleting
                    && let Some(pod) = pod
                {
                    self.finish_deletion(&pod).await;
                }
                Ok(())
            }
            Action::Terminate => {
                let pod = pod.expect("deleting pods are in the API");
                let mut rec = record.expect("terminate has a record");
                self.terminate(&pod, &mut rec, &exited)?;
                let exited = self.exited(&rec);
                self.report(&pod, Some(&rec), &exited, None).await
            }
            Action::Containers { restart, terminate } => {
                let pod = pod.expect("live");
                let mut rec = record.expect("containers have a record");
                self.mark_terminated(&mut rec, &terminate);
                for name in &restart {
                    self.restart(&pod, &mut rec, name).await;
                }
                self.states.save(&rec)?;
                self.records.insert(uid.to_string(), rec.clone());
                let exited = self.exited(&rec);
                self.report(&pod, Some(&rec), &exited, None).await
            }
            Action::Finish { succeeded } => {
                let pod = pod.expect("live");
                let mut rec = record.expect("finish has a record");
                let all: Vec<String> = exited.keys().cloned().collect();
                self.mark_terminated(&mut rec, &all);
                self.states.save(&rec)?;
                self.records.insert(uid.to_string(), rec.clone());
                info!(%uid, succeeded, "all containers exited");
                // The final phase is written before the sandbox goes: once the API says
                // Succeeded/Failed the pod is never run again, even after a restart.
                self.report(&pod, Some(&rec), &Exited::new(), None).await?;
                self.teardown(rec, net).await
            }
        }
    }

    /// A pod being deleted: SIGTERM its containers the first time, SIGKILL them once the
    /// grace period is over (a shorter grace from a later DELETE brings the deadline
    /// forward); containers that exited meanwhile are marked terminated.
    fn terminate(&mut self, pod: &Pod, rec: &mut PodRecord, exited: &Exited) -> Result<()> {
        let procs: Vec<Started> = rec
            .containers
            .iter()
            .filter(|c| !exited.contains_key(&c.name))
            .filter_map(|c| match c.state {
                ProcState::Running {
                    pid, start_ticks, ..
                } => Some(Started { pid, start_ticks }),
                ProcState::Terminated(_) => None,
            })
            .collect();
        let grace = plan::plan_termination_grace(pod);
        let now = Instant::now();
        let uid = rec.uid.clone();
        let (since, deadline) = self.terminating.entry(uid.clone()).or_insert_with(|| {
            info!(%uid, pod = %format!("{}/{}", rec.namespace, rec.name), ?grace,
                  "terminating: SIGTERM");
            sandbox::signal_processes(&procs, nix::sys::signal::Signal::SIGTERM);
            (now, now + grace)
        });
        *deadline = (*deadline).min(*since + grace);
        if now >= *deadline {
            info!(%uid, "grace period over: SIGKILL");
            sandbox::signal_processes(&procs, nix::sys::signal::Signal::SIGKILL);
        }
        if !exited.is_empty() {
            let gone: Vec<String> = exited.keys().cloned().collect();
            self.mark_terminated(rec, &gone);
            self.states.save(rec)?;
            self.records.insert(uid, rec.clone());
        }
        Ok(())
    }

    fn mark_terminated(&self, rec: &mut PodRecord, names: &[String]) {
        let t = now();
        for c in rec
            .containers
            .iter_mut()
            .filter(|c| names.contains(&c.name))
        {
            if let ProcState::Running {
                pid, started_at, ..
            } = &c.state
            {
                let exit = Exit {
                    pid: *pid,
                    code: self.exits.take(*pid),
                    started_at: started_at.clone(),
                    finished_at: t.clone(),
                };
                c.state = ProcState::Terminated(exit);
            }
        }
    }

    /// Restarts one exited container, unless its backoff says wait.
    async fn restart(&mut self, pod: &Pod, rec: &mut PodRecord, name: &str) {
        let key = format!("{}/{name}", rec.uid);
        if self
            .backoff
            .get(&key)
            .is_some_and(|b| Instant::now() < b.not_before)
        {
            return;
        }
        let Some(c) = rec.containers.iter_mut().find(|c| c.name == name) else {
            return;
        };
        let ProcState::Running {
            pid, started_at, ..
        } = c.state.clone()
        else {
            return;
        };
        let t = now();
        let ran = t.0.duration_since(started_at.0).unsigned_abs();
        let failures = if ran >= CLEAN_RUN {
            0
        } else {
            self.backoff.get(&key).map_or(0, |b| b.failures) + 1
        };
        let started = self.start_container(pod, rec.netns.as_deref(), &rec.pod_ips, name);
        let c = rec
            .containers
            .iter_mut()
            .find(|c| c.name == name)
            .expect("found above");
        match started.await {
            Ok(s) => {
                info!(uid = %rec.uid, container = name, pid = s.pid, "container restarted");
                c.last = Some(Exit {
                    pid,
                    code: self.exits.take(pid),
                    started_at,
                    finished_at: t.clone(),
                });
                c.restart_count += 1;
                c.state = ProcState::Running {
                    pid: s.pid,
                    start_ticks: s.start_ticks,
                    started_at: t,
                };
            }
            Err(e) => warn!(uid = %rec.uid, container = name, "restart failed: {e:#}"),
        }
        self.backoff.insert(
            key,
            Backoff {
                failures,
                not_before: Instant::now()
                    + if failures == 0 {
                        Duration::ZERO
                    } else {
                        delay(failures)
                    },
                problem: None,
            },
        );
    }

    /// Reads the `kubernetes` Service in `default` into [`Kubelet::kubernetes_env`]; a
    /// failure other than NotFound leaves it unread, to be tried at the next sync.
    async fn read_kubernetes_service(&mut self) {
        let api: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(self.client.clone(), "default");
        match api.get_opt("kubernetes").await {
            Ok(svc) => {
                let env = svc.as_ref().map(plan::plan_kubernetes_env);
                debug!(?env, "the kubernetes Service");
                self.kubernetes_env = Some(env.unwrap_or_default());
            }
            Err(e) => warn!("reading the kubernetes Service: {e}"),
        }
    }

    /// Writes the pod's service account directory (`token`, `ca.crt`, `namespace`) into
    /// its state directory: `None` when this kubelet has no credentials to hand out or the
    /// pod opts out. The token is read anew for every container start.
    fn write_service_account(&self, pod: &Pod) -> Result<Option<std::path::PathBuf>> {
        let Some(sa) = &self.cfg.service_account else {
            return Ok(None);
        };
        if !plan::mounts_service_account(pod) {
            return Ok(None);
        }
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let files = [
            ("token", read(&sa.token_file)?),
            ("ca.crt", read(&sa.ca_file)?),
            ("namespace", namespace.as_bytes().to_vec()),
        ];
        let dir = self
            .states
            .pod_dir(pod.metadata.uid.as_deref().unwrap_or(""))?
            .join("serviceaccount");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, content) in files {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, content)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(Some(dir))
    }

    /// Writes the pod's resolv.conf into its state directory (`None`: the node's file).
    fn write_resolv_conf(&self, pod: &Pod) -> Result<Option<std::path::PathBuf>> {
        let conf = crate::dns::plan_resolv_conf(
            pod,
            &self.cfg.cluster_dns,
            &self.cfg.cluster_domain,
            &self.cfg.node_resolv_conf,
        )
        .map_err(|e| anyhow!(e))?;
        let Some(conf) = conf else { return Ok(None) };
        let dir = self
            .states
            .pod_dir(pod.metadata.uid.as_deref().unwrap_or(""))?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("resolv.conf");
        let tmp = dir.join("resolv.conf.tmp");
        std::fs::write(&tmp, conf.render())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Some(path))
    }

    fn start_container(
        &self,
        pod: &Pod,
        netns: Option<&str>,
        ips: &[std::net::IpAddr],
        name: &str,
    ) -> impl Future<Output = Result<Started>> + use<> {
        let spec = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == name))
            .ok_or_else(|| anyhow!("container {name} not in the pod spec"))
            .and_then(|c| {
                let ip = ips.first().map(|i| i.to_string()).unwrap_or_default();
                plan::plan_process(pod, c, &self.cfg.echo_exe, &ip, &self.cfg.node_name)
                    .map_err(|e| anyhow!(e))
            })
            .and_then(|mut spec| {
                let env = self.kubernetes_env.as_deref().ok_or_else(|| {
                    anyhow!(
                        "the kubernetes Service has not been read yet (its variables are missing)"
                    )
                })?;
                plan::add_env(&mut spec.env, env);
                spec.resolv_conf = self.write_resolv_conf(pod)?;
                spec.service_account = self.write_service_account(pod)?;
                Ok(spec)
            });
        let log = self
            .states
            .log_path(pod.metadata.uid.as_deref().unwrap_or(""), name);
        let ns = netns.map(podnet_netlink::netns::named_path);
        let exits = self.exits.clone();
        async move {
            let spec = spec?;
            let log = log?;
            tokio::task::spawn_blocking(move || {
                sandbox::start_process(ns.as_deref(), &spec, &log, &exits)
            })
            .await?
        }
    }

    /// Makes the sandbox and starts every container; on failure undoes it all and reports
    /// the error in the pod's status, to be retried with backoff.
    async fn create(&mut self, pod: Pod, net: Option<&Network>) -> Result<()> {
        let uid = uid_of(&pod).context("pod has no UID")?;
        if let Some(b) = self.backoff.get(&uid)
            && Instant::now() < b.not_before
        {
            let problem = b.problem.clone();
            return self
                .report(&pod, None, &Exited::new(), problem.as_ref())
                .await;
        }
        let name = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or("")
        );
        match self.try_create(&pod, &uid, net).await {
            Ok(rec) => {
                info!(%uid, pod = %name, ips = ?rec.pod_ips, "pod running");
                self.backoff.remove(&uid);
                self.records.insert(uid.clone(), rec.clone());
                let exited = self.exited(&rec);
                self.report(&pod, Some(&rec), &exited, None).await
            }
            Err((reason, e)) => {
                let failures = self.backoff.get(&uid).map_or(0, |b| b.failures) + 1;
                let problem = Problem {
                    reason: reason.into(),
                    message: format!("{e:#}"),
                };
                warn!(%uid, pod = %name, "{reason}: {e:#}");
                self.backoff.insert(
                    uid.clone(),
                    Backoff {
                        failures,
                        not_before: Instant::now() + delay(failures),
                        problem: Some(problem.clone()),
                    },
                );
                self.report(&pod, None, &Exited::new(), Some(&problem))
                    .await
            }
        }
    }

    async fn try_create(
        &mut self,
        pod: &Pod,
        uid: &str,
        net: Option<&Network>,
    ) -> std::result::Result<PodRecord, (&'static str, anyhow::Error)> {
        let sandbox_err = |e: anyhow::Error| ("FailedCreatePodSandBox", e);
        let host_net = plan::host_network(pod);
        let container_id = plan::plan_container_id(uid);
        let netns = if host_net {
            None
        } else {
            Some(
                plan::plan_netns_name(&self.cfg.netns_prefix, uid)
                    .map_err(|e| sandbox_err(anyhow!(e)))?,
            )
        };
        let mut rec = PodRecord {
            uid: uid.into(),
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            container_id: container_id.clone(),
            netns: netns.clone(),
            complete: false,
            conflist: net.filter(|_| !host_net).map(|n| n.text.clone()),
            cni_result: None,
            pod_ips: vec![],
            started_at: now(),
            containers: vec![],
        };
        // Written before anything is made: a crash from here on leaves a record that
        // says "half-made", which the next run tears down.
        self.states.save(&rec).map_err(sandbox_err)?;
        if let Some(ns) = &netns {
            let network = net.expect("planned only with a network");
            let spec = SandboxSpec {
                netns_name: ns.clone(),
                attachment: Attachment {
                    container_id,
                    netns: podnet_netlink::netns::named_path(ns).display().to_string(),
                    ifname: plan::POD_IFNAME.into(),
                    args: plan::plan_cni_args(pod, &rec.container_id),
                    capability_args: Default::default(),
                },
            };
            let rt = self.rt.clone();
            let list = network.list.clone();
            let made =
                tokio::task::spawn_blocking(move || sandbox::apply_sandbox(&rt, &list, &spec))
                    .await
                    .map_err(|e| sandbox_err(e.into()))
                    .and_then(|r| r.map_err(sandbox_err));
            let result = match made {
                Ok(r) => r,
                Err(e) => {
                    // apply_sandbox undid its part; this also drops the record (or keeps
                    // it, half-made, when the undo failed, for the next sync to retry).
                    self.undo(rec, net).await;
                    return Err(e);
                }
            };
            rec.pod_ips = plan::plan_pod_ips(&result);
            rec.cni_result = Some(result);
            if rec.pod_ips.is_empty() {
                let e = anyhow!("CNI ADD returned no IP address");
                self.undo(rec, net).await;
                return Err(sandbox_err(e));
            }
        } else {
            rec.pod_ips = vec![self.cfg.node_ip.into()];
        }
        if let Err(e) = self.states.save(&rec) {
            self.undo(rec, net).await;
            return Err(sandbox_err(e));
        }
        let names: Vec<String> = pod
            .spec
            .as_ref()
            .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        for name in names {
            let started = self
                .start_container(pod, rec.netns.as_deref(), &rec.pod_ips, &name)
                .await;
            match started {
                Ok(s) => {
                    let image = pod
                        .spec
                        .as_ref()
                        .and_then(|sp| sp.containers.iter().find(|c| c.name == name))
                        .and_then(|c| c.image.clone())
                        .unwrap_or_default();
                    rec.containers.push(ContainerRecord {
                        name,
                        image,
                        restart_count: 0,
                        state: ProcState::Running {
                            pid: s.pid,
                            start_ticks: s.start_ticks,
                            started_at: now(),
                        },
                        last: None,
                    });
                    if let Err(e) = self.states.save(&rec) {
                        self.undo(rec, net).await;
                        return Err(sandbox_err(e));
                    }
                }
                Err(e) => {
                    self.undo(rec, net).await;
                    return Err(("CreateContainerError", e));
                }
            }
        }
        rec.complete = true;
        if let Err(e) = self.states.save(&rec) {
            self.undo(rec, net).await;
            return Err(sandbox_err(e));
        }
        Ok(rec)
    }

    async fn undo(&mut self, rec: PodRecord, net: Option<&Network>) {
        let uid = rec.uid.clone();
        if let Err(e) = self.teardown(rec, net).await {
            warn!(%uid, "undoing a failed create: {e:#}");
        }
    }

    /// Stops the processes, detaches (DEL with the conflist used at ADD), deletes the
    /// namespace, forgets the record. On error the record stays, to be retried.
    async fn teardown(&mut self, rec: PodRecord, net: Option<&Network>) -> Result<()> {
        let procs: Vec<Started> = rec
            .containers
            .iter()
            .filter_map(|c| match c.state {
                ProcState::Running {
                    pid, start_ticks, ..
                } => Some(Started { pid, start_ticks }),
                ProcState::Terminated(_) => None,
            })
            .collect();
        let list = rec
            .conflist
            .as_deref()
            .and_then(|t| ConfList::parse(t.as_bytes()).ok())
            .or_else(|| net.map(|n| n.list.clone()));
        let rt = self.rt.clone();
        let r = rec.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut errors = Vec::new();
            if let Err(e) = sandbox::stop_processes(&procs, STOP_GRACE) {
                errors.push(format!("{e:#}"));
            }
            if let Some(ns) = &r.netns {
                let spec = SandboxSpec {
                    netns_name: ns.clone(),
                    attachment: Attachment {
                        container_id: r.container_id.clone(),
                        netns: podnet_netlink::netns::named_path(ns).display().to_string(),
                        ifname: plan::POD_IFNAME.into(),
                        args: vec![
                            ("IgnoreUnknown".into(), "1".into()),
                            ("K8S_POD_NAMESPACE".into(), r.namespace.clone()),
                            ("K8S_POD_NAME".into(), r.name.clone()),
                            ("K8S_POD_INFRA_CONTAINER_ID".into(), r.container_id.clone()),
                            ("K8S_POD_UID".into(), r.uid.clone()),
                        ],
                        capability_args: Default::default(),
                    },
                };
                if let Err(e) = sandbox::teardown_sandbox(&rt, list.as_ref(), &spec) {
                    errors.push(format!("{e:#}"));
                }
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(anyhow!(errors.join("; ")))
            }
        })
        .await??;
        for c in &rec.containers {
            if let ProcState::Running { pid, .. } = c.state {
                self.exits.take(pid);
            }
            self.backoff.remove(&format!("{}/{}", rec.uid, c.name));
        }
        self.states.remove(&rec.uid)?;
        self.records.remove(&rec.uid);
        self.terminating.remove(&rec.uid);
        Ok(())
    }

    /// After its containers are gone, a pod marked for deletion is removed for good (what
    /// kubelet's status manager does with grace period 0).
    async fn finish_deletion(&self, pod: &Pod) {
        let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
            return;
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        if let Err(e) = api.delete(name, &dp).await {
            debug!(pod = %name, "final delete: {e}");
        }
    }

    /// Writes the pod's status when it differs from what the API shows.
    async fn report(
        &self,
        pod: &Pod,
        record: Option<&PodRecord>,
        exited: &Exited,
        problem: Option<&Problem>,
    ) -> Result<()> {
        let status =
            plan::render_pod_status(pod, record, exited, self.cfg.node_ip, problem, &now());
        let Some(patch) = plan::diff_pod_status(pod.status.as_ref(), &status) else {
            return Ok(());
        };
        let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
            bail!("pod without namespace or name");
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => {
                debug!(pod = %name, "status merge patch failed ({e}); replacing");
                let mut p = pod.clone();
                p.status = Some(status);
                api.replace_status(name, &PostParams::default(), &p)
                    .await
                    .with_context(|| format!("writing status of {ns}/{name}"))?;
                Ok(())
            }
        }
    }
}
