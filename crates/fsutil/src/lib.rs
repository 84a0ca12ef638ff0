//! Small file-system helpers every store of berth relies on (image metadata, snapshots, pod and
//! container records, exit files): writes that a crash leaves whole.
//!
//! A crate of its own so that `runtime` does not borrow it from `images`: atomic writing is no
//! image concern.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What went wrong, with the operation and the path, so that a message names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} has no parent", .0.display())]
    NoParent(PathBuf),
}

impl Error {
    fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Writes `bytes` to `path` so that readers (and a crash) see the old content or the new, never
/// a torn file: a temp file in the same directory, fsync, rename, fsync of the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = replace(path, bytes, true, None)?;
    sync_dir(dir)
}

/// [`atomic_write`] of a file others must read too (temp files are created 0600): `mode` is set
/// before the rename, so the file is never seen with another.
pub fn atomic_write_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = replace(path, bytes, true, Some(mode))?;
    sync_dir(dir)
}

/// Like [`atomic_write`] without the fsyncs, for files of the state dir (a tmpfs that a reboot
/// empties anyway): a crash of the writer still leaves the old content or the new, and nothing
/// waits for a disk.
pub fn replace_volatile(path: &Path, bytes: &[u8]) -> Result<()> {
    replace(path, bytes, false, None).map(|_| ())
}

/// Writes a temp file beside `path` and renames it over `path`; returns the directory.
fn replace<'a>(path: &'a Path, bytes: &[u8], sync: bool, mode: Option<u32>) -> Result<&'a Path> {
    let dir = path.parent().ok_or_else(|| Error::NoParent(path.to_path_buf()))?;
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(Error::io("creating a temp file in", dir))?;
    temp.write_all(bytes).map_err(Error::io("writing", temp.path()))?;
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(Error::io("setting the mode of", temp.path()))?;
    }
    if sync {
        temp.as_file().sync_all().map_err(Error::io("syncing", temp.path()))?;
    }
    temp.persist(path).map_err(|err| Error::Io {
        what: "renaming into",
        path: path.to_path_buf(),
        source: err.error,
    })?;
    Ok(dir)
}

/// Makes a rename or create in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("syncing directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        atomic_write(&path, b"one").unwrap();
        atomic_write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
