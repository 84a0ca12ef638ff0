//! The pods or containers berthd knows: a map by id with unique-prefix lookup, the metadata
//! names that must stay unique, and their persistent records (`<dir>/<id>/<FILE>`, written
//! atomically).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// What a store keeps.
pub trait Record: Clone + Serialize + DeserializeOwned + Send + 'static {
    /// How messages name one ("pod sandbox", "container").
    const KIND: &'static str;
    /// The record's file in its directory.
    const FILE: &'static str;
    const VERSION: u32;
    fn id(&self) -> &str;
    fn version(&self) -> u32;
    /// The name that must be unique, as the kubelet builds it from the metadata.
    fn name_key(&self) -> String;
}

/// One pod or container. A lifecycle step (which may be slow: CNI, mounts, a stop timeout)
/// holds `step` throughout, so that steps of one never interleave while others go on; readers
/// (the kubelet's frequent lists and statuses) see the last saved record without waiting.
pub struct Entry<R> {
    pub id: String,
    pub step: tokio::sync::Mutex<()>,
    saved: Mutex<R>,
}

impl<R: Record> Entry<R> {
    fn new(record: R) -> Entry<R> {
        Entry {
            id: record.id().to_string(),
            step: tokio::sync::Mutex::new(()),
            saved: Mutex::new(record),
        }
    }

    /// The record as last saved.
    pub fn record(&self) -> R {
        lock(&self.saved).clone()
    }
}

pub struct Store<R> {
    dir: PathBuf,
    entries: Mutex<BTreeMap<String, Arc<Entry<R>>>>,
    /// Metadata key → id.
    names: Mutex<BTreeMap<String, String>>,
}

impl<R: Record> Store<R> {
    /// Loads every record under `dir`. A record that cannot be read is logged and left on disk
    /// for an operator, rather than stopping berthd or being deleted.
    pub fn open(dir: &Path) -> Result<Store<R>> {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        let store = Store {
            dir: dir.to_path_buf(),
            entries: Mutex::new(BTreeMap::new()),
            names: Mutex::new(BTreeMap::new()),
        };
        for entry in std::fs::read_dir(dir).map_err(Error::io("reading", dir))?.flatten() {
            let path = entry.path().join(R::FILE);
            let record = match std::fs::read(&path) {
                Ok(bytes) => serde_json::from_slice::<R>(&bytes)
                    .map_err(|err| err.to_string())
                    .and_then(|r| match r.version() {
                        v if v == R::VERSION => Ok(r),
                        v => Err(format!("record version {v} is not supported")),
                    }),
                // One whose creation never wrote its record: nothing of it is to be kept.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => Err(err.to_string()),
            };
            match record {
                Ok(record) => {
                    lock(&store.names).insert(record.name_key(), record.id().to_string());
                    let entry = Entry::new(record);
                    lock(&store.entries).insert(entry.id.clone(), Arc::new(entry));
                }
                Err(reason) => tracing::error!(
                    path = %path.display(),
                    reason,
                    "skipping an unreadable {} record",
                    R::KIND
                ),
            }
        }
        Ok(store)
    }

    pub fn dir_of(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Claims a name; a second one of the same metadata is refused with the first's id, as
    /// containerd and CRI-O do.
    pub fn reserve_name(&self, key: &str, id: &str) -> Result<()> {
        let mut names = lock(&self.names);
        if let Some(existing) = names.get(key) {
            return Err(Error::AlreadyExists(format!(
                "{} {key} already exists as {existing}",
                R::KIND
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

    pub fn insert(&self, record: R) -> Arc<Entry<R>> {
        let entry = Arc::new(Entry::new(record));
        lock(&self.entries).insert(entry.id.clone(), entry.clone());
        entry
    }

    pub fn forget(&self, id: &str) {
        lock(&self.entries).remove(id);
    }

    /// The one a full id or a unique prefix of one names.
    pub fn get(&self, id: &str) -> Result<Arc<Entry<R>>> {
        self.find(id)?.ok_or_else(|| Error::NotFound(format!("{} {id:?} not found", R::KIND)))
    }

    /// Like `get`, but an unknown id is `None` (removing twice is fine).
    pub fn find(&self, id: &str) -> Result<Option<Arc<Entry<R>>>> {
        if id.is_empty() {
            return Err(Error::InvalidArgument(format!("{} id is empty", R::KIND)));
        }
        let entries = lock(&self.entries);
        if let Some(entry) = entries.get(id) {
            return Ok(Some(entry.clone()));
        }
        let mut matches =
            entries.range(id.to_string()..).take_while(|(key, _)| key.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some((_, entry)), None) => Ok(Some(entry.clone())),
            (None, _) => Ok(None),
            (Some(_), Some(_)) => {
                Err(Error::InvalidArgument(format!("{} id prefix {id:?} is ambiguous", R::KIND)))
            }
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        lock(&self.entries).contains_key(id)
    }

    pub fn all(&self) -> Vec<Arc<Entry<R>>> {
        lock(&self.entries).values().cloned().collect()
    }

    /// Writes the record atomically (a crash leaves the old record or the new one), then
    /// shows it to readers.
    pub fn save(&self, record: &R) -> Result<()> {
        let dir = self.dir_of(record.id());
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|err| Error::Internal(format!("encoding a {} record: {err}", R::KIND)))?;
        berth_fsutil::atomic_write(&dir.join(R::FILE), &bytes)
            .map_err(|err| Error::Internal(err.to_string()))?;
        if let Some(entry) = lock(&self.entries).get(record.id()) {
            *lock(&entry.saved) = record.clone();
        }
        Ok(())
    }

    /// Deletes the directory and everything in it.
    pub fn delete(&self, id: &str) -> Result<()> {
        let dir = self.dir_of(id);
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
    use crate::pod::types::{PodConfig, PodMetadata, PodRecord, PodState, RECORD_VERSION};

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
            monitor_pid: None,
            pod_init_pid: None,
        }
    }

    #[test]
    fn prefixes_names_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::<PodRecord>::open(dir.path()).unwrap();
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
        let again = Store::<PodRecord>::open(dir.path()).unwrap();
        assert_eq!(again.all().len(), 3);
        assert!(again.reserve_name(&record("x", "c").config.metadata.key(), "x").is_err());
        again.delete("def").unwrap();
        again.delete("def").unwrap();
        assert_eq!(Store::<PodRecord>::open(dir.path()).unwrap().all().len(), 2);
    }

    #[test]
    fn ids_are_64_hex() {
        let id = new_id().unwrap();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, new_id().unwrap());
    }
}
