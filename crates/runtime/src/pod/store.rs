//! The pods berthd knows: a map by id with unique-prefix lookup, the metadata names that must
//! stay unique, and their persistent records (`<root>/pods/<id>/pod.json`, written atomically).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::pod::types::{PodRecord, RECORD_VERSION};

/// One pod. A lifecycle step (which may be slow: CNI, mounts) holds `step` throughout, so that
/// steps of one pod never interleave while other pods go on; readers (the kubelet's frequent
/// ListPodSandbox and PodSandboxStatus) see the last saved record without waiting for a step.
pub struct PodEntry {
    pub id: String,
    pub step: tokio::sync::Mutex<()>,
    saved: Mutex<PodRecord>,
}

impl PodEntry {
    fn new(record: PodRecord) -> PodEntry {
        PodEntry {
            id: record.id.clone(),
            step: tokio::sync::Mutex::new(()),
            saved: Mutex::new(record),
        }
    }

    /// The record as last saved.
    pub fn record(&self) -> PodRecord {
        lock(&self.saved).clone()
    }
}

pub struct PodStore {
    dir: PathBuf,
    pods: Mutex<BTreeMap<String, Arc<PodEntry>>>,
    /// Metadata key → pod id.
    names: Mutex<BTreeMap<String, String>>,
}

impl PodStore {
    /// Loads every record under `dir`. A record that cannot be read is logged and left on disk
    /// for an operator, rather than stopping berthd or being deleted.
    pub fn open(dir: &Path) -> Result<PodStore> {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        let store = PodStore {
            dir: dir.to_path_buf(),
            pods: Mutex::new(BTreeMap::new()),
            names: Mutex::new(BTreeMap::new()),
        };
        for entry in std::fs::read_dir(dir).map_err(Error::io("reading", dir))?.flatten() {
            let path = entry.path().join("pod.json");
            let record = match std::fs::read(&path) {
                Ok(bytes) => serde_json::from_slice::<PodRecord>(&bytes)
                    .map_err(|err| err.to_string())
                    .and_then(|r| match r.version {
                        RECORD_VERSION => Ok(r),
                        v => Err(format!("record version {v} is not supported")),
                    }),
                // A pod whose setup never wrote its record: nothing of it is to be kept.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => Err(err.to_string()),
            };
            match record {
                Ok(record) => {
                    lock(&store.names).insert(record.config.metadata.key(), record.id.clone());
                    let entry = PodEntry::new(record);
                    lock(&store.pods).insert(entry.id.clone(), Arc::new(entry));
                }
                Err(reason) => {
                    tracing::error!(path = %path.display(), reason, "skipping an unreadable pod record")
                }
            }
        }
        Ok(store)
    }

    pub fn pod_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Claims a pod name; a second pod of the same metadata is refused with the first's id,
    /// as containerd and CRI-O do.
    pub fn reserve_name(&self, key: &str, id: &str) -> Result<()> {
        let mut names = lock(&self.names);
        if let Some(existing) = names.get(key) {
            return Err(Error::AlreadyExists(format!(
                "pod sandbox {key} already exists as {existing}"
            )));
        }
        names.insert(key.to_string(), id.to_string());
        Ok(())
    }

    pub fn release_name(&self, key: &str, id: &str) {
        let mut names = lock(&self.names);
        if names.get(key).is_some_and(|holder| holder == id) {
            names.remove(key);
        }
    }

    pub fn insert(&self, record: PodRecord) -> Arc<PodEntry> {
        let entry = Arc::new(PodEntry::new(record));
        lock(&self.pods).insert(entry.id.clone(), entry.clone());
        entry
    }

    pub fn forget(&self, id: &str) {
        lock(&self.pods).remove(id);
    }

    /// The pod a full id or a unique prefix of one names.
    pub fn get(&self, id: &str) -> Result<Arc<PodEntry>> {
        self.find(id)?.ok_or_else(|| Error::NotFound(format!("pod sandbox {id:?} not found")))
    }

    /// Like `get`, but an unknown pod is `None` (RemovePodSandbox of a removed pod is fine).
    pub fn find(&self, id: &str) -> Result<Option<Arc<PodEntry>>> {
        if id.is_empty() {
            return Err(Error::InvalidArgument("pod sandbox id is empty".into()));
        }
        let pods = lock(&self.pods);
        if let Some(entry) = pods.get(id) {
            return Ok(Some(entry.clone()));
        }
        let mut matches = pods.range(id.to_string()..).take_while(|(key, _)| key.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some((_, entry)), None) => Ok(Some(entry.clone())),
            (None, _) => Ok(None),
            (Some(_), Some(_)) => {
                Err(Error::InvalidArgument(format!("pod sandbox id prefix {id:?} is ambiguous")))
            }
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        lock(&self.pods).contains_key(id)
    }

    pub fn all(&self) -> Vec<Arc<PodEntry>> {
        lock(&self.pods).values().cloned().collect()
    }

    /// Writes the record atomically (a crash leaves the old record or the new one), then
    /// shows it to readers.
    pub fn save(&self, record: &PodRecord) -> Result<()> {
        let dir = self.pod_dir(&record.id);
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|err| Error::Internal(format!("encoding pod record: {err}")))?;
        berth_images::fsutil::atomic_write(&dir.join("pod.json"), &bytes)
            .map_err(|err| Error::Internal(err.to_string()))?;
        if let Some(entry) = lock(&self.pods).get(&record.id) {
            *lock(&entry.saved) = record.clone();
        }
        Ok(())
    }

    /// Deletes the pod's directory and everything in it.
    pub fn delete(&self, id: &str) -> Result<()> {
        let dir = self.pod_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("removing", dir)(err))
            }
            _ => Ok(()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A new pod or container id: 64 hex characters from the kernel's random source.
pub fn new_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    let mut file =
        std::fs::File::open("/dev/urandom").map_err(Error::io("opening", "/dev/urandom"))?;
    std::io::Read::read_exact(&mut file, &mut bytes)
        .map_err(Error::io("reading", "/dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::types::{PodConfig, PodMetadata, PodState};

    fn record(id: &str, name: &str) -> PodRecord {
        PodRecord {
            version: RECORD_VERSION,
            id: id.into(),
            config: PodConfig {
                metadata: PodMetadata {
                    name: name.into(),
                    uid: "u".into(),
                    namespace: "ns".into(),
                    attempt: 0,
                },
                ..Default::default()
            },
            created_at_nanos: 1,
            state: PodState::Ready,
            network: None,
            network_pending: false,
            cgroup: "/berth/x".into(),
            cgroup_created: vec![],
        }
    }

    #[test]
    fn prefixes_names_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let store = PodStore::open(dir.path()).unwrap();
        for (id, name) in [("abc1", "a"), ("abc2", "b"), ("def", "c")] {
            let r = record(id, name);
            store.reserve_name(&r.config.metadata.key(), id).unwrap();
            store.save(&r).unwrap();
            store.insert(r);
        }
        assert_eq!(store.get("d").unwrap().id, "def");
        assert_eq!(store.get("abc2").unwrap().id, "abc2");
        assert!(
            matches!(store.get("abc"), Err(Error::InvalidArgument(m)) if m.contains("ambiguous"))
        );
        assert!(matches!(store.get("zzz"), Err(Error::NotFound(_))));
        assert!(store.find("zzz").unwrap().is_none());
        let err = store.reserve_name(&record("x", "a").config.metadata.key(), "x").unwrap_err();
        assert!(err.to_string().contains("abc1"), "{err}");

        // A restart finds the same pods and names.
        let again = PodStore::open(dir.path()).unwrap();
        assert_eq!(again.all().len(), 3);
        assert!(again.reserve_name(&record("x", "c").config.metadata.key(), "x").is_err());
        again.delete("def").unwrap();
        again.delete("def").unwrap();
        assert_eq!(PodStore::open(dir.path()).unwrap().all().len(), 2);
    }

    #[test]
    fn ids_are_64_hex() {
        let id = new_id().unwrap();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, new_id().unwrap());
    }
}
