//! Generates the prost/tonic code from `proto/robustmq.proto` with a protoc that ships inside
//! the `protoc-bin-vendored` crate, so nothing needs installing.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    println!("cargo:rerun-if-changed=proto/robustmq.proto");
    // `bytes` fields as `bytes::Bytes`: record batches pass through without copies.
    tonic_prost_build::configure().bytes(".").compile_protos(&["proto/robustmq.proto"], &["proto"])?;
    Ok(())
}
