//! The parts of image manifests, indexes and configs that berth reads. Docker schema2 and OCI
//! have the same shape for these fields, so one set of types serves both.

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, Result};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// What a manifest request accepts, in preference order.
pub const ACCEPTED: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// This node's platform, in the words of the OCI image spec.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            architecture: architecture.into(),
            os: "linux".into(),
            variant: variant.map(Into::into),
        }
    }

    /// Whether an index entry's platform runs here. A missing variant matches: most indexes
    /// leave it out for the architecture's default (arm64 is v8).
    pub fn matches(&self, entry: &Platform) -> bool {
        entry.os == self.os
            && entry.architecture == self.architecture
            && match (&entry.variant, &self.variant) {
                (None, _) | (_, None) => true,
                (Some(theirs), Some(ours)) => theirs == ours,
            }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// A manifest or an index, told apart by media type (or, when a registry leaves that out, by
/// which list it has).
#[derive(Debug, Clone)]
pub enum Fetched {
    Index(Vec<Descriptor>),
    Manifest(Manifest),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "schemaVersion", default)]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

pub fn parse(reference: &str, content_type: &str, bytes: &[u8]) -> Result<Fetched> {
    let bad = |reason: String| Error::BadManifest { reference: reference.to_string(), reason };
    if DOCKER_SCHEMA1.contains(&content_type) {
        return Err(bad("docker schema 1 manifests are not supported".into()));
    }
    let raw: Raw = serde_json::from_slice(bytes).map_err(|err| bad(format!("manifest: {err}")))?;
    if raw.schema_version != 2 {
        return Err(bad(format!("schemaVersion {} is not supported", raw.schema_version)));
    }
    let media_type = raw.media_type.as_deref().unwrap_or(content_type);
    match (raw.manifests, raw.config, raw.layers) {
        (Some(manifests), None, _)
            if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST =>
        {
            Ok(Fetched::Index(manifests))
        }
        (_, Some(config), Some(layers)) if media_type != OCI_INDEX && media_type != DOCKER_LIST => {
            Ok(Fetched::Manifest(Manifest { config, layers }))
        }
        _ => {
            Err(bad(format!("neither an image manifest nor an index (media type {media_type:?})")))
        }
    }
}

/// The image config fields berth uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

/// The `config` of an image config: how a container of it runs by default. `null` and a
/// missing key mean the same.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

pub fn parse_config(reference: &str, bytes: &[u8]) -> Result<ImageConfig> {
    serde_json::from_slice(bytes).map_err(|err| Error::BadManifest {
        reference: reference.to_string(),
        reason: format!("image config: {err}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_manifests_and_indexes_of_both_formats() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"x","digest":"{D}","size":1}},"layers":[{{"mediaType":"y","digest":"{D}","size":2}}]}}"#
        );
        assert!(
            matches!(parse("r", DOCKER_MANIFEST, manifest.as_bytes()).unwrap(), Fetched::Manifest(m) if m.layers.len() == 1)
        );
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":3,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#
        );
        assert!(
            matches!(parse("r", OCI_INDEX, index.as_bytes()).unwrap(), Fetched::Index(m) if m.len() == 1)
        );
        let err = parse("r", DOCKER_SCHEMA1[0], b"{}").unwrap_err();
        assert!(err.to_string().contains("schema 1"), "{err}");
        assert!(parse("r", OCI_MANIFEST, br#"{"schemaVersion":2}"#).is_err());
    }

    #[test]
    fn platform_matching() {
        let amd64 = Platform { architecture: "amd64".into(), os: "linux".into(), variant: None };
        let arm64 = Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            variant: Some("v8".into()),
        };
        assert!(amd64.matches(&amd64));
        assert!(!amd64.matches(&arm64));
        let arm64_bare = Platform { variant: None, ..arm64.clone() };
        assert!(arm64.matches(&arm64_bare));
        let arm64_v9 = Platform { variant: Some("v9".into()), ..arm64.clone() };
        assert!(!arm64.matches(&arm64_v9));
        let windows = Platform { os: "windows".into(), ..amd64.clone() };
        assert!(!amd64.matches(&windows));
    }
}
