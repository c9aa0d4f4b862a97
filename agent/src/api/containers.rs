//! Container endpoints of the local API.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::server::{ApiError, AppState};
use crate::net::NetError;
use crate::runtime::logfile::LogLine;
use crate::runtime::logs::{self, Follow, LogEvent, LogQuery};
use crate::runtime::records::ContainerRecord;
use crate::runtime::{ContainerInfo, ExecOptions, ExitInfo, RunOptions, Runtime, RuntimeError};

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        let (status, code) = match &e {
            RuntimeError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            RuntimeError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            RuntimeError::Running(_) => (StatusCode::CONFLICT, "conflict"),
            RuntimeError::StartFailed { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "failed_to_start")
            }
            RuntimeError::Image(crate::images::ImageError::NotFound(_)) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            RuntimeError::Network(NetError::Port(_)) => (StatusCode::CONFLICT, "conflict"),
            RuntimeError::Network(NetError::Invalid(_)) => (StatusCode::BAD_REQUEST, "bad_request"),
            RuntimeError::Network(NetError::Ipam(crate::net::ipam::IpamError::Exhausted {
                ..
            })) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            RuntimeError::Image(_) | RuntimeError::Internal(_) | RuntimeError::Network(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// `POST /v1/containers/run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRequest {
    pub options: RunOptions,
    /// Stream the output and end with the exit (like `docker run`).
    #[serde(default)]
    pub attach: bool,
}

/// One line of an output stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OutputLine {
    Log { log: LogLine },
    Exit { exit: ExitInfo },
    Failed { error: super::ErrorBody },
}

#[derive(Debug, Deserialize)]
pub struct IdQuery {
    pub id: String,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub follow: bool,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub signal: Option<String>,
    /// `logs`: only the last N lines.
    #[serde(default)]
    pub tail: Option<usize>,
    /// `logs`: only lines since this RFC 3339 time.
    #[serde(default)]
    pub since: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub all: bool,
}

fn ndjson(rx: mpsc::UnboundedReceiver<OutputLine>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        let mut v = serde_json::to_vec(&line).unwrap_or_default();
        v.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(v)), rx))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

pub async fn run(
    State(s): State<AppState>,
    Json(req): Json<RunRequest>,
) -> Result<Response, ApiError> {
    let rt = Arc::clone(&s.runtime);
    let record = rt.create(&req.options).await?;
    // Open the log before starting, so even the fastest exit is read.
    let log = rt.log_path(&record.id)?.1;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&log)
        .map_err(|e| ApiError::from(RuntimeError::Internal(e.to_string())))?;
    // Subscribed before the start: a fast `--rm` container may exit and
    // be removed before a waiter started afterwards would find it.
    let exits = rt.subscribe(&record.id)?;
    if let Err(e) = rt.start(&record.id).await {
        // A container that cannot start is not left behind.
        let _ = rt.remove(&record.id, true).await;
        return Err(e.into());
    }
    if !req.attach {
        let record = rt.resolve(&record.id).unwrap_or(record);
        let body = serde_json::to_vec(&record).unwrap_or_default();
        return Ok(Response::builder()
            .status(StatusCode::CREATED)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap_or_default());
    }
    let events = logs::read(
        log,
        Some(file),
        LogQuery::default(),
        Follow::UntilExit(exits),
    );
    Ok(ndjson(log_lines(events)))
}

/// The output lines of a log reader.
fn log_lines(mut events: mpsc::UnboundedReceiver<LogEvent>) -> mpsc::UnboundedReceiver<OutputLine> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            let line = match e {
                LogEvent::Line(log) => OutputLine::Log { log },
                LogEvent::Exit(exit) => OutputLine::Exit { exit },
            };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

pub async fn logs(
    State(s): State<AppState>,
    Query(q): Query<IdQuery>,
) -> Result<Response, ApiError> {
    let (record, path) = s.runtime.log_path(&q.id)?;
    if !path.exists() {
        return Err(RuntimeError::Internal(format!("{}: no log file", path.display())).into());
    }
    // A container the runtime no longer tracks has nothing more to say.
    let follow = match q
        .follow
        .then(|| s.runtime.subscribe(&record.id).ok())
        .flatten()
    {
        Some(rx) => Follow::UntilExit(rx),
        None => Follow::No,
    };
    let query = LogQuery {
        tail: q.tail,
        since: q.since.clone(),
    };
    Ok(ndjson(log_lines(logs::read(path, None, query, follow))))
}

/// Sends what `pipe` gives as output lines of `stream`.
async fn pump(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    stream: &'static str,
    tx: mpsc::UnboundedSender<OutputLine>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = pipe.read(&mut buf).await
        && n > 0
    {
        let log = LogLine {
            time: crate::runtime::logfile::rfc3339(std::time::SystemTime::now()),
            stream: stream.to_string(),
            log: String::from_utf8_lossy(&buf[..n]).into_owned(),
        };
        if tx.send(OutputLine::Log { log }).is_err() {
            break;
        }
    }
}

/// `POST /v1/containers/exec?id=`: runs a command in a running container
/// and streams its output, then its exit.
pub async fn exec(
    State(s): State<AppState>,
    Query(q): Query<IdQuery>,
    Json(opts): Json<ExecOptions>,
) -> Result<Response, ApiError> {
    let mut child = s.runtime.exec(&q.id, &opts)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(pump(out, "stdout", tx.clone())));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(pump(err, "stderr", tx.clone())));
    }
    tokio::spawn(async move {
        for r in readers {
            let _ = r.await;
        }
        let exit_code = match child.wait().await {
            Ok(st) => st.code().unwrap_or_else(|| {
                128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)
            }),
            Err(_) => 255,
        };
        let _ = tx.send(OutputLine::Exit {
            exit: ExitInfo {
                exit_code,
                reason: "exited".into(),
                message: None,
            },
        });
    });
    Ok(ndjson(rx))
}

pub async fn list(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<ContainerRecord>>, ApiError> {
    Ok(Json(s.runtime.list(q.all)?))
}

pub async fn inspect(
    State(s): State<AppState>,
    Query(q): Query<IdQuery>,
) -> Result<Json<ContainerInfo>, ApiError> {
    Ok(Json(s.runtime.inspect(&q.id)?))
}

pub async fn start(
    State(s): State<AppState>,
    Query(q): Query<IdQuery>,
) -> Result<Json<ContainerRecord>, ApiError> {
    Ok(Json(s.runtime.start(&q.id).await?))
}

pub async fn stop(
    State(s): State<AppState>,
    Query(q): Query<IdQuery>,
) -> Result<Json<ExitInfo>, ApiError> {
    Ok(Json(
        s.runtime
            .stop(&q.id, q.timeout_ms.map(Duration::from_millis))
            .await?,
    ))
}

pub async fn wait(
    State(s): State<AppState>,
    Query(q): Query<IdQuery>,
) -> Result<Json<ExitInfo>, ApiError> {
    Ok(Json(s.runtime.wait(&q.id).await?))
}

pub async fn kill(
    State(s): State<AppState>,
    Query(q): Query<IdQuery>,
) -> Result<StatusCode, ApiError> {
    let name = q.signal.as_deref().unwrap_or("KILL");
    let signal = parse_signal(name).ok_or_else(|| {
        ApiError::from(RuntimeError::Invalid(format!(
            "signal {name:?} is not a signal"
        )))
    })?;
    s.runtime.kill(&q.id, signal)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove(
    State(s): State<AppState>,
    Query(q): Query<IdQuery>,
) -> Result<StatusCode, ApiError> {
    s.runtime.remove(&q.id, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `TERM`, `SIGTERM` or `15`.
pub fn parse_signal(s: &str) -> Option<nix::sys::signal::Signal> {
    use std::str::FromStr;
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&full).ok()
}

/// Layers running containers use, so image GC keeps them.
pub fn in_use(rt: &Runtime) -> BTreeSet<crate::images::Digest> {
    rt.layers_in_use()
        .iter()
        .filter_map(|p| p.file_name())
        .filter_map(|n| format!("sha256:{}", n.to_string_lossy()).parse().ok())
        .collect()
}
