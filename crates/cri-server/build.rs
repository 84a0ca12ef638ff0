//! Generates the CRI v1 messages, the server traits and a client (for crictl-like tools and the
//! e2e tests) from our own proto. protoc comes from a registry crate, so a build needs nothing
//! from the host but a Rust toolchain.
//!
//! Also names the build for `berthd --version`: the upstream cri-api release the proto matches
//! (from `proto/cri-api-version`, the one place that says it) and the git commit built.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let proto_root = manifest_dir.join("../../proto");
    let api = proto_root.join("runtime/v1/api.proto");
    // SAFETY: build scripts are single-threaded; set before anything reads the environment.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[api], std::slice::from_ref(&proto_root))?;

    let upstream_file = proto_root.join("cri-api-version");
    println!("cargo:rerun-if-changed={}", upstream_file.display());
    let upstream = std::fs::read_to_string(&upstream_file)?;
    println!("cargo:rustc-env=BERTH_CRI_API_UPSTREAM={}", upstream.trim());

    println!("cargo:rustc-env=BERTH_COMMIT={}", commit(&manifest_dir));
    Ok(())
}

/// The commit being built: `BERTH_COMMIT` when a packaging build passes it (a source tarball has
/// no .git), else asked of git, else "unknown". Only HEAD and the ref it points to are watched,
/// so an ordinary edit does not rerun this script and relink berthd.
fn commit(manifest_dir: &Path) -> String {
    println!("cargo:rerun-if-env-changed=BERTH_COMMIT");
    if let Ok(commit) = std::env::var("BERTH_COMMIT") {
        if !commit.trim().is_empty() {
            return commit.trim().to_owned();
        }
    }
    let git = |args: &[&str]| -> Option<String> {
        let output = Command::new("git").args(args).current_dir(manifest_dir).output().ok()?;
        let text = String::from_utf8(output.stdout).ok()?;
        (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".to_owned();
    };
    // In a worktree HEAD lives in the worktree's git dir and the refs in the common one.
    let watch = |path: PathBuf| {
        // A path that does not exist would make cargo rerun the script on every build.
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    };
    let absolute = |dir: String| {
        let dir = PathBuf::from(dir);
        if dir.is_absolute() {
            dir
        } else {
            manifest_dir.join(dir)
        }
    };
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]).map(absolute) {
        watch(git_dir.join("HEAD"));
    }
    if let Some(common_dir) = git(&["rev-parse", "--git-common-dir"]).map(absolute) {
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch(common_dir.join(head_ref));
        }
        // A ref that git has packed changes here instead.
        watch(common_dir.join("packed-refs"));
    }
    commit
}
