//! Test images built in memory from Debian's `busybox-static` and pushed to
//! the per-node test registry.
//!
//! Nothing is downloaded: the e2e network namespaces have no way out, and the
//! tests need images whose exact contents (layers, whiteouts, users, config)
//! they can rely on. Every byte is a function of `/bin/busybox` alone, so the
//! digests are stable across runs and tests may compare them with what the
//! runtime reports.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use flate2::{Compression, GzBuilder};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Where Debian's `busybox-static` installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

pub const OCI_REF: &str = "berth-test/busybox:oci";
pub const LATEST_REF: &str = "berth-test/busybox:latest";
pub const DOCKER_REF: &str = "berth-test/busybox:docker";
/// The filesystem of `busybox:oci` with zstd-compressed layers.
pub const ZSTD_REF: &str = "berth-test/busybox:zstd";
/// The filesystem of `busybox:oci` with uncompressed layers.
pub const PLAIN_REF: &str = "berth-test/busybox:plain";
pub const MULTIARCH_REF: &str = "berth-test/multiarch:latest";
const MULTIARCH_REPO: &str = "berth-test/multiarch";

/// The run-config images (see [`RunImages`]): the layers of `busybox:oci` plus the `run` layer.
/// Entrypoint `[PROBE, "ep"]`, Cmd `["cmd1", "cmd2"]`, Env `FOO`/`BAR`, WorkingDir
/// `/home/berth`.
pub const RUN_ENTRYPOINT_REF: &str = "berth-test/run:entrypoint";
/// No Entrypoint, Cmd `[PROBE, "cmd"]`, only `PATH` in Env, no WorkingDir.
pub const RUN_CMD_REF: &str = "berth-test/run:cmd";
/// Cmd `[PROBE]`, User `berth`.
pub const RUN_USER_NAME_REF: &str = "berth-test/run:user-name";
/// Cmd `[PROBE]`, User `1000`.
pub const RUN_USER_UID_REF: &str = "berth-test/run:user-uid";
/// Cmd `[PROBE]`, User `1000:2000`.
pub const RUN_USER_UID_GID_REF: &str = "berth-test/run:user-uid-gid";
/// Cmd `[PROBE]`, User `berth:extra`.
pub const RUN_USER_NAME_GROUP_REF: &str = "berth-test/run:user-name-group";

/// A script in the `run` layer that prints, one `probe <key>=<value>` line each, what a
/// container was started with: `args` (its arguments), `cwd`, `FOO`, `BAR` and `HOME`
/// (`<unset>` when unset), `uid`, `gid` and `groups` (from `id -u`, `id -g`, `id -G`).
pub const PROBE: &str = "/usr/bin/probe";
const PROBE_SCRIPT: &str = "#!/bin/sh\n\
echo \"probe args=$*\"\n\
echo \"probe cwd=$(pwd)\"\n\
echo \"probe FOO=${FOO-<unset>}\"\n\
echo \"probe BAR=${BAR-<unset>}\"\n\
echo \"probe HOME=${HOME-<unset>}\"\n\
echo \"probe uid=$(id -u)\"\n\
echo \"probe gid=$(id -g)\"\n\
echo \"probe groups=$(id -G)\"\n";

/// Symlinks in the `run` layer that point out of the root: an absolute one, and a relative
/// one with enough `..` to reach `/` from anywhere. As mount targets they must resolve inside
/// the container's root, to [`ESCAPE_ABS_INSIDE`] and [`ESCAPE_REL_INSIDE`], never to the
/// same paths on the node.
pub const ESCAPE_ABS_LINK: &str = "/escape-abs";
pub const ESCAPE_ABS_INSIDE: &str = "/tmp/berth-e2e-escape-abs";
pub const ESCAPE_REL_LINK: &str = "/escape-rel";
pub const ESCAPE_REL_INSIDE: &str = "/tmp/berth-e2e-escape-rel";
const ESCAPE_REL_TARGET: &str =
    "../../../../../../../../../../../../../../../../../../../../tmp/berth-e2e-escape-rel";

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The `created` time of every image and the mtime of every tar entry; a
/// constant so that rebuilding yields the same digests.
pub const CREATED: &str = "2024-01-01T00:00:00Z";
pub(crate) const MTIME: u64 = 1_704_067_200;

pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Applets linked into `/bin`; the build keeps only those this busybox has.
pub const APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "sleep", "true", "false", "id", "env", "printf", "test", "mkdir",
    "rm", "touch", "wc", "head", "grep", "kill", "ps", "hostname", "stat", "dd", "yes", "nc",
    "wget", "ip", "mount", "ifconfig", "top", "seq", "sync", "uname", "date", "tee", "sed",
    "chmod", "whoami", "stty", "httpd",
];

/// The unprivileged user in `/etc/passwd`; it is also in group `extra` (2000).
pub const TEST_USER: &str = "berth";
pub const TEST_UID: u32 = 1000;
pub const TEST_GID: u32 = 1000;
pub const EXTRA_GID: u32 = 2000;

/// Paths that exist once all layers of `busybox:oci`/`busybox:docker` are
/// applied.
pub const EXPECT_PRESENT: &[&str] = &[
    "/bin/busybox",
    "/bin/sh",
    "/etc/passwd",
    "/etc/group",
    "/home/berth",
    "/tmp",
    "/etc/berth/kept",
    "/etc/berth/layer3",
    "/data/opaque",
    "/data/opaque/new",
];

/// Paths that a correct whiteout/opaque-directory implementation hides,
/// including the markers themselves.
pub const EXPECT_ABSENT: &[&str] = &[
    "/etc/berth/removed-later",
    "/etc/berth/.wh.removed-later",
    "/data/opaque/old-a",
    "/data/opaque/old-b",
    "/data/opaque/.wh..wh..opq",
];

/// Small files whose exact contents a test may `cat`.
pub const EXPECT_CONTENTS: &[(&str, &str)] = &[
    ("/etc/berth/kept", "kept\n"),
    ("/etc/berth/layer3", "layer3\n"),
    ("/data/opaque/new", "new\n"),
];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
berth:x:1000:1000::/home/berth:/bin/sh\n";

const GROUP: &str = "root:x:0:\n\
nogroup:x:65534:\n\
berth:x:1000:\n\
extra:x:2000:berth\n";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub(crate) fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob { media_type: media_type.to_owned(), digest: sha256_digest(&bytes), bytes }
    }

    pub fn size(&self) -> usize {
        self.bytes.len()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platform {
    pub os: &'static str,
    pub architecture: &'static str,
    pub variant: Option<&'static str>,
}

pub(crate) const LINUX_AMD64: Platform =
    Platform { os: "linux", architecture: "amd64", variant: None };
const LINUX_ARM64_V8: Platform =
    Platform { os: "linux", architecture: "arm64", variant: Some("v8") };

#[derive(Debug, Clone)]
pub struct TestImage {
    /// `repository:tag` without the registry; just `repository` for the
    /// children of an index, which are pushed by digest only.
    pub reference: &'static str,
    /// Further `repository:tag`s that name the same manifest.
    pub aliases: &'static [&'static str],
    /// The manifest or, for an index, the index itself; its digest is what a
    /// pull by tag resolves to.
    pub manifest: Blob,
    /// For an index this is an empty placeholder (no media type, digest or
    /// bytes): an index has no config, see `children`.
    pub config: Blob,
    /// Compressed layers, lowest first: base (busybox), content, changes.
    pub layers: Vec<Blob>,
    /// `sha256:` of each uncompressed layer tar, as in the config's
    /// `rootfs.diff_ids`.
    pub diff_ids: Vec<String>,
    /// `None` for an index.
    pub platform: Option<Platform>,
    /// The per-platform images of an index, in index order.
    pub children: Vec<TestImage>,
}

impl TestImage {
    pub fn repository(&self) -> &'static str {
        split_reference(self.reference).0
    }

    pub fn tag(&self) -> Option<&'static str> {
        split_reference(self.reference).1
    }

    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    pub fn is_index(&self) -> bool {
        self.manifest.media_type == MEDIA_OCI_INDEX
    }

    /// `registry/repository:tag`, as a CRI client would ask for it.
    pub fn reference_at(&self, registry: &str) -> String {
        format!("{registry}/{}", self.reference)
    }

    /// `registry/repository@sha256:…`
    pub fn digest_reference_at(&self, registry: &str) -> String {
        format!("{registry}/{}@{}", self.repository(), self.manifest.digest)
    }

    /// The child for `architecture`, for an index.
    pub fn child(&self, architecture: &str) -> Option<&TestImage> {
        self.children.iter().find(|c| c.platform.is_some_and(|p| p.architecture == architecture))
    }
}

fn split_reference(reference: &'static str) -> (&'static str, Option<&'static str>) {
    let name_start = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[name_start..].find(':') {
        Some(i) => (&reference[..name_start + i], Some(&reference[name_start + i + 1..])),
        None => (reference, None),
    }
}

#[derive(Debug)]
pub struct TestImages {
    /// `berth-test/busybox:oci`, also tagged `berth-test/busybox:latest`.
    pub oci: TestImage,
    /// `berth-test/busybox:docker`: same layer blobs as `oci`.
    pub docker: TestImage,
    /// `berth-test/multiarch:latest`: an index of linux/amd64 and linux/arm64/v8.
    pub multiarch: TestImage,
    /// `berth-test/busybox:zstd`: the layers of `oci` compressed with zstd
    /// (`…tar+zstd`), so the same `diff_ids`; pushed by [`push_extra`].
    pub zstd: TestImage,
    /// `berth-test/busybox:plain`: the layers of `oci` uncompressed
    /// (`…layer.v1.tar`), so each blob digest equals its diff_id; pushed by
    /// [`push_extra`].
    pub plain: TestImage,
    /// `berth-test/run:*`: pushed by [`push_run`].
    pub run: RunImages,
}

/// Images for the rules by which a container's process is made from its image config and its
/// CRI config (entrypoint/cmd vs command/args, env, working dir, user). Each is the layers of
/// `busybox:oci` plus a `run` layer with [`PROBE`] and the [`ESCAPE_ABS_LINK`] and
/// [`ESCAPE_REL_LINK`] symlinks.
#[derive(Debug)]
pub struct RunImages {
    /// [`RUN_ENTRYPOINT_REF`]
    pub entrypoint: TestImage,
    /// [`RUN_CMD_REF`]
    pub cmd: TestImage,
    /// [`RUN_USER_NAME_REF`]
    pub user_name: TestImage,
    /// [`RUN_USER_UID_REF`]
    pub user_uid: TestImage,
    /// [`RUN_USER_UID_GID_REF`]
    pub user_uid_gid: TestImage,
    /// [`RUN_USER_NAME_GROUP_REF`]
    pub user_name_group: TestImage,
}

impl RunImages {
    pub fn all(&self) -> [&TestImage; 6] {
        [
            &self.entrypoint,
            &self.cmd,
            &self.user_name,
            &self.user_uid,
            &self.user_uid_gid,
            &self.user_name_group,
        ]
    }
}

impl TestImages {
    /// Builds the images on first use; panics if that is impossible, because
    /// no e2e test can run without them.
    pub fn get() -> &'static TestImages {
        static IMAGES: OnceLock<TestImages> = OnceLock::new();
        IMAGES.get_or_init(|| match build() {
            Ok(images) => images,
            Err(err) => panic!(
                "cannot build the e2e test images from {BUSYBOX} \
                 (install busybox-static): {err}"
            ),
        })
    }

    /// What [`push_all`] pushes.
    pub fn all(&self) -> [&TestImage; 3] {
        [&self.oci, &self.docker, &self.multiarch]
    }

    /// What [`push_extra`] pushes: the other layer compressions.
    pub fn extra(&self) -> [&TestImage; 2] {
        [&self.zstd, &self.plain]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("reading {BUSYBOX}: {0}")]
    ReadBusybox(#[source] io::Error),
    #[error("{BUSYBOX} is not a static 64-bit little-endian ELF executable: {0}")]
    NotStatic(&'static str),
    #[error("running {BUSYBOX} --list: {0}")]
    ListApplets(String),
    #[error("{BUSYBOX} lacks the applet(s) the tests need: {0}")]
    MissingApplets(String),
    #[error("writing a layer tar: {0}")]
    Tar(#[source] io::Error),
    #[error("serialising JSON: {0}")]
    Json(#[source] serde_json::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("pushing {what} to {target}: {source}")]
    Registry {
        what: String,
        target: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("media type {0:?} is not a valid Content-Type")]
    MediaType(String),
}

/// Pushes every test image to the plain-HTTP registry at `registry`
/// (`127.0.0.1:5000`): blobs before the manifests that need them, an index's
/// children before the index, and every tag (`busybox:oci`, `busybox:latest`,
/// `busybox:docker`, `multiarch:latest`).
pub async fn push_all(registry: &str) -> Result<(), PushError> {
    Pusher::new(registry).push_each(TestImages::get().all()).await
}

/// Pushes `busybox:zstd` and `busybox:plain`.
pub async fn push_extra(registry: &str) -> Result<(), PushError> {
    Pusher::new(registry).push_each(TestImages::get().extra()).await
}

/// Pushes the `berth-test/run:*` images.
pub async fn push_run(registry: &str) -> Result<(), PushError> {
    Pusher::new(registry).push_each(TestImages::get().run.all()).await
}

/// Pushes one image (an index with its children) anonymously.
pub async fn push_image(registry: &str, image: &TestImage) -> Result<(), PushError> {
    Pusher::new(registry).push(image).await
}

/// An oci-client over plain HTTP to one registry, with the credentials to push with.
pub struct Pusher {
    client: Client,
    registry: String,
    auth: RegistryAuth,
}

impl Pusher {
    /// Anonymous pushes to `registry` (`host:port`).
    pub fn new(registry: &str) -> Pusher {
        Pusher::with_auth(registry, RegistryAuth::Anonymous)
    }

    /// Pushes with `auth`, e.g. `RegistryAuth::Basic(user, password)` for a
    /// registry from [`crate::Registry::start_with_auth`].
    pub fn with_auth(registry: &str, auth: RegistryAuth) -> Pusher {
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            // A wedged registry should fail the test, not hang it.
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        });
        Pusher { client, registry: registry.to_owned(), auth }
    }

    /// Anonymous pushes over HTTPS to `registry`, trusting the PEM CA certificate(s) `ca_pem`
    /// (besides the system's), e.g. those of a [`crate::Registry::start_with_tls`] registry.
    pub fn with_tls(registry: &str, ca_pem: impl Into<Vec<u8>>) -> Pusher {
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Https,
            extra_root_certificates: vec![Certificate {
                encoding: CertificateEncoding::Pem,
                data: ca_pem.into(),
            }],
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        });
        Pusher { client, registry: registry.to_owned(), auth: RegistryAuth::Anonymous }
    }

    /// Pushes `image`: an index's children first, then the index; blobs
    /// before the manifest; the manifest under its tag and every alias.
    pub async fn push(&self, image: &TestImage) -> Result<(), PushError> {
        for child in &image.children {
            self.push_manifest(child).await?;
        }
        self.push_manifest(image).await
    }

    pub async fn push_each<'a>(
        &self,
        images: impl IntoIterator<Item = &'a TestImage>,
    ) -> Result<(), PushError> {
        for image in images {
            self.push(image).await?;
        }
        Ok(())
    }

    /// Pushes one manifest (not its children) with its blobs and tags.
    async fn push_manifest(&self, image: &TestImage) -> Result<(), PushError> {
        let (client, registry) = (&self.client, self.registry.as_str());
        let repository = image.repository();
        let registry_err = |what: &str, target: &Reference| {
            let what = what.to_owned();
            let target = target.whole();
            move |source: OciDistributionError| PushError::Registry { what, target, source }
        };

        let by_digest = |digest: &str| {
            Reference::with_digest(registry.to_owned(), repository.to_owned(), digest.to_owned())
        };
        let this = by_digest(&image.manifest.digest);
        client
            .auth(&this, &self.auth, RegistryOperation::Push)
            .await
            .map_err(registry_err("auth", &this))?;

        let blobs = image.layers.iter().chain((!image.is_index()).then_some(&image.config));
        for blob in blobs {
            let target = by_digest(&blob.digest);
            // Layers are shared between tags of a repository; the registry would
            // accept them again, but skipping them keeps the push quick.
            let exists = client
                .blob_exists(&target, &blob.digest)
                .await
                .map_err(registry_err("blob check", &target))?;
            if !exists {
                client
                    .push_blob(&target, blob.bytes.clone(), &blob.digest)
                    .await
                    .map_err(registry_err(&blob.media_type, &target))?;
            }
        }

        let mut targets = vec![];
        match image.tag() {
            Some(tag) => targets.push(Reference::with_tag(
                registry.to_owned(),
                repository.to_owned(),
                tag.to_owned(),
            )),
            None => targets.push(this),
        }
        for alias in image.aliases {
            let (repository, tag) = split_reference(alias);
            targets.push(Reference::with_tag(
                registry.to_owned(),
                repository.to_owned(),
                tag.unwrap_or("latest").to_owned(),
            ));
        }
        for target in &targets {
            let content_type = image
                .manifest
                .media_type
                .parse()
                .map_err(|_| PushError::MediaType(image.manifest.media_type.clone()))?;
            client
                .push_manifest_raw(target, image.manifest.bytes.clone(), content_type)
                .await
                .map_err(registry_err(&image.manifest.media_type, target))?;
        }
        Ok(())
    }
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Oci,
    Docker,
    /// OCI with zstd layers.
    OciZstd,
    /// OCI with uncompressed layers.
    OciPlain,
}

impl Format {
    fn manifest(self) -> &'static str {
        match self {
            Format::Docker => MEDIA_DOCKER_MANIFEST,
            _ => MEDIA_OCI_MANIFEST,
        }
    }
    fn config(self) -> &'static str {
        match self {
            Format::Docker => MEDIA_DOCKER_CONFIG,
            _ => MEDIA_OCI_CONFIG,
        }
    }
    fn layer(self) -> &'static str {
        match self {
            Format::Oci => MEDIA_OCI_LAYER,
            Format::Docker => MEDIA_DOCKER_LAYER,
            Format::OciZstd => MEDIA_OCI_LAYER_ZSTD,
            Format::OciPlain => MEDIA_OCI_LAYER_TAR,
        }
    }
    /// The layer blob in this format's compression.
    fn layer_blob(self, layer: &Layer) -> Result<Blob, BuildError> {
        let bytes = match self {
            Format::Oci | Format::Docker => layer.gzip.clone(),
            Format::OciZstd => zstd(&layer.tar).map_err(BuildError::Tar)?,
            Format::OciPlain => layer.tar.clone(),
        };
        Ok(Blob::new(self.layer(), bytes))
    }
}

/// One layer, shared by every image: the media type is the only difference
/// between an OCI and a Docker layer, and it is not part of the blob.
struct Layer {
    created_by: &'static str,
    diff_id: String,
    tar: Vec<u8>,
    gzip: Vec<u8>,
}

/// A layer as it goes into a manifest.
pub(crate) struct LayerBlob {
    /// The config's `history[].created_by`.
    pub created_by: String,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    pub blob: Blob,
}

fn build() -> Result<TestImages, BuildError> {
    let busybox = std::fs::read(BUSYBOX).map_err(BuildError::ReadBusybox)?;
    check_static(&busybox).map_err(BuildError::NotStatic)?;
    let applets = available_applets()?;

    let layers = [
        (
            "berth-e2e: base: busybox-static, applet links, passwd, group",
            base_layer(busybox, &applets),
        ),
        ("berth-e2e: content: files that a later layer removes", content_layer()),
        ("berth-e2e: changes: whiteout, opaque directory, new file", changes_layer()),
    ]
    .into_iter()
    .map(|(created_by, entries)| {
        let tar = write_tar(entries)?;
        Ok(Layer { created_by, diff_id: sha256_digest(&tar), gzip: gzip(&tar)?, tar })
    })
    .collect::<io::Result<Vec<_>>>()
    .map_err(BuildError::Tar)?;

    let oci = image(Format::Oci, OCI_REF, &[LATEST_REF], "oci", LINUX_AMD64, &layers)?;
    let docker = image(Format::Docker, DOCKER_REF, &[], "docker", LINUX_AMD64, &layers)?;
    let amd64 = image(Format::Oci, MULTIARCH_REPO, &[], "amd64", LINUX_AMD64, &layers)?;
    let arm64 = image(Format::Oci, MULTIARCH_REPO, &[], "arm64", LINUX_ARM64_V8, &layers)?;
    let multiarch = index(MULTIARCH_REF, vec![amd64, arm64])?;
    let zstd = image(Format::OciZstd, ZSTD_REF, &[], "zstd", LINUX_AMD64, &layers)?;
    let plain = image(Format::OciPlain, PLAIN_REF, &[], "plain", LINUX_AMD64, &layers)?;
    let run = run_images(&layers)?;
    Ok(TestImages { oci, docker, multiarch, zstd, plain, run })
}

fn run_images(busybox: &[Layer]) -> Result<RunImages, BuildError> {
    let tar = write_tar(run_layer()).map_err(BuildError::Tar)?;
    let run = Layer {
        created_by: "berth-e2e: run: the probe script, symlinks out of the root",
        diff_id: sha256_digest(&tar),
        gzip: gzip(&tar).map_err(BuildError::Tar)?,
        tar,
    };
    let make = |reference: &'static str, config: RunConfig| {
        let layers = busybox
            .iter()
            .chain([&run])
            .map(|l| {
                Ok(LayerBlob {
                    created_by: l.created_by.to_owned(),
                    diff_id: l.diff_id.clone(),
                    blob: Format::Oci.layer_blob(l)?,
                })
            })
            .collect::<Result<Vec<_>, BuildError>>()?;
        assemble_with(Format::Oci, reference, &[], "run", LINUX_AMD64, layers, config)
    };
    let probe_as = |user: &'static str| RunConfig {
        cmd: vec![PROBE],
        env: vec![PATH_ENV.to_owned()],
        working_dir: "",
        user,
        ..RunConfig::busybox("run")
    };
    Ok(RunImages {
        entrypoint: make(
            RUN_ENTRYPOINT_REF,
            RunConfig {
                entrypoint: Some(vec![PROBE, "ep"]),
                cmd: vec!["cmd1", "cmd2"],
                env: vec![PATH_ENV.to_owned(), "FOO=image-foo".into(), "BAR=image-bar".into()],
                working_dir: "/home/berth",
                ..RunConfig::busybox("run")
            },
        )?,
        cmd: make(RUN_CMD_REF, RunConfig { cmd: vec![PROBE, "cmd"], ..probe_as("") })?,
        user_name: make(RUN_USER_NAME_REF, probe_as("berth"))?,
        user_uid: make(RUN_USER_UID_REF, probe_as("1000"))?,
        user_uid_gid: make(RUN_USER_UID_GID_REF, probe_as("1000:2000"))?,
        user_name_group: make(RUN_USER_NAME_GROUP_REF, probe_as("berth:extra"))?,
    })
}

/// A dynamic busybox would be copied fine and then fail in the container
/// with a baffling ENOENT for its missing loader.
fn check_static(elf: &[u8]) -> Result<(), &'static str> {
    const PT_INTERP: u32 = 3;
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("no ELF magic");
    }
    if elf.get(4..6) != Some([2u8, 1].as_slice()) {
        return Err("not ELFCLASS64/ELFDATA2LSB");
    }
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?))
    };
    let phoff = elf
        .get(0x20..0x28)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .and_then(|o| usize::try_from(o).ok())
        .ok_or("truncated ELF header")?;
    let phentsize = usize::from(u16_at(0x36).ok_or("truncated ELF header")?);
    let phnum = usize::from(u16_at(0x38).ok_or("truncated ELF header")?);
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let p_type = elf
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or("truncated program headers")?;
        if p_type == PT_INTERP {
            return Err("it has a program interpreter, i.e. it is dynamically linked");
        }
    }
    Ok(())
}

fn available_applets() -> Result<Vec<&'static str>, BuildError> {
    let out = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .map_err(|e| BuildError::ListApplets(e.to_string()))?;
    if !out.status.success() {
        return Err(BuildError::ListApplets(out.status.to_string()));
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    let listed: Vec<&str> = listed.lines().map(str::trim).collect();
    let applets: Vec<&'static str> =
        APPLETS.iter().copied().filter(|a| listed.contains(a)).collect();
    // Without a shell no container in the tests can start, so a build without
    // one is useless rather than merely incomplete.
    if !applets.contains(&"sh") {
        return Err(BuildError::MissingApplets("sh".to_owned()));
    }
    Ok(applets)
}

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

fn symlink(path: String, target: &'static str) -> Entry {
    Entry { path, mode: 0o777, uid: 0, gid: 0, kind: Kind::Symlink(target) }
}

fn base_layer(busybox: Vec<u8>, applets: &[&str]) -> Vec<Entry> {
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

fn content_layer() -> Vec<Entry> {
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

fn changes_layer() -> Vec<Entry> {
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

fn run_layer() -> Vec<Entry> {
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

fn gzip_with(tar: &[u8], level: u32, comment: Option<Vec<u8>>) -> Vec<u8> {
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
fn zstd(tar: &[u8]) -> io::Result<Vec<u8>> {
    zstd::stream::encode_all(tar, 3)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DescriptorJson<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<PlatformJson>,
}

impl<'a> DescriptorJson<'a> {
    fn of(blob: &'a Blob) -> Self {
        DescriptorJson {
            media_type: &blob.media_type,
            digest: &blob.digest,
            size: blob.size(),
            platform: None,
        }
    }
}

#[derive(Serialize)]
struct PlatformJson {
    architecture: &'static str,
    os: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestJson<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: DescriptorJson<'a>,
    layers: Vec<DescriptorJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexJson<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<DescriptorJson<'a>>,
}

#[derive(Serialize)]
struct ConfigJson<'a> {
    created: &'a str,
    architecture: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    os: &'a str,
    config: ContainerConfigJson<'a>,
    rootfs: RootfsJson<'a>,
    history: Vec<HistoryJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfigJson<'a> {
    user: &'a str,
    // Absent, not null, when unset: the busybox images have never had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    entrypoint: Option<Vec<&'a str>>,
    env: Vec<String>,
    cmd: Vec<&'a str>,
    working_dir: &'a str,
    labels: BTreeMap<&'a str, &'a str>,
    // Absent when unset, as in most images: the runtime's default (SIGTERM) applies.
    #[serde(skip_serializing_if = "str::is_empty")]
    stop_signal: &'a str,
}

#[derive(Serialize)]
struct RootfsJson<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: Vec<&'a str>,
}

#[derive(Serialize)]
struct HistoryJson<'a> {
    created: &'a str,
    created_by: &'a str,
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, BuildError> {
    serde_json::to_vec(value).map_err(BuildError::Json)
}

fn image(
    format: Format,
    reference: &'static str,
    aliases: &'static [&'static str],
    image_env: &str,
    platform: Platform,
    layers: &[Layer],
) -> Result<TestImage, BuildError> {
    let layers = layers
        .iter()
        .map(|l| {
            Ok(LayerBlob {
                created_by: l.created_by.to_owned(),
                diff_id: l.diff_id.clone(),
                blob: format.layer_blob(l)?,
            })
        })
        .collect::<Result<Vec<_>, BuildError>>()?;
    assemble(format, reference, aliases, image_env, "busybox", platform, layers)
}

/// The run-related part of an image config (`config` in the OCI image config).
pub(crate) struct RunConfig {
    pub entrypoint: Option<Vec<&'static str>>,
    pub cmd: Vec<&'static str>,
    pub env: Vec<String>,
    pub working_dir: &'static str,
    pub user: &'static str,
    pub stop_signal: &'static str,
}

impl RunConfig {
    /// That of the busybox images: `/bin/sh` in `/` as root, with `BERTH_IMAGE=<image_env>`.
    pub fn busybox(image_env: &str) -> RunConfig {
        RunConfig {
            entrypoint: None,
            cmd: vec!["/bin/sh"],
            env: vec![PATH_ENV.to_owned(), format!("BERTH_IMAGE={image_env}")],
            working_dir: "/",
            user: "",
            stop_signal: "SIGTERM",
        }
    }
}

/// The config and manifest for `layers`; the config is that of the busybox
/// images but for `BERTH_IMAGE=<image_env>` and the `org.berth.test` label.
pub(crate) fn assemble(
    format: Format,
    reference: &'static str,
    aliases: &'static [&'static str],
    image_env: &str,
    label: &str,
    platform: Platform,
    layers: Vec<LayerBlob>,
) -> Result<TestImage, BuildError> {
    let run = RunConfig::busybox(image_env);
    assemble_with(format, reference, aliases, label, platform, layers, run)
}

/// The config and manifest for `layers`, with the `org.berth.test` label and `run`.
pub(crate) fn assemble_with(
    format: Format,
    reference: &'static str,
    aliases: &'static [&'static str],
    label: &str,
    platform: Platform,
    layers: Vec<LayerBlob>,
    run: RunConfig,
) -> Result<TestImage, BuildError> {
    let config = ConfigJson {
        created: CREATED,
        architecture: platform.architecture,
        variant: platform.variant,
        os: platform.os,
        config: ContainerConfigJson {
            user: run.user,
            entrypoint: run.entrypoint,
            env: run.env,
            cmd: run.cmd,
            working_dir: run.working_dir,
            labels: BTreeMap::from([("org.berth.test", label)]),
            stop_signal: run.stop_signal,
        },
        rootfs: RootfsJson {
            kind: "layers",
            diff_ids: layers.iter().map(|l| l.diff_id.as_str()).collect(),
        },
        history: layers
            .iter()
            .map(|l| HistoryJson { created: CREATED, created_by: &l.created_by })
            .collect(),
    };
    let config = Blob::new(format.config(), to_json(&config)?);
    let manifest = ManifestJson {
        schema_version: 2,
        media_type: format.manifest(),
        config: DescriptorJson::of(&config),
        layers: layers.iter().map(|l| DescriptorJson::of(&l.blob)).collect(),
    };
    let manifest = Blob::new(format.manifest(), to_json(&manifest)?);
    let diff_ids = layers.iter().map(|l| l.diff_id.clone()).collect();
    Ok(TestImage {
        reference,
        aliases,
        manifest,
        config,
        layers: layers.into_iter().map(|l| l.blob).collect(),
        diff_ids,
        platform: Some(platform),
        children: vec![],
    })
}

pub(crate) fn index(
    reference: &'static str,
    children: Vec<TestImage>,
) -> Result<TestImage, BuildError> {
    let json = IndexJson {
        schema_version: 2,
        media_type: MEDIA_OCI_INDEX,
        manifests: children
            .iter()
            .map(|child| DescriptorJson {
                platform: child.platform.map(|p| PlatformJson {
                    architecture: p.architecture,
                    os: p.os,
                    variant: p.variant,
                }),
                ..DescriptorJson::of(&child.manifest)
            })
            .collect(),
    };
    Ok(TestImage {
        reference,
        aliases: &[],
        manifest: Blob::new(MEDIA_OCI_INDEX, to_json(&json)?),
        config: Blob { media_type: String::new(), digest: String::new(), bytes: vec![] },
        layers: vec![],
        diff_ids: vec![],
        platform: None,
        children,
    })
}

#[cfg(test)]
pub(crate) mod tests;
