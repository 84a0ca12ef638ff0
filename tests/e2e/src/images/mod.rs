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

mod build;
mod layers;
mod push;

// One namespace, as when this was one file: every `berth_e2e::images::…` path stays valid,
// and the parts reach one another through `use super::*`.
pub use build::*;
pub use layers::*;
pub use push::*;

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

#[cfg(test)]
pub(crate) mod tests;
