//! `logs`, `exec` and `events`: what the gateway streams.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use base64::Engine as _;
use futures::StreamExt;
use skiff_gateway::api::ExecRequest;

use super::{CliError, io};
use crate::args::{ExecArgs, LogsArgs};
use crate::client::{Client, LogsQuery};
use crate::output::{Format, Out};

/// `--since`: a duration ago (`10m`) or an RFC 3339 time, as unix ms.
pub fn since_ms(text: &str, now_ms: i64) -> Result<i64, CliError> {
    if let Ok(d) = text.parse::<skiff_proto::Duration>() {
        return Ok(now_ms - d.std().as_millis() as i64);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            CliError::Usage(format!(
                "--since {text:?}: neither a duration (10m) nor an RFC 3339 time (2026-12-01T10:00:00Z)"
            ))
        })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub async fn logs(client: &Client, a: &LogsArgs) -> Result<ExitCode, CliError> {
    let since = a
        .since
        .as_deref()
        .map(|s| since_ms(s, now_ms()))
        .transpose()?;
    // Prefixes when several replicas speak, as `docker compose logs`.
    let placed = match &a.alloc {
        Some(_) => 1,
        None => client
            .workload(&a.name)
            .await?
            .allocations
            .iter()
            .filter(|x| x.is_live() && x.node.is_some())
            .count(),
    };
    let q = LogsQuery {
        follow: a.follow,
        tail: a.tail,
        since_ms: since,
        allocation: a.alloc.clone(),
    };
    let mut entries = client.logs(&a.name, &q).await?;
    let out = Out::new(Format::Table);
    let colours = ["36", "35", "34", "33", "32", "31"];
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let width = 0usize;
    let mut failed = false;
    while let Some(e) = entries.next().await {
        let e = e?;
        let n = seen.len();
        let i = *seen.entry(e.allocation.clone()).or_insert(n);
        // (Also once a second replica joins a followed stream.)
        let prefix = if placed > 1 || seen.len() > 1 {
            let tag = format!("{:<w$} | ", e.allocation, w = width.max(e.allocation.len()));
            if out.color {
                format!("\x1b[{}m{tag}\x1b[0m", colours[i % colours.len()])
            } else {
                tag
            }
        } else {
            String::new()
        };
        if let Some(err) = &e.error {
            eprintln!("skiff: {}: {err}", e.allocation);
            failed = true;
            continue;
        }
        let time = if a.timestamps {
            format!("{} ", e.time)
        } else {
            String::new()
        };
        let line = format!("{prefix}{time}{}", e.line);
        let line = if line.ends_with('\n') {
            line
        } else {
            format!("{line}\n")
        };
        if e.stream == "stderr" {
            let _ = std::io::stderr().write_all(line.as_bytes());
        } else {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(line.as_bytes()).map_err(io("stdout"))?;
            let _ = stdout.flush();
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn exec(client: &Client, a: &ExecArgs) -> Result<ExitCode, CliError> {
    let mut env = BTreeMap::new();
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--env {kv:?}: expected KEY=VALUE")))?;
        env.insert(k.to_string(), v.to_string());
    }
    let req = ExecRequest {
        command: a.command.clone(),
        allocation: a.alloc.clone(),
        env,
        user: a.user.clone(),
        workdir: a.workdir.clone(),
    };
    let mut entries = client.exec(&a.name, &req).await?;
    while let Some(e) = entries.next().await {
        let e = e?;
        if let (Some(stream), Some(data)) = (&e.stream, &e.data) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|err| {
                    CliError::Client(crate::client::ClientError::Protocol {
                        address: client.address().to_string(),
                        reason: format!("exec output: {err}"),
                    })
                })?;
            if stream == "stderr" {
                let _ = std::io::stderr().write_all(&bytes);
            } else {
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(&bytes).map_err(io("stdout"))?;
                let _ = stdout.flush();
            }
        }
        if let Some(err) = e.error {
            return Err(CliError::Dev(format!("exec in {}: {err}", a.name)));
        }
        if let Some(code) = e.exit_code {
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
    }
    Err(CliError::Dev(format!(
        "exec in {}: the stream ended without an exit code (the node went away?)",
        a.name
    )))
}

/// An event's time for people: `2026-12-01T10:00:00Z`.
fn time_of(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

pub async fn events(
    client: &Client,
    follow: bool,
    o: crate::args::OutputArgs,
) -> Result<ExitCode, CliError> {
    let mut events = client.events(follow).await?;
    let out = Out::new(o.output);
    // Without -f, structured output is one document (an array); with -f,
    // one JSON object per line, as they come.
    if !follow && out.format != Format::Table {
        let mut all = Vec::new();
        while let Some(e) = events.next().await {
            all.push(e?);
        }
        out.structured(&all).map_err(io("stdout"))?;
        return Ok(ExitCode::SUCCESS);
    }
    while let Some(e) = events.next().await {
        let e = e?;
        let mut stdout = std::io::stdout().lock();
        let line = match out.format {
            Format::Table => format!(
                "{}  {:<10}  {:<24}  {}",
                time_of(e.time_ms),
                e.kind,
                e.id,
                e.message
            ),
            Format::Json | Format::Yaml => serde_json::to_string(&e).unwrap_or_default(),
        };
        writeln!(stdout, "{line}").map_err(io("stdout"))?;
        let _ = stdout.flush();
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn since_takes_a_duration_or_a_time() {
        let now = 1_800_000_000_000;
        assert_eq!(super::since_ms("10m", now).unwrap(), now - 600_000);
        assert_eq!(
            super::since_ms("2026-12-01T10:00:00Z", now).unwrap(),
            1_796_119_200_000
        );
        let e = super::since_ms("yesterday", now).unwrap_err().to_string();
        assert!(e.starts_with("--since \"yesterday\": neither"), "{e}");
    }
}
