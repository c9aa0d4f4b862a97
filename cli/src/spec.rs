//! `skiff validate` and `skiff schema`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use skiff_proto::{Format, parse_workloads, schema::workload_schema};

fn read(path: &Path) -> std::io::Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(path)
    }
}

/// Validates every file; prints one line per problem.
pub fn validate(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for path in files {
        let shown = path.display();
        let text = match read(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{shown}: cannot read: {e}");
                failed = true;
                continue;
            }
        };
        match parse_workloads(&text, Format::from_path(path)) {
            Ok(specs) => {
                let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
                let _ = writeln!(out, "{shown}: ok ({})", names.join(", "));
            }
            Err(errors) => {
                failed = true;
                for e in errors.0 {
                    eprintln!("{shown}: {e}");
                }
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Prints the workload JSON Schema.
pub fn schema() -> ExitCode {
    let text = serde_json::to_string_pretty(&workload_schema()).expect("a schema serializes");
    println!("{text}");
    ExitCode::SUCCESS
}
