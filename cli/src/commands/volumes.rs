//! `volume ls`, `volume rm`.

use std::process::ExitCode;

use super::{CliError, io};
use crate::args::VolumeCommand;
use crate::client::{Client, ClientError};
use crate::output::{Out, age, table};

pub async fn run(client: &Client, cmd: &VolumeCommand) -> Result<ExitCode, CliError> {
    match cmd {
        VolumeCommand::Ls(o) => {
            let volumes = client.volumes().await?;
            let out = Out::new(o.output);
            if out.structured(&volumes).map_err(io("stdout"))? {
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = volumes
                .iter()
                .map(|v| {
                    vec![
                        v.id.clone(),
                        v.workload.clone(),
                        v.instance.to_string(),
                        v.node.clone(),
                        v.site.clone(),
                        if v.removing { "removing" } else { "kept" }.into(),
                        age(v.created_ms),
                    ]
                })
                .collect();
            table(
                &out,
                &["ID", "WORKLOAD", "SLOT", "NODE", "SITE", "STATE", "AGE"],
                &rows,
            )
            .map_err(io("stdout"))?;
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Rm { ids } => {
            let mut code = ExitCode::SUCCESS;
            for id in ids {
                match client.remove_volume(id).await {
                    Ok(()) => println!("{id}: removing (its node deletes the data)"),
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
