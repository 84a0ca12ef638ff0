//! Credentials for a pull: those the kubelet sends with the request, and the node's own in a
//! docker `config.json` file. Secrets never reach a log or an error message: `Debug` redacts
//! them, and errors say what is wrong without quoting the value.
//!
//! An identity token (docker's `identitytoken`) is an OAuth2 refresh token: it is never sent to
//! the registry itself but exchanged at the registry's token service for an access token, as
//! the docker registry token specification's OAuth2 flow says.

use std::collections::BTreeMap;
use std::fmt;
use std::io::ErrorKind as IoErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::hosts::Endpoint;
use crate::reference::{is_docker_hub_alias, DOCKER_HUB};

const REDACTED: &str = "<redacted>";
/// The OAuth2 client id berth presents to token services.
const OAUTH_CLIENT_ID: &str = "berth";
/// A token service's answer is a small JSON object; anything bigger is not one.
const MAX_TOKEN_ANSWER_BYTES: usize = 1 << 20;

/// The CRI request's `AuthConfig`, as plain fields.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    pub username: String,
    pub password: String,
    /// base64 of `user:password`.
    pub auth: String,
    pub server_address: String,
    pub identity_token: String,
    pub registry_token: String,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |secret: &str| if secret.is_empty() { "" } else { REDACTED };
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("password", &redact(&self.password))
            .field("auth", &redact(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &redact(&self.identity_token))
            .field("registry_token", &redact(&self.registry_token))
            .finish()
    }
}

/// What to present to a registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A registry token, sent as is.
    Bearer(String),
    /// An OAuth2 refresh token, to be exchanged for an access token.
    IdentityToken {
        username: String,
        token: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &REDACTED)
                .finish(),
            Credentials::Bearer(_) => f.debug_tuple("Bearer").field(&REDACTED).finish(),
            Credentials::IdentityToken { username, .. } => f
                .debug_struct("IdentityToken")
                .field("username", username)
                .field("token", &REDACTED)
                .finish(),
        }
    }
}

impl Credentials {
    /// The credentials a pull request carries; None when it carries none.
    ///
    /// A registry token wins over an identity token, which wins over a user name and
    /// password; `auth` is read only when `username` is empty, because the kubelet fills
    /// both from the same entry.
    pub fn from_request(a: &AuthConfig) -> Result<Option<Credentials>> {
        let fields = Fields {
            username: &a.username,
            password: &a.password,
            auth: &a.auth,
            identity_token: &a.identity_token,
            registry_token: &a.registry_token,
        };
        fields.credentials().map_err(|reason| {
            let server = match a.server_address.as_str() {
                "" => String::new(),
                address => format!(" for {address}"),
            };
            Error::BadCredentials {
                reason: format!("AuthConfig of the pull request{server}: {reason}"),
            }
        })
    }

    /// What to present to a registry for these credentials as they are; None for an identity
    /// token, which must first be exchanged for an access token (see [`registry_auth`]).
    pub fn to_registry_auth(&self) -> Option<RegistryAuth> {
        match self {
            Credentials::Anonymous => Some(RegistryAuth::Anonymous),
            Credentials::Basic { username, password } => {
                Some(RegistryAuth::Basic(username.clone(), password.clone()))
            }
            Credentials::Bearer(token) => Some(RegistryAuth::Bearer(token.clone())),
            Credentials::IdentityToken { .. } => None,
        }
    }
}

/// The credential fields shared by a request's AuthConfig and a config.json entry.
struct Fields<'a> {
    username: &'a str,
    password: &'a str,
    auth: &'a str,
    identity_token: &'a str,
    registry_token: &'a str,
}

impl Fields<'_> {
    /// The reason on error never quotes a value, since every value may be a secret.
    fn credentials(&self) -> Result<Option<Credentials>, String> {
        if !self.registry_token.is_empty() {
            return Ok(Some(Credentials::Bearer(self.registry_token.to_string())));
        }
        let (username, password) = if !self.username.is_empty() {
            (self.username.to_string(), self.password.to_string())
        } else if !self.auth.is_empty() {
            decode_auth(self.auth)?
        } else {
            (String::new(), self.password.to_string())
        };
        if !self.identity_token.is_empty() {
            let token = self.identity_token.to_string();
            return Ok(Some(Credentials::IdentityToken { username, token }));
        }
        match (username.is_empty(), password.is_empty()) {
            (true, true) => Ok(None),
            (true, false) => Err("a password without a username".into()),
            (false, _) => Ok(Some(Credentials::Basic { username, password })),
        }
    }
}

/// `auth`: base64 of `user:password`, padded or not, as docker writes it.
fn decode_auth(auth: &str) -> Result<(String, String), String> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let bytes = LENIENT.decode(auth.trim()).map_err(|_| "auth is not valid base64".to_string())?;
    let text = String::from_utf8(bytes).map_err(|_| "auth does not decode to text".to_string())?;
    let Some((username, password)) = text.split_once(':') else {
        return Err("auth does not decode to \"user:password\" (no ':')".into());
    };
    if username.is_empty() {
        return Err("auth has an empty user name".into());
    }
    // Some tools pad the decoded password with NULs; containerd trims them too.
    Ok((username.to_string(), password.trim_matches('\0').to_string()))
}

/// The node's credentials file: docker's `config.json` format,
/// `{"auths": {"<registry>": {"auth": "…", "username": "…", …}}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialsFile {
    /// By normalised registry (see [`registry_key`]).
    entries: BTreeMap<String, Credentials>,
}

#[derive(Deserialize)]
struct ConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, ConfigJsonEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<serde_json::Value>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ConfigJsonEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

impl CredentialsFile {
    /// A missing file is an empty one: credentials are optional.
    pub fn load(path: &Path) -> Result<CredentialsFile> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == IoErrorKind::NotFound => {
                return Ok(CredentialsFile::default())
            }
            Err(err) => return Err(Error::io("reading credentials file", path)(err)),
        };
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<CredentialsFile> {
        let corrupt = |reason: String| Error::Corrupt { path: PathBuf::from(path), reason };
        if text.trim().is_empty() {
            return Ok(CredentialsFile::default());
        }
        // serde_json's messages may quote the offending value, which may be a secret: only
        // the position goes into the error.
        let config: ConfigJson = serde_json::from_str(text).map_err(|err| {
            let what = match err.classify() {
                serde_json::error::Category::Data => {
                    "not docker config.json ({\"auths\": {\"<registry>\": {\"auth\": \"…\"}}})"
                }
                _ => "not valid JSON",
            };
            corrupt(format!("{what} at line {} column {}", err.line(), err.column()))
        })?;
        if config.creds_store.is_some() || config.cred_helpers.is_some() {
            tracing::warn!(
                file = %path.display(),
                "credsStore and credHelpers are not supported; only \"auths\" entries are used"
            );
        }
        let mut entries = BTreeMap::new();
        for (key, entry) in &config.auths {
            let fields = Fields {
                username: entry.username.as_deref().unwrap_or_default(),
                password: entry.password.as_deref().unwrap_or_default(),
                auth: entry.auth.as_deref().unwrap_or_default(),
                identity_token: entry.identitytoken.as_deref().unwrap_or_default(),
                registry_token: entry.registrytoken.as_deref().unwrap_or_default(),
            };
            let credentials = fields
                .credentials()
                .map_err(|reason| corrupt(format!("auths.{key:?}: {reason}")))?;
            // docker writes empty entries when the secret lives in a credential store.
            let Some(credentials) = credentials else { continue };
            let registry = registry_key(key);
            // Of two keys for one registry ("docker.io" and "https://index.docker.io/v1/"),
            // the one written as the bare registry wins, whatever the order.
            if *key == registry || !entries.contains_key(&registry) {
                entries.insert(registry, credentials);
            }
        }
        Ok(CredentialsFile { entries })
    }

    /// The credentials for a registry or host (`docker.io`, `registry-1.docker.io`,
    /// `mirror.local:5000`).
    pub fn lookup(&self, registry: &str) -> Option<Credentials> {
        self.entries.get(&registry_key(registry)).cloned()
    }
}

/// A config.json key as the registry it names: `https://index.docker.io/v1/` is `docker.io`,
/// `https://r.example.com/` is `r.example.com`; host names compare case-insensitively.
fn registry_key(key: &str) -> String {
    let key = key.trim();
    let without_scheme = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = without_scheme.split('/').next().unwrap_or_default().to_ascii_lowercase();
    if is_docker_hub_alias(&host) {
        DOCKER_HUB.to_string()
    } else {
        host
    }
}

/// What to present to `endpoint` for `credentials`. An identity token is exchanged for an
/// access token at the endpoint's token service (which this asks the endpoint for), scoped to
/// pulling the endpoint's repository; every other kind is presented as it is, without a
/// request. `timeout` bounds each request of the exchange.
pub async fn registry_auth(
    credentials: Option<&Credentials>,
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<RegistryAuth> {
    let Some(credentials) = credentials else { return Ok(RegistryAuth::Anonymous) };
    if let Some(auth) = credentials.to_registry_auth() {
        return Ok(auth);
    }
    let Credentials::IdentityToken { token, .. } = credentials else {
        return Err(Error::Internal(format!("{credentials:?} have no registry auth")));
    };
    exchange_identity_token(token, endpoint, timeout).await
}

/// The OAuth2 refresh-token grant: ask `GET /v2/` for the token service, then `POST` the
/// refresh token there for an access token.
async fn exchange_identity_token(
    refresh_token: &str,
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<RegistryAuth> {
    let registry = endpoint.host.as_str();
    let unauthorized = |reason: String| Error::Unauthorized { registry: registry.into(), reason };
    let unavailable =
        |reason: String| Error::RegistryUnavailable { registry: registry.into(), reason };
    let client = http_client(endpoint, timeout)?;

    let scheme = if endpoint.plain_http { "http" } else { "https" };
    let ping = format!("{scheme}://{registry}/v2/");
    let answer = client
        .get(&ping)
        .send()
        .await
        .map_err(|err| unavailable(format!("GET {ping}: {}", describe(&err))))?;
    let status = answer.status();
    if status.is_success() {
        // The registry asks no one to authenticate: there is nothing to exchange the token for.
        tracing::debug!(registry, "registry needs no authentication; identity token not used");
        return Ok(RegistryAuth::Anonymous);
    }
    if status != reqwest::StatusCode::UNAUTHORIZED {
        return Err(unavailable(format!("GET {ping}: HTTP {status}")));
    }
    let challenges = answer.headers().get_all(reqwest::header::WWW_AUTHENTICATE);
    let challenge = bearer_challenge(challenges.iter().filter_map(|value| value.to_str().ok()))
        .ok_or_else(|| {
            unauthorized(
                "the registry offers no token service (no Bearer challenge with a realm) to \
                 exchange an identity token at"
                    .into(),
            )
        })?;
    let realm = match reqwest::Url::parse(&challenge.realm) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => url,
        _ => {
            return Err(unauthorized(format!(
                "the registry's token service realm {:?} is not an http(s) URL",
                challenge.realm
            )))
        }
    };

    let scope = format!("repository:{}:pull", endpoint.repository);
    let form = form_urlencoded(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("service", &challenge.service),
        ("scope", &scope),
        ("client_id", OAUTH_CLIENT_ID),
    ]);
    tracing::debug!(
        registry, realm = %realm, service = %challenge.service, %scope,
        "exchanging an identity token"
    );
    let mut answer = client
        .post(realm.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .map_err(|err| unavailable(format!("POST {realm}: {}", describe(&err))))?;
    let status = answer.status();
    let mut body = Vec::new();
    while let Some(chunk) = answer
        .chunk()
        .await
        .map_err(|err| unavailable(format!("POST {realm}: {}", describe(&err))))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_TOKEN_ANSWER_BYTES {
            return Err(unavailable(format!("token service {realm}: answer too large")));
        }
    }
    // Only the fields named here are read; error_description may quote what was sent.
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct TokenAnswer {
        access_token: Option<String>,
        token: Option<String>,
        error: Option<String>,
    }
    let parsed = serde_json::from_slice::<TokenAnswer>(&body);
    if !status.is_success() {
        let code = parsed.ok().and_then(|a| a.error).filter(|code| OAUTH_ERRORS.contains(&&**code));
        let code = code.map(|code| format!(": {code}")).unwrap_or_default();
        let reason =
            format!("token service {realm} refused the identity token (HTTP {status}{code})");
        return Err(match status.as_u16() {
            429 | 500.. => unavailable(reason),
            400..=499 => unauthorized(reason),
            _ => unavailable(reason),
        });
    }
    // serde_json's message may quote the answer, which holds a token: it is left out.
    let parsed = parsed.map_err(|_| {
        unavailable(format!("token service {realm}: the answer is not a JSON object"))
    })?;
    let access_token =
        [parsed.access_token, parsed.token].into_iter().flatten().find(|t| !t.is_empty());
    match access_token {
        Some(access_token) => Ok(RegistryAuth::Bearer(access_token)),
        None => Err(unauthorized(format!(
            "token service {realm} answered without an access_token or token"
        ))),
    }
}

/// RFC 6749's error codes: a token service's `error` is quoted only when it is one of these.
const OAUTH_ERRORS: &[&str] = &[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
];

/// A client with the endpoint's connection settings, as oci-client makes from
/// [`Endpoint::client_config`]: certificate checks and extra CA certificates, and the client
/// certificate of an endpoint that has one.
fn http_client(endpoint: &Endpoint, timeout: Duration) -> Result<reqwest::Client> {
    endpoint.http_client_builder()?.connect_timeout(timeout).timeout(timeout).build().map_err(
        |err| Error::Config(format!("HTTP client for {}: {}", endpoint.host, describe(&err))),
    )
}

/// An error with its causes, which reqwest keeps out of its own message.
pub(crate) fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "timed out".into();
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `application/x-www-form-urlencoded`, as HTML forms and OAuth2 token requests are sent.
fn form_urlencoded(fields: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        let mut out = String::with_capacity(text.len());
        for byte in text.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                    out.push(byte as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{byte:02X}")),
            }
        }
        out
    };
    let pairs: Vec<String> =
        fields.iter().map(|(name, value)| format!("{}={}", encode(name), encode(value))).collect();
    pairs.join("&")
}

/// Where a registry's `Bearer` challenge sends clients for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BearerChallenge {
    pub(crate) realm: String,
    /// Empty when the challenge names none.
    pub(crate) service: String,
}

/// The first `Bearer` challenge with a realm among `WWW-Authenticate` header values.
pub(crate) fn bearer_challenge<'a>(
    headers: impl IntoIterator<Item = &'a str>,
) -> Option<BearerChallenge> {
    headers
        .into_iter()
        .flat_map(parse_challenges)
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .find_map(|(_, params)| {
            let realm = params.get("realm").filter(|realm| !realm.is_empty())?.clone();
            let service = params.get("service").cloned().unwrap_or_default();
            Some(BearerChallenge { realm, service })
        })
}

/// The challenges of one `WWW-Authenticate` value (RFC 9110 section 11.6.1): schemes, each
/// with its parameters by lower-cased name. Values may be quoted strings, holding commas and
/// escaped quotes, or bare tokens; a token68 after a scheme is skipped.
pub(crate) fn parse_challenges(header: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut challenges: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let mut chars = header.chars().peekable();
    let is_delimiter = |c: char| c == ',' || c == '=' || c == '"' || c.is_whitespace();
    let skip_whitespace = |chars: &mut std::iter::Peekable<std::str::Chars>| {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
    };
    let quoted = |chars: &mut std::iter::Peekable<std::str::Chars>| {
        let mut value = String::new();
        chars.next(); // the opening quote
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => value.extend(chars.next()),
                c => value.push(c),
            }
        }
        value
    };
    loop {
        while chars.next_if(|&c| c == ',' || c.is_whitespace()).is_some() {}
        let mut name = String::new();
        while let Some(c) = chars.next_if(|&c| !is_delimiter(c)) {
            name.push(c);
        }
        if name.is_empty() {
            match chars.peek() {
                None => break,
                Some('"') => drop(quoted(&mut chars)),
                Some(_) => drop(chars.next()),
            }
            continue;
        }
        skip_whitespace(&mut chars);
        if chars.next_if_eq(&'=').is_none() {
            challenges.push((name, BTreeMap::new()));
            continue;
        }
        if chars.peek() == Some(&'=') {
            // The padding of a token68 ("abc=="), not a parameter.
            while chars.next_if_eq(&'=').is_some() {}
            continue;
        }
        skip_whitespace(&mut chars);
        let value = if chars.peek() == Some(&'"') {
            quoted(&mut chars)
        } else {
            let mut value = String::new();
            while let Some(c) = chars.next_if(|&c| c != ',' && !c.is_whitespace()) {
                value.push(c);
            }
            value
        };
        if let Some((_, params)) = challenges.last_mut() {
            params.entry(name.to_ascii_lowercase()).or_insert(value);
        }
    }
    challenges
}

#[cfg(test)]
mod tests;
