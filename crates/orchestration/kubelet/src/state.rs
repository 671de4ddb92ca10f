//! Apply (files): the per-pod records, `<state_dir>/pods/<uid>/state.json`, written by
//! write-to-temp + rename so a killed kubelet leaves the old or the new record, never half
//! of one. The pod's directory also holds its container logs.

use crate::plan::PodRecord;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

const STATE_FILE: &str = "state.json";

/// Records that could not be read: (UID, why).
pub type Unreadable = Vec<(String, anyhow::Error)>;

/// The records under one state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    pods: PathBuf,
}

impl StateDir {
    pub fn new(state_dir: &Path) -> StateDir {
        StateDir {
            pods: state_dir.join("pods"),
        }
    }

    /// The directory of one pod (records and logs). UIDs become path components, so
    /// anything but `[A-Za-z0-9._-]` is refused.
    pub fn pod_dir(&self, uid: &str) -> Result<PathBuf> {
        if uid.is_empty()
            || uid == "."
            || uid == ".."
            || !uid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            bail!("pod UID {uid:?} cannot name a state directory");
        }
        Ok(self.pods.join(uid))
    }

    /// The log file of one container.
    pub fn log_path(&self, uid: &str, container: &str) -> Result<PathBuf> {
        Ok(self.pod_dir(uid)?.join(format!("{container}.log")))
    }

    /// Saves a record atomically.
    pub fn save(&self, rec: &PodRecord) -> Result<()> {
        let dir = self.pod_dir(&rec.uid)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(rec)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join(STATE_FILE))
            .with_context(|| format!("renaming {} into place", tmp.display()))
    }

    /// Every readable record. A directory with no or an unreadable record is reported in
    /// the second list (by UID) so the caller can remove it.
    pub fn load_all(&self) -> Result<(Vec<PodRecord>, Unreadable)> {
        let mut records = Vec::new();
        let mut broken = Vec::new();
        let entries = match std::fs::read_dir(&self.pods) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((records, broken)),
            Err(e) => return Err(e).with_context(|| format!("listing {}", self.pods.display())),
        };
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let uid = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path().join(STATE_FILE);
            match std::fs::read(&path)
                .with_context(|| format!("reading {}", path.display()))
                .and_then(|b| {
                    serde_json::from_slice::<PodRecord>(&b)
                        .with_context(|| format!("parsing {}", path.display()))
                }) {
                Ok(r) if r.uid == uid => records.push(r),
                Ok(r) => broken.push((uid, anyhow::anyhow!("record names UID {}", r.uid))),
                Err(e) => broken.push((uid, e)),
            }
        }
        records.sort_by(|a, b| a.uid.cmp(&b.uid));
        Ok((records, broken))
    }

    /// Removes a pod's directory (record and logs); gone already is fine.
    pub fn remove(&self, uid: &str) -> Result<()> {
        let dir = self.pod_dir(uid)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ContainerRecord, ProcState};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn rec(uid: &str) -> PodRecord {
        let now = Time("2025-01-01T00:00:00Z".parse().unwrap());
        PodRecord {
            uid: uid.into(),
            namespace: "default".into(),
            name: "web".into(),
            container_id: uid.replace('-', ""),
            netns: Some("x-0000".into()),
            complete: true,
            conflist: Some("{\"name\":\"n\"}".into()),
            cni_result: Some(serde_json::json!({"cniVersion": "1.0.0", "ips": []})),
            pod_ips: vec!["10.244.1.5".parse().unwrap()],
            started_at: now.clone(),
            containers: vec![ContainerRecord {
                name: "c".into(),
                image: "podnet/echo".into(),
                restart_count: 2,
                state: ProcState::Running {
                    pid: 7,
                    start_ticks: 12345,
                    started_at: now,
                },
                last: None,
            }],
        }
    }

    #[test]
    fn round_trip_and_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        assert!(dir.load_all().unwrap().0.is_empty());
        let (a, b) = (rec("aaa-1"), rec("bbb-2"));
        dir.save(&b).unwrap();
        dir.save(&a).unwrap();
        let mut a2 = a.clone();
        a2.containers[0].restart_count = 3;
        dir.save(&a2).unwrap();
        let (all, broken) = dir.load_all().unwrap();
        assert!(broken.is_empty());
        assert_eq!(all, vec![a2, b.clone()]);
        assert!(tmp.path().join("pods/aaa-1/state.json").is_file());
        assert!(!tmp.path().join("pods/aaa-1/state.json.tmp").exists());
        dir.remove("aaa-1").unwrap();
        dir.remove("aaa-1").unwrap();
        assert_eq!(dir.load_all().unwrap().0, vec![b]);
    }

    #[test]
    fn broken_records_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        std::fs::create_dir_all(tmp.path().join("pods/half")).unwrap();
        std::fs::write(tmp.path().join("pods/junk/state.json"), "x").unwrap_err();
        std::fs::create_dir_all(tmp.path().join("pods/junk")).unwrap();
        std::fs::write(tmp.path().join("pods/junk/state.json"), "{").unwrap();
        let (all, broken) = dir.load_all().unwrap();
        assert!(all.is_empty());
        let mut uids: Vec<_> = broken.into_iter().map(|(u, _)| u).collect();
        uids.sort();
        assert_eq!(uids, vec!["half", "junk"]);
    }

    #[test]
    fn uids_must_be_path_safe() {
        let dir = StateDir::new(Path::new("/nonexistent"));
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(dir.pod_dir(bad).is_err(), "{bad:?}");
        }
        assert!(dir.pod_dir("1b4e28ba-2fa1-11d2-883f-0016d3cca427").is_ok());
    }
}
