use super::request::parse_quantity;
use std::collections::HashMap;
use std::net::IpAddr;

use super::*;
use serde_json::json;
use std::fs;
use std::os::unix::fs::PermissionsExt;

/// A configuration directory, plugin directory and cache of their own, with fake plugins
/// that log each call (`<type> <command>` in `log/calls`, stdin and `CNI_*` environment
/// in `log/<n>.stdin` and `log/<n>.env`).
struct Harness {
    tmp: tempfile::TempDir,
    cni: Cni,
}

impl Harness {
    fn new() -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        for dir in ["net.d", "bin", "log"] {
            fs::create_dir(tmp.path().join(dir)).unwrap();
        }
        fs::write(tmp.path().join("log/calls"), "").unwrap();
        let cni = Cni::new(
            tmp.path().join("net.d"),
            vec![tmp.path().join("absent-bin"), tmp.path().join("bin")],
            tmp.path().join("cache"),
        );
        Harness { tmp, cni }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn conflist(&self, list: &Value) -> String {
        let text = serde_json::to_string_pretty(list).unwrap();
        fs::write(self.path("net.d/10-test.conflist"), &text).unwrap();
        text
    }

    /// A plugin that logs its call, then runs `body`.
    fn plugin(&self, name: &str, body: &str) {
        let log = self.path("log");
        let log = log.display();
        let script = format!(
            "#!/bin/sh\n\
                 n=$(( $(wc -l < {log}/calls) + 1 ))\n\
                 echo \"{name} $CNI_COMMAND\" >> {log}/calls\n\
                 cat > {log}/$n.stdin\n\
                 env | grep '^CNI_' > {log}/$n.env\n\
                 {body}\n"
        );
        let path = self.path("bin").join(name);
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A plugin printing `result` on ADD and nothing otherwise.
    fn plugin_with_result(&self, name: &str, result: &Value) {
        self.plugin(name, &format!("[ \"$CNI_COMMAND\" = ADD ] && echo '{result}'\nexit 0"));
    }

    fn calls(&self) -> Vec<String> {
        let calls = fs::read_to_string(self.path("log/calls")).unwrap();
        calls.lines().map(str::to_string).collect()
    }

    /// The stdin of call `n` (from 1).
    fn stdin(&self, n: usize) -> Value {
        serde_json::from_slice(&fs::read(self.path(&format!("log/{n}.stdin"))).unwrap()).unwrap()
    }

    fn env(&self, n: usize) -> HashMap<String, String> {
        let env = fs::read_to_string(self.path(&format!("log/{n}.env"))).unwrap();
        env.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cache_file(&self, id: &str) -> PathBuf {
        self.path("cache").join(format!("{id}.json"))
    }
}

fn result_a() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/fake"}],
        "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0}],
    })
}

fn result_b() -> Value {
    let mut result = result_a();
    result["dns"] = json!({"nameservers": ["10.1.0.53"]});
    result
}

/// A 0.4.0 result, which a 1.0.0 list gets converted.
fn result_c() -> Value {
    json!({
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/run/netns/fake"}],
        "ips": [
            {"version": "4", "address": "10.1.0.1/24", "interface": 0},
            {"version": "6", "address": "fd00::7/64", "interface": 1},
            {"version": "4", "address": "10.1.0.7/24", "interface": 1},
        ],
    })
}

fn three_plugins() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "test-net",
        "plugins": [
            {"type": "fake-a", "foo": "bar",
             "capabilities": {"portMappings": true, "ipRanges": true}},
            {"type": "fake-b", "capabilities": {"bandwidth": true, "portMappings": false}},
            {"type": "fake-c"},
        ],
    })
}

fn request() -> PodNetworkRequest {
    PodNetworkRequest {
        container_id: "sandbox1".to_string(),
        netns: PathBuf::from("/run/netns/fake"),
        ifname: "eth0".to_string(),
        pod_namespace: "default".to_string(),
        pod_name: "web".to_string(),
        pod_uid: "uid-1".to_string(),
        port_mappings: vec![
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp,
                host_ip: "127.0.0.1".to_string(),
            },
            // No host port: not a mapping for the portmap plugin.
            PortMapping {
                host_port: 0,
                container_port: 53,
                protocol: Protocol::Udp,
                host_ip: String::new(),
            },
            PortMapping {
                host_port: 9000,
                container_port: 9000,
                protocol: Protocol::Sctp,
                host_ip: String::new(),
            },
        ],
        bandwidth: Some(Bandwidth {
            ingress_rate: 1_000_000,
            ingress_burst: u64::from(u32::MAX),
            egress_rate: 0,
            egress_burst: 0,
        }),
        pod_cidr: Some("10.1.0.0/24".to_string()),
    }
}

const ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;\
                        K8S_POD_INFRA_CONTAINER_ID=sandbox1;K8S_POD_UID=uid-1";

fn port_mappings_json() -> Value {
    json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
        {"hostPort": 9000, "containerPort": 9000, "protocol": "sctp"},
    ])
}

#[tokio::test]
async fn add_runs_the_list_in_order() {
    let h = Harness::new();
    let list_text = h.conflist(&three_plugins());
    h.plugin_with_result("fake-a", &result_a());
    h.plugin_with_result("fake-b", &result_b());
    h.plugin_with_result("fake-c", &result_c());

    let result = h.cni.add(&request()).await.unwrap();
    assert_eq!(h.calls(), ["fake-a ADD", "fake-b ADD", "fake-c ADD"]);

    // The environment.
    let env = h.env(1);
    let want_path = format!("{}:{}", h.path("absent-bin").display(), h.path("bin").display());
    let want: HashMap<String, String> = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "sandbox1"),
        ("CNI_NETNS", "/run/netns/fake"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", ARGS),
        ("CNI_PATH", &want_path),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(env, want);
    assert_eq!(h.env(3), want);

    // Stdin: the plugin's object with the list's name and version, the previous result,
    // and only the capabilities the plugin declares.
    assert_eq!(
        h.stdin(1),
        json!({
            "type": "fake-a", "foo": "bar", "name": "test-net", "cniVersion": "1.0.0",
            "capabilities": {"portMappings": true, "ipRanges": true},
            "runtimeConfig": {
                "portMappings": port_mappings_json(),
                "ipRanges": [[{"subnet": "10.1.0.0/24"}]],
            },
        })
    );
    assert_eq!(
        h.stdin(2),
        json!({
            "type": "fake-b", "name": "test-net", "cniVersion": "1.0.0",
            "capabilities": {"bandwidth": true, "portMappings": false},
            "prevResult": result_a(),
            "runtimeConfig": {
                "bandwidth": {"ingressRate": 1_000_000, "ingressBurst": 4_294_967_295u64},
            },
        })
    );
    assert_eq!(
        h.stdin(3),
        json!({
            "type": "fake-c", "name": "test-net", "cniVersion": "1.0.0",
            "prevResult": result_b(),
        })
    );

    // The last result, in the list's version; IPv4 of eth0 first.
    let mut want_raw = result_c();
    result::convert(&mut want_raw, "1.0.0").unwrap();
    assert_eq!(want_raw["cniVersion"], "1.0.0");
    assert!(want_raw["ips"][0].get("version").is_none());
    assert_eq!(result.raw, want_raw);
    let ips: Vec<String> = result.ips.iter().map(|ip| ip.to_string()).collect();
    assert_eq!(ips, ["10.1.0.7", "fd00::7"]);

    // The cache, written atomically.
    let cache: Value =
        serde_json::from_slice(&fs::read(h.cache_file("sandbox1")).unwrap()).unwrap();
    assert_eq!(cache["kind"], CACHE_KIND);
    assert_eq!(cache["containerId"], "sandbox1");
    assert_eq!(cache["ifName"], "eth0");
    assert_eq!(cache["networkName"], "test-net");
    assert_eq!(cache["config"], list_text);
    assert_eq!(cache["result"], want_raw);
    assert_eq!(cache["capabilityArgs"]["portMappings"], port_mappings_json());
    assert_eq!(cache["cniArgs"][1], json!(["K8S_POD_NAMESPACE", "default"]));
    let files: Vec<_> = fs::read_dir(h.path("cache")).unwrap().collect();
    assert_eq!(files.len(), 1);
}

#[tokio::test]
async fn add_failure_is_rolled_back_in_reverse_order() {
    let h = Harness::new();
    h.conflist(&three_plugins());
    h.plugin_with_result("fake-a", &result_a());
    // Fails on every command, DEL of the rollback too.
    h.plugin(
        "fake-b",
        &format!(
            "echo '{}'; exit 1",
            json!({
                "cniVersion": "1.0.0", "code": 11, "msg": "no IP addresses available",
                "details": "range 10.1.0.0/24 is full",
            })
        ),
    );
    h.plugin_with_result("fake-c", &result_c());

    let err = h.cni.add(&request()).await.unwrap_err();
    match &err {
        Error::CniPlugin { plugin, command, code, msg, details } => {
            assert_eq!(plugin, "fake-b");
            assert_eq!(*command, "ADD");
            assert_eq!(*code, Some(11));
            assert_eq!(msg, "no IP addresses available");
            assert_eq!(details, "range 10.1.0.0/24 is full");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.kind(), crate::ErrorKind::Unavailable);
    assert_eq!(
        err.to_string(),
        "CNI plugin fake-b failed on ADD: no IP addresses available: \
             range 10.1.0.0/24 is full (CNI error code 11)"
    );
    assert_eq!(h.calls(), ["fake-a ADD", "fake-b ADD", "fake-c DEL", "fake-b DEL", "fake-a DEL"]);
    // The rollback has the ADD's arguments, and no result.
    let del = h.stdin(5);
    assert!(del.get("prevResult").is_none(), "{del}");
    assert_eq!(del["runtimeConfig"]["portMappings"], port_mappings_json());
    assert_eq!(h.env(5)["CNI_COMMAND"], "DEL");
    assert_eq!(h.env(5)["CNI_ARGS"], ARGS);
    assert_eq!(h.env(5)["CNI_NETNS"], "/run/netns/fake");
    assert!(!h.cache_file("sandbox1").exists());
}

#[tokio::test]
async fn add_with_an_unusable_result_is_rolled_back() {
    let h = Harness::new();
    h.conflist(&json!({
        "cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "a"}, {"type": "b"}],
    }));
    h.plugin_with_result("a", &result_a());
    h.plugin("b", "[ \"$CNI_COMMAND\" = ADD ] && echo 'not json'\nexit 0");
    let err = h.cni.add(&request()).await.unwrap_err();
    assert!(err.to_string().contains("plugin b printed no valid result"), "{err}");
    assert_eq!(h.calls(), ["a ADD", "b ADD", "b DEL", "a DEL"]);

    h.plugin_with_result("b", &json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.1/8"}}));
    let err = h.cni.add(&request()).await.unwrap_err();
    assert!(err.to_string().contains("unsupported result version"), "{err}");
    assert!(!h.cache_file("sandbox1").exists());
}

#[tokio::test]
async fn del_uses_the_cache_after_the_config_changed() {
    let h = Harness::new();
    h.conflist(&three_plugins());
    for (name, result) in [("fake-a", result_a()), ("fake-b", result_b()), ("x", result_a())] {
        h.plugin_with_result(name, &result);
    }
    h.plugin_with_result("fake-c", &result_c());
    let added = h.cni.add(&request()).await.unwrap();

    // Another network replaces the one the pod was added to.
    fs::remove_file(h.path("net.d/10-test.conflist")).unwrap();
    fs::write(
        h.path("net.d/20-other.conflist"),
        json!({"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "x"}]}).to_string(),
    )
    .unwrap();

    let gone = h.path("no-such-netns");
    h.cni.del("sandbox1", Some(&gone), "eth0").await.unwrap();
    assert_eq!(h.calls()[3..], ["fake-c DEL", "fake-b DEL", "fake-a DEL"]);
    for n in 4..=6 {
        let env = h.env(n);
        assert_eq!(env["CNI_COMMAND"], "DEL");
        assert_eq!(env["CNI_ARGS"], ARGS);
        // A netns that is gone is passed as none.
        assert_eq!(env["CNI_NETNS"], "");
        assert_eq!(h.stdin(n)["prevResult"], added.raw);
        assert_eq!(h.stdin(n)["name"], "test-net");
    }
    assert_eq!(h.stdin(6)["runtimeConfig"]["ipRanges"], json!([[{"subnet": "10.1.0.0/24"}]]));
    assert!(!h.cache_file("sandbox1").exists());

    // Again: nothing cached, so the current network, without a result.
    let own_netns = Path::new("/proc/self/ns/net");
    h.cni.del("sandbox1", Some(own_netns), "eth0").await.unwrap();
    assert_eq!(h.calls()[6..], ["x DEL"]);
    assert!(h.stdin(7).get("prevResult").is_none());
    assert_eq!(h.stdin(7)["name"], "other");
    let env = h.env(7);
    assert_eq!(env["CNI_ARGS"], "IgnoreUnknown=1;K8S_POD_INFRA_CONTAINER_ID=sandbox1");
    assert_eq!(env["CNI_NETNS"], "/proc/self/ns/net");

    // A broken cache is as good as none.
    fs::write(h.cache_file("sandbox1"), "{ truncated").unwrap();
    h.cni.del("sandbox1", None, "eth0").await.unwrap();
    assert_eq!(h.calls()[7..], ["x DEL"]);
    assert!(!h.cache_file("sandbox1").exists());

    // And with no network at all: nothing to do.
    fs::remove_dir_all(h.path("net.d")).unwrap();
    h.cni.del("sandbox1", None, "eth0").await.unwrap();
    assert_eq!(h.calls().len(), 8);
}

#[tokio::test]
async fn failed_del_keeps_the_cache() {
    let h = Harness::new();
    h.conflist(&json!({
        "cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "a"}, {"type": "b"}],
    }));
    h.plugin(
        "a",
        &format!(
            "[ \"$CNI_COMMAND\" = ADD ] && echo '{}' && exit 0\n\
                 echo 'plugin a cannot delete' >&2; exit 1",
            result_a()
        ),
    );
    h.plugin_with_result("b", &result_b());
    h.cni.add(&request()).await.unwrap();

    let err = h.cni.del("sandbox1", None, "eth0").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "CNI plugin a failed on DEL: exit status: 1, stderr \"plugin a cannot delete\""
    );
    assert_eq!(h.calls()[2..], ["b DEL", "a DEL"]);
    assert!(h.cache_file("sandbox1").exists());

    h.plugin_with_result("a", &result_a());
    h.cni.del("sandbox1", None, "eth0").await.unwrap();
    assert_eq!(h.calls()[4..], ["b DEL", "a DEL"]);
    assert_eq!(h.stdin(6)["prevResult"], result_b());
    assert!(!h.cache_file("sandbox1").exists());
}

#[tokio::test]
async fn check_uses_the_cache() {
    let h = Harness::new();
    let mut list = json!({
        "cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "a"}, {"type": "b"}],
    });
    h.conflist(&list);
    h.plugin_with_result("a", &result_a());
    h.plugin_with_result("b", &result_b());
    let netns = Path::new("/run/netns/fake");

    let err = h.cni.check("sandbox1", netns, "eth0").await.unwrap_err();
    assert!(err.to_string().contains("no cached network"), "{err}");

    h.cni.add(&request()).await.unwrap();
    h.cni.check("sandbox1", netns, "eth0").await.unwrap();
    assert_eq!(h.calls()[2..], ["a CHECK", "b CHECK"]);
    assert_eq!(h.stdin(3)["prevResult"], result_b());
    assert_eq!(h.stdin(4)["prevResult"], result_b());
    assert_eq!(h.env(4)["CNI_ARGS"], ARGS);
    assert_eq!(h.env(4)["CNI_NETNS"], "/run/netns/fake");
    h.cni.del("sandbox1", None, "eth0").await.unwrap();

    list["disableCheck"] = json!(true);
    h.conflist(&list);
    h.cni.add(&request()).await.unwrap();
    let calls = h.calls().len();
    h.cni.check("sandbox1", netns, "eth0").await.unwrap();
    assert_eq!(h.calls().len(), calls);
    h.cni.del("sandbox1", None, "eth0").await.unwrap();

    list["cniVersion"] = json!("0.3.1");
    list.as_object_mut().unwrap().remove("disableCheck");
    h.conflist(&list);
    h.cni.add(&request()).await.unwrap();
    let err = h.cni.check("sandbox1", netns, "eth0").await.unwrap_err();
    assert!(err.to_string().contains("CHECK needs 0.4.0 or later"), "{err}");
}

#[tokio::test]
async fn results_are_converted_to_the_list_version() {
    let h = Harness::new();
    h.conflist(&json!({
        "cniVersion": "0.4.0", "name": "n", "plugins": [{"type": "a"}, {"type": "b"}],
    }));
    h.plugin_with_result("a", &result_a());
    h.plugin_with_result("b", &result_c());
    let result = h.cni.add(&request()).await.unwrap();
    let prev = &h.stdin(2)["prevResult"];
    assert_eq!(prev["cniVersion"], "0.4.0");
    assert_eq!(prev["ips"][0]["version"], "4");
    assert_eq!(h.stdin(2)["cniVersion"], "0.4.0");
    assert_eq!(result.raw, result_c());
    assert_eq!(result.ips, ["10.1.0.7".parse::<IpAddr>().unwrap(), "fd00::7".parse().unwrap()]);
}

#[tokio::test]
async fn not_ready_and_invalid_requests() {
    let h = Harness::new();
    let err = h.cni.add(&request()).await.unwrap_err();
    assert!(matches!(err, Error::NetworkNotReady(_)), "{err:?}");
    assert_eq!(err.kind(), crate::ErrorKind::FailedPrecondition);
    assert!(err.to_string().contains(&h.path("net.d").display().to_string()), "{err}");

    h.conflist(&three_plugins());
    h.plugin_with_result("fake-a", &result_a());
    let err = h.cni.add(&request()).await.unwrap_err();
    assert!(matches!(err, Error::NetworkNotReady(_)), "{err:?}");
    assert!(err.to_string().ends_with("fake-b, fake-c"), "{err}");
    assert!(h.calls().is_empty());

    for id in ["", "../x", "a/b", ".hidden"] {
        let req = PodNetworkRequest { container_id: id.to_string(), ..request() };
        let err = h.cni.add(&req).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{id}: {err}");
        let err = h.cni.del(id, None, "eth0").await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{id}: {err}");
    }
    let req = PodNetworkRequest { pod_name: "a;b".to_string(), ..request() };
    let err = h.cni.add(&req).await.unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{err}");
    assert!(h.calls().is_empty());
}

#[test]
fn quantities() {
    let cases: [(&str, i128); 20] = [
        ("0", 0),
        ("1", 1),
        ("1k", 1_000),
        ("10M", 10_000_000),
        ("1.5M", 1_500_000),
        ("1Gi", 1 << 30),
        ("0.5Ki", 512),
        ("100m", 1),
        ("1500m", 2),
        ("1n", 1),
        ("1e3", 1_000),
        ("1E3", 1_000),
        ("1E", 1_000_000_000_000_000_000),
        ("12e-1", 2),
        ("+2k", 2_000),
        ("-2k", -2_000),
        (".5k", 500),
        ("5.k", 5_000),
        ("1Ei", 1 << 60),
        ("0.000001P", 1_000_000_000),
    ];
    for (text, want) in cases {
        assert_eq!(parse_quantity(text), Ok(want), "{text}");
    }
    for text in ["", "k", "1K", "1 k", "1.2.3", ".", "1e", "1kk", "1Mi3", "abc", "1e+"] {
        assert!(parse_quantity(text).is_err(), "{text}");
    }
    assert_eq!(parse_quantity("1e40"), Err("quantity out of range".to_string()));

    assert_eq!(parse_bandwidth("10M"), Ok(10_000_000));
    assert_eq!(parse_bandwidth("1P"), Ok(1_000_000_000_000_000));
    assert!(parse_bandwidth("999").unwrap_err().contains("unreasonably small"));
    assert!(parse_bandwidth("-1M").unwrap_err().contains("unreasonably small"));
    assert!(parse_bandwidth("2P").unwrap_err().contains("unreasonably large"));
}

#[test]
fn bandwidth_annotations() {
    let annotations = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    assert_eq!(Bandwidth::from_annotations(&annotations(&[("a", "b")])).unwrap(), None);
    let bandwidth = Bandwidth::from_annotations(&annotations(&[
        (INGRESS_BANDWIDTH_ANNOTATION, "10M"),
        ("other", "x"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(
        bandwidth,
        Bandwidth {
            ingress_rate: 10_000_000,
            ingress_burst: 4_294_967_295,
            egress_rate: 0,
            egress_burst: 0
        }
    );
    assert_eq!(
        serde_json::to_value(bandwidth).unwrap(),
        json!({"ingressRate": 10_000_000, "ingressBurst": 4_294_967_295u64})
    );
    let bandwidth =
        Bandwidth::from_annotations(&annotations(&[(EGRESS_BANDWIDTH_ANNOTATION, "1Gi")]))
            .unwrap()
            .unwrap();
    assert_eq!((bandwidth.egress_rate, bandwidth.ingress_rate), (1 << 30, 0));
    let err = Bandwidth::from_annotations(&annotations(&[(EGRESS_BANDWIDTH_ANNOTATION, "1")]))
        .unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("kubernetes.io/egress-bandwidth \"1\""), "{err}");
}
