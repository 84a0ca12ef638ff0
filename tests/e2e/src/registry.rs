//! A real registry on a node: Debian's `docker-registry` (the CNCF distribution registry),
//! plain HTTP on the node's loopback, with its storage in the node's scratch directory.
//!
//! Besides the default one on [`REGISTRY_ADDR`] a test may start more on other loopback ports
//! of the same node (a mirror, [`Registry::start_on`]), one that wants a password
//! ([`Registry::start_with_auth`]), one that serves HTTPS only, with a certificate from a test
//! CA ([`Registry::start_with_tls`]; [`Registry::start_with_mtls`] also wants a client
//! certificate), tamper with the blobs a registry stores
//! ([`Registry::corrupt_blob`]), or point a client at [`down_addr`], where nothing listens.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

use crate::node::Node;

/// Inside the node's own network namespace the port is free whatever other nodes use.
pub const REGISTRY_ADDR: &str = "127.0.0.1:5000";

/// An address on the node's loopback where nothing listens: connecting there is refused at
/// once, as with a mirror that is down.
pub const DOWN_ADDR: &str = "127.0.0.1:5999";

/// See [`DOWN_ADDR`].
pub fn down_addr() -> &'static str {
    DOWN_ADDR
}

/// A conventional HTTPS port for a TLS registry on the node's loopback.
pub const TLS_REGISTRY_ADDR: &str = "127.0.0.1:5443";

/// The names the server certificate of [`Registry::start_with_tls`] is valid for: an IP SAN
/// and a DNS SAN, so that `127.0.0.1:<port>` and `localhost:<port>` both verify.
pub const TLS_SERVER_NAMES: &[&str] = &["127.0.0.1", "localhost"];

/// The bcrypt cost of generated htpasswd files: the minimum, because the registry checks the
/// password on every request and the tests need no protection against brute force.
const BCRYPT_COST: u32 = 4;

pub struct Registry {
    child: Child,
    /// host:port, as it goes into image references.
    pub addr: String,
    /// The storage driver's root directory (`rootdirectory` of the filesystem driver).
    pub root: PathBuf,
    /// The user name and password that the registry wants, if it was started with auth.
    pub credentials: Option<(String, String)>,
    /// Serves HTTPS only ([`Registry::start_with_tls`]).
    tls: bool,
}

/// A CA made up for one TLS registry, and the server certificate it signed, all PEM files in
/// the registry's directory (`node.dir()/registry-<port>/tls/`).
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA certificate: what a client has to trust (berthd's `ca_file`).
    pub ca_file: PathBuf,
    /// The contents of `ca_file`, e.g. for [`crate::images::Pusher::with_tls`].
    pub ca_pem: String,
    /// The server certificate (the leaf only) the registry presents.
    pub cert_file: PathBuf,
    /// The server's private key (PKCS#8).
    pub key_file: PathBuf,
    /// The CA's private key (PKCS#8), to issue client certificates with
    /// ([`TestCa::issue_client_cert`]).
    pub ca_key_file: PathBuf,
}

/// The CA's parameters: the same each time, so that an issuer can be made again from the key.
fn test_ca_params() -> rcgen::CertificateParams {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.distinguished_name.push(DnType::CommonName, "berth e2e test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params
}

impl TestCa {
    /// A fresh CA (ECDSA P-256, `CN=berth e2e test CA`) and a server certificate it signs for
    /// [`TLS_SERVER_NAMES`], written to `dir` as `ca.pem`, `server.pem` and `server-key.pem`.
    pub fn generate(dir: &Path) -> TestCa {
        use rcgen::{
            CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
        };

        let ca_params = test_ca_params();
        let ca_key = KeyPair::generate().expect("generating the test CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-signing the test CA");
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let names: Vec<String> = TLS_SERVER_NAMES.iter().map(|n| n.to_string()).collect();
        let mut server_params = CertificateParams::new(names).expect("server certificate params");
        server_params.distinguished_name.push(DnType::CommonName, "berth e2e registry");
        server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server_params.use_authority_key_identifier_extension = true;
        let server_key = KeyPair::generate().expect("generating the registry's key");
        let server_cert =
            server_params.signed_by(&server_key, &issuer).expect("signing the registry's cert");

        std::fs::create_dir_all(dir).expect("creating the TLS directory");
        let ca = TestCa {
            ca_file: dir.join("ca.pem"),
            ca_pem: ca_cert.pem(),
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server-key.pem"),
            ca_key_file: dir.join("ca-key.pem"),
        };
        std::fs::write(&ca.ca_key_file, ca_key_pem).expect("writing the CA key");
        std::fs::write(&ca.ca_file, &ca.ca_pem).expect("writing the CA certificate");
        std::fs::write(&ca.cert_file, server_cert.pem()).expect("writing the server certificate");
        std::fs::write(&ca.key_file, server_key.serialize_pem()).expect("writing the server key");
        ca
    }
}

impl TestCa {
    /// A client certificate (`CN=<name>`, clientAuth) signed by this CA, and its key, written
    /// next to the CA as `<name>.pem` and `<name>-key.pem` (PKCS#8): what berthd's
    /// `client_cert_file` and `client_key_file` name. Returns (certificate, key).
    pub fn issue_client_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        use rcgen::{
            CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
        };

        let ca_key_pem = std::fs::read_to_string(&self.ca_key_file).expect("reading the CA key");
        let ca_key = KeyPair::from_pem(&ca_key_pem).expect("the CA key");
        let issuer = Issuer::new(test_ca_params(), ca_key);
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generating the client key");
        let cert = params.signed_by(&key, &issuer).expect("signing the client certificate");
        let dir = self.ca_file.parent().expect("the CA's directory");
        let (cert_file, key_file) =
            (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
        std::fs::write(&cert_file, cert.pem()).expect("writing the client certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("writing the client key");
        (cert_file, key_file)
    }
}

impl Registry {
    /// The node's registry on [`REGISTRY_ADDR`], anonymous, storage in
    /// `node.dir()/registry/data`.
    pub fn start(node: &Node) -> Registry {
        Registry::spawn(node, REGISTRY_ADDR, None, None)
    }

    /// Another anonymous registry on `addr`, a loopback address of the node such as
    /// `127.0.0.1:5001`, with storage of its own: a mirror, say. Its config, storage and log
    /// are `node.dir()/registry-<port>/` and `node.dir()/registry-<port>.log`.
    pub fn start_on(node: &Node, addr: &str) -> Registry {
        Registry::spawn(node, addr, None, None)
    }

    /// A registry on `addr` that answers 401 with `WWW-Authenticate: Basic realm="berth-test"`
    /// unless a request carries `username:password` (htpasswd auth, bcrypt). It does so over
    /// plain HTTP: distribution 2.8 does not insist on TLS for htpasswd auth, it only warns in
    /// its docs that the password then travels in the clear.
    pub fn start_with_auth(node: &Node, addr: &str, username: &str, password: &str) -> Registry {
        Registry::spawn(node, addr, Some((username.to_owned(), password.to_owned())), None)
    }

    /// An anonymous registry on `addr` (e.g. [`TLS_REGISTRY_ADDR`]) that speaks HTTPS only,
    /// with a server certificate for [`TLS_SERVER_NAMES`] from a CA made up for it (see
    /// [`TestCa::generate`]; the files are in `node.dir()/registry-<port>/tls/`). Plain HTTP
    /// requests get Go's `400 Client sent an HTTP request to an HTTPS server.`. Push to it
    /// with [`crate::images::Pusher::with_tls`] and the returned CA's `ca_pem`.
    pub fn start_with_tls(node: &Node, addr: &str) -> (Registry, TestCa) {
        let ca = TestCa::generate(&node.dir().join(registry_name(addr)).join("tls"));
        (Registry::spawn(node, addr, None, Some((&ca, false))), ca)
    }

    /// As [`Registry::start_with_tls`], and the registry also wants a client certificate from
    /// the same CA (`http.tls.clientcas`): a TLS handshake without one is refused. Issue one
    /// with [`TestCa::issue_client_cert`]. Nothing can push to it (the pusher has no client
    /// certificate): push to a [`Registry::start_with_tls`] registry on the same `addr` first,
    /// drop it, and start this one, which serves the same storage.
    pub fn start_with_mtls(node: &Node, addr: &str) -> (Registry, TestCa) {
        let ca = TestCa::generate(&node.dir().join(registry_name(addr)).join("tls"));
        (Registry::spawn(node, addr, None, Some((&ca, true))), ca)
    }

    /// Serves HTTPS only.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    fn spawn(
        node: &Node,
        addr: &str,
        credentials: Option<(String, String)>,
        tls: Option<(&TestCa, bool)>,
    ) -> Registry {
        let name = registry_name(addr);
        let dir = node.dir().join(&name);
        std::fs::create_dir_all(&dir).expect("creating the registry directory");
        let root = dir.join("data");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            root.display()
        );
        if let Some((username, password)) = &credentials {
            let htpasswd = dir.join("htpasswd");
            std::fs::write(&htpasswd, htpasswd_line(username, password))
                .expect("writing the htpasswd file");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        if let Some((ca, client_certs)) = tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                ca.cert_file.display(),
                ca.key_file.display()
            ));
            if client_certs {
                config.push_str(&format!("    clientcas:\n      - {}\n", ca.ca_file.display()));
            }
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).expect("writing the registry config");
        let log = std::fs::File::create(node.dir().join(format!("{name}.log")))
            .expect("creating the registry log");
        let child = node
            .command("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("registry log"))
            .stderr(log)
            .spawn()
            .expect("starting docker-registry (apt-get install docker-registry)");
        let registry =
            Registry { child, addr: addr.to_owned(), root, credentials, tls: tls.is_some() };
        node.in_netns(|| registry.wait_until_serving(Duration::from_secs(20)));
        registry
    }

    /// Where the registry stores the blob `digest` (`sha256:<hex>`); it exists once the blob
    /// was pushed.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.root, digest)
    }

    /// Overwrites the stored blob with as many bytes, every one of them different (each is
    /// inverted), so that the registry still serves it with the right length, under its
    /// digest, but a client that checks finds the digest wrong. The bytes are no longer
    /// gzip/zstd/tar either; [`Registry::replace_blob`] takes bytes of the caller's choosing,
    /// e.g. [`crate::images::impostor_layer`]'s, which decompress fine.
    ///
    /// The registry keeps one copy of a blob for all its repositories: every image with this
    /// blob is now broken on this registry.
    pub fn corrupt_blob(&self, digest: &str) {
        let path = self.blob_path(digest);
        let mut bytes = std::fs::read(&path)
            .unwrap_or_else(|err| panic!("reading blob {digest} at {}: {err}", path.display()));
        bytes.iter_mut().for_each(|b| *b = !*b);
        self.replace_blob(digest, &bytes);
    }

    /// Overwrites the stored blob with `bytes`, which must be as long as the blob (the registry
    /// serves the length it recorded at the push).
    pub fn replace_blob(&self, digest: &str, bytes: &[u8]) {
        let path = self.blob_path(digest);
        let len = std::fs::metadata(&path)
            .unwrap_or_else(|err| panic!("blob {digest} at {}: {err}", path.display()))
            .len();
        assert_eq!(len, bytes.len() as u64, "a replacement for {digest} must be as long");
        std::fs::write(&path, bytes)
            .unwrap_or_else(|err| panic!("writing blob {digest} at {}: {err}", path.display()));
    }

    /// `GET path` from the registry, with the registry's credentials if it has any, as raw
    /// HTTP/1.0 (no redirects followed). Returns the status and the body. Must run in the
    /// node's network namespace: `node.in_netns(|| registry.http_get("/v2/"))`. Always plain
    /// HTTP: a TLS registry answers 400 (see [`is_plain_http_refusal`]).
    pub fn http_get(&self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let authorization = self.credentials.as_ref().map(|(u, p)| basic_authorization(u, p));
        http_get(&self.addr, path, authorization.as_deref())
    }

    /// Waits for `GET /v2/` to answer 200, as the distribution API's version check does; with
    /// the credentials if the registry has them, which checks them as well. A TLS registry
    /// is serving once it turns the plain request away as Go's HTTPS server does (this
    /// harness has no TLS client of its own; the first push checks the handshake).
    fn wait_until_serving(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.http_get("/v2/");
            let serving = match &answer {
                Ok((400, body)) if self.tls => is_plain_http_refusal(body),
                Ok((200, _)) => !self.tls,
                _ => false,
            };
            if serving {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the registry on {} did not come up in {timeout:?}: {answer:?}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// `registry` for [`REGISTRY_ADDR`] (the default registry keeps the names it always had),
/// `registry-<port>` for any other address.
fn registry_name(addr: &str) -> String {
    if addr == REGISTRY_ADDR {
        "registry".to_owned()
    } else {
        let port = addr.rsplit_once(':').map_or(addr, |(_, port)| port);
        format!("registry-{port}")
    }
}

/// Whether `body` is what Go's `net/http` answers a plain HTTP request on a TLS listener.
pub fn is_plain_http_refusal(body: &[u8]) -> bool {
    String::from_utf8_lossy(body).contains("HTTP request to an HTTPS server")
}

/// `<root>/docker/registry/v2/blobs/sha256/<first 2 hex>/<hex>/data`, the filesystem driver's
/// layout.
pub fn blob_path(root: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap_or_else(|| panic!("digest {digest:?}"));
    assert!(hex.len() > 2 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "digest {digest:?}");
    root.join("docker/registry/v2/blobs").join(algorithm).join(&hex[..2]).join(hex).join("data")
}

/// One line of an htpasswd file: `user:$2y$04$…`. The salt is fixed, so the line is too.
fn htpasswd_line(username: &str, password: &str) -> String {
    assert!(!username.contains(':') && !username.contains('\n'), "user name {username:?}");
    let hash = bcrypt::hash_with_salt(password, BCRYPT_COST, *b"berth-e2e-salt!!")
        .expect("bcrypt of the test password");
    format!("{username}:{}\n", hash.format_for_version(bcrypt::Version::TwoY))
}

/// The value of an `Authorization` header for HTTP basic auth.
pub fn basic_authorization(username: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    format!("Basic {token}")
}

/// A bare HTTP/1.0 `GET path` from `addr` (so that the body ends with the connection), with
/// an `Authorization` header if given (see [`basic_authorization`]); no redirects followed.
/// Returns the status and the body. Must run where `addr` is reachable, e.g. in
/// `node.in_netns`.
pub fn http_get(
    addr: &str,
    path: &str,
    authorization: Option<&str>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(authorization) = authorization {
        request.push_str(&format!("Authorization: {authorization}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let not_http = || std::io::Error::other("not an HTTP answer");
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(not_http)?;
    // "HTTP/1.1 200 OK"
    let status = answer
        .get(9..12)
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse().ok())
        .ok_or_else(not_http)?;
    Ok((status, answer.split_off(head_end + 4)))
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_paths_follow_the_filesystem_driver() {
        let digest = format!("sha256:ab{}", "c".repeat(62));
        assert_eq!(
            blob_path(Path::new("/r"), &digest),
            Path::new(&format!("/r/docker/registry/v2/blobs/sha256/ab/ab{}/data", "c".repeat(62)))
        );
    }

    #[test]
    fn htpasswd_lines_are_bcrypt_and_verify() {
        let line = htpasswd_line("alice", "s3cret");
        let (user, hash) = line.trim_end().split_once(':').unwrap();
        assert_eq!(user, "alice");
        assert!(hash.starts_with("$2y$04$"), "{hash}");
        assert!(bcrypt::verify("s3cret", hash).unwrap());
        assert!(!bcrypt::verify("wrong", hash).unwrap());
        assert_eq!(line, htpasswd_line("alice", "s3cret"), "reproducible");
    }

    #[test]
    fn test_ca_signs_a_server_certificate_for_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::generate(dir.path());
        assert_eq!(std::fs::read_to_string(&ca.ca_file).unwrap(), ca.ca_pem);
        assert!(ca.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"), "{}", ca.ca_pem);
        let server = std::fs::read_to_string(&ca.cert_file).unwrap();
        assert_eq!(server.matches("-----BEGIN CERTIFICATE-----").count(), 1, "the leaf only");
        assert_ne!(server, ca.ca_pem);
        let key = std::fs::read_to_string(&ca.key_file).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8: {key}");
    }

    #[test]
    fn registry_names_follow_the_port() {
        assert_eq!(registry_name(REGISTRY_ADDR), "registry");
        assert_eq!(registry_name(TLS_REGISTRY_ADDR), "registry-5443");
    }

    #[test]
    fn basic_authorization_is_base64_of_user_colon_password() {
        assert_eq!(
            basic_authorization("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }
}
