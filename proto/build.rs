//! Generates the wire types and tonic services from `proto/` at build time.
//! protox compiles the `.proto` files in Rust, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["skiff/agent/v1/agent.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Secret values never reach a log through `{:?}` (see wire.rs).
        .skip_debug(["skiff.agent.v1.SecretData"])
        .compile_fds(descriptors)?;
    Ok(())
}
