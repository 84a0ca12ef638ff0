//! Generates the CRI v1 messages, the server traits and a client (for crictl-like tools and the
//! e2e tests) from our own proto. protoc comes from a registry crate, so a build needs nothing
//! from the host but a Rust toolchain.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let api = proto_root.join("runtime/v1/api.proto");
    // SAFETY: build scripts are single-threaded; set before anything reads the environment.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[api], &[proto_root])?;
    Ok(())
}
