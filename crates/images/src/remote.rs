//! Fetching from registries through oci-client: a manifest from the first endpoint (mirror or
//! origin) that has it, then its blobs from that same endpoint, as streams that fail when no
//! byte arrives for the stall timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;

use crate::auth::{registry_auth, Credentials};
use crate::digest::Digest;
use crate::direct::Direct;
use crate::error::{Error, Result};
use crate::hosts::{Endpoint, RegistryHosts};
use crate::manifest::{self, Descriptor, Fetched, Manifest, Platform};
use crate::reference::Reference;

/// Registry clients kept for reuse; more distinct endpoint-and-credential pairs than this start
/// the cache afresh.
const MAX_CLIENTS: usize = 64;

/// Manifests and configs are small; anything bigger is not an image manifest.
const MAX_MANIFEST_BYTES: usize = 8 << 20;

pub struct Remote {
    hosts: RegistryHosts,
    stall: Duration,
    /// One client per endpoint: each holds its TLS settings and its registry tokens.
    clients: Mutex<HashMap<String, Arc<Client>>>,
}

/// Where an image resolved: blobs come from the same endpoint as its manifest.
pub struct Source {
    pub endpoint: Endpoint,
    transport: Transport,
    image: oci_client::Reference,
    stall: Duration,
}

/// How an endpoint is fetched from: oci-client, or, for an endpoint with a client certificate
/// (which oci-client cannot present), berth's own small client.
#[derive(Clone)]
enum Transport {
    Oci { client: Arc<Client>, auth: RegistryAuth },
    Direct(Arc<Direct>),
}

pub struct Resolved {
    pub source: Source,
    /// The digest the reference resolved to (an index's, for a multi-platform image): the
    /// repo digest kubelet sees.
    pub top_digest: Digest,
    /// The index, when the reference named one, kept so the image stays verifiable.
    pub index: Option<(Digest, Vec<u8>)>,
    pub manifest_digest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub manifest: Manifest,
}

impl Remote {
    pub fn new(hosts: RegistryHosts, stall: Duration) -> Remote {
        Remote { hosts, stall, clients: Mutex::new(HashMap::new()) }
    }

    /// A client for an endpoint and the credentials presented to it. oci-client remembers the
    /// first credentials it is given per registry, so clients are keyed by credentials too
    /// (through a hash: the key must not hold secrets); pulls with the same credentials share
    /// a client and its connections and tokens.
    fn client(&self, endpoint: &Endpoint, auth: &RegistryAuth) -> Result<Arc<Client>> {
        let settings = format!("{:?}", Endpoint { repository: String::new(), ..endpoint.clone() });
        let key = format!("{settings} {}", credentials_fingerprint(auth));
        if let Some(client) = self.clients()?.get(&key) {
            return Ok(client.clone());
        }
        // Built outside the lock: it reads CA and client certificate files, and other pulls
        // must not wait for that.
        let mut config = endpoint.client_config()?;
        config.connect_timeout = Some(self.stall);
        // No read timeout here: the stall timer on every read is ours, so that a wedged
        // download is reported as a stall and not as a decoding error.
        let client = Arc::new(Client::new(config));
        let mut clients = self.clients()?;
        // Another pull may have built one meanwhile: keep the first, and its tokens.
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        // Every credential ever presented would otherwise keep a client alive.
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn clients(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Arc<Client>>>> {
        self.clients.lock().map_err(|_| Error::Internal("registry clients lock poisoned".into()))
    }

    /// Finds the image's manifest for this node's platform, trying each endpoint in order.
    /// `credentials(host)` gives the credentials to present to a host.
    pub async fn resolve(
        &self,
        reference: &Reference,
        credentials: impl Fn(&Endpoint) -> Option<Credentials>,
    ) -> Result<Resolved> {
        let endpoints = self.hosts.endpoints(reference);
        let mut failures: Vec<(Endpoint, Error)> = Vec::new();
        for endpoint in endpoints {
            // An identity token is exchanged here, per endpoint; a failed exchange is that
            // endpoint's failure, and the next one is tried.
            let credentials = credentials(&endpoint);
            let auth = match registry_auth(credentials.as_ref(), &endpoint, self.stall).await {
                Ok(auth) => auth,
                Err(err) => {
                    tracing::warn!(
                        host = %endpoint.host, mirror = endpoint.mirror, error = %err,
                        "cannot authenticate here"
                    );
                    failures.push((endpoint, err));
                    continue;
                }
            };
            // So is a TLS configuration that cannot be loaded (a missing CA file, say): the
            // next endpoint may not need it.
            let transport = match endpoint.client_cert {
                Some(_) => Direct::new(&endpoint, auth, self.stall)
                    .map(|direct| Transport::Direct(Arc::new(direct))),
                None => self.client(&endpoint, &auth).map(|client| Transport::Oci { client, auth }),
            };
            let transport = match transport {
                Ok(transport) => transport,
                Err(err) => {
                    tracing::warn!(
                        host = %endpoint.host, mirror = endpoint.mirror, error = %err,
                        "cannot set up a client for this endpoint"
                    );
                    failures.push((endpoint, err));
                    continue;
                }
            };
            let source = Source {
                transport,
                image: endpoint.reference(reference),
                endpoint,
                stall: self.stall,
            };
            match source.resolve(reference).await {
                Ok(resolved) => return Ok(resolved),
                Err(err) => {
                    tracing::warn!(host = %source.endpoint.host, mirror = source.endpoint.mirror, error = %err, "cannot fetch the manifest here");
                    failures.push((source.endpoint, err));
                }
            }
        }
        Err(pick_failure(reference, failures))
    }
}

fn credentials_fingerprint(auth: &RegistryAuth) -> String {
    let text = match auth {
        RegistryAuth::Anonymous => return "anonymous".into(),
        RegistryAuth::Basic(user, password) => format!("basic\0{user}\0{password}"),
        RegistryAuth::Bearer(token) => format!("bearer\0{token}"),
    };
    Digest::of(text.as_bytes()).hex().to_string()
}

/// When every endpoint failed, the error that tells the user most: the origin's answer (it is
/// the authority on whether an image exists), else the last mirror's.
fn pick_failure(reference: &Reference, mut failures: Vec<(Endpoint, Error)>) -> Error {
    let origin = failures.iter().position(|(endpoint, _)| !endpoint.mirror);
    match origin.map(|i| failures.swap_remove(i)).or_else(|| failures.pop()) {
        Some((_, err)) => err,
        None => Error::Config(format!("no registry endpoint to fetch {reference} from")),
    }
}

impl Source {
    async fn resolve(&self, reference: &Reference) -> Result<Resolved> {
        let what = reference.to_string();
        let (bytes, content_type) = self.manifest(&self.image).await?;
        let top_digest = Digest::of(&bytes);
        if let Some(expected) = &reference.digest {
            if &top_digest != expected {
                return Err(Error::DigestMismatch {
                    what: format!("manifest of {what}"),
                    expected: expected.to_string(),
                    actual: top_digest.to_string(),
                });
            }
        }
        match manifest::parse(&what, &content_type, &bytes)? {
            Fetched::Manifest(manifest) => Ok(Resolved {
                top_digest: top_digest.clone(),
                index: None,
                manifest_digest: top_digest,
                manifest_bytes: bytes,
                manifest,
                source: self.clone_source(),
            }),
            Fetched::Index(entries) => {
                let host = Platform::host();
                let entry = entries
                    .iter()
                    .find(|entry| entry.platform.as_ref().is_some_and(|p| host.matches(p)))
                    .ok_or_else(|| Error::NoMatchingPlatform {
                        reference: what.clone(),
                        platform: host.to_string(),
                    })?;
                let child = self.image.clone_with_digest(entry.digest.to_string());
                let (child_bytes, child_type) = self.manifest(&child).await?;
                let manifest_digest = verify(
                    &format!("manifest {} of {what}", entry.digest),
                    &entry.digest,
                    Some(entry.size),
                    &child_bytes,
                )?;
                let Fetched::Manifest(manifest) =
                    manifest::parse(&what, &child_type, &child_bytes)?
                else {
                    return Err(Error::BadManifest {
                        reference: what,
                        reason: "an index entry is itself an index".into(),
                    });
                };
                Ok(Resolved {
                    top_digest: top_digest.clone(),
                    index: Some((top_digest, bytes)),
                    manifest_digest,
                    manifest_bytes: child_bytes,
                    manifest,
                    source: self.clone_source(),
                })
            }
        }
    }

    fn clone_source(&self) -> Source {
        Source {
            endpoint: self.endpoint.clone(),
            transport: self.transport.clone(),
            image: self.image.clone(),
            stall: self.stall,
        }
    }

    async fn manifest(&self, image: &oci_client::Reference) -> Result<(Vec<u8>, String)> {
        let stalled = || Error::Stalled {
            what: format!("manifest {image} from {}", self.endpoint.host),
            secs: self.stall.as_secs(),
        };
        let (bytes, content_type) = match &self.transport {
            Transport::Oci { client, auth } => {
                let fetch = client.pull_manifest_raw(image, auth, manifest::ACCEPTED);
                let (bytes, content_type) = tokio::time::timeout(self.stall, fetch)
                    .await
                    .map_err(|_| stalled())?
                    .map_err(|err| classify(&self.endpoint.host, &image.whole(), err))?;
                (bytes.to_vec(), content_type)
            }
            Transport::Direct(direct) => {
                // A digest names the manifest exactly; otherwise the tag.
                let tag_or_digest = image.digest().or(image.tag()).unwrap_or("latest");
                let whole = image.whole();
                let fetch = direct.manifest(
                    image.repository(),
                    tag_or_digest,
                    manifest::ACCEPTED,
                    &whole,
                    MAX_MANIFEST_BYTES,
                );
                tokio::time::timeout(self.stall, fetch).await.map_err(|_| stalled())??
            }
        };
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(Error::BadManifest {
                reference: image.whole(),
                reason: format!("manifest of {} bytes is too large", bytes.len()),
            });
        }
        Ok((bytes, content_type))
    }

    /// A small blob (an image config), verified against its descriptor.
    pub async fn small_blob(&self, what: &str, descriptor: &Descriptor) -> Result<Vec<u8>> {
        if descriptor.size > MAX_MANIFEST_BYTES as u64 {
            return Err(Error::BadManifest {
                reference: what.into(),
                reason: format!("config of {} bytes is too large", descriptor.size),
            });
        }
        let mut stream = self.blob(what, descriptor).await?;
        let mut bytes = Vec::with_capacity(descriptor.size as usize);
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk?);
            if bytes.len() as u64 > descriptor.size {
                break;
            }
        }
        verify(what, &descriptor.digest, Some(descriptor.size), &bytes)?;
        Ok(bytes)
    }

    /// A blob as a stream of chunks; the stream fails with `Stalled` when nothing arrives for
    /// the stall timeout. The digest is verified here (by oci-client's `pull_blob_stream`, or
    /// by [`Direct::blob`] for an endpoint with a client certificate):
    /// the stream ends only after every byte hashed to the descriptor's digest, and a blob
    /// that does not ends with a `DigestMismatch` error instead. The caller checks the size.
    pub async fn blob(
        &self,
        what: &str,
        descriptor: &Descriptor,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let stall = self.stall;
        let host = self.endpoint.host.clone();
        let digest = descriptor.digest.to_string();
        let stalled =
            || Error::Stalled { what: format!("{what} from {host}"), secs: stall.as_secs() };
        let inner: BoxStream<'static, Result<Bytes>> = match &self.transport {
            Transport::Oci { client, .. } => {
                let open = client.pull_blob_stream(&self.image, digest.as_str());
                let sized = tokio::time::timeout(stall, open)
                    .await
                    .map_err(|_| stalled())?
                    .map_err(|err| classify(&host, what, err))?;
                let (host, what) = (host.clone(), what.to_string());
                sized
                    .stream
                    .map(move |item| item.map_err(|err| stream_error(&host, &what, err)))
                    .boxed()
            }
            Transport::Direct(direct) => {
                let open = direct.blob(self.image.repository(), &descriptor.digest, what);
                tokio::time::timeout(stall, open).await.map_err(|_| stalled())??
            }
        };
        let what = what.to_string();
        let chunks = futures::stream::unfold(Some(inner), move |stream| {
            let what = what.clone();
            let host = host.clone();
            async move {
                let mut stream = stream?;
                match tokio::time::timeout(stall, stream.next()).await {
                    Err(_) => Some((
                        Err(Error::Stalled {
                            what: format!("{what} from {host}"),
                            secs: stall.as_secs(),
                        }),
                        None,
                    )),
                    Ok(None) => None,
                    Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
                    Ok(Some(Err(err))) => Some((Err(err), None)),
                }
            }
        });
        Ok(chunks.boxed())
    }
}

/// oci-client checks blob digests itself and reports a mismatch as an I/O error of the
/// stream; that is a bad blob, not an unreachable registry.
fn stream_error(host: &str, what: &str, err: std::io::Error) -> Error {
    match err.get_ref().and_then(|inner| inner.downcast_ref::<DigestError>()) {
        Some(DigestError::VerificationError { expected, actual }) => Error::DigestMismatch {
            what: what.to_string(),
            expected: expected.clone(),
            actual: actual.clone(),
        },
        _ => Error::RegistryUnavailable {
            registry: host.to_string(),
            reason: format!("reading {what}: {err}"),
        },
    }
}

/// Checks bytes against a descriptor's digest and size.
pub fn verify(what: &str, expected: &Digest, size: Option<u64>, bytes: &[u8]) -> Result<Digest> {
    if let Some(size) = size {
        if bytes.len() as u64 != size {
            return Err(Error::SizeMismatch {
                what: what.into(),
                expected: size,
                actual: bytes.len() as u64,
            });
        }
    }
    let actual = Digest::of(bytes);
    if &actual != expected {
        return Err(Error::DigestMismatch {
            what: what.into(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(actual)
}

/// Turns a registry client error into one the kubelet can act on: not found, not allowed, or
/// not reachable (the CRI's RegistryUnavailable).
fn classify(host: &str, what: &str, err: OciDistributionError) -> Error {
    let not_found = || Error::NotFound { what: format!("image {what}") };
    let unauthorized = |reason: String| Error::Unauthorized { registry: host.to_string(), reason };
    let unavailable =
        |reason: String| Error::RegistryUnavailable { registry: host.to_string(), reason };
    match err {
        OciDistributionError::ImageManifestNotFoundError(_) => not_found(),
        OciDistributionError::AuthenticationFailure(reason) => unauthorized(reason),
        OciDistributionError::UnauthorizedError { url } => {
            unauthorized(format!("access to {url} denied"))
        }
        OciDistributionError::ServerError { code: 404, .. } => not_found(),
        OciDistributionError::ServerError { code: 401 | 403, url, .. } => {
            unauthorized(format!("access to {url} denied"))
        }
        // Rate limited, timed out, or the server's own trouble: worth retrying later.
        OciDistributionError::ServerError { code, url, message } if is_transient(code) => {
            unavailable(format!("{url}: HTTP {code}: {message}"))
        }
        OciDistributionError::RegistryError { envelope, url } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            // A 429 comes with an envelope (Docker Hub's pull limit, TOOMANYREQUESTS): the
            // status is then lost, the code says it.
            if codes.iter().any(|c| is_transient_code(c)) {
                unavailable(format!("{url}: {envelope}"))
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                not_found()
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                unauthorized(format!("{url}: {envelope}"))
            } else {
                Error::BadManifest {
                    reference: what.to_string(),
                    reason: format!("{url}: {envelope}"),
                }
            }
        }
        OciDistributionError::RequestError(err) => unavailable(describe_request_error(&err)),
        OciDistributionError::IoError(err) => unavailable(err.to_string()),
        other => Error::BadManifest { reference: what.to_string(), reason: other.to_string() },
    }
}

/// HTTP statuses that say "not now" rather than "no": too many requests, request timeout,
/// and the server errors.
fn is_transient(code: u16) -> bool {
    matches!(code, 408 | 429) || (500..600).contains(&code)
}

/// Error envelope codes that say the same: the OCI spec's TOOMANYREQUESTS, and the
/// UNAVAILABLE some registries send with a 503.
fn is_transient_code(code: &OciErrorCode) -> bool {
    match code {
        OciErrorCode::Toomanyrequests => true,
        OciErrorCode::Other(other) => matches!(
            other.to_ascii_uppercase().as_str(),
            "TOO_MANY_REQUESTS" | "UNAVAILABLE" | "SERVICE_UNAVAILABLE"
        ),
        _ => false,
    }
}

/// reqwest's Display stops at "error sending request"; the cause (connection refused, TLS)
/// is what a user needs.
fn describe_request_error(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HostConfig, MirrorConfig, RegistryConfig};
    use crate::error::REGISTRY_UNAVAILABLE;

    fn envelope(json: &str) -> OciDistributionError {
        OciDistributionError::RegistryError {
            envelope: serde_json::from_str(json).unwrap(),
            url: "https://r.io/v2/x/manifests/1".into(),
        }
    }

    fn server(code: u16, message: &str) -> OciDistributionError {
        OciDistributionError::ServerError {
            code,
            url: "https://r.io/v2/x/manifests/1".into(),
            message: message.into(),
        }
    }

    #[test]
    fn rate_limits_and_server_errors_are_registry_unavailable() {
        let hub_limit = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit"}]}"#;
        let unavailable = r#"{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}"#;
        for err in [
            envelope(hub_limit),
            envelope(unavailable),
            server(429, "slow down"),
            server(408, ""),
            server(500, "oops"),
            server(502, "<html>bad gateway</html>"),
            server(503, r#"{"errors":[{"code":"UNAVAILABLE","message":"maintenance"}]}"#),
        ] {
            let shown = format!("{err:?}");
            let err = classify("r.io", "r.io/x:1", err);
            assert!(matches!(err, Error::RegistryUnavailable { .. }), "{shown}: {err:?}");
            assert!(err.to_string().starts_with(REGISTRY_UNAVAILABLE), "{err}");
        }
    }

    #[test]
    fn other_answers_keep_their_meaning() {
        let unknown = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no such tag"}]}"#;
        let denied = r#"{"errors":[{"code":"DENIED","message":"no"}]}"#;
        let invalid = r#"{"errors":[{"code":"MANIFEST_INVALID","message":"bad"}]}"#;
        let classified = |err| classify("r.io", "r.io/x:1", err);
        assert!(matches!(classified(envelope(unknown)), Error::NotFound { .. }));
        assert!(matches!(classified(envelope(denied)), Error::Unauthorized { .. }));
        assert!(matches!(classified(envelope(invalid)), Error::BadManifest { .. }));
        assert!(matches!(classified(server(404, "")), Error::NotFound { .. }));
        assert!(matches!(classified(server(403, "")), Error::Unauthorized { .. }));
        assert!(matches!(classified(server(400, "")), Error::BadManifest { .. }));
    }

    #[tokio::test]
    async fn an_endpoint_whose_tls_cannot_be_set_up_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens on port 1: the origin answers "connection refused", quickly.
        let reference: Reference = "127.0.0.1:1/x:1".parse().unwrap();
        let mut config = RegistryConfig::default();
        config.hosts.insert(
            "127.0.0.1:1".into(),
            HostConfig {
                mirrors: vec![MirrorConfig {
                    host: "127.0.0.1:2".into(),
                    ca_file: Some(dir.path().join("missing-ca.pem")),
                    ..MirrorConfig::default()
                }],
                plain_http: Some(true),
                ..HostConfig::default()
            },
        );
        let remote = Remote::new(RegistryHosts::new(&config), Duration::from_secs(10));
        let err = match remote.resolve(&reference, |_| None).await {
            Ok(_) => panic!("nothing serves {reference}"),
            Err(err) => err,
        };
        // The origin was tried, and its answer is the one reported.
        assert!(
            matches!(err, Error::RegistryUnavailable { ref registry, .. } if registry == "127.0.0.1:1"),
            "{err}"
        );
    }
}
