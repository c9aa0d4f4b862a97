//! `namespace create`, `set`, `ls`, `show`, `rm`.

use std::process::ExitCode;

use skiff_gateway::api::NamespaceView;
use skiff_gateway::control::namespaces::{Policy, Quota, Usage};

use super::{CliError, io};
use crate::args::{NamespaceArgs, NamespaceCommand};
use crate::client::{Client, ClientError};
use crate::output::{Out, age, bytes, cpu, table};

/// The quota with what the flags give.
fn quota(mut q: Quota, a: &NamespaceArgs) -> Quota {
    if a.cpu.is_some() {
        q.cpu = a.cpu;
    }
    if a.memory.is_some() {
        q.memory = a.memory;
    }
    if a.disk.is_some() {
        q.disk = a.disk;
    }
    if a.allocations.is_some() {
        q.allocations = a.allocations;
    }
    if a.cloud_spend.is_some() {
        q.cloud_spend_per_hour = a.cloud_spend.clone();
    }
    q
}

/// The policy with what the flags give.
fn policy(mut p: Policy, a: &NamespaceArgs) -> Result<Policy, CliError> {
    if !a.sites.is_empty() {
        p.sites = a.sites.clone();
    }
    if !a.node_labels.is_empty() {
        p.node_labels = a
            .node_labels
            .iter()
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| {
                        CliError::Usage(format!("--node-label {kv:?}: expected KEY=VALUE"))
                    })
            })
            .collect::<Result<_, _>>()?;
    }
    if !a.registries.is_empty() {
        p.registries = a.registries.clone();
    }
    if !a.allow_capabilities.is_empty() {
        p.allow_capabilities = a.allow_capabilities.clone();
    }
    if !a.allow_from.is_empty() {
        p.allow_from = a.allow_from.clone();
    }
    if let Some(b) = a.allow_host_network {
        p.allow_host_network = b;
    }
    if let Some(b) = a.allow_host_volumes {
        p.allow_host_volumes = b;
    }
    if let Some(b) = a.require_user_namespace {
        p.require_user_namespace = b;
    }
    if let Some(b) = a.allow_privileged {
        p.allow_privileged = b;
    }
    if a.max_priority.is_some() {
        p.max_priority = a.max_priority;
    }
    Ok(p)
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// `used/limit`, or `used` without a limit.
fn of(used: String, limit: Option<String>) -> String {
    match limit {
        Some(l) => format!("{used}/{l}"),
        None => used,
    }
}

fn row(v: &NamespaceView) -> Vec<String> {
    let q = &v.record.quota;
    let u: &Usage = &v.reserved;
    vec![
        v.record.name.clone(),
        of(cpu(u.cpu_millis), q.cpu.map(|c| cpu(c.millis()))),
        of(bytes(u.memory_bytes), q.memory.map(|m| bytes(m.bytes()))),
        of(bytes(u.disk_bytes), q.disk.map(|d| bytes(d.bytes()))),
        of(
            u.allocations.to_string(),
            q.allocations.map(|n| n.to_string()),
        ),
        of(
            v.cloud_spend_per_hour.clone(),
            q.cloud_spend_per_hour.clone(),
        ),
        age(v.record.created_ms),
    ]
}

const HEADER: [&str; 7] = [
    "NAME",
    "CPU",
    "MEMORY",
    "DISK",
    "ALLOCATIONS",
    "CLOUD $/H",
    "AGE",
];

fn print(out: &Out, views: &[NamespaceView]) -> Result<ExitCode, CliError> {
    if out.structured(&views).map_err(io("stdout"))? {
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = views.iter().map(row).collect();
    table(out, &HEADER, &rows).map_err(io("stdout"))?;
    Ok(ExitCode::SUCCESS)
}

pub async fn run(client: &Client, cmd: &NamespaceCommand) -> Result<ExitCode, CliError> {
    match cmd {
        NamespaceCommand::Create(a) => {
            let q = quota(Quota::default(), a);
            let p = policy(Policy::default(), a)?;
            let v = client
                .create_namespace(&a.name, &json(&q), &json(&p))
                .await?;
            let out = Out::new(a.output.output);
            if out.structured(&v).map_err(io("stdout"))? {
                return Ok(ExitCode::SUCCESS);
            }
            println!("namespace {} created", v.record.name);
            Ok(ExitCode::SUCCESS)
        }
        NamespaceCommand::Set(a) => {
            let now = client.namespace(&a.name).await?;
            let q = quota(now.record.quota.clone(), a);
            let p = policy(now.record.policy.clone(), a)?;
            let v = client
                .update_namespace(&a.name, Some(&json(&q)), Some(&json(&p)))
                .await?;
            let out = Out::new(a.output.output);
            if out.structured(&v).map_err(io("stdout"))? {
                return Ok(ExitCode::SUCCESS);
            }
            println!("namespace {} updated", v.record.name);
            Ok(ExitCode::SUCCESS)
        }
        NamespaceCommand::Ls(o) => print(&Out::new(o.output), &client.namespaces().await?),
        NamespaceCommand::Show { name, output } => {
            let v = client.namespace(name).await?;
            let out = Out::new(output.output);
            if out.structured(&v).map_err(io("stdout"))? {
                return Ok(ExitCode::SUCCESS);
            }
            table(&out, &HEADER, &[row(&v)]).map_err(io("stdout"))?;
            let p = &v.record.policy;
            let list = |l: &[String]| {
                if l.is_empty() {
                    "any".to_string()
                } else {
                    l.join(", ")
                }
            };
            println!();
            println!("policy:");
            println!("  sites:             {}", list(&p.sites));
            let labels: Vec<String> = p
                .node_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!(
                "  node labels:       {}",
                if labels.is_empty() {
                    "-".into()
                } else {
                    labels.join(", ")
                }
            );
            println!("  registries:        {}", list(&p.registries));
            println!("  host network:      {}", yes(p.allow_host_network));
            println!("  host volumes:      {}", yes(p.allow_host_volumes));
            println!("  privileged:        {}", yes(p.allow_privileged));
            println!(
                "  user namespaces:   {}",
                if p.require_user_namespace {
                    "required"
                } else {
                    "optional"
                }
            );
            println!(
                "  added capabilities: {}",
                if p.allow_capabilities.is_empty() {
                    "none".into()
                } else {
                    p.allow_capabilities.join(", ")
                }
            );
            println!(
                "  max priority:      {}",
                p.max_priority.map_or("-".to_string(), |m| m.to_string())
            );
            println!(
                "  reachable from:    {}",
                if p.allow_from.is_empty() {
                    "its own namespace only".into()
                } else {
                    p.allow_from.join(", ")
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        NamespaceCommand::Rm { names } => {
            let mut failed = false;
            for n in names {
                match client.delete_namespace(n).await {
                    Ok(()) => println!("namespace {n} deleted"),
                    Err(e @ ClientError::Api { .. }) => {
                        eprintln!("skiff: {e}");
                        failed = true;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b { "allowed" } else { "denied" }
}
