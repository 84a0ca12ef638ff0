use super::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

const T0: u64 = 1_600_000_000;

/// Builds a tar in memory; names and link targets are written raw so hostile ones survive.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(T0);
        header.set_size(size);
        header
    }

    fn raw(&mut self, name: &str, mut header: tar::Header, data: &[u8]) -> &mut Tar {
        if name.len() < 100 {
            let old = header.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name.as_bytes());
        } else {
            self.0.append_pax_extensions([("path", name.as_bytes())]).unwrap();
        }
        header.set_cksum();
        self.0.append(&header, data).unwrap();
        self
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Tar {
        let header = Tar::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        self.raw(name, header, data)
    }

    fn dir(&mut self, name: &str) -> &mut Tar {
        self.raw(name, Tar::header(tar::EntryType::Directory, 0o755, 0), b"")
    }

    fn link(&mut self, kind: tar::EntryType, name: &str, target: &str) -> &mut Tar {
        let mut header = Tar::header(kind, 0o777, 0);
        header.set_link_name_literal(target).unwrap();
        self.raw(name, header, b"")
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Tar {
        self.0.append_pax_extensions(records.iter().copied()).unwrap();
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        let builder = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        builder.into_inner().unwrap()
    }
}

fn unpack(tar: &[u8], dest: &Path) -> Result<UnpackStats> {
    unpack_layer(tar, dest, "test-layer", &UnpackOptions::default())
}

fn layer_dir() -> (tempfile::TempDir, PathBuf) {
    let temp = tempfile::tempdir().unwrap();
    let dest = temp.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    (temp, dest)
}

#[test]
fn every_entry_type_with_its_metadata() {
    let (_temp, dest) = layer_dir();
    let mut tar = Tar::new();
    let mut dir = Tar::header(tar::EntryType::Directory, 0o1750, 0);
    dir.set_uid(1000);
    dir.set_gid(1001);
    dir.set_mtime(T0 + 1);
    tar.raw("./d/", dir, b"");
    let mut file = Tar::header(tar::EntryType::Regular, 0o4755, 5);
    file.set_uid(1234);
    file.set_gid(2345);
    file.set_mtime(T0 + 2);
    tar.pax(&[
        ("SCHILY.xattr.trusted.berth", b"kept"),
        (
            "SCHILY.xattr.security.capability",
            &[1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        ("SCHILY.xattr.trusted.overlay.metacopy", b""),
        ("mtime", b"1600000002.5"),
    ]);
    tar.raw("d/f", file, b"hello");
    let mut symlink = Tar::header(tar::EntryType::Symlink, 0o777, 0);
    symlink.set_uid(7);
    symlink.set_gid(8);
    symlink.set_mtime(T0 + 3);
    symlink.set_link_name_literal("/etc/passwd").unwrap();
    tar.raw("d/l", symlink, b"");
    tar.link(tar::EntryType::Link, "d/h", "/d/f");
    let mut fifo = Tar::header(tar::EntryType::Fifo, 0o640, 0);
    fifo.set_uid(3);
    tar.raw("p", fifo, b"");
    let mut null = Tar::header(tar::EntryType::Char, 0o666, 0);
    null.set_device_major(1).unwrap();
    null.set_device_minor(3).unwrap();
    tar.raw("null", null, b"");
    let mut loop0 = Tar::header(tar::EntryType::Block, 0o660, 0);
    loop0.set_device_major(7).unwrap();
    loop0.set_device_minor(0).unwrap();
    loop0.set_gid(6);
    tar.raw("loop0", loop0, b"");
    let tar = tar.finish();

    let stats = unpack(&tar, &dest).unwrap();
    assert_eq!(stats.entries, 7);

    let d = std::fs::symlink_metadata(dest.join("d")).unwrap();
    assert!(d.is_dir());
    assert_eq!((d.mode() & 0o7777, d.uid(), d.gid()), (0o1750, 1000, 1001));
    assert_eq!(d.mtime(), (T0 + 1) as i64, "set after its children were created");

    let f = std::fs::symlink_metadata(dest.join("d/f")).unwrap();
    assert!(f.is_file());
    assert_eq!(std::fs::read(dest.join("d/f")).unwrap(), b"hello");
    assert_eq!((f.mode() & 0o7777, f.uid(), f.gid()), (0o4755, 1234, 2345), "setuid kept");
    assert_eq!((f.mtime(), f.mtime_nsec()), ((T0 + 2) as i64, 500_000_000));
    assert_eq!(f.nlink(), 2);
    assert_eq!(xattr::get(dest.join("d/f"), "trusted.berth").unwrap().unwrap(), b"kept");
    assert!(xattr::get(dest.join("d/f"), "security.capability").unwrap().is_some());
    assert_eq!(xattr::get(dest.join("d/f"), "trusted.overlay.redirect").unwrap(), None);
    assert_eq!(xattr::get(dest.join("d/f"), "trusted.overlay.metacopy").unwrap(), None);

    let l = std::fs::symlink_metadata(dest.join("d/l")).unwrap();
    assert!(l.file_type().is_symlink());
    assert_eq!(std::fs::read_link(dest.join("d/l")).unwrap(), Path::new("/etc/passwd"));
    assert_eq!((l.uid(), l.gid(), l.mtime()), (7, 8, (T0 + 3) as i64));

    let h = std::fs::symlink_metadata(dest.join("d/h")).unwrap();
    assert_eq!(h.ino(), f.ino());

    let p = std::fs::symlink_metadata(dest.join("p")).unwrap();
    assert!(p.file_type().is_fifo());
    assert_eq!((p.mode() & 0o7777, p.uid(), p.mtime()), (0o640, 3, T0 as i64));

    let null = std::fs::symlink_metadata(dest.join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    let loop0 = std::fs::symlink_metadata(dest.join("loop0")).unwrap();
    assert!(loop0.file_type().is_block_device());
    assert_eq!((loop0.rdev(), loop0.gid()), (makedev(7, 0), 6));
}

#[test]
fn whiteouts_in_overlay_format() {
    let (_temp, dest) = layer_dir();
    let mut tar = Tar::new();
    tar.dir("d").file("d/.wh..wh..opq", b"").file("d/z", b"z");
    tar.file(".wh.a", b"").file("e/.wh.gone", b"").file(".wh..wh.plnk", b"");
    tar.pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y")]).dir("forged");
    unpack(&tar.finish(), &dest).unwrap();

    for whiteout in ["a", "e/gone"] {
        let meta = std::fs::symlink_metadata(dest.join(whiteout)).unwrap();
        assert!(meta.file_type().is_char_device(), "{whiteout}");
        assert_eq!(meta.rdev(), 0);
    }
    assert_eq!(xattr::get(dest.join("d"), OPAQUE_XATTR).unwrap().unwrap(), b"y");
    assert_eq!(std::fs::read(dest.join("d/z")).unwrap(), b"z");
    assert_eq!(xattr::get(dest.join("forged"), OPAQUE_XATTR).unwrap(), None);
    assert!(!dest.join(".wh..wh.plnk").exists());
    assert!(!dest.join(".wh.a").exists());
    assert!(!dest.join("plnk").exists());
}

#[test]
fn compression_detected_and_diff_id_is_of_the_plain_tar() {
    let mut tar = Tar::new();
    tar.dir("etc").file("etc/hostname", b"berth\n");
    let plain = tar.finish();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&plain).unwrap();
    let gzip = gzip.finish().unwrap();
    let zstd = zstd::encode_all(&plain[..], 3).unwrap();

    for (kind, bytes) in [("plain", &plain), ("gzip", &gzip), ("zstd", &zstd)] {
        let (_temp, dest) = layer_dir();
        let stats = unpack(bytes, &dest).unwrap();
        assert_eq!(stats.diff_id, Digest::of(&plain), "{kind}");
        assert_eq!(stats.uncompressed_size, plain.len() as u64, "{kind}");
        assert_eq!(stats.entries, 2, "{kind}");
        assert_eq!(std::fs::read(dest.join("etc/hostname")).unwrap(), b"berth\n", "{kind}");
    }
}

#[test]
fn later_entries_replace_earlier_ones() {
    let (temp, dest) = layer_dir();
    let outside = temp.path().join("outside");
    std::fs::write(&outside, b"keep").unwrap();
    let mut tar = Tar::new();
    tar.file("x", b"1").dir("x");
    tar.dir("y").file("y/child", b"").file("y", b"now a file");
    tar.dir("k").file("k/child", b"").dir("k");
    tar.file("f", b"old").file("f", b"new");
    tar.link(tar::EntryType::Symlink, "s", outside.to_str().unwrap()).file("s", b"mine");
    tar.link(tar::EntryType::Symlink, "t", "/nowhere").dir("t");
    unpack(&tar.finish(), &dest).unwrap();

    assert!(dest.join("x").is_dir());
    assert_eq!(std::fs::read(dest.join("y")).unwrap(), b"now a file");
    assert!(dest.join("k/child").exists(), "a directory stays a directory");
    assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"new");
    assert!(std::fs::symlink_metadata(dest.join("s")).unwrap().is_file());
    assert_eq!(std::fs::read(dest.join("s")).unwrap(), b"mine");
    assert!(std::fs::symlink_metadata(dest.join("t")).unwrap().is_dir());
    assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
}

#[test]
fn deep_trees_are_replaced() {
    let (_temp, dest) = layer_dir();
    let deep = vec!["n"; 1500].join("/");
    let mut tar = Tar::new();
    tar.file(&format!("top/{deep}/leaf"), b"").file("top", b"flat");
    unpack(&tar.finish(), &dest).unwrap();
    assert_eq!(std::fs::read(dest.join("top")).unwrap(), b"flat");
}

enum Expect {
    Hostile,
    /// Refused or not, only inside `dest`; if given, this path exists below `dest`.
    Contained(Option<&'static str>),
}

#[test]
fn hostile_layers_stay_inside() {
    use tar::EntryType::{Link, Symlink};
    let temp = tempfile::tempdir().unwrap();
    let base = temp.path().to_str().unwrap().to_string();
    let outside_dir = format!("{base}/outside-dir");
    let sentinel = format!("{base}/sentinel");
    let small = UnpackOptions { max_entries: 3, max_path_len: 64, ..UnpackOptions::default() };
    let no_devices = UnpackOptions { allow_devices: false, ..UnpackOptions::default() };
    let defaults = UnpackOptions::default();

    type Case = (&'static str, Box<dyn Fn(&mut Tar)>, UnpackOptions, Expect);
    let od = outside_dir.clone();
    let od2 = outside_dir.clone();
    let od3 = outside_dir.clone();
    let se = sentinel.clone();
    let se2 = base.clone();
    let cases: Vec<Case> = vec![
        (
            "dotdot",
            Box::new(|t: &mut Tar| {
                t.file("../escape", b"x");
            }),
            defaults.clone(),
            Expect::Hostile,
        ),
        (
            "inner dotdot",
            Box::new(|t: &mut Tar| {
                t.file("a/../../escape", b"x");
            }),
            defaults.clone(),
            Expect::Hostile,
        ),
        (
            "absolute",
            Box::new(|t: &mut Tar| {
                t.file("/etc/x", b"x");
            }),
            defaults.clone(),
            Expect::Contained(Some("etc/x")),
        ),
        (
            "symlink to an outside dir",
            Box::new(move |t: &mut Tar| {
                t.link(Symlink, "a", &od).file("a/file", b"x");
            }),
            defaults.clone(),
            Expect::Contained(None),
        ),
        (
            "symlink up",
            Box::new(|t: &mut Tar| {
                t.link(Symlink, "a", "../..").file("a/file", b"x");
            }),
            defaults.clone(),
            Expect::Contained(Some("file")),
        ),
        (
            "symlink chain",
            Box::new(|t: &mut Tar| {
                t.link(Symlink, "a", "b")
                    .link(Symlink, "b", "c/../../../..")
                    .dir("c")
                    .file("a/chained", b"x");
            }),
            defaults.clone(),
            Expect::Contained(Some("chained")),
        ),
        (
            "symlink to root",
            Box::new(|t: &mut Tar| {
                t.link(Symlink, "r", "/").dir("r/tmp").file("r/tmp/x", b"x");
            }),
            defaults.clone(),
            Expect::Contained(Some("tmp/x")),
        ),
        (
            "symlink loop",
            Box::new(|t: &mut Tar| {
                t.link(Symlink, "a", "a").file("a/x", b"x");
            }),
            defaults.clone(),
            Expect::Hostile,
        ),
        (
            "file as a parent",
            Box::new(|t: &mut Tar| {
                t.file("f", b"").file("f/x", b"x");
            }),
            defaults.clone(),
            Expect::Hostile,
        ),
        (
            "hard link up",
            Box::new(|t: &mut Tar| {
                t.link(Link, "h", "../sentinel");
            }),
            defaults.clone(),
            Expect::Hostile,
        ),
        (
            "hard link absolute",
            Box::new(move |t: &mut Tar| {
                t.link(Link, "h", &se);
            }),
            defaults.clone(),
            Expect::Hostile,
        ),
        (
            "hard link through a symlink",
            Box::new(move |t: &mut Tar| {
                t.link(Symlink, "s", &se2).link(Link, "h", "s/sentinel");
            }),
            defaults.clone(),
            Expect::Hostile,
        ),
        (
            "whiteout through a symlink",
            Box::new(move |t: &mut Tar| {
                t.link(Symlink, "s", &od2).file("s/.wh.x", b"");
            }),
            defaults.clone(),
            Expect::Contained(None),
        ),
        (
            "opaque through a symlink",
            Box::new(move |t: &mut Tar| {
                t.link(Symlink, "s", &od3).file("s/.wh..wh..opq", b"");
            }),
            defaults.clone(),
            Expect::Contained(None),
        ),
        (
            "NUL in a name",
            Box::new(|t: &mut Tar| {
                t.pax(&[("path", b"a\0/../../x")]).file("placeholder", b"");
            }),
            defaults.clone(),
            Expect::Hostile,
        ),
        (
            "long path",
            Box::new(|t: &mut Tar| {
                t.file(&"p".repeat(65), b"");
            }),
            small.clone(),
            Expect::Hostile,
        ),
        (
            "long symlink target",
            Box::new(|t: &mut Tar| {
                t.link(Symlink, "s", &"p".repeat(65));
            }),
            small.clone(),
            Expect::Hostile,
        ),
        (
            "too many entries",
            Box::new(|t: &mut Tar| {
                t.file("1", b"").file("2", b"").file("3", b"").file("4", b"");
            }),
            small.clone(),
            Expect::Hostile,
        ),
        (
            "device not allowed",
            Box::new(|t: &mut Tar| {
                let mut h = Tar::header(tar::EntryType::Char, 0o666, 0);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                t.raw("null", h, b"");
            }),
            no_devices.clone(),
            Expect::Hostile,
        ),
        (
            "huge PAX header",
            Box::new(|t: &mut Tar| {
                t.pax(&[("SCHILY.xattr.user.big", &vec![b'x'; 4 << 20])]).file("f", b"");
            }),
            defaults.clone(),
            Expect::Hostile,
        ),
    ];

    for (name, build, options, expect) in cases {
        std::fs::create_dir(&outside_dir).unwrap();
        std::fs::write(&sentinel, b"keep").unwrap();
        let dest = temp.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let mut tar = Tar::new();
        build(&mut tar);
        let result = unpack_layer(&tar.finish()[..], &dest, "test-layer", &options);
        match expect {
            Expect::Hostile => {
                assert!(matches!(result, Err(Error::HostileLayer { .. })), "{name}: {result:?}")
            }
            Expect::Contained(Some(inside)) => {
                assert!(result.is_ok(), "{name}: {result:?}");
                assert!(dest.join(inside).exists(), "{name}: {inside} missing");
            }
            Expect::Contained(None) => {}
        }
        let mut names: Vec<_> = std::fs::read_dir(temp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["dest", "outside-dir", "sentinel"], "{name}");
        assert_eq!(std::fs::read_dir(&outside_dir).unwrap().count(), 0, "{name}");
        assert_eq!(xattr::get(&outside_dir, OPAQUE_XATTR).unwrap(), None, "{name}");
        let meta = std::fs::metadata(&sentinel).unwrap();
        assert_eq!((meta.nlink(), meta.permissions().mode() & 0o777), (1, 0o644), "{name}");
        assert_eq!(std::fs::read(&sentinel).unwrap(), b"keep", "{name}");
        std::fs::remove_dir_all(&dest).unwrap();
        std::fs::remove_dir_all(&outside_dir).unwrap();
    }
}

#[test]
fn pax_times() {
    let at = |text: &str| parse_pax_time(text.as_bytes()).map(|t| (t.tv_sec(), t.tv_nsec()));
    assert_eq!(at("12"), Some((12, 0)));
    assert_eq!(at("12.5"), Some((12, 500_000_000)));
    assert_eq!(at("12.1234567891"), Some((12, 123_456_789)));
    assert_eq!(at("-1.5"), Some((-2, 500_000_000)));
    assert_eq!(at("x"), None);
}

#[test]
fn remove_all_does_not_follow_symlinks() {
    let temp = tempfile::tempdir().unwrap();
    let victim = temp.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("keep"), b"").unwrap();
    let tree = temp.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::os::unix::fs::symlink(&victim, tree.join("a/b/link")).unwrap();
    std::os::unix::fs::symlink(&victim, tree.join("a/link")).unwrap();
    let parent = File::open(temp.path()).unwrap();
    remove_all_at(&parent, OsStr::new("tree")).unwrap();
    assert!(!tree.exists());
    assert!(victim.join("keep").exists());
    remove_all_at(&parent, OsStr::new("tree")).unwrap();
}
