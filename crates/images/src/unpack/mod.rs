//! Applies one OCI image layer (a tar, possibly gzip- or zstd-compressed) to an empty directory,
//! in overlayfs' own format, so that the directory can be used as it is as an overlay lower dir.
//!
//! Nothing a layer says may create, change or follow anything outside that directory. Parent
//! directories are resolved by the kernel with `openat2(RESOLVE_IN_ROOT)` relative to an fd of
//! the directory, so a symlink of the layer (`a -> /etc`, `a -> ../../..`) is followed as if the
//! directory were `/` and cannot lead out. We chose that over refusing every path that crosses a
//! symlink (`RESOLVE_NO_SYMLINKS`) because real layers do write through their own symlinks (a
//! `lib -> usr/lib` and then `lib/x`), and the result is the one the container will see once the
//! symlink is resolved inside it. The last component is then created, replaced and given its
//! metadata with `*at` calls on the parent's fd, none of which follows it.

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{
    fchmodat, fstatat, makedev, mkdirat, mknodat, utimensat, FchmodatFlags, FileStat, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use tracing::{debug, warn};
use xattr::FileExt;

use crate::digest::{Digest, HashingReader};
use crate::error::{Error, Result};

/// What a layer may contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Device nodes in a layer are created as they are; off refuses such layers.
    pub allow_devices: bool,
    pub max_entries: u64,
    /// In bytes, for entry names and link targets.
    pub max_path_len: usize,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions { allow_devices: true, max_entries: 1_000_000, max_path_len: 4096 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    pub entries: u64,
}

/// The tar crate reads an entry's GNU long name / long link and PAX records into memory before
/// handing us the entry, with no limit of its own; a compressed layer can declare gigabytes of
/// them cheaply. Go's archive/tar (containerd) allows 1 MiB for each of them; this is the three
/// together plus the headers around them.
const MAX_HEADER_BYTES: u64 = (3 << 20) + 16 * 512;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// aufs' own bookkeeping (`.wh..wh.plnk`, …), meaningless for overlay.
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// overlayfs takes its metadata (opaque, redirect, metacopy, …) from `trusted.overlay.*`, or from
/// `user.overlay.*` when mounted with `userxattr`; a layer must be able to forge neither.
const OVERLAY_XATTR_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// Detects the compression by magic bytes (gzip 1f 8b, zstd 28 b5 2f fd, else uncompressed
/// tar) — registries mislabel media types — decompresses, hashes the uncompressed stream, and
/// applies the tar to `dest` (an existing, empty directory). `layer` names the layer in errors.
///
/// Streams: memory use does not depend on the size of the layer or of its files (only, a little,
/// on its number of directories, whose mtimes are set at the end).
pub fn unpack_layer(
    reader: impl Read,
    dest: &Path,
    layer: &str,
    options: &UnpackOptions,
) -> Result<UnpackStats> {
    let root = openat(
        nix::fcntl::AT_FDCWD,
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
    .map_err(|errno| Error::io("opening", dest)(errno.into()))?;

    let mut reader = reader;
    let mut magic = [0u8; 4];
    let got = read_up_to(&mut reader, &mut magic).map_err(Error::io(READING, dest))?;
    let stream = io::Cursor::new(magic).take(got as u64).chain(reader);
    let decoder = Decoder::new(&magic[..got], stream).map_err(Error::io(READING, dest))?;
    let mut hashing = HashingReader::new(decoder);

    let budget = Rc::new(HeaderBudget::default());
    let mut unpacker = Unpacker {
        root,
        dest,
        layer,
        options,
        dir_times: Vec::new(),
        entries: 0,
        buf: vec![0; 128 * 1024],
    };
    {
        let mut archive =
            tar::Archive::new(Budgeted { inner: &mut hashing, budget: Rc::clone(&budget) });
        unpacker.apply_all(&mut archive, &budget)?;
    }
    unpacker.set_dir_times()?;
    // The tar reader stops at the first end-of-archive block; the diff id covers every byte.
    let (diff_id, uncompressed_size) = hashing.finish().map_err(Error::io(READING, dest))?;
    debug!(layer, entries = unpacker.entries, uncompressed_size, %diff_id, "layer unpacked");
    Ok(UnpackStats { diff_id, uncompressed_size, entries: unpacker.entries })
}

const READING: &str = "reading the layer stream for";

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(got)
}

enum Decoder<R: Read> {
    Plain(R),
    /// Multi-member, as Go's reader (and so every registry client) accepts.
    Gzip(flate2::read::MultiGzDecoder<R>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
}

impl<R: Read> Decoder<R> {
    fn new(magic: &[u8], stream: R) -> io::Result<Self> {
        Ok(if magic.starts_with(&[0x1f, 0x8b]) {
            Decoder::Gzip(flate2::read::MultiGzDecoder::new(stream))
        } else if magic == [0x28, 0xb5, 0x2f, 0xfd] {
            Decoder::Zstd(zstd::stream::read::Decoder::new(stream)?)
        } else {
            Decoder::Plain(stream)
        })
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

/// How much the tar reader may read while it looks for the next entry; unlimited while we read
/// an entry's data (which we stream to disk).
struct HeaderBudget {
    left: Cell<u64>,
    tripped: Cell<bool>,
}

impl Default for HeaderBudget {
    fn default() -> Self {
        HeaderBudget { left: Cell::new(u64::MAX), tripped: Cell::new(false) }
    }
}

struct Budgeted<R> {
    inner: R,
    budget: Rc<HeaderBudget>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.budget.left.get();
        if buf.is_empty() {
            return Ok(0);
        }
        if left == 0 {
            self.budget.tripped.set(true);
            return Err(io::Error::other("tar headers too large"));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.budget.left.set(left - n as u64);
        Ok(n)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Node {
    Dir,
    Symlink,
    Other,
}

/// The metadata of an entry, as applied to what we create.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

struct Unpacker<'a> {
    /// `dest`; every path of the layer is resolved beneath it.
    root: File,
    dest: &'a Path,
    layer: &'a str,
    options: &'a UnpackOptions,
    /// Set once everything is written: creating children changes a directory's mtime.
    dir_times: Vec<(Vec<OsString>, TimeSpec)>,
    entries: u64,
    buf: Vec<u8>,
}

impl Unpacker<'_> {
    fn hostile(&self, reason: impl Into<String>) -> Error {
        Error::HostileLayer { layer: self.layer.to_string(), reason: reason.into() }
    }

    fn full(&self, components: &[OsString]) -> PathBuf {
        let mut path = self.dest.to_path_buf();
        path.extend(components);
        path
    }

    fn apply_all<R: Read>(
        &mut self,
        archive: &mut tar::Archive<R>,
        budget: &HeaderBudget,
    ) -> Result<()> {
        let mut entries = archive.entries().map_err(Error::io(READING, self.dest))?;
        loop {
            budget.left.set(MAX_HEADER_BYTES);
            let next = entries.next();
            budget.left.set(u64::MAX);
            let mut entry = match next {
                None => return Ok(()),
                Some(Ok(entry)) => entry,
                Some(Err(_)) if budget.tripped.get() => {
                    return Err(self.hostile(format!(
                        "entry {}: headers larger than {MAX_HEADER_BYTES} bytes",
                        self.entries + 1
                    )))
                }
                Some(Err(err)) => return Err(Error::io(READING, self.dest)(err)),
            };
            self.entries += 1;
            if self.entries > self.options.max_entries {
                return Err(self.hostile(format!("more than {} entries", self.options.max_entries)));
            }
            self.apply(&mut entry)?;
            // The tar reader would skip what we left unread, outside of the header budget.
            io::copy(&mut entry, &mut io::sink()).map_err(Error::io(READING, self.dest))?;
        }
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let mut kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        // Old (v7) archives mark directories with a trailing slash alone; Go reads them so.
        if entry.header().as_old().linkflag[0] == 0 && raw.ends_with(b"/") {
            kind = tar::EntryType::Directory;
        }
        let path = self.clean(&raw, &shown, "name")?;
        let meta = self.meta(entry, &shown)?;

        if let Some(name) = path.last() {
            if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
                return self.whiteout(&path, &meta, &shown);
            }
        }
        use tar::EntryType as T;
        match kind {
            T::Directory => self.directory(&path, meta, &shown),
            T::Regular | T::Continuous | T::GNUSparse => self.regular(&path, &meta, entry, &shown),
            T::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                self.symlink(&path, &meta, target, &shown)
            }
            T::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                self.hard_link(&path, target, &shown)
            }
            T::Char | T::Block => {
                if !self.options.allow_devices {
                    return Err(self.hostile(format!("{shown}: device files are not allowed")));
                }
                let header = entry.header();
                let (Ok(Some(major)), Ok(Some(minor))) =
                    (header.device_major(), header.device_minor())
                else {
                    return Err(self.hostile(format!("{shown}: bad device numbers")));
                };
                let sflag = if kind == T::Char { SFlag::S_IFCHR } else { SFlag::S_IFBLK };
                self.node(&path, &meta, sflag, makedev(major.into(), minor.into()), &shown)
            }
            T::Fifo => self.node(&path, &meta, SFlag::S_IFIFO, 0, &shown),
            other => Err(self.hostile(format!("{shown}: unsupported entry type {other:?}"))),
        }
    }

    /// The components of an entry name or link target below the layer root: a leading `/` or
    /// `./` means the root, and `..` may not climb above it.
    fn clean(&self, raw: &[u8], shown: &str, what: &str) -> Result<Vec<OsString>> {
        if raw.len() > self.options.max_path_len {
            return Err(self.hostile(format!(
                "{what} {:?}… is longer than {} bytes",
                shown.chars().take(64).collect::<String>(),
                self.options.max_path_len
            )));
        }
        if raw.contains(&0) {
            return Err(self.hostile(format!("{what} {shown:?} contains a NUL byte")));
        }
        let mut components: Vec<OsString> = Vec::new();
        for component in raw.split(|b| *b == b'/') {
            match component {
                b"" | b"." => {}
                b".." => {
                    if components.pop().is_none() {
                        return Err(
                            self.hostile(format!("{what} {shown:?} climbs above the layer root"))
                        );
                    }
                }
                _ => components.push(OsStr::from_bytes(component).to_os_string()),
            }
        }
        Ok(components)
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Meta> {
        let header = entry.header();
        let bad = |field: &str, err: &dyn std::fmt::Display| {
            self.hostile(format!("{shown}: bad {field} in the tar header: {err}"))
        };
        let old = header.as_old();
        let mode = or_zero(header.mode().map(u64::from), &old.mode).map_err(|e| bad("mode", &e))?;
        let mode = (mode & 0o7777) as u32;
        let uid = or_zero(header.uid(), &old.uid).map_err(|e| bad("uid", &e))?;
        let uid = u32::try_from(uid).map_err(|e| bad("uid", &e))?;
        let gid = or_zero(header.gid(), &old.gid).map_err(|e| bad("gid", &e))?;
        let gid = u32::try_from(gid).map_err(|e| bad("gid", &e))?;
        let mtime = or_zero(header.mtime(), &old.mtime).map_err(|e| bad("mtime", &e))?;
        let mut mtime = TimeSpec::new(i64::try_from(mtime).map_err(|e| bad("mtime", &e))?, 0);

        let mut xattrs = Vec::new();
        if let Some(records) = entry.pax_extensions().map_err(Error::io(READING, self.dest))? {
            for record in records {
                let record = record
                    .map_err(|e| self.hostile(format!("{shown}: malformed PAX record: {e}")))?;
                let key = record.key_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((OsString::from_vec(name.to_vec()), record.value_bytes().to_vec()));
                } else if key == b"mtime" {
                    // Sub-second precision; a malformed value keeps the header's.
                    if let Some(precise) = parse_pax_time(record.value_bytes()) {
                        mtime = precise;
                    }
                }
            }
        }
        Ok(Meta { mode, uid, gid, mtime, xattrs })
    }

    /// Opens the directory at `components` inside the root, following symlinks inside the root
    /// only; with `create`, missing directories are created (as containerd does: layers often
    /// list a file without its parents).
    fn open_dir(&self, components: &[OsString], create: bool, shown: &str) -> Result<File> {
        let whole: PathBuf = components.iter().collect();
        match self.resolve_dir(&whole) {
            Ok(dir) => return Ok(dir),
            Err(err) if create && err.kind() == io::ErrorKind::NotFound => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(self.hostile(format!("{shown}: {} does not exist", whole.display())))
            }
            Err(err) => return Err(self.unresolvable(err, &whole, shown)),
        }
        let mut dir = self.root.try_clone().map_err(Error::io("opening", self.dest))?;
        let mut prefix = PathBuf::new();
        for component in components {
            prefix.push(component);
            match self.resolve_dir(&prefix) {
                Ok(next) => {
                    dir = next;
                    continue;
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(self.unresolvable(err, &prefix, shown)),
            }
            match mkdirat(&dir, component.as_os_str(), Mode::from_bits_truncate(0o755)) {
                Ok(()) => {}
                // It exists yet resolving it found nothing: a symlink to something missing.
                Err(Errno::EEXIST) => {
                    return Err(self.hostile(format!(
                        "{shown}: {} is a symlink to nothing in this layer",
                        prefix.display()
                    )))
                }
                Err(errno) => {
                    return Err(Error::io("creating directory", self.dest.join(&prefix))(
                        errno.into(),
                    ))
                }
            }
            // Independent of the umask.
            fchmodat(
                &dir,
                component.as_os_str(),
                Mode::from_bits_truncate(0o755),
                FchmodatFlags::NoFollowSymlink,
            )
            .map_err(|errno| {
                Error::io("changing mode of", self.dest.join(&prefix))(errno.into())
            })?;
            dir =
                self.resolve_dir(&prefix).map_err(Error::io("opening", self.dest.join(&prefix)))?;
        }
        Ok(dir)
    }

    /// A parent path that loops or runs into a non-directory is the layer's fault.
    fn unresolvable(&self, err: io::Error, path: &Path, shown: &str) -> Error {
        match err.raw_os_error() {
            Some(libc::ELOOP) => {
                self.hostile(format!("{shown}: {} is a symlink loop", path.display()))
            }
            Some(libc::ENOTDIR) => {
                self.hostile(format!("{shown}: {} is not a directory", path.display()))
            }
            _ => Error::io("resolving", self.dest.join(path))(err),
        }
    }

    /// The containment primitive: `path` is resolved by the kernel as if the root were `/`.
    fn resolve_dir(&self, path: &Path) -> io::Result<File> {
        if path.as_os_str().is_empty() {
            return self.root.try_clone();
        }
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let mut attempts = 0;
        loop {
            match openat2(&self.root, path, how) {
                Ok(fd) => return Ok(File::from(fd)),
                // RESOLVE_IN_ROOT fails with EAGAIN when a rename anywhere raced the lookup.
                Err(Errno::EAGAIN) if attempts < 16 => attempts += 1,
                Err(errno) => return Err(errno.into()),
            }
        }
    }

    /// The parent directory (created if missing) and the last component of an entry path.
    fn parent_of<'p>(&self, path: &'p [OsString], shown: &str) -> Result<(File, &'p OsStr)> {
        let Some((name, parent)) = path.split_last() else {
            return Err(self.hostile(format!("{shown}: only a directory may name the layer root")));
        };
        Ok((self.open_dir(parent, true, shown)?, name.as_os_str()))
    }

    /// Makes room for a new entry at `name`: an earlier entry is replaced, except that a
    /// directory stays (with its children) when the new entry is a directory too. Returns whether
    /// a directory was kept.
    fn clear(&self, parent: &File, name: &OsStr, keep_dir: bool, full: &Path) -> Result<bool> {
        let stat = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => return Ok(false),
            Err(errno) => return Err(Error::io("inspecting", full)(errno.into())),
        };
        if is_dir(&stat) {
            if keep_dir {
                return Ok(true);
            }
            remove_all_at(parent, name).map_err(Error::io("replacing", full))?;
        } else {
            unlink_at(parent, name, false).map_err(Error::io("replacing", full))?;
        }
        Ok(false)
    }

    fn whiteout(&self, path: &[OsString], meta: &Meta, shown: &str) -> Result<()> {
        let Some((name, parent)) = path.split_last() else {
            return Ok(());
        };
        let name = name.as_bytes();
        if name == OPAQUE_MARKER {
            let dir = self.open_dir(parent, true, shown)?;
            return dir
                .set_xattr(OPAQUE_XATTR, b"y")
                .map_err(Error::io("marking opaque", self.full(parent)));
        }
        if name.starts_with(WHITEOUT_META_PREFIX) {
            return Ok(());
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(self.hostile(format!("{shown}: whiteout of no file")));
        }
        let hidden = OsStr::from_bytes(hidden);
        let dir = self.open_dir(parent, true, shown)?;
        let mut full = self.full(parent);
        full.push(hidden);
        self.clear(&dir, hidden, false, &full)?;
        // overlayfs' whiteout: a character device 0/0.
        mknodat(&dir, hidden, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
            .map_err(|errno| Error::io("creating whiteout", &full)(errno.into()))?;
        fchownat(
            &dir,
            hidden,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|errno| Error::io("changing owner of", &full)(errno.into()))
    }

    fn directory(&mut self, path: &[OsString], meta: Meta, shown: &str) -> Result<()> {
        if path.is_empty() {
            self.set_meta(&self.root, OsStr::new("."), &meta, Node::Dir, self.dest)?;
        } else {
            let (dir, name) = self.parent_of(path, shown)?;
            let full = self.full(path);
            if !self.clear(&dir, name, true, &full)? {
                mkdirat(&dir, name, Mode::from_bits_truncate(0o700))
                    .map_err(|errno| Error::io("creating directory", &full)(errno.into()))?;
            }
            self.set_meta(&dir, name, &meta, Node::Dir, &full)?;
        }
        self.dir_times.push((path.to_vec(), meta.mtime));
        Ok(())
    }

    fn regular<R: Read>(
        &mut self,
        path: &[OsString],
        meta: &Meta,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<()> {
        let (dir, name) = self.parent_of(path, shown)?;
        let full = self.full(path);
        self.clear(&dir, name, false, &full)?;
        let fd = openat(
            &dir,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|errno| Error::io("creating", &full)(errno.into()))?;
        let mut file = File::from(fd);
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(Error::io(READING, self.dest)(err)),
            };
            file.write_all(&self.buf[..n]).map_err(Error::io("writing", &full))?;
        }
        drop(file);
        self.set_meta(&dir, name, meta, Node::Other, &full)
    }

    fn symlink(
        &self,
        path: &[OsString],
        meta: &Meta,
        target: Option<Vec<u8>>,
        shown: &str,
    ) -> Result<()> {
        let Some(target) = target.filter(|t| !t.is_empty()) else {
            return Err(self.hostile(format!("{shown}: symlink without a target")));
        };
        if target.len() > self.options.max_path_len || target.contains(&0) {
            return Err(self.hostile(format!("{shown}: symlink target too long or with NUL")));
        }
        let (dir, name) = self.parent_of(path, shown)?;
        let full = self.full(path);
        self.clear(&dir, name, false, &full)?;
        // Stored as it is: it is resolved inside the container, never by us.
        symlinkat(OsStr::from_bytes(&target), &dir, name)
            .map_err(|errno| Error::io("creating symlink", &full)(errno.into()))?;
        self.set_meta(&dir, name, meta, Node::Symlink, &full)
    }

    /// The target is a path of this layer. A link shares its target's inode, so the metadata of
    /// the link entry is not applied (it would overwrite the target's).
    fn hard_link(&self, path: &[OsString], target: Option<Vec<u8>>, shown: &str) -> Result<()> {
        let Some(target) = target else {
            return Err(self.hostile(format!("{shown}: hard link without a target")));
        };
        let target_shown = String::from_utf8_lossy(&target).into_owned();
        let target = self.clean(&target, &target_shown, "hard link target")?;
        let Some((target_name, target_parent)) = target.split_last() else {
            return Err(self.hostile(format!("{shown}: hard link to the layer root")));
        };
        let missing = || {
            self.hostile(format!("{shown}: hard link target {target_shown:?} is not in the layer"))
        };
        let target_dir = match self.open_dir(target_parent, false, shown) {
            Ok(dir) => dir,
            Err(Error::HostileLayer { .. }) => return Err(missing()),
            Err(err) => return Err(err),
        };
        let target_stat =
            match fstatat(&target_dir, target_name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(Errno::ENOENT) => return Err(missing()),
                Err(errno) => {
                    return Err(Error::io("inspecting", self.full(&target))(errno.into()))
                }
            };
        if is_dir(&target_stat) {
            return Err(self.hostile(format!("{shown}: hard link to directory {target_shown:?}")));
        }

        let (dir, name) = self.parent_of(path, shown)?;
        let full = self.full(path);
        if let Ok(existing) = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            if existing.st_dev == target_stat.st_dev && existing.st_ino == target_stat.st_ino {
                return Ok(());
            }
        }
        self.clear(&dir, name, false, &full)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink is a link to the symlink itself.
        linkat(&target_dir, target_name.as_os_str(), &dir, name, AtFlags::empty())
            .map_err(|errno| Error::io("creating hard link", &full)(errno.into()))
    }

    fn node(
        &self,
        path: &[OsString],
        meta: &Meta,
        kind: SFlag,
        device: libc::dev_t,
        shown: &str,
    ) -> Result<()> {
        let (dir, name) = self.parent_of(path, shown)?;
        let full = self.full(path);
        self.clear(&dir, name, false, &full)?;
        mknodat(&dir, name, kind, Mode::from_bits_truncate(0o600), device)
            .map_err(|errno| Error::io("creating", &full)(errno.into()))?;
        self.set_meta(&dir, name, meta, Node::Other, &full)
    }

    /// Owner first: chown clears setuid/setgid and security.capability, which come after.
    fn set_meta(
        &self,
        dir: &File,
        name: &OsStr,
        meta: &Meta,
        node: Node,
        full: &Path,
    ) -> Result<()> {
        fchownat(
            dir,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|errno| Error::io("changing owner of", full)(errno.into()))?;
        // Linux has no mode of its own for symlinks.
        if node != Node::Symlink {
            fchmodat(
                dir,
                name,
                Mode::from_bits_truncate(meta.mode),
                FchmodatFlags::NoFollowSymlink,
            )
            .map_err(|errno| Error::io("changing mode of", full)(errno.into()))?;
        }
        if !meta.xattrs.is_empty() {
            // lsetxattr on the name inside the parent's fd: the last component is not followed.
            let at = proc_path(dir).join(name);
            for (key, value) in &meta.xattrs {
                if OVERLAY_XATTR_PREFIXES.iter().any(|p| key.as_bytes().starts_with(p)) {
                    debug!(layer = self.layer, path = %full.display(), key = ?key, "dropped an overlay xattr of the layer");
                    continue;
                }
                if let Err(err) = xattr::set(&at, key, value) {
                    // As containerd: a file system without xattrs (of this namespace) loses them.
                    if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
                        warn!(layer = self.layer, path = %full.display(), key = ?key, "xattr not supported here, dropped");
                        continue;
                    }
                    return Err(Error::Io {
                        what: "setting an extended attribute on",
                        path: full.to_path_buf(),
                        source: io::Error::new(
                            err.kind(),
                            format!("{}: {err}", key.to_string_lossy()),
                        ),
                    });
                }
            }
        }
        if node != Node::Dir {
            utimensat(dir, name, &meta.mtime, &meta.mtime, UtimensatFlags::NoFollowSymlink)
                .map_err(|errno| Error::io("setting times of", full)(errno.into()))?;
        }
        Ok(())
    }

    fn set_dir_times(&mut self) -> Result<()> {
        for (path, time) in std::mem::take(&mut self.dir_times) {
            let full = self.full(&path);
            let (dir, name) = match path.split_last() {
                None => (
                    self.root.try_clone().map_err(Error::io("opening", self.dest))?,
                    OsStr::new("."),
                ),
                Some((name, parent)) => {
                    let parent: PathBuf = parent.iter().collect();
                    match self.resolve_dir(&parent) {
                        Ok(dir) => (dir, name.as_os_str()),
                        // Replaced by a later entry.
                        Err(err)
                            if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) =>
                        {
                            continue
                        }
                        Err(err) => return Err(Error::io("resolving", &full)(err)),
                    }
                }
            };
            match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(stat) if is_dir(&stat) => {}
                _ => continue,
            }
            utimensat(&dir, name, &time, &time, UtimensatFlags::NoFollowSymlink)
                .map_err(|errno| Error::io("setting times of", &full)(errno.into()))?;
        }
        Ok(())
    }
}

/// Some writers leave numeric fields empty; Go's archive/tar (so containerd) reads them as 0.
fn or_zero(parsed: io::Result<u64>, raw: &[u8]) -> io::Result<u64> {
    match parsed {
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        other => other,
    }
}

/// A PAX time: decimal seconds since the epoch with an optional fraction, possibly negative.
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let text = std::str::from_utf8(value).ok()?;
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let mut secs: i64 = whole.parse().ok()?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = &fraction[..fraction.len().min(9)];
    let mut nanos: i64 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
    for _ in digits.len()..9 {
        nanos *= 10;
    }
    if text.starts_with('-') && nanos > 0 {
        secs -= 1;
        nanos = 1_000_000_000 - nanos;
    }
    Some(TimeSpec::new(secs, nanos))
}

pub(crate) fn is_dir(stat: &FileStat) -> bool {
    stat.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// A path naming the directory open as `dir`, to list it or to reach a name inside it with
/// path-only calls (lsetxattr) without resolving anything else again.
pub(crate) fn proc_path(dir: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

pub(crate) fn open_subdir(parent: &File, name: &OsStr) -> io::Result<File> {
    openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
    .map_err(io::Error::from)
}

fn unlink_at(parent: &File, name: &OsStr, dir: bool) -> io::Result<()> {
    let flag = if dir { UnlinkatFlags::RemoveDir } else { UnlinkatFlags::NoRemoveDir };
    match unlinkat(parent, name, flag) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// Removes `name` in `parent` and everything below it, never following a symlink. Holds one
/// directory fd at a time (climbing back with `..`), so a layer's deep nesting cannot exhaust
/// the fd limit as a recursive removal would. Missing is fine.
pub(crate) fn remove_all_at(parent: &File, name: &OsStr) -> io::Result<()> {
    let stat = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::ENOENT) => return Ok(()),
        Err(errno) => return Err(errno.into()),
    };
    if !is_dir(&stat) {
        return unlink_at(parent, name, false);
    }
    let mut current = open_subdir(parent, name)?;
    // Per level: the directory's name in its parent and its subdirectories left to remove.
    let mut stack = vec![(name.to_os_string(), clear_files(&current)?)];
    while let Some((_, pending)) = stack.last_mut() {
        if let Some(child) = pending.pop() {
            match open_subdir(&current, &child) {
                Ok(dir) => {
                    let subdirs = clear_files(&dir)?;
                    current = dir;
                    stack.push((child, subdirs));
                }
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
                Err(err) if matches!(err.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
                    unlink_at(&current, &child, false)?
                }
                Err(err) => return Err(err),
            }
            continue;
        }
        let Some((done, _)) = stack.pop() else { break };
        if stack.is_empty() {
            return unlink_at(parent, &done, true);
        }
        current = open_subdir(&current, OsStr::new(".."))?;
        unlink_at(&current, &done, true)?;
    }
    Ok(())
}

/// Unlinks everything in `dir` but its subdirectories, and returns their names.
fn clear_files(dir: &File) -> io::Result<Vec<OsString>> {
    let mut subdirs = Vec::new();
    for entry in std::fs::read_dir(proc_path(dir))? {
        let entry = entry?;
        let name = entry.file_name();
        if entry.file_type()?.is_dir() {
            subdirs.push(name);
        } else {
            unlink_at(dir, &name, false)?;
        }
    }
    Ok(subdirs)
}

#[cfg(test)]
mod tests;
