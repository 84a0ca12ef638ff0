//! The user a container runs as: its security context and its image's `USER`, with names and
//! groups looked up in the image's `/etc/passwd` and `/etc/group` as containerd does.
//!
//! The image's files are read from its layers (overlay lowerdirs, top first) without mounting
//! them: each path is looked up the way overlayfs would, one component at a time, whiteouts and
//! opaque directories hiding lower layers. Links are resolved by us, in the merged view, with
//! `..` stopping at the image's root; the kernel never follows a link itself (every open is
//! `openat2` of a single name with `RESOLVE_NO_SYMLINKS`), so a layer's link cannot lead to a
//! file of the host, while a link from one layer to a file of another still works.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, readlinkat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::libc;
use nix::sys::stat::{fstat, fstatat, FileStat};

use crate::container::types::{ResolvedUser, SecurityContext, SupplementalGroupsPolicy};
use crate::error::{Error, Result};

/// /etc/passwd and /etc/group are small; anything larger is not one to trust.
const MAX_FILE_SIZE: u64 = 1 << 20;
/// As the kernel's limit on links in one lookup.
const MAX_LINKS: usize = 40;
/// Bounds the directories held open while a path is being resolved.
const MAX_DEPTH: usize = 256;
const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque\0";

/// A directory of the merged view: its directory in each layer that contributes to it, top
/// first, down to the first opaque one.
type MergedDir = Vec<(usize, File)>;

enum Entry {
    Missing,
    Dir(MergedDir),
    File(File),
    Link(OsString),
    /// A device, socket or FIFO.
    Special,
}

/// Reads a file of the image (e.g. "etc/passwd") through its layers, top first; a whiteout
/// (char device 0/0 named like the file) or an opaque parent dir (xattr
/// `trusted.overlay.opaque=y`) hides lower layers. `None`: the image has no such file.
pub fn read_image_file(layers: &[PathBuf], path: &str) -> Result<Option<Vec<u8>>> {
    let shown = || format!("/{}", path.trim_start_matches('/'));
    let mut root: MergedDir = Vec::new();
    for (index, layer) in layers.iter().enumerate() {
        let dir = File::open(layer).map_err(Error::io("opening image layer", layer))?;
        let opaque = is_opaque(&dir);
        root.push((index, dir));
        if opaque {
            break;
        }
    }

    // The merged directories from the root down to where the lookup is.
    let mut stack: Vec<MergedDir> = vec![root];
    let mut pending: VecDeque<OsString> = components(Path::new(path));
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let Some(current) = stack.last() else { break };
        match lookup(current, &name, layers)? {
            Entry::Missing => return Ok(None),
            Entry::Dir(dirs) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(Error::InvalidArgument(format!(
                        "{} in the image is nested too deeply",
                        shown()
                    )));
                }
                stack.push(dirs);
            }
            Entry::Link(target) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Error::InvalidArgument(format!(
                        "{} in the image goes through too many links",
                        shown()
                    )));
                }
                let target = Path::new(&target);
                if target.is_absolute() {
                    stack.truncate(1);
                }
                for component in components(target).into_iter().rev() {
                    pending.push_front(component);
                }
            }
            Entry::File(file) => {
                if !pending.is_empty() {
                    // A file where a directory should be: nothing below it.
                    return Ok(None);
                }
                return read_capped(file, &shown()).map(Some);
            }
            Entry::Special => {
                if !pending.is_empty() {
                    return Ok(None);
                }
                return Err(Error::InvalidArgument(format!(
                    "{} in the image is not a regular file",
                    shown()
                )));
            }
        }
    }
    Err(Error::InvalidArgument(format!("{} in the image is a directory", shown())))
}

/// The normal components of a path, `..` kept (resolved against the merged view, not here).
fn components(path: &Path) -> VecDeque<OsString> {
    path.as_os_str()
        .as_bytes()
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| OsStr::from_bytes(c).to_os_string())
        .collect()
}

/// Looks `name` up in a merged directory as overlayfs does: the topmost layer that has it
/// decides what it is; a directory there merges with directories of the same name below,
/// until an opaque one, a whiteout or a non-directory.
fn lookup(dirs: &MergedDir, name: &OsStr, layers: &[PathBuf]) -> Result<Entry> {
    let mut merged: MergedDir = Vec::new();
    for (index, dir) in dirs {
        let at = || layers.get(*index).map(|l| l.join(name)).unwrap_or_default();
        let stat = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => continue,
            Err(errno) => return Err(Error::io("looking up", at())(errno.into())),
        };
        let kind = stat.st_mode & libc::S_IFMT;
        if !merged.is_empty() {
            if kind != libc::S_IFDIR {
                break;
            }
        } else {
            match kind {
                libc::S_IFDIR => {}
                libc::S_IFCHR if stat.st_rdev == 0 => return Ok(Entry::Missing),
                libc::S_IFLNK => {
                    let target =
                        readlinkat(dir, name).map_err(|e| Error::io("reading", at())(e.into()))?;
                    return Ok(Entry::Link(target));
                }
                libc::S_IFREG => {
                    let file = open_at(dir, name, OFlag::O_RDONLY | OFlag::O_NONBLOCK)
                        .map_err(Error::io("opening", at()))?;
                    // The lookup and the open are two steps; what was opened is what counts.
                    let opened =
                        fstat(&file).map_err(|e| Error::io("inspecting", at())(e.into()))?;
                    if !same_file(&stat, &opened) {
                        return Err(Error::Internal(format!(
                            "{} changed while it was being read",
                            at().display()
                        )));
                    }
                    return Ok(Entry::File(file));
                }
                _ => return Ok(Entry::Special),
            }
        }
        let dir = open_at(dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(Error::io("opening", at()))?;
        let opaque = is_opaque(&dir);
        merged.push((*index, dir));
        if opaque {
            break;
        }
    }
    Ok(if merged.is_empty() { Entry::Missing } else { Entry::Dir(merged) })
}

fn same_file(a: &FileStat, b: &FileStat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino && (b.st_mode & libc::S_IFMT) == libc::S_IFREG
}

/// Opens one name inside `dir`: never a link, never `..`, never anything outside it.
fn open_at(dir: &File, name: &OsStr, flags: OFlag) -> io::Result<File> {
    let how = OpenHow::new().flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    );
    let mut attempts = 0;
    loop {
        match openat2(dir, name, how) {
            Ok(fd) => return Ok(File::from(fd)),
            // openat2 fails with EAGAIN when a rename anywhere raced the lookup.
            Err(Errno::EAGAIN) if attempts < 16 => attempts += 1,
            Err(errno) => return Err(errno.into()),
        }
    }
}

fn is_opaque(dir: &File) -> bool {
    let mut value = [0u8; 2];
    // SAFETY: the name is NUL-terminated, the buffer is ours and its length is passed.
    let len = unsafe {
        libc::fgetxattr(
            dir.as_raw_fd(),
            OPAQUE_XATTR.as_ptr().cast(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    len == 1 && value[0] == b'y'
}

fn read_capped(file: File, shown: &str) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut data)
        .map_err(Error::io("reading image file", shown))?;
    if data.len() as u64 > MAX_FILE_SIZE {
        return Err(Error::InvalidArgument(format!(
            "{shown} in the image is larger than {MAX_FILE_SIZE} bytes"
        )));
    }
    Ok(data)
}

#[derive(Debug, Clone)]
struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Debug, Clone)]
struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// The useful lines of a colon-separated database; comments, blank lines and lines with too
/// few fields are skipped, as libc does.
fn records(text: &str, min_fields: usize) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|line| line.split(':').collect::<Vec<_>>())
        .filter(move |fields| fields.len() >= min_fields && !fields[0].is_empty())
}

fn parse_passwd(text: &str) -> Vec<Passwd> {
    records(text, 4)
        .filter_map(|f| {
            Some(Passwd {
                name: f[0].to_string(),
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
                home: f.get(5).map(|h| h.trim().to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<Group> {
    records(text, 3)
        .filter_map(|f| {
            Some(Group {
                name: f[0].to_string(),
                gid: f[2].trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',').map(str::trim).filter(|m| !m.is_empty()).map(String::from)
                    })
                    .into_iter()
                    .flatten()
                    .collect(),
            })
        })
        .collect()
}

/// The image's user databases, read when first needed: a numeric user with no groups to find
/// needs neither.
struct ImageFiles<'a> {
    layers: &'a [PathBuf],
    passwd: Option<Vec<Passwd>>,
    group: Option<Vec<Group>>,
}

impl ImageFiles<'_> {
    fn passwd(&mut self) -> Result<&[Passwd]> {
        if self.passwd.is_none() {
            let data = read_image_file(self.layers, "etc/passwd")?.unwrap_or_default();
            self.passwd = Some(parse_passwd(&String::from_utf8_lossy(&data)));
        }
        Ok(self.passwd.as_deref().unwrap_or_default())
    }

    fn group(&mut self) -> Result<&[Group]> {
        if self.group.is_none() {
            let data = read_image_file(self.layers, "etc/group")?.unwrap_or_default();
            self.group = Some(parse_group(&String::from_utf8_lossy(&data)));
        }
        Ok(self.group.as_deref().unwrap_or_default())
    }

    fn user_by_name(&mut self, name: &str) -> Result<Passwd> {
        self.passwd()?.iter().find(|p| p.name == name).cloned().ok_or_else(|| {
            Error::InvalidArgument(format!("user {name:?} not found in the image's /etc/passwd"))
        })
    }

    fn user_by_uid(&mut self, uid: u32) -> Result<Option<Passwd>> {
        Ok(self.passwd()?.iter().find(|p| p.uid == uid).cloned())
    }

    fn gid_by_name(&mut self, name: &str) -> Result<u32> {
        self.group()?.iter().find(|g| g.name == name).map(|g| g.gid).ok_or_else(|| {
            Error::InvalidArgument(format!("group {name:?} not found in the image's /etc/group"))
        })
    }
}

/// An id from the CRI (an int64) or the image (a string), checked to be a valid uid/gid.
fn id(value: i64, what: &str) -> Result<u32> {
    u32::try_from(value)
        .ok()
        .filter(|v| *v != u32::MAX)
        .ok_or_else(|| Error::InvalidArgument(format!("{what} {value} is not a valid id")))
}

/// A numeric part of a user string, if it is one.
fn numeric(part: &str, what: &str) -> Result<Option<u32>> {
    match part.parse::<i64>() {
        Ok(value) => id(value, what).map(Some),
        Err(_) => Ok(None),
    }
}

/// The uid, gid and user name (for its groups) of a `USER`-style string: `""`, `name`, `uid`,
/// `uid:gid`, `name:group`, `uid:group`, `name:gid`.
fn parse_user(spec: &str, files: &mut ImageFiles) -> Result<(u32, u32, Option<String>)> {
    let spec = if spec.is_empty() { "0" } else { spec };
    let (user, group) = match spec.split_once(':') {
        Some((_, group)) if group.contains(':') => {
            return Err(Error::InvalidArgument(format!("invalid user {spec:?}")))
        }
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(Error::InvalidArgument(format!("invalid user {spec:?}")));
    }
    let (uid, passwd_gid, name) = match numeric(user, "uid")? {
        Some(uid) => {
            let entry = files.user_by_uid(uid)?;
            (uid, entry.as_ref().map_or(0, |e| e.gid), entry.map(|e| e.name))
        }
        None => {
            let entry = files.user_by_name(user)?;
            (entry.uid, entry.gid, Some(entry.name))
        }
    };
    let gid = match group {
        None => passwd_gid,
        Some(group) => match numeric(group, "gid")? {
            Some(gid) => gid,
            None => files.gid_by_name(group)?,
        },
    };
    Ok((uid, gid, name))
}

/// Resolves the user of a container: `run_as_user`, else `run_as_username`, else the image's
/// `USER`; `run_as_group` then overrides the group. The additional groups are the primary one,
/// the image's groups that list the user (by name) as a member (not under the Strict policy),
/// then `supplemental_groups`.
pub fn resolve(
    security: &SecurityContext,
    image_user: &str,
    layers: &[PathBuf],
) -> Result<ResolvedUser> {
    let run_as_user = security.run_as_user.map(|v| id(v, "run_as_user")).transpose()?;
    let run_as_group = security.run_as_group.map(|v| id(v, "run_as_group")).transpose()?;
    let supplemental = security
        .supplemental_groups
        .iter()
        .map(|g| id(*g, "supplemental group"))
        .collect::<Result<Vec<_>>>()?;
    let mut files = ImageFiles { layers, passwd: None, group: None };

    let (uid, gid, name) = match run_as_user {
        Some(uid) => {
            let entry = files.user_by_uid(uid)?;
            (uid, entry.as_ref().map_or(0, |e| e.gid), entry.map(|e| e.name))
        }
        None if !security.run_as_username.is_empty() => {
            parse_user(&security.run_as_username, &mut files)?
        }
        None => parse_user(image_user, &mut files)?,
    };
    let gid = run_as_group.unwrap_or(gid);

    let mut additional_gids = vec![gid];
    let merge = security.supplemental_groups_policy == SupplementalGroupsPolicy::Merge;
    if let Some(name) = name.filter(|_| merge) {
        // As containerd: the group named after the user is its primary group, not one of
        // its supplementary ones.
        for group in files.group()? {
            if group.name != name && group.members.contains(&name) {
                additional_gids.push(group.gid);
            }
        }
    }
    additional_gids.extend(supplemental);
    let mut seen = std::collections::HashSet::new();
    additional_gids.retain(|g| seen.insert(*g));

    Ok(ResolvedUser { uid, gid, additional_gids })
}

/// The `HOME` of user `uid`: its home directory in the image's `/etc/passwd`, else `/`, as runc
/// sets it for a process whose environment has none.
pub fn home(uid: u32, layers: &[PathBuf]) -> Result<String> {
    let mut files = ImageFiles { layers, passwd: None, group: None };
    let home = files.user_by_uid(uid)?.map(|p| p.home).filter(|h| !h.is_empty());
    Ok(home.unwrap_or_else(|| "/".to_string()))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use nix::sys::stat::{makedev, mknod, Mode, SFlag};

    use super::*;
    use crate::error::ErrorKind;

    /// Layers under one temp dir, top first, as `read_image_file` takes them.
    struct Image {
        _dir: tempfile::TempDir,
        layers: Vec<PathBuf>,
    }

    impl Image {
        fn new(count: usize) -> Image {
            let dir = tempfile::tempdir().unwrap();
            let layers: Vec<PathBuf> =
                (0..count).map(|i| dir.path().join(format!("l{i}"))).collect();
            for l in &layers {
                fs::create_dir(l).unwrap();
            }
            Image { _dir: dir, layers }
        }

        fn path(&self, layer: usize, path: &str) -> PathBuf {
            self.layers[layer].join(path)
        }

        fn file(&self, layer: usize, path: &str, data: &str) -> &Self {
            let p = self.path(layer, path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, data).unwrap();
            self
        }

        fn dir(&self, layer: usize, path: &str) -> &Self {
            fs::create_dir_all(self.path(layer, path)).unwrap();
            self
        }

        fn link(&self, layer: usize, path: &str, target: &str) -> &Self {
            let p = self.path(layer, path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            symlink(target, p).unwrap();
            self
        }

        fn whiteout(&self, layer: usize, path: &str) -> &Self {
            let p = self.path(layer, path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            mknod(&p, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), makedev(0, 0)).unwrap();
            self
        }

        fn opaque(&self, layer: usize, path: &str) -> &Self {
            let p = self.path(layer, path);
            fs::create_dir_all(&p).unwrap();
            let dir = File::open(&p).unwrap();
            // SAFETY: a NUL-terminated name and a buffer of the length passed.
            let rc = unsafe {
                libc::fsetxattr(
                    dir.as_raw_fd(),
                    OPAQUE_XATTR.as_ptr().cast(),
                    b"y".as_ptr().cast(),
                    1,
                    0,
                )
            };
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
            self
        }

        fn read(&self, path: &str) -> Option<String> {
            read_image_file(&self.layers, path).unwrap().map(|d| String::from_utf8(d).unwrap())
        }
    }

    #[test]
    fn layers_top_first_with_whiteouts_and_opaque_dirs() {
        let image = Image::new(3);
        image
            .file(2, "etc/passwd", "bottom")
            .file(2, "etc/group", "bottom group")
            .file(2, "etc/shadow", "bottom shadow")
            .file(2, "var/lib/x", "x")
            .file(2, "opt/a", "bottom a")
            .file(1, "etc/passwd", "middle")
            .whiteout(1, "etc/group")
            .whiteout(1, "var")
            .opaque(1, "opt")
            .file(1, "opt/b", "middle b")
            .file(0, "etc/hostname", "top");
        assert_eq!(image.read("etc/passwd").as_deref(), Some("middle"));
        assert_eq!(image.read("/etc/passwd").as_deref(), Some("middle"));
        assert_eq!(image.read("etc/shadow").as_deref(), Some("bottom shadow"));
        assert_eq!(image.read("etc/hostname").as_deref(), Some("top"));
        assert_eq!(image.read("etc/group"), None);
        assert_eq!(image.read("var/lib/x"), None);
        assert_eq!(image.read("opt/a"), None);
        assert_eq!(image.read("opt/b").as_deref(), Some("middle b"));
        assert_eq!(image.read("etc/nothing"), None);
        assert_eq!(image.read("etc/passwd/x"), None);
        // A file over a directory ends the merge: the lower dir's children are gone.
        image.file(0, "opt", "a file now");
        assert_eq!(image.read("opt/b"), None);
        // A directory above a whiteout starts afresh.
        image.dir(0, "var/lib");
        assert_eq!(image.read("var/lib/x"), None);
        // Deleted, then recreated above the whiteout.
        image.file(0, "etc/group", "top group");
        assert_eq!(image.read("etc/group").as_deref(), Some("top group"));

        let err = read_image_file(&image.layers, "etc").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn links_resolve_inside_the_image() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        fs::write(&secret, "host secret").unwrap();
        let depth = secret.components().count();
        let climb = "../".repeat(depth + 3);

        let image = Image::new(2);
        image
            .file(1, "etc/shadow", "image shadow")
            .file(1, "usr/lib/passwd", "real passwd")
            .link(0, "etc/passwd", "/../../etc/shadow")
            .link(0, "etc/group", &format!("{climb}etc/shadow"))
            .link(0, "etc/hosts", &secret.display().to_string())
            .link(0, "etc/hostname", &format!("/..{}", secret.display()))
            .link(0, "lib", "usr/lib")
            .link(0, "etc/alt", "../lib/passwd")
            .link(0, "etc/loop", "loop")
            .link(0, "etc/absolute-dir", "/usr/lib/");
        assert_eq!(image.read("etc/passwd").as_deref(), Some("image shadow"));
        assert_eq!(image.read("etc/group").as_deref(), Some("image shadow"));
        assert_eq!(image.read("etc/hosts"), None);
        assert_eq!(image.read("etc/hostname"), None);
        assert_eq!(image.read("lib/passwd").as_deref(), Some("real passwd"));
        assert_eq!(image.read("etc/alt").as_deref(), Some("real passwd"));
        assert_eq!(image.read("etc/absolute-dir/passwd").as_deref(), Some("real passwd"));
        assert_eq!(image.read("../../etc/shadow").as_deref(), Some("image shadow"));
        let err = read_image_file(&image.layers, "etc/loop").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("links"), "{err}");

        // A link in a directory that is itself reached through a link out of the layer.
        let image = Image::new(1);
        image.link(0, "etc", &outside.path().display().to_string());
        assert_eq!(image.read("etc/secret"), None);
    }

    #[test]
    fn size_cap_and_special_files() {
        let image = Image::new(1);
        image.file(0, "etc/passwd", &"x".repeat(MAX_FILE_SIZE as usize + 1));
        let err = read_image_file(&image.layers, "etc/passwd").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        image.file(0, "etc/group", &"x".repeat(MAX_FILE_SIZE as usize));
        assert_eq!(image.read("etc/group").unwrap().len(), MAX_FILE_SIZE as usize);
        nix::unistd::mkfifo(&image.path(0, "etc/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let err = read_image_file(&image.layers, "etc/fifo").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let err = read_image_file(&[image.path(0, "no-such-layer")], "etc/passwd").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
    }

    #[test]
    fn lenient_parsing() {
        let passwd = "\
# comment
root:x:0:0:root:/root:/bin/sh

broken line
nobody:x:65534:65534::/:/sbin/nologin
bad:x:notanumber:1::/:
:x:5:5::/:
app:x:1000:1000\r
dup:x:1000:7::/:
";
        let users = parse_passwd(passwd);
        let names: Vec<(&str, u32, u32)> =
            users.iter().map(|u| (u.name.as_str(), u.uid, u.gid)).collect();
        assert_eq!(
            names,
            [("root", 0, 0), ("nobody", 65534, 65534), ("app", 1000, 1000), ("dup", 1000, 7)]
        );
        let group = "root:x:0:\nwheel:x:10:root, app\nbad\nstaff:x:50\n#x:x:1:app\n";
        let groups = parse_group(group);
        let got: Vec<(&str, u32, Vec<String>)> =
            groups.iter().map(|g| (g.name.as_str(), g.gid, g.members.clone())).collect();
        assert_eq!(
            got,
            [
                ("root", 0, vec![]),
                ("wheel", 10, vec!["root".to_string(), "app".to_string()]),
                ("staff", 50, vec![])
            ]
        );
    }

    #[test]
    fn resolve_users() {
        let image = Image::new(2);
        image
            .file(
                1,
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n\
                 web:x:33:33::/var/www:/bin/false\n",
            )
            .file(
                1,
                "etc/group",
                "root:x:0:\nwheel:x:10:root,app\napp:x:1001:app\ndocker:x:999:app,web\n\
                 www:x:33:\naudio:x:29:web\n",
            );
        struct Case {
            user: Option<i64>,
            group: Option<i64>,
            username: &'static str,
            image_user: &'static str,
            supplemental: &'static [i64],
            want: std::result::Result<(u32, u32, &'static [u32]), &'static str>,
        }
        let case = |image_user: &'static str, want| Case {
            user: None,
            group: None,
            username: "",
            image_user,
            supplemental: &[],
            want,
        };
        let cases = [
            case("", Ok((0, 0, &[0, 10]))),
            case("app", Ok((1000, 1001, &[1001, 10, 999]))),
            case("1000", Ok((1000, 1001, &[1001, 10, 999]))),
            case("4242", Ok((4242, 0, &[0]))),
            case("1000:5", Ok((1000, 5, &[5, 10, 999]))),
            case("app:www", Ok((1000, 33, &[33, 10, 999]))),
            case("33:audio", Ok((33, 29, &[29, 999]))),
            case("web:7", Ok((33, 7, &[7, 999, 29]))),
            case("4242:4243", Ok((4242, 4243, &[4243]))),
            case("ghost", Err("user \"ghost\" not found in the image's /etc/passwd")),
            case("app:ghosts", Err("group \"ghosts\" not found in the image's /etc/group")),
            case("-1", Err("-1")),
            case("1:-5", Err("-5")),
            case("a:b:c", Err("invalid user")),
            case(":5", Err("invalid user")),
            case("app:", Err("invalid user")),
            Case {
                user: Some(1000),
                image_user: "web",
                ..case("", Ok((1000, 1001, &[1001, 10, 999])))
            },
            Case { user: Some(4242), ..case("web", Ok((4242, 0, &[0]))) },
            Case { user: Some(0), group: Some(3000), ..case("app", Ok((0, 3000, &[3000, 10]))) },
            Case { group: Some(3000), ..case("app", Ok((1000, 3000, &[3000, 10, 999]))) },
            Case { username: "web", ..case("app", Ok((33, 33, &[33, 999, 29]))) },
            Case { username: "ghost", ..case("app", Err("ghost")) },
            Case {
                supplemental: &[5000, 10, 1001],
                ..case("app", Ok((1000, 1001, &[1001, 10, 999, 5000])))
            },
            Case { user: Some(-3), ..case("", Err("-3")) },
            Case { group: Some(-4), ..case("", Err("-4")) },
            Case { supplemental: &[-5], ..case("", Err("-5")) },
            Case { user: Some(1 << 40), ..case("", Err("1099511627776")) },
        ];
        for c in cases {
            let security = SecurityContext {
                run_as_user: c.user,
                run_as_group: c.group,
                run_as_username: c.username.into(),
                supplemental_groups: c.supplemental.to_vec(),
                ..Default::default()
            };
            let label = format!(
                "user {:?} group {:?} username {:?} image {:?}",
                c.user, c.group, c.username, c.image_user
            );
            let got = resolve(&security, c.image_user, &image.layers);
            match c.want {
                Ok((uid, gid, gids)) => {
                    let got = got.unwrap_or_else(|e| panic!("{label}: {e}"));
                    assert_eq!(
                        got,
                        ResolvedUser { uid, gid, additional_gids: gids.to_vec() },
                        "{label}"
                    );
                }
                Err(naming) => {
                    let err = got.unwrap_err();
                    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{label}: {err}");
                    assert!(err.to_string().contains(naming), "{label}: {err}");
                }
            }
        }
    }

    #[test]
    fn strict_policy_leaves_the_image_groups_out() {
        let image = Image::new(1);
        image.file(0, "etc/passwd", "app:x:1000:1001::/home/app:/bin/sh\n").file(
            0,
            "etc/group",
            "app:x:1001:app\nwheel:x:10:app\n",
        );
        let security = |policy| SecurityContext {
            supplemental_groups: vec![3000, 1001],
            supplemental_groups_policy: policy,
            ..Default::default()
        };
        let merge = resolve(&security(SupplementalGroupsPolicy::Merge), "app", &image.layers);
        assert_eq!(merge.unwrap().additional_gids, vec![1001, 10, 3000]);
        let strict = resolve(&security(SupplementalGroupsPolicy::Strict), "app", &image.layers);
        assert_eq!(
            strict.unwrap(),
            ResolvedUser { uid: 1000, gid: 1001, additional_gids: vec![1001, 3000] }
        );
    }

    #[test]
    fn home_directories() {
        let image = Image::new(1);
        image.file(
            0,
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\nshort:x:7:7\n",
        );
        assert_eq!(home(0, &image.layers).unwrap(), "/root");
        assert_eq!(home(1000, &image.layers).unwrap(), "/home/app");
        // No home field, no entry: `/`, as runc.
        assert_eq!(home(7, &image.layers).unwrap(), "/");
        assert_eq!(home(4242, &image.layers).unwrap(), "/");
        assert_eq!(home(0, &Image::new(1).layers).unwrap(), "/");
    }

    #[test]
    fn resolve_without_user_files() {
        let image = Image::new(1);
        let security = SecurityContext::default();
        let got = resolve(&security, "1000:1000", &image.layers).unwrap();
        assert_eq!(got, ResolvedUser { uid: 1000, gid: 1000, additional_gids: vec![1000] });
        let got = resolve(&security, "", &image.layers).unwrap();
        assert_eq!(got, ResolvedUser { uid: 0, gid: 0, additional_gids: vec![0] });
        let err = resolve(&security, "app", &image.layers).unwrap_err();
        assert!(err.to_string().contains("not found in the image's /etc/passwd"), "{err}");
    }
}
