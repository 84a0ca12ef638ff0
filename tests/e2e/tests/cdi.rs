//! CDI devices through the upstream crictl, on every handler: a container asks for devices by
//! qualified name (the CRI's `CDI_devices`, and a `cdi.k8s.io/*` annotation as older device
//! plugins set) and gets what the spec files of the node's CDI directory say: a device node
//! backed by the host's `/dev/null`, a mount, environment variables, an extra group. An unknown
//! device fails CreateContainer naming it; a device with an OCI hook runs the hook on runc and
//! crun, and is refused by the embedded executor, which does not run hooks.

use std::path::PathBuf;
use std::process::Output;

use berth_e2e::berthd::Options;
use berth_e2e::images;
use berth_e2e::upstream::Crictl;
use berth_e2e::{Berthd, Node, Registry};

/// Drop order: daemon, registry, node.
struct Env {
    daemon: Berthd,
    _registry: Registry,
    node: Node,
    crictl: Crictl,
    image: String,
    /// The node's CDI spec directory (the config's `[cdi] spec_dirs`).
    cdi_dir: PathBuf,
}

impl Env {
    async fn start() -> Env {
        let node = Node::start();
        let registry = Registry::start(&node);
        let addr = registry.addr.clone();
        node.block_on(|| images::push_all(&addr)).expect("pushing the test images");
        let cdi_dir = node.dir().join("cdi");
        std::fs::create_dir_all(&cdi_dir).unwrap();
        let extra_config = format!(
            "[cdi]\nspec_dirs = [{:?}, {:?}]\n",
            node.dir().join("no-such-dir").display().to_string(),
            cdi_dir.display().to_string()
        );
        let daemon =
            Berthd::start_with(&node, Options { extra_config, ..Options::default() }).await;
        let crictl = Crictl::new(&node, &daemon);
        let image = format!("{addr}/{}", images::OCI_REF);
        let env = Env { daemon, _registry: registry, node, crictl, image, cdi_dir };
        env.ok(&["pull", &env.image]);
        env
    }

    fn run(&self, args: &[&str]) -> Output {
        self.crictl.run(&self.node, args)
    }

    fn ok(&self, args: &[&str]) -> String {
        self.crictl.ok(&self.node, args)
    }

    /// A pod on the node's network (no CNI needed) with `handler`; its id and config file.
    fn pod(&self, name: &str, handler: &str) -> (String, PathBuf) {
        let file = self.node.dir().join(format!("{name}-pod.json"));
        let pod = serde_json::json!({
            "metadata": {"name": name, "uid": format!("{name}-uid"), "namespace": "cdi"},
            "log_directory": self.node.dir().join("logs").join(name),
            "linux": {"security_context": {"namespace_options": {"network": 2}}},
        });
        std::fs::write(&file, pod.to_string()).unwrap();
        let id = self.ok(&["runp", "--runtime", handler, file.to_str().unwrap()]);
        (id, file)
    }

    /// Writes a container config asking for `devices` (and `annotations`), and creates it.
    fn create(
        &self,
        pod: &(String, PathBuf),
        name: &str,
        devices: &[&str],
        annotations: serde_json::Value,
    ) -> Output {
        let file = self.node.dir().join(format!("{name}-container.json"));
        let devices: Vec<_> = devices.iter().map(|d| serde_json::json!({"name": d})).collect();
        let container = serde_json::json!({
            "metadata": {"name": name},
            "image": {"image": self.image},
            "command": ["sleep", "1000"],
            "log_path": format!("{name}.log"),
            "linux": {"security_context": {"run_as_user": {"value": 1000}}},
            "CDI_devices": devices,
            "annotations": annotations,
        });
        std::fs::write(&file, container.to_string()).unwrap();
        self.run(&["create", &pod.0, file.to_str().unwrap(), pod.1.to_str().unwrap()])
    }

    fn remove_pod(&self, pod: &(String, PathBuf)) {
        self.ok(&["stopp", &pod.0]);
        self.ok(&["rmp", &pod.0]);
    }
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A vendor's spec as a device plugin would write it: spec-wide edits and two devices.
fn write_fake_spec(env: &Env) -> PathBuf {
    let info = env.node.dir().join("fake-device-info");
    std::fs::write(&info, "fake device 0\n").unwrap();
    let spec = serde_json::json!({
        "cdiVersion": "0.6.0",
        "kind": "example.test/fake",
        "containerEdits": {"env": ["FAKE_VENDOR=yes"]},
        "devices": [
            {"name": "null0", "containerEdits": {
                "deviceNodes": [{"path": "/dev/fake0", "hostPath": "/dev/null", "permissions": "rw"}],
                "mounts": [{"hostPath": info, "containerPath": "/run/fake/info", "options": ["ro", "bind"]}],
                "env": ["FAKE_DEVICE=null0"],
                "additionalGids": [4242],
            }},
            {"name": "second", "containerEdits": {"env": ["FAKE_SECOND=yes"]}},
        ],
    });
    let path = env.cdi_dir.join("fake.json");
    std::fs::write(&path, serde_json::to_string_pretty(&spec).unwrap()).unwrap();
    path
}

async fn devices_reach_the_container(handler: &'static str) {
    let env = Env::start().await;
    write_fake_spec(&env);
    let pod = env.pod("devices", handler);
    let created = env.create(
        &pod,
        "main",
        &["example.test/fake=null0"],
        serde_json::json!({"cdi.k8s.io/legacy-plugin": "example.test/fake=second"}),
    );
    assert!(created.status.success(), "create: {}\n{}", stderr_of(&created), env.daemon.log_text());
    let id = stdout_of(&created);
    env.ok(&["start", &id]);

    let script = "stat -c '%F %t:%T %u' /dev/fake0; echo data > /dev/fake0 && echo written; \
                  echo $FAKE_VENDOR $FAKE_DEVICE $FAKE_SECOND; cat /run/fake/info; id -G";
    let out = env.ok(&["exec", &id, "sh", "-c", script]);
    let lines: Vec<&str> = out.lines().collect();
    // /dev/null is character device 1:3; the container's user (1000) owns the node given to it.
    assert_eq!(lines.first().copied(), Some("character special file 1:3 1000"), "{out}");
    assert!(lines.contains(&"written"), "the device cgroup lets it write: {out}");
    assert!(lines.contains(&"yes null0 yes"), "{out}");
    assert!(lines.contains(&"fake device 0"), "{out}");
    assert!(lines.last().is_some_and(|l| l.split(' ').any(|g| g == "4242")), "{out}");
    env.remove_pod(&pod);
}

async fn an_unknown_device_fails_create_naming_it(handler: &'static str) {
    let env = Env::start().await;
    write_fake_spec(&env);
    // A spec file the vendor got wrong is named too: it may be the one meant to define it.
    std::fs::write(env.cdi_dir.join("broken.yaml"), "cdiVersion: 0.6.0\nkind: nokind\n").unwrap();
    let pod = env.pod("unknown", handler);
    let created = env.create(&pod, "main", &["example.test/fake=gpu7"], serde_json::json!({}));
    assert!(!created.status.success(), "created: {}", stdout_of(&created));
    let err = stderr_of(&created);
    assert!(err.contains("example.test/fake=gpu7"), "{err}");
    assert!(err.contains("broken.yaml"), "{err}");
    let created = env.create(&pod, "bad", &["not-qualified"], serde_json::json!({}));
    assert!(stderr_of(&created).contains("InvalidArgument"), "{}", stderr_of(&created));
    assert_eq!(env.ok(&["ps", "-a", "-q"]), "", "nothing is left of the refused containers");
    env.remove_pod(&pod);
}

async fn a_hook_runs_or_is_refused(handler: &'static str) {
    let env = Env::start().await;
    let marker = env.node.dir().join("hook-ran");
    let spec = serde_json::json!({
        "cdiVersion": "0.6.0",
        "kind": "example.test/hooked",
        "devices": [{"name": "dev", "containerEdits": {"hooks": [{
            "hookName": "createRuntime",
            "path": "/bin/sh",
            // A hook gets the container's state on stdin and must take it: crun fails the
            // create when the hook exits before it has written it (EPIPE).
            "args": ["sh", "-c", format!("cat >/dev/null; echo ran > {}", marker.display())],
        }]}}],
    });
    std::fs::write(env.cdi_dir.join("hooked.json"), spec.to_string()).unwrap();
    let pod = env.pod("hooked", handler);
    let created = env.create(&pod, "main", &["example.test/hooked=dev"], serde_json::json!({}));
    if handler.is_empty() {
        assert!(!created.status.success(), "the embedded executor ran a spec with hooks");
        let err = stderr_of(&created);
        assert!(err.contains("OCI hooks") && err.contains("runc"), "{err}");
    } else {
        assert!(created.status.success(), "create: {}", stderr_of(&created));
        assert_eq!(std::fs::read_to_string(&marker).unwrap_or_default(), "ran\n");
    }
    env.remove_pod(&pod);
}

berth_e2e::handler_cases!(
    devices_reach_the_container,
    an_unknown_device_fails_create_naming_it,
    a_hook_runs_or_is_refused,
);
