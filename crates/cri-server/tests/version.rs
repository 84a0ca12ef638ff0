//! `berthd --version` names the build: what an operator quotes in a bug report and what tells
//! which kubelets this berthd can serve.

use std::process::Command;

#[test]
fn version_names_release_commit_and_cri() {
    let output =
        Command::new(env!("CARGO_BIN_EXE_berthd")).arg("--version").output().expect("berthd runs");
    assert!(output.status.success(), "berthd --version failed: {output:?}");
    let text = String::from_utf8(output.stdout).expect("utf-8 output");
    let lines: Vec<&str> = text.lines().collect();

    assert_eq!(lines.first().copied(), Some(concat!("berthd ", env!("CARGO_PKG_VERSION"))));

    // The commit the build script found: the checkout's HEAD, or "unknown" outside git.
    let commit = lines.get(1).and_then(|line| line.strip_prefix("commit: ")).expect("commit line");
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok());
    match (std::env::var("BERTH_COMMIT"), head) {
        (Ok(given), _) if !given.trim().is_empty() => assert_eq!(commit, given.trim()),
        (_, Some(head)) => assert_eq!(commit, head.trim()),
        (_, None) => assert_eq!(commit, "unknown"),
    }

    // The CRI version served and the upstream cri-api release the proto matches, named once in
    // proto/cri-api-version.
    let upstream = include_str!("../../../proto/cri-api-version").trim();
    assert_eq!(
        lines.get(2).copied(),
        Some(format!("CRI: {} (k8s.io/cri-api {upstream})", berth_cri_server::RUNTIME_API_VERSION))
            .as_deref()
    );
    assert_eq!(lines.len(), 3, "{text}");
}
