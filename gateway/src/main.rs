//! `skiff-gateway`: the gateway binary.

fn main() -> std::process::ExitCode {
    eprintln!(
        "skiff-gateway {}: the gateway is not built yet; only the spec tools in `skiff` work",
        skiff_gateway::VERSION
    );
    std::process::ExitCode::from(2)
}
