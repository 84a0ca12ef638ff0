//! Fetching from an endpoint that wants a client certificate (mutual TLS), which oci-client
//! cannot present: a small registry client on reqwest that does just what a pull needs. A
//! manifest by tag or digest, a blob as a stream, and the registry's auth challenges (`Basic`,
//! or a `Bearer` token from the token service). Blob digests are verified here, as oci-client
//! verifies them on the other path.

use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use oci_client::secrets::RegistryAuth;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use serde::Deserialize;

use crate::auth::{bearer_challenge, describe, parse_challenges};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::hosts::Endpoint;

/// Token service answers are small; anything bigger is not one.
const MAX_TOKEN_ANSWER_BYTES: usize = 1 << 20;

pub struct Direct {
    client: reqwest::Client,
    host: String,
    auth: RegistryAuth,
    /// The `Authorization` value that last answered a challenge, reused for later requests.
    authorization: Mutex<Option<String>>,
}

impl Direct {
    /// A client for `endpoint`, which must be https; `stall` bounds connecting.
    pub fn new(endpoint: &Endpoint, auth: RegistryAuth, stall: Duration) -> Result<Direct> {
        if endpoint.plain_http {
            return Err(Error::Config(format!(
                "{}: a client certificate needs https, but plain_http is set",
                endpoint.host
            )));
        }
        let client = endpoint
            .http_client_builder()?
            .https_only(true)
            .connect_timeout(stall)
            .build()
            .map_err(|err| {
                Error::Config(format!("HTTP client for {}: {}", endpoint.host, describe(&err)))
            })?;
        let authorization = match &auth {
            RegistryAuth::Bearer(token) => Some(format!("Bearer {token}")),
            _ => None,
        };
        Ok(Direct {
            client,
            host: endpoint.host.clone(),
            auth,
            authorization: Mutex::new(authorization),
        })
    }

    /// `GET /v2/<repository>/manifests/<reference>`: the bytes and their Content-Type.
    /// `what` names the image in errors; more than `limit` bytes is an error.
    pub async fn manifest(
        &self,
        repository: &str,
        reference: &str,
        accept: &[&str],
        what: &str,
        limit: usize,
    ) -> Result<(Vec<u8>, String)> {
        let url = format!("https://{}/v2/{repository}/manifests/{reference}", self.host);
        let mut answer = self.get(&url, repository, Some(&accept.join(", ")), what).await?;
        let content_type = answer
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut bytes = Vec::new();
        while let Some(chunk) = answer.chunk().await.map_err(|err| self.failed(&url, &err))? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > limit {
                break;
            }
        }
        Ok((bytes, content_type))
    }

    /// `GET /v2/<repository>/blobs/<digest>` as a stream of chunks, hashed as they pass: the
    /// stream ends only once every byte hashed to `digest`, and a blob that does not ends
    /// with a `DigestMismatch` error instead.
    pub async fn blob(
        &self,
        repository: &str,
        digest: &Digest,
        what: &str,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let url = format!("https://{}/v2/{repository}/blobs/{digest}", self.host);
        let answer = self.get(&url, repository, None, what).await?;
        let (host, what, expected) = (self.host.clone(), what.to_string(), digest.clone());
        let state = Some((answer, Hasher::new()));
        let chunks = futures::stream::unfold(state, move |state| {
            let (host, what, expected) = (host.clone(), what.clone(), expected.clone());
            async move {
                let (mut answer, mut hasher) = state?;
                match answer.chunk().await {
                    Ok(Some(chunk)) => {
                        hasher.update(&chunk);
                        Some((Ok(chunk), Some((answer, hasher))))
                    }
                    Ok(None) => {
                        let actual = hasher.finish();
                        if actual == expected {
                            return None;
                        }
                        let mismatch = Error::DigestMismatch {
                            what,
                            expected: expected.to_string(),
                            actual: actual.to_string(),
                        };
                        Some((Err(mismatch), None))
                    }
                    Err(err) => {
                        let reason = format!("reading {what}: {}", describe(&err));
                        Some((Err(Error::RegistryUnavailable { registry: host, reason }), None))
                    }
                }
            }
        });
        Ok(chunks.boxed())
    }

    /// A GET that answers the registry's challenge once, and fails unless it succeeds.
    async fn get(
        &self,
        url: &str,
        repository: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<Response> {
        let cached = self.authorization.lock().ok().and_then(|a| a.clone());
        let mut answer = self.send(url, accept, cached.as_deref()).await?;
        if answer.status() == StatusCode::UNAUTHORIZED {
            if let Some(authorization) = self.answer_challenge(&answer, repository).await? {
                answer = self.send(url, accept, Some(&authorization)).await?;
                if answer.status().is_success() {
                    if let Ok(mut cached) = self.authorization.lock() {
                        *cached = Some(authorization);
                    }
                }
            }
        }
        let status = answer.status();
        if status.is_success() {
            return Ok(answer);
        }
        Err(match status.as_u16() {
            404 => Error::NotFound { what: format!("image {what}") },
            401 | 403 => self.unauthorized(format!("access to {url} denied (HTTP {status})")),
            code if is_transient(code) => self.unavailable(format!("{url}: HTTP {status}")),
            _ => Error::BadManifest {
                reference: what.to_string(),
                reason: format!("{url}: HTTP {status}"),
            },
        })
    }

    async fn send(
        &self,
        url: &str,
        accept: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Response> {
        let mut request = self.client.get(url);
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        if let Some(authorization) = authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        request.send().await.map_err(|err| self.failed(url, &err))
    }

    /// The `Authorization` that answers a 401's challenges: a token from the `Bearer`
    /// challenge's token service, or the basic credentials for a `Basic` one. None when there
    /// is nothing to answer with.
    async fn answer_challenge(
        &self,
        answer: &Response,
        repository: &str,
    ) -> Result<Option<String>> {
        let headers: Vec<&str> = answer
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        let basic = match &self.auth {
            RegistryAuth::Basic(username, password) => Some((username, password)),
            _ => None,
        };
        if let Some(challenge) = bearer_challenge(headers.iter().copied()) {
            let token = self.token(&challenge.realm, &challenge.service, repository, basic).await?;
            return Ok(Some(format!("Bearer {token}")));
        }
        let offers_basic = headers
            .iter()
            .flat_map(|header| parse_challenges(header))
            .any(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"));
        Ok(match basic {
            Some((username, password)) if offers_basic => {
                let pair = format!("{username}:{password}");
                Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))
            }
            _ => None,
        })
    }

    /// A pull token for `repository` from the token service at `realm`.
    async fn token(
        &self,
        realm: &str,
        service: &str,
        repository: &str,
        basic: Option<(&String, &String)>,
    ) -> Result<String> {
        let mut url = match reqwest::Url::parse(realm) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            _ => {
                return Err(self.unauthorized(format!(
                    "the registry's token service realm {realm:?} is not an http(s) URL"
                )))
            }
        };
        {
            let mut query = url.query_pairs_mut();
            if !service.is_empty() {
                query.append_pair("service", service);
            }
            query.append_pair("scope", &format!("repository:{repository}:pull"));
        }
        // The realm is shown without the query, which is the client's own.
        let shown = realm.split('?').next().unwrap_or(realm).to_string();
        let mut request = self.client.get(url);
        if let Some((username, password)) = basic {
            request = request.basic_auth(username, Some(password));
        }
        let mut answer = request.send().await.map_err(|err| self.failed(&shown, &err))?;
        let status = answer.status();
        if !status.is_success() {
            let reason = format!("token service {shown}: HTTP {status}");
            return Err(if is_transient(status.as_u16()) {
                self.unavailable(reason)
            } else {
                self.unauthorized(reason)
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = answer.chunk().await.map_err(|err| self.failed(&shown, &err))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_TOKEN_ANSWER_BYTES {
                return Err(self.unavailable(format!("token service {shown}: answer too large")));
            }
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        // serde_json's message may quote the answer, which holds a token: it is left out.
        let parsed = serde_json::from_slice::<TokenAnswer>(&body).map_err(|_| {
            self.unavailable(format!("token service {shown}: the answer is not a JSON object"))
        })?;
        [parsed.token, parsed.access_token]
            .into_iter()
            .flatten()
            .find(|t| !t.is_empty())
            .ok_or_else(|| {
                self.unauthorized(format!("token service {shown} answered without a token"))
            })
    }

    /// A request that got no answer: refused, timed out, or a TLS handshake that failed (the
    /// cause chain says which).
    fn failed(&self, url: &str, err: &reqwest::Error) -> Error {
        self.unavailable(format!("{url}: {}", describe(err)))
    }

    fn unavailable(&self, reason: String) -> Error {
        Error::RegistryUnavailable { registry: self.host.clone(), reason }
    }

    fn unauthorized(&self, reason: String) -> Error {
        Error::Unauthorized { registry: self.host.clone(), reason }
    }
}

/// Rate limited, timed out, or the server's own trouble: worth retrying later.
fn is_transient(code: u16) -> bool {
    matches!(code, 408 | 429) || (500..600).contains(&code)
}
