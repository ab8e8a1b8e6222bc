//! Generates the sov.v1 Rust bindings. The `protoc` used is the one vendored by
//! `protoc-bin-vendored`, so a fresh machine needs no system protobuf compiler; set `PROTOC`
//! to use another.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let files = [
        "proto/sov/v1/api.proto",
        "proto/sov/v1/agent.proto",
        "proto/sov/v1/raft.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("sov_v1_descriptor.bin"))
        .compile_protos(&files, &["proto"])?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
