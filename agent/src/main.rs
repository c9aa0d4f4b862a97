//! `skiff-agent`: the node agent binary.

fn main() -> std::process::ExitCode {
    // A container's setup (`__shim DIR SUPERVISOR`) is this binary too;
    // it starts before anything else (no async runtime, no logging).
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "__shim") {
        let mut path = || {
            args.next()
                .map(std::path::PathBuf::from)
                .unwrap_or_default()
        };
        let (dir, supervisor) = (path(), path());
        return std::process::ExitCode::from(
            skiff_agent::runtime::shim::main(&dir, &supervisor) as u8
        );
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "__exec") {
        let mut args = std::env::args().skip(2);
        let dir = std::path::PathBuf::from(args.next().unwrap_or_default());
        let pid = args.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        return std::process::ExitCode::from(skiff_agent::runtime::exec::main(&dir, pid) as u8);
    }
    skiff_agent::cli::main()
}
