//! `token create`, `token ls`, `token rm`.

use std::process::ExitCode;

use skiff_gateway::control::Role;

use super::{CliError, io};
use crate::args::TokenCommand;
use crate::client::{Client, ClientError};
use crate::output::{Out, age, table};

fn role(s: &str) -> Result<Role, CliError> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| CliError::Usage(format!("--role {s:?}: read-only, operator or admin")))
}

pub async fn run(client: &Client, cmd: &TokenCommand) -> Result<ExitCode, CliError> {
    match cmd {
        TokenCommand::Create(a) => {
            let out = Out::new(a.output.output);
            if let Some(site) = &a.site {
                let t = client.create_join_token(site, a.ttl.std()).await?;
                if out.structured(&t).map_err(io("stdout"))? {
                    return Ok(ExitCode::SUCCESS);
                }
                let url = t.gateway_urls.first().cloned().unwrap_or_default();
                println!(
                    "join token {} for site {site} (single use, valid {})",
                    t.id, a.ttl
                );
                println!("on the node, as root (the token in the environment stays out of ps):");
                println!(
                    "  SKIFF_AGENT_JOIN_TOKEN={} skiff-agent serve --gateway {url} --ca-hash {} --name NODE",
                    t.token, t.ca_hash
                );
                if t.gateway_urls.len() > 1 {
                    println!(
                        "(the gateway is also at {})",
                        t.gateway_urls[1..].join(", ")
                    );
                }
            } else if let Some(r) = &a.role {
                let t = client
                    .create_api_token(&a.name, role(r)?, &a.namespaces)
                    .await?;
                if out.structured(&t).map_err(io("stdout"))? {
                    return Ok(ExitCode::SUCCESS);
                }
                println!(
                    "API token {} ({}, role {}); shown once:",
                    t.id, t.name, t.role
                );
                println!("{}", t.token);
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Ls(o) => {
            let join = client.join_tokens().await?;
            let api = client.api_tokens().await?;
            let out = Out::new(o.output);
            let all = serde_json::json!({ "join_tokens": join, "api_tokens": api });
            if out.structured(&all).map_err(io("stdout"))? {
                return Ok(ExitCode::SUCCESS);
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let mut rows: Vec<Vec<String>> = join
                .iter()
                .map(|t| {
                    let state = if t.used {
                        "used"
                    } else if t.expires_ms <= now {
                        "expired"
                    } else {
                        "valid"
                    };
                    vec![
                        t.id.clone(),
                        "join".into(),
                        format!("site {}", t.site),
                        state.into(),
                        age(t.created_ms),
                    ]
                })
                .collect();
            rows.extend(api.iter().map(|t| {
                vec![
                    t.id.clone(),
                    "api".into(),
                    format!("{} ({})", t.name, t.role),
                    "valid".into(),
                    age(t.created_ms),
                ]
            }));
            table(&out, &["ID", "KIND", "FOR", "STATE", "AGE"], &rows).map_err(io("stdout"))?;
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Rm { ids } => {
            let mut code = ExitCode::SUCCESS;
            for id in ids {
                // Either kind: a join token first, then an API token.
                let r = match client.revoke_join_token(id).await {
                    Err(ClientError::Api { status: 404, .. }) => client.revoke_api_token(id).await,
                    other => other,
                };
                match r {
                    Ok(()) => println!("{id}: revoked"),
                    Err(ClientError::Api { status: 404, .. }) => {
                        eprintln!("skiff: no token {id}");
                        code = ExitCode::FAILURE;
                    }
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
