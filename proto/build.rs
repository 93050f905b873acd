//! Compiles the wire contracts with `protox` (pure Rust, so no system `protoc`) and writes the
//! file descriptor set that the services serve through gRPC reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] =
    &["agentstudio/sandbox/v1/sandbox_service.proto", "agentstudio/conductor/v1/conductor_service.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    // Imports (google/protobuf/*) go into the set too: reflection clients resolve them from it.
    let file_descriptors = protox::Compiler::new(["."])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?
        .file_descriptor_set();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("agentstudio_descriptor.bin"), file_descriptors.encode_to_vec())?;
    // `bytes` fields as `Bytes`: process output moves from spool to socket without copies.
    tonic_prost_build::configure()
        .bytes(".")
        // A build streams many log lines and ends with one version: keep the event small.
        .boxed(".agentstudio.sandbox.v1.BuildTemplateEvent.event.version")
        .compile_fds(file_descriptors)?;
    Ok(())
}
