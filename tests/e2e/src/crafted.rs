//! Hand-made images: hostile layers that try to get out of the snapshot they are unpacked into
//! (or to exhaust the node), and a big image of incompressible data for the pull benchmark.
//!
//! Every hostile image is the busybox base layer of `busybox:oci` plus one hostile layer,
//! pushed as `berth-test/hostile:<name>`. What berth must do with each is the same: **refuse
//! the pull** with an error that says which entry of which layer it refused and why, store no
//! image, and write nothing outside the snapshot it was unpacking into (and leave no half
//! unpacked snapshot behind). Each case's [`Hostile::host_paths`], [`Hostile::host_targets`]
//! and [`Hostile::escape_names`] say what a test should look for afterwards.
//!
//! The tars are written with raw GNU headers: the `tar` crate's `set_path` and `append_data`
//! refuse `..` and absolute names, so the names are copied into the header bytes as they are.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};

use crate::images::{
    assemble, assemble_with, Blob, Format, LayerBlob, RunConfig, TestImage, TestImages,
    LINUX_AMD64, MEDIA_OCI_LAYER, MTIME,
};

/// The repository every hostile image is pushed to, tagged with its case name.
pub const HOSTILE_REPO: &str = "berth-test/hostile";

/// Enough `..` to reach `/` from any snapshot directory, however deep: a path that climbs
/// only a few levels would land in some directory of the test's own and prove nothing.
const TO_ROOT: &str = "../../../../../../../../../../../../../../../../../../../../../../../..";

/// The number of files [`many_files`] is usually asked for: more than the limit on entries
/// per layer (`max_layer_entries`) that the tests give berth.
pub const MANY_FILES_DEFAULT: usize = 2_000;

/// The length of the `long-path` case's path, in bytes: over Linux's PATH_MAX (4096), each
/// component under NAME_MAX (255).
pub const LONG_PATH_LEN: usize = 5000;

/// One hostile image.
#[derive(Debug, Clone)]
pub struct Hostile {
    /// The case: `dotdot`, `abs-symlink-parent`, …; also the tag.
    pub name: String,
    /// `berth-test/hostile:<name>`: the busybox base layer, then [`Hostile::layer`].
    pub image: TestImage,
    /// Absolute paths on the host that must not exist after the pull.
    pub host_paths: &'static [&'static str],
    /// Host files the layer links to, which must be unchanged after the pull: compare their
    /// link count (and contents) before and after.
    pub host_targets: &'static [&'static str],
    /// File names that must not turn up anywhere outside the snapshot, e.g. under the
    /// node's directory or berth's root, whatever depth the snapshot is at: see
    /// [`find_named`].
    pub escape_names: &'static [&'static str],
    /// The number of entries in the hostile layer.
    pub entry_count: usize,
}

impl Hostile {
    /// The hostile layer (the image's last).
    pub fn layer(&self) -> &Blob {
        self.image.layers.last().expect("a hostile image has layers")
    }

    /// The hostile layer's entry names, byte for byte as in its tar (a GNU long name in full).
    pub fn entry_names(&self) -> Vec<String> {
        layer_entry_names(self.layer())
    }
}

/// One entry of a hand-made layer.
#[derive(Debug, Clone)]
pub struct RawEntry {
    /// Written into the tar as it is: `..`, a leading `/` and any length are kept.
    pub path: String,
    pub kind: RawKind,
}

#[derive(Debug, Clone)]
pub enum RawKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Hardlink(String),
    BlockDevice { major: u32, minor: u32 },
}

fn raw(path: impl Into<String>, kind: RawKind) -> RawEntry {
    RawEntry { path: path.into(), kind }
}

fn escape_file(name: &str) -> RawKind {
    RawKind::File(format!("berth-e2e: {name} got out of the snapshot\n").into_bytes())
}

/// Every hostile case but `many-files` (see [`many_files`]), built on first use.
///
/// * `dotdot`: a file `../../../../escape-dotdot`.
/// * `dotdot-nested`: a file `etc/../../escape`, `..` behind a harmless component.
/// * `abs-symlink-parent`: a symlink `evil -> /tmp`, then a file `evil/escape-symlink`;
///   an unpacker that follows the symlink writes `/tmp/escape-symlink` on the host.
/// * `rel-symlink-parent`: a symlink `evil -> ../../…/..` (enough `..` to reach `/` from
///   any depth), then a file `evil/tmp/escape-rel`: `/tmp/escape-rel` on the host.
/// * `hardlink-out`: a hard link `h` to `../../…/../etc/shadow`: linking it would give the
///   container the host's `/etc/shadow` (the same filesystem here, so it would work).
/// * `hardlink-abs`: a hard link `h` to `/etc/shadow`. A link target is a path in the
///   image, so the only right readings are "inside the rootfs" (where there is no
///   `etc/shadow`: refuse) or "refuse outright"; never the host's file.
/// * `long-path`: a file whose path is [`LONG_PATH_LEN`] bytes (a GNU long name).
/// * `device`: a block device node `dev/sda`, 8:0: the host's first disk if a container
///   could open it.
///
/// For every one berth must refuse the pull with a clear error naming the entry, and write
/// nothing outside the snapshot.
pub fn hostile_images() -> &'static [Hostile] {
    static CASES: OnceLock<Vec<Hostile>> = OnceLock::new();
    CASES.get_or_init(|| {
        let spec = |name, entries| Spec { name, entries, ..Spec::default() };
        let cases = [
            Spec {
                escape_names: &["escape-dotdot"],
                ..spec("dotdot", vec![raw("../../../../escape-dotdot", escape_file("dotdot"))])
            },
            Spec {
                escape_names: &["escape"],
                ..spec("dotdot-nested", vec![raw("etc/../../escape", escape_file("dotdot-nested"))])
            },
            Spec {
                host_paths: &["/tmp/escape-symlink"],
                escape_names: &["escape-symlink"],
                ..spec(
                    "abs-symlink-parent",
                    vec![
                        raw("evil", RawKind::Symlink("/tmp".into())),
                        raw("evil/escape-symlink", escape_file("abs-symlink-parent")),
                    ],
                )
            },
            Spec {
                host_paths: &["/tmp/escape-rel"],
                escape_names: &["escape-rel"],
                ..spec(
                    "rel-symlink-parent",
                    vec![
                        raw("evil", RawKind::Symlink(TO_ROOT.into())),
                        raw("evil/tmp/escape-rel", escape_file("rel-symlink-parent")),
                    ],
                )
            },
            Spec {
                host_targets: &["/etc/shadow"],
                ..spec(
                    "hardlink-out",
                    vec![raw("h", RawKind::Hardlink(format!("{TO_ROOT}/etc/shadow")))],
                )
            },
            Spec {
                host_targets: &["/etc/shadow"],
                ..spec("hardlink-abs", vec![raw("h", RawKind::Hardlink("/etc/shadow".into()))])
            },
            spec("long-path", vec![raw(long_path(LONG_PATH_LEN), escape_file("long-path"))]),
            spec("device", vec![raw("dev/sda", RawKind::BlockDevice { major: 8, minor: 0 })]),
        ];
        cases
            .into_iter()
            .map(|spec| {
                let layer = raw_layer(&spec.entries).expect("writing a hostile layer in memory");
                let hostile = build_hostile(spec.name, layer, spec.entries.len());
                Hostile {
                    host_paths: spec.host_paths,
                    host_targets: spec.host_targets,
                    escape_names: spec.escape_names,
                    ..hostile
                }
            })
            .collect()
    })
}

#[derive(Default)]
struct Spec {
    name: &'static str,
    entries: Vec<RawEntry>,
    host_paths: &'static [&'static str],
    host_targets: &'static [&'static str],
    escape_names: &'static [&'static str],
}

/// The case `name` of [`hostile_images`]; panics if there is none.
pub fn hostile(name: &str) -> &'static Hostile {
    hostile_images()
        .iter()
        .find(|h| h.name == name)
        .unwrap_or_else(|| panic!("no hostile image {name:?}"))
}

/// `many-files`: a layer of `count` zero-length regular files `many/<dddd>/<ddd>` (a
/// thousand to a directory, plus one entry per directory and one for `many/`), tagged
/// `many-files-<count>`. Berth must refuse it once it passes its limit on entries per layer
/// (`max_layer_entries`, which a test sets below [`Hostile::entry_count`]) with an error
/// naming the limit, and remove what it had unpacked.
///
/// It is not in [`hostile_images`]: a test that wants it builds and pushes it. A zero-length
/// file is a tar header alone, 512 bytes, so [`MANY_FILES_DEFAULT`] makes ~1 MB of tar.
pub fn many_files(count: usize) -> Hostile {
    let build = || -> io::Result<(LayerBlob, usize)> {
        let mut layer = LayerWriter::new();
        layer.append(&raw("many/", RawKind::Dir))?;
        let mut entries = 1;
        for i in 0..count {
            let (d, f) = (i / 1000, i % 1000);
            if f == 0 {
                layer.append(&raw(format!("many/{d:04}/"), RawKind::Dir))?;
                entries += 1;
            }
            layer.append(&raw(format!("many/{d:04}/{f:03}"), RawKind::File(vec![])))?;
            entries += 1;
        }
        Ok((layer.finish("berth-e2e: many-files")?, entries))
    };
    let (layer, entry_count) = build().expect("writing the many-files layer in memory");
    build_hostile(&format!("many-files-{count}"), layer, entry_count)
}

/// The `USER` of [`passwd_link`]: a name only that image's own files know.
pub const PASSWD_LINK_USER: &str = "escapee";
/// The uid and gid the image's own `/etc/shadow` gives [`PASSWD_LINK_USER`].
pub const PASSWD_LINK_ID: u32 = 4321;

/// `berth-test/hostile:passwd-link`: the busybox base layer, then a layer whose `/etc/passwd`
/// is a symlink to `/../../../etc/shadow` and whose `/etc/shadow` is in passwd format, naming
/// [`PASSWD_LINK_USER`] with uid and gid [`PASSWD_LINK_ID`]; the image's `USER` is that name.
///
/// Unlike the cases of [`hostile_images`], this one must pull: a link pointing out of the
/// root harms no one until something follows it on the host. Whoever resolves the `USER`
/// (berth, at CreateContainer) must follow it inside the image, to the image's own
/// `/etc/shadow`, and never to the node's.
pub fn passwd_link() -> &'static TestImage {
    static IMAGE: OnceLock<TestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let id = PASSWD_LINK_ID;
        let entries = [
            raw(
                "etc/shadow",
                RawKind::File(format!("{PASSWD_LINK_USER}:x:{id}:{id}::/:/bin/sh\n").into_bytes()),
            ),
            raw("etc/passwd", RawKind::Symlink("/../../../etc/shadow".into())),
        ];
        let layer = raw_layer(&entries).expect("writing the passwd-link layer in memory");
        let run = RunConfig { user: PASSWD_LINK_USER, ..RunConfig::busybox("passwd-link") };
        assemble_with(
            Format::Oci,
            "berth-test/hostile:passwd-link",
            &[],
            "hostile",
            LINUX_AMD64,
            vec![base_layer(), layer],
            run,
        )
        .expect("serialising the passwd-link image")
    })
}

/// The first layer of `busybox:oci`, which every hand-made image here is built on.
fn base_layer() -> LayerBlob {
    let oci = &TestImages::get().oci;
    LayerBlob {
        created_by: "berth-e2e: base: busybox-static, applet links, passwd, group".to_owned(),
        diff_id: oci.diff_ids[0].clone(),
        blob: oci.layers[0].clone(),
    }
}

/// `berth-test/hostile:<name>`: the busybox base layer and `layer`.
fn build_hostile(name: &str, layer: LayerBlob, entry_count: usize) -> Hostile {
    let base = base_layer();
    let reference = leak(format!("{HOSTILE_REPO}:{name}"));
    let image = assemble(
        Format::Oci,
        reference,
        &[],
        &format!("hostile-{name}"),
        "hostile",
        LINUX_AMD64,
        vec![base, layer],
    )
    .expect("serialising a hostile image");
    Hostile {
        name: name.to_owned(),
        image,
        host_paths: &[],
        host_targets: &[],
        escape_names: &[],
        entry_count,
    }
}

/// Pushes every image of [`hostile_images`].
pub async fn push_hostile(registry: &str) -> Result<(), crate::images::PushError> {
    let pusher = crate::images::Pusher::new(registry);
    pusher.push_each(hostile_images().iter().map(|h| &h.image)).await
}

/// Every path under `root` (not following symlinks, not descending into `skip`) whose file
/// name is one of `names`: where escaped files would be.
pub fn find_named(root: &Path, names: &[&str], skip: &[&Path]) -> Vec<PathBuf> {
    let mut found = vec![];
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_str().is_some_and(|n| names.contains(&n)) {
                found.push(path.clone());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) && !skip.contains(&path.as_path()) {
                dirs.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The entry names of a gzip layer, byte for byte (lossily as UTF-8), read back with
/// `tar::Archive` without unpacking anything.
pub fn layer_entry_names(layer: &Blob) -> Vec<String> {
    let gz = flate2::read::GzDecoder::new(layer.bytes.as_slice());
    let mut archive = tar::Archive::new(gz);
    archive
        .entries()
        .expect("a tar")
        .map(|e| String::from_utf8_lossy(&e.expect("a tar entry").path_bytes()).into_owned())
        .collect()
}

/// `long-path/` and then components of 200 `x` until the path is `len` bytes long.
fn long_path(len: usize) -> String {
    let mut path = String::from("long-path");
    while path.len() < len {
        let component = (len - path.len() - 1).min(200);
        path.push('/');
        path.push_str(&"x".repeat(component.max(1)));
    }
    assert_eq!(path.len(), len);
    path
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Writes a tar into gzip as it goes, hashing the tar for the diff_id on the way.
struct LayerWriter {
    tar: tar::Builder<HashingWriter<flate2::write::GzEncoder<Vec<u8>>>>,
}

impl LayerWriter {
    fn new() -> LayerWriter {
        LayerWriter::with_level(Compression::default(), 0)
    }

    /// `capacity`: the gzip's expected size, to spare the copies of a growing buffer.
    fn with_level(level: Compression, capacity: usize) -> LayerWriter {
        let gz = GzBuilder::new().write(Vec::with_capacity(capacity), level);
        let tar = tar::Builder::new(HashingWriter { inner: gz, hash: Sha256::new() });
        LayerWriter { tar }
    }

    fn append(&mut self, entry: &RawEntry) -> io::Result<()> {
        append_raw(&mut self.tar, entry)
    }

    /// Ends the archive and the gzip stream.
    fn finish(self, created_by: &str) -> io::Result<LayerBlob> {
        let hashing = self.tar.into_inner()?;
        let diff_id = format!("sha256:{}", hex::encode(hashing.hash.finalize()));
        let gzip = hashing.inner.finish()?;
        Ok(LayerBlob {
            created_by: created_by.to_owned(),
            diff_id,
            blob: Blob::new(MEDIA_OCI_LAYER, gzip),
        })
    }
}

struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn raw_layer(entries: &[RawEntry]) -> io::Result<LayerBlob> {
    let mut layer = LayerWriter::new();
    for entry in entries {
        layer.append(entry)?;
    }
    layer.finish("berth-e2e: crafted")
}

fn file_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_size(size);
    header
}

/// Copies `name` into the header's 100-byte name field as it is, NUL-padded.
fn set_name(header: &mut tar::Header, name: &[u8]) {
    let field = &mut header.as_old_mut().name;
    assert!(name.len() <= field.len(), "a name over 100 bytes needs a GNU long name entry");
    field.fill(0);
    field[..name.len()].copy_from_slice(name);
}

/// Appends one entry with its name and link name as they are; a name over 100 bytes goes
/// into a GNU long name (`././@LongLink`, type `L`) entry before it, as GNU tar does.
fn append_raw<W: Write>(tar: &mut tar::Builder<W>, entry: &RawEntry) -> io::Result<()> {
    let mut header = file_header(0);
    let mut data: &[u8] = &[];
    match &entry.kind {
        RawKind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
        }
        RawKind::File(contents) => {
            header.set_size(contents.len() as u64);
            data = contents;
        }
        RawKind::Symlink(target) => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_link_name_literal(target)?;
        }
        RawKind::Hardlink(target) => {
            header.set_entry_type(tar::EntryType::Link);
            header.set_link_name_literal(target)?;
        }
        RawKind::BlockDevice { major, minor } => {
            header.set_entry_type(tar::EntryType::Block);
            header.set_mode(0o660);
            header.set_device_major(*major)?;
            header.set_device_minor(*minor)?;
        }
    }
    let path = entry.path.as_bytes();
    let name_field = header.as_old().name.len();
    if path.len() > name_field {
        let mut long = file_header(path.len() as u64 + 1);
        long.set_entry_type(tar::EntryType::GNULongName);
        set_name(&mut long, b"././@LongLink");
        long.set_cksum();
        tar.append(&long, path.chain(&[0u8][..]))?;
    }
    set_name(&mut header, &path[..path.len().min(name_field)]);
    header.set_cksum();
    tar.append(&header, data)
}

/// An image of `layers` gzip layers of pseudo-random, incompressible files, about
/// `total_mb` MiB compressed in all (and as much uncompressed), a function of `seed` alone:
/// layer `i` holds `big/<i>/<j>`, files of 1 MiB (the last one of a layer shorter). Tagged
/// `berth-test/big:<total_mb>m-<layers>l-<seed>`. The gzip is of stored deflate blocks
/// ([`Compression::none`]), as a compressor makes of random data anyway, so that unpacking
/// costs what moving the bytes costs. No busybox in it: it is for pulling, not running.
///
/// Takes as much memory as the image's size.
pub fn big_image(total_mb: usize, layers: usize, seed: u64) -> TestImage {
    assert!(layers > 0, "an image needs a layer");
    const MIB: usize = 1 << 20;
    let total = total_mb * MIB;
    let mut rng = XorShift::new(seed);
    let mut buf = vec![0u8; MIB];
    let blobs = (0..layers)
        .map(|i| {
            let size = total / layers + usize::from(i < total % layers);
            let mut layer = LayerWriter::with_level(Compression::none(), size + size / 512 + 4096);
            layer.append(&raw("big/", RawKind::Dir))?;
            layer.append(&raw(format!("big/{i}/"), RawKind::Dir))?;
            let mut written = 0;
            let mut j = 0;
            while written < size {
                let n = (size - written).min(MIB);
                rng.fill(&mut buf[..n]);
                let mut header = file_header(n as u64);
                set_name(&mut header, format!("big/{i}/{j}").as_bytes());
                header.set_cksum();
                layer.tar.append(&header, &buf[..n])?;
                written += n;
                j += 1;
            }
            layer.finish(&format!("berth-e2e: big: layer {i} of {layers}, seed {seed}"))
        })
        .collect::<io::Result<Vec<_>>>()
        .expect("writing a big layer in memory");
    let reference = leak(format!("berth-test/big:{total_mb}m-{layers}l-{seed}"));
    assemble(Format::Oci, reference, &[], "big", "big", LINUX_AMD64, blobs)
        .expect("serialising the big image")
}

/// xorshift64*: fast, deterministic, and plenty random for incompressible test data.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // splitmix64 of the seed, so that 0 and nearby seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        XorShift((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next().to_le_bytes();
        let len = rest.len();
        rest.copy_from_slice(&last[..len]);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::images::sha256_digest;
    use crate::images::tests::gunzip;

    struct Raw {
        path: Vec<u8>,
        kind: tar::EntryType,
        link: Option<Vec<u8>>,
        device: Option<(u32, u32)>,
        data: Vec<u8>,
    }

    /// Every entry at the level of raw bytes: names as stored, nothing unpacked.
    fn raw_entries(tar_bytes: &[u8]) -> Vec<Raw> {
        let mut archive = tar::Archive::new(tar_bytes);
        let entries = archive.entries().unwrap();
        entries
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = vec![];
                e.read_to_end(&mut data).unwrap();
                let h = e.header();
                let kind = h.entry_type();
                let device = (kind == tar::EntryType::Block).then(|| {
                    (h.device_major().unwrap().unwrap(), h.device_minor().unwrap().unwrap())
                });
                Raw {
                    path: e.path_bytes().into_owned(),
                    kind,
                    link: e.link_name_bytes().map(|l| l.into_owned()),
                    device,
                    data,
                }
            })
            .collect()
    }

    fn check_blobs(image: &TestImage) {
        let config: serde_json::Value = serde_json::from_slice(&image.config.bytes).unwrap();
        let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        assert_eq!(diff_ids, image.diff_ids);
        let manifest: serde_json::Value = serde_json::from_slice(&image.manifest.bytes).unwrap();
        assert_eq!(manifest["config"]["digest"], image.config.digest.as_str());
        for ((layer, desc), diff_id) in
            image.layers.iter().zip(manifest["layers"].as_array().unwrap()).zip(&image.diff_ids)
        {
            assert_eq!(layer.digest, sha256_digest(&layer.bytes));
            assert_eq!(desc["digest"], layer.digest.as_str());
            assert_eq!(desc["size"], layer.size());
            assert_eq!(desc["mediaType"], MEDIA_OCI_LAYER);
            assert_eq!(&sha256_digest(&gunzip(layer)), diff_id);
        }
    }

    #[test]
    fn hostile_layers_hold_the_hostile_names() {
        let cases: BTreeMap<&str, &Hostile> =
            hostile_images().iter().map(|h| (h.name.as_str(), h)).collect();
        let names: Vec<&str> = cases.keys().copied().collect();
        assert_eq!(
            names,
            [
                "abs-symlink-parent",
                "device",
                "dotdot",
                "dotdot-nested",
                "hardlink-abs",
                "hardlink-out",
                "long-path",
                "rel-symlink-parent",
            ]
        );
        let layer = |name: &str| raw_entries(&gunzip(cases[name].layer()));
        let path = |e: &Raw| String::from_utf8(e.path.clone()).unwrap();
        let link = |e: &Raw| String::from_utf8(e.link.clone().unwrap()).unwrap();
        use tar::EntryType::{Block, Link, Regular, Symlink};

        let e = layer("dotdot");
        assert_eq!((path(&e[0]), e[0].kind), ("../../../../escape-dotdot".into(), Regular));
        assert!(!e[0].data.is_empty());
        let e = layer("dotdot-nested");
        assert_eq!((path(&e[0]), e[0].kind), ("etc/../../escape".into(), Regular));

        let e = layer("abs-symlink-parent");
        assert_eq!((path(&e[0]), e[0].kind, link(&e[0])), ("evil".into(), Symlink, "/tmp".into()));
        assert_eq!((path(&e[1]), e[1].kind), ("evil/escape-symlink".into(), Regular));

        let e = layer("rel-symlink-parent");
        assert_eq!((path(&e[0]), e[0].kind), ("evil".into(), Symlink));
        let up = link(&e[0]);
        assert!(up.split('/').all(|c| c == "..") && up.split('/').count() >= 16, "{up}");
        assert_eq!((path(&e[1]), e[1].kind), ("evil/tmp/escape-rel".into(), Regular));

        let e = layer("hardlink-out");
        assert_eq!((path(&e[0]), e[0].kind), ("h".into(), Link));
        assert!(link(&e[0]).starts_with("../../../../") && link(&e[0]).ends_with("/etc/shadow"));
        let e = layer("hardlink-abs");
        assert_eq!((path(&e[0]), e[0].kind, link(&e[0])), ("h".into(), Link, "/etc/shadow".into()));

        let e = layer("long-path");
        assert_eq!(e.len(), 1, "the GNU long name entry is read as part of the next");
        assert_eq!(e[0].path.len(), LONG_PATH_LEN);
        assert!(path(&e[0]).split('/').all(|c| !c.is_empty() && c.len() <= 255));
        assert_eq!(e[0].kind, Regular);

        let e = layer("device");
        assert_eq!((path(&e[0]), e[0].kind, e[0].device), ("dev/sda".into(), Block, Some((8, 0))));

        assert_eq!(cases["abs-symlink-parent"].host_paths, ["/tmp/escape-symlink"]);
        assert_eq!(cases["rel-symlink-parent"].host_paths, ["/tmp/escape-rel"]);
        assert_eq!(cases["hardlink-out"].host_targets, ["/etc/shadow"]);
        assert_eq!(cases["hardlink-abs"].host_targets, ["/etc/shadow"]);
        for case in cases.values() {
            assert_eq!(case.entry_count, case.entry_names().len(), "{}", case.name);
            for path in case.host_paths {
                assert!(!Path::new(path).exists(), "{path} is there before any pull");
            }
            assert_eq!(case.image.reference, format!("berth-test/hostile:{}", case.name));
            assert_eq!(case.image.tag(), Some(case.name.as_str()));
            for escape in case.escape_names {
                assert!(
                    case.entry_names().iter().any(|n| n.ends_with(escape)),
                    "{}: {escape}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn hostile_images_are_the_busybox_base_and_one_layer() {
        let oci = &TestImages::get().oci;
        for case in hostile_images() {
            let image = &case.image;
            assert_eq!(image.layers.len(), 2);
            assert_eq!(image.layers[0], oci.layers[0]);
            assert_eq!(image.diff_ids[0], oci.diff_ids[0]);
            check_blobs(image);
        }
    }

    #[test]
    fn the_raw_tar_writer_is_reproducible() {
        let entries =
            [raw("../x", RawKind::File(b"x".to_vec())), raw("l", RawKind::Hardlink("/y".into()))];
        let a = raw_layer(&entries).unwrap();
        let b = raw_layer(&entries).unwrap();
        assert_eq!(a.blob, b.blob);
        assert_eq!(a.diff_id, b.diff_id);
        assert_eq!(a.blob.bytes[..8], [0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn many_files_holds_count_files_a_thousand_to_a_directory() {
        let count = 2_345;
        let case = many_files(count);
        assert_eq!(case.image.reference, "berth-test/hostile:many-files-2345");
        check_blobs(&case.image);
        let entries = raw_entries(&gunzip(case.layer()));
        assert_eq!(entries.len(), case.entry_count);
        assert_eq!(case.entry_count, count + 3 + 1);
        let names: Vec<String> =
            entries.iter().map(|e| String::from_utf8(e.path.clone()).unwrap()).collect();
        assert_eq!(names[..3], ["many/", "many/0000/", "many/0000/000"]);
        assert_eq!(names[1001..1004], ["many/0000/999", "many/0001/", "many/0001/000"]);
        assert_eq!(names.last().unwrap(), "many/0002/344");
        let files = entries.iter().filter(|e| e.kind == tar::EntryType::Regular);
        assert!(files.clone().all(|e| e.data.is_empty()));
        assert_eq!(files.count(), count);
        assert_eq!(case.entry_names(), names, "layer_entry_names reads the same");
        // Headers alike but for the name and checksum: the gzip is a small fraction of the tar.
        assert!(case.layer().size() * 20 < (case.entry_count + 2) * 512, "{}", case.layer().size());

        let again = many_files(count);
        assert_eq!(again.image.manifest, case.image.manifest);
        assert_eq!(again.image.layers, case.image.layers);
        assert!(many_files(MANY_FILES_DEFAULT).entry_count > 1000);
    }

    #[test]
    fn big_images_are_random_reproducible_and_sized() {
        let image = big_image(3, 2, 42);
        assert_eq!(image.reference, "berth-test/big:3m-2l-42");
        check_blobs(&image);
        let total: usize = image.layers.iter().map(Blob::size).sum();
        assert!((3 << 20) < total && total < (3 << 20) + (64 << 10), "{total}");

        let tar_bytes = gunzip(&image.layers[1]);
        let entries = raw_entries(&tar_bytes);
        let names: Vec<&[u8]> = entries.iter().map(|e| e.path.as_slice()).collect();
        assert_eq!(names, [&b"big/"[..], b"big/1/", b"big/1/0", b"big/1/1"]);
        assert_eq!(entries[2].data.len(), 1 << 20);
        assert_eq!(entries[3].data.len(), (3 << 19) - (1 << 20));
        // Incompressible: the best gzip cannot shrink it.
        let mut gz = GzBuilder::new().write(Vec::new(), Compression::best());
        gz.write_all(&entries[2].data).unwrap();
        assert!(gz.finish().unwrap().len() > entries[2].data.len());

        let again = big_image(3, 2, 42);
        assert_eq!(again.manifest, image.manifest);
        assert_eq!(again.layers, image.layers);
        assert_ne!(big_image(3, 2, 43).layers[0].digest, image.layers[0].digest);
    }

    #[test]
    fn xorshift_streams_depend_on_the_seed_alone() {
        let take = |seed| {
            let mut buf = [0u8; 37];
            XorShift::new(seed).fill(&mut buf);
            buf
        };
        assert_eq!(take(1), take(1));
        assert_ne!(take(1), take(2));
        assert_ne!(take(0), [0; 37]);
    }

    #[test]
    fn find_named_finds_escapes_but_not_in_skipped_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join("snapshot")).unwrap();
        std::fs::write(root.join("a/b/escape-dotdot"), "").unwrap();
        std::fs::write(root.join("snapshot/escape-dotdot"), "").unwrap();
        std::os::unix::fs::symlink("/", root.join("a/root")).unwrap();
        let skip = root.join("snapshot");
        let found = find_named(root, &["escape-dotdot", "nothing"], &[&skip]);
        assert_eq!(found, [root.join("a/b/escape-dotdot")]);
    }

    #[test]
    fn long_paths_are_exact() {
        for len in [101, 4097, 5000] {
            let path = long_path(len);
            assert_eq!(path.len(), len);
            assert!(path.split('/').all(|c| !c.is_empty() && c.len() <= 255));
        }
    }

    /// `cargo test -p berth-e2e --lib build_times -- --ignored --nocapture`
    #[test]
    #[ignore = "prints how long the big builds take"]
    fn build_times() {
        let _ = TestImages::get();
        let t = std::time::Instant::now();
        let m = many_files(MANY_FILES_DEFAULT);
        eprintln!(
            "many_files({MANY_FILES_DEFAULT}): {:?}, {} bytes of gzip, {} entries",
            t.elapsed(),
            m.layer().size(),
            m.entry_count
        );
        let t = std::time::Instant::now();
        let b = big_image(200, 5, 1);
        let size: usize = b.layers.iter().map(Blob::size).sum();
        eprintln!("big_image(200, 5, 1): {:?}, {size} bytes of gzip", t.elapsed());
    }
}
