//! Answers to the gateway's requests for data about an allocation (`skiff
//! logs`, `skiff exec`): each on a `Stream` call of its own, opened here,
//! so a busy log never holds up the session's heartbeats. The gateway ends
//! the call when the operator goes away; the work stops with it.

use std::sync::Arc;

use skiff_proto::wire::v1::{self, StreamUp, stream_request, stream_up};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::runtime::logs::{self, Follow, LogEvent, LogQuery};
use crate::runtime::{ExecOptions, Runtime};

/// Serves one request on a new `Stream` call over `channel`.
pub async fn serve(channel: Channel, runtime: Arc<Runtime>, req: v1::StreamRequest) {
    let (tx, rx) = mpsc::channel::<StreamUp>(64);
    let open = StreamUp {
        kind: Some(stream_up::Kind::Open(v1::StreamOpen {
            request_id: req.request_id.clone(),
        })),
    };
    if tx.send(open).await.is_err() {
        return;
    }
    let mut client = v1::session_client::SessionClient::new(channel);
    let call = client.stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let request_id = req.request_id.clone();
    let work = async move {
        let end = match req.kind {
            Some(stream_request::Kind::Logs(l)) => {
                send_logs(&runtime, &req.allocation_id, l, &tx).await
            }
            Some(stream_request::Kind::Exec(e)) => {
                send_exec(&runtime, &req.allocation_id, e, &tx).await
            }
            None => Err("this agent does not know the request's kind".to_string()),
        };
        let end = match end {
            Ok(exit_code) => v1::StreamEnd {
                exit_code,
                error: String::new(),
            },
            Err(error) => v1::StreamEnd {
                exit_code: None,
                error,
            },
        };
        let _ = tx
            .send(StreamUp {
                kind: Some(stream_up::Kind::End(end)),
            })
            .await;
    };
    // The call's answer ends when the gateway is done with it (or gone):
    // the work stops then, even mid-follow.
    let watched = async move {
        match call.await {
            Ok(resp) => {
                let mut down = resp.into_inner();
                while let Ok(Some(_)) = down.message().await {}
            }
            Err(s) => {
                tracing::debug!(request = %request_id, error = %s.message(), "stream refused")
            }
        }
    };
    tokio::pin!(work, watched);
    tokio::select! {
        // Done: the request stream ends with the work (its sender is
        // dropped), and the gateway then ends the call; waiting for that
        // makes sure every message, the end included, went out.
        () = &mut work => {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), watched).await;
        }
        // The gateway ended the call (the operator went away): stop.
        () = &mut watched => {}
    }
}

async fn send_logs(
    runtime: &Runtime,
    allocation: &str,
    req: v1::LogsRequest,
    tx: &mpsc::Sender<StreamUp>,
) -> Result<Option<i32>, String> {
    let (record, path) = runtime.log_path(allocation).map_err(|e| e.to_string())?;
    let follow = match req
        .follow
        .then(|| runtime.subscribe(&record.id).ok())
        .flatten()
    {
        Some(rx) => Follow::UntilRemoved(rx),
        None => Follow::No,
    };
    let query = LogQuery {
        tail: req.tail.map(|n| n as usize),
        since: (req.since_unix_ms > 0).then(|| {
            let t =
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(req.since_unix_ms as u64);
            crate::runtime::logfile::rfc3339(t)
        }),
    };
    let mut events = logs::read(path, None, query, follow);
    while let Some(e) = events.recv().await {
        if let LogEvent::Line(l) = e {
            let up = StreamUp {
                kind: Some(stream_up::Kind::Log(v1::LogLine {
                    time: l.time,
                    stream: l.stream,
                    line: l.log,
                })),
            };
            if tx.send(up).await.is_err() {
                break;
            }
        }
    }
    Ok(None)
}

async fn send_exec(
    runtime: &Runtime,
    allocation: &str,
    req: v1::ExecRequest,
    tx: &mpsc::Sender<StreamUp>,
) -> Result<Option<i32>, String> {
    let opts = ExecOptions {
        cmd: req.command,
        env: req
            .env
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        user: (!req.user.is_empty()).then_some(req.user),
        workdir: (!req.workdir.is_empty()).then_some(req.workdir),
    };
    let mut child = runtime.exec(allocation, &opts).map_err(|e| e.to_string())?;
    let mut pumps = Vec::new();
    for (pipe, stream) in [
        (
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            "stdout",
        ),
        (
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            "stderr",
        ),
    ] {
        if let Some(pipe) = pipe {
            pumps.push(tokio::spawn(pump(pipe, stream, tx.clone())));
        }
    }
    for p in pumps {
        let _ = p.await;
    }
    let code = match child.wait().await {
        Ok(st) => st.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)
        }),
        Err(e) => return Err(format!("exec: {e}")),
    };
    Ok(Some(code))
}

async fn pump(
    mut pipe: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    stream: &'static str,
    tx: mpsc::Sender<StreamUp>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = pipe.read(&mut buf).await
        && n > 0
    {
        let up = StreamUp {
            kind: Some(stream_up::Kind::Output(v1::ExecOutput {
                stream: stream.into(),
                data: buf[..n].to_vec(),
            })),
        };
        if tx.send(up).await.is_err() {
            return;
        }
    }
}
