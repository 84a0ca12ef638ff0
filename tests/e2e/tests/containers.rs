//! Containers over the real socket, in host-network pods (quick, and nothing here is about the
//! network), from the node registry's test images: how the process is made from the image
//! config and the CRI config (argv, env, working dir, user), every mount option, the CRI log
//! format, exit codes and reasons (OOM included), stop with its grace period, ExecSync, the
//! filters of ListContainers, what StopPodSandbox and RemovePodSandbox do to containers, bad
//! input that must leave nothing behind, and containers that outlive a killed berthd.
//!
//! The whole suite runs once per runtime handler, with the same expectations: the embedded
//! executor (module `embedded`), runc (`runc`) and crun (`crun`). Each case is an `async fn`
//! taking the handler; `cases!` at the end makes one test per (handler, case). A handler that
//! cannot run a container on this host has its cases skipped, with the reason printed (the
//! nodes go without a hybrid host's cgroup2 mount, which crun 1.8 refuses, so that crun runs).
//! Status and refused handlers are tested once.
//!
//! Containers report back through their CRI log (see `berth_e2e::cri::read_log`), so that
//! most tests depend on nothing but Create/Start/Status and the log writer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_cri_server::proto::NamespaceMode;
use berth_cri_server::proto::{
    Container, ContainerState, ContainerStatus, Mount, MountPropagation, Signal, StatusRequest,
};
use berth_e2e::berthd::Options;
use berth_e2e::cri::{
    bind, container, containers_by_id, containers_by_labels, containers_by_pod,
    containers_by_state, log_messages, pod, read_log, wait_log, ContainerSpec, Pod,
};
use berth_e2e::images::{self, TestImages};
use berth_e2e::{Berthd, Cri, Node, Registry};
use nix::sys::signal::Signal as UnixSignal;
use tonic::Code;

/// The longest line the log writer keeps whole; longer ones are split into `P` lines of this
/// size and a final `F` (containerd's default `max_container_log_line_size`).
const LOG_LINE_MAX: usize = 16 * 1024;

/// How long a short-lived container may take to run and be reported exited.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Drop order: client, daemon, registry, node.
struct Env {
    cri: Cri,
    daemon: Berthd,
    registry: Registry,
    node: Node,
    /// The runtime handler of every pod the test makes.
    handler: &'static str,
}

impl Env {
    async fn start(handler: &'static str) -> Env {
        Self::start_with(handler, Options::default()).await
    }

    async fn start_with(handler: &'static str, options: Options) -> Env {
        let node = Node::start();
        let registry = Registry::start(&node);
        let addr = registry.addr.clone();
        node.block_on(|| images::push_all(&addr)).expect("pushing the test images");
        node.block_on(|| images::push_run(&addr)).expect("pushing the run images");
        let daemon = Berthd::start_with(&node, options).await;
        let cri = daemon.client().await;
        Env { cri, daemon, registry, node, handler }
    }

    /// Pulls a test image (`berth-test/…:tag`) and returns the reference it was pulled by.
    async fn image(&mut self, reference: &str) -> String {
        let name = format!("{}/{reference}", self.registry.addr);
        self.cri.pull(&name).await.unwrap_or_else(|err| panic!("pulling {name}: {err}"));
        name
    }

    /// A host-network pod `name` whose log directory exists, as the kubelet makes it.
    fn pod(&self, name: &str) -> Pod {
        let logs = self.node.dir().join("logs").join(name);
        std::fs::create_dir_all(&logs).unwrap();
        pod(name).hostname("").host_network().log_directory(logs).runtime_handler(self.handler)
    }

    async fn run_pod(&mut self, name: &str) -> (String, Pod) {
        let pod = self.pod(name);
        let id = self.cri.run_pod(&pod).await.unwrap_or_else(|err| panic!("running {name}: {err}"));
        (id, pod)
    }

    /// The host path of a container's log, `<pod log dir>/<log_path>`.
    fn log(&self, pod: &Pod, spec: &ContainerSpec) -> PathBuf {
        Path::new(&pod.config.log_directory).join(&spec.config.log_path)
    }

    /// A scratch directory of the test on the node, created.
    fn dir(&self, name: &str) -> PathBuf {
        let dir = self.node.dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs `spec` in the pod, waits for it to exit, and returns its status and the whole
    /// lines of its log.
    async fn run_to_exit(
        &mut self,
        pod_id: &str,
        pod: &Pod,
        spec: &ContainerSpec,
    ) -> (ContainerStatus, Vec<String>) {
        let name = spec.config.metadata.as_ref().unwrap().name.clone();
        let id = self
            .cri
            .run_container(pod_id, pod, spec)
            .await
            .unwrap_or_else(|err| panic!("running container {name}: {err}"));
        let status = self.cri.wait_exited(&id, EXIT_TIMEOUT).await;
        let lines = read_log(self.log(pod, spec));
        (status, log_messages(&lines, None))
    }

    async fn stop_and_remove_pod(&mut self, id: &str) {
        self.cri.stop_pod(id).await.expect("StopPodSandbox");
        self.cri.remove_pod(id).await.expect("RemovePodSandbox");
    }

    /// `<root>/containers`: one directory per container.
    fn container_dirs(&self) -> Vec<String> {
        entries(&self.daemon.root.join("containers"))
    }

    /// No container is listed, recorded, or has a cgroup or a mounted rootfs left.
    async fn assert_no_containers(&mut self) {
        assert_eq!(self.cri.list_containers(None).await, Vec::<Container>::new());
        assert_eq!(self.container_dirs(), Vec::<String>::new(), "container directories left");
        assert_eq!(self.node.cgroup_children(), Vec::<PathBuf>::new(), "cgroups left");
        let state = self.daemon.state.join("containers").display().to_string();
        let mounted: Vec<String> =
            node_mount_points(&self.node).into_iter().filter(|p| p.starts_with(&state)).collect();
        assert_eq!(mounted, Vec::<String>::new(), "rootfs mounts left");
    }

    /// Whether Status says the test's handler has recursive read-only mounts.
    async fn handler_has_rro(&mut self) -> bool {
        let answer = self.cri.runtime.status(StatusRequest { verbose: false }).await.unwrap();
        let handlers = answer.into_inner().runtime_handlers;
        let handler = handlers.iter().find(|h| h.name == self.handler).expect("the handler");
        handler.features.as_ref().is_some_and(|f| f.recursive_read_only_mounts)
    }

    /// SIGKILL to berthd: nothing of it runs its shutdown.
    async fn kill_daemon(&mut self) {
        self.daemon.signal(UnixSignal::SIGKILL);
        self.daemon.wait_exit(Duration::from_secs(10)).await;
    }

    /// Another berthd on the same root and state.
    async fn start_daemon_again(&mut self) {
        let options = Options {
            root: Some(self.daemon.root.clone()),
            state: Some(self.daemon.state.clone()),
            ..Default::default()
        };
        self.daemon = Berthd::start_with(&self.node, options).await;
        self.cri = self.daemon.client().await;
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default()
}

/// The mount points of the node's mount namespace.
fn node_mount_points(node: &Node) -> Vec<String> {
    node.run(&["cat", "/proc/self/mountinfo"])
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(|p| p.replace("\\040", " ")))
        .collect()
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

fn ids(containers: &[Container]) -> BTreeSet<String> {
    containers.iter().map(|c| c.id.clone()).collect()
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

/// The `probe <key>=<value>` lines of [`images::PROBE`] in a log.
fn probe_output(messages: &[String]) -> BTreeMap<String, String> {
    messages
        .iter()
        .filter_map(|m| m.strip_prefix("probe "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn gid_set(groups: &str) -> BTreeSet<i64> {
    groups.split_whitespace().map(|g| g.parse().unwrap()).collect()
}

/// One row of the process table: a container and what [`images::PROBE`] must print in it.
struct Row {
    what: &'static str,
    spec: ContainerSpec,
    expect: Vec<(&'static str, &'static str)>,
    /// uid, gid and the whole set of groups (`id -G`), when the row is about the user.
    ids: Option<(i64, i64, &'static [i64])>,
}

async fn the_process_follows_the_image_and_config_rules(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let ep = env.image(images::RUN_ENTRYPOINT_REF).await;
    let cmd = env.image(images::RUN_CMD_REF).await;
    let user_name = env.image(images::RUN_USER_NAME_REF).await;
    let user_uid = env.image(images::RUN_USER_UID_REF).await;
    let user_uid_gid = env.image(images::RUN_USER_UID_GID_REF).await;
    let user_name_group = env.image(images::RUN_USER_NAME_GROUP_REF).await;
    let (pod_id, pod) = env.run_pod("rules").await;
    let probe = images::PROBE;

    let row = |what, spec: ContainerSpec, expect| Row { what, spec, expect, ids: None };
    let user = |what, spec: ContainerSpec, ids| Row { what, spec, expect: vec![], ids: Some(ids) };
    let rows = vec![
        // Entrypoint and Cmd against command and args, as Kubernetes defines them.
        row("image entrypoint + cmd", container("c", &ep), vec![("args", "ep cmd1 cmd2")]),
        row(
            "args replace cmd",
            container("c", &ep).args(&["a1", "a2"]),
            vec![("args", "ep a1 a2")],
        ),
        row("command drops both", container("c", &ep).command(&[probe, "c"]), vec![("args", "c")]),
        row(
            "command + args",
            container("c", &ep).command(&[probe, "c"]).args(&["a1"]),
            vec![("args", "c a1")],
        ),
        row("image cmd alone", container("c", &cmd), vec![("args", "cmd")]),
        row(
            "args replace a lone cmd",
            container("c", &cmd).args(&[probe, "x"]),
            vec![("args", "x")],
        ),
        row("command without args", container("c", &cmd).command(&[probe]), vec![("args", "")]),
        // Env: the image's, then the config's, a later one of a name winning.
        row("image env", container("c", &ep), vec![("FOO", "image-foo"), ("BAR", "image-bar")]),
        row(
            "config env overrides",
            container("c", &ep).env("FOO", "config-foo"),
            vec![("FOO", "config-foo"), ("BAR", "image-bar")],
        ),
        row(
            "the last duplicate wins",
            container("c", &ep).env("FOO", "one").env("FOO", "two"),
            vec![("FOO", "two")],
        ),
        row("unset stays unset", container("c", &cmd), vec![("FOO", "<unset>")]),
        // HOME, as runc sets it: the user's home in the image's passwd, else `/`.
        row("root's home", container("c", &cmd), vec![("HOME", "/root")]),
        row("a user's home", container("c", &cmd).run_as_user(1000), vec![("HOME", "/home/berth")]),
        row("no passwd entry", container("c", &cmd).run_as_user(4242), vec![("HOME", "/")]),
        row("config HOME wins", container("c", &cmd).env("HOME", "/h"), vec![("HOME", "/h")]),
        row(
            "config env adds",
            container("c", &cmd).env("BAR", "config-bar"),
            vec![("BAR", "config-bar")],
        ),
        // Working dir: config, else image, else `/`; a missing one is created.
        row("image working dir", container("c", &ep), vec![("cwd", "/home/berth")]),
        row("config working dir", container("c", &ep).working_dir("/tmp"), vec![("cwd", "/tmp")]),
        row("default working dir", container("c", &cmd), vec![("cwd", "/")]),
        row(
            "a missing working dir is made",
            container("c", &cmd).working_dir("/srv/new"),
            vec![("cwd", "/srv/new")],
        ),
        // User: the config's uid or name, else the image's USER in each form; the gid from
        // the config, the form, or the user's passwd entry (0 without one); the groups are the
        // gid, the user's groups in the image's /etc/group and the config's.
        user("root by default", container("c", &cmd), (0, 0, &[0])),
        user("run_as_user", container("c", &cmd).run_as_user(1000), (1000, 1000, &[1000, 2000])),
        user(
            "run_as_user + run_as_group",
            container("c", &cmd).run_as_user(1000).run_as_group(3000),
            (1000, 3000, &[2000, 3000]),
        ),
        user(
            "run_as_user + supplemental groups",
            container("c", &cmd).run_as_user(1000).supplemental_groups(&[3000]),
            (1000, 1000, &[1000, 2000, 3000]),
        ),
        user(
            "a uid without a passwd entry",
            container("c", &cmd).run_as_user(4242),
            (4242, 0, &[0]),
        ),
        user(
            "run_as_username",
            container("c", &cmd).run_as_username("berth"),
            (1000, 1000, &[1000, 2000]),
        ),
        user("image USER name", container("c", &user_name), (1000, 1000, &[1000, 2000])),
        user("image USER uid", container("c", &user_uid), (1000, 1000, &[1000, 2000])),
        user("image USER uid:gid", container("c", &user_uid_gid), (1000, 2000, &[2000])),
        user("image USER name:group", container("c", &user_name_group), (1000, 2000, &[2000])),
        user(
            "run_as_user over image USER",
            container("c", &user_name).run_as_user(0),
            (0, 0, &[0]),
        ),
    ];

    let mut failures = Vec::new();
    for (n, row) in rows.into_iter().enumerate() {
        // Each row its own container name (and log), so that no two share anything.
        let mut spec = row.spec.log_path(&format!("row-{n}.log"));
        spec.config.metadata.as_mut().unwrap().name = format!("row-{n}");
        let (status, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
        let probe = probe_output(&messages);
        let mut check = |key: &str, want: &str| {
            let got = probe.get(key).map(String::as_str);
            if got != Some(want) {
                failures.push(format!("{}: {key} is {got:?}, not {want:?}", row.what));
            }
        };
        for (key, want) in &row.expect {
            check(key, want);
        }
        if let Some((uid, gid, groups)) = row.ids {
            check("uid", &uid.to_string());
            check("gid", &gid.to_string());
            let got = probe.get("groups").map(|g| gid_set(g));
            if got.as_ref() != Some(&groups.iter().copied().collect()) {
                failures.push(format!("{}: groups are {got:?}, not {groups:?}", row.what));
            }
            let reported = status.user.and_then(|u| u.linux).map(|u| (u.uid, u.gid));
            if reported != Some((uid, gid)) {
                failures.push(format!("{}: ContainerStatus says user {reported:?}", row.what));
            }
        }
        if status.exit_code != 0 {
            failures.push(format!("{}: exit code {} ({messages:?})", row.what, status.exit_code));
        }
    }
    assert!(failures.is_empty(), "{} rows wrong:\n{}", failures.len(), failures.join("\n"));
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

async fn read_only_and_read_write_mounts(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("mounts").await;
    let ro = env.dir("ro");
    std::fs::write(ro.join("f"), "ro-content\n").unwrap();
    let rw = env.dir("rw");

    let spec = container("rw-ro", &image)
        .log_path("rw-ro.log")
        .mount(Mount { readonly: true, ..bind(&ro, "/ro") })
        .mount(bind(&rw, "/rw"))
        .shell(
            "cat /ro/f; \
             if touch /ro/new 2>/dev/null; then echo ro:writable; else echo ro:refused; fi; \
             echo from-container > /rw/written && echo rw:written",
        );
    let (status, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
    assert_eq!(messages, ["ro-content", "ro:refused", "rw:written"], "{status:?}");
    assert!(!ro.join("new").exists());
    assert_eq!(std::fs::read_to_string(rw.join("written")).unwrap(), "from-container\n");

    // ContainerStatus reports the mounts as they were asked for.
    let mounts: Vec<(String, String, bool)> = status
        .mounts
        .iter()
        .map(|m| (m.container_path.clone(), m.host_path.clone(), m.readonly))
        .collect();
    let expected = vec![
        ("/ro".to_string(), ro.display().to_string(), true),
        ("/rw".to_string(), rw.display().to_string(), false),
    ];
    assert_eq!(mounts, expected);

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

async fn mount_propagation_private_host_to_container_and_bidirectional(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("propagation").await;
    // Each source is a shared mount of its own on the node, as the kubelet's volumes are when
    // they propagate: a slave or shared mount needs a shared source.
    let mut sources = Vec::new();
    for name in ["private", "h2c", "bidi"] {
        let dir = env.dir(name);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let path = dir.display().to_string();
        env.node.run(&["mount", "--bind", &path, &path]);
        env.node.run(&["mount", "--make-shared", &path]);
        sources.push(dir);
    }
    let trigger = env.dir("trigger");
    let with = |propagation: MountPropagation, source: &Path, target: &str| Mount {
        propagation: propagation.into(),
        ..bind(source, target)
    };
    let spec = container("propagation", &image)
        .log_path("propagation.log")
        .privileged()
        .mount(with(MountPropagation::PropagationPrivate, &sources[0], "/private"))
        .mount(with(MountPropagation::PropagationHostToContainer, &sources[1], "/h2c"))
        .mount(with(MountPropagation::PropagationBidirectional, &sources[2], "/bidi"))
        .mount(Mount { readonly: true, ..bind(&trigger, "/trigger") })
        .shell(
            "echo ready; \
             while [ ! -e /trigger/go ]; do sleep 0.1; done; \
             if [ -e /private/sub/marker ]; then echo private:seen; else echo private:unseen; fi; \
             if [ -e /h2c/sub/marker ]; then echo h2c:seen; else echo h2c:unseen; fi; \
             if mount -t tmpfs tmpfs /bidi/sub && echo from-container > /bidi/sub/marker; \
             then echo bidi:mounted; else echo bidi:failed; fi; \
             exec sleep 1000",
        );
    let id = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();
    let log = env.log(&pod, &spec);
    wait_log(&log, EXIT_TIMEOUT, |m| m == "ready").await;

    // Mounts made on the node after the container started.
    for source in &sources[..2] {
        let sub = source.join("sub").display().to_string();
        env.node.run(&["mount", "-t", "tmpfs", "tmpfs", &sub]);
        env.node.run(&["sh", "-c", &format!("echo from-node > {sub}/marker")]);
    }
    std::fs::write(trigger.join("go"), "").unwrap();
    let lines = wait_log(&log, EXIT_TIMEOUT, |m| m.starts_with("bidi:")).await;
    let messages = log_messages(&lines, None);
    assert!(messages.contains(&"private:unseen".to_string()), "{messages:?}");
    assert!(messages.contains(&"h2c:seen".to_string()), "{messages:?}");
    assert!(messages.contains(&"bidi:mounted".to_string()), "{messages:?}");
    // The container's mount reached the node.
    let marker = sources[2].join("sub/marker").display().to_string();
    assert_eq!(env.node.run(&["cat", &marker]), "from-container\n");

    env.cri.stop_container(&id, 0).await.unwrap();
    env.cri.remove_container(&id).await.unwrap();
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

async fn a_recursive_read_only_mount_is_read_only_below_too(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("rro").await;
    let source = env.dir("rro");
    let sub = source.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let sub_path = sub.display().to_string();
    env.node.run(&["mount", "-t", "tmpfs", "tmpfs", &sub_path]);
    env.node.run(&["sh", "-c", &format!("echo in-submount > {sub_path}/marker")]);

    let spec = container("rro", &image)
        .log_path("rro.log")
        .mount(Mount { readonly: true, recursive_read_only: true, ..bind(&source, "/rro") })
        .shell(
            "cat /rro/sub/marker; \
             if touch /rro/top 2>/dev/null; then echo top:writable; else echo top:refused; fi; \
             if touch /rro/sub/below 2>/dev/null; then echo sub:writable; \
             else echo sub:refused; fi",
        );
    // A handler that does not claim the feature refuses such a mount, as the kubelet would.
    if !env.handler_has_rro().await {
        let err = env.cri.create_container(&pod_id, &pod, &spec).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("recursive read-only"), "{err:?}");
        env.stop_and_remove_pod(&pod_id).await;
        env.assert_no_containers().await;
        return;
    }
    let (status, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
    assert_eq!(messages, ["in-submount", "top:refused", "sub:refused"], "{status:?}");
    assert!(status.mounts.first().is_some_and(|m| m.recursive_read_only), "{status:?}");

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

async fn a_missing_host_directory_is_created(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("missing").await;
    let missing = env.node.dir().join("not-yet/made/here");
    assert!(!missing.exists());

    let spec = container("missing", &image)
        .log_path("missing.log")
        .mount(bind(&missing, "/data"))
        .shell("echo hello > /data/file && echo written");
    let (_, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
    assert_eq!(messages, ["written"]);
    assert!(missing.is_dir());
    assert_eq!(std::fs::read_to_string(missing.join("file")).unwrap(), "hello\n");

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

async fn a_symlink_out_of_the_root_as_mount_target_stays_inside(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::RUN_CMD_REF).await;
    let (pod_id, pod) = env.run_pod("links").await;
    let abs = env.dir("abs");
    std::fs::write(abs.join("marker"), "abs-marker\n").unwrap();
    let rel = env.dir("rel");
    std::fs::write(rel.join("marker"), "rel-marker\n").unwrap();

    let spec = container("links", &image)
        .log_path("links.log")
        .mount(bind(&abs, images::ESCAPE_ABS_LINK))
        .mount(bind(&rel, images::ESCAPE_REL_LINK))
        .command(&[
            "/bin/sh",
            "-c",
            &format!(
                "cat {}/marker {}/marker",
                images::ESCAPE_ABS_INSIDE,
                images::ESCAPE_REL_INSIDE
            ),
        ]);
    let (status, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
    assert_eq!(messages, ["abs-marker", "rel-marker"], "{status:?}");
    // Nothing was mounted or made at those paths on the node.
    let escaped: Vec<String> = node_mount_points(&env.node)
        .into_iter()
        .filter(|p| p.starts_with("/tmp/berth-e2e-escape"))
        .collect();
    assert_eq!(escaped, Vec::<String>::new());
    for inside in [images::ESCAPE_ABS_INSIDE, images::ESCAPE_REL_INSIDE] {
        env.node.run(&["test", "!", "-e", inside]);
    }

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

async fn the_log_is_in_the_cri_format(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("logs").await;

    // 10 characters doubled 12 times: one line of 40 KiB.
    let spec = container("plain", &image).log_path("plain.log").shell(
        "printf 'one\\ntwo\\nthree\\n'; \
         s=0123456789; while [ ${#s} -lt 40960 ]; do s=$s$s; done; echo \"$s\"; \
         echo to-stderr >&2",
    );
    let (status, _) = env.run_to_exit(&pod_id, &pod, &spec).await;
    let path = env.log(&pod, &spec);
    assert_eq!(status.log_path, path.display().to_string());
    let lines = read_log(&path);
    let long: String = "0123456789".repeat(4096);
    let stdout: Vec<_> = lines.iter().filter(|l| l.stream == "stdout").collect();
    let shape: Vec<(bool, usize)> = stdout.iter().map(|l| (l.partial, l.content.len())).collect();
    assert_eq!(
        shape,
        [
            (false, 3),
            (false, 3),
            (false, 5),
            (true, LOG_LINE_MAX),
            (true, LOG_LINE_MAX),
            (false, long.len() - 2 * LOG_LINE_MAX),
        ]
    );
    assert_eq!(log_messages(&lines, Some("stdout")), ["one", "two", "three", long.as_str()]);
    assert_eq!(log_messages(&lines, Some("stderr")), ["to-stderr"]);

    // With a tty, both streams are the terminal's, written as stdout.
    let spec = container("tty", &image)
        .log_path("tty.log")
        .tty(true)
        .shell("echo hello; echo from-stderr >&2");
    env.run_to_exit(&pod_id, &pod, &spec).await;
    let lines = read_log(env.log(&pod, &spec));
    assert!(lines.iter().all(|l| l.stream == "stdout"), "{lines:?}");
    let messages: Vec<String> = log_messages(&lines, None)
        .into_iter()
        .map(|m| m.trim_end_matches('\r').to_string())
        .collect();
    assert_eq!(messages, ["hello", "from-stderr"]);

    // ReopenContainerLog: after a rotation the writer starts a new file at the same path.
    let spec = container("ticker", &image)
        .log_path("ticker.log")
        .shell("i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done");
    let id = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();
    let path = env.log(&pod, &spec);
    wait_log(&path, EXIT_TIMEOUT, |m| m == "tick 2").await;
    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    env.cri.reopen_container_log(&id).await.expect("ReopenContainerLog");
    let fresh = wait_log(&path, EXIT_TIMEOUT, |m| m.starts_with("tick ")).await;
    let first_new = log_messages(&fresh, None)[0].clone();
    let old = log_messages(&read_log(&rotated), None);
    assert!(!old.contains(&first_new), "{first_new:?} is in both files");
    env.cri.stop_container(&id, 0).await.unwrap();
    // A container that is not running has no log to reopen.
    let err = env.cri.reopen_container_log(&id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

async fn exit_codes_and_reasons(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("exits").await;

    let oom = container("oom", &image).memory_limit(20 << 20).command(&[
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ]);
    let cases = [
        (container("zero", &image).shell("exit 0"), 0, "Completed"),
        (container("three", &image).shell("exit 3"), 3, "Error"),
        (oom, 137, "OOMKilled"),
    ];
    for (spec, exit_code, reason) in cases {
        let before = now_nanos();
        let id = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();
        let status = env.cri.wait_exited(&id, EXIT_TIMEOUT).await;
        assert_eq!((status.exit_code, status.reason.as_str()), (exit_code, reason), "{status:?}");
        assert!(before <= status.created_at, "{status:?}");
        assert!(status.created_at <= status.started_at, "{status:?}");
        assert!(status.started_at <= status.finished_at, "{status:?}");
        assert!(status.finished_at <= now_nanos(), "{status:?}");
        // The memory limit is reported as given.
        let limit = status.resources.and_then(|r| r.linux).map(|l| l.memory_limit_in_bytes);
        let expected = spec.config.linux.as_ref().and_then(|l| l.resources.as_ref());
        assert_eq!(limit, expected.map(|r| r.memory_limit_in_bytes));
    }

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

/// The processes an ExecSync of `ps` sees in a container, by command line.
async fn processes_seen(env: &mut Env, id: &str) -> Vec<String> {
    let out = env.cri.exec_sync(id, &["ps", "-o", "pid,args"], 10).await.expect("ExecSync ps");
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().skip(1).map(|l| l.trim().to_string()).collect()
}

async fn pid_namespaces_of_the_pod_the_container_and_the_node(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let sleeper = |name: &str, mode: NamespaceMode| {
        container(name, &image).command(&["sleep", "3600"]).pid_mode(mode)
    };

    // One namespace for the pod: its monitor is pid 1, and each container sees the other.
    let pod = env.pod("shared").pid(NamespaceMode::Pod);
    let pod_id = env.cri.run_pod(&pod).await.unwrap();
    let a = env.cri.run_container(&pod_id, &pod, &sleeper("a", NamespaceMode::Pod)).await.unwrap();
    let b = env.cri.run_container(&pod_id, &pod, &sleeper("b", NamespaceMode::Pod)).await.unwrap();
    let seen = processes_seen(&mut env, &b).await;
    assert_eq!(seen.iter().filter(|p| p.ends_with("sleep 3600")).count(), 2, "{seen:?}");
    assert!(seen.iter().any(|p| p.starts_with("1 ") && p.contains(" monitor ")), "{seen:?}");
    // pid 1's command line tells a container nothing of the node's paths.
    let cmdline = env.cri.exec_sync(&b, &["cat", "/proc/1/cmdline"], 10).await.unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline.stdout).replace('\0', " ");
    assert_eq!(cmdline, format!("berth-monitor monitor --pod {pod_id} --pid-ns "));
    // The namespace outlives a container that leaves it.
    env.cri.stop_container(&a, 0).await.unwrap();
    let seen = processes_seen(&mut env, &b).await;
    assert_eq!(seen.iter().filter(|p| p.ends_with("sleep 3600")).count(), 1, "{seen:?}");
    env.stop_and_remove_pod(&pod_id).await;

    // One per container: the container's own process is pid 1 and sees no other container.
    let pod = env.pod("own").pid(NamespaceMode::Container);
    let pod_id = env.cri.run_pod(&pod).await.unwrap();
    let c = NamespaceMode::Container;
    let a = env.cri.run_container(&pod_id, &pod, &sleeper("a", c)).await.unwrap();
    env.cri.run_container(&pod_id, &pod, &sleeper("b", c)).await.unwrap();
    let seen = processes_seen(&mut env, &a).await;
    assert_eq!(seen.iter().filter(|p| p.contains("sleep")).collect::<Vec<_>>(), ["1 sleep 3600"]);
    env.stop_and_remove_pod(&pod_id).await;

    // The node's: berthd is in sight.
    let pod = env.pod("node").pid(NamespaceMode::Node);
    let pod_id = env.cri.run_pod(&pod).await.unwrap();
    let a = env.cri.run_container(&pod_id, &pod, &sleeper("a", NamespaceMode::Node)).await.unwrap();
    let seen = processes_seen(&mut env, &a).await;
    let berthd = env.daemon.pid().as_raw().to_string();
    assert!(seen.iter().any(|p| p.split_whitespace().next() == Some(&berthd)), "{seen:?}");
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

async fn an_image_removed_under_a_container_keeps_its_layers_until_the_container_goes(
    handler: &'static str,
) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("held").await;
    let spec = container("c", &image).command(&["sleep", "3600"]);
    let id = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();
    let snapshots = env.daemon.root.join("images/snapshots");
    let layers = entries(&snapshots).len();
    assert!(layers > 0);

    // RemoveImage collects garbage, but not what a container runs on.
    env.cri.remove_image(&image).await.expect("RemoveImage");
    assert_eq!(entries(&snapshots).len(), layers, "layers of a running container collected");
    let out = env.cri.exec_sync(&id, &["ls", "/bin/busybox"], 10).await.unwrap();
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));

    // Once the container is gone, the next collection takes them.
    env.cri.stop_container(&id, 0).await.unwrap();
    env.cri.remove_container(&id).await.unwrap();
    env.cri.remove_image(&image).await.expect("RemoveImage of an absent image");
    assert_eq!(entries(&snapshots), Vec::<String>::new(), "layers left after the container");
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

async fn stdin_is_kept_open_only_when_asked_for(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("stdin").await;
    // `cat` ends at the end of its input: /dev/null without stdin, never with it.
    let without = container("without", &image).command(&["cat"]);
    let with = container("with", &image).command(&["cat"]).stdin(true, false);
    let without = env.cri.run_container(&pod_id, &pod, &without).await.unwrap();
    let with = env.cri.run_container(&pod_id, &pod, &with).await.unwrap();
    let status = env.cri.wait_exited(&without, EXIT_TIMEOUT).await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = env.cri.container(&with).await;
    assert_eq!(status.state, ContainerState::ContainerRunning as i32, "{status:?}");
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

async fn stop_signals_waits_the_grace_period_and_kills(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("stops").await;

    // Ignores SIGTERM: killed once the 2 s are up.
    let stubborn = container("stubborn", &image)
        .log_path("stubborn.log")
        .shell("trap '' TERM; echo ready; while true; do sleep 0.1; done");
    // Exits on SIGTERM within the grace period.
    let polite = container("polite", &image)
        .log_path("polite.log")
        .shell("trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done");
    // Its own stop signal.
    let usr1 = container("usr1", &image)
        .log_path("usr1.log")
        .stop_signal(Signal::Sigusr1)
        .shell("trap 'exit 4' USR1; trap '' TERM; echo ready; while true; do sleep 0.1; done");
    let sleeper =
        container("sleeper", &image).log_path("sleeper.log").shell("echo ready; exec sleep 1000");

    // (spec, grace period, at least, at most, exit code)
    let secs = Duration::from_secs;
    let cases = [
        (stubborn, 2, secs(2), secs(8), 137),
        (polite, 10, Duration::ZERO, secs(5), 0),
        (usr1, 10, Duration::ZERO, secs(5), 4),
        (sleeper, 0, Duration::ZERO, secs(2), 137),
    ];
    for (spec, timeout, at_least, at_most, exit_code) in cases {
        let id = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();
        wait_log(&env.log(&pod, &spec), EXIT_TIMEOUT, |m| m == "ready").await;
        let started = Instant::now();
        env.cri.stop_container(&id, timeout).await.expect("StopContainer");
        let took = started.elapsed();
        let name = &spec.config.metadata.as_ref().unwrap().name;
        assert!(at_least <= took && took <= at_most, "{name}: stop took {took:?}");
        let status = env.cri.container(&id).await;
        assert_eq!(status.state(), ContainerState::ContainerExited, "{name}: {status:?}");
        assert_eq!(status.exit_code, exit_code, "{name}: {status:?}");
        // Stopping a stopped container is fine, and changes nothing.
        env.cri.stop_container(&id, timeout).await.expect("StopContainer again");
        assert_eq!(env.cri.container(&id).await.finished_at, status.finished_at);
    }

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

async fn exec_sync_output_exit_codes_and_timeout(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("exec").await;
    let spec = container("target", &image).env("FOO", "from-config").command(&["sleep", "1000"]);
    let id = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();

    let out = env
        .cri
        .exec_sync(&id, &["sh", "-c", "echo out; echo err >&2; echo \"$FOO\"; exit 5"], 0)
        .await
        .expect("ExecSync");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\nfrom-config\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.exit_code, 5);

    // Binary output comes back as it is.
    let out = env.cri.exec_sync(&id, &["printf", "\\000\\377\\n"], 10).await.unwrap();
    assert_eq!(out.stdout, b"\0\xff\n");
    assert_eq!(out.exit_code, 0);

    let started = Instant::now();
    let err = env.cri.exec_sync(&id, &["sleep", "30"], 1).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    // The timed-out process is gone: only the container's own sleep is left.
    let out = env.cri.exec_sync(&id, &["ps"], 10).await.unwrap();
    let ps = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!ps.contains("sleep 30"), "{ps}");

    // A command that cannot run fails with its name on stderr. The exit code is the
    // executor's: 127 from the embedded one (as a shell), runc's own 255 through runc.
    let out = env.cri.exec_sync(&id, &["no-such-command"], 10).await.unwrap();
    assert_ne!(out.exit_code, 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-command"), "{stderr}");

    let err = env.cri.exec_sync(&id, &[], 0).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    env.cri.stop_container(&id, 0).await.unwrap();
    let err = env.cri.exec_sync(&id, &["true"], 0).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

async fn list_filters_stream_and_what_a_listed_container_says(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_a, a) = env.run_pod("a").await;
    let (pod_b, b) = env.run_pod("b").await;
    let sleeper = |name: &str| container(name, &image).command(&["sleep", "1000"]);

    let running = env
        .cri
        .run_container(&pod_a, &a, &sleeper("running").label("tier", "web").annotation("n", "1"))
        .await
        .unwrap();
    let created =
        env.cri.create_container(&pod_a, &a, &sleeper("created").label("tier", "db")).await;
    let created = created.unwrap();
    let exited = container("exited", &image).label("tier", "web").command(&["true"]);
    let exited = env.cri.run_container(&pod_b, &b, &exited).await.unwrap();
    env.cri.wait_exited(&exited, EXIT_TIMEOUT).await;

    let missing = format!("{}{}", &running[..63], if running.ends_with('0') { '1' } else { '0' });
    let cases = [
        (None, set(&[&running, &created, &exited])),
        (Some(containers_by_id(&running)), set(&[&running])),
        (Some(containers_by_id(&created[..20])), set(&[&created])),
        (Some(containers_by_id(&missing)), set(&[])),
        (Some(containers_by_state(ContainerState::ContainerRunning)), set(&[&running])),
        (Some(containers_by_state(ContainerState::ContainerCreated)), set(&[&created])),
        (Some(containers_by_state(ContainerState::ContainerExited)), set(&[&exited])),
        (Some(containers_by_state(ContainerState::ContainerUnknown)), set(&[])),
        (Some(containers_by_pod(&pod_a)), set(&[&running, &created])),
        (Some(containers_by_pod(&pod_b)), set(&[&exited])),
        (Some(containers_by_labels(&[("tier", "web")])), set(&[&running, &exited])),
        (Some(containers_by_labels(&[("tier", "web"), ("app", "exited")])), set(&[&exited])),
        (Some(containers_by_labels(&[("tier", "cache")])), set(&[])),
        (
            Some(berth_cri_server::proto::ContainerFilter {
                label_selector: containers_by_labels(&[("tier", "web")]).label_selector,
                ..containers_by_pod(&pod_a)
            }),
            set(&[&running]),
        ),
    ];
    for (filter, want) in cases {
        let listed = env.cri.list_containers(filter.clone()).await;
        assert_eq!(ids(&listed), want, "ListContainers {filter:?}");
        let streamed = env.cri.stream_containers(filter.clone()).await;
        assert_eq!(ids(&streamed), want, "StreamContainers {filter:?}");
    }

    let listed = env.cri.list_containers(Some(containers_by_id(&running))).await;
    let c = &listed[0];
    let oci = &TestImages::get().oci;
    let repository = format!("{}/berth-test/busybox", env.registry.addr);
    assert_eq!(c.pod_sandbox_id, pod_a);
    assert_eq!(c.metadata.as_ref().map(|m| (m.name.as_str(), m.attempt)), Some(("running", 0)));
    assert_eq!(c.image.as_ref().map(|i| i.image.as_str()), Some(image.as_str()));
    assert_eq!(c.image_id, oci.config.digest);
    assert_eq!(c.image_ref, format!("{repository}@{}", oci.digest()));
    assert_eq!(c.state(), ContainerState::ContainerRunning);
    assert!(c.created_at > 0);
    assert_eq!(c.labels["tier"], "web");
    assert_eq!(c.annotations["n"], "1");
    // ContainerStatus by a unique prefix names the same container.
    assert_eq!(env.cri.container(&running[..12]).await.id, running);
    let err = env.cri.container_status("", false).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    env.stop_and_remove_pod(&pod_a).await;
    env.stop_and_remove_pod(&pod_b).await;
    env.assert_no_containers().await;
}

async fn stop_pod_sandbox_stops_its_containers_and_remove_removes_them(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("web").await;
    let (other_id, other) = env.run_pod("other").await;
    let sleeper = |name: &str| container(name, &image).command(&["sleep", "1000"]);
    let one = env.cri.run_container(&pod_id, &pod, &sleeper("one")).await.unwrap();
    let two = env.cri.run_container(&pod_id, &pod, &sleeper("two")).await.unwrap();
    let created = env.cri.create_container(&pod_id, &pod, &sleeper("created")).await.unwrap();
    let elsewhere = env.cri.run_container(&other_id, &other, &sleeper("elsewhere")).await.unwrap();

    env.cri.stop_pod(&pod_id).await.expect("StopPodSandbox");
    for id in [&one, &two] {
        let status = env.cri.container(id).await;
        assert_eq!(status.state(), ContainerState::ContainerExited, "{status:?}");
        assert!(status.finished_at > 0, "{status:?}");
    }
    // The other pod's container runs on.
    assert_eq!(env.cri.container(&elsewhere).await.state(), ContainerState::ContainerRunning);
    // A stopped pod takes no new containers.
    let err = env.cri.create_container(&pod_id, &pod, &sleeper("late")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    env.cri.remove_pod(&pod_id).await.expect("RemovePodSandbox");
    for id in [&one, &two, &created] {
        let err = env.cri.container_status(id, false).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        // Stopping and removing what is gone is fine, as the CRI asks.
        env.cri.stop_container(id, 0).await.expect("StopContainer of a removed container");
        env.cri.remove_container(id).await.expect("RemoveContainer of a removed container");
    }
    let listed = env.cri.list_containers(None).await;
    assert_eq!(ids(&listed), set(&[&elsewhere]));
    assert_eq!(env.container_dirs(), vec![elsewhere.clone()]);

    env.stop_and_remove_pod(&other_id).await;
    env.assert_no_containers().await;
    // Removing a removed container is fine.
    env.cri.remove_container(&one).await.expect("RemoveContainer of a removed container");
}

async fn bad_input_fails_and_leaves_nothing(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("bad").await;
    let cgroups_before = env.node.cgroup_children();
    let not_pulled = format!("{}/berth-test/busybox:never-pushed", env.registry.addr);

    // (what, container, a word the error must name)
    let cases = [
        ("an image not pulled", container("c", &not_pulled), "never-pushed".to_string()),
        (
            "a relative mount source",
            container("c", &image).mount(bind("relative/dir", "/data")),
            "relative/dir".to_string(),
        ),
        (
            "an unknown user name",
            container("c", &image).run_as_username("no-such-user"),
            "no-such-user".to_string(),
        ),
        (
            "a missing executable",
            container("c", &image).command(&["/no/such/binary"]),
            "/no/such/binary".to_string(),
        ),
        (
            "no metadata",
            ContainerSpec {
                config: berth_cri_server::proto::ContainerConfig {
                    metadata: None,
                    ..container("c", &image).config
                },
            },
            "metadata".to_string(),
        ),
    ];
    for (what, spec, word) in cases {
        let err = env.cri.create_container(&pod_id, &pod, &spec).await.unwrap_err();
        assert!(err.message().contains(&word), "{what}: {err:?}");
        assert_eq!(env.cri.list_containers(None).await, Vec::<Container>::new(), "{what}");
        assert_eq!(env.container_dirs(), Vec::<String>::new(), "{what}");
        assert_eq!(env.node.cgroup_children(), cgroups_before, "{what}: cgroups left");
    }
    // An unknown pod: this one's id, but for the last character.
    let flip = if pod_id.ends_with('0') { '1' } else { '0' };
    let unknown = format!("{}{flip}", &pod_id[..63]);
    let err = env.cri.create_container(&unknown, &pod, &container("c", &image)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // The name was never taken: the same container can be made now.
    let id = env.cri.create_container(&pod_id, &pod, &container("c", &image)).await.unwrap();
    env.cri.remove_container(&id).await.unwrap();
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

/// What must survive a berthd that is killed and started again.
#[derive(Debug, PartialEq)]
struct Kept {
    id: String,
    state: ContainerState,
    created_at: i64,
    started_at: i64,
}

async fn kept(cri: &mut Cri, ids: &[String]) -> Vec<Kept> {
    let mut all = Vec::new();
    for id in ids {
        let status = cri.container(id).await;
        all.push(Kept {
            id: status.id.clone(),
            state: status.state(),
            created_at: status.created_at,
            started_at: status.started_at,
        });
    }
    all
}

fn log_sizes(paths: &[PathBuf]) -> Vec<u64> {
    paths.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).collect()
}

async fn containers_outlive_a_killed_berthd(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let pods = [env.run_pod("left").await, env.run_pod("right").await];
    let trigger = env.dir("trigger");
    let tick = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done";
    // The first one ends by itself once the trigger file appears: while berthd is down.
    let until_trigger =
        "i=0; while [ ! -e /trigger/go ]; do echo tick $i; i=$((i+1)); sleep 0.1; done; exit 7";

    let mut ids = Vec::new();
    let mut logs = Vec::new();
    for n in 0..10 {
        let (pod_id, pod) = &pods[n % 2];
        let mut spec =
            container(&format!("ticker-{n}"), &image).log_path(&format!("ticker-{n}.log"));
        spec = if n == 0 {
            spec.mount(Mount { readonly: true, ..bind(&trigger, "/trigger") }).shell(until_trigger)
        } else {
            spec.shell(tick)
        };
        ids.push(env.cri.run_container(pod_id, pod, &spec).await.unwrap());
        logs.push(env.log(pod, &spec));
    }
    for log in &logs {
        wait_log(log, EXIT_TIMEOUT, |m| m == "tick 1").await;
    }
    let before = kept(&mut env.cri, &ids).await;
    assert!(before.iter().all(|k| k.state == ContainerState::ContainerRunning), "{before:?}");

    env.kill_daemon().await;
    let down = log_sizes(&logs);
    let triggered_at = now_nanos();
    std::fs::write(trigger.join("go"), "").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = log_sizes(&logs);
    for n in 1..10 {
        assert!(later[n] > down[n], "ticker-{n}'s log stopped growing while berthd was down");
    }

    env.start_daemon_again().await;
    let listed = ids_sorted(&env.cri.list_containers(None).await);
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, expected);
    let after = kept(&mut env.cri, &ids).await;
    assert_eq!(after[1..], before[1..], "the running ones are as they were");
    assert_eq!((&after[0].id, after[0].created_at), (&before[0].id, before[0].created_at));
    let first = env.cri.container(&ids[0]).await;
    assert_eq!(first.state(), ContainerState::ContainerExited, "{first:?}");
    assert_eq!((first.exit_code, first.reason.as_str()), (7, "Error"), "{first:?}");
    assert!(triggered_at <= first.finished_at && first.finished_at <= now_nanos(), "{first:?}");
    // The logs go on.
    let restarted = log_sizes(&logs);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = log_sizes(&logs);
    for n in 1..10 {
        assert!(now[n] > restarted[n], "ticker-{n}'s log stopped after the restart");
    }

    for (pod_id, _) in &pods {
        env.cri.stop_pod(pod_id).await.expect("StopPodSandbox");
    }
    for id in &ids {
        assert_eq!(env.cri.container(id).await.state(), ContainerState::ContainerExited, "{id}");
    }
    for (pod_id, _) in &pods {
        env.cri.remove_pod(pod_id).await.expect("RemovePodSandbox");
    }
    env.assert_no_containers().await;
}

fn ids_sorted(containers: &[Container]) -> Vec<String> {
    ids(containers).into_iter().collect()
}

/// The `key=value` lines of a log, and whether any line contains `text`.
fn values(messages: &[String]) -> BTreeMap<String, String> {
    messages
        .iter()
        .filter_map(|m| m.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn says(messages: &[String], text: &str) -> bool {
    messages.iter().any(|m| m.contains(text))
}

/// `/proc/self/status` lines (`CapEff`, `Seccomp`, …) as `key=value` for [`values`].
const STATUS_AS_VALUES: &str =
    "sed -n -E 's/^(CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):[[:space:]]*/\\1=/p' /proc/self/status";

/// A Localhost profile that refuses mkdir (EPERM) and allows everything else.
const DENY_MKDIR_PROFILE: &str = r#"{"defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#;

async fn seccomp_runtime_default_localhost_unconfined_and_privileged(handler: &'static str) {
    use berth_e2e::cri::ProfileType;
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("seccomp").await;
    let profile = env.dir("seccomp").join("deny-mkdir.json");
    std::fs::write(&profile, DENY_MKDIR_PROFILE).unwrap();
    let profile = profile.display().to_string();

    // A user namespace needs no capability, so only seccomp can refuse `unshare -U`.
    let script = format!(
        "{STATUS_AS_VALUES}; /bin/busybox unshare -U true 2>&1; echo unshare=$?; \
         mkdir /tmp/made 2>&1; echo mkdir=$?"
    );
    let c = |name: &str| container(name, &image).log_path(&format!("{name}.log")).shell(&script);
    // (what, container, Seccomp mode in /proc/self/status, unshare's status, mkdir's status)
    let cases = [
        ("no profile: none, as containerd", c("none"), "0", "0", "0"),
        ("Unconfined", c("unconfined").seccomp(ProfileType::Unconfined, ""), "0", "0", "0"),
        ("RuntimeDefault", c("default").seccomp(ProfileType::RuntimeDefault, ""), "2", "1", "0"),
        (
            "runtime/default",
            c("default-path").seccomp_profile_path("runtime/default"),
            "2",
            "1",
            "0",
        ),
        ("Localhost", c("localhost").seccomp(ProfileType::Localhost, &profile), "2", "0", "1"),
        (
            "localhost/<path>",
            c("localhost-path").seccomp_profile_path(&format!("localhost/{profile}")),
            "2",
            "0",
            "1",
        ),
        (
            "privileged: none",
            c("privileged").privileged().seccomp(ProfileType::RuntimeDefault, ""),
            "0",
            "0",
            "0",
        ),
    ];
    let mut failures = Vec::new();
    for (what, spec, mode, unshare, mkdir) in cases {
        let (status, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
        let got = values(&messages);
        let get = |key: &str| got.get(key).map(String::as_str).unwrap_or("<none>");
        if (get("Seccomp"), get("unshare"), get("mkdir")) != (mode, unshare, mkdir) {
            failures.push(format!("{what}: {messages:?} ({})", status.message));
        }
        // A refused call fails with EPERM, as the profiles say.
        if (unshare == "1" || mkdir == "1") && !says(&messages, "Operation not permitted") {
            failures.push(format!("{what}: no EPERM in {messages:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // An exec runs under the container's filter too.
    let spec = container("target", &image)
        .seccomp(ProfileType::RuntimeDefault, "")
        .command(&["sleep", "1000"]);
    let id = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();
    let out = env.cri.exec_sync(&id, &["sh", "-c", STATUS_AS_VALUES], 10).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Seccomp=2"), "{out:?}");
    let out = env.cri.exec_sync(&id, &["/bin/busybox", "unshare", "-U", "true"], 10).await;
    let out = out.unwrap();
    assert_eq!(out.exit_code, 1, "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"), "{out:?}");

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

async fn bad_security_profiles_fail_create_and_leave_nothing(handler: &'static str) {
    use berth_e2e::cri::ProfileType;
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("bad-profiles").await;
    let cgroups_before = env.node.cgroup_children();
    let dir = env.dir("profiles");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let not_json = write("not-json.json", "{\"defaultAction\": ");
    let notify = write("notify.json", r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#);
    let missing = dir.join("missing.json").display().to_string();

    // (what, container, words the error must have)
    let c = || container("c", &image).shell("true");
    let cases = [
        (
            "a missing profile",
            c().seccomp(ProfileType::Localhost, &missing),
            vec![missing.as_str()],
        ),
        ("not JSON", c().seccomp(ProfileType::Localhost, &not_json), vec![not_json.as_str()]),
        (
            "an action berth cannot take",
            c().seccomp(ProfileType::Localhost, &notify),
            vec![notify.as_str(), "SCMP_ACT_NOTIFY"],
        ),
        ("a relative path", c().seccomp(ProfileType::Localhost, "p.json"), vec!["absolute"]),
        ("an unknown profile path", c().seccomp_profile_path("bogus"), vec!["bogus"]),
        // This node has no AppArmor: a profile of its own cannot be had.
        ("an AppArmor profile", c().apparmor(ProfileType::Localhost, "custom"), vec!["custom"]),
    ];
    for (what, spec, words) in cases {
        let err = env.cri.create_container(&pod_id, &pod, &spec).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        for word in words {
            assert!(err.message().contains(word), "{what}: {err:?} should name {word}");
        }
        assert_eq!(env.cri.list_containers(None).await, Vec::<Container>::new(), "{what}");
        assert_eq!(env.container_dirs(), Vec::<String>::new(), "{what}");
        assert_eq!(env.node.cgroup_children(), cgroups_before, "{what}: cgroups left");
    }
    // The runtime's default AppArmor profile is skipped on a node without AppArmor.
    let spec = c().apparmor(ProfileType::RuntimeDefault, "").log_path("apparmor.log");
    let (status, _) = env.run_to_exit(&pod_id, &pod, &spec).await;
    assert_eq!(status.exit_code, 0, "{status:?}");

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

async fn capabilities_no_new_privs_and_a_read_only_root(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("caps").await;
    let data = env.dir("caps-data");

    let script = format!(
        "{STATUS_AS_VALUES}; /bin/busybox chown 1:1 /tmp 2>&1; echo chown=$?; \
         touch /x 2>&1; echo root=$?; touch /tmp/x 2>&1; echo tmp=$?; \
         touch /data/x 2>&1; echo data=$?"
    );
    let c = |name: &str| {
        container(name, &image)
            .log_path(&format!("{name}.log"))
            .mount(bind(&data, "/data"))
            .shell(&script)
    };
    // containerd's default set; the same + NET_ADMIN (bit 12); none.
    let default = "00000000a80425fb";
    let net_admin = "00000000a80435fb";
    let none = "0000000000000000";
    // (what, container, CapEff, CapPrm, CapBnd, NoNewPrivs, chown, root, tmp, data)
    type Row<'a> = (&'a str, ContainerSpec, [&'a str; 8]);
    let rows: Vec<Row> = vec![
        ("default", c("default"), [default, default, default, "0", "0", "0", "0", "0"]),
        (
            "add NET_ADMIN",
            c("net-admin").capabilities(&["NET_ADMIN"], &[]),
            [net_admin, net_admin, net_admin, "0", "0", "0", "0", "0"],
        ),
        (
            "drop ALL",
            c("drop-all").capabilities(&[], &["ALL"]),
            [none, none, none, "0", "1", "0", "0", "0"],
        ),
        // (The image's /tmp is 1777; /data is the node's 0755 directory.)
        (
            "a user that is not root",
            c("user").run_as_user(1000),
            [none, none, default, "0", "1", "1", "0", "1"],
        ),
        (
            "no_new_privs",
            c("nnp").no_new_privs(),
            [default, default, default, "1", "0", "0", "0", "0"],
        ),
        (
            "readonly_rootfs",
            c("read-only").readonly_rootfs(),
            [default, default, default, "0", "1", "1", "1", "0"],
        ),
    ];
    let keys = ["CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "chown", "root", "tmp", "data"];
    let mut failures = Vec::new();
    for (what, spec, want) in rows {
        let (_, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
        let got = values(&messages);
        for (key, want) in keys.iter().zip(want) {
            let value = got.get(*key).map(String::as_str);
            if value != Some(want) {
                failures.push(format!("{what}: {key} is {value:?}, not {want} ({messages:?})"));
            }
        }
    }
    // A read-only root says so.
    let spec = c("read-only-2").readonly_rootfs();
    let (_, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
    assert!(says(&messages, "Read-only file system"), "{messages:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

async fn masked_and_read_only_paths_by_default_not_when_empty_or_privileged(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("masks").await;

    // /proc/timer_list (masked; /proc/kcore is not on every kernel): mounts on it and bytes
    // read; /proc/sys: read-only mounts on it, and writing an IPC sysctl (of the pod's own
    // namespace) its current value.
    let script = "echo timer_list=$(grep -c ' /proc/timer_list ' /proc/self/mountinfo); \
        echo timer_bytes=$(head -c 4 /proc/timer_list 2>/dev/null | wc -c); \
        echo sys=$(grep -c ' /proc/sys ro' /proc/self/mountinfo); \
        v=$(cat /proc/sys/kernel/msgmax); (echo $v > /proc/sys/kernel/msgmax) 2>&1; \
        echo write=$?";
    let c = |name: &str| container(name, &image).log_path(&format!("{name}.log")).shell(script);
    // (what, container, [mounts on timer_list, its bytes read, /proc/sys ro, write status])
    let rows = [
        ("the kubelet's lists", c("default"), ["1", "0", "1", "1"]),
        (
            "empty lists (procMount: Unmasked)",
            c("unmasked").masked_paths(&[]).readonly_paths(&[]),
            ["0", "4", "0", "0"],
        ),
        ("privileged", c("privileged").privileged(), ["0", "4", "0", "0"]),
    ];
    let keys = ["timer_list", "timer_bytes", "sys", "write"];
    let mut failures = Vec::new();
    for (what, spec, want) in rows {
        let (_, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
        let got = values(&messages);
        for (key, want) in keys.iter().zip(want) {
            let value = got.get(*key).map(String::as_str).unwrap_or("<none>");
            if value != want {
                failures.push(format!("{what}: {key} is {value}, not {want} ({messages:?})"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

async fn supplemental_groups_strict_and_merge_and_inherited_rlimits(handler: &'static str) {
    use berth_cri_server::proto::SupplementalGroupsPolicy;
    let mut env = Env::start(handler).await;
    let image = env.image(images::RUN_CMD_REF).await;
    let (pod_id, pod) = env.run_pod("groups").await;

    // The image's /etc/group puts user 1000 in group 2000 too; Strict leaves that out.
    let cases = [
        (SupplementalGroupsPolicy::Merge, vec![1000, 2000, 3000]),
        (SupplementalGroupsPolicy::Strict, vec![1000, 3000]),
    ];
    for (policy, groups) in cases {
        let name = format!("{policy:?}").to_lowercase();
        let spec = container(&name, &image)
            .log_path(&format!("{name}.log"))
            .command(&[images::PROBE])
            .run_as_user(1000)
            .supplemental_groups(&[3000])
            .supplemental_groups_policy(policy);
        let (status, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
        let probe = probe_output(&messages);
        let want: BTreeSet<i64> = groups.iter().copied().collect();
        assert_eq!(probe.get("groups").map(|g| gid_set(g)), Some(want), "{policy:?}: {messages:?}");
        let user = status.user.and_then(|u| u.linux).expect("ContainerStatus.user");
        assert_eq!(
            (user.uid, user.gid, user.supplemental_groups),
            (1000, 1000, groups),
            "{policy:?}"
        );
    }

    // No rlimits of berth's own: a container has berthd's (through its monitor).
    let spec = container("limits", &image).log_path("limits.log").command(&[
        "grep",
        "-E",
        "^Max (open files|processes|core file size)",
        "/proc/self/limits",
    ]);
    let (_, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", env.daemon.pid())).unwrap();
    let berthd: Vec<String> = limits
        .lines()
        .filter(|l| {
            ["Max open files", "Max processes", "Max core file size"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let container: Vec<String> =
        messages.iter().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(container, berthd);

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

berth_e2e::handler_cases!(
    the_process_follows_the_image_and_config_rules,
    read_only_and_read_write_mounts,
    mount_propagation_private_host_to_container_and_bidirectional,
    a_recursive_read_only_mount_is_read_only_below_too,
    a_missing_host_directory_is_created,
    a_symlink_out_of_the_root_as_mount_target_stays_inside,
    the_log_is_in_the_cri_format,
    exit_codes_and_reasons,
    pid_namespaces_of_the_pod_the_container_and_the_node,
    an_image_removed_under_a_container_keeps_its_layers_until_the_container_goes,
    stdin_is_kept_open_only_when_asked_for,
    stop_signals_waits_the_grace_period_and_kills,
    exec_sync_output_exit_codes_and_timeout,
    list_filters_stream_and_what_a_listed_container_says,
    stop_pod_sandbox_stops_its_containers_and_remove_removes_them,
    bad_input_fails_and_leaves_nothing,
    containers_outlive_a_killed_berthd,
    the_container_runs_in_the_cgroup_berth_made,
    seccomp_runtime_default_localhost_unconfined_and_privileged,
    bad_security_profiles_fail_create_and_leave_nothing,
    capabilities_no_new_privs_and_a_read_only_root,
    masked_and_read_only_paths_by_default_not_when_empty_or_privileged,
    supplemental_groups_strict_and_merge_and_inherited_rlimits,
);

/// Where the container's process really is: in the cgroup berth made for it (with its limits),
/// in every hierarchy berth manages, whichever runtime put it there.
async fn the_container_runs_in_the_cgroup_berth_made(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("cgroup").await;
    let spec = container("c", &image).memory_limit(64 << 20).command(&["sleep", "1000"]);
    let id = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();
    let info = env.cri.container_info(&id).await;
    assert_eq!(info["runtimeHandler"], handler, "{info}");
    let runtime_type = info["runtimeType"].as_str().unwrap_or_default();
    assert!(runtime_type.contains(if handler.is_empty() { "embedded" } else { handler }), "{info}");
    let pid = info["pid"].as_u64().expect("the container's pid");
    let cgroup = info["cgroup"].as_str().expect("the container's cgroup").to_string();
    let dirs = env.node.cgroup_dirs();
    assert!(!dirs.is_empty());
    for node_dir in dirs {
        let dir = node_dir.join(cgroup.trim_start_matches('/'));
        let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
        assert!(
            procs.lines().any(|p| p.trim() == pid.to_string()),
            "pid {pid} is not in {}: {procs:?}",
            dir.display()
        );
        let limit = dir.join("memory.limit_in_bytes");
        if limit.exists() {
            assert_eq!(std::fs::read_to_string(limit).unwrap().trim(), (64u64 << 20).to_string());
        }
    }
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

/// Status lists the embedded executor under both its names and every runtime installed here,
/// each with the features it really has.
#[tokio::test]
async fn status_lists_the_handlers_with_their_features() {
    let node = Node::start();
    let daemon = Berthd::start(&node).await;
    let mut cri = daemon.client().await;
    let answer = cri.runtime.status(StatusRequest { verbose: true }).await.unwrap().into_inner();
    let handlers: BTreeMap<String, (bool, bool)> = answer
        .runtime_handlers
        .iter()
        .map(|h| {
            let f = h.features.expect("handler features");
            (h.name.clone(), (f.recursive_read_only_mounts, f.user_namespaces))
        })
        .collect();
    // This kernel has mount_setattr and idmaps overlay layers (user namespaces: userns.rs).
    assert_eq!(handlers.get(""), Some(&(true, true)), "{handlers:?}");
    assert_eq!(handlers.get("default"), Some(&(true, true)), "{handlers:?}");
    let installed = |name: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    // runc ≥ 1.1 (Debian's, CI's) says rro and the user namespace in its `features`.
    if installed("runc") {
        assert_eq!(handlers.get("runc"), Some(&(true, true)), "{handlers:?}");
    }
    if installed("crun") {
        assert!(handlers.contains_key("crun"), "{handlers:?}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&answer.info["runtimeHandlers"]).expect("runtimeHandlers is JSON");
    if installed("runc") {
        let version = summary["oci"]["runc"]["version"].as_str().unwrap_or_default();
        assert!(version.starts_with("runc version"), "{summary}");
    }
}

/// A pod names a handler that does not exist, or one that is configured but whose binary is
/// missing: refused, naming it, and nothing is left.
#[tokio::test]
async fn a_pod_with_an_unknown_or_unavailable_handler_is_refused() {
    let options = Options {
        extra_config: "[runtimes.missing]\npath = \"/no/such/runtime\"\n".into(),
        ..Default::default()
    };
    let mut env = Env::start_with("", options).await;
    let answer = env.cri.runtime.status(StatusRequest { verbose: false }).await.unwrap();
    let names: Vec<String> =
        answer.into_inner().runtime_handlers.into_iter().map(|h| h.name).collect();
    // The file's [runtimes] replaces the default list; the missing one is not offered.
    assert_eq!(names, ["", "default"]);

    for (handler, words) in [
        ("gvisor", &["gvisor", "not configured"][..]),
        ("missing", &["missing", "not available", "/no/such/runtime"][..]),
    ] {
        let pod = env.pod("refused").runtime_handler(handler);
        let err = env.cri.run_pod(&pod).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{handler}: {err:?}");
        for word in words {
            assert!(err.message().contains(word), "{handler}: {word:?} in {}", err.message());
        }
    }
    assert!(env.cri.list_pods(None).await.is_empty());
}
