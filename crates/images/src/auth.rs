//! Credentials for a pull: those the kubelet sends with the request, and the node's own in a
//! docker `config.json` file. Secrets never reach a log or an error message: `Debug` redacts
//! them, and errors say what is wrong without quoting the value.

use std::collections::BTreeMap;
use std::fmt;
use std::io::ErrorKind as IoErrorKind;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::reference::{is_docker_hub_alias, DOCKER_HUB};

const REDACTED: &str = "<redacted>";
/// The user name docker presents with an identity token, which carries no user name of its own.
const IDENTITY_TOKEN_USER: &str = "<token>";

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

    pub fn to_registry_auth(&self) -> RegistryAuth {
        match self {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::Bearer(token) => RegistryAuth::Bearer(token.clone()),
            // oci-client cannot do the OAuth2 refresh-token exchange; registries that issue
            // identity tokens (ACR, for one) also take them as the password of a basic login,
            // which is how docker presents them to a token endpoint.
            Credentials::IdentityToken { username, token } => {
                let username =
                    if username.is_empty() { IDENTITY_TOKEN_USER } else { username.as_str() };
                RegistryAuth::Basic(username.to_string(), token.clone())
            }
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
        assert_eq!(Credentials::Anonymous.to_registry_auth(), RegistryAuth::Anonymous);
        assert_eq!(basic("u", "p").to_registry_auth(), RegistryAuth::Basic("u".into(), "p".into()));
        assert_eq!(
            Credentials::Bearer("t".into()).to_registry_auth(),
            RegistryAuth::Bearer("t".into())
        );
        let token = |username: &str| Credentials::IdentityToken {
            username: username.into(),
            token: "t".into(),
        };
        assert_eq!(token("").to_registry_auth(), RegistryAuth::Basic("<token>".into(), "t".into()));
        assert_eq!(token("u").to_registry_auth(), RegistryAuth::Basic("u".into(), "t".into()));
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
}
