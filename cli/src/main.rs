//! `skiff`: the operator CLI.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // One binary for the whole dev fleet: its agents run it as
    // `skiff-agent` (a link to it), their containers' setup as `__shim`.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(code) = skiff_agent::entry::internal(&args) {
        return code;
    }
    let called = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("skiff");
    if called == "skiff-agent" {
        return skiff_agent::entry::main();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = skiff::args::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skiff: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(skiff::commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skiff: {}", e.line());
            e.exit_code()
        }
    }
}
