//! Compiles `proto/sentinel/v1/*.proto` with protox (pure Rust, no `protoc`)
//! and generates prost messages plus the tonic client and server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/sentinel/v1/resources.proto",
        "proto/sentinel/v1/stream.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".sentinel.v1.Resource.body")
        .type_attribute(".sentinel.v1", "#[derive(serde::Serialize)]")
        .compile_fds(descriptors)?;
    Ok(())
}
