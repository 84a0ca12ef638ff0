//! The content-addressed blob store: manifests, indexes and image configs, each kept under its
//! sha256 digest. Layers are not kept here; they are unpacked into snapshots as they arrive.
//!
//! Layout: `<root>/blobs/sha256/<hex>` holds verified blobs only; `<root>/ingest/` holds writes
//! in progress. A blob is checked before it is renamed into `blobs/`, so a crash or a bad
//! download can leave debris in `ingest/` (cleared at open) but never a wrong or half blob that
//! a later lookup would trust.
//!
//! Blobs here are small (a few MiB at most), so the store uses blocking `std::fs`; async callers
//! wrap calls in `spawn_blocking`.

use std::fs;
use std::io::{ErrorKind as IoErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{Error, Result};
use berth_fsutil::sync_dir;

#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens (creating if needed) the store at `root` and discards unfinished writes. Only one
    /// store may be open on a `root` at a time: a second one would delete the first's ingests.
    pub fn open(root: &Path) -> Result<ContentStore> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        fs::create_dir_all(&blobs).map_err(Error::io("creating", &blobs))?;
        fs::create_dir_all(&ingest).map_err(Error::io("creating", &ingest))?;
        let store = ContentStore { blobs, ingest };
        store.clear_ingest()?;
        Ok(store)
    }

    /// Where the blob `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        fs::metadata(self.path(digest)).is_ok_and(|meta| meta.is_file())
    }

    /// Stores `bytes` as the blob `expected`, after checking that they are what the descriptor
    /// promised; on a mismatch nothing is written. The blob is durable when this returns.
    pub fn put(&self, expected: &Digest, expected_size: Option<u64>, bytes: &[u8]) -> Result<()> {
        let what = || format!("blob {expected}");
        if let Some(size) = expected_size {
            if bytes.len() as u64 != size {
                return Err(Error::SizeMismatch {
                    what: what(),
                    expected: size,
                    actual: bytes.len() as u64,
                });
            }
        }
        // The bytes are in memory, so hashing them here is the same check as re-reading the
        // ingest file, and a mismatch then costs no disk write and leaves nothing to clean.
        let actual = Digest::of(bytes);
        if &actual != expected {
            return Err(Error::DigestMismatch {
                what: what(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        if self.contains(expected) {
            return Ok(());
        }

        // A unique ingest name lets two pulls of the same blob race harmlessly: both renames
        // install identical content. Dropping the temp file on any error below removes it.
        let mut temp = tempfile::Builder::new()
            .prefix(&format!("{}-", expected.hex()))
            .tempfile_in(&self.ingest)
            .map_err(Error::io("creating an ingest file in", &self.ingest))?;
        temp.write_all(bytes).map_err(Error::io("writing", temp.path()))?;
        temp.as_file().sync_all().map_err(Error::io("syncing", temp.path()))?;
        let path = self.path(expected);
        temp.persist(&path).map_err(|err| Error::Io {
            what: "renaming into",
            path: path.clone(),
            source: err.error,
        })?;
        Ok(sync_dir(&self.blobs)?)
    }

    /// Reads the blob `digest`, re-hashing it: a flipped bit on disk must surface as an error,
    /// not as a manifest or config that silently differs from what was verified at pull.
    pub fn get(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.path(digest);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == IoErrorKind::NotFound => {
                return Err(Error::NotFound { what: format!("blob {digest}") });
            }
            Err(err) => return Err(Error::io("reading", &path)(err)),
        };
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(Error::Corrupt {
                path,
                reason: format!("blob {digest} now hashes to {actual}"),
            });
        }
        Ok(bytes)
    }

    /// Deletes the blob `digest`; a missing blob is not an error, so a GC pass that was
    /// interrupted can simply run again.
    pub fn remove(&self, digest: &Digest) -> Result<()> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == IoErrorKind::NotFound => Ok(()),
            Err(err) => Err(Error::io("removing", &path)(err)),
        }
        // No directory fsync: a removal lost to a crash only brings back an unreferenced blob,
        // which the next GC removes again.
    }

    /// Digests of every blob held, sorted. Files whose names are not digests (debris from
    /// tools or other versions) are skipped rather than failing the listing.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut digests = Vec::new();
        for entry in fs::read_dir(&self.blobs).map_err(Error::io("listing", &self.blobs))? {
            let entry = entry.map_err(Error::io("listing", &self.blobs))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else { continue };
            let file_type = entry.file_type().map_err(Error::io("inspecting", entry.path()))?;
            if file_type.is_file() {
                digests.push(digest);
            }
        }
        digests.sort();
        Ok(digests)
    }

    /// Bytes and inodes used by the store's files, for ImageFsInfo. Unfinished ingests count:
    /// they occupy the disk as much as blobs do.
    pub fn usage(&self) -> Result<(u64, u64)> {
        let mut bytes = 0;
        let mut inodes = 0;
        for dir in [&self.blobs, &self.ingest] {
            for entry in fs::read_dir(dir).map_err(Error::io("listing", dir))? {
                let entry = entry.map_err(Error::io("listing", dir))?;
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    // Removed between the listing and the stat (a concurrent GC or ingest).
                    Err(err) if err.kind() == IoErrorKind::NotFound => continue,
                    Err(err) => return Err(Error::io("inspecting", entry.path())(err)),
                };
                bytes += meta.len();
                inodes += 1;
            }
        }
        Ok((bytes, inodes))
    }

    fn clear_ingest(&self) -> Result<()> {
        let dir = &self.ingest;
        for entry in fs::read_dir(dir).map_err(Error::io("listing", dir))? {
            let entry = entry.map_err(Error::io("listing", dir))?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(Error::io("inspecting", &path))?;
            let removed =
                if file_type.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            removed.map_err(Error::io("removing stale ingest", &path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn put_get_list_remove_usage() {
        let root = tempfile::tempdir().unwrap();
        let store = ContentStore::open(root.path()).unwrap();
        let a = b"{\"schemaVersion\":2}".as_slice();
        let b = b"config".as_slice();
        let (da, db) = (Digest::of(a), Digest::of(b));

        assert!(!store.contains(&da));
        assert_eq!(store.usage().unwrap(), (0, 0));
        store.put(&da, Some(a.len() as u64), a).unwrap();
        store.put(&db, None, b).unwrap();
        // Writing it again is a no-op.
        store.put(&da, Some(a.len() as u64), a).unwrap();

        assert!(store.contains(&da));
        assert_eq!(store.path(&da), root.path().join("blobs/sha256").join(da.hex()));
        assert_eq!(store.get(&da).unwrap(), a);
        assert_eq!(store.get(&db).unwrap(), b);
        let mut want = vec![da.clone(), db.clone()];
        want.sort();
        assert_eq!(store.list().unwrap(), want);
        assert_eq!(store.usage().unwrap(), ((a.len() + b.len()) as u64, 2));
        assert_eq!(entries(&root.path().join("ingest")), 0);

        store.remove(&da).unwrap();
        store.remove(&da).unwrap();
        assert!(!store.contains(&da));
        assert!(matches!(store.get(&da), Err(Error::NotFound { what }) if what.contains(da.hex())));
        assert_eq!(store.list().unwrap(), vec![db]);
    }

    #[test]
    fn mismatches_leave_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let store = ContentStore::open(root.path()).unwrap();
        let bytes = b"manifest".as_slice();
        let digest = Digest::of(bytes);

        let err = store.put(&digest, None, b"tampered").unwrap_err();
        assert!(
            matches!(&err, Error::DigestMismatch { what, .. } if what.contains(digest.hex())),
            "{err}"
        );
        let err = store.put(&digest, Some(bytes.len() as u64 + 1), bytes).unwrap_err();
        assert!(matches!(err, Error::SizeMismatch { expected: 9, actual: 8, .. }), "{err}");

        assert!(!store.contains(&digest));
        assert_eq!(entries(&root.path().join("blobs/sha256")), 0);
        assert_eq!(entries(&root.path().join("ingest")), 0);
    }

    #[test]
    fn get_detects_a_corrupted_blob() {
        let root = tempfile::tempdir().unwrap();
        let store = ContentStore::open(root.path()).unwrap();
        let digest = Digest::of(b"config");
        store.put(&digest, None, b"config").unwrap();
        fs::write(store.path(&digest), b"confiG").unwrap();

        let err = store.get(&digest).unwrap_err();
        match err {
            Error::Corrupt { path, reason } => {
                assert_eq!(path, store.path(&digest));
                assert!(reason.contains(digest.hex()), "{reason}");
            }
            other => panic!("want Corrupt, got {other}"),
        }
    }

    #[test]
    fn open_clears_ingest_and_list_skips_strays() {
        let root = tempfile::tempdir().unwrap();
        let store = ContentStore::open(root.path()).unwrap();
        let digest = Digest::of(b"kept");
        store.put(&digest, None, b"kept").unwrap();
        drop(store);

        let ingest = root.path().join("ingest");
        fs::write(ingest.join(format!("{}-crashed", Digest::of(b"half").hex())), b"ha").unwrap();
        fs::create_dir(ingest.join("stray-dir")).unwrap();
        fs::write(ingest.join("stray-dir/file"), b"x").unwrap();
        let blobs = root.path().join("blobs/sha256");
        fs::write(blobs.join("README"), b"not a digest").unwrap();
        fs::write(blobs.join("ABCDEF"), b"not a digest either").unwrap();

        let store = ContentStore::open(root.path()).unwrap();
        assert_eq!(entries(&ingest), 0);
        assert_eq!(store.list().unwrap(), vec![digest.clone()]);
        assert_eq!(store.get(&digest).unwrap(), b"kept");
    }
}
