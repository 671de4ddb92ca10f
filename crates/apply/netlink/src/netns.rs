//! Apply: network namespaces — open, enter (per thread), create and delete named ones.
//!
//! Named namespaces live where iproute2 keeps them (`/run/netns/NAME`, a bind mount of a
//! namespace file), so `ip netns exec NAME …` works on everything podnet makes.

use crate::{Error, Result};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

pub const NETNS_RUN_DIR: &str = "/run/netns";

fn io_err(op: impl Into<String>, e: impl Into<std::io::Error>) -> Error {
    Error::from_io(op, e.into())
}

/// Opens a namespace file (`/run/netns/x`, `/proc/PID/ns/net`).
pub fn open(path: impl AsRef<Path>) -> Result<OwnedFd> {
    let path = path.as_ref();
    File::open(path)
        .map(OwnedFd::from)
        .map_err(|e| io_err(format!("open network namespace {}", path.display()), e))
}

/// The calling thread's current namespace.
pub fn current() -> Result<OwnedFd> {
    open("/proc/thread-self/ns/net")
}

/// While alive, the calling thread is in another namespace; dropping it moves the thread
/// back. Not `Send`: it must be dropped on the thread that entered.
pub struct Entered {
    original: OwnedFd,
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Moves the calling thread into `ns` until the returned guard is dropped.
pub fn enter(ns: impl AsFd) -> Result<Entered> {
    let original = current()?;
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| io_err("enter network namespace", e))?;
    Ok(Entered {
        original,
        _not_send: std::marker::PhantomData,
    })
}

impl Drop for Entered {
    fn drop(&mut self) {
        // Returning to a namespace we were in cannot fail short of a kernel bug; a thread
        // left in the wrong namespace would silently misconfigure everything after, so stop.
        if let Err(e) = setns(&self.original, CloneFlags::CLONE_NEWNET) {
            panic!("cannot return to the original network namespace: {e}");
        }
    }
}

/// Runs `f` with the calling thread inside `ns`.
pub fn run_in<T>(ns: impl AsFd, f: impl FnOnce() -> T) -> Result<T> {
    let _guard = enter(ns)?;
    Ok(f())
}

/// The path of a named namespace.
pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Creates the named namespace `name` (like `ip netns add`); `Exists` if it is there.
pub fn create_named(name: &str) -> Result<PathBuf> {
    let op = || format!("create network namespace {name}");
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::Kernel {
            op: op(),
            source: std::io::Error::other("invalid name"),
        });
    }
    ensure_run_dir()?;
    let path = named_path(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io_err(op(), e))?;
    // unshare() moves the whole calling thread; do it on a throwaway thread so the caller
    // stays where it is. The bind mount keeps the namespace alive after the thread ends.
    let target = path.clone();
    let made = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| io_err("unshare", e))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| io_err("bind-mount namespace", e))
    })
    .join()
    .expect("namespace thread panicked");
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Deletes the named namespace; `NotFound` if it is not there. Interfaces inside it go
/// with it once no process holds it open.
pub fn delete_named(name: &str) -> Result<()> {
    let path = named_path(name);
    let op = || format!("delete network namespace {name}");
    if !path.exists() {
        return Err(Error::NotFound { op: op() });
    }
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(io_err(op(), e)),
    }
    std::fs::remove_file(&path).map_err(|e| io_err(op(), e))
}

/// `/run/netns` as iproute2 sets it up: a shared mount point, so namespaces mounted there
/// are seen by other mount namespaces.
fn ensure_run_dir() -> Result<()> {
    let dir = Path::new(NETNS_RUN_DIR);
    std::fs::create_dir_all(dir).map_err(|e| io_err("create /run/netns", e))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if mount(None::<&str>, dir, None::<&str>, shared, None::<&str>).is_ok() {
        return Ok(());
    }
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| io_err("bind /run/netns", e))?;
    mount(None::<&str>, dir, None::<&str>, shared, None::<&str>)
        .map_err(|e| io_err("share /run/netns", e))
}
