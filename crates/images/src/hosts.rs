//! Where to fetch an image from: a registry's mirrors, then the registry itself, each with the
//! connection settings `[registry]` gives it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};

use crate::config::{HostConfig, HostDefaults, RegistryConfig};
use crate::error::{Error, Result};
use crate::reference::{is_loopback_host, Reference, DOCKER_HUB};

/// The host that serves Docker Hub's registry API; `docker.io` itself does not.
const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

/// One place to fetch a reference from, with how to connect to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `host[:port]` to connect to.
    pub host: String,
    /// The repository path on that host, with the mirror's prefix applied.
    pub repository: String,
    pub plain_http: bool,
    pub skip_verify: bool,
    /// PEM CA certificates to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key files, for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// A mirror rather than the registry the reference names.
    pub mirror: bool,
}

/// The `[registry]` hosts configuration, ready to answer where a reference is fetched from.
#[derive(Debug, Clone, Default)]
pub struct RegistryHosts {
    default: HostDefaults,
    hosts: BTreeMap<String, HostConfig>,
}

/// Connection settings as a host's (or mirror's) configuration gives them, before defaults.
struct Settings<'a> {
    plain_http: Option<bool>,
    skip_verify: Option<bool>,
    ca_file: Option<&'a PathBuf>,
    client_cert_file: Option<&'a PathBuf>,
    client_key_file: Option<&'a PathBuf>,
}

impl RegistryHosts {
    /// Takes a configuration that passed [`RegistryConfig::validate`].
    pub fn new(config: &RegistryConfig) -> Self {
        RegistryHosts { default: config.default.clone(), hosts: config.hosts.clone() }
    }

    /// Where to fetch `reference` from, in order: the registry's mirrors, then the registry
    /// itself unless its `fallback_to_origin` is off.
    pub fn endpoints(&self, reference: &Reference) -> Vec<Endpoint> {
        let host_config = self.hosts.get(&reference.registry);
        let mut endpoints = Vec::new();
        for mirror in host_config.map(|h| h.mirrors.as_slice()).unwrap_or_default() {
            let repository = match &mirror.prefix {
                Some(prefix) => format!("{prefix}/{}", reference.repository),
                None => reference.repository.clone(),
            };
            let settings = Settings {
                plain_http: mirror.plain_http,
                skip_verify: mirror.skip_verify,
                ca_file: mirror.ca_file.as_ref(),
                client_cert_file: mirror.client_cert_file.as_ref(),
                client_key_file: mirror.client_key_file.as_ref(),
            };
            endpoints.push(self.endpoint(&mirror.host, repository, &settings, true));
        }
        if host_config.is_none_or(|h| h.fallback_to_origin) {
            let host = if reference.registry == DOCKER_HUB {
                DOCKER_HUB_HOST
            } else {
                reference.registry.as_str()
            };
            let settings = match host_config {
                Some(h) => Settings {
                    plain_http: h.plain_http,
                    skip_verify: h.skip_verify,
                    ca_file: h.ca_file.as_ref(),
                    client_cert_file: h.client_cert_file.as_ref(),
                    client_key_file: h.client_key_file.as_ref(),
                },
                None => Settings {
                    plain_http: None,
                    skip_verify: None,
                    ca_file: None,
                    client_cert_file: None,
                    client_key_file: None,
                },
            };
            endpoints.push(self.endpoint(host, reference.repository.clone(), &settings, false));
        }
        endpoints
    }

    fn endpoint(&self, host: &str, repository: String, own: &Settings, mirror: bool) -> Endpoint {
        let d = &self.default;
        // A host's own plain_http wins even for loopback, so that a local registry serving
        // TLS can say so; unset, loopback hosts get HTTP as docker and containerd give them.
        let plain_http = own.plain_http.unwrap_or(d.plain_http || is_loopback_host(host));
        // The certificate and key are taken as a pair from one level, never mixed.
        let client_cert = match (own.client_cert_file, own.client_key_file) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ => d.client_cert_file.clone().zip(d.client_key_file.clone()),
        };
        Endpoint {
            host: host.to_string(),
            repository,
            plain_http,
            skip_verify: own.skip_verify.unwrap_or(d.skip_verify),
            ca_file: own.ca_file.or(d.ca_file.as_ref()).cloned(),
            client_cert,
            mirror,
        }
    }
}

impl Endpoint {
    /// oci-client settings for this endpoint. Reads the CA file, so call it when a client is
    /// made, not per request. oci-client has no client identity setting: an endpoint with a
    /// client certificate is fetched from by [`crate::direct`] instead, whose client
    /// [`Endpoint::http_client_builder`] sets up.
    pub fn client_config(&self) -> Result<ClientConfig> {
        let mut extra_root_certificates = Vec::new();
        if let Some(path) = &self.ca_file {
            let data = std::fs::read(path).map_err(Error::io("reading CA file", path))?;
            // Checked here because the TLS library would only fail at the first connection,
            // with a message that does not name the file.
            if !data.windows(CERT_PEM_MARKER.len()).any(|w| w == CERT_PEM_MARKER) {
                return Err(Error::Corrupt {
                    path: path.clone(),
                    reason: "no PEM certificate (-----BEGIN CERTIFICATE-----) in CA file".into(),
                });
            }
            extra_root_certificates.push(Certificate { encoding: CertificateEncoding::Pem, data });
        }
        Ok(ClientConfig {
            protocol: if self.plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
            accept_invalid_certificates: self.skip_verify,
            extra_root_certificates,
            ..ClientConfig::default()
        })
    }

    /// A reqwest client builder with this endpoint's TLS settings: certificate checks, the CA
    /// file, and the client certificate for mutual TLS. Reads those files.
    pub fn http_client_builder(&self) -> Result<reqwest::ClientBuilder> {
        let config = self.client_config()?;
        let certificates = config
            .extra_root_certificates
            .iter()
            .map(reqwest::Certificate::try_from)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|err| Error::Config(format!("CA certificates for {}: {err}", self.host)))?;
        let mut builder = reqwest::Client::builder()
            .danger_accept_invalid_certs(config.accept_invalid_certificates)
            .tls_certs_merge(certificates)
            .user_agent(config.user_agent);
        if let Some(identity) = self.identity()? {
            builder = builder.identity(identity);
        }
        Ok(builder)
    }

    /// The client certificate and key, for mutual TLS: both PEM files, read and joined.
    fn identity(&self) -> Result<Option<reqwest::Identity>> {
        let Some((cert, key)) = &self.client_cert else { return Ok(None) };
        let mut pem = std::fs::read(cert).map_err(Error::io("reading client_cert_file", cert))?;
        if !pem.windows(CERT_PEM_MARKER.len()).any(|w| w == CERT_PEM_MARKER) {
            return Err(Error::Corrupt {
                path: cert.clone(),
                reason: "no PEM certificate (-----BEGIN CERTIFICATE-----) in client_cert_file"
                    .into(),
            });
        }
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        pem.extend(std::fs::read(key).map_err(Error::io("reading client_key_file", key))?);
        reqwest::Identity::from_pem(&pem).map(Some).map_err(|err| Error::Corrupt {
            path: key.clone(),
            reason: format!("client certificate {} and key: {err}", cert.display()),
        })
    }

    /// The same tag and digest as `original`, at this endpoint's host and repository.
    pub fn reference(&self, original: &Reference) -> oci_client::Reference {
        let (host, repository) = (self.host.clone(), self.repository.clone());
        match (&original.tag, &original.digest) {
            (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
                host,
                repository,
                tag.clone(),
                digest.to_string(),
            ),
            (None, Some(digest)) => {
                oci_client::Reference::with_digest(host, repository, digest.to_string())
            }
            (Some(tag), None) => oci_client::Reference::with_tag(host, repository, tag.clone()),
            // Parsing always gives a tag or a digest; a hand-built reference may have neither.
            (None, None) => oci_client::Reference::with_tag(host, repository, "latest".into()),
        }
    }
}

const CERT_PEM_MARKER: &[u8] = b"-----BEGIN CERTIFICATE-----";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MirrorConfig;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn reference(text: &str) -> Reference {
        text.parse().unwrap()
    }

    fn config(text: &str) -> RegistryConfig {
        #[derive(Default, serde::Deserialize)]
        #[serde(default)]
        struct File {
            registry: RegistryConfig,
        }
        let file: File = toml::from_str(text).unwrap();
        file.registry.validate().unwrap();
        file.registry
    }

    fn origin(host: &str, repository: &str) -> Endpoint {
        Endpoint {
            host: host.into(),
            repository: repository.into(),
            plain_http: false,
            skip_verify: false,
            ca_file: None,
            client_cert: None,
            mirror: false,
        }
    }

    fn mirror(host: &str, repository: &str) -> Endpoint {
        Endpoint { mirror: true, ..origin(host, repository) }
    }

    #[test]
    fn endpoints_table() {
        let mirrors = r#"
            [registry.hosts."docker.io"]
            mirrors = [
                { host = "mirror.local:5000", prefix = "docker.io", plain_http = true },
                { host = "cache.local" },
            ]
            [registry.hosts."quay.io"]
            fallback_to_origin = false
            mirrors = [{ host = "localhost:5000", prefix = "quay/io" }]
        "#;
        let defaults = r#"
            [registry.default]
            skip_verify = true
            ca_file = "/ca.pem"
            plain_http = true
            [registry.hosts."secure.io"]
            plain_http = false
            ca_file = "/secure-ca.pem"
            mirrors = [{ host = "m.local", skip_verify = false, client_cert_file = "/c", client_key_file = "/k" }]
        "#;
        let http = |e: Endpoint| Endpoint { plain_http: true, ..e };
        let cases: Vec<(&str, &str, Vec<Endpoint>)> = vec![
            ("", "busybox", vec![origin("registry-1.docker.io", "library/busybox")]),
            ("", "quay.io/a/b", vec![origin("quay.io", "a/b")]),
            ("", "localhost:5000/x", vec![http(origin("localhost:5000", "x"))]),
            ("", "127.0.0.1:5000/x", vec![http(origin("127.0.0.1:5000", "x"))]),
            ("", "[::1]:5000/x", vec![http(origin("[::1]:5000", "x"))]),
            ("", "localhost/x", vec![http(origin("localhost", "x"))]),
            (
                "[registry.hosts.\"localhost:5000\"]\nplain_http = false",
                "localhost:5000/x",
                vec![origin("localhost:5000", "x")],
            ),
            (
                mirrors,
                "busybox",
                vec![
                    http(mirror("mirror.local:5000", "docker.io/library/busybox")),
                    mirror("cache.local", "library/busybox"),
                    origin("registry-1.docker.io", "library/busybox"),
                ],
            ),
            (mirrors, "quay.io/a/b", vec![http(mirror("localhost:5000", "quay/io/a/b"))]),
            (mirrors, "gcr.io/a", vec![origin("gcr.io", "a")]),
            (
                defaults,
                "gcr.io/a",
                vec![Endpoint {
                    plain_http: true,
                    skip_verify: true,
                    ca_file: Some("/ca.pem".into()),
                    ..origin("gcr.io", "a")
                }],
            ),
            (
                defaults,
                "secure.io/a",
                vec![
                    Endpoint {
                        plain_http: true,
                        ca_file: Some("/ca.pem".into()),
                        client_cert: Some(("/c".into(), "/k".into())),
                        ..mirror("m.local", "a")
                    },
                    Endpoint {
                        skip_verify: true,
                        ca_file: Some("/secure-ca.pem".into()),
                        ..origin("secure.io", "a")
                    },
                ],
            ),
        ];
        for (text, image, expected) in cases {
            let hosts = RegistryHosts::new(&config(text));
            assert_eq!(hosts.endpoints(&reference(image)), expected, "{image} with {text}");
        }
    }

    #[test]
    fn default_client_cert_pair_applies_when_the_host_has_none() {
        let hosts = RegistryHosts::new(&config(
            "[registry.default]\nclient_cert_file = \"/c\"\nclient_key_file = \"/k\"",
        ));
        let endpoints = hosts.endpoints(&reference("quay.io/a"));
        assert_eq!(endpoints[0].client_cert, Some(("/c".into(), "/k".into())));
    }

    #[test]
    fn endpoints_without_validation_still_answer() {
        let mut registry = RegistryConfig::default();
        registry.hosts.insert(
            "docker.io".into(),
            HostConfig {
                mirrors: vec![MirrorConfig { host: "m".into(), ..Default::default() }],
                ..Default::default()
            },
        );
        let endpoints = RegistryHosts::new(&registry).endpoints(&reference("busybox"));
        assert_eq!(endpoints.len(), 2);
        assert!(endpoints[0].mirror && !endpoints[1].mirror);
    }

    #[test]
    fn oci_references_keep_tag_and_digest() {
        let digest = format!("sha256:{HEX}");
        let at = mirror("mirror.local:5000", "docker.io/library/busybox");
        let cases = [
            ("busybox:1.36".to_string(), Some("1.36"), None),
            (format!("busybox@{digest}"), None, Some(digest.as_str())),
            (format!("busybox:1.36@{digest}"), Some("1.36"), Some(digest.as_str())),
        ];
        for (image, tag, want_digest) in cases {
            let r = at.reference(&reference(&image));
            assert_eq!(r.registry(), "mirror.local:5000");
            assert_eq!(r.resolve_registry(), "mirror.local:5000");
            assert_eq!(r.repository(), "docker.io/library/busybox");
            assert_eq!(r.tag(), tag, "{image}");
            assert_eq!(r.digest(), want_digest, "{image}");
        }
        let hub =
            origin("registry-1.docker.io", "library/busybox").reference(&reference("busybox"));
        assert_eq!(hub.resolve_registry(), "registry-1.docker.io");
        assert_eq!(hub.whole(), "registry-1.docker.io/library/busybox:latest");
    }

    fn config_error(endpoint: &Endpoint) -> Error {
        match endpoint.client_config() {
            Ok(_) => panic!("{endpoint:?} should have no client config"),
            Err(err) => err,
        }
    }

    #[test]
    fn client_config_settings() {
        let plain = Endpoint { plain_http: true, ..origin("localhost:5000", "x") };
        assert!(matches!(plain.client_config().unwrap().protocol, ClientProtocol::Http));

        let insecure = Endpoint { skip_verify: true, ..origin("r.io", "x") };
        let config = insecure.client_config().unwrap();
        assert!(matches!(config.protocol, ClientProtocol::Https));
        assert!(config.accept_invalid_certificates);
        assert!(config.extra_root_certificates.is_empty());

        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
            .unwrap();
        let with_ca = Endpoint { ca_file: Some(ca.clone()), ..origin("r.io", "x") };
        let config = with_ca.client_config().unwrap();
        assert_eq!(config.extra_root_certificates.len(), 1);
        assert!(!config.accept_invalid_certificates);

        let missing =
            Endpoint { ca_file: Some(dir.path().join("nope.pem")), ..origin("r.io", "x") };
        let err = config_error(&missing).to_string();
        assert!(err.contains("nope.pem"), "{err}");

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let bad = Endpoint { ca_file: Some(junk), ..origin("r.io", "x") };
        let err = config_error(&bad).to_string();
        assert!(err.contains("junk.pem") && err.contains("no PEM certificate"), "{err}");

        // A client certificate is no reason to refuse the oci-client settings.
        let mtls = Endpoint {
            client_cert: Some(("/c.pem".into(), "/k.pem".into())),
            ..origin("r.io", "x")
        };
        assert!(mtls.client_config().is_ok());
        // Its files are read when the direct client is set up, and named when missing.
        let err = match mtls.http_client_builder() {
            Ok(_) => panic!("no such client certificate"),
            Err(err) => err.to_string(),
        };
        assert!(err.contains("/c.pem"), "{err}");
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        let bad =
            Endpoint { client_cert: Some((cert, dir.path().join("k.pem"))), ..origin("r.io", "x") };
        let err = match bad.http_client_builder() {
            Ok(_) => panic!("no client certificate"),
            Err(err) => err.to_string(),
        };
        assert!(err.contains("c.pem") && err.contains("no PEM certificate"), "{err}");
    }
}
