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
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn request(f: impl FnOnce(&mut AuthConfig)) -> AuthConfig {
        let mut a = AuthConfig::default();
        f(&mut a);
        a
    }

    fn basic(username: &str, password: &str) -> Credentials {
        Credentials::Basic { username: username.into(), password: password.into() }
    }

    #[test]
    fn request_forms() {
        let b64 = |s: &str| STANDARD.encode(s);
        let cases: Vec<(AuthConfig, Option<Credentials>)> = vec![
            (AuthConfig::default(), None),
            (request(|a| a.server_address = "r.io".into()), None),
            (
                request(|a| {
                    a.username = "u".into();
                    a.password = "p".into();
                }),
                Some(basic("u", "p")),
            ),
            (request(|a| a.username = "u".into()), Some(basic("u", ""))),
            (request(|a| a.auth = b64("u:p:with:colons")), Some(basic("u", "p:with:colons"))),
            (request(|a| a.auth = b64("u:p\0\0")), Some(basic("u", "p"))),
            // Unpadded base64 and surrounding whitespace, as hand-written files have.
            (
                request(|a| a.auth = format!(" {} ", b64("ab:c").trim_end_matches('='))),
                Some(basic("ab", "c")),
            ),
            // username wins over auth, which is then not even decoded.
            (
                request(|a| {
                    a.username = "u".into();
                    a.password = "p".into();
                    a.auth = "!!not base64!!".into();
                }),
                Some(basic("u", "p")),
            ),
            (request(|a| a.registry_token = "rt".into()), Some(Credentials::Bearer("rt".into()))),
            (
                request(|a| {
                    a.registry_token = "rt".into();
                    a.identity_token = "it".into();
                    a.username = "u".into();
                }),
                Some(Credentials::Bearer("rt".into())),
            ),
            (
                request(|a| a.identity_token = "it".into()),
                Some(Credentials::IdentityToken { username: String::new(), token: "it".into() }),
            ),
            (
                request(|a| {
                    a.identity_token = "it".into();
                    a.auth = b64("00000000-0000-0000-0000-000000000000:");
                }),
                Some(Credentials::IdentityToken {
                    username: "00000000-0000-0000-0000-000000000000".into(),
                    token: "it".into(),
                }),
            ),
        ];
        for (a, expected) in cases {
            assert_eq!(Credentials::from_request(&a).unwrap(), expected, "{a:?}");
        }
    }

    #[test]
    fn bad_request_credentials_say_why_without_the_secret() {
        let cases = [
            (request(|a| a.auth = "sekrit!!".into()), "not valid base64"),
            (request(|a| a.auth = STANDARD.encode("sekrit")), "no ':'"),
            (request(|a| a.auth = STANDARD.encode(":sekrit")), "empty user name"),
            (request(|a| a.auth = STANDARD.encode([0xff, b':', b'x'])), "text"),
            (request(|a| a.password = "sekrit".into()), "password without a username"),
        ];
        for (mut a, reason) in cases {
            a.server_address = "r.example.com".into();
            let err = Credentials::from_request(&a).unwrap_err();
            assert!(matches!(err, Error::BadCredentials { .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains(reason) && text.contains("r.example.com"), "{text}");
            assert!(!text.contains("sekrit"), "{text}");
            assert!(a.auth.is_empty() || !text.contains(&a.auth), "{text}");
        }
    }

    #[test]
    fn registry_auth_mapping() {
        assert_eq!(Credentials::Anonymous.to_registry_auth(), Some(RegistryAuth::Anonymous));
        assert_eq!(
            basic("u", "p").to_registry_auth(),
            Some(RegistryAuth::Basic("u".into(), "p".into()))
        );
        assert_eq!(
            Credentials::Bearer("t".into()).to_registry_auth(),
            Some(RegistryAuth::Bearer("t".into()))
        );
        let token = Credentials::IdentityToken { username: "u".into(), token: "t".into() };
        assert_eq!(token.to_registry_auth(), None);
    }

    #[test]
    fn debug_redacts_secrets() {
        let values = [
            basic("alice", "sekrit1"),
            Credentials::Bearer("sekrit2".into()),
            Credentials::IdentityToken { username: "alice".into(), token: "sekrit3".into() },
        ];
        for c in &values {
            let text = format!("{c:?}");
            assert!(!text.contains("sekrit") && text.contains(REDACTED), "{text}");
        }
        assert!(format!("{:?}", values[0]).contains("alice"));
        let a = AuthConfig {
            username: "alice".into(),
            password: "sekrit1".into(),
            auth: "c2Vrcml0".into(),
            server_address: "r.io".into(),
            identity_token: "sekrit2".into(),
            registry_token: "sekrit3".into(),
        };
        let text = format!("{a:?}");
        assert!(!text.contains("sekrit") && !text.contains("c2Vrcml0"), "{text}");
        assert!(text.contains("alice") && text.contains("r.io"), "{text}");

        let mut file = CredentialsFile::default();
        file.entries.insert("r.io".into(), basic("alice", "sekrit4"));
        assert!(!format!("{file:?}").contains("sekrit"));
    }

    #[test]
    fn config_json_key_forms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let auth = |s: &str| STANDARD.encode(s);
        let text = serde_json::json!({
            "auths": {
                "https://index.docker.io/v1/": { "auth": auth("hub:pw") },
                "quay.io": { "username": "q", "password": "qp" },
                "LocalHost:5000": { "auth": auth("l:lp") },
                "http://mirror.local:5001/some/path": { "registrytoken": "rt" },
                "acr.example.com": { "auth": auth("00000000-0000-0000-0000-000000000000:"), "identitytoken": "it" },
                "empty.example.com": {},
                "[::1]:5000": { "auth": auth("six:pw") }
            },
            "credsStore": "desktop",
            "HttpHeaders": { "User-Agent": "x" }
        });
        std::fs::write(&path, text.to_string()).unwrap();
        let file = CredentialsFile::load(&path).unwrap();
        let cases = [
            ("docker.io", Some(basic("hub", "pw"))),
            ("index.docker.io", Some(basic("hub", "pw"))),
            ("registry-1.docker.io", Some(basic("hub", "pw"))),
            ("quay.io", Some(basic("q", "qp"))),
            ("localhost:5000", Some(basic("l", "lp"))),
            ("localhost", None),
            ("mirror.local:5001", Some(Credentials::Bearer("rt".into()))),
            (
                "acr.example.com",
                Some(Credentials::IdentityToken {
                    username: "00000000-0000-0000-0000-000000000000".into(),
                    token: "it".into(),
                }),
            ),
            ("empty.example.com", None),
            ("[::1]:5000", Some(basic("six", "pw"))),
            ("gcr.io", None),
        ];
        for (registry, expected) in cases {
            assert_eq!(file.lookup(registry), expected, "{registry}");
        }
    }

    #[test]
    fn bare_registry_key_wins_over_url_form() {
        let auth = |s: &str| STANDARD.encode(s);
        // "docker.io" sorts before "https://…", and after it in the other file.
        for (bare, url) in
            [("docker.io", "https://index.docker.io/v1/"), ("r.io", "http://r.io/v2/")]
        {
            let text = serde_json::json!({ "auths": {
                bare: { "auth": auth("bare:pw") },
                url: { "auth": auth("url:pw") },
            }});
            let file = CredentialsFile::parse(Path::new("/x"), &text.to_string()).unwrap();
            assert_eq!(file.lookup(bare), Some(basic("bare", "pw")), "{bare}");
        }
    }

    #[test]
    fn missing_empty_and_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            CredentialsFile::load(&dir.path().join("none.json")).unwrap(),
            CredentialsFile::default()
        );

        let empty = dir.path().join("empty.json");
        std::fs::write(&empty, "\n").unwrap();
        assert_eq!(CredentialsFile::load(&empty).unwrap(), CredentialsFile::default());
        std::fs::write(&empty, "{}").unwrap();
        assert_eq!(CredentialsFile::load(&empty).unwrap(), CredentialsFile::default());

        let cases = [
            ("{\"auths\": ", "not valid JSON"),
            ("{\"auths\": \"sekrit\"}", "not docker config.json"),
            ("{\"auths\": {\"r.io\": {\"auth\": 5}}}", "not docker config.json"),
            (
                "{\"auths\": {\"r.io\": {\"auth\": \"sekrit!\"}}}",
                "auths.\"r.io\": auth is not valid base64",
            ),
        ];
        for (i, (text, reason)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("bad{i}.json"));
            std::fs::write(&path, text).unwrap();
            let err = CredentialsFile::load(&path).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
            let err = err.to_string();
            assert!(err.contains(&format!("bad{i}.json")) && err.contains(reason), "{text}: {err}");
            assert!(!err.contains("sekrit"), "{err}");
        }

        // A directory where the file should be is unreadable, not missing.
        let err = CredentialsFile::load(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
    }

    // The OAuth2 identity-token exchange, against a fake registry and token service.

    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    const SECRET: &str = "sekrit-refresh/token+with=odd&chars ok";

    /// A request the fake server received.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| &**v)
        }

        /// The body as form fields, decoded.
        fn form(&self) -> BTreeMap<String, String> {
            let decode = |text: &str| {
                let bytes = text.as_bytes();
                let mut out = Vec::new();
                let mut i = 0;
                while i < bytes.len() {
                    match bytes[i] {
                        b'+' => out.push(b' '),
                        b'%' => {
                            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
                            i += 2;
                        }
                        b => out.push(b),
                    }
                    i += 1;
                }
                String::from_utf8(out).unwrap()
            };
            self.body
                .split('&')
                .map(|pair| {
                    let (name, value) = pair.split_once('=').unwrap();
                    (decode(name), decode(value))
                })
                .collect()
        }
    }

    /// Status, extra headers and body.
    type Reply = (u16, Vec<(&'static str, String)>, String);

    /// A minimal HTTP/1.1 server on a loopback port, one request per connection; `reply` gets
    /// each request and the server's `host:port`. Returns that `host:port` and what it saw.
    async fn serve(
        reply: impl Fn(&Seen, &str) -> Reply + Send + Sync + 'static,
    ) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (reply, seen_by_server, host_for_server) =
            (Arc::new(reply), seen.clone(), host.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (reply, seen, host) =
                    (reply.clone(), seen_by_server.clone(), host_for_server.clone());
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    let mut line = String::new();
                    stream.read_line(&mut line).await.unwrap();
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or_default().to_string();
                    let path = parts.next().unwrap_or_default().to_string();
                    let mut headers = Vec::new();
                    loop {
                        line.clear();
                        stream.read_line(&mut line).await.unwrap();
                        let Some((name, value)) = line.trim_end().split_once(':') else { break };
                        headers.push((name.trim().to_string(), value.trim().to_string()));
                    }
                    let length = headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                        .map_or(0, |(_, v)| v.parse().unwrap());
                    let mut body = vec![0; length];
                    stream.read_exact(&mut body).await.unwrap();
                    let request =
                        Seen { method, path, headers, body: String::from_utf8(body).unwrap() };
                    let (status, extra, body) = reply(&request, &host);
                    seen.lock().unwrap().push(request);
                    let mut head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                        body.len()
                    );
                    for (name, value) in extra {
                        head.push_str(&format!("{name}: {value}\r\n"));
                    }
                    head.push_str("\r\n");
                    let stream = stream.get_mut();
                    stream.write_all(head.as_bytes()).await.unwrap();
                    stream.write_all(body.as_bytes()).await.unwrap();
                    stream.shutdown().await.ok();
                });
            }
        });
        (host, seen)
    }

    /// A registry whose `/v2/` sends clients to its `/token` with service "reg.test", and whose
    /// token service answers with `token_reply`.
    async fn registry(
        token_reply: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static,
    ) -> (String, Arc<Mutex<Vec<Seen>>>) {
        serve(move |request, host| match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/v2/") => {
                let challenge =
                    format!("Bearer realm=\"http://{host}/token\",service=\"reg.test\"");
                (401, vec![("WWW-Authenticate", challenge)], "{}".into())
            }
            ("POST", "/token") => {
                let (status, body) = token_reply(request);
                (status, vec![("Content-Type", "application/json".into())], body)
            }
            _ => (404, vec![], String::new()),
        })
        .await
    }

    fn endpoint(host: &str) -> Endpoint {
        Endpoint {
            host: host.into(),
            repository: "team/app".into(),
            plain_http: true,
            skip_verify: false,
            ca_file: None,
            client_cert: None,
            mirror: false,
        }
    }

    fn identity(token: &str) -> Credentials {
        Credentials::IdentityToken { username: "00000000-0000".into(), token: token.into() }
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn identity_token_is_exchanged_for_an_access_token() {
        let (host, seen) = registry(|_| {
            (200, r#"{"access_token":"at-1","token":"docker-1","expires_in":300}"#.into())
        })
        .await;
        let auth = registry_auth(Some(&identity(SECRET)), &endpoint(&host), TIMEOUT).await;
        assert_eq!(auth.unwrap(), RegistryAuth::Bearer("at-1".into()));

        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!((seen[0].method.as_str(), seen[0].path.as_str()), ("GET", "/v2/"));
        // The refresh token goes to the token service only, and in the body only.
        assert!(seen[0].headers.iter().all(|(_, v)| !v.contains("sekrit")), "{seen:?}");
        let post = &seen[1];
        assert_eq!((post.method.as_str(), post.path.as_str()), ("POST", "/token"));
        assert_eq!(post.header("content-type"), Some("application/x-www-form-urlencoded"));
        assert_eq!(post.header("authorization"), None);
        let expected: BTreeMap<String, String> = [
            ("grant_type", "refresh_token"),
            ("refresh_token", SECRET),
            ("service", "reg.test"),
            ("scope", "repository:team/app:pull"),
            ("client_id", "berth"),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(post.form(), expected);
    }

    #[tokio::test]
    async fn docker_token_field_is_accepted() {
        for body in [r#"{"token":"docker-1"}"#, r#"{"access_token":"","token":"docker-1"}"#] {
            let (host, _) = registry(move |_| (200, body.into())).await;
            let auth = registry_auth(Some(&identity(SECRET)), &endpoint(&host), TIMEOUT).await;
            assert_eq!(auth.unwrap(), RegistryAuth::Bearer("docker-1".into()), "{body}");
        }
    }

    #[tokio::test]
    async fn refused_identity_token_is_unauthorized_without_the_secret() {
        for status in [400, 401] {
            let (host, _) = registry(move |request| {
                // Token services may echo what they were sent.
                let echo = request.form()["refresh_token"].clone();
                let body = serde_json::json!({
                    "error": "invalid_grant",
                    "error_description": format!("refresh token {echo} expired"),
                });
                (status, body.to_string())
            })
            .await;
            let err = registry_auth(Some(&identity(SECRET)), &endpoint(&host), TIMEOUT)
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::Unauthorized { ref registry, .. } if *registry == host));
            assert!(text.contains("invalid_grant") && text.contains(&status.to_string()), "{text}");
            assert!(!text.contains("sekrit") && !format!("{err:?}").contains("sekrit"), "{text}");
        }
    }

    #[tokio::test]
    async fn token_service_failures() {
        // Status, body, and whether the error is RegistryUnavailable (else Unauthorized).
        let cases = [
            (503, "{}", true),
            (429, "{}", true),
            (200, "<html>", true),
            (200, r#"{"expires_in":300}"#, false),
            (404, "", false),
            // Not an OAuth2 error code: not quoted.
            (403, r#"{"error":"sekrit"}"#, false),
        ];
        for (status, body, unavailable) in cases {
            let (host, _) = registry(move |_| (status, body.into())).await;
            let err = registry_auth(Some(&identity(SECRET)), &endpoint(&host), TIMEOUT)
                .await
                .unwrap_err();
            let is_unavailable = matches!(err, Error::RegistryUnavailable { .. });
            let is_unauthorized = matches!(err, Error::Unauthorized { .. });
            assert!(
                if unavailable { is_unavailable } else { is_unauthorized },
                "{status} {body}: {err:?}"
            );
            assert!(!err.to_string().contains("sekrit"), "{err}");
        }
    }

    #[tokio::test]
    async fn registry_without_token_service() {
        let (host, seen) = serve(|_, _| {
            (401, vec![("WWW-Authenticate", "Basic realm=\"registry\"".into())], String::new())
        })
        .await;
        let err =
            registry_auth(Some(&identity(SECRET)), &endpoint(&host), TIMEOUT).await.unwrap_err();
        assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
        assert!(err.to_string().contains("no token service"), "{err}");
        assert_eq!(seen.lock().unwrap().len(), 1);

        let (host, seen) = serve(|_, _| {
            (
                401,
                vec![("WWW-Authenticate", "Bearer realm=\"ftp://x/token\"".into())],
                String::new(),
            )
        })
        .await;
        let err =
            registry_auth(Some(&identity(SECRET)), &endpoint(&host), TIMEOUT).await.unwrap_err();
        assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
        assert!(err.to_string().contains("not an http(s) URL"), "{err}");
        assert_eq!(seen.lock().unwrap().len(), 1);

        // A registry that asks for no authentication is pulled from anonymously.
        let (host, _) = serve(|_, _| (200, vec![], "{}".into())).await;
        let auth = registry_auth(Some(&identity(SECRET)), &endpoint(&host), TIMEOUT).await;
        assert_eq!(auth.unwrap(), RegistryAuth::Anonymous);

        let (host, _) = serve(|_, _| (502, vec![], String::new())).await;
        let err =
            registry_auth(Some(&identity(SECRET)), &endpoint(&host), TIMEOUT).await.unwrap_err();
        assert!(matches!(err, Error::RegistryUnavailable { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn unreachable_registry_and_token_service() {
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let err =
            registry_auth(Some(&identity(SECRET)), &endpoint(&closed), TIMEOUT).await.unwrap_err();
        assert!(
            matches!(err, Error::RegistryUnavailable { ref registry, .. } if *registry == closed)
        );

        let realm = format!("Bearer realm=\"http://{closed}/token\",service=\"s\"");
        let (host, _) =
            serve(move |_, _| (401, vec![("WWW-Authenticate", realm.clone())], String::new()))
                .await;
        let err =
            registry_auth(Some(&identity(SECRET)), &endpoint(&host), TIMEOUT).await.unwrap_err();
        assert!(matches!(err, Error::RegistryUnavailable { .. }), "{err:?}");
        assert!(err.to_string().contains(&closed) && !err.to_string().contains("sekrit"), "{err}");
    }

    #[tokio::test]
    async fn other_credentials_need_no_request() {
        // Nothing listens at port 9 of a TEST-NET address; no request is made.
        let nowhere = endpoint("192.0.2.1:9");
        let cases = [
            (None, RegistryAuth::Anonymous),
            (Some(Credentials::Anonymous), RegistryAuth::Anonymous),
            (Some(basic("u", "p")), RegistryAuth::Basic("u".into(), "p".into())),
            (Some(Credentials::Bearer("t".into())), RegistryAuth::Bearer("t".into())),
        ];
        for (credentials, expected) in cases {
            let auth = registry_auth(credentials.as_ref(), &nowhere, TIMEOUT).await.unwrap();
            assert_eq!(auth, expected, "{credentials:?}");
        }
    }

    #[tokio::test]
    async fn endpoint_settings_apply_to_the_exchange() {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, "not a certificate").unwrap();
        let with_ca = Endpoint { ca_file: Some(ca_file), ..endpoint("127.0.0.1:1") };
        let err = registry_auth(Some(&identity(SECRET)), &with_ca, TIMEOUT).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");

        // plain_http off: the fake server, which speaks HTTP only, is asked over TLS.
        let (host, seen) = serve(|_, _| (200, vec![], String::new())).await;
        let tls = Endpoint { plain_http: false, ..endpoint(&host) };
        let err = registry_auth(Some(&identity(SECRET)), &tls, TIMEOUT).await.unwrap_err();
        assert!(err.to_string().contains(&format!("https://{host}/v2/")), "{err}");
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn challenge_parsing() {
        let challenge = |realm: &str, service: &str| {
            Some(BearerChallenge { realm: realm.into(), service: service.into() })
        };
        let cases: Vec<(Vec<&str>, Option<BearerChallenge>)> = vec![
            (
                vec![r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#],
                challenge("https://auth.docker.io/token", "registry.docker.io"),
            ),
            // Case-insensitive scheme and names, spaces around '=' and after commas.
            (vec![r#"bEaReR Realm = "https://a/t" , SERVICE="s""#], challenge("https://a/t", "s")),
            // Commas and '=' inside quotes, and a scope after them.
            (
                vec![concat!(
                    r#"Bearer realm="https://a/t?x=1,2",service="a, b","#,
                    r#"scope="repository:x:pull,push""#
                )],
                challenge("https://a/t?x=1,2", "a, b"),
            ),
            // Escaped quotes.
            (
                vec![r#"Bearer realm="https://a/t",service="say \"hi\"""#],
                challenge("https://a/t", r#"say "hi""#),
            ),
            // Bare token values.
            (vec!["Bearer realm=https://a/t?x=1, service=s"], challenge("https://a/t?x=1", "s")),
            // Without a service.
            (vec![r#"Bearer realm="https://a/t""#], challenge("https://a/t", "")),
            // Several challenges in one value, and in several values.
            (
                vec![r#"Basic realm="basic, really", Bearer realm="https://a/t",service="s""#],
                challenge("https://a/t", "s"),
            ),
            (
                vec![r#"Negotiate abc==, Basic realm="b""#, r#"Bearer realm="https://a/t""#],
                challenge("https://a/t", ""),
            ),
            // The first Bearer challenge with a realm wins.
            (
                vec![
                    r#"Bearer service="s", Bearer realm="https://a/1""#,
                    r#"Bearer realm="https://a/2""#,
                ],
                challenge("https://a/1", ""),
            ),
            (vec![r#"Basic realm="Bearer realm=x""#], None),
            (vec![r#"Bearer service="s""#], None),
            (vec![r#"Bearer realm="""#], None),
            (vec!["Bearer"], None),
            (vec![""], None),
            (vec![], None),
            // Unterminated quotes and stray characters do not panic.
            (vec![r#"Bearer realm="https://a/t"#], challenge("https://a/t", "")),
            (vec![r#"= , "x,y" Bearer =realm="https://a/t""#], None),
        ];
        for (headers, expected) in cases {
            assert_eq!(bearer_challenge(headers.iter().copied()), expected, "{headers:?}");
        }
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_urlencoded(&[("a b", "x+y/z=&%é"), ("scope", "repository:a/b:pull"), ("e", "")]),
            "a+b=x%2By%2Fz%3D%26%25%C3%A9&scope=repository%3Aa%2Fb%3Apull&e="
        );
    }
}
