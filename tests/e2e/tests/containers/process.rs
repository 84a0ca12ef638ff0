//! How the process is made from the image config and the CRI config: argv, env, working
//! dir, user and groups.

use super::*;

pub(super) async fn the_process_follows_the_image_and_config_rules(handler: &'static str) {
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
