//! Snapshots that containers use, kept from GC even when no image names them any more (an image
//! removed while its containers run), and the images containers mount as image volumes, which
//! RemoveImage refuses to remove while they are. One small file per holder, `holds/<owner>`,
//! written atomically before the holder uses the snapshots and removed after it is gone, so
//! that the holds outlive a crash or restart of berthd.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use berth_fsutil::atomic_write;

/// What one holder keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Snapshots (chain ids) kept from GC.
    pub chains: Vec<Digest>,
    /// Ids of images the holder mounts as image volumes: their records stay too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_images: Vec<Digest>,
}

/// A hold file as berth wrote it: a bare list of chain ids before image volumes.
#[derive(Deserialize)]
#[serde(untagged)]
enum HoldFile {
    Chains(Vec<Digest>),
    Hold(Hold),
}

pub struct Holds {
    dir: PathBuf,
    held: Mutex<BTreeMap<String, Hold>>,
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
            let file: HoldFile = serde_json::from_slice(&bytes)
                .map_err(|err| Error::Corrupt { path: path.clone(), reason: err.to_string() })?;
            let hold = match file {
                HoldFile::Chains(chains) => Hold { chains, volume_images: Vec::new() },
                HoldFile::Hold(hold) => hold,
            };
            held.insert(owner, hold);
        }
        Ok(Holds { dir: dir.to_path_buf(), held: Mutex::new(held) })
    }

    pub fn hold(&self, owner: &str, hold: &Hold) -> Result<()> {
        let path = self.path(owner)?;
        let bytes = serde_json::to_vec(hold)
            .map_err(|err| Error::Internal(format!("encoding holds: {err}")))?;
        atomic_write(&path, &bytes)?;
        self.lock().insert(owner.to_string(), hold.clone());
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
        Ok(self.lock().values().flat_map(|hold| hold.chains.iter()).cloned().collect())
    }

    /// Every holder's name.
    pub fn holders(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The holders that mount image `id` as an image volume, by name.
    pub fn volume_users(&self, id: &Digest) -> Vec<String> {
        let held = self.lock();
        let users = held.iter().filter(|(_, hold)| hold.volume_images.contains(id));
        users.map(|(owner, _)| owner.clone()).collect()
    }

    fn path(&self, owner: &str) -> Result<PathBuf> {
        if owner.is_empty() || owner.starts_with('.') || owner.contains(['/', '\0']) {
            return Err(Error::Internal(format!("bad snapshot holder name {owner:?}")));
        }
        Ok(self.dir.join(owner))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Hold>> {
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
        let chains = |chains: &[&Digest]| Hold {
            chains: chains.iter().map(|&c| c.clone()).collect(),
            volume_images: Vec::new(),
        };
        let holds = Holds::open(dir.path()).unwrap();
        holds.hold("c1", &chains(&[&a, &b])).unwrap();
        holds.hold("c2", &chains(&[&a])).unwrap();
        let again = Holds::open(dir.path()).unwrap();
        assert_eq!(again.held().unwrap(), HashSet::from([a.clone(), b.clone()]));
        again.release("c1").unwrap();
        again.release("c1").unwrap();
        assert_eq!(Holds::open(dir.path()).unwrap().held().unwrap(), HashSet::from([a]));
        assert!(holds.hold("../x", &Hold::default()).is_err());
    }

    #[test]
    fn volume_images_are_held_and_old_files_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let a: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let image: Digest = format!("sha256:{}", "c".repeat(64)).parse().unwrap();
        // The form of a berth before image volumes: a bare list of chain ids.
        std::fs::write(dir.path().join("old"), format!("[\"{a}\"]")).unwrap();
        let holds = Holds::open(dir.path()).unwrap();
        assert_eq!(holds.held().unwrap(), HashSet::from([a.clone()]));
        let hold = Hold { chains: vec![a.clone()], volume_images: vec![image.clone()] };
        holds.hold("c1", &hold).unwrap();
        let again = Holds::open(dir.path()).unwrap();
        assert_eq!(again.volume_users(&image), ["c1"]);
        assert_eq!(again.holders(), ["c1", "old"]);
        assert!(again.volume_users(&a).is_empty());
        again.release("c1").unwrap();
        assert!(Holds::open(dir.path()).unwrap().volume_users(&image).is_empty());
    }
}
