//! The image builder: the test images' layers in each format, their configs, manifests and
//! indexes, from `/bin/busybox` alone.

use super::*;

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
    pub(super) fn manifest(self) -> &'static str {
        match self {
            Format::Docker => MEDIA_DOCKER_MANIFEST,
            _ => MEDIA_OCI_MANIFEST,
        }
    }
    pub(super) fn config(self) -> &'static str {
        match self {
            Format::Docker => MEDIA_DOCKER_CONFIG,
            _ => MEDIA_OCI_CONFIG,
        }
    }
    pub(super) fn layer(self) -> &'static str {
        match self {
            Format::Oci => MEDIA_OCI_LAYER,
            Format::Docker => MEDIA_DOCKER_LAYER,
            Format::OciZstd => MEDIA_OCI_LAYER_ZSTD,
            Format::OciPlain => MEDIA_OCI_LAYER_TAR,
        }
    }
    /// The layer blob in this format's compression.
    pub(super) fn layer_blob(self, layer: &Layer) -> Result<Blob, BuildError> {
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
pub(super) struct Layer {
    pub(super) created_by: &'static str,
    pub(super) diff_id: String,
    pub(super) tar: Vec<u8>,
    pub(super) gzip: Vec<u8>,
}

/// A layer as it goes into a manifest.
pub(crate) struct LayerBlob {
    /// The config's `history[].created_by`.
    pub created_by: String,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    pub blob: Blob,
}

pub(super) fn build() -> Result<TestImages, BuildError> {
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

pub(super) fn run_images(busybox: &[Layer]) -> Result<RunImages, BuildError> {
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
pub(super) fn check_static(elf: &[u8]) -> Result<(), &'static str> {
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

pub(super) fn available_applets() -> Result<Vec<&'static str>, BuildError> {
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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DescriptorJson<'a> {
    pub(super) media_type: &'a str,
    pub(super) digest: &'a str,
    pub(super) size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) platform: Option<PlatformJson>,
}

impl<'a> DescriptorJson<'a> {
    pub(super) fn of(blob: &'a Blob) -> Self {
        DescriptorJson {
            media_type: &blob.media_type,
            digest: &blob.digest,
            size: blob.size(),
            platform: None,
        }
    }
}

#[derive(Serialize)]
pub(super) struct PlatformJson {
    pub(super) architecture: &'static str,
    pub(super) os: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) variant: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ManifestJson<'a> {
    pub(super) schema_version: u32,
    pub(super) media_type: &'a str,
    pub(super) config: DescriptorJson<'a>,
    pub(super) layers: Vec<DescriptorJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct IndexJson<'a> {
    pub(super) schema_version: u32,
    pub(super) media_type: &'a str,
    pub(super) manifests: Vec<DescriptorJson<'a>>,
}

#[derive(Serialize)]
pub(super) struct ConfigJson<'a> {
    pub(super) created: &'a str,
    pub(super) architecture: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) variant: Option<&'a str>,
    pub(super) os: &'a str,
    pub(super) config: ContainerConfigJson<'a>,
    pub(super) rootfs: RootfsJson<'a>,
    pub(super) history: Vec<HistoryJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ContainerConfigJson<'a> {
    pub(super) user: &'a str,
    // Absent, not null, when unset: the busybox images have never had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) entrypoint: Option<Vec<&'a str>>,
    pub(super) env: Vec<String>,
    pub(super) cmd: Vec<&'a str>,
    pub(super) working_dir: &'a str,
    pub(super) labels: BTreeMap<&'a str, &'a str>,
    // Absent when unset, as in most images: the runtime's default (SIGTERM) applies.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub(super) stop_signal: &'a str,
}

#[derive(Serialize)]
pub(super) struct RootfsJson<'a> {
    #[serde(rename = "type")]
    pub(super) kind: &'a str,
    pub(super) diff_ids: Vec<&'a str>,
}

#[derive(Serialize)]
pub(super) struct HistoryJson<'a> {
    pub(super) created: &'a str,
    pub(super) created_by: &'a str,
}

pub(super) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, BuildError> {
    serde_json::to_vec(value).map_err(BuildError::Json)
}

pub(super) fn image(
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
