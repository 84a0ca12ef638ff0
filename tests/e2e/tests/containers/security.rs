//! Security settings: seccomp profiles, capabilities, no_new_privs, a read-only root, masked
//! and read-only paths, supplemental groups.

use super::*;

/// A Localhost profile that refuses mkdir (EPERM) and allows everything else.
pub(super) const DENY_MKDIR_PROFILE: &str = r#"{"defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#;

pub(super) async fn seccomp_runtime_default_localhost_unconfined_and_privileged(
    handler: &'static str,
) {
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

pub(super) async fn bad_security_profiles_fail_create_and_leave_nothing(handler: &'static str) {
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

pub(super) async fn capabilities_no_new_privs_and_a_read_only_root(handler: &'static str) {
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

pub(super) async fn masked_and_read_only_paths_by_default_not_when_empty_or_privileged(
    handler: &'static str,
) {
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

pub(super) async fn supplemental_groups_strict_and_merge_and_inherited_rlimits(
    handler: &'static str,
) {
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
