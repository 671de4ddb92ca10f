//! Orchestration: a container-runtime-side CNI executor — what libcni does for kubelet,
//! containerd and podman: run a conflist's plugins in order with `prevResult` threaded
//! through, runtime config filtered by declared capabilities, results cached for DEL and
//! CHECK, DEL in reverse order. Debian ships no `cnitool`; `podnet cni …` is one, and the
//! lab's pod runtime uses this module.
//!
//! Plugins run inside `exec_netns` (the node's namespace) when one is given: a child
//! process inherits the namespace of the thread that spawns it, so a short-lived thread
//! enters the namespace and spawns there — no `ip netns exec`, no `unsafe` pre-exec hook.

use anyhow::{Context, Result, bail};
use podnet_cni_spec::CniVersion;
use podnet_netlink::netns;
use serde_json::{Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A parsed network configuration list.
#[derive(Debug, Clone)]
pub struct ConfList {
    pub name: String,
    pub version: CniVersion,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub plugins: Vec<Map<String, Value>>,
}

impl ConfList {
    pub fn parse(bytes: &[u8]) -> Result<ConfList> {
        let v: Value = serde_json::from_slice(bytes).context("conflist is not JSON")?;
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .context("conflist has no name")?
            .to_string();
        let version = match v.get("cniVersions").and_then(Value::as_array) {
            Some(list) => CniVersion::highest_supported(list.iter().filter_map(Value::as_str))
                .context("no supported version in cniVersions")?,
            None => CniVersion::parse(v.get("cniVersion").and_then(Value::as_str).unwrap_or(""))
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        };
        let plugins = v
            .get("plugins")
            .and_then(Value::as_array)
            .context("conflist has no plugins")?
            .iter()
            .map(|p| {
                p.as_object()
                    .cloned()
                    .context("plugin entry is not an object")
            })
            .collect::<Result<Vec<_>>>()?;
        if plugins.is_empty() {
            bail!("conflist {name} has an empty plugin list");
        }
        Ok(ConfList {
            name,
            version,
            disable_check: v
                .get("disableCheck")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            disable_gc: v.get("disableGC").and_then(Value::as_bool).unwrap_or(false),
            plugins,
        })
    }

    pub fn load(path: &Path) -> Result<ConfList> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        ConfList::parse(&bytes).with_context(|| format!("in {}", path.display()))
    }
}

/// One attachment as the runtime sees it.
#[derive(Debug, Clone, Default)]
pub struct Attachment {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `bandwidth`, `ips`, `mac`, …), handed to the
    /// plugins that declare the capability, as `runtimeConfig`.
    pub capability_args: Map<String, Value>,
}

/// The executor.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub plugin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
    pub exec_netns: Option<PathBuf>,
}

impl Runtime {
    /// ADD through the whole list; caches and returns the final result.
    pub fn add(&self, list: &ConfList, att: &Attachment) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let conf = self.plugin_conf(list, plugin, att, prev.as_ref());
            let out = self.exec(plugin, "ADD", &conf, att)?;
            prev = Some(out.context("ADD returned no result")?);
        }
        let result = prev.expect("non-empty list");
        let path = self.cache_path(list, att);
        std::fs::create_dir_all(path.parent().expect("cache path has a parent"))?;
        std::fs::write(&path, serde_json::to_vec(&result)?)
            .with_context(|| format!("caching result in {}", path.display()))?;
        Ok(result)
    }

    /// DEL through the list in reverse order, with the cached result; drops the cache.
    /// Unlike libcni, a failing plugin does not stop the others (a broken last plugin
    /// must not leak the first one's address); every error is reported, and the cache is
    /// kept for a retry when any failed. A plugin whose binary is not installed is
    /// skipped: it cannot hold anything to release, and failing on it forever would keep
    /// the rest from being retried to completion.
    pub fn del(&self, list: &ConfList, att: &Attachment) -> Result<()> {
        let path = self.cache_path(list, att);
        let cached: Option<Value> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let mut errors = Vec::new();
        for plugin in list.plugins.iter().rev() {
            let kind = plugin.get("type").and_then(Value::as_str).unwrap_or("");
            if self.find_plugin(kind).is_err() {
                continue;
            }
            let conf = self.plugin_conf(list, plugin, att, cached.as_ref());
            if let Err(e) = self.exec(plugin, "DEL", &conf, att) {
                errors.push(format!("{e:#}"));
            }
        }
        if !errors.is_empty() {
            bail!("DEL: {}", errors.join("; "));
        }
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    /// CHECK through the list with the cached result.
    pub fn check(&self, list: &ConfList, att: &Attachment) -> Result<()> {
        if list.disable_check {
            return Ok(());
        }
        let path = self.cache_path(list, att);
        let cached: Value = serde_json::from_slice(
            &std::fs::read(&path)
                .with_context(|| format!("no cached result for {}", att.container_id))?,
        )?;
        for plugin in &list.plugins {
            let conf = self.plugin_conf(list, plugin, att, Some(&cached));
            self.exec(plugin, "CHECK", &conf, att)?;
        }
        Ok(())
    }

    /// GC: every plugin learns which attachments are still valid.
    pub fn gc(&self, list: &ConfList, valid: &[(String, String)]) -> Result<()> {
        if list.disable_gc || list.version < CniVersion::V1_1_0 {
            return Ok(());
        }
        let valid: Vec<Value> = valid
            .iter()
            .map(|(c, i)| serde_json::json!({"containerID": c, "ifname": i}))
            .collect();
        let att = Attachment::default();
        for plugin in &list.plugins {
            let mut conf = self.plugin_conf(list, plugin, &att, None);
            conf.insert(
                "cni.dev/valid-attachments".into(),
                Value::Array(valid.clone()),
            );
            self.exec(plugin, "GC", &conf, &att)?;
        }
        Ok(())
    }

    /// STATUS of every plugin.
    pub fn status(&self, list: &ConfList) -> Result<()> {
        if list.version < CniVersion::V1_1_0 {
            return Ok(());
        }
        let att = Attachment::default();
        for plugin in &list.plugins {
            let conf = self.plugin_conf(list, plugin, &att, None);
            self.exec(plugin, "STATUS", &conf, &att)?;
        }
        Ok(())
    }

    fn cache_path(&self, list: &ConfList, att: &Attachment) -> PathBuf {
        self.cache_dir
            .join("results")
            .join(format!("{}-{}-{}", list.name, att.container_id, att.ifname))
    }

    /// The configuration one plugin receives (spec section 3: list name and version
    /// injected, `capabilities` replaced by the matching `runtimeConfig`).
    fn plugin_conf(
        &self,
        list: &ConfList,
        plugin: &Map<String, Value>,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Map<String, Value> {
        let mut conf = plugin.clone();
        conf.insert("name".into(), list.name.clone().into());
        conf.insert("cniVersion".into(), list.version.as_str().into());
        let caps = conf.remove("capabilities");
        let mut runtime_config = Map::new();
        if let Some(Value::Object(caps)) = caps {
            for (cap, on) in caps {
                if on == Value::Bool(true)
                    && let Some(v) = att.capability_args.get(&cap)
                {
                    runtime_config.insert(cap, v.clone());
                }
            }
        }
        if !runtime_config.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        conf
    }

    fn find_plugin(&self, kind: &str) -> Result<PathBuf> {
        self.plugin_dirs
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
            .with_context(|| format!("plugin {kind:?} not found in {:?}", self.plugin_dirs))
    }

    /// Executes one plugin; `Ok(Some(result))` when it printed one.
    fn exec(
        &self,
        plugin: &Map<String, Value>,
        verb: &str,
        conf: &Map<String, Value>,
        att: &Attachment,
    ) -> Result<Option<Value>> {
        let kind = plugin
            .get("type")
            .and_then(Value::as_str)
            .context("plugin entry has no type")?;
        let bin = self.find_plugin(kind)?;
        let stdin = serde_json::to_vec(conf)?;
        let args = att
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        let path = std::env::join_paths(&self.plugin_dirs)?;
        let mut cmd = Command::new(&bin);
        cmd.env("CNI_COMMAND", verb)
            .env("CNI_PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !att.container_id.is_empty() {
            cmd.env("CNI_CONTAINERID", &att.container_id)
                .env("CNI_IFNAME", &att.ifname)
                .env("CNI_ARGS", args);
            if !att.netns.is_empty() {
                cmd.env("CNI_NETNS", &att.netns);
            }
        }
        let output = spawn_in(self.exec_netns.as_deref(), cmd, &stdin)
            .with_context(|| format!("running {} {verb}", bin.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "{kind} {verb} failed ({}): {} {}",
                output.status,
                stdout.trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        if stdout.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&stdout).with_context(|| {
            format!("{kind} {verb} printed non-JSON: {stdout}")
        })?))
    }
}

/// Runs `cmd` to completion, feeding it `stdin`, inside `ns` when given.
pub fn spawn_in(ns: Option<&Path>, mut cmd: Command, stdin: &[u8]) -> Result<std::process::Output> {
    let child = match ns {
        None => cmd.spawn()?,
        Some(ns) => {
            let fd = netns::open(ns)?;
            std::thread::scope(|s| {
                s.spawn(|| -> Result<std::process::Child> {
                    let _inside = netns::enter(&fd)?;
                    Ok(cmd.spawn()?)
                })
                .join()
                .expect("spawn thread panicked")
            })?
        }
    };
    let mut child = child;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin)?;
    }
    Ok(child.wait_with_output()?)
}
