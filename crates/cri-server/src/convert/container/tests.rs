use super::*;
use crate::convert::{lookup_id, required_id};
use berth_runtime::container::{ContainerImage, ExitInfo, ResolvedUser, RECORD_VERSION};
use std::path::PathBuf;

fn record(id: &str, pod_id: &str, state: ContainerState) -> ContainerRecord {
    ContainerRecord {
        version: RECORD_VERSION,
        id: id.into(),
        name: "app_p_ns_uid_2".into(),
        pod_id: pod_id.into(),
        config: rt::ContainerConfig {
            metadata: rt::ContainerMetadata { name: "app".into(), attempt: 2 },
            image: "registry.test/app:1".into(),
            labels: [("tier".to_string(), "web".to_string())].into(),
            annotations: [("note".to_string(), "x".to_string())].into(),
            ..Default::default()
        },
        image: ContainerImage {
            name: "registry.test/app:1".into(),
            id: "sha256:aaaa".into(),
            reference: "registry.test/app@sha256:bbbb".into(),
        },
        log_path: Some(PathBuf::from("/var/log/pods/p/app/2.log")),
        user: ResolvedUser { uid: 1000, gid: 1000, additional_gids: vec![2000, 3000] },
        stop_signal: 15,
        created_at_nanos: 10,
        started_at_nanos: 20,
        state,
        cgroup: "pod/app".into(),
    }
}

fn exited(exit_code: i32, oom_killed: bool) -> ContainerState {
    ContainerState::Exited(ExitInfo {
        exit_code,
        signal: None,
        finished_at_nanos: 30,
        oom_killed,
        message: String::new(),
    })
}

fn bad_request(result: CriResult<impl std::fmt::Debug>) -> String {
    match result {
        Err(CriError::InvalidRequest(message)) => message,
        other => panic!("expected an invalid request, got {other:?}"),
    }
}

#[test]
fn stop_signal_names_both_ways() {
    use proto::Signal as S;
    let table = [
        (S::RuntimeDefault, ""),
        (S::Sigterm, "SIGTERM"),
        (S::Sigkill, "SIGKILL"),
        (S::Sigquit, "SIGQUIT"),
        (S::Sigint, "SIGINT"),
        (S::Sigusr1, "SIGUSR1"),
        (S::Sigwinch, "SIGWINCH"),
        (S::Sigstkflt, "SIGSTKFLT"),
        (S::Sigrtmin, "SIGRTMIN"),
        (S::Sigrtminplus1, "SIGRTMIN+1"),
        (S::Sigrtminplus15, "SIGRTMIN+15"),
        (S::Sigrtmaxminus14, "SIGRTMAX-14"),
        (S::Sigrtmaxminus1, "SIGRTMAX-1"),
        (S::Sigrtmax, "SIGRTMAX"),
    ];
    for (signal, name) in table {
        assert_eq!(stop_signal_name(signal.into()).unwrap(), name, "{signal:?}");
        assert_eq!(stop_signal_value(name), signal, "{name}");
    }
    // Aliases become the signal they stand for.
    for (alias, name, canonical) in [
        (S::Sigcld, "SIGCHLD", S::Sigchld),
        (S::Sigpoll, "SIGIO", S::Sigio),
        (S::Sigiot, "SIGABRT", S::Sigabrt),
    ] {
        assert_eq!(stop_signal_name(alias.into()).unwrap(), name);
        assert_eq!(stop_signal_value(name), canonical);
    }
    // Every value has a name that reads back as the same signal (or its canonical alias).
    for value in 0..=65 {
        let name = stop_signal_name(value).unwrap();
        let back = stop_signal_value(&name) as i32;
        assert!(back == value || [5, 12, 15].contains(&value), "{value} -> {name} -> {back}");
    }
    assert!(bad_request(stop_signal_name(66)).contains("66"));
    for odd in ["SIGRTMIN+16", "SIGRTMAX-15", "SIGRTMIN+x", "SIGNOPE", "TERM"] {
        assert_eq!(stop_signal_value(odd), S::RuntimeDefault, "{odd}");
    }
}

#[test]
fn states_reasons_and_exit_codes() {
    use proto::ContainerState as P;
    let unknown_message = ending(&ContainerState::Unknown).3;
    assert!(!unknown_message.is_empty());
    let table = [
        (ContainerState::Created, P::ContainerCreated, 0, 0, ""),
        (ContainerState::Running { pid: 7 }, P::ContainerRunning, 0, 0, ""),
        (exited(0, false), P::ContainerExited, 30, 0, "Completed"),
        (exited(3, false), P::ContainerExited, 30, 3, "Error"),
        (exited(137, false), P::ContainerExited, 30, 137, "Error"),
        (exited(137, true), P::ContainerExited, 30, 137, "OOMKilled"),
        (exited(0, true), P::ContainerExited, 30, 0, "OOMKilled"),
        (ContainerState::Unknown, P::ContainerUnknown, 0, 0, "Unknown"),
    ];
    for (state, expected, finished_at, exit_code, reason) in table {
        let details = ContainerDetails { record: record("c1", "p1", state), info: None };
        let status = status_response(&details, false).status.unwrap();
        assert_eq!(status.state(), expected, "{:?}", details.record.state);
        assert_eq!(
            (status.finished_at, status.exit_code, status.reason.as_str()),
            (finished_at, exit_code, reason),
            "{:?}",
            details.record.state
        );
    }
}

#[test]
fn status_reports_the_record() {
    let mut record = record("c1", "p1", exited(1, false));
    if let ContainerState::Exited(exit) = &mut record.state {
        exit.message = "failed to start: no such file".into();
    }
    record.config.mounts = vec![rt::Mount {
        container_path: "/data".into(),
        host_path: "/srv/data".into(),
        readonly: true,
        recursive_read_only: true,
        propagation: rt::Propagation::HostToContainer,
        ..Default::default()
    }];
    record.config.resources.memory_limit_in_bytes = 20 << 20;
    record.config.resources.unified = [("memory.high".to_string(), "1M".to_string())].into();
    record.config.stop_signal = "SIGQUIT".into();
    let info = serde_json::json!({"pid": 42});
    let details = ContainerDetails { record, info: Some(info.clone()) };

    let response = status_response(&details, true);
    let info_text = response.info.get("info").expect("verbose info");
    assert_eq!(serde_json::from_str::<serde_json::Value>(info_text).unwrap(), info);
    assert!(status_response(&details, false).info.is_empty());

    let status = response.status.unwrap();
    assert_eq!(status.id, "c1");
    assert_eq!(status.metadata, Some(proto::ContainerMetadata { name: "app".into(), attempt: 2 }));
    assert_eq!((status.created_at, status.started_at), (10, 20));
    assert_eq!(status.message, "failed to start: no such file");
    assert_eq!(status.image.as_ref().unwrap().image, "registry.test/app:1");
    assert_eq!(status.image_ref, "registry.test/app@sha256:bbbb");
    assert_eq!(status.image_id, "sha256:aaaa");
    assert_eq!(status.labels["tier"], "web");
    assert_eq!(status.annotations["note"], "x");
    assert_eq!(status.log_path, "/var/log/pods/p/app/2.log");
    assert_eq!(status.stop_signal(), proto::Signal::Sigquit);
    let mount = &status.mounts[0];
    assert_eq!((mount.container_path.as_str(), mount.host_path.as_str()), ("/data", "/srv/data"));
    assert!(mount.readonly && mount.recursive_read_only);
    assert_eq!(mount.propagation(), proto::MountPropagation::PropagationHostToContainer);
    let linux = status.resources.unwrap().linux.unwrap();
    assert_eq!(linux.memory_limit_in_bytes, 20 << 20);
    assert_eq!(linux.unified["memory.high"], "1M");
    let user = status.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid, user.supplemental_groups), (1000, 1000, vec![2000, 3000]));

    let mut no_log = details.record.clone();
    no_log.log_path = None;
    no_log.config.stop_signal = String::new();
    let status = status_response(&ContainerDetails { record: no_log, info: None }, true);
    assert!(status.info.is_empty());
    let status = status.status.unwrap();
    assert_eq!(status.log_path, "");
    assert_eq!(status.stop_signal(), proto::Signal::RuntimeDefault);
}

#[test]
fn filters() {
    use proto::ContainerState as P;
    let running = record("abc123", "pod1", ContainerState::Running { pid: 1 });
    let mut exited_db = record("abd456", "pod2", exited(0, false));
    exited_db.config.labels = [("tier".to_string(), "db".to_string())].into();
    let created = record("ff0000", "pod1", ContainerState::Created);
    let unknown = record("ee0000", "pod2", ContainerState::Unknown);
    let all = [&running, &exited_db, &created, &unknown];
    let state = |s: P| Some(proto::ContainerStateValue { state: s.into() });
    let table: Vec<(proto::ContainerFilter, Vec<&str>)> = vec![
        (Default::default(), vec!["abc123", "abd456", "ff0000", "ee0000"]),
        (
            proto::ContainerFilter { id: "ab".into(), ..Default::default() },
            vec!["abc123", "abd456"],
        ),
        (proto::ContainerFilter { id: "abc123".into(), ..Default::default() }, vec!["abc123"]),
        (
            proto::ContainerFilter { state: state(P::ContainerCreated), ..Default::default() },
            vec!["ff0000"],
        ),
        (
            proto::ContainerFilter { state: state(P::ContainerRunning), ..Default::default() },
            vec!["abc123"],
        ),
        (
            proto::ContainerFilter { state: state(P::ContainerExited), ..Default::default() },
            vec!["abd456"],
        ),
        (
            proto::ContainerFilter { state: state(P::ContainerUnknown), ..Default::default() },
            vec!["ee0000"],
        ),
        (
            proto::ContainerFilter { pod_sandbox_id: "pod1".into(), ..Default::default() },
            vec!["abc123", "ff0000"],
        ),
        (
            proto::ContainerFilter {
                label_selector: [("tier".to_string(), "web".to_string())].into(),
                ..Default::default()
            },
            vec!["abc123", "ff0000", "ee0000"],
        ),
        (
            proto::ContainerFilter {
                pod_sandbox_id: "pod2".into(),
                state: state(P::ContainerExited),
                label_selector: [("tier".to_string(), "db".to_string())].into(),
                ..Default::default()
            },
            vec!["abd456"],
        ),
    ];
    for (filter, expected) in table {
        let runtime_filter = container_filter(filter.clone()).expect("a filter");
        let matched: Vec<&str> =
            all.iter().filter(|r| runtime_filter.matches(r)).map(|r| r.id.as_str()).collect();
        assert_eq!(matched, expected, "{filter:?}");
    }
    let undefined = proto::ContainerFilter {
        state: Some(proto::ContainerStateValue { state: 9 }),
        ..Default::default()
    };
    assert!(container_filter(undefined).is_none());
}

#[test]
fn listed_containers_carry_the_record() {
    let c = container(&record("c1", "p1", ContainerState::Running { pid: 3 }));
    assert_eq!((c.id.as_str(), c.pod_sandbox_id.as_str()), ("c1", "p1"));
    assert_eq!(c.metadata.as_ref().unwrap().name, "app");
    assert_eq!(c.image.as_ref().unwrap().image, "registry.test/app:1");
    assert_eq!(
        (c.image_ref.as_str(), c.image_id.as_str()),
        ("registry.test/app@sha256:bbbb", "sha256:aaaa")
    );
    assert_eq!(c.state(), proto::ContainerState::ContainerRunning);
    assert_eq!(c.created_at, 10);
    assert_eq!(c.labels["tier"], "web");
    assert_eq!(c.annotations["note"], "x");
}

fn full_config() -> proto::ContainerConfig {
    proto::ContainerConfig {
        metadata: Some(proto::ContainerMetadata { name: "app".into(), attempt: 1 }),
        image: Some(ImageSpec {
            image: "registry.test/app:1".into(),
            user_specified_image: "app:1".into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into()],
        args: vec!["-c".into(), "echo hi".into()],
        working_dir: "/work".into(),
        envs: vec![
            proto::KeyValue { key: "B".into(), value: b"2".to_vec() },
            proto::KeyValue { key: "A".into(), value: b"1".to_vec() },
            proto::KeyValue { key: "B".into(), value: b"3".to_vec() },
        ],
        mounts: vec![
            proto::Mount {
                container_path: "/a".into(),
                host_path: "/host/a".into(),
                readonly: true,
                ..Default::default()
            },
            proto::Mount {
                container_path: "/b".into(),
                host_path: "/host/b".into(),
                propagation: proto::MountPropagation::PropagationHostToContainer.into(),
                recursive_read_only: true,
                ..Default::default()
            },
            proto::Mount {
                container_path: "/c".into(),
                host_path: "/host/c".into(),
                propagation: proto::MountPropagation::PropagationBidirectional.into(),
                ..Default::default()
            },
        ],
        devices: vec![proto::Device {
            container_path: "/dev/fuse".into(),
            host_path: "/dev/fuse".into(),
            permissions: "rwm".into(),
        }],
        cdi_devices: vec![proto::CdiDevice { name: "vendor.com/gpu=0".into() }],
        labels: [("tier".to_string(), "web".to_string())].into(),
        annotations: [("note".to_string(), "x".to_string())].into(),
        log_path: "app/1.log".into(),
        stdin: true,
        stdin_once: true,
        tty: true,
        linux: Some(proto::LinuxContainerConfig {
            resources: Some(proto::LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: 50_000,
                cpu_shares: 512,
                memory_limit_in_bytes: 20 << 20,
                memory_swap_limit_in_bytes: 40 << 20,
                oom_score_adj: 100,
                cpuset_cpus: "0-1".into(),
                cpuset_mems: "0".into(),
                hugepage_limits: vec![proto::HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 4 << 20,
                }],
                unified: [("memory.high".to_string(), "10M".to_string())].into(),
            }),
            security_context: Some(proto::LinuxContainerSecurityContext {
                capabilities: Some(proto::Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    drop_capabilities: vec!["ALL".into()],
                    add_ambient_capabilities: vec!["NET_BIND_SERVICE".into()],
                }),
                privileged: true,
                namespace_options: Some(proto::NamespaceOption {
                    pid: proto::NamespaceMode::Target.into(),
                    target_id: "other".into(),
                    ..Default::default()
                }),
                run_as_user: Some(proto::Int64Value { value: 0 }),
                run_as_group: Some(proto::Int64Value { value: 2000 }),
                run_as_username: "berth".into(),
                readonly_rootfs: true,
                supplemental_groups: vec![3000, 4000],
                no_new_privs: true,
                masked_paths: vec!["/proc/kcore".into()],
                readonly_paths: vec!["/proc/sys".into()],
                seccomp: Some(proto::SecurityProfile {
                    profile_type: proto::security_profile::ProfileType::Localhost.into(),
                    localhost_ref: "/var/lib/kubelet/seccomp/p.json".into(),
                }),
                apparmor: Some(proto::SecurityProfile {
                    profile_type: proto::security_profile::ProfileType::Unconfined.into(),
                    localhost_ref: String::new(),
                }),
                selinux_options: Some(proto::SeLinuxOption {
                    user: "u".into(),
                    role: "r".into(),
                    r#type: "t".into(),
                    level: "s0".into(),
                }),
                supplemental_groups_policy: proto::SupplementalGroupsPolicy::Strict.into(),
                ..Default::default()
            }),
        }),
        stop_signal: proto::Signal::Sigquit.into(),
        ..Default::default()
    }
}

#[test]
fn create_translates_the_whole_config() {
    let config = container_config(full_config()).unwrap();
    let expected = rt::ContainerConfig {
        metadata: rt::ContainerMetadata { name: "app".into(), attempt: 1 },
        image: "registry.test/app:1".into(),
        user_specified_image: "app:1".into(),
        command: vec!["/bin/sh".into()],
        args: vec!["-c".into(), "echo hi".into()],
        working_dir: "/work".into(),
        envs: vec![("B".into(), "2".into()), ("A".into(), "1".into()), ("B".into(), "3".into())],
        mounts: vec![
            rt::Mount {
                container_path: "/a".into(),
                host_path: "/host/a".into(),
                readonly: true,
                recursive_read_only: false,
                propagation: rt::Propagation::Private,
                ..Default::default()
            },
            rt::Mount {
                container_path: "/b".into(),
                host_path: "/host/b".into(),
                readonly: false,
                recursive_read_only: true,
                propagation: rt::Propagation::HostToContainer,
                ..Default::default()
            },
            rt::Mount {
                container_path: "/c".into(),
                host_path: "/host/c".into(),
                readonly: false,
                recursive_read_only: false,
                propagation: rt::Propagation::Bidirectional,
                ..Default::default()
            },
        ],
        devices: vec![rt::Device {
            container_path: "/dev/fuse".into(),
            host_path: "/dev/fuse".into(),
            permissions: "rwm".into(),
        }],
        cdi_devices: vec!["vendor.com/gpu=0".into()],
        labels: [("tier".to_string(), "web".to_string())].into(),
        annotations: [("note".to_string(), "x".to_string())].into(),
        log_path: "app/1.log".into(),
        stdin: true,
        stdin_once: true,
        tty: true,
        resources: rt::Resources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 20 << 20,
            memory_swap_limit_in_bytes: 40 << 20,
            oom_score_adj: 100,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![rt::HugepageLimit { page_size: "2MB".into(), limit: 4 << 20 }],
            unified: [("memory.high".to_string(), "10M".to_string())].into(),
        },
        security: rt::SecurityContext {
            capabilities: rt::Capabilities {
                add: vec!["NET_ADMIN".into()],
                drop: vec!["ALL".into()],
                add_ambient: vec!["NET_BIND_SERVICE".into()],
            },
            privileged: true,
            pid: NamespaceMode::Target,
            target_id: "other".into(),
            run_as_user: Some(0),
            run_as_group: Some(2000),
            run_as_username: "berth".into(),
            readonly_rootfs: true,
            supplemental_groups: vec![3000, 4000],
            no_new_privs: true,
            masked_paths: Some(vec!["/proc/kcore".into()]),
            readonly_paths: Some(vec!["/proc/sys".into()]),
            seccomp: rt::SecurityProfile::Localhost("/var/lib/kubelet/seccomp/p.json".into()),
            apparmor: rt::SecurityProfile::Unconfined,
            selinux: Some(rt::SelinuxOptions {
                user: "u".into(),
                role: "r".into(),
                r#type: "t".into(),
                level: "s0".into(),
            }),
            supplemental_groups_policy: rt::SupplementalGroupsPolicy::Strict,
            user_namespace: rt::UsernsRequest::Unspecified,
        },
        stop_signal: "SIGQUIT".into(),
    };
    assert_eq!(config, expected);
    // The resources read back as they came in.
    let linux = full_config().linux.unwrap().resources.unwrap();
    assert_eq!(proto_resources(&config.resources), linux);
}

#[test]
fn security_context_table() {
    type Ctx = proto::LinuxContainerSecurityContext;
    let pid = |mode: proto::NamespaceMode| Ctx {
        namespace_options: Some(proto::NamespaceOption { pid: mode.into(), ..Default::default() }),
        ..Default::default()
    };
    // Nothing set: no user, the pod's PID namespace, no masked or read-only paths, no
    // seccomp, the default AppArmor profile, Merge.
    let none = rt::SecurityContext {
        masked_paths: Some(vec![]),
        readonly_paths: Some(vec![]),
        apparmor: rt::SecurityProfile::RuntimeDefault,
        ..Default::default()
    };
    let profile = |kind: proto::security_profile::ProfileType, reference: &str| {
        Some(proto::SecurityProfile { profile_type: kind.into(), localhost_ref: reference.into() })
    };
    use proto::security_profile::ProfileType as P;
    use rt::SecurityProfile as R;
    let table: Vec<(Ctx, rt::SecurityContext)> = vec![
        (Ctx::default(), none.clone()),
        (
            Ctx { run_as_user: Some(proto::Int64Value { value: 0 }), ..Default::default() },
            rt::SecurityContext { run_as_user: Some(0), ..none.clone() },
        ),
        (
            Ctx {
                run_as_username: "berth".into(),
                run_as_group: Some(proto::Int64Value { value: 5 }),
                ..Default::default()
            },
            rt::SecurityContext {
                run_as_username: "berth".into(),
                run_as_group: Some(5),
                ..none.clone()
            },
        ),
        (
            Ctx { run_as_username: "berth".into(), ..Default::default() },
            rt::SecurityContext { run_as_username: "berth".into(), ..none.clone() },
        ),
        (pid(proto::NamespaceMode::Pod), none.clone()),
        (
            pid(proto::NamespaceMode::Container),
            rt::SecurityContext { pid: NamespaceMode::Container, ..none.clone() },
        ),
        (
            pid(proto::NamespaceMode::Node),
            rt::SecurityContext { pid: NamespaceMode::Node, ..none.clone() },
        ),
        (
            Ctx { readonly_paths: vec!["/proc/bus".into()], ..Default::default() },
            rt::SecurityContext { readonly_paths: Some(vec!["/proc/bus".into()]), ..none.clone() },
        ),
        // seccomp and AppArmor: the message, else the deprecated string.
        (
            Ctx { seccomp: profile(P::RuntimeDefault, ""), ..Default::default() },
            rt::SecurityContext { seccomp: R::RuntimeDefault, ..none.clone() },
        ),
        (
            Ctx {
                seccomp: profile(P::Unconfined, ""),
                seccomp_profile_path: "runtime/default".into(),
                ..Default::default()
            },
            none.clone(),
        ),
        (
            Ctx { seccomp_profile_path: "docker/default".into(), ..Default::default() },
            rt::SecurityContext { seccomp: R::RuntimeDefault, ..none.clone() },
        ),
        (
            Ctx { seccomp_profile_path: "localhost//p.json".into(), ..Default::default() },
            rt::SecurityContext { seccomp: R::Localhost("/p.json".into()), ..none.clone() },
        ),
        (
            Ctx { apparmor: profile(P::Localhost, "custom"), ..Default::default() },
            rt::SecurityContext { apparmor: R::Localhost("custom".into()), ..none.clone() },
        ),
        (
            Ctx { apparmor_profile: "unconfined".into(), ..Default::default() },
            rt::SecurityContext { apparmor: R::Unconfined, ..none.clone() },
        ),
        (
            Ctx {
                supplemental_groups_policy: proto::SupplementalGroupsPolicy::Strict.into(),
                ..Default::default()
            },
            rt::SecurityContext {
                supplemental_groups_policy: rt::SupplementalGroupsPolicy::Strict,
                ..none.clone()
            },
        ),
        (
            Ctx {
                namespace_options: Some(proto::NamespaceOption {
                    userns_options: Some(proto::UserNamespace {
                        mode: proto::NamespaceMode::Node.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            rt::SecurityContext { user_namespace: rt::UsernsRequest::Node, ..none.clone() },
        ),
        (
            Ctx {
                namespace_options: Some(proto::NamespaceOption {
                    userns_options: Some(proto::UserNamespace {
                        mode: proto::NamespaceMode::Pod.into(),
                        uids: vec![proto::IdMapping {
                            host_id: 65536,
                            container_id: 0,
                            length: 65536,
                        }],
                        gids: vec![],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            rt::SecurityContext {
                user_namespace: rt::UsernsRequest::Pod {
                    uids: vec![rt::IdMapping { container_id: 0, host_id: 65536, length: 65536 }],
                    gids: vec![],
                },
                ..none.clone()
            },
        ),
    ];
    for (ctx, expected) in table {
        assert_eq!(security_context(ctx.clone()).unwrap(), expected, "{ctx:?}");
    }

    let refused: Vec<(Ctx, &str)> = vec![
        (
            Ctx {
                namespace_options: Some(proto::NamespaceOption {
                    userns_options: Some(proto::UserNamespace {
                        mode: proto::NamespaceMode::Container.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "user namespace mode 1",
        ),
        (
            Ctx {
                namespace_options: Some(proto::NamespaceOption { pid: 17, ..Default::default() }),
                ..Default::default()
            },
            "17",
        ),
        (
            Ctx { run_as_group: Some(proto::Int64Value { value: 5 }), ..Default::default() },
            "run_as_group is set without run_as_user",
        ),
        (Ctx { supplemental_groups_policy: 7, ..Default::default() }, "policy 7"),
        (Ctx { seccomp: profile(P::RuntimeDefault, "x"), ..Default::default() }, "\"x\""),
        (Ctx { seccomp: profile(P::Localhost, ""), ..Default::default() }, "localhost_ref"),
        (
            Ctx {
                apparmor: Some(proto::SecurityProfile {
                    profile_type: 9,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            },
            "AppArmor profile type 9",
        ),
        (Ctx { seccomp_profile_path: "bogus".into(), ..Default::default() }, "bogus"),
        (Ctx { apparmor_profile: "localhost/".into(), ..Default::default() }, "AppArmor"),
    ];
    for (ctx, words) in refused {
        let message = bad_request(security_context(ctx));
        assert!(message.contains(words), "{message}");
    }
}

#[test]
fn create_refuses_what_it_cannot_honour() {
    let no_metadata = proto::ContainerConfig { metadata: None, ..full_config() };
    assert!(bad_request(container_config(no_metadata)).contains("metadata"));

    let mut binary_env = full_config();
    binary_env.envs.push(proto::KeyValue { key: "RAW".into(), value: vec![0xff, 0xfe] });
    assert!(bad_request(container_config(binary_env)).contains("RAW"));

    let mut odd_propagation = full_config();
    odd_propagation.mounts[0].propagation = 7;
    assert!(bad_request(container_config(odd_propagation)).contains("/a"));

    // Image volumes are taken, and come back with the image's id.
    let mut image_volume = full_config();
    image_volume.mounts[1].host_path = String::new();
    image_volume.mounts[1].image = Some(ImageSpec {
        image: "registry.test/data:1".into(),
        user_specified_image: "data:1".into(),
        ..Default::default()
    });
    image_volume.mounts[1].image_sub_path = "etc".into();
    let mut config = container_config(image_volume).unwrap();
    let volume = config.mounts[1].image.as_mut().unwrap();
    assert_eq!((volume.image.as_str(), volume.sub_path.as_str()), ("registry.test/data:1", "etc"));
    volume.image_ref = "sha256:abc".into();
    let reported = proto_mount(&config.mounts[1]);
    let spec = reported.image.unwrap();
    assert_eq!(
        (spec.image.as_str(), spec.user_specified_image.as_str(), spec.image_ref.as_str()),
        ("registry.test/data:1", "data:1", "sha256:abc")
    );
    assert_eq!(reported.image_sub_path, "etc");
    assert_eq!(proto_mount(&config.mounts[0]).image, None);
    let mut sub_path_alone = full_config();
    sub_path_alone.mounts[1].image_sub_path = "etc".into();
    assert!(bad_request(container_config(sub_path_alone)).contains("without an image"));

    // Idmapped mounts are taken, both ways.
    let mut id_mapped = full_config();
    let mapping = proto::IdMapping { host_id: 1000, container_id: 0, length: 1 };
    id_mapped.mounts[2].uid_mappings = vec![mapping];
    id_mapped.mounts[2].gid_mappings = vec![mapping];
    let config = container_config(id_mapped).unwrap();
    let expected = rt::IdMapping { container_id: 0, host_id: 1000, length: 1 };
    assert_eq!(config.mounts[2].uid_mappings, [expected]);
    assert_eq!(proto_mount(&config.mounts[2]).gid_mappings, [mapping]);

    // Mount options are carried to the runtime (which checks them) and shown back.
    let mut options = full_config();
    options.mounts[0].mount_options = vec!["noexec".into(), "nosuid".into()];
    let config = container_config(options).unwrap();
    assert_eq!(config.mounts[0].options, ["noexec", "nosuid"]);
    assert_eq!(proto_mount(&config.mounts[0]).mount_options, ["noexec", "nosuid"]);

    let odd_signal = proto::ContainerConfig { stop_signal: 99, ..full_config() };
    assert!(bad_request(container_config(odd_signal)).contains("99"));

    assert!(bad_request(required_id("", "container id")).contains("container id"));
    let status = tonic::Status::from(lookup_id("", "container").unwrap_err());
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "no container has an empty id");
    assert_eq!(lookup_id("abc", "container").unwrap(), "abc");
}
