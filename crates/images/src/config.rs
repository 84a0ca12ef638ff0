//! `[registry]`: how images are fetched. Every key has a default, so berthd runs with no file.
//!
//! Where images come from is configured per registry, for the air-gapped and mirror cases:
//!
//! ```toml
//! [registry.default]          # every host, unless its own settings say otherwise
//! plain_http = false          # loopback hosts may use plain HTTP regardless
//! skip_verify = false
//! # ca_file = "/etc/berth/certs/ca.pem"
//!
//! [registry.hosts."docker.io"]
//! fallback_to_origin = true   # try docker.io itself after the mirrors
//! mirrors = [
//!   # docker.io/library/busybox is fetched as mirror.local:5000/docker.io/library/busybox
//!   { host = "mirror.local:5000", prefix = "docker.io", plain_http = true },
//! ]
//! # Settings for docker.io itself: plain_http, skip_verify, ca_file, client_cert_file, ...
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::reference::{is_docker_hub_alias, validate_registry, validate_repository, DOCKER_HUB};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Node-wide registry credentials in docker's `config.json` format. A missing file means
    /// no credentials beyond those a pull request carries.
    pub credentials_file: PathBuf,
    /// Layers of one pull fetched at the same time.
    pub max_concurrent_downloads: usize,
    /// A download that receives no byte for this long fails, so that a wedged registry
    /// connection cannot hold a pull (and the kubelet's pod start) forever.
    pub stall_timeout_secs: u64,
    /// Connection settings for every host (origins and mirrors) that does not set its own.
    /// Left out when serialized while it is the default, so that the written-out default
    /// configuration need only show it as a commented example.
    #[serde(skip_serializing_if = "HostDefaults::is_default")]
    pub default: HostDefaults,
    /// Per registry, as references name it (`docker.io`, `localhost:5000`): its mirrors and
    /// the settings for the registry itself.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, HostConfig>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            credentials_file: PathBuf::from("/etc/berth/auth.json"),
            max_concurrent_downloads: 3,
            stall_timeout_secs: 60,
            default: HostDefaults::default(),
            hosts: BTreeMap::new(),
        }
    }
}

/// `[registry.default]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostDefaults {
    /// Speak HTTP instead of HTTPS.
    pub plain_http: bool,
    /// Accept any server certificate. Only for a registry whose certificate cannot be fixed.
    pub skip_verify: bool,
    /// PEM file of CA certificates to trust besides the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS; goes with `client_key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
}

impl HostDefaults {
    fn is_default(&self) -> bool {
        *self == HostDefaults::default()
    }
}

/// `[registry.hosts."<registry>"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// Fetch from the registry itself when every mirror failed. Off for a node that must
    /// never reach out past its mirrors.
    pub fallback_to_origin: bool,
    /// Tried in order, before the registry itself.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorConfig>,
    // The registry's own connection settings; each unset one comes from [registry.default].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain_http: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_verify: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            fallback_to_origin: true,
            mirrors: Vec::new(),
            plain_http: None,
            skip_verify: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

/// One entry of `mirrors`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// `host[:port]` to connect to.
    pub host: String,
    /// Repository namespace on the mirror under which the registry's repositories are found:
    /// with `prefix = "docker.io"`, `docker.io/library/busybox` is fetched as
    /// `<host>/docker.io/library/busybox` (registries.conf's `location`, containerd's
    /// `override_path`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    // The mirror's connection settings; each unset one comes from [registry.default].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain_http: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_verify: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
}

impl RegistryConfig {
    /// Checks what the types alone cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_concurrent_downloads == 0 {
            return Err("registry.max_concurrent_downloads must be at least 1".into());
        }
        if self.stall_timeout_secs == 0 {
            return Err("registry.stall_timeout_secs must be at least 1".into());
        }
        // berthd runs with / as its working directory, so a relative path would not mean
        // what whoever wrote it expected.
        absolute("registry.credentials_file", Some(&self.credentials_file))?;
        let d = &self.default;
        check_files("registry.default", &d.ca_file, &d.client_cert_file, &d.client_key_file)?;
        for (name, host) in &self.hosts {
            let key = format!("registry.hosts.{name:?}");
            validate_host(name).map_err(|err| format!("{key}: {err}"))?;
            if is_docker_hub_alias(name) {
                return Err(format!("{key}: write \"{DOCKER_HUB}\", the name references use"));
            }
            check_files(&key, &host.ca_file, &host.client_cert_file, &host.client_key_file)?;
            if !host.fallback_to_origin && host.mirrors.is_empty() {
                return Err(format!(
                    "{key}.fallback_to_origin = false needs at least one mirror, or nothing could be fetched from {name}"
                ));
            }
            for (i, mirror) in host.mirrors.iter().enumerate() {
                let key = format!("{key}.mirrors[{i}]");
                validate_host(&mirror.host).map_err(|err| format!("{key}.host: {err}"))?;
                if let Some(prefix) = &mirror.prefix {
                    validate_repository(prefix).map_err(|err| {
                        format!(
                            "{key}.prefix: {err} (want a repository path such as \"docker.io\")"
                        )
                    })?;
                }
                check_files(
                    &key,
                    &mirror.ca_file,
                    &mirror.client_cert_file,
                    &mirror.client_key_file,
                )?;
            }
        }
        Ok(())
    }
}

fn validate_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("must be set, as host[:port]".into());
    }
    if host.contains("://") || host.contains('/') {
        return Err(format!("{host:?} must be host[:port] without scheme or path"));
    }
    validate_registry(host)
}

fn check_files(
    key: &str,
    ca: &Option<PathBuf>,
    cert: &Option<PathBuf>,
    client_key: &Option<PathBuf>,
) -> Result<(), String> {
    absolute(&format!("{key}.ca_file"), ca.as_deref())?;
    absolute(&format!("{key}.client_cert_file"), cert.as_deref())?;
    absolute(&format!("{key}.client_key_file"), client_key.as_deref())?;
    if cert.is_some() != client_key.is_some() {
        return Err(format!("{key}.client_cert_file and {key}.client_key_file go together"));
    }
    Ok(())
}

fn absolute(key: &str, path: Option<&Path>) -> Result<(), String> {
    match path {
        Some(path) if !path.is_absolute() => {
            Err(format!("{key} must be an absolute path, not {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct File {
        registry: RegistryConfig,
    }

    fn parse(text: &str) -> Result<RegistryConfig, String> {
        let file: File = toml::from_str(text).map_err(|err| err.to_string())?;
        file.registry.validate()?;
        Ok(file.registry)
    }

    #[test]
    fn defaults_serialize_to_the_three_keys() {
        let table = toml::Table::try_from(RegistryConfig::default()).unwrap();
        let keys: Vec<&str> = table.keys().map(String::as_str).collect();
        assert_eq!(keys, ["credentials_file", "max_concurrent_downloads", "stall_timeout_secs"]);
        assert_eq!(parse("[registry]").unwrap(), RegistryConfig::default());
        RegistryConfig::default().validate().unwrap();
    }

    const EXAMPLE: &str = r#"
        [registry]
        credentials_file = "/etc/berth/auth.json"
        [registry.default]
        skip_verify = true
        ca_file = "/etc/berth/ca.pem"
        [registry.hosts."docker.io"]
        fallback_to_origin = false
        mirrors = [
            { host = "mirror.local:5000", prefix = "docker.io", plain_http = true },
            { host = "[::1]:5001" },
        ]
        [registry.hosts."quay.io"]
        plain_http = true
        client_cert_file = "/c.pem"
        client_key_file = "/k.pem"
    "#;

    #[test]
    fn example_round_trips() {
        let config = parse(EXAMPLE).unwrap();
        assert!(config.default.skip_verify);
        let docker = &config.hosts["docker.io"];
        assert!(!docker.fallback_to_origin);
        assert_eq!(docker.mirrors[0].prefix.as_deref(), Some("docker.io"));
        assert_eq!(docker.mirrors[1].plain_http, None);
        assert_eq!(config.hosts["quay.io"].plain_http, Some(true));

        let text = toml::to_string(&File { registry: config.clone() }).unwrap();
        assert_eq!(parse(&text).unwrap(), config, "{text}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        for text in [
            "[registry.default]\nplain_tls = true",
            "[registry.hosts.\"docker.io\"]\nmirror = []",
            "[registry.hosts.\"docker.io\"]\nmirrors = [{ host = \"m\", location = \"x\" }]",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[registry]\ncredentials_file = \"auth.json\"", "registry.credentials_file"),
            ("[registry.default]\nca_file = \"ca.pem\"", "registry.default.ca_file"),
            (
                "[registry.default]\nclient_cert_file = \"/c\"",
                "registry.default.client_cert_file and registry.default.client_key_file",
            ),
            ("[registry.hosts.\"https://x.io\"]", "registry.hosts.\"https://x.io\""),
            ("[registry.hosts.\"index.docker.io\"]", "registry.hosts.\"index.docker.io\""),
            (
                "[registry.hosts.\"docker.io\"]\nfallback_to_origin = false",
                "registry.hosts.\"docker.io\".fallback_to_origin",
            ),
            (
                "[registry.hosts.\"docker.io\"]\nmirrors = [{ host = \"https://m.local\" }]",
                "registry.hosts.\"docker.io\".mirrors[0].host",
            ),
            (
                "[registry.hosts.\"docker.io\"]\nmirrors = [{ host = \"m.local\" }, { host = \"m.local/x\" }]",
                "registry.hosts.\"docker.io\".mirrors[1].host",
            ),
            (
                "[registry.hosts.\"docker.io\"]\nmirrors = [{ }]",
                "registry.hosts.\"docker.io\".mirrors[0].host",
            ),
            (
                "[registry.hosts.\"docker.io\"]\nmirrors = [{ host = \"m\", prefix = \"Docker.io\" }]",
                "registry.hosts.\"docker.io\".mirrors[0].prefix",
            ),
            (
                "[registry.hosts.\"docker.io\"]\nmirrors = [{ host = \"m\", prefix = \"/x/\" }]",
                "registry.hosts.\"docker.io\".mirrors[0].prefix",
            ),
            (
                "[registry.hosts.\"docker.io\"]\nmirrors = [{ host = \"m\", client_key_file = \"/k\" }]",
                "registry.hosts.\"docker.io\".mirrors[0].client_cert_file",
            ),
            (
                "[registry.hosts.\"q.io\"]\nclient_cert_file = \"c\"\nclient_key_file = \"/k\"",
                "registry.hosts.\"q.io\".client_cert_file",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).expect_err(text);
            assert!(err.contains(key), "error for {text:?} should name {key:?}: {err}");
        }
    }
}

/// `[images]`: what the node keeps, and what image layers may contain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesConfig {
    /// Images reported as pinned, which the kubelet's image garbage collection never removes
    /// (a pause image that other tools still pull, say).
    pub pinned: Vec<String>,
    /// Create the device nodes that image layers contain. When false, a layer with a device
    /// node is refused.
    pub allow_device_nodes: bool,
    /// A layer with more entries than this is refused: a layer of millions of empty files
    /// would exhaust the inodes of the image filesystem.
    pub max_layer_entries: u64,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig { pinned: Vec::new(), allow_device_nodes: true, max_layer_entries: 1_000_000 }
    }
}

impl ImagesConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_layer_entries == 0 {
            return Err("images.max_layer_entries must be at least 1".into());
        }
        for (i, image) in self.pinned.iter().enumerate() {
            image
                .parse::<crate::reference::Reference>()
                .map_err(|err| format!("images.pinned[{i}]: {err}"))?;
        }
        Ok(())
    }
}
