//! `skiff`: the operator CLI.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use skiff::spec;

/// Operate a Skiff fleet.
#[derive(Debug, Parser)]
#[command(name = "skiff", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check workload spec files offline, without a gateway.
    ///
    /// Exits 0 when every file is valid. Otherwise prints one line per
    /// problem, `FILE: PATH: REASON` (e.g. `web.yaml: spec.ports[1].container:
    /// 70000 is not a port`), and exits 1. Use `-` to read standard input.
    Validate {
        /// Spec files (YAML or JSON).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Print the JSON Schema of a workload spec (for editors and CI checks).
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { files } => spec::validate(&files),
        Command::Schema => spec::schema(),
    }
}
