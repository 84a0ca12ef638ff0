//! The files a pod's containers get bind-mounted at /etc/hostname, /etc/hosts and
//! /etc/resolv.conf, kept in the pod's directory so they survive a daemon restart.

use std::path::Path;

use crate::error::{Error, Result};
use crate::pod::types::DnsConfig;

const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
const HOST_HOSTS: &str = "/etc/hosts";

/// The hostname a pod's UTS namespace gets: the config's, or the node's when the config has
/// none (as containerd does; crictl and critest send none). Only what sethostname(2) refuses is
/// refused: the kernel takes any bytes up to 64, DNS rules or not.
pub fn hostname(configured: &str) -> Result<String> {
    let name = if configured.is_empty() {
        nix::unistd::gethostname()
            .map_err(|err| Error::Internal(format!("reading the node's hostname: {err}")))?
            .to_string_lossy()
            .into_owned()
    } else {
        configured.to_string()
    };
    validate_hostname(&name)?;
    Ok(name)
}

/// The kernel's limit on a UTS name (`__NEW_UTS_LEN`).
const MAX_HOSTNAME_BYTES: usize = 64;

fn validate_hostname(name: &str) -> Result<()> {
    if name.len() > MAX_HOSTNAME_BYTES {
        return Err(Error::InvalidArgument(format!(
            "hostname {name:?} is {} bytes long; the kernel takes at most {MAX_HOSTNAME_BYTES}",
            name.len()
        )));
    }
    // A NUL would cut the name short in every file and syscall that carries it.
    if name.contains('\0') {
        return Err(Error::InvalidArgument(format!("hostname {name:?} contains a NUL byte")));
    }
    Ok(())
}

/// resolv.conf from the pod's DNS config; the node's own when the config says nothing, as
/// containerd does.
pub fn resolv_conf(dns: Option<&DnsConfig>) -> Result<String> {
    let dns = match dns {
        Some(dns)
            if !(dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty()) =>
        {
            dns
        }
        _ => {
            return match std::fs::read_to_string(HOST_RESOLV_CONF) {
                Ok(text) => Ok(text),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(err) => Err(Error::io("reading", HOST_RESOLV_CONF)(err)),
            };
        }
    };
    for value in dns.servers.iter().chain(&dns.searches).chain(&dns.options) {
        if value.contains(['\n', '\r']) {
            return Err(Error::InvalidArgument(format!(
                "DNS config value {value:?} has a line break"
            )));
        }
    }
    let mut text = String::new();
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        server.parse::<std::net::IpAddr>().map_err(|_| {
            Error::InvalidArgument(format!("DNS server {server:?} is not an IP address"))
        })?;
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(text)
}

/// /etc/hosts: the node's for a host-network pod; otherwise the usual loopback entries and
/// the pod's own address under its hostname.
pub fn hosts(host_network: bool, hostname: &str, ips: &[String]) -> Result<String> {
    if host_network {
        return match std::fs::read_to_string(HOST_HOSTS) {
            Ok(text) => Ok(text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(err) => Err(Error::io("reading", HOST_HOSTS)(err)),
        };
    }
    let mut text = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for ip in ips {
        text.push_str(&format!("{ip}\t{hostname}\n"));
    }
    Ok(text)
}

/// Writes a pod file. 0644, as containerd makes them: containers bind-mount them and a
/// container running as any user must read its own resolv.conf and hosts.
pub fn write(dir: &Path, name: &str, content: &str) -> Result<()> {
    berth_fsutil::atomic_write_mode(&dir.join(name), content.as_bytes(), 0o644)
        .map_err(|err| Error::Internal(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_files_are_readable_by_every_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "resolv.conf", "nameserver 10.0.0.10\n").unwrap();
        let mode = std::fs::metadata(dir.path().join("resolv.conf")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn resolv_conf_from_the_config() {
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns)).unwrap(),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        let bad = DnsConfig { servers: vec!["not-an-ip".into()], ..Default::default() };
        assert!(resolv_conf(Some(&bad)).is_err());
        let injected =
            DnsConfig { options: vec!["ndots:1\nnameserver 6.6.6.6".into()], ..Default::default() };
        assert!(resolv_conf(Some(&injected)).is_err());
        // No config: the node's file, whatever it holds.
        assert!(resolv_conf(None).is_ok());
    }

    #[test]
    fn hostnames() {
        assert_eq!(hostname("web-0").unwrap(), "web-0");
        // What the kernel takes is taken, DNS name or not (critest's pod names are such).
        let long = format!("create-PodSandbox-for-container-{}", "A".repeat(32));
        assert_eq!(long.len(), 64);
        assert_eq!(hostname(&long).unwrap(), long);
        assert_eq!(hostname("bad_name").unwrap(), "bad_name");
        assert!(hostname(&"a".repeat(65)).is_err());
        assert!(hostname("a\0b").is_err());
        let node = nix::unistd::gethostname().unwrap().to_string_lossy().into_owned();
        assert_eq!(hostname("").unwrap(), node);
    }

    #[test]
    fn hosts_has_the_pod_address() {
        let text = hosts(false, "web-0", &["10.88.0.5".into()]).unwrap();
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(text.ends_with("10.88.0.5\tweb-0\n"));
    }
}
