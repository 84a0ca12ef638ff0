//! The CRI log format, stdin, and ExecSync.

use super::*;

pub(super) async fn the_log_is_in_the_cri_format(handler: &'static str) {
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

pub(super) async fn stdin_is_kept_open_only_when_asked_for(handler: &'static str) {
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

pub(super) async fn exec_sync_output_exit_codes_and_timeout(handler: &'static str) {
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
