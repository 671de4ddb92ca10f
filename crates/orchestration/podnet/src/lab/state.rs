//! Orchestration: what a lab made, recorded on disk before it is made, so `lab down`
//! removes exactly that — also after `lab up` crashed or was killed half-way.
//!
//! Layout: `/run/podnet/labs/<name>/` holds `lab.json` (this record), one directory per
//! node (CNI config, IPAM data, CNI cache, pod runtime state) and the processes' logs.
//! `/run` is a tmpfs: a reboot removes labs and their namespaces together.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const LABS_DIR: &str = "/run/podnet/labs";

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct LabRecord {
    pub name: String,
    pub mode: String,
    pub nodes: usize,
    /// Network namespaces this lab created (pods' namespaces are found by prefix).
    pub namespaces: Vec<String>,
    /// Processes this lab started.
    pub processes: Vec<ProcessRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessRecord {
    pub role: String,
    pub member: String,
    pub pid: u32,
}

pub fn lab_dir(name: &str) -> PathBuf {
    Path::new(LABS_DIR).join(name)
}

impl LabRecord {
    pub fn path(name: &str) -> PathBuf {
        lab_dir(name).join("lab.json")
    }

    pub fn load(name: &str) -> Result<Option<LabRecord>> {
        let path = Self::path(name);
        match std::fs::read(&path) {
            Ok(b) => {
                Ok(Some(serde_json::from_slice(&b).with_context(|| {
                    format!("{} is corrupt", path.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// Writes the record atomically.
    pub fn save(&self) -> Result<()> {
        let path = Self::path(&self.name);
        std::fs::create_dir_all(path.parent().expect("lab dir"))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))
    }

    /// Records a namespace before it is created.
    pub fn will_create_namespace(&mut self, ns: &str) -> Result<()> {
        self.namespaces.push(ns.to_string());
        self.save()
    }

    pub fn started(&mut self, role: &str, member: &str, pid: u32) -> Result<()> {
        self.processes.push(ProcessRecord {
            role: role.into(),
            member: member.into(),
            pid,
        });
        self.save()
    }
}

/// Names of the labs that have a record.
pub fn list_labs() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(LABS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("lab.json").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}
