//! Logs and exec of a node whose session another gateway holds: the
//! gateway the operator asked sends the request to the others' internal
//! endpoint `POST /internal/v1/stream`; the one holding the node's session
//! brokers it as for its own callers and relays what the node sends, one
//! base64 `StreamUp` per line; the others answer `404 no_session`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use skiff_proto::wire::v1::{self, StreamUp};
use tokio::sync::mpsc;

use super::Cluster;
use super::forward::{authenticated, b64, unb64};
use crate::api::ApiError;
use crate::streams::StreamError;

const NO_SESSION: &str = "no_session";

/// A stream request for a node, from one gateway to another.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StreamAsk {
    node: String,
    allocation: String,
    /// `StreamRequest` (its kind), protobuf, base64.
    request: String,
}

/// `POST /internal/v1/stream`: the node's answer, if its session is here.
pub(super) async fn stream_here(
    State(c): State<Arc<Cluster>>,
    headers: HeaderMap,
    axum::Json(ask): axum::Json<StreamAsk>,
) -> Response {
    if let Err(denied) = authenticated(&c, &headers) {
        return denied.into_response();
    }
    let Some(kind) = unb64::<v1::StreamRequest>(&ask.request)
        .ok()
        .and_then(|r| r.kind)
    else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "request: not a stream request",
        )
        .into_response();
    };
    let control = Arc::clone(&c.control);
    let opened = control
        .streams
        .open(&ask.node, &ask.allocation, kind, |m| {
            control.send_to(&ask.node, m)
        })
        .await;
    let up = match opened {
        Ok(up) => up,
        Err(e @ StreamError::NoSession(_)) => {
            return ApiError::new(StatusCode::NOT_FOUND, NO_SESSION, e.to_string()).into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let lines = tokio_stream::wrappers::ReceiverStream::new(up)
        .map(|m| Ok::<_, std::convert::Infallible>(format!("{}\n", b64(&m))));
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(axum::body::Body::from_stream(lines))
        .expect("a valid response")
}

impl Cluster {
    /// Opens a stream to `node` through the gateway holding its session
    /// (this one has none): each other gateway is asked in turn.
    pub(super) async fn stream_elsewhere(
        &self,
        node: &str,
        allocation: &str,
        kind: v1::stream_request::Kind,
    ) -> Result<mpsc::Receiver<StreamUp>, StreamError> {
        let ask = StreamAsk {
            node: node.to_string(),
            allocation: allocation.to_string(),
            request: b64(&v1::StreamRequest {
                request_id: String::new(),
                allocation_id: allocation.to_string(),
                kind: Some(kind),
            }),
        };
        let me = &self.control.config.name;
        let mut last = StreamError::NoSession(node.to_string());
        for g in self.members().await.into_iter().filter(|g| &g.name != me) {
            let sent = self
                .http
                .post(format!("{}/internal/v1/stream", g.url))
                .bearer_auth(&self.secret)
                .json(&ask)
                .send()
                .await;
            let r = match sent {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    let status = r.status();
                    let e: Option<ApiError> = r.json().await.ok();
                    if status != StatusCode::NOT_FOUND
                        || e.as_ref().is_none_or(|e| e.code != NO_SESSION)
                    {
                        last = StreamError::Relay {
                            node: node.to_string(),
                            gateway: g.name.clone(),
                            why: e.map_or_else(|| status.to_string(), |e| e.message),
                        };
                    }
                    continue;
                }
                Err(e) => {
                    last = StreamError::Relay {
                        node: node.to_string(),
                        gateway: g.name.clone(),
                        why: e.to_string(),
                    };
                    continue;
                }
            };
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(relay(r, tx));
            return Ok(rx);
        }
        Err(last)
    }
}

/// The other gateway's lines, as the node's messages, until either side
/// is done.
async fn relay(r: reqwest::Response, tx: mpsc::Sender<StreamUp>) {
    let mut body = r.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let Some(m) = std::str::from_utf8(&line[..end])
                .ok()
                .and_then(|l| unb64::<StreamUp>(l).ok())
            else {
                tracing::warn!("a relayed stream line does not decode; the stream ends");
                return;
            };
            if tx.send(m).await.is_err() {
                return;
            }
        }
    }
}
