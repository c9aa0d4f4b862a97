//! `skiff-agent`: the node agent binary.

fn main() -> std::process::ExitCode {
    // A container's shim is this binary too; it starts before anything
    // else (no runtime, no logging) to stay small.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "__shim") {
        let dir = args
            .next()
            .map(std::path::PathBuf::from)
            .unwrap_or_default();
        return std::process::ExitCode::from(skiff_agent::runtime::shim::main(&dir) as u8);
    }
    skiff_agent::cli::main()
}
