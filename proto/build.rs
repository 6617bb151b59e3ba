//! Compiles `proto/sentinel/v1/*.proto` (the config contract),
//! `proto/sentinel/agent/v1/agent.proto` (the agent protocol) and the
//! standard `grpc.health.v1` health protocol with protox (pure Rust, no
//! `protoc`) and generates prost messages plus the tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/sentinel/v1/resources.proto",
        "proto/sentinel/v1/stream.proto",
        "proto/sentinel/agent/v1/agent.proto",
        "proto/grpc/health/v1/health.proto",
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
