//! `GET /v1/workloads/{name}/logs` and `POST /v1/workloads/{name}/exec`:
//! data from the agents that run a workload's allocations, brokered
//! through their sessions ([`crate::streams`]), streamed to the caller as
//! newline-delimited JSON while it comes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::response::Response;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use skiff_proto::cluster::AllocationState;
use skiff_proto::wire::v1::{self, stream_up};
use tokio::sync::{broadcast, mpsc};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::body::{json_body, query};
use super::error::{ApiError, ApiResult};
use super::scope::{self, NamespaceQuery};
use crate::control::{AllocationRecord, Control};
use crate::peers::Peers;
use crate::streams::StreamError;

/// Most lines `tail` asks for.
const MAX_TAIL: u32 = 1_000_000;

/// One line of `GET /v1/workloads/{name}/logs`: a log line of one
/// allocation, or why its log could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogEntry {
    pub allocation: String,
    pub node: String,
    /// RFC 3339 UTC, nanoseconds.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub time: String,
    /// `stdout` or `stderr`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stream: String,
    /// The line, with its newline.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub line: String,
    /// Set (and nothing else) when this allocation's log could not be
    /// read: the node is gone, the allocation has no container yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogsQuery {
    /// Keep streaming new lines while the allocations exist (their
    /// containers' restarts included); without `allocation`, replicas
    /// placed later join the stream.
    pub follow: Option<bool>,
    /// Only the last N lines of each allocation.
    #[param(minimum = 0, maximum = 1_000_000)]
    pub tail: Option<u32>,
    /// Only lines written at or after this time (unix milliseconds).
    #[param(minimum = 0)]
    pub since_ms: Option<i64>,
    /// Only this allocation's.
    pub allocation: Option<String>,
}

/// The allocations of `workload` that have a node (and are not over),
/// or only `only` of them.
fn placed(
    control: &Control,
    workload: &str,
    only: Option<&str>,
) -> ApiResult<Vec<AllocationRecord>> {
    control.read(|st| {
        if !st.workloads.contains_key(workload) {
            return Err(ApiError::not_found(format!("no workload {workload}")));
        }
        let allocs: Vec<AllocationRecord> = st
            .allocations
            .values()
            .filter(|a| a.workload == workload && a.node.is_some() && a.is_live())
            .filter(|a| only.is_none_or(|id| a.id == id))
            .cloned()
            .collect();
        if let Some(id) = only
            && allocs.is_empty()
        {
            return Err(ApiError::not_found(format!(
                "workload {workload} has no placed allocation {id}"
            )));
        }
        Ok(allocs)
    })
}

fn ndjson<T: Serialize + Send + 'static>(rx: mpsc::Receiver<T>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        let mut v = serde_json::to_vec(&item).unwrap_or_default();
        v.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(v)), rx))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

/// The logs of a workload's allocations, interleaved as they come, one
/// JSON `LogEntry` per line.
#[utoipa::path(get, path = "/v1/workloads/{name}/logs", tag = "workloads",
    params(("name" = String, Path), LogsQuery, NamespaceQuery),
    responses(
        (status = 200, description = "Newline-delimited JSON, one LogEntry per line",
            content_type = "application/x-ndjson", body = LogEntry),
        (status = 400, description = "A bad query string", body = ApiError),
        (status = 404, description = "No such workload, or no such allocation of it", body = ApiError)))]
pub(super) async fn logs(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ns: Result<Query<NamespaceQuery>, QueryRejection>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let name = scope::one(&s, &caller, ns)?.key(&name)?;
    let q = query(q)?;
    if q.tail.is_some_and(|t| t > MAX_TAIL) {
        return Err(ApiError::bad(format!("tail: at most {MAX_TAIL}")));
    }
    if q.since_ms.is_some_and(|t| t < 0) {
        return Err(ApiError::bad("since_ms: must not be negative"));
    }
    // Subscribed before the allocations are read, so none placed in
    // between is missed.
    let (_, mut events) = s.control.subscribe_events();
    let allocs = placed(&s.control, &name, q.allocation.as_deref())?;
    let req = v1::LogsRequest {
        follow: q.follow.unwrap_or(false),
        tail: q.tail,
        since_unix_ms: q.since_ms.unwrap_or(0),
    };
    let (tx, rx) = mpsc::channel::<LogEntry>(256);
    // Following a whole workload, as `docker compose logs -f` does: the
    // replicas placed later (a scale, a rolling restart, a replacement)
    // join the stream too, from their first line, once their container is
    // up (so do those placed now whose container is not up yet).
    let watch = req.follow && q.allocation.is_none();
    let mut streamed = BTreeSet::new();
    for a in allocs {
        if watch && a.state != AllocationState::Running {
            continue;
        }
        streamed.insert(a.id.clone());
        tokio::spawn(stream_log(
            Arc::clone(&s.control),
            s.peers.clone(),
            tx.clone(),
            req,
            a,
        ));
    }
    if watch {
        let control = Arc::clone(&s.control);
        let peers = s.peers.clone();
        let req = v1::LogsRequest {
            tail: None,
            since_unix_ms: 0,
            ..req
        };
        tokio::spawn(async move {
            // Placed allocations whose container is not up yet: looked at
            // again each second (their start raises no event) until it is.
            let mut waiting = true;
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    _ = tick.tick(), if waiting => {}
                    e = events.recv() => match e {
                        Ok(e) if e.kind != "allocation" || streamed.contains(&e.id) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                        // A new allocation, or events missed: look again.
                        _ => {}
                    },
                }
                // The workload is gone: the stream ends with its replicas'.
                let Ok(now) = placed(&control, &name, None) else {
                    return;
                };
                waiting = false;
                for a in now {
                    if streamed.contains(&a.id) {
                        continue;
                    }
                    if a.state == AllocationState::Running {
                        streamed.insert(a.id.clone());
                        tokio::spawn(stream_log(
                            Arc::clone(&control),
                            peers.clone(),
                            tx.clone(),
                            req,
                            a,
                        ));
                    } else {
                        waiting = true;
                    }
                }
            }
        });
    }
    Ok(ndjson(rx))
}

/// Opens a stream to `node`: over its session if this gateway holds it,
/// else through the gateway that does.
async fn open(
    control: &Control,
    peers: Option<&dyn Peers>,
    node: &str,
    allocation: &str,
    kind: v1::stream_request::Kind,
) -> Result<mpsc::Receiver<v1::StreamUp>, StreamError> {
    let here = control
        .streams
        .open(node, allocation, kind.clone(), |m| control.send_to(node, m))
        .await;
    match (here, peers) {
        (Err(StreamError::NoSession(_)), Some(peers)) => peers.stream(node, allocation, kind).await,
        (here, _) => here,
    }
}

/// One allocation's log lines into `tx`, until it ends or `tx` is closed.
async fn stream_log(
    control: Arc<Control>,
    peers: Option<Arc<dyn Peers>>,
    tx: mpsc::Sender<LogEntry>,
    req: v1::LogsRequest,
    a: AllocationRecord,
) {
    let node = a.node.clone().unwrap_or_default();
    let entry = |time: String, stream: String, line: String, error: Option<String>| LogEntry {
        allocation: a.id.clone(),
        node: node.clone(),
        time,
        stream,
        line,
        error,
    };
    let opened = open(
        &control,
        peers.as_deref(),
        &node,
        &a.id,
        v1::stream_request::Kind::Logs(req),
    )
    .await;
    let mut up = match opened {
        Ok(up) => up,
        Err(e) => {
            let _ = tx
                .send(entry(
                    String::new(),
                    String::new(),
                    String::new(),
                    Some(e.to_string()),
                ))
                .await;
            return;
        }
    };
    while let Some(m) = up.recv().await {
        let e = match m.kind {
            Some(stream_up::Kind::Log(l)) => entry(l.time, l.stream, l.line, None),
            Some(stream_up::Kind::End(end)) if !end.error.is_empty() => {
                entry(String::new(), String::new(), String::new(), Some(end.error))
            }
            Some(stream_up::Kind::End(_)) => break,
            _ => continue,
        };
        if tx.send(e).await.is_err() {
            return;
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The command and its arguments.
    #[schema(min_items = 1)]
    pub command: Vec<String>,
    /// Which allocation [default: the first running one].
    #[serde(default)]
    pub allocation: Option<String>,
    /// More environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// User (name or uid[:gid]) [default: the container's].
    #[serde(default)]
    pub user: Option<String>,
    /// Absolute working directory [default: the container's].
    #[serde(default)]
    pub workdir: Option<String>,
}

/// One line of `POST /v1/workloads/{name}/exec`: output, then the exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecEntry {
    /// `stdout` or `stderr`, with `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The output bytes, base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The last line: the command's exit code (126: it could not be
    /// run, 127: not found)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// ...or why it could not be run at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The allocation it runs in (on the first line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<String>,
}

/// Runs a command in one of a workload's running containers (not
/// interactive), streaming its output and then its exit code.
#[utoipa::path(post, path = "/v1/workloads/{name}/exec", tag = "workloads",
    params(("name" = String, Path), NamespaceQuery), request_body = ExecRequest,
    responses(
        (status = 200, description = "Newline-delimited JSON, one ExecEntry per line",
            content_type = "application/x-ndjson", body = ExecEntry),
        (status = 400, body = ApiError),
        (status = 404, description = "No such workload, or nothing of it running", body = ApiError),
        (status = 503, description = "The node does not answer", body = ApiError)))]
pub(super) async fn exec(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ns: Result<Query<NamespaceQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let name = scope::one(&s, &caller, ns)?.key(&name)?;
    let req: ExecRequest = json_body(&body?)?;
    if req.command.is_empty() {
        return Err(ApiError::bad("command: at least one element"));
    }
    let running: Vec<AllocationRecord> = placed(&s.control, &name, req.allocation.as_deref())?
        .into_iter()
        .filter(|a| a.state == AllocationState::Running)
        .collect();
    let a = running
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("workload {name} has no running allocation")))?;
    let node = a.node.clone().unwrap_or_default();
    let kind = v1::stream_request::Kind::Exec(v1::ExecRequest {
        command: req.command,
        env: req.env.into_iter().collect(),
        user: req.user.unwrap_or_default(),
        workdir: req.workdir.unwrap_or_default(),
    });
    let mut up = open(&s.control, s.peers.as_deref(), &node, &a.id, kind).await?;
    let (tx, rx) = mpsc::channel::<ExecEntry>(64);
    let first = ExecEntry {
        stream: None,
        data: None,
        exit_code: None,
        error: None,
        allocation: Some(a.id.clone()),
    };
    tokio::spawn(async move {
        if tx.send(first).await.is_err() {
            return;
        }
        while let Some(m) = up.recv().await {
            let e = match m.kind {
                Some(stream_up::Kind::Output(o)) => ExecEntry {
                    stream: Some(o.stream),
                    data: Some(base64::engine::general_purpose::STANDARD.encode(&o.data)),
                    exit_code: None,
                    error: None,
                    allocation: None,
                },
                Some(stream_up::Kind::End(end)) => ExecEntry {
                    stream: None,
                    data: None,
                    exit_code: end.exit_code,
                    error: (!end.error.is_empty()).then_some(end.error),
                    allocation: None,
                },
                _ => continue,
            };
            let last = e.exit_code.is_some() || e.error.is_some();
            if tx.send(e).await.is_err() || last {
                return;
            }
        }
    });
    Ok(ndjson(rx))
}
