//! What a pod asks of its network (ports, bandwidth, DNS, the netns) and what it gets; the
//! bandwidth annotations parsed as Kubernetes quantities.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::*;
use crate::error::{Error, Result};

/// What ADD needs to know about the pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodNetworkRequest {
    /// The pod sandbox id (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The network namespace (`CNI_NETNS`), a bind-mounted netns file.
    pub netns: PathBuf,
    /// The interface to create in it (`CNI_IFNAME`), normally `eth0`.
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// The `portMappings` capability; those without a host port are left out, as containerd does.
    pub port_mappings: Vec<PortMapping>,
    /// The `bandwidth` capability; see [`Bandwidth::from_annotations`].
    pub bandwidth: Option<Bandwidth>,
    /// The node's pod CIDR from UpdateRuntimeConfig, given as the `ipRanges` capability.
    pub pod_cidr: Option<String>,
}

/// One entry of the `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: i32,
    pub container_port: i32,
    pub protocol: Protocol,
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// The `bandwidth` capability, in bits per second (rates) and bits (bursts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ingress_rate: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ingress_burst: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub egress_rate: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub egress_burst: u64,
}

pub(super) fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Bandwidth {
    /// The limits of the `kubernetes.io/ingress-bandwidth` and `kubernetes.io/egress-bandwidth`
    /// annotations, as kubelet parses them (quantities such as `10M` or `1Gi`, between 1k and
    /// 1P), with containerd's burst of 2^32-1 bits; `None` when neither is set.
    pub fn from_annotations(annotations: &HashMap<String, String>) -> Result<Option<Bandwidth>> {
        let parse = |key: &str| -> Result<Option<u64>> {
            match annotations.get(key) {
                None => Ok(None),
                Some(text) => parse_bandwidth(text)
                    .map(Some)
                    .map_err(|why| Error::InvalidArgument(format!("{key} {text:?}: {why}"))),
            }
        };
        let ingress = parse(INGRESS_BANDWIDTH_ANNOTATION)?;
        let egress = parse(EGRESS_BANDWIDTH_ANNOTATION)?;
        if ingress.is_none() && egress.is_none() {
            return Ok(None);
        }
        let burst = |rate: Option<u64>| if rate.is_some() { u64::from(u32::MAX) } else { 0 };
        Ok(Some(Bandwidth {
            ingress_rate: ingress.unwrap_or(0),
            ingress_burst: burst(ingress),
            egress_rate: egress.unwrap_or(0),
            egress_burst: burst(egress),
        }))
    }
}

/// A bandwidth quantity in bits per second, within kubelet's bounds.
pub fn parse_bandwidth(text: &str) -> std::result::Result<u64, String> {
    const MIN: i128 = 1_000;
    const MAX: i128 = 1_000_000_000_000_000;
    let value = parse_quantity(text)?;
    if value < MIN {
        Err("resource is unreasonably small (< 1kbit)".to_string())
    } else if value > MAX {
        Err("resource is unreasonably large (> 1Pbit)".to_string())
    } else {
        Ok(value as u64)
    }
}

/// A Kubernetes resource quantity (`<sign><number><suffix>`, the suffix binary SI such as `Ki`,
/// decimal SI such as `k`, `M` or `m`, or an exponent such as `e3`), rounded up to an integer
/// as `Quantity.Value()` does. Values beyond 10^30 are refused as out of range.
pub(super) fn parse_quantity(text: &str) -> std::result::Result<i128, String> {
    let invalid = || {
        "quantities must match the regular expression \
         '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
            .to_string()
    };
    let out_of_range = || "quantity out of range".to_string();
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(invalid());
    }
    // value = mantissa * 10^scale * 2^binary
    let fraction = fraction.trim_end_matches('0');
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(out_of_range());
    }
    let mantissa: u128 =
        if digits.is_empty() { 0 } else { digits.parse().map_err(|_| invalid())? };
    let mut scale = -(fraction.len() as i32);
    let mut binary = 0;
    match suffix {
        "" => {}
        "n" => scale -= 9,
        "u" => scale -= 6,
        "m" => scale -= 3,
        "k" => scale += 3,
        "M" => scale += 6,
        "G" => scale += 9,
        "T" => scale += 12,
        "P" => scale += 15,
        "E" => scale += 18,
        "Ki" => binary = 10,
        "Mi" => binary = 20,
        "Gi" => binary = 30,
        "Ti" => binary = 40,
        "Pi" => binary = 50,
        "Ei" => binary = 60,
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E']).ok_or_else(invalid)?;
            let unsigned = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let exponent: i32 = exponent.parse().map_err(|_| out_of_range())?;
            scale = scale.checked_add(exponent).ok_or_else(out_of_range)?;
        }
    }
    if mantissa == 0 {
        return Ok(0);
    }
    let numerator = mantissa.checked_mul(1 << binary).ok_or_else(out_of_range)?;
    let value = if scale >= 0 {
        let factor = 10u128.checked_pow(scale.unsigned_abs()).ok_or_else(out_of_range)?;
        numerator.checked_mul(factor).ok_or_else(out_of_range)?
    } else {
        match 10u128.checked_pow(scale.unsigned_abs()) {
            // Rounded up, as Value() does.
            Some(denominator) => numerator.div_ceil(denominator),
            // Beyond 10^38, while the numerator is below that: less than 1, so 1.
            None => 1,
        }
    };
    if value > 10u128.pow(30) {
        return Err(out_of_range());
    }
    // Fits: at most 10^30.
    let value = value as i128;
    Ok(if negative { -value } else { value })
}

/// The outcome of ADD.
#[derive(Debug, Clone, PartialEq)]
pub struct PodNetworkResult {
    /// The pod's addresses on its interface, the primary (first IPv4, else IPv6) first.
    pub ips: Vec<IpAddr>,
    /// The result of the last plugin, in the list's CNI version.
    pub raw: Value,
}
