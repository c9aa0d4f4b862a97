//! `skiff-agent`: the node agent binary.

fn main() -> std::process::ExitCode {
    // A container's setup (`__shim DIR SUPERVISOR`, or `__shim --warm
    // CGROUP SUPERVISOR STAGING`) and `exec` (`__exec DIR PID`) are this
    // binary too; they start before anything else (no async runtime, no
    // logging).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    if arg(1) == "__shim" {
        use skiff_agent::runtime::shim::{Mode, main};
        let code = if arg(2) == "--warm" {
            let cgroup = arg(3).to_string_lossy().into_owned();
            let staging = std::path::PathBuf::from(arg(5));
            main(
                Mode::Warm {
                    cgroup: &cgroup,
                    staging: &staging,
                },
                std::path::Path::new(&arg(4)),
            )
        } else {
            let dir = std::path::PathBuf::from(arg(2));
            main(Mode::Cold { dir: &dir }, std::path::Path::new(&arg(3)))
        };
        return std::process::ExitCode::from(code as u8);
    }
    if arg(1) == "__exec" {
        let dir = std::path::PathBuf::from(arg(2));
        let pid = arg(3).to_string_lossy().parse().unwrap_or(0);
        return std::process::ExitCode::from(skiff_agent::runtime::exec::main(&dir, pid) as u8);
    }
    // TLS (the gateway link, registries) with ring, whatever else the
    // dependency tree enables.
    let _ = rustls::crypto::ring::default_provider().install_default();
    skiff_agent::cli::main()
}
