//! The agent binary's entry point, also used by `skiff` (which is the
//! agent too when it runs under the name `skiff-agent`, as `skiff dev`'s
//! agents do, and always for a container's `__shim` and `__exec`).

use std::ffi::OsString;
use std::process::ExitCode;

/// A container's setup (`__shim DIR SUPERVISOR`, or `__shim --warm CGROUP
/// SUPERVISOR STAGING`) or `exec` (`__exec DIR PID`), if `args` is one:
/// they start before anything else (no async runtime, no logging).
pub fn internal(args: &[OsString]) -> Option<ExitCode> {
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    if arg(1) == "__shim" {
        use crate::runtime::shim::{Mode, main};
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
        return Some(ExitCode::from(code as u8));
    }
    if arg(1) == "__exec" {
        let dir = std::path::PathBuf::from(arg(2));
        let pid = arg(3).to_string_lossy().parse().unwrap_or(0);
        return Some(ExitCode::from(crate::runtime::exec::main(&dir, pid) as u8));
    }
    None
}

/// `skiff-agent` with the process's arguments.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if let Some(code) = internal(&args) {
        return code;
    }
    // TLS (the gateway link, registries) with ring, whatever else the
    // dependency tree enables.
    let _ = rustls::crypto::ring::default_provider().install_default();
    crate::cli::main()
}
