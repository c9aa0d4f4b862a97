//! `secret create`, `secret update`, `secret ls`, `secret rm`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use super::{CliError, io};
use crate::args::{SecretArgs, SecretCommand};
use crate::client::{Client, ClientError};
use crate::output::{Out, age, table};

/// The data the flags give: key → value (a key given twice is an error).
fn data(a: &SecretArgs) -> Result<BTreeMap<String, Vec<u8>>, CliError> {
    let mut out = BTreeMap::new();
    let mut add = |key: String, value: Vec<u8>, flag: &str| {
        if out.insert(key.clone(), value).is_some() {
            return Err(CliError::Usage(format!("{flag}: key {key} is given twice")));
        }
        Ok(())
    };
    for f in &a.from_file {
        let (key, path) = match f.split_once('=') {
            Some((k, p)) => (k.to_string(), Path::new(p)),
            None => {
                let p = Path::new(f);
                let key = p.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
                    CliError::Usage(format!(
                        "--from-file {f}: no file name to use as the key (KEY=PATH)"
                    ))
                })?;
                (key.to_string(), p)
            }
        };
        let value = std::fs::read(path).map_err(io(&path.display().to_string()))?;
        add(key, value, "--from-file")?;
    }
    for l in &a.from_literal {
        // The value is never printed, not even in an error.
        let (key, value) = l
            .split_once('=')
            .ok_or_else(|| CliError::Usage("--from-literal: expected KEY=VALUE".into()))?;
        add(key.to_string(), value.as_bytes().to_vec(), "--from-literal")?;
    }
    Ok(out)
}

pub async fn run(client: &Client, cmd: &SecretCommand) -> Result<ExitCode, CliError> {
    match cmd {
        SecretCommand::Create(a) | SecretCommand::Update(a) => {
            let create = matches!(cmd, SecretCommand::Create(_));
            let v = client.put_secret(&a.name, &data(a)?, create).await?;
            let out = Out::new(a.output.output);
            if out.structured(&v).map_err(io("stdout"))? {
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "secret {} {} (version {}, keys {})",
                v.name,
                if create { "created" } else { "updated" },
                v.version,
                v.keys.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        SecretCommand::Ls(o) => {
            let secrets = client.secrets().await?;
            let out = Out::new(o.output);
            if out.structured(&secrets).map_err(io("stdout"))? {
                return Ok(ExitCode::SUCCESS);
            }
            let all = client.all_namespaces();
            let rows: Vec<Vec<String>> = secrets
                .iter()
                .map(|s| {
                    all.then(|| s.namespace.clone())
                        .into_iter()
                        .chain([
                            s.name.clone(),
                            s.keys.join(","),
                            s.version.to_string(),
                            age(s.updated_ms),
                        ])
                        .collect()
                })
                .collect();
            let header = ["NAMESPACE", "NAME", "KEYS", "VERSION", "UPDATED"];
            table(&out, &header[usize::from(!all)..], &rows).map_err(io("stdout"))?;
            Ok(ExitCode::SUCCESS)
        }
        SecretCommand::Rm { names } => {
            let mut code = ExitCode::SUCCESS;
            for n in names {
                match client.delete_secret(n).await {
                    Ok(()) => println!("{n}: deleted"),
                    Err(e @ ClientError::Api { .. }) => {
                        eprintln!("skiff: {e}");
                        code = ExitCode::FAILURE;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(code)
        }
    }
}
