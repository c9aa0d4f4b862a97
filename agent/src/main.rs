//! `skiff-agent`: the node agent binary.

fn main() -> std::process::ExitCode {
    eprintln!(
        "skiff-agent {}: the node agent is not built yet; only the spec tools in `skiff` work",
        skiff_agent::VERSION
    );
    std::process::ExitCode::from(2)
}
