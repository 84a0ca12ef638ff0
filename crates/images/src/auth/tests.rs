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
    for (bare, url) in [("docker.io", "https://index.docker.io/v1/"), ("r.io", "http://r.io/v2/")] {
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
    let (reply, seen_by_server, host_for_server) = (Arc::new(reply), seen.clone(), host.clone());
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
            let challenge = format!("Bearer realm=\"http://{host}/token\",service=\"reg.test\"");
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
        let err =
            registry_auth(Some(&identity(SECRET)), &endpoint(&host), TIMEOUT).await.unwrap_err();
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
        let err =
            registry_auth(Some(&identity(SECRET)), &endpoint(&host), TIMEOUT).await.unwrap_err();
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
    let err = registry_auth(Some(&identity(SECRET)), &endpoint(&host), TIMEOUT).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("no token service"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 1);

    let (host, seen) = serve(|_, _| {
        (401, vec![("WWW-Authenticate", "Bearer realm=\"ftp://x/token\"".into())], String::new())
    })
    .await;
    let err = registry_auth(Some(&identity(SECRET)), &endpoint(&host), TIMEOUT).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("not an http(s) URL"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 1);

    // A registry that asks for no authentication is pulled from anonymously.
    let (host, _) = serve(|_, _| (200, vec![], "{}".into())).await;
    let auth = registry_auth(Some(&identity(SECRET)), &endpoint(&host), TIMEOUT).await;
    assert_eq!(auth.unwrap(), RegistryAuth::Anonymous);

    let (host, _) = serve(|_, _| (502, vec![], String::new())).await;
    let err = registry_auth(Some(&identity(SECRET)), &endpoint(&host), TIMEOUT).await.unwrap_err();
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
    assert!(matches!(err, Error::RegistryUnavailable { ref registry, .. } if *registry == closed));

    let realm = format!("Bearer realm=\"http://{closed}/token\",service=\"s\"");
    let (host, _) =
        serve(move |_, _| (401, vec![("WWW-Authenticate", realm.clone())], String::new())).await;
    let err = registry_auth(Some(&identity(SECRET)), &endpoint(&host), TIMEOUT).await.unwrap_err();
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
