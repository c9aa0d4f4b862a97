//! `volume ls`, `volume rm`.

use std::process::ExitCode;

use super::{CliError, io};
use crate::args::VolumeCommand;
use crate::client::{Client, ClientError};
use crate::output::{Out, age, table};
use skiff_gateway::control::volumes::VolumeView;
use skiff_proto::ByteSize;

/// Its size limit, and whether its node holds it to it.
fn size(v: &VolumeView) -> String {
    match (v.size_bytes, &v.size_not_enforced) {
        (None, _) => "-".into(),
        (Some(b), None) => ByteSize::from_bytes(b).to_string(),
        (Some(b), Some(_)) => format!("{} (not enforced)", ByteSize::from_bytes(b)),
    }
}

pub async fn run(client: &Client, cmd: &VolumeCommand) -> Result<ExitCode, CliError> {
    match cmd {
        VolumeCommand::Ls(o) => {
            let volumes = client.volumes().await?;
            let out = Out::new(o.output);
            if out.structured(&volumes).map_err(io("stdout"))? {
                return Ok(ExitCode::SUCCESS);
            }
            let all = client.all_namespaces();
            let rows: Vec<Vec<String>> = volumes
                .iter()
                .map(|v| {
                    all.then(|| v.namespace.clone())
                        .into_iter()
                        .chain([
                            v.record.id.clone(),
                            v.record.workload.clone(),
                            v.record.instance.to_string(),
                            v.record.node.clone(),
                            v.record.site.clone(),
                            size(v),
                            if v.record.removing {
                                "removing"
                            } else {
                                "kept"
                            }
                            .into(),
                            age(v.record.created_ms),
                        ])
                        .collect()
                })
                .collect();
            let header = [
                "NAMESPACE",
                "ID",
                "WORKLOAD",
                "SLOT",
                "NODE",
                "SITE",
                "SIZE",
                "STATE",
                "AGE",
            ];
            table(&out, &header[usize::from(!all)..], &rows).map_err(io("stdout"))?;
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
