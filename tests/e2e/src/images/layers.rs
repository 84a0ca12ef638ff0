//! The layers' contents (busybox and its links, users, whiteouts, the run layer, impostors)
//! and their tar and compressed forms.

use super::*;

pub(crate) enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(&'static str),
    /// A hard link to an earlier entry of the same tar (relative path).
    Hardlink(String),
}

pub(crate) struct Entry {
    /// Relative, without a trailing slash.
    pub path: String,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub kind: Kind,
}

pub(crate) fn dir(path: &str, mode: u32) -> Entry {
    Entry { path: path.to_owned(), mode, uid: 0, gid: 0, kind: Kind::Dir }
}

pub(crate) fn file(path: &str, mode: u32, contents: impl Into<Vec<u8>>) -> Entry {
    Entry { path: path.to_owned(), mode, uid: 0, gid: 0, kind: Kind::File(contents.into()) }
}

pub(super) fn symlink(path: String, target: &'static str) -> Entry {
    Entry { path, mode: 0o777, uid: 0, gid: 0, kind: Kind::Symlink(target) }
}

pub(super) fn base_layer(busybox: Vec<u8>, applets: &[&str]) -> Vec<Entry> {
    let mut entries = vec![
        dir("bin", 0o755),
        dir("dev", 0o755),
        dir("etc", 0o755),
        dir("home", 0o755),
        Entry { uid: TEST_UID.into(), gid: TEST_GID.into(), ..dir("home/berth", 0o755) },
        dir("proc", 0o755),
        dir("root", 0o700),
        dir("sys", 0o755),
        dir("tmp", 0o1777),
        dir("var", 0o755),
        file("bin/busybox", 0o755, busybox),
        file("etc/passwd", 0o644, PASSWD),
        file("etc/group", 0o644, GROUP),
    ];
    entries.extend(applets.iter().map(|applet| symlink(format!("bin/{applet}"), "busybox")));
    entries
}

pub(super) fn content_layer() -> Vec<Entry> {
    vec![
        dir("etc", 0o755),
        dir("etc/berth", 0o755),
        file("etc/berth/removed-later", 0o644, "removed-later\n"),
        file("etc/berth/kept", 0o644, "kept\n"),
        dir("data", 0o755),
        dir("data/opaque", 0o755),
        file("data/opaque/old-a", 0o644, "old-a\n"),
        file("data/opaque/old-b", 0o644, "old-b\n"),
    ]
}

pub(super) fn changes_layer() -> Vec<Entry> {
    vec![
        dir("etc", 0o755),
        dir("etc/berth", 0o755),
        file("etc/berth/.wh.removed-later", 0o644, ""),
        file("etc/berth/layer3", 0o644, "layer3\n"),
        dir("data", 0o755),
        dir("data/opaque", 0o755),
        file("data/opaque/.wh..wh..opq", 0o644, ""),
        file("data/opaque/new", 0o644, "new\n"),
    ]
}

pub(super) fn run_layer() -> Vec<Entry> {
    let relative = |path: &'static str| path.trim_start_matches('/').to_owned();
    vec![
        dir("usr", 0o755),
        dir("usr/bin", 0o755),
        file(&relative(PROBE), 0o755, PROBE_SCRIPT),
        symlink(relative(ESCAPE_ABS_LINK), ESCAPE_ABS_INSIDE),
        symlink(relative(ESCAPE_REL_LINK), ESCAPE_REL_TARGET),
    ]
}

pub(crate) fn write_tar(mut entries: Vec<Entry>) -> io::Result<Vec<u8>> {
    // Path ordering compares component-wise, which puts every directory before
    // its contents and makes the archive independent of how it was listed. Hard
    // links come last: a link may only name an entry the tar already had.
    entries.sort_by(|a, b| {
        let hardlink = |e: &Entry| matches!(e.kind, Kind::Hardlink(_));
        (hardlink(a), Path::new(&a.path)).cmp(&(hardlink(b), Path::new(&b.path)))
    });
    let mut tar = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mode(entry.mode);
        header.set_uid(entry.uid);
        header.set_gid(entry.gid);
        header.set_mtime(MTIME);
        match entry.kind {
            Kind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, format!("{}/", entry.path), io::empty())?;
            }
            Kind::File(contents) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(contents.len() as u64);
                tar.append_data(&mut header, &entry.path, contents.as_slice())?;
            }
            Kind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, &entry.path, target)?;
            }
            Kind::Hardlink(target) => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                tar.append_link(&mut header, &entry.path, target)?;
            }
        }
    }
    tar.into_inner()
}

pub(crate) fn gzip(tar: &[u8]) -> io::Result<Vec<u8>> {
    // GzBuilder writes mtime 0 and no file name unless told otherwise, which
    // is what keeps the compressed digest fixed.
    let mut gz = GzBuilder::new().write(Vec::new(), Compression::default());
    gz.write_all(tar)?;
    gz.finish()
}

/// Bytes exactly as long as `layer`'s that decompress fine (a valid gzip
/// stream, zstd frame or tar, as its media type says) to a valid tar that
/// differs from the layer's in one file's contents. Served in its place by
/// [`crate::Registry::replace_blob`], it leaves a client nothing to notice but
/// the digest (and the diff_id): what a registry or a man in the middle that
/// swaps content would serve.
///
/// The gzip keeps its length by a comment in its header (FCOMMENT), the zstd
/// by a skippable frame after the data.
pub fn impostor_layer(layer: &Blob) -> Vec<u8> {
    let target = layer.bytes.len();
    let media = layer.media_type.as_str();
    let is_gzip = media.ends_with("gzip");
    let is_zstd = media.ends_with("zstd");
    let tar = if is_gzip {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(layer.bytes.as_slice())
            .read_to_end(&mut tar)
            .expect("the layer is gzip");
        tar
    } else if is_zstd {
        zstd::stream::decode_all(layer.bytes.as_slice()).expect("the layer is zstd")
    } else {
        layer.bytes.clone()
    };
    // The data of every regular file with any, as (offset, length) in the tar.
    let mut files = vec![];
    let mut archive = tar::Archive::new(tar.as_slice());
    for entry in archive.entries().expect("the layer is a tar") {
        let entry = entry.expect("a tar entry");
        if entry.header().entry_type().is_file() && entry.size() > 0 {
            files.push((entry.raw_file_position() as usize, entry.size() as usize));
        }
    }
    let (first, first_len) = *files.first().expect("a layer with a file to change");
    // From the smallest change to ones that make the tar compress better.
    for variant in 0..3 {
        let mut changed = tar.clone();
        match variant {
            0 => changed[first + first_len - 1] ^= 1,
            1 => changed[first..first + first_len].fill(0),
            _ => files.iter().for_each(|&(at, len)| changed[at..at + len].fill(0)),
        }
        if changed == tar {
            continue; // the data was zeros already
        }
        if !is_gzip && !is_zstd {
            return changed;
        }
        for level in [6, 9, 8, 7, 5, 4, 3, 2, 1] {
            if is_gzip {
                let bare = gzip_with(&changed, level, None);
                // A comment is its bytes and a NUL.
                if let Some(pad) = target.checked_sub(bare.len() + 1) {
                    let padded = gzip_with(&changed, level, Some(vec![b'x'; pad]));
                    assert_eq!(padded.len(), target);
                    return padded;
                }
            } else {
                let mut frame = zstd::stream::encode_all(changed.as_slice(), level as i32)
                    .expect("zstd in memory");
                // A skippable frame: magic, length, that many bytes.
                if let Some(pad) = target.checked_sub(frame.len() + 8) {
                    frame.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
                    frame.extend_from_slice(&(pad as u32).to_le_bytes());
                    frame.resize(target, 0);
                    return frame;
                }
            }
        }
    }
    panic!("cannot make a {media} impostor of {} as long as {target} bytes", layer.digest)
}

pub(super) fn gzip_with(tar: &[u8], level: u32, comment: Option<Vec<u8>>) -> Vec<u8> {
    let mut builder = GzBuilder::new();
    if let Some(comment) = comment {
        builder = builder.comment(comment);
    }
    let mut gz = builder.write(Vec::new(), Compression::new(level));
    gz.write_all(tar).expect("gzip in memory");
    gz.finish().expect("gzip in memory")
}

/// zstd at its default level, single-threaded, without a checksum or content
/// size in the frame header: a function of the input and the zstd version.
pub(super) fn zstd(tar: &[u8]) -> io::Result<Vec<u8>> {
    zstd::stream::encode_all(tar, 3)
}
