//! Apply: pod sandboxes (a named network namespace + its CNI attachment) and container
//! processes. Every create undoes what it made when a later step fails, and teardown
//! collects every error instead of stopping at the first, so nothing is left half-made.
//!
//! Container processes are spawned from a short-lived thread that entered the pod's
//! namespace (a child inherits its spawning thread's namespace; no `unsafe` pre-exec hook),
//! each in its own process group, so they outlive the kubelet process — what containerd's
//! shims give kubelet. Processes are named by (pid, start time in ticks since boot): a pid
//! reused by an unrelated process never matches, so a restarted kubelet never signals a
//! stranger. The thread that spawned a container stays to reap it and records its exit
//! status; processes adopted from an earlier kubelet run are not our children, so their
//! status is unknown.

use crate::cni::{Attachment, ConfList, Runtime};
use crate::plan::ProcessSpec;
use anyhow::{Context, Result, anyhow};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use podnet_netlink::netns;
use std::collections::HashMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Pure: (start ticks, state letter) from the text of `/proc/PID/stat`. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat(text: &str) -> Option<(u64, char)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: field 3 is the state, field 22 the start time.
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state))
}

/// The start time of `pid` and whether it is a zombie, from `/proc`.
pub fn read_proc(pid: u32) -> Option<(u64, char)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether our process (pid + start ticks) still runs; a zombie does not.
pub fn is_alive(pid: u32, start_ticks: u64) -> bool {
    matches!(read_proc(pid), Some((t, s)) if t == start_ticks && s != 'Z' && s != 'X')
}

/// Exit statuses of the children this process spawned and reaped, by pid.
#[derive(Debug, Clone, Default)]
pub struct ExitLog(Arc<Mutex<HashMap<u32, i32>>>);

impl ExitLog {
    /// Takes the exit code of a reaped child (shell convention: 128 + signal).
    pub fn take(&self, pid: u32) -> Option<i32> {
        self.0.lock().expect("exit log poisoned").remove(&pid)
    }

    /// The exit code of a reaped child, left in the log.
    pub fn peek(&self, pid: u32) -> Option<i32> {
        self.0.lock().expect("exit log poisoned").get(&pid).copied()
    }

    fn put(&self, pid: u32, code: i32) {
        self.0.lock().expect("exit log poisoned").insert(pid, code);
    }
}

/// A started container process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    pub pid: u32,
    pub start_ticks: u64,
}

/// Starts one container process inside `ns` (the node's own namespace when `None`), in its
/// own process group, output appended to `log`.
pub fn start_process(
    ns: Option<&Path>,
    spec: &ProcessSpec,
    log: &Path,
    exits: &ExitLog,
) -> Result<Started> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let fd = ns.map(netns::open).transpose()?;
    let (tx, rx) = std::sync::mpsc::channel::<Result<Started>>();
    let exits = exits.clone();
    let program = spec.program.clone();
    let resolv_conf = spec.resolv_conf.clone();
    let service_account = spec.service_account.clone();
    std::thread::Builder::new()
        .name("container-reaper".into())
        .spawn(move || {
            let spawned = (|| -> Result<std::process::Child> {
                let _inside = fd.as_ref().map(netns::enter).transpose()?;
                if resolv_conf.is_some() || service_account.is_some() {
                    private_mounts(resolv_conf.as_deref(), service_account.as_deref())?;
                }
                cmd.spawn()
                    .with_context(|| format!("starting {}", program.display()))
            })();
            let mut child = match spawned {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let pid = child.id();
            // Read before reaping: until `wait` the process (even a zombie) is in /proc.
            let start_ticks = read_proc(pid).map_or(0, |(t, _)| t);
            let _ = tx.send(Ok(Started { pid, start_ticks }));
            if let Ok(status) = child.wait() {
                let code = status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(255);
                exits.put(pid, code);
            }
        })
        .context("spawning the container thread")?;
    rx.recv()
        .map_err(|_| anyhow!("container thread ended without a word"))?
}

/// Gives the calling thread its own mount namespace (which its children inherit) in which
/// `resolv_conf` (if any) is bind-mounted over `/etc/resolv.conf` — what `ip netns exec`
/// does with `/etc/netns/NAME/resolv.conf` — and `service_account` (if any), a directory,
/// read-only at [`crate::plan::SERVICE_ACCOUNT_DIR`]. Mounts below `/` become slaves
/// first, so nothing done here propagates back to the node. The service account's mount
/// point is made on the node when missing: an empty directory under `/run` (a tmpfs), which
/// stays empty there — a container's filesystem is the node's, with no image to hold it.
/// The thread must not be reused afterwards: the container thread only spawns and reaps.
pub fn private_mounts(resolv_conf: Option<&Path>, service_account: Option<&Path>) -> Result<()> {
    use nix::mount::{MsFlags, mount};
    let sa_target = Path::new(crate::plan::SERVICE_ACCOUNT_DIR);
    if service_account.is_some() {
        std::fs::create_dir_all(sa_target)
            .with_context(|| format!("creating the mount point {}", sa_target.display()))?;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("unshare a mount namespace for the container")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context("make / a slave mount")?;
    if let Some(file) = resolv_conf {
        mount(
            Some(file),
            "/etc/resolv.conf",
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind-mount {} over /etc/resolv.conf", file.display()))?;
    }
    if let Some(dir) = service_account {
        let what = || format!("bind-mount {} at {}", dir.display(), sa_target.display());
        mount(
            Some(dir),
            sa_target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(what)?;
        // A bind mount takes its read-only flag only from a remount.
        mount(
            None::<&str>,
            sa_target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .with_context(what)?;
    }
    Ok(())
}

/// Sends `sig` to each live process's group (the group holds the process's own
/// children); a process that left its group (setsid) is signalled alone. Processes that are
/// gone, or whose pid now names someone else, are skipped.
pub fn signal_processes(procs: &[Started], sig: Signal) {
    for p in procs.iter().filter(|p| is_alive(p.pid, p.start_ticks)) {
        let pid = Pid::from_raw(p.pid as i32);
        if kill(Pid::from_raw(-(p.pid as i32)), sig).is_err() {
            let _ = kill(pid, sig);
        }
    }
}

/// Stops processes: SIGTERM to each one's process group, SIGKILL to what is left after
/// `grace`. Processes that are already gone (or whose pid now names someone else) are
/// skipped. Returns once all are gone, or an error naming the survivors.
pub fn stop_processes(procs: &[Started], grace: Duration) -> Result<()> {
    let signal_all = |sig: Signal| signal_processes(procs, sig);
    let wait_gone = |limit: Duration| {
        let until = Instant::now() + limit;
        loop {
            if procs.iter().all(|p| !is_alive(p.pid, p.start_ticks)) {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    signal_all(Signal::SIGTERM);
    if wait_gone(grace) {
        return Ok(());
    }
    signal_all(Signal::SIGKILL);
    if wait_gone(Duration::from_secs(5)) {
        return Ok(());
    }
    let left: Vec<u32> = procs
        .iter()
        .filter(|p| is_alive(p.pid, p.start_ticks))
        .map(|p| p.pid)
        .collect();
    Err(anyhow!("processes {left:?} survived SIGKILL"))
}

/// A sandbox to make or remove.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub netns_name: String,
    pub attachment: Attachment,
}

impl SandboxSpec {
    pub fn netns_path(&self) -> PathBuf {
        netns::named_path(&self.netns_name)
    }
}

/// Creates the pod's namespace and attaches it (CNI ADD); returns the ADD result. On
/// failure everything made is undone (DEL, namespace deleted) and the error returned.
pub fn apply_sandbox(
    rt: &Runtime,
    list: &ConfList,
    spec: &SandboxSpec,
) -> Result<serde_json::Value> {
    // A namespace by this name is a leftover of a killed run: start from scratch.
    match netns::create_named(&spec.netns_name) {
        Ok(_) => {}
        Err(e) if e.is_exists() => {
            netns::delete_named(&spec.netns_name)
                .with_context(|| format!("removing stale namespace {}", spec.netns_name))?;
            netns::create_named(&spec.netns_name)
                .with_context(|| format!("creating namespace {}", spec.netns_name))?;
        }
        Err(e) => {
            return Err(e).with_context(|| format!("creating namespace {}", spec.netns_name));
        }
    }
    match rt.add(list, &spec.attachment) {
        Ok(result) => Ok(result),
        Err(add) => {
            let undo = teardown_sandbox(rt, Some(list), spec);
            match undo {
                Ok(()) => Err(add.context("CNI ADD")),
                Err(u) => Err(add.context(format!("CNI ADD (and the undo failed: {u:#})"))),
            }
        }
    }
}

/// Detaches (CNI DEL, when the conflist is known) and deletes the namespace. Both steps
/// run; their errors are reported together. Gone already is fine.
pub fn teardown_sandbox(rt: &Runtime, list: Option<&ConfList>, spec: &SandboxSpec) -> Result<()> {
    let mut errors = Vec::new();
    if let Some(list) = list
        && let Err(e) = rt.del(list, &spec.attachment)
    {
        errors.push(format!("CNI DEL: {e:#}"));
    }
    match netns::delete_named(&spec.netns_name) {
        Ok(()) | Err(podnet_netlink::Error::NotFound { .. }) => {}
        Err(e) => errors.push(format!("deleting namespace {}: {e}", spec.netns_name)),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing() {
        let text = "1234 (a b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(parse_stat(text), Some((987654, 'S')));
        assert_eq!(parse_stat("1 (x) Z 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id();
        let (ticks, state) = read_proc(me).unwrap();
        assert_ne!(state, 'Z');
        assert!(is_alive(me, ticks));
        assert!(!is_alive(me, ticks + 1));
    }

    #[test]
    fn a_container_sees_its_own_resolv_conf_and_the_node_keeps_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let node_before = std::fs::read("/etc/resolv.conf").unwrap();
        let file = tmp.path().join("resolv.conf");
        std::fs::write(&file, "nameserver 10.96.0.10\noptions ndots:5\n").unwrap();
        let spec = ProcessSpec {
            program: "/bin/cat".into(),
            args: vec!["/etc/resolv.conf".into()],
            env: vec![],
            cwd: "/".into(),
            resolv_conf: Some(file),
            service_account: None,
        };
        let exits = ExitLog::default();
        let log = tmp.path().join("c.log");
        let p = start_process(None, &spec, &log, &exits).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while exits.peek(p.pid).is_none() {
            assert!(Instant::now() < until, "cat did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(exits.take(p.pid), Some(0));
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "nameserver 10.96.0.10\noptions ndots:5\n"
        );
        // The bind mount lived in the container's mount namespace only.
        assert_eq!(std::fs::read("/etc/resolv.conf").unwrap(), node_before);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts
                .lines()
                .any(|l| l.contains(" /etc/resolv.conf ")
                    && l.contains(tmp.path().to_str().unwrap())),
            "{mounts}"
        );
    }

    #[test]
    fn a_container_sees_its_service_account_read_only_and_the_node_does_not() {
        let tmp = tempfile::tempdir().unwrap();
        let sa = tmp.path().join("serviceaccount");
        std::fs::create_dir(&sa).unwrap();
        std::fs::write(sa.join("token"), "tok").unwrap();
        std::fs::write(sa.join("namespace"), "default").unwrap();
        let dir = crate::plan::SERVICE_ACCOUNT_DIR;
        let spec = ProcessSpec {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                format!(
                    "cat {dir}/token {dir}/namespace; touch {dir}/x 2>/dev/null && echo rw || echo ro"
                ),
            ],
            env: vec![("PATH".into(), crate::plan::CONTAINER_PATH.into())],
            cwd: "/".into(),
            resolv_conf: None,
            service_account: Some(sa.clone()),
        };
        let exits = ExitLog::default();
        let log = tmp.path().join("c.log");
        let p = start_process(None, &spec, &log, &exits).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while exits.peek(p.pid).is_none() {
            assert!(Instant::now() < until, "sh did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(exits.take(p.pid), Some(0));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "tokdefaultro\n");
        assert!(!sa.join("x").exists());
        // The node sees only the (empty) mount point.
        assert!(!Path::new(dir).join("token").exists());
    }

    #[test]
    fn process_lifecycle_and_exit_codes() {
        let tmp = tempfile::tempdir().unwrap();
        let exits = ExitLog::default();
        let spec = |args: &[&str]| ProcessSpec {
            program: "/bin/sh".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![("GREETING".into(), "hello".into())],
            cwd: "/".into(),
            resolv_conf: None,
            service_account: None,
        };
        let log = tmp.path().join("c.log");
        // Exits on its own with a code; output lands in the log.
        let quick =
            start_process(None, &spec(&["-c", "echo $GREETING; exit 3"]), &log, &exits).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        let code = loop {
            if let Some(c) = exits.take(quick.pid) {
                break c;
            }
            assert!(Instant::now() < until, "no exit status");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(code, 3);
        assert!(!is_alive(quick.pid, quick.start_ticks));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "hello\n");

        // Runs in its own process group; stopping it takes its children too.
        let long = start_process(None, &spec(&["-c", "sleep 300 & wait"]), &log, &exits).unwrap();
        assert!(is_alive(long.pid, long.start_ticks));
        let pgid = nix::unistd::getpgid(Some(Pid::from_raw(long.pid as i32))).unwrap();
        assert_eq!(pgid.as_raw(), long.pid as i32);
        stop_processes(&[long], Duration::from_secs(2)).unwrap();
        assert!(!is_alive(long.pid, long.start_ticks));
        // Stopping again is a no-op.
        stop_processes(&[long], Duration::from_millis(10)).unwrap();
    }

    #[test]
    fn a_term_ignoring_process_is_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let exits = ExitLog::default();
        let spec = ProcessSpec {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "trap '' TERM; while :; do sleep 0.05; done".into(),
            ],
            env: vec![],
            cwd: "/".into(),
            resolv_conf: None,
            service_account: None,
        };
        let p = start_process(None, &spec, &tmp.path().join("l"), &exits).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        stop_processes(&[p], Duration::from_millis(300)).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert!(!is_alive(p.pid, p.start_ticks));
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = ProcessSpec {
            program: "/nonexistent/prog".into(),
            args: vec![],
            env: vec![],
            cwd: "/".into(),
            resolv_conf: None,
            service_account: None,
        };
        let err =
            start_process(None, &spec, &tmp.path().join("l"), &ExitLog::default()).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/prog"), "{err:#}");
    }
}
