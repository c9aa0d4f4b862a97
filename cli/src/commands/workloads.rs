//! `run`, `ps`, `status`, `scale`, `restart`, `rm`, `explain`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use skiff_gateway::api::WorkloadView;
use skiff_gateway::control::{AllocationRecord, JobState};
use skiff_proto::cluster::AllocationState;
use skiff_proto::{Format as SpecFormat, WorkloadKind, WorkloadSpec, parse_workloads};

use super::{CliError, io};
use crate::args::{OutputArgs, RunArgs, WaitArgs};
use crate::client::{Client, ClientError};
use crate::output::{Out, age, table};

/// How often a waiting command looks again.
const POLL: Duration = Duration::from_millis(250);

fn read_spec(path: &std::path::Path) -> Result<(String, Vec<WorkloadSpec>), CliError> {
    let text = if path == std::path::Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(io("stdin"))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?
    };
    let specs = parse_workloads(&text, SpecFormat::from_path(path)).map_err(|e| {
        let first = e.0.first().map(|f| f.to_string()).unwrap_or_default();
        let more = e.0.len().saturating_sub(1);
        let more = if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        };
        CliError::Usage(format!("{}: {first}{more}", path.display()))
    })?;
    Ok((text, specs))
}

/// One workload's spec as text, for the API (which takes YAML or JSON).
fn spec_text(spec: &WorkloadSpec) -> Result<String, CliError> {
    serde_json::to_string(spec).map_err(|e| CliError::Usage(e.to_string()))
}

pub async fn run(client: &Client, a: &RunArgs) -> Result<ExitCode, CliError> {
    let (text, specs) = read_spec(&a.file)?;
    let mut applied = Vec::new();
    for spec in &specs {
        let body = if specs.len() == 1 {
            text.clone()
        } else {
            spec_text(spec)?
        };
        let v = match client.create_workload(&body).await {
            Ok(v) => {
                println!("{}: created (version {})", spec.name, v.version);
                v
            }
            Err(ClientError::Api { status: 409, .. }) => {
                let v = client.update_workload(&spec.name, &body).await?;
                println!("{}: updated (version {})", spec.name, v.version);
                v
            }
            Err(e) => return Err(e.into()),
        };
        applied.push(v);
    }
    if a.wait.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let names: Vec<String> = applied.iter().map(|v| v.spec.name.clone()).collect();
    wait(client, &names, &a.wait).await
}

/// Whether every replica of the current version runs, and nothing older
/// (a batch job: whether it completed or failed).
fn converged(v: &WorkloadView) -> bool {
    if let Some(job) = &v.job {
        return job.state != JobState::Running;
    }
    let live: Vec<&AllocationRecord> = v.allocations.iter().filter(|a| a.is_live()).collect();
    if v.spec.kind == WorkloadKind::System {
        // A copy on every eligible node: each of them current and running.
        return live
            .iter()
            .all(|a| a.workload_version == v.version && a.state == AllocationState::Running);
    }
    let current = live
        .iter()
        .filter(|a| a.workload_version == v.version && a.state == AllocationState::Running)
        .count();
    current as u32 == v.spec.replicas && live.len() as u32 == v.spec.replicas
}

/// What one replica is doing, for people.
fn doing(a: &AllocationRecord) -> String {
    let where_ = match (&a.node, &a.site) {
        (Some(n), Some(s)) => format!(" on {n} ({s})"),
        (Some(n), None) => format!(" on {n}"),
        _ => String::new(),
    };
    let why = if a.message.is_empty() {
        String::new()
    } else {
        format!(": {}", a.message)
    };
    format!("{}{where_}{why}", a.state)
}

/// Waits until every workload in `names` has converged, showing its
/// replicas as they go (redrawn on a terminal, a line per change
/// otherwise).
async fn wait(client: &Client, names: &[String], w: &WaitArgs) -> Result<ExitCode, CliError> {
    let out = Out::new(crate::output::Format::Table);
    let deadline = Instant::now() + w.timeout.std();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut drawn = 0usize;
    loop {
        let mut views = Vec::new();
        for n in names {
            views.push(client.workload(n).await?);
        }
        let mut lines = Vec::new();
        for v in &views {
            let running = v
                .allocations
                .iter()
                .filter(|a| a.is_live() && a.state == AllocationState::Running)
                .count();
            let progress = match (&v.job, v.spec.batch_rules()) {
                (Some(job), Some(rules)) => format!(
                    "{} {}/{} runs succeeded, {} failed, {running} running",
                    job.state, job.succeeded, rules.completions, job.failed
                ),
                _ => format!("{running}/{} running", v.spec.replicas),
            };
            lines.push((v.spec.name.clone(), progress));
            for a in v.allocations.iter().filter(|a| a.is_live()) {
                lines.push((a.id.clone(), doing(a)));
            }
        }
        if out.tty {
            let mut stdout = std::io::stdout().lock();
            if drawn > 0 {
                let _ = write!(stdout, "\x1b[{drawn}A\x1b[J");
            }
            for (who, what) in &lines {
                // The state word in its colour, the rest as it is.
                let cut = what.find([' ', ':']).unwrap_or(what.len());
                let _ = writeln!(
                    stdout,
                    "  {who}  {}{}",
                    out.paint(&what[..cut]),
                    &what[cut..]
                );
            }
            drawn = lines.len();
        } else {
            for (who, what) in &lines {
                if last.get(who) != Some(what) {
                    println!("  {who}: {what}");
                    last.insert(who.clone(), what.clone());
                }
            }
        }
        if views.iter().all(converged) {
            let mut code = ExitCode::SUCCESS;
            for v in &views {
                match &v.job {
                    Some(job) if job.state == JobState::Failed => {
                        eprintln!("{}: job failed: {}", v.spec.name, job.message);
                        code = ExitCode::FAILURE;
                    }
                    Some(job) => println!(
                        "{}: job complete: {} runs succeeded",
                        v.spec.name, job.succeeded
                    ),
                    None => println!(
                        "{}: {} of {} replicas running (version {})",
                        v.spec.name, v.running, v.spec.replicas, v.version
                    ),
                }
            }
            return Ok(code);
        }
        if Instant::now() >= deadline {
            let why: Vec<String> = views
                .iter()
                .filter(|v| !converged(v))
                .map(|v| {
                    let waiting: Vec<String> = v
                        .allocations
                        .iter()
                        .filter(|a| a.is_live() && a.state != AllocationState::Running)
                        .take(3)
                        .map(|a| format!("{} {}", a.id, doing(a)))
                        .collect();
                    format!(
                        "{}: {} of {} running; {}",
                        v.spec.name,
                        v.running,
                        v.spec.replicas,
                        waiting.join("; ")
                    )
                })
                .collect();
            return Err(CliError::Timeout(format!(
                "not converged after {}: {}",
                w.timeout,
                why.join(" | ")
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

pub async fn ps(client: &Client, o: OutputArgs) -> Result<ExitCode, CliError> {
    let list = client.workloads().await?;
    let out = Out::new(o.output);
    if out.structured(&list).map_err(io("stdout"))? {
        return Ok(ExitCode::SUCCESS);
    }
    let all = client.all_namespaces();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|v| {
            let ns = all.then(|| v.spec.namespace.clone());
            ns.into_iter()
                .chain([
                    v.spec.name.clone(),
                    v.spec.image.to_string(),
                    desired(v),
                    v.running.to_string(),
                    v.pending.to_string(),
                    if v.sites.is_empty() {
                        "-".into()
                    } else {
                        v.sites.join(",")
                    },
                    v.version.to_string(),
                    age(v.created_ms),
                ])
                .collect()
        })
        .collect();
    let header = [
        "NAMESPACE",
        "NAME",
        "IMAGE",
        "DESIRED",
        "RUNNING",
        "PENDING",
        "SITES",
        "VERSION",
        "AGE",
    ];
    table(&out, &header[usize::from(!all)..], &rows).map_err(io("stdout"))?;
    Ok(ExitCode::SUCCESS)
}

/// A service's replica count; a batch job's completions so far, of those
/// it needs (as `kubectl get jobs` shows them); a system workload's
/// copies, one per eligible node.
fn desired(v: &WorkloadView) -> String {
    match (&v.job, v.spec.batch_rules()) {
        (Some(job), Some(rules)) => {
            format!("{}/{} {}", job.succeeded, rules.completions, job.state)
        }
        _ if v.spec.kind == WorkloadKind::System => {
            format!(
                "{} nodes",
                v.allocations.iter().filter(|a| a.is_live()).count()
            )
        }
        _ => v.spec.replicas.to_string(),
    }
}

/// `8080->80/tcp` for a published port, `80/tcp` otherwise.
fn ports(spec: &WorkloadSpec) -> String {
    let v: Vec<String> = spec
        .ports
        .iter()
        .map(|p| {
            let proto = serde_json::to_value(p.protocol)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            match p.host {
                Some(h) => format!("{h}->{}/{proto}", p.container),
                None => format!("{}/{proto}", p.container),
            }
        })
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

pub async fn status(client: &Client, name: &str, o: OutputArgs) -> Result<ExitCode, CliError> {
    let v = client.workload(name).await?;
    let out = Out::new(o.output);
    if out.structured(&v).map_err(io("stdout"))? {
        return Ok(ExitCode::SUCCESS);
    }
    match (&v.job, v.spec.batch_rules()) {
        (Some(job), Some(rules)) => {
            println!(
                "{}  image {}  batch job {}: {} of {} runs succeeded, {} failed (backoff limit {}), {} running, {} pending",
                v.spec.name,
                v.spec.image,
                out.paint(&job.state.to_string()),
                job.succeeded,
                rules.completions,
                job.failed,
                rules.backoff_limit,
                v.running,
                v.pending
            );
            if !job.message.is_empty() {
                println!("  {}", job.message);
            }
        }
        _ if v.spec.kind == WorkloadKind::System => println!(
            "{}  image {}  version {}  system: a copy on each of {}, {} running, {} pending",
            v.spec.name,
            v.spec.image,
            v.version,
            desired(&v),
            v.running,
            v.pending
        ),
        _ => println!(
            "{}  image {}  version {}  {} desired, {} running, {} pending",
            v.spec.name, v.spec.image, v.version, v.spec.replicas, v.running, v.pending
        ),
    }
    let ports = ports(&v.spec);
    let mut allocs: Vec<&AllocationRecord> = v.allocations.iter().collect();
    allocs.sort_by_key(|a| (!a.is_live(), std::cmp::Reverse(a.created_ms)));
    let rows: Vec<Vec<String>> = allocs
        .iter()
        .map(|a| {
            vec![
                a.id.clone(),
                a.node.clone().unwrap_or_else(|| "-".into()),
                a.site.clone().unwrap_or_else(|| "-".into()),
                out.paint(&a.state.to_string()),
                a.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
                a.restarts.to_string(),
                age(a.created_ms),
                if a.address.is_empty() {
                    "-".into()
                } else {
                    a.address.clone()
                },
                ports.clone(),
                a.message.clone(),
            ]
        })
        .collect();
    table(
        &out,
        &[
            "ALLOCATION",
            "NODE",
            "SITE",
            "STATE",
            "EXIT",
            "RESTARTS",
            "AGE",
            "ADDRESS",
            "PORTS",
            "MESSAGE",
        ],
        &rows,
    )
    .map_err(io("stdout"))?;
    Ok(ExitCode::SUCCESS)
}

pub async fn scale(
    client: &Client,
    name: &str,
    replicas: u32,
    o: OutputArgs,
) -> Result<ExitCode, CliError> {
    let v = client.scale(name, replicas).await?;
    let out = Out::new(o.output);
    if !out.structured(&v).map_err(io("stdout"))? {
        println!("{name}: scaled to {replicas}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn restart(client: &Client, name: &str, w: &WaitArgs) -> Result<ExitCode, CliError> {
    let v = client.restart(name).await?;
    println!("{name}: restarting (version {})", v.version);
    if w.detach {
        return Ok(ExitCode::SUCCESS);
    }
    wait(client, &[name.to_string()], w).await
}

pub async fn rm(client: &Client, names: &[String], volumes: bool) -> Result<ExitCode, CliError> {
    let mut code = ExitCode::SUCCESS;
    for n in names {
        match client.delete_workload(n, volumes).await {
            Ok(()) if volumes => println!("{n}: deleted, with its volumes"),
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

/// One pending replica and why it waits (`-o json` of `explain`).
#[derive(Debug, serde::Serialize)]
struct Waiting<'a> {
    allocation: &'a str,
    state: AllocationState,
    message: &'a str,
    explanation: Option<&'a skiff_gateway::control::Explanation>,
}

pub async fn explain(client: &Client, name: &str, o: OutputArgs) -> Result<ExitCode, CliError> {
    let v = client.workload(name).await?;
    let waiting: Vec<Waiting> = v
        .allocations
        .iter()
        .filter(|a| a.is_live() && a.state == AllocationState::Pending)
        .map(|a| Waiting {
            allocation: &a.id,
            state: a.state,
            message: &a.message,
            explanation: a.explanation.as_ref(),
        })
        .collect();
    let out = Out::new(o.output);
    if out.structured(&waiting).map_err(io("stdout"))? {
        return Ok(ExitCode::SUCCESS);
    }
    if waiting.is_empty() {
        println!(
            "{name}: nothing is pending ({} of {} running)",
            v.running, v.spec.replicas
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{name}: {} replica(s) pending", waiting.len());
    for w in &waiting {
        println!("{}", w.allocation);
        match w.explanation {
            Some(e) => {
                if let Some(vm) = &e.waiting_for {
                    println!("  waiting for {vm}");
                }
                if e.waiting_for.is_none() || e.nodes > 0 {
                    let mut excluded: Vec<(&String, &usize)> = e.excluded.iter().collect();
                    excluded.sort_by(|a, b| b.1.cmp(a.1));
                    let filters: Vec<String> =
                        excluded.iter().map(|(f, n)| format!("{n} {f}")).collect();
                    if e.waiting_for.is_none() {
                        println!(
                            "  0 of {} nodes fit{}",
                            e.nodes,
                            if filters.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", filters.join(", "))
                            }
                        );
                    }
                }
                for (site, why) in &e.sites {
                    println!("  site {site}: {why}");
                }
                if let Some(p) = &e.preemption {
                    println!("  preemption: {p}");
                }
            }
            None if !w.message.is_empty() => println!("  {}", w.message),
            None => println!("  not looked at by the placement engine yet"),
        }
    }
    let _ = std::io::stdout().flush();
    Ok(ExitCode::SUCCESS)
}
