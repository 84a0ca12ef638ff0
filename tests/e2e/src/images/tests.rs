//! The test images' own unit tests: the builder's output, byte for byte where it matters.

use std::collections::BTreeSet;
use std::io::Read;

use flate2::read::GzDecoder;
use serde_json::Value;

use super::*;

/// Gunzips with a decoder that checks the trailer's CRC and size.
pub(crate) fn gunzip(blob: &Blob) -> Vec<u8> {
    let mut out = vec![];
    GzDecoder::new(blob.bytes.as_slice()).read_to_end(&mut out).unwrap();
    out
}

fn uncompressed(blob: &Blob) -> Vec<u8> {
    match blob.media_type.as_str() {
        MEDIA_OCI_LAYER_ZSTD => zstd::stream::decode_all(blob.bytes.as_slice()).unwrap(),
        MEDIA_OCI_LAYER_TAR => blob.bytes.clone(),
        _ => gunzip(blob),
    }
}

struct TarEntry {
    path: String,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Option<String>,
    data: Vec<u8>,
}

fn entries(tar_bytes: &[u8]) -> Vec<TarEntry> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut data = vec![];
            e.read_to_end(&mut data).unwrap();
            TarEntry {
                path: String::from_utf8(e.path_bytes().into_owned()).unwrap(),
                kind: h.entry_type(),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                mtime: h.mtime().unwrap(),
                link: h.link_name().unwrap().map(|l| l.to_string_lossy().into_owned()),
                data,
            }
        })
        .collect()
}

fn json(blob: &Blob) -> Value {
    serde_json::from_slice(&blob.bytes).unwrap()
}

fn all_images(images: &TestImages) -> Vec<&TestImage> {
    let mut all = vec![];
    for image in images.all().into_iter().chain(images.extra()).chain(images.run.all()) {
        all.push(image);
        all.extend(image.children.iter());
    }
    all
}

fn all_blobs(image: &TestImage) -> Vec<&Blob> {
    let mut blobs = vec![&image.manifest];
    if !image.is_index() {
        blobs.push(&image.config);
    }
    blobs.extend(image.layers.iter());
    blobs
}

#[test]
fn building_twice_gives_identical_blobs() {
    let a = build().unwrap();
    let b = build().unwrap();
    for (x, y) in all_images(&a).into_iter().zip(all_images(&b)) {
        assert_eq!(all_blobs(x), all_blobs(y), "{}", x.reference);
    }
    assert_eq!(TestImages::get().oci.manifest, a.oci.manifest);
}

#[test]
fn digests_are_sha256_of_bytes() {
    for image in all_images(TestImages::get()) {
        for blob in all_blobs(image) {
            let hex = hex::encode(Sha256::digest(&blob.bytes));
            assert_eq!(blob.digest, format!("sha256:{hex}"), "{}", blob.media_type);
        }
    }
}

#[test]
fn gzip_header_is_fixed() {
    for layer in &TestImages::get().oci.layers {
        // ID1 ID2 CM FLG MTIME(4): no FNAME/FCOMMENT flags and no mtime.
        assert_eq!(&layer.bytes[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
    }
}

#[test]
fn manifests_reference_the_blobs() {
    let images = TestImages::get();
    let cases = [
        (&images.oci, MEDIA_OCI_MANIFEST, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER),
        (&images.docker, MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_CONFIG, MEDIA_DOCKER_LAYER),
        (&images.multiarch.children[0], MEDIA_OCI_MANIFEST, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER),
        (&images.multiarch.children[1], MEDIA_OCI_MANIFEST, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER),
    ];
    for (image, manifest_type, config_type, layer_type) in cases {
        assert_eq!(image.manifest.media_type, manifest_type);
        assert_eq!(image.config.media_type, config_type);
        let m = json(&image.manifest);
        assert_eq!(m["schemaVersion"], 2);
        assert_eq!(m["mediaType"], manifest_type);
        assert_eq!(m["config"]["mediaType"], config_type);
        assert_eq!(m["config"]["digest"], image.config.digest.as_str());
        assert_eq!(m["config"]["size"], image.config.size());
        let layers = m["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 3);
        assert_eq!(image.layers.len(), 3);
        for (desc, blob) in layers.iter().zip(&image.layers) {
            assert_eq!(blob.media_type, layer_type);
            assert_eq!(desc["mediaType"], layer_type);
            assert_eq!(desc["digest"], blob.digest.as_str());
            assert_eq!(desc["size"], blob.size());
        }
    }
    // Same bytes under another media type: dedup tests rely on this.
    let oci: Vec<_> = images.oci.layers.iter().map(|l| &l.digest).collect();
    let docker: Vec<_> = images.docker.layers.iter().map(|l| &l.digest).collect();
    assert_eq!(oci, docker);
}

#[test]
fn configs_match_the_spec() {
    let images = TestImages::get();
    let cases = [
        (&images.oci, "oci", "amd64", None),
        (&images.docker, "docker", "amd64", None),
        (&images.multiarch.children[0], "amd64", "amd64", None),
        (&images.multiarch.children[1], "arm64", "arm64", Some("v8")),
    ];
    for (image, env, arch, variant) in cases {
        let c = json(&image.config);
        assert_eq!(c["os"], "linux");
        assert_eq!(c["architecture"], arch);
        assert_eq!(c["variant"].as_str(), variant);
        assert_eq!(c["created"], CREATED);
        let cfg = &c["config"];
        assert_eq!(cfg["Env"], serde_json::json!([PATH_ENV, format!("BERTH_IMAGE={env}")]));
        assert!(cfg.get("Entrypoint").is_none());
        assert_eq!(cfg["Cmd"], serde_json::json!(["/bin/sh"]));
        assert_eq!(cfg["WorkingDir"], "/");
        assert_eq!(cfg["User"], "");
        assert_eq!(cfg["Labels"]["org.berth.test"], "busybox");
        assert_eq!(cfg["StopSignal"], "SIGTERM");
        assert_eq!(c["rootfs"]["type"], "layers");
        assert_eq!(c["history"].as_array().unwrap().len(), 3);
    }
}

#[test]
fn run_images_have_their_configs_and_the_run_layer() {
    let images = TestImages::get();
    let run = &images.run;
    let user = |image: &TestImage| json(&image.config)["config"]["User"].clone();
    assert_eq!(user(&run.entrypoint), "");
    assert_eq!(user(&run.cmd), "");
    assert_eq!(user(&run.user_name), "berth");
    assert_eq!(user(&run.user_uid), "1000");
    assert_eq!(user(&run.user_uid_gid), "1000:2000");
    assert_eq!(user(&run.user_name_group), "berth:extra");

    let ep = json(&run.entrypoint.config)["config"].clone();
    assert_eq!(ep["Entrypoint"], serde_json::json!([PROBE, "ep"]));
    assert_eq!(ep["Cmd"], serde_json::json!(["cmd1", "cmd2"]));
    assert_eq!(ep["Env"], serde_json::json!([PATH_ENV, "FOO=image-foo", "BAR=image-bar"]));
    assert_eq!(ep["WorkingDir"], "/home/berth");
    let cmd = json(&run.cmd.config)["config"].clone();
    assert!(cmd.get("Entrypoint").is_none());
    assert_eq!(cmd["Cmd"], serde_json::json!([PROBE, "cmd"]));
    assert_eq!(cmd["Env"], serde_json::json!([PATH_ENV]));
    assert_eq!(cmd["WorkingDir"], "");

    for image in run.all() {
        assert_eq!(image.repository(), "berth-test/run");
        assert_eq!(image.layers.len(), 4, "{}", image.reference);
        assert_eq!(image.layers[..3], images.oci.layers[..], "{}", image.reference);
        let layer = entries(&gunzip(&image.layers[3]));
        let find = |p: &str| layer.iter().find(|e| e.path == p).unwrap();
        let probe = find("usr/bin/probe");
        assert_eq!(probe.mode, 0o755);
        assert!(probe.data.starts_with(b"#!/bin/sh\n"));
        assert_eq!(find("escape-abs").link.as_deref(), Some(ESCAPE_ABS_INSIDE));
        let rel = find("escape-rel").link.clone().unwrap();
        assert!(rel.starts_with("../../") && rel.ends_with(ESCAPE_REL_INSIDE), "{rel}");
    }
}

#[test]
fn diff_ids_match_uncompressed_layers() {
    for image in all_images(TestImages::get()) {
        if image.is_index() {
            continue;
        }
        let c = json(&image.config);
        let in_config: Vec<&str> = c["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        let computed: Vec<String> =
            image.layers.iter().map(|l| sha256_digest(&uncompressed(l))).collect();
        assert_eq!(in_config, computed);
        assert_eq!(image.diff_ids, computed);
    }
}

#[test]
fn base_layer_has_busybox_users_and_links() {
    let base = entries(&gunzip(&TestImages::get().oci.layers[0]));
    let paths: Vec<&str> = base.iter().map(|e| e.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort_by(|a, b| Path::new(a).cmp(Path::new(b)));
    assert_eq!(paths, sorted);
    let find = |p: &str| base.iter().find(|e| e.path == p).unwrap();

    let bb = find("bin/busybox");
    assert_eq!(bb.data, std::fs::read(BUSYBOX).unwrap());
    assert_eq!(bb.mode, 0o755);
    for applet in ["sh", "ls", "cat", "sleep", "nc", "whoami"] {
        let link = find(&format!("bin/{applet}"));
        assert_eq!(link.kind, tar::EntryType::Symlink);
        assert_eq!(link.link.as_deref(), Some("busybox"));
    }
    assert_eq!(find("tmp/").mode, 0o1777);
    let home = find("home/berth/");
    assert_eq!((home.uid, home.gid), (1000, 1000));
    assert!(String::from_utf8_lossy(&find("etc/passwd").data)
        .contains("berth:x:1000:1000::/home/berth:/bin/sh\n"));
    assert!(String::from_utf8_lossy(&find("etc/group").data).contains("extra:x:2000:berth\n"));
    for e in &base {
        assert_eq!(e.mtime, MTIME, "{}", e.path);
        if e.path != "home/berth/" {
            assert_eq!((e.uid, e.gid), (0, 0), "{}", e.path);
        }
    }
}

#[test]
fn changes_layer_has_whiteout_and_opaque_marker() {
    let changes = entries(&gunzip(&TestImages::get().oci.layers[2]));
    for marker in ["etc/berth/.wh.removed-later", "data/opaque/.wh..wh..opq"] {
        let e = changes.iter().find(|e| e.path == marker).unwrap();
        assert_eq!(e.kind, tar::EntryType::Regular);
        assert!(e.data.is_empty());
    }
    assert!(changes.iter().any(|e| e.path == "data/opaque/new"));
    assert!(changes.iter().any(|e| e.path == "etc/berth/layer3"));
}

/// Applies the layers the way the OCI spec says, to check the EXPECT_*
/// lists against what the layers really contain.
#[test]
fn expectations_match_applied_layers() {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for layer in &TestImages::get().oci.layers {
        let layer = entries(&gunzip(layer));
        for e in &layer {
            let path = format!("/{}", e.path.trim_end_matches('/'));
            let (parent, name) = path.rsplit_once('/').unwrap();
            if name == ".wh..wh..opq" {
                files.retain(|p, _| !p.starts_with(&format!("{parent}/")));
            } else if let Some(hidden) = name.strip_prefix(".wh.") {
                let hidden = format!("{parent}/{hidden}");
                files.retain(|p, _| *p != hidden && !p.starts_with(&format!("{hidden}/")));
            }
        }
        for e in layer {
            let path = format!("/{}", e.path.trim_end_matches('/'));
            if !path.rsplit('/').next().unwrap().starts_with(".wh.") {
                files.insert(path, e.data);
            }
        }
    }
    let present: BTreeSet<&str> = files.keys().map(String::as_str).collect();
    for p in EXPECT_PRESENT {
        assert!(present.contains(p), "{p} missing");
    }
    for p in EXPECT_ABSENT {
        assert!(!present.contains(p), "{p} present");
    }
    for (p, contents) in EXPECT_CONTENTS {
        assert_eq!(files[*p], contents.as_bytes(), "{p}");
    }
}

#[test]
fn index_has_both_platforms() {
    let multiarch = &TestImages::get().multiarch;
    assert!(multiarch.is_index());
    assert_eq!(multiarch.reference, MULTIARCH_REF);
    let i = json(&multiarch.manifest);
    assert_eq!(i["schemaVersion"], 2);
    assert_eq!(i["mediaType"], MEDIA_OCI_INDEX);
    let manifests = i["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2);
    for (desc, child) in manifests.iter().zip(&multiarch.children) {
        assert_eq!(child.repository(), "berth-test/multiarch");
        assert_eq!(child.tag(), None);
        assert_eq!(desc["mediaType"], MEDIA_OCI_MANIFEST);
        assert_eq!(desc["digest"], child.manifest.digest.as_str());
        assert_eq!(desc["size"], child.manifest.size());
    }
    assert_eq!(
        manifests[0]["platform"],
        serde_json::json!({"architecture": "amd64", "os": "linux"})
    );
    assert_eq!(
        manifests[1]["platform"],
        serde_json::json!({"architecture": "arm64", "os": "linux", "variant": "v8"})
    );
    assert!(multiarch.child("arm64").is_some());
    assert_ne!(multiarch.children[0].digest(), TestImages::get().oci.digest());
}

#[test]
fn zstd_and_plain_have_the_oci_filesystem() {
    let images = TestImages::get();
    let cases = [
        (&images.zstd, ZSTD_REF, MEDIA_OCI_LAYER_ZSTD, "zstd"),
        (&images.plain, PLAIN_REF, MEDIA_OCI_LAYER_TAR, "plain"),
    ];
    for (image, reference, layer_type, env) in cases {
        assert_eq!(image.reference, reference);
        assert_eq!(image.manifest.media_type, MEDIA_OCI_MANIFEST);
        assert_eq!(image.config.media_type, MEDIA_OCI_CONFIG);
        assert_eq!(image.diff_ids, images.oci.diff_ids, "{reference}: same diff_ids");
        let m = json(&image.manifest);
        let c = json(&image.config);
        assert_eq!(c["config"]["Env"][1], format!("BERTH_IMAGE={env}"));
        assert_eq!(m["config"]["digest"], image.config.digest.as_str());
        for ((desc, blob), oci) in
            m["layers"].as_array().unwrap().iter().zip(&image.layers).zip(&images.oci.layers)
        {
            assert_eq!(blob.media_type, layer_type);
            assert_eq!(desc["mediaType"], layer_type);
            assert_eq!(desc["digest"], blob.digest.as_str());
            assert_eq!(desc["size"], blob.size());
            assert_ne!(blob.digest, oci.digest);
            let tar = match layer_type {
                MEDIA_OCI_LAYER_ZSTD => {
                    assert_eq!(&blob.bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
                    zstd::stream::decode_all(blob.bytes.as_slice()).unwrap()
                }
                _ => blob.bytes.clone(),
            };
            assert_eq!(tar, gunzip(oci), "{reference}: the same tar");
        }
    }
    // Plain layers are their own diff_ids.
    let plain: Vec<&String> = images.plain.layers.iter().map(|l| &l.digest).collect();
    assert_eq!(plain, images.oci.diff_ids.iter().collect::<Vec<_>>());
}

#[test]
fn impostors_decompress_to_another_tar_of_the_same_length() {
    let images = TestImages::get();
    let layers = images.oci.layers.iter().chain(&images.zstd.layers).chain(&images.plain.layers);
    for layer in layers {
        let impostor = impostor_layer(layer);
        assert_eq!(impostor.len(), layer.size(), "{}", layer.media_type);
        assert_ne!(sha256_digest(&impostor), layer.digest);
        let (tar, original) = match layer.media_type.as_str() {
            MEDIA_OCI_LAYER_ZSTD => (
                zstd::stream::decode_all(impostor.as_slice()).unwrap(),
                zstd::stream::decode_all(layer.bytes.as_slice()).unwrap(),
            ),
            MEDIA_OCI_LAYER_TAR => (impostor.clone(), layer.bytes.clone()),
            _ => {
                let mut tar = vec![];
                // The decoder checks the CRC and size in the trailer.
                GzDecoder::new(impostor.as_slice()).read_to_end(&mut tar).unwrap();
                (tar, gunzip(layer))
            }
        };
        assert_eq!(tar.len(), original.len());
        assert_ne!(tar, original);
        let names = |t: &[u8]| -> Vec<String> { entries(t).into_iter().map(|e| e.path).collect() };
        assert_eq!(names(&tar), names(&original), "a valid tar of the same entries");
    }
}

#[test]
fn references_split() {
    let images = TestImages::get();
    assert_eq!(images.oci.repository(), "berth-test/busybox");
    assert_eq!(images.oci.tag(), Some("oci"));
    assert_eq!(images.oci.aliases, &[LATEST_REF]);
    assert_eq!(split_reference("127.0.0.1:5000/a/b"), ("127.0.0.1:5000/a/b", None));
    assert_eq!(
        images.oci.digest_reference_at("127.0.0.1:5000"),
        format!("127.0.0.1:5000/berth-test/busybox@{}", images.oci.digest())
    );
}
