//! Snapshots that containers use, kept from GC even when no image names them any more (an image
//! removed while its containers run). One small file per holder, `holds/<owner>`, written
//! atomically before the holder uses the snapshots and removed after it is gone, so that the
//! holds outlive a crash or restart of berthd.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fsutil::atomic_write;

pub struct Holds {
    dir: PathBuf,
    held: Mutex<BTreeMap<String, Vec<Digest>>>,
}

impl Holds {
    pub fn open(dir: &Path) -> Result<Holds> {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        let mut held = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(Error::io("reading", dir))?.flatten() {
            let path = entry.path();
            let Some(owner) = entry.file_name().to_str().map(str::to_string) else { continue };
            if owner.starts_with('.') {
                // A write cut short by a crash.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let bytes = std::fs::read(&path).map_err(Error::io("reading", &path))?;
            let chains: Vec<Digest> = serde_json::from_slice(&bytes)
                .map_err(|err| Error::Corrupt { path: path.clone(), reason: err.to_string() })?;
            held.insert(owner, chains);
        }
        Ok(Holds { dir: dir.to_path_buf(), held: Mutex::new(held) })
    }

    pub fn hold(&self, owner: &str, chains: &[Digest]) -> Result<()> {
        let path = self.path(owner)?;
        let bytes = serde_json::to_vec(chains)
            .map_err(|err| Error::Internal(format!("encoding holds: {err}")))?;
        atomic_write(&path, &bytes)?;
        self.lock().insert(owner.to_string(), chains.to_vec());
        Ok(())
    }

    /// Releasing what is not held is fine: removal of a container is idempotent.
    pub fn release(&self, owner: &str) -> Result<()> {
        let path = self.path(owner)?;
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("removing", &path)(err))
            }
            _ => {}
        }
        self.lock().remove(owner);
        Ok(())
    }

    pub fn held(&self) -> Result<HashSet<Digest>> {
        Ok(self.lock().values().flatten().cloned().collect())
    }

    fn path(&self, owner: &str) -> Result<PathBuf> {
        if owner.is_empty() || owner.starts_with('.') || owner.contains(['/', '\0']) {
            return Err(Error::Internal(format!("bad snapshot holder name {owner:?}")));
        }
        Ok(self.dir.join(owner))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<Digest>>> {
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_survive_reopen_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let a: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let b: Digest = format!("sha256:{}", "b".repeat(64)).parse().unwrap();
        let holds = Holds::open(dir.path()).unwrap();
        holds.hold("c1", &[a.clone(), b.clone()]).unwrap();
        holds.hold("c2", std::slice::from_ref(&a)).unwrap();
        let again = Holds::open(dir.path()).unwrap();
        assert_eq!(again.held().unwrap(), HashSet::from([a.clone(), b.clone()]));
        again.release("c1").unwrap();
        again.release("c1").unwrap();
        assert_eq!(Holds::open(dir.path()).unwrap().held().unwrap(), HashSet::from([a]));
        assert!(holds.hold("../x", &[]).is_err());
    }
}
