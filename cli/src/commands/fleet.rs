//! `nodes`, `drain`/`cordon`/`uncordon`, `sites`, `version`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use skiff_gateway::control::NodeRecord;

use super::{CliError, io};
use crate::args::OutputArgs;
use crate::client::Client;
use crate::output::{Out, age, bar, bytes, cpu, table};

/// A node's status as an operator reads it: `draining` and `cordoned` say
/// more than the `ready` they also are.
pub fn node_status(n: &NodeRecord) -> String {
    n.shown_status().to_string()
}

pub async fn nodes(client: &Client, o: OutputArgs) -> Result<ExitCode, CliError> {
    let mut nodes = client.nodes().await?;
    let out = Out::new(o.output);
    if out.structured(&nodes).map_err(io("stdout"))? {
        return Ok(ExitCode::SUCCESS);
    }
    // What runs on each node, from its live allocations' requests.
    let workloads = client.workloads().await?;
    let mut used: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for w in &workloads {
        for a in w.allocations.iter().filter(|a| a.is_live()) {
            if let Some(n) = &a.node {
                let u = used.entry(n.clone()).or_default();
                u.0 += w.spec.resources.cpu.millis();
                u.1 += w.spec.resources.memory.bytes();
            }
        }
    }
    nodes.sort_by(|a, b| (a.site.as_str(), a.id.as_str()).cmp(&(b.site.as_str(), b.id.as_str())));
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let (c, m) = used.get(&n.id).copied().unwrap_or_default();
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                n.id.clone(),
                n.site.clone(),
                out.paint(&node_status(n)),
                format!("{}/{}", cpu(c), cpu(n.allocatable.cpu.millis())),
                format!("{}/{}", bytes(m), bytes(n.allocatable.memory.bytes())),
                if labels.is_empty() {
                    "-".into()
                } else {
                    labels.join(",")
                },
                age(n.joined_ms),
            ]
        })
        .collect();
    table(
        &out,
        &["NODE", "SITE", "STATUS", "CPU", "MEMORY", "LABELS", "AGE"],
        &rows,
    )
    .map_err(io("stdout"))?;
    Ok(ExitCode::SUCCESS)
}

pub async fn node_action(client: &Client, node: &str, action: &str) -> Result<ExitCode, CliError> {
    let n = client.node_action(node, action).await?;
    println!("{}: {}", n.id, node_status(&n));
    Ok(ExitCode::SUCCESS)
}

pub async fn sites(client: &Client, o: OutputArgs) -> Result<ExitCode, CliError> {
    let sites = client.sites().await?;
    let out = Out::new(o.output);
    if out.structured(&sites).map_err(io("stdout"))? {
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = sites
        .iter()
        .map(|s| {
            let with_bar = |used: u64, total: u64, show: &dyn Fn(u64) -> String| {
                let text = format!("{}/{}", show(used), show(total));
                if out.tty {
                    format!("{} {text}", bar(used, total, 10))
                } else {
                    text
                }
            };
            let planned: Vec<String> = s
                .planned_launches
                .iter()
                .map(|p| format!("{} x {}", p.count, p.instance_type))
                .collect();
            vec![
                s.name.clone(),
                s.kind.clone(),
                format!("{}/{}", s.nodes_ready, s.nodes),
                with_bar(s.cpu_millis_used, s.cpu_millis, &cpu),
                with_bar(s.memory_bytes_used, s.memory_bytes, &bytes),
                s.allocations.to_string(),
                if planned.is_empty() {
                    "-".into()
                } else {
                    planned.join(", ")
                },
            ]
        })
        .collect();
    table(
        &out,
        &[
            "SITE",
            "KIND",
            "NODES",
            "CPU",
            "MEMORY",
            "ALLOCATIONS",
            "PLANNED",
        ],
        &rows,
    )
    .map_err(io("stdout"))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Serialize)]
struct Versions {
    client: &'static str,
    gateway: skiff_gateway::api::VersionView,
    address: String,
}

pub async fn version(client: &Client, o: OutputArgs) -> Result<ExitCode, CliError> {
    let v = Versions {
        client: env!("CARGO_PKG_VERSION"),
        gateway: client.version().await?,
        address: client.address().to_string(),
    };
    let out = Out::new(o.output);
    if !out.structured(&v).map_err(io("stdout"))? {
        println!("skiff {}", v.client);
        println!(
            "gateway {} at {} (CA {})",
            v.gateway.version, v.address, v.gateway.ca_hash
        );
    }
    Ok(ExitCode::SUCCESS)
}
