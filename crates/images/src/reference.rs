//! Image references as the kubelet and crictl write them, normalised the way docker's
//! "normalized named" references are (`busybox` is `docker.io/library/busybox:latest`), so
//! that the names berth reports match what containerd would report for the same pull.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The registry a reference without one names.
pub const DOCKER_HUB: &str = "docker.io";
/// Names for Docker Hub that users write but that mean [`DOCKER_HUB`].
const DOCKER_HUB_ALIASES: [&str; 2] = ["index.docker.io", "registry-1.docker.io"];
/// Docker Hub's single-component names live under this namespace.
const OFFICIAL_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";
/// Docker's limit on the whole name, registry included.
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// A parsed, normalised image reference. A reference written without tag or digest gets the
/// tag `latest`; with both, both are kept (the digest is what gets fetched, the tag is what
/// the user asked for and what the image is then known by).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `docker.io`, `localhost:5000`, `[::1]:5000`.
    pub registry: String,
    /// `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `docker.io/library/busybox:latest`: the repo tag ImageStatus reports.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|tag| format!("{}:{tag}", self.name()))
    }

    /// `docker.io/library/busybox@sha256:…`: the repo digest form.
    pub fn with_digest(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.name())
    }

    /// Whether the registry is on this machine. Such registries may be spoken to over plain
    /// HTTP without configuration, as docker and containerd allow: a registry started for
    /// local development or a kind cluster rarely has a certificate.
    pub fn is_loopback_registry(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(text: &str) -> Result<Reference> {
        parse(text)
            .map_err(|reason| Error::InvalidReference { reference: text.to_string(), reason })
    }
}

fn parse(text: &str) -> Result<Reference, String> {
    if text.is_empty() {
        return Err("empty reference".into());
    }
    if let Some((scheme, _)) = text.split_once("://") {
        return Err(format!("a reference has no scheme (remove {scheme:?}://)"));
    }
    let (rest, digest) = match text.split_once('@') {
        Some((rest, digest)) => {
            let digest =
                digest.parse::<Digest>().map_err(|err| format!("invalid digest: {err}"))?;
            (rest, Some(digest))
        }
        None => (text, None),
    };
    // A ':' after the last '/' starts the tag; one before it belongs to a registry port.
    let last_slash = rest.rfind('/').map_or(0, |at| at + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(at) => {
            let at = last_slash + at;
            let tag = &rest[at + 1..];
            validate_tag(tag)?;
            (&rest[..at], Some(tag.to_string()))
        }
        None => (rest, None),
    };
    if name.is_empty() {
        return Err("empty name".into());
    }
    let (registry, path) = match name.split_once('/') {
        Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
            validate_registry(first)?;
            (first, path)
        }
        _ => (DOCKER_HUB, name),
    };
    let registry = if is_docker_hub_alias(registry) { DOCKER_HUB } else { registry }.to_string();
    validate_repository(path)?;
    let repository = if registry == DOCKER_HUB && !path.contains('/') {
        format!("{OFFICIAL_NAMESPACE}/{path}")
    } else {
        path.to_string()
    };
    // Docker refuses these so that an image ID is never mistaken for a name.
    if is_hex64(name) {
        return Err("a 64-character hex string is an image ID, not a repository name".into());
    }
    let tag = match (tag, &digest) {
        (None, None) => Some(DEFAULT_TAG.to_string()),
        (tag, _) => tag,
    };
    let reference = Reference { registry, repository, tag, digest };
    let length = reference.name().len();
    if length > NAME_MAX {
        return Err(format!("name is {length} characters long, more than {NAME_MAX}"));
    }
    Ok(reference)
}

/// `index.docker.io` and `registry-1.docker.io`, which mean `docker.io`.
pub(crate) fn is_docker_hub_alias(registry: &str) -> bool {
    DOCKER_HUB_ALIASES.contains(&registry)
}

fn is_hex64(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let valid = match tag.as_bytes() {
        [] => false,
        [first, rest @ ..] => {
            word(*first)
                && tag.len() <= TAG_MAX
                && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-')
        }
    };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {tag:?} (want up to {TAG_MAX} letters, digits, '_', '.' or '-', not starting with '.' or '-')"
        ))
    }
}

/// A repository path: `/`-separated components of lower-case letters and digits, joined
/// inside a component by `.`, `_`, `__` or any run of `-`.
pub(crate) fn validate_repository(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty repository".into());
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("uppercase letters in repository {path:?}"));
    }
    for component in path.split('/') {
        if component.is_empty() {
            return Err(format!("empty path component in repository {path:?}"));
        }
        if !valid_path_component(component) {
            return Err(format!(
                "invalid repository path component {component:?} (want lower-case letters and digits, joined by '.', '_', '__' or '-')"
            ));
        }
    }
    Ok(())
}

fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Split into runs of separators between alphanumerics; each run must be a valid separator.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let run = &component[start..i];
        let valid = matches!(run, "." | "_" | "__") || run.bytes().all(|b| b == b'-');
        if !valid {
            return false;
        }
    }
    true
}

/// A registry as written in a reference: `host[:port]`, where host is a DNS name, an IPv4
/// address or a bracketed IPv6 address.
pub(crate) fn validate_registry(registry: &str) -> Result<(), String> {
    let invalid = |why: &str| Err(format!("invalid registry {registry:?}: {why}"));
    let (host, port) = match split_host_port(registry) {
        Some(parts) => parts,
        None => return invalid("want host[:port]"),
    };
    if let Some(port) = port {
        if port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err()
        {
            return invalid("invalid port");
        }
    }
    if let Some(inner) = host.strip_prefix('[') {
        let Some(address) = inner.strip_suffix(']') else {
            return invalid("unclosed '['");
        };
        return match address.parse::<Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => invalid("invalid IPv6 address"),
        };
    }
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    if host.is_empty() || !host.split('.').all(component_ok) {
        return invalid("invalid host name");
    }
    Ok(())
}

/// Splits `host[:port]`, keeping the brackets of an IPv6 host. None when a bracketed host is
/// followed by something other than a port.
fn split_host_port(registry: &str) -> Option<(&str, Option<&str>)> {
    if registry.starts_with('[') {
        let end = registry.find(']')? + 1;
        return match &registry[end..] {
            "" => Some((&registry[..end], None)),
            rest => rest.strip_prefix(':').map(|port| (&registry[..end], Some(port))),
        };
    }
    Some(match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    })
}

/// `localhost[:port]`, `127.0.0.0/8[:port]`, `[::1][:port]`.
pub(crate) fn is_loopback_host(registry: &str) -> bool {
    let Some((host, _)) = split_host_port(registry) else {
        return false;
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    }
    host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse_ok(text: &str) -> Reference {
        text.parse().unwrap_or_else(|err| panic!("{text:?} should parse: {err}"))
    }

    #[test]
    fn valid_references_normalise() {
        let digest = format!("sha256:{HEX}");
        let cases: Vec<(String, &str, &str, Option<&str>, bool)> = vec![
            // (input, registry, repository, tag, has digest)
            ("busybox".into(), "docker.io", "library/busybox", Some("latest"), false),
            ("busybox:1.36".into(), "docker.io", "library/busybox", Some("1.36"), false),
            ("user/img".into(), "docker.io", "user/img", Some("latest"), false),
            ("user/img:v1".into(), "docker.io", "user/img", Some("v1"), false),
            ("docker.io/busybox".into(), "docker.io", "library/busybox", Some("latest"), false),
            (
                "docker.io/library/busybox".into(),
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
            ),
            (
                "index.docker.io/busybox".into(),
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
            ),
            ("registry-1.docker.io/u/x:t".into(), "docker.io", "u/x", Some("t"), false),
            ("quay.io/coreos/etcd:v3.5".into(), "quay.io", "coreos/etcd", Some("v3.5"), false),
            ("registry.k8s.io/pause:3.10".into(), "registry.k8s.io", "pause", Some("3.10"), false),
            ("localhost/img".into(), "localhost", "img", Some("latest"), false),
            ("localhost:5000/img".into(), "localhost:5000", "img", Some("latest"), false),
            ("localhost:5000/a/b/c:tag".into(), "localhost:5000", "a/b/c", Some("tag"), false),
            ("myhost:5000/img".into(), "myhost:5000", "img", Some("latest"), false),
            ("127.0.0.1:5000/x".into(), "127.0.0.1:5000", "x", Some("latest"), false),
            ("[::1]:5000/x".into(), "[::1]:5000", "x", Some("latest"), false),
            ("[::1]/x:t".into(), "[::1]", "x", Some("t"), false),
            ("Example.COM/x".into(), "Example.COM", "x", Some("latest"), false),
            // Docker reads a lone "localhost:5000" as image "localhost", tag "5000".
            ("localhost:5000".into(), "docker.io", "library/localhost", Some("5000"), false),
            ("a-b.c-d:5000/g".into(), "a-b.c-d:5000", "g", Some("latest"), false),
            ("x/a.b-c_d__e---f".into(), "docker.io", "x/a.b-c_d__e---f", Some("latest"), false),
            ("img:_Tag.9-x".into(), "docker.io", "library/img", Some("_Tag.9-x"), false),
            (format!("busybox@{digest}"), "docker.io", "library/busybox", None, true),
            (format!("busybox:1.36@{digest}"), "docker.io", "library/busybox", Some("1.36"), true),
            (format!("localhost:5000/x@{digest}"), "localhost:5000", "x", None, true),
        ];
        for (input, registry, repository, tag, has_digest) in cases {
            let r = parse_ok(&input);
            assert_eq!(r.registry, registry, "{input}");
            assert_eq!(r.repository, repository, "{input}");
            assert_eq!(r.tag.as_deref(), tag, "{input}");
            assert_eq!(r.digest.is_some(), has_digest, "{input}");
        }
        let longest_tag = "t".repeat(128);
        assert_eq!(parse_ok(&format!("img:{longest_tag}")).tag, Some(longest_tag));
    }

    #[test]
    fn display_and_forms() {
        let digest: Digest = format!("sha256:{HEX}").parse().unwrap();
        let r = parse_ok("busybox");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.name(), "docker.io/library/busybox");
        assert_eq!(r.tagged().as_deref(), Some("docker.io/library/busybox:latest"));
        assert_eq!(r.with_digest(&digest), format!("docker.io/library/busybox@{digest}"));

        let both = parse_ok(&format!("quay.io/a/b:v1@{digest}"));
        assert_eq!(both.to_string(), format!("quay.io/a/b:v1@{digest}"));
        assert_eq!(both.tagged().as_deref(), Some("quay.io/a/b:v1"));

        let pinned = parse_ok(&format!("[::1]:5000/x@{digest}"));
        assert_eq!(pinned.to_string(), format!("[::1]:5000/x@{digest}"));
        assert_eq!(pinned.tagged(), None);

        // The normalised form parses back to itself.
        for text in ["busybox", "localhost:5000/a/b:c", "[::1]:5000/x", "index.docker.io/u/x"] {
            let once = parse_ok(text);
            assert_eq!(parse_ok(&once.to_string()), once, "{text}");
        }
    }

    #[test]
    fn invalid_references_say_why() {
        let long_name = format!("r.io/{}", "a".repeat(251));
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "empty reference"),
            ("Busybox".into(), "uppercase letters in repository"),
            ("docker.io/Library/busybox".into(), "uppercase letters in repository"),
            ("busybox:".into(), "invalid tag"),
            ("busybox:.x".into(), "invalid tag"),
            ("busybox:-x".into(), "invalid tag"),
            ("busybox:a/b".into(), "invalid port"),
            ("busybox:a+b".into(), "invalid tag"),
            (format!("busybox:{}", "t".repeat(129)), "invalid tag"),
            ("busybox@".into(), "invalid digest"),
            ("busybox@sha256:abc".into(), "invalid digest"),
            (format!("busybox@sha512:{HEX}"), "invalid digest"),
            (format!("busybox@sha256:{}", HEX.to_uppercase()), "invalid digest"),
            (format!("busybox@sha256:{HEX}@sha256:{HEX}"), "invalid digest"),
            (":latest".into(), "empty name"),
            ("/busybox".into(), "empty path component"),
            ("busybox/".into(), "empty path component"),
            ("a//b".into(), "empty path component"),
            ("localhost:5000/".into(), "empty repository"),
            ("-busybox".into(), "invalid repository path component"),
            ("busybox-".into(), "invalid repository path component"),
            ("a..b".into(), "invalid repository path component"),
            ("a___b".into(), "invalid repository path component"),
            ("a._b".into(), "invalid repository path component"),
            ("bu sybox".into(), "invalid repository path component"),
            ("localhost:port/x".into(), "invalid port"),
            ("localhost:99999/x".into(), "invalid port"),
            ("localhost:/x".into(), "invalid port"),
            ("-bad.io/x".into(), "invalid host name"),
            ("bad..io/x".into(), "invalid host name"),
            ("bad_host.io/x".into(), "invalid host name"),
            ("[::1/x".into(), "invalid registry"),
            ("[zz::1]:5000/x".into(), "invalid IPv6 address"),
            ("[::1]x/y".into(), "want host[:port]"),
            ("https://docker.io/busybox".into(), "no scheme"),
            (HEX.into(), "image ID"),
            (long_name, "more than 255"),
        ];
        for (input, reason) in cases {
            match input.parse::<Reference>() {
                Ok(r) => panic!("{input:?} should not parse, got {r}"),
                Err(Error::InvalidReference { reference, reason: got }) => {
                    assert_eq!(reference, input);
                    assert!(got.contains(reason), "{input:?}: want {reason:?} in {got:?}");
                }
                Err(other) => panic!("{input:?}: wrong error {other}"),
            }
        }
    }

    #[test]
    fn name_length_limit_counts_the_registry() {
        // 255 exactly is fine; docker.io/library/ counts against the limit.
        let fits = format!("r.io/{}", "a".repeat(250));
        assert_eq!(parse_ok(&fits).name().len(), 255);
        let too_long = "a".repeat(255 - "docker.io/library/".len() + 1);
        assert!(too_long.parse::<Reference>().is_err());
    }

    #[test]
    fn hex_names_with_a_namespace_are_names() {
        parse_ok(&format!("user/{HEX}"));
        parse_ok(&format!("localhost/{HEX}"));
    }

    #[test]
    fn loopback_registries() {
        let cases = [
            ("localhost/x", true),
            ("localhost:5000/x", true),
            ("127.0.0.1/x", true),
            ("127.0.0.1:5000/x", true),
            ("127.1.2.3:80/x", true),
            ("[::1]:5000/x", true),
            ("[::1]/x", true),
            ("[::2]:5000/x", false),
            ("busybox", false),
            ("localhost.example.com/x", false),
            ("10.0.0.1:5000/x", false),
            ("128.0.0.1:5000/x", false),
        ];
        for (text, loopback) in cases {
            assert_eq!(parse_ok(text).is_loopback_registry(), loopback, "{text}");
        }
    }

    #[test]
    fn loopback_host_strings() {
        assert!(is_loopback_host("127.0.0.1"));
        assert!(is_loopback_host("LOCALHOST:1"));
        assert!(!is_loopback_host("[::1"));
        assert!(!is_loopback_host(""));
    }
}
