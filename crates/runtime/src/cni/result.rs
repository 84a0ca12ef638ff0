//! CNI results: the JSON a plugin prints on ADD, in the formats of spec 1.0 (and 1.1), 0.4.0
//! and 0.3.x, which share `interfaces`, `ips`, `routes` and `dns`. The 0.1/0.2 format (`ip4`,
//! `ip6`) is not supported.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

/// A parsed result. Fields berth has no use for (e.g. `mtu`, `socketPath`) are only in the raw
/// JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The netns path for interfaces inside the container; empty for host-side ones.
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`], as the plugin gave it (it may be out of range).
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub dst_prefix_len: u8,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: String,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawResult {
    interfaces: Option<Vec<RawInterface>>,
    ips: Option<Vec<RawIp>>,
    routes: Option<Vec<RawRoute>>,
    dns: Option<RawDns>,
}

#[derive(Deserialize)]
struct RawInterface {
    name: Option<String>,
    mac: Option<String>,
    sandbox: Option<String>,
}

#[derive(Deserialize)]
struct RawIp {
    address: String,
    gateway: Option<String>,
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct RawRoute {
    dst: String,
    gw: Option<String>,
}

#[derive(Deserialize)]
struct RawDns {
    nameservers: Option<Vec<String>>,
    domain: Option<String>,
    search: Option<Vec<String>>,
    options: Option<Vec<String>>,
}

impl CniResult {
    /// Parses a result; the error says what is wrong with it.
    pub fn parse(value: &Value) -> Result<CniResult, String> {
        let version = value.get("cniVersion").and_then(Value::as_str).unwrap_or_default();
        if !is_supported_result_version(version) {
            return Err(format!("unsupported result version {version:?}"));
        }
        let raw = RawResult::deserialize(value).map_err(|e| format!("invalid result: {e}"))?;
        let interfaces = raw
            .interfaces
            .unwrap_or_default()
            .into_iter()
            .map(|i| Interface {
                name: i.name.unwrap_or_default(),
                mac: i.mac.unwrap_or_default(),
                sandbox: i.sandbox.unwrap_or_default(),
            })
            .collect();
        let mut ips = Vec::new();
        for (n, ip) in raw.ips.unwrap_or_default().into_iter().enumerate() {
            let (address, prefix_len) =
                parse_cidr(&ip.address).map_err(|e| format!("ips[{n}].address: {e}"))?;
            let gateway = match ip.gateway.as_deref() {
                None | Some("") => None,
                Some(gw) => Some(gw.parse().map_err(|_| format!("ips[{n}].gateway {gw:?}"))?),
            };
            ips.push(IpConfig { address, prefix_len, gateway, interface: ip.interface });
        }
        let mut routes = Vec::new();
        for (n, route) in raw.routes.unwrap_or_default().into_iter().enumerate() {
            let (dst, dst_prefix_len) =
                parse_cidr(&route.dst).map_err(|e| format!("routes[{n}].dst: {e}"))?;
            let gw = match route.gw.as_deref() {
                None | Some("") => None,
                Some(gw) => Some(gw.parse().map_err(|_| format!("routes[{n}].gw {gw:?}"))?),
            };
            routes.push(Route { dst, dst_prefix_len, gw });
        }
        let dns = raw
            .dns
            .map(|d| Dns {
                nameservers: d.nameservers.unwrap_or_default(),
                domain: d.domain.unwrap_or_default(),
                search: d.search.unwrap_or_default(),
                options: d.options.unwrap_or_default(),
            })
            .unwrap_or_default();
        Ok(CniResult { cni_version: version.to_string(), interfaces, ips, routes, dns })
    }

    /// The pod's addresses on `ifname`, IPv4 ones first, each family in result order; so the
    /// first is the primary IP, as containerd chooses it. The interface is the one of that name
    /// inside the sandbox (or of that name at all, if none says it is in the sandbox). When no
    /// address is tied to it, the addresses tied to no interface are used.
    pub fn pod_ips(&self, ifname: &str) -> Vec<IpAddr> {
        let named = |sandboxed: bool| {
            self.interfaces
                .iter()
                .enumerate()
                .filter(|(_, i)| i.name == ifname && (!sandboxed || !i.sandbox.is_empty()))
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        };
        let mut wanted = named(true);
        if wanted.is_empty() {
            wanted = named(false);
        }
        let mut chosen: Vec<IpAddr> = self
            .ips
            .iter()
            .filter(|ip| ip.interface.is_some_and(|n| wanted.contains(&n)))
            .map(|ip| ip.address)
            .collect();
        if chosen.is_empty() {
            chosen =
                self.ips.iter().filter(|ip| ip.interface.is_none()).map(|ip| ip.address).collect();
        }
        // A stable sort keeps each family in order.
        chosen.sort_by_key(|ip| !ip.is_ipv4());
        chosen
    }
}

/// `a.b.c` (or `a.b`, `a`) as numbers; `None` for anything else.
pub(crate) fn parse_version(version: &str) -> Option<(u64, u64, u64)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

/// Whether results of `version` have the 0.3+ layout this module reads.
fn is_supported_result_version(version: &str) -> bool {
    matches!(parse_version(version), Some((0, 3.., _)) | Some((1, _, _)))
}

/// Rewrites `result` into the format of `to_version`, as libcni does before handing a result
/// on as `prevResult`: between 0.3.x/0.4.0 and 1.x only `ips[].version` differs. Results
/// already in that version, or of versions this module does not know, are left alone.
pub(crate) fn convert(result: &mut Value, to_version: &str) -> Result<(), String> {
    let from = result.get("cniVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    if from == to_version || !is_supported_result_version(to_version) {
        return Ok(());
    }
    if !is_supported_result_version(&from) {
        return Err(format!("unsupported result version {from:?}"));
    }
    let to_v1 = matches!(parse_version(to_version), Some((1, _, _)));
    let Some(object) = result.as_object_mut() else {
        return Err("result is not a JSON object".to_string());
    };
    object.insert("cniVersion".to_string(), Value::String(to_version.to_string()));
    if let Some(Value::Array(ips)) = object.get_mut("ips") {
        for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
            if to_v1 {
                ip.remove("version");
            } else if !ip.contains_key("version") {
                let address = ip.get("address").and_then(Value::as_str).unwrap_or_default();
                let family = match parse_cidr(address) {
                    Ok((IpAddr::V4(_), _)) => "4",
                    Ok((IpAddr::V6(_), _)) => "6",
                    Err(e) => return Err(format!("ips[].address: {e}")),
                };
                ip.insert("version".to_string(), Value::String(family.to_string()));
            }
        }
    }
    Ok(())
}

/// `10.1.0.5/24` into the address and the prefix length.
fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let invalid = || format!("{text:?} is not an address/prefix-length");
    let (address, prefix) = text.split_once('/').ok_or_else(invalid)?;
    let address: IpAddr = address.parse().map_err(|_| invalid())?;
    let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(invalid());
    }
    Ok((address, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v1_result() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:02"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/x"},
            ],
            "ips": [
                {"address": "10.88.0.1/16", "interface": 0},
                {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
                {"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2},
                {"address": "10.88.0.6/16", "interface": 2},
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}, {"dst": "::/0"}],
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
        })
    }

    #[test]
    fn parses_1_0() {
        let result = CniResult::parse(&v1_result()).unwrap();
        assert_eq!(result.cni_version, "1.0.0");
        assert_eq!(result.interfaces.len(), 3);
        assert_eq!(result.interfaces[2].sandbox, "/run/netns/x");
        assert_eq!(
            result.ips[2],
            IpConfig {
                address: "10.88.0.5".parse().unwrap(),
                prefix_len: 16,
                gateway: Some("10.88.0.1".parse().unwrap()),
                interface: Some(2),
            }
        );
        assert_eq!(result.routes[0].dst_prefix_len, 0);
        assert_eq!(result.routes[1].gw, None);
        assert_eq!(result.dns.nameservers, ["10.96.0.10"]);
        assert_eq!(result.dns.domain, "");
        // IPv4 of eth0 first, then IPv6; the bridge's address is not the pod's.
        let ips: Vec<String> = result.pod_ips("eth0").iter().map(|ip| ip.to_string()).collect();
        assert_eq!(ips, ["10.88.0.5", "10.88.0.6", "fd00::5"]);
        assert!(result.pod_ips("eth1").is_empty());
    }

    #[test]
    fn parses_0_4_and_0_3() {
        for version in ["0.4.0", "0.3.1", "0.3.0"] {
            let value = json!({
                "cniVersion": version,
                "interfaces": [{"name": "eth0", "sandbox": "/proc/1/ns/net"}],
                "ips": [
                    {"version": "6", "address": "2001:db8::2/64", "interface": 0},
                    {"version": "4", "address": "192.0.2.2/24", "gateway": "192.0.2.1",
                     "interface": 0},
                ],
                "dns": {},
            });
            let result = CniResult::parse(&value).unwrap();
            let ips: Vec<String> = result.pod_ips("eth0").iter().map(|ip| ip.to_string()).collect();
            assert_eq!(ips, ["192.0.2.2", "2001:db8::2"], "{version}");
        }
    }

    #[test]
    fn addresses_without_interface() {
        let value = json!({
            "cniVersion": "1.0.0",
            "ips": [{"address": "fd00::7/64"}, {"address": "10.0.0.7/8"}],
        });
        let result = CniResult::parse(&value).unwrap();
        let ips: Vec<String> = result.pod_ips("eth0").iter().map(|ip| ip.to_string()).collect();
        assert_eq!(ips, ["10.0.0.7", "fd00::7"]);
        // A sandbox-less interface of that name counts when there is no other.
        let value = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0"}],
            "ips": [{"address": "10.0.0.8/8", "interface": 0}, {"address": "10.0.0.9/8"},
                    {"address": "10.0.0.10/8", "interface": 7}],
        });
        let ips = CniResult::parse(&value).unwrap().pod_ips("eth0");
        assert_eq!(ips, ["10.0.0.8".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn rejects_bad_results() {
        let cases = [
            (json!({"ip4": {"ip": "10.0.0.1/8"}}), "unsupported result version \"\""),
            (json!({"cniVersion": "0.2.0", "ip4": {}}), "unsupported result version"),
            (json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1"}]}), "ips[0].address"),
            (json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/33"}]}), "ips[0]"),
            (
                json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/8", "gateway": "x"}]}),
                "ips[0].gateway",
            ),
            (json!({"cniVersion": "1.0.0", "routes": [{"gw": "10.0.0.1"}]}), "invalid result"),
            (json!({"cniVersion": "1.0.0", "interfaces": 3}), "invalid result"),
        ];
        for (value, want) in cases {
            let err = CniResult::parse(&value).unwrap_err();
            assert!(err.contains(want), "{value}: {err}");
        }
    }

    #[test]
    fn converts_between_0_4_and_1_0() {
        let mut result = v1_result();
        convert(&mut result, "0.4.0").unwrap();
        assert_eq!(result["cniVersion"], "0.4.0");
        assert_eq!(result["ips"][0]["version"], "4");
        assert_eq!(result["ips"][1]["version"], "6");
        CniResult::parse(&result).unwrap();
        convert(&mut result, "1.0.0").unwrap();
        assert_eq!(result, v1_result());
        // Unknown targets are left alone; unknown sources are errors.
        convert(&mut result, "").unwrap();
        assert_eq!(result, v1_result());
        let mut old = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.1/8"}});
        assert!(convert(&mut old, "1.0.0").is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("1.0.0"), Some((1, 0, 0)));
        assert_eq!(parse_version("0.4"), Some((0, 4, 0)));
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("1.0.0.0"), None);
        assert_eq!(parse_version("1.x"), None);
    }
}
