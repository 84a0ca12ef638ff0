//! Committed layer directories keyed by chain id, each used as it is as an overlay lower dir.
//!
//! Layout: `<root>/<chain hex>/fs` is the unpacked layer and `<root>/<chain hex>/snapshot.json`
//! its [`SnapshotInfo`]. A snapshot becomes visible only by the rename of a complete temp dir
//! (`<root>/.tmp-*`: data synced, snapshot.json written), so a directory named by a chain id is
//! always whole; temp dirs left by a crash are removed when the store opens, and since each pull
//! picks a fresh temp name they never block the next one.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::fstatat;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::unpack::{is_dir, open_subdir, proc_path, remove_all_at, unpack_layer, UnpackOptions};
use berth_fsutil::{atomic_write, sync_dir};

const FS_DIR: &str = "fs";
const INFO_FILE: &str = "snapshot.json";
const TEMP_PREFIX: &str = ".tmp-";

/// renameat2(RENAME_NOREPLACE). Through rustix, which makes the system call itself: nix offers
/// renameat2 only on glibc, and berth also builds statically against musl.
fn rename_noreplace(
    old_dir: impl std::os::fd::AsFd,
    old: impl rustix::path::Arg,
    new_dir: impl std::os::fd::AsFd,
    new: impl rustix::path::Arg,
) -> std::result::Result<(), Errno> {
    rustix::fs::renameat_with(old_dir, old, new_dir, new, rustix::fs::RenameFlags::NOREPLACE)
        .map_err(|err| Errno::from_raw(err.raw_os_error()))
}

/// chain_id(L1) = diff_id(L1); chain_id(Ln) = sha256(chain_id(Ln-1) + " " + diff_id(Ln)) (the
/// OCI image spec's ChainID, on the "sha256:<hex>" strings).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chain: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = chain_id(chain.last(), diff_id);
        chain.push(next);
    }
    chain
}

fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => diff_id.clone(),
        Some(parent) => Digest::of(format!("{parent} {diff_id}").as_bytes()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub chain_id: Digest,
    pub parent: Option<Digest>,
    pub diff_id: Digest,
    /// Of the uncompressed layer.
    pub size: u64,
    pub created_unix: i64,
    /// Space and inodes the unpacked layer takes, measured once at commit so that
    /// ImageFsInfo, which the kubelet polls, need not walk every layer each time.
    #[serde(default)]
    pub disk_bytes: u64,
    #[serde(default)]
    pub inodes: u64,
}

/// One per process: opening removes every temp dir in the root, including those of a pull in
/// progress in another store on the same root.
#[derive(Debug)]
pub struct SnapshotStore {
    /// `<images root>/snapshots`
    root: PathBuf,
}

impl SnapshotStore {
    /// Creates the directory and removes what interrupted unpacks and removals left.
    pub fn open(root: &Path) -> Result<SnapshotStore> {
        std::fs::create_dir_all(root).map_err(Error::io("creating", root))?;
        // Layers hold the setuid binaries and device nodes of images; host users must not be
        // able to reach them.
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(Error::io("changing mode of", root))?;
        let store = SnapshotStore { root: root.to_path_buf() };
        let dir = store.open_root()?;
        for entry in std::fs::read_dir(root).map_err(Error::io("listing", root))? {
            let name = entry.map_err(Error::io("listing", root))?.file_name();
            if !name.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
                continue;
            }
            // A leftover that cannot go now only costs space: pulls use fresh names.
            match remove_all_at(&dir, &name) {
                Ok(()) => debug!(path = %root.join(&name).display(), "removed leftover"),
                Err(err) => {
                    warn!(path = %root.join(&name).display(), error = %err, "cannot remove leftover")
                }
            }
        }
        Ok(store)
    }

    pub fn exists(&self, chain_id: &Digest) -> bool {
        self.info_path(chain_id).exists()
    }

    pub fn get(&self, chain_id: &Digest) -> Result<Option<SnapshotInfo>> {
        let path = self.info_path(chain_id);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(Error::io("reading", path)(err)),
        };
        let info: SnapshotInfo = serde_json::from_slice(&bytes)
            .map_err(|err| Error::Corrupt { path: path.clone(), reason: err.to_string() })?;
        if info.chain_id != *chain_id {
            return Err(Error::Corrupt {
                path,
                reason: format!("describes snapshot {}", info.chain_id),
            });
        }
        Ok(Some(info))
    }

    /// The directory to use as an overlay lower dir: `<root>/<chain hex>/fs`.
    pub fn layer_dir(&self, chain_id: &Digest) -> PathBuf {
        self.root.join(chain_id.hex()).join(FS_DIR)
    }

    /// Unpacks into a fresh temp dir in the store, checks the diff id equals `expected_diff_id`
    /// (else `DigestMismatch`, temp removed), writes snapshot.json then renames the temp dir to
    /// `<chain hex>`. If the snapshot exists already, or appears meanwhile (another pull), the
    /// existing one is kept and returned; `reader` may then be left unread. Blocking; callers
    /// run it on a blocking thread.
    pub fn unpack(
        &self,
        chain_id: &Digest,
        parent: Option<&Digest>,
        expected_diff_id: &Digest,
        reader: impl Read,
        layer: &str,
        options: &UnpackOptions,
    ) -> Result<SnapshotInfo> {
        // A chain id that does not follow from its parts would serve the wrong directory to
        // every image sharing it.
        if chain_id != &self::chain_id(parent, expected_diff_id) {
            return Err(Error::Internal(format!(
                "layer {layer}: chain id {chain_id} does not follow from parent {parent:?} and \
                 diff id {expected_diff_id}"
            )));
        }
        if let Some(info) = self.get(chain_id)? {
            return Ok(info);
        }

        let root = self.open_root()?;
        let temp = TempDir::create(&self.root, root, chain_id)?;
        let fs = temp.path.join(FS_DIR);
        std::fs::create_dir(&fs).map_err(Error::io("creating", &fs))?;
        std::fs::set_permissions(&fs, std::fs::Permissions::from_mode(0o755))
            .map_err(Error::io("changing mode of", &fs))?;

        let stats = unpack_layer(reader, &fs, layer, options)?;
        if stats.diff_id != *expected_diff_id {
            return Err(Error::DigestMismatch {
                what: format!("layer {layer}: uncompressed content (diff id)"),
                expected: expected_diff_id.to_string(),
                actual: stats.diff_id.to_string(),
            });
        }
        // Durable before visible: after a crash a layer is whole or not there.
        let fs_dir = File::open(&fs).map_err(Error::io("opening", &fs))?;
        nix::unistd::syncfs(&fs_dir).map_err(|errno| Error::io("syncing", &fs)(errno.into()))?;

        let fs_root = File::open(&fs).map_err(Error::io("opening", &fs))?;
        let (disk_bytes, inodes) = tree_usage(fs_root).map_err(Error::io("measuring", &fs))?;
        // The walk counts what is below fs/; the snapshot's dir, fs/ and snapshot.json too.
        let inodes = inodes + 3;
        let info = SnapshotInfo {
            chain_id: chain_id.clone(),
            parent: parent.cloned(),
            diff_id: stats.diff_id,
            size: stats.uncompressed_size,
            disk_bytes,
            inodes,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        };
        let json = serde_json::to_vec_pretty(&info)
            .map_err(|err| Error::Internal(format!("encoding snapshot {chain_id}: {err}")))?;
        atomic_write(&temp.path.join(INFO_FILE), &json)?;

        let target = self.root.join(chain_id.hex());
        match rename_noreplace(&temp.parent, temp.name.as_os_str(), &temp.parent, chain_id.hex()) {
            Ok(()) => {
                temp.keep();
                sync_dir(&self.root)?;
                debug!(layer, %chain_id, size = info.size, "snapshot committed");
                Ok(info)
            }
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => {
                drop(temp);
                debug!(layer, %chain_id, "snapshot committed by another pull meanwhile");
                self.get(chain_id)?.ok_or_else(|| {
                    Error::Internal(format!("snapshot {chain_id} appeared and vanished meanwhile"))
                })
            }
            Err(errno) => Err(Error::io("committing", target)(errno.into())),
        }
    }

    pub fn list(&self) -> Result<Vec<SnapshotInfo>> {
        let mut infos = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(Error::io("listing", &self.root))? {
            let name = entry.map_err(Error::io("listing", &self.root))?.file_name();
            if name.as_bytes().starts_with(b".") {
                continue;
            }
            let Some(chain_id) = name.to_str().and_then(|hex| format!("sha256:{hex}").parse().ok())
            else {
                warn!(path = %self.root.join(&name).display(), "not a snapshot, ignored");
                continue;
            };
            // None: removed since we listed.
            if let Some(info) = self.get(&chain_id)? {
                infos.push(info);
            }
        }
        infos.sort_by(|a, b| a.chain_id.cmp(&b.chain_id));
        Ok(infos)
    }

    /// Removes a snapshot: renamed to a temp name first, so that a crash mid-delete leaves no
    /// half snapshot looking valid, then removed without following symlinks. Missing is Ok.
    /// The caller makes sure no mount uses it.
    pub fn remove(&self, chain_id: &Digest) -> Result<()> {
        match self.detach(chain_id)? {
            Some(detached) => self.purge(&detached),
            None => Ok(()),
        }
    }

    /// The quick half of [`remove`](Self::remove): renames the snapshot out of sight (it no
    /// longer exists for [`exists`](Self::exists), [`get`](Self::get) or [`list`](Self::list))
    /// and returns the temp name to hand to [`purge`](Self::purge); None if it was not there.
    /// A detached dir a crash leaves behind is removed when the store next opens.
    pub fn detach(&self, chain_id: &Digest) -> Result<Option<OsString>> {
        let root = self.open_root()?;
        let path = self.root.join(chain_id.hex());
        let mut attempt = 0;
        let name = loop {
            let name = temp_name(chain_id, "rm");
            match rename_noreplace(&root, chain_id.hex(), &root, name.as_os_str()) {
                Ok(()) => break name,
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::EEXIST) if attempt < 8 => attempt += 1,
                Err(errno) => return Err(Error::io("removing", path)(errno.into())),
            }
        };
        sync_dir(&self.root)?;
        debug!(%chain_id, "snapshot detached");
        Ok(Some(name))
    }

    /// The slow half of [`remove`](Self::remove): deletes what [`detach`](Self::detach)
    /// renamed away.
    pub fn purge(&self, detached: &OsStr) -> Result<()> {
        if !detached.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
            return Err(Error::Internal(format!(
                "{} is not a detached snapshot",
                self.root.join(detached).display()
            )));
        }
        let root = self.open_root()?;
        remove_all_at(&root, detached).map_err(Error::io("removing", self.root.join(detached)))?;
        debug!(path = %self.root.join(detached).display(), "detached snapshot removed");
        Ok(())
    }

    /// Bytes (allocated blocks) and inodes used under the root, for ImageFsInfo; pulls in
    /// progress count too, since they use the disk. Hard links count once; symlinks are not
    /// followed.
    /// From the usage each snapshot recorded at commit; a snapshot without a record (an older
    /// berth's) is measured. Unpacks in progress are not counted.
    pub fn usage(&self) -> Result<(u64, u64)> {
        let (mut bytes, mut inodes) = (0, 0);
        for info in self.list()? {
            let (b, i) = if info.inodes == 0 {
                let fs = self.layer_dir(&info.chain_id);
                let dir = File::open(&fs).map_err(Error::io("opening", &fs))?;
                let (b, i) = tree_usage(dir).map_err(Error::io("measuring", &fs))?;
                (b, i + 3)
            } else {
                (info.disk_bytes, info.inodes)
            };
            bytes += b;
            inodes += i;
        }
        Ok((bytes, inodes))
    }

    fn info_path(&self, chain_id: &Digest) -> PathBuf {
        self.root.join(chain_id.hex()).join(INFO_FILE)
    }

    fn open_root(&self) -> Result<File> {
        File::open(&self.root).map_err(Error::io("opening", &self.root))
    }
}

/// A name no other pull or removal of this process uses; the pid keeps two berth processes
/// apart, the time a restarted process from its predecessor's leftovers.
fn temp_name(chain_id: &Digest, purpose: &str) -> OsString {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    OsString::from(format!(
        "{TEMP_PREFIX}{purpose}-{}-{}-{nanos}-{}",
        &chain_id.hex()[..12],
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A temp dir in the store, removed on drop unless kept.
struct TempDir {
    parent: File,
    name: OsString,
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn create(root: &Path, parent: File, chain_id: &Digest) -> Result<TempDir> {
        let mut attempt = 0;
        loop {
            let name = temp_name(chain_id, "unpack");
            let path = root.join(&name);
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { parent, name, path, keep: false }),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => {
                    attempt += 1
                }
                Err(err) => return Err(Error::io("creating", path)(err)),
            }
        }
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(err) = remove_all_at(&self.parent, &self.name) {
            // The next open of the store retries.
            warn!(path = %self.path.display(), error = %err, "cannot remove temp dir");
        }
    }
}

/// Walks depth first holding one directory fd at a time (climbing back with `..`), so that a
/// layer's deep nesting cannot exhaust the fd limit.
fn tree_usage(root: File) -> io::Result<(u64, u64)> {
    let mut totals = Totals::default();
    let mut current = root;
    let mut stack = vec![totals.scan(&current)?];
    while let Some(pending) = stack.last_mut() {
        if let Some(child) = pending.pop() {
            match open_subdir(&current, &child) {
                Ok(dir) => {
                    let subdirs = totals.scan(&dir)?;
                    current = dir;
                    stack.push(subdirs);
                }
                // Removed or replaced since we listed it.
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) => {}
                Err(err) => return Err(err),
            }
            continue;
        }
        stack.pop();
        if !stack.is_empty() {
            current = open_subdir(&current, OsStr::new(".."))?;
        }
    }
    Ok((totals.bytes, totals.inodes))
}

#[derive(Default)]
struct Totals {
    bytes: u64,
    inodes: u64,
    /// (dev, ino) of the files with more than one link seen so far.
    linked: HashSet<(u64, u64)>,
}

impl Totals {
    /// Counts the entries of `dir` and returns its subdirectories.
    fn scan(&mut self, dir: &File) -> io::Result<Vec<OsString>> {
        let mut subdirs = Vec::new();
        for entry in std::fs::read_dir(proc_path(dir))? {
            let name = entry?.file_name();
            let stat = match fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(Errno::ENOENT) => continue,
                Err(errno) => return Err(errno.into()),
            };
            if is_dir(&stat) {
                subdirs.push(name);
            } else if stat.st_nlink > 1 && !self.linked.insert((stat.st_dev, stat.st_ino)) {
                continue;
            }
            self.inodes += 1;
            self.bytes += u64::try_from(stat.st_blocks).unwrap_or(0) * 512;
        }
        Ok(subdirs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};
    use std::sync::{Arc, Barrier};

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        builder.into_inner().unwrap()
    }

    fn add(builder: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        header.set_mtime(1_600_000_000);
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, path, data).unwrap();
    }

    fn file(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        add(builder, tar::EntryType::Regular, path, data)
    }

    fn dir(builder: &mut tar::Builder<Vec<u8>>, path: &str) {
        add(builder, tar::EntryType::Directory, path, b"")
    }

    fn base_layer() -> Vec<u8> {
        tar_of(|t| {
            file(t, "a", b"a");
            file(t, "b", b"b");
            dir(t, "d");
            file(t, "d/x", b"x");
            file(t, "d/y", b"y");
        })
    }

    fn store() -> (tempfile::TempDir, SnapshotStore) {
        let temp = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(&temp.path().join("snapshots")).unwrap();
        (temp, store)
    }

    fn entries(path: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn chain_ids_follow_the_oci_spec() {
        let diffs = [Digest::of(b"one"), Digest::of(b"two"), Digest::of(b"three")];
        let sha = |text: String| format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())));
        let second = sha(format!("sha256:{} sha256:{}", diffs[0].hex(), diffs[1].hex()));
        let third = sha(format!("{second} sha256:{}", diffs[2].hex()));
        let chain = chain_ids(&diffs);
        let chain: Vec<String> = chain.iter().map(|d| d.to_string()).collect();
        assert_eq!(chain, [diffs[0].to_string(), second, third]);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn unpack_get_list_remove() {
        let (_temp, store) = store();
        let tar = base_layer();
        let diff_id = Digest::of(&tar);
        let chain_id = chain_ids(std::slice::from_ref(&diff_id)).remove(0);
        assert!(!store.exists(&chain_id));
        assert_eq!(store.get(&chain_id).unwrap(), None);

        let options = UnpackOptions::default();
        let info = store.unpack(&chain_id, None, &diff_id, &tar[..], "l1", &options).unwrap();
        assert_eq!((&info.chain_id, &info.parent, &info.diff_id), (&chain_id, &None, &diff_id));
        assert_eq!(info.size, tar.len() as u64);
        assert!(store.exists(&chain_id));
        assert_eq!(store.get(&chain_id).unwrap(), Some(info.clone()));
        assert_eq!(store.list().unwrap(), std::slice::from_ref(&info));
        assert_eq!(std::fs::read(store.layer_dir(&chain_id).join("d/x")).unwrap(), b"x");
        let (bytes, inodes) = store.usage().unwrap();
        assert!(bytes > 0);
        // The snapshot dir, fs, snapshot.json, a, b, d, d/x, d/y.
        assert_eq!(inodes, 8);

        // Present: the reader is not even read.
        let again = store.unpack(&chain_id, None, &diff_id, &b"garbage"[..], "l1", &options);
        assert_eq!(again.unwrap(), info);

        // A second layer on top.
        let tar2 = tar_of(|t| file(t, "c", b"c"));
        let diff2 = Digest::of(&tar2);
        let chain2 = chain_ids(&[diff_id.clone(), diff2.clone()]).remove(1);
        let wrong = store.unpack(&diff2, Some(&chain_id), &diff2, &tar2[..], "l2", &options);
        assert!(matches!(wrong, Err(Error::Internal(_))), "{wrong:?}");
        let info2 =
            store.unpack(&chain2, Some(&chain_id), &diff2, &tar2[..], "l2", &options).unwrap();
        assert_eq!(info2.parent, Some(chain_id.clone()));
        assert_eq!(store.list().unwrap().len(), 2);

        store.remove(&chain_id).unwrap();
        store.remove(&chain_id).unwrap();
        assert!(!store.exists(&chain_id));
        assert_eq!(store.list().unwrap(), std::slice::from_ref(&info2));
        store.remove(&chain2).unwrap();
        assert!(entries(&store.root).is_empty());
        assert_eq!(store.usage().unwrap(), (0, 0));
    }

    #[test]
    fn detach_hides_at_once_and_purge_deletes() {
        let (temp, store) = store();
        let tar = base_layer();
        let diff_id = Digest::of(&tar);
        let options = UnpackOptions::default();
        store.unpack(&diff_id, None, &diff_id, &tar[..], "l1", &options).unwrap();

        let detached = store.detach(&diff_id).unwrap().unwrap();
        assert!(!store.exists(&diff_id));
        assert!(store.list().unwrap().is_empty());
        assert_eq!(entries(&store.root), [detached.to_str().unwrap()]);
        assert_eq!(store.detach(&diff_id).unwrap(), None);
        // Only detached dirs are purged.
        assert!(store.purge(OsStr::new(diff_id.hex())).is_err());
        store.purge(&detached).unwrap();
        assert!(entries(&store.root).is_empty());

        // What a crash between the two leaves goes when the store opens.
        store.unpack(&diff_id, None, &diff_id, &tar[..], "l1", &options).unwrap();
        store.detach(&diff_id).unwrap().unwrap();
        let reopened = SnapshotStore::open(&temp.path().join("snapshots")).unwrap();
        assert!(entries(&reopened.root).is_empty());
    }

    #[test]
    fn diff_id_mismatch_leaves_nothing() {
        let (_temp, store) = store();
        let tar = base_layer();
        let claimed = Digest::of(b"something else");
        let result =
            store.unpack(&claimed, None, &claimed, &tar[..], "l1", &UnpackOptions::default());
        assert!(matches!(result, Err(Error::DigestMismatch { .. })), "{result:?}");
        assert!(entries(&store.root).is_empty());

        let hostile = tar_of(|t| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(0);
            header.as_old_mut().name[..9].copy_from_slice(b"../escape");
            header.set_cksum();
            t.append(&header, &b""[..]).unwrap();
        });
        let diff = Digest::of(&hostile);
        let result =
            store.unpack(&diff, None, &diff, &hostile[..], "l1", &UnpackOptions::default());
        assert!(matches!(result, Err(Error::HostileLayer { .. })), "{result:?}");
        assert!(entries(&store.root).is_empty());
    }

    #[test]
    fn open_removes_leftovers() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().join("snapshots");
        let outside = temp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"").unwrap();
        let store = SnapshotStore::open(&root).unwrap();
        let tar = base_layer();
        let diff_id = Digest::of(&tar);
        store.unpack(&diff_id, None, &diff_id, &tar[..], "l1", &UnpackOptions::default()).unwrap();

        let leftover = root.join(".tmp-unpack-abc/fs/deep/er");
        std::fs::create_dir_all(&leftover).unwrap();
        std::os::unix::fs::symlink(&outside, leftover.join("out")).unwrap();
        std::fs::write(root.join(".tmp-rm-file"), b"").unwrap();
        drop(store);

        let store = SnapshotStore::open(&root).unwrap();
        assert_eq!(entries(&root), [diff_id.hex().to_string()]);
        assert!(outside.join("keep").exists());
        assert!(store.exists(&diff_id));
        let mode = std::fs::metadata(&root).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn concurrent_unpacks_of_one_layer_end_with_one_snapshot() {
        let (_temp, store) = store();
        let store = Arc::new(store);
        let tar = Arc::new(base_layer());
        let diff_id = Digest::of(&tar);
        let barrier = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let (store, tar, barrier, diff_id) =
                    (store.clone(), tar.clone(), barrier.clone(), diff_id.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let layer = format!("pull {i}");
                    let options = UnpackOptions::default();
                    store.unpack(&diff_id, None, &diff_id, &tar[..], &layer, &options).unwrap()
                })
            })
            .collect();
        let infos: Vec<SnapshotInfo> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let committed = store.get(&diff_id).unwrap().unwrap();
        assert!(infos.iter().all(|info| *info == committed));
        assert_eq!(entries(&store.root), [diff_id.hex().to_string()]);
        assert_eq!(store.list().unwrap().len(), 1);
    }

    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn layers_stack_in_overlayfs() {
        let (temp, store) = store();
        let layer2 = tar_of(|t| {
            file(t, ".wh.a", b"");
            dir(t, "d");
            file(t, "d/.wh..wh..opq", b"");
            file(t, "d/z", b"z");
        });
        let layer3 = tar_of(|t| {
            file(t, "a", b"again");
            file(t, ".wh.b", b"");
        });
        let tars = [base_layer(), layer2, layer3];
        let diff_ids: Vec<Digest> = tars.iter().map(|t| Digest::of(t)).collect();
        let chain = chain_ids(&diff_ids);
        for (i, tar) in tars.iter().enumerate() {
            let parent = i.checked_sub(1).map(|p| &chain[p]);
            let layer = format!("layer {i}");
            let options = UnpackOptions::default();
            store.unpack(&chain[i], parent, &diff_ids[i], &tar[..], &layer, &options).unwrap();
        }
        let dirs: Vec<String> =
            chain.iter().map(|c| store.layer_dir(c).to_str().unwrap().to_string()).collect();

        let target = temp.path().join("merged");
        std::fs::create_dir(&target).unwrap();
        let mount = |lowers: &[&String]| {
            let lowers: Vec<&str> = lowers.iter().map(|s| s.as_str()).collect();
            nix::mount::mount(
                Some("overlay"),
                &target,
                Some("overlay"),
                nix::mount::MsFlags::MS_RDONLY,
                Some(format!("lowerdir={}", lowers.join(":")).as_str()),
            )
            .unwrap();
            Mounted(target.clone())
        };

        {
            let _mounted = mount(&[&dirs[1], &dirs[0]]);
            assert_eq!(entries(&target), ["b", "d"]);
            assert_eq!(entries(&target.join("d")), ["z"]);
            assert_eq!(std::fs::read(target.join("b")).unwrap(), b"b");
        }
        {
            let _mounted = mount(&[&dirs[2], &dirs[1], &dirs[0]]);
            assert_eq!(entries(&target), ["a", "d"]);
            assert_eq!(std::fs::read(target.join("a")).unwrap(), b"again");
            assert_eq!(entries(&target.join("d")), ["z"]);
        }
        assert!(entries(&target).is_empty(), "unmounted");
    }
}
