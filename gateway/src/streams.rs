//! Data from one agent for one operator request (`skiff logs`, `skiff
//! exec`), brokered: the REST handler asks the node over its session
//! (`StreamRequest`), the agent answers on a `Stream` call of its own, and
//! [`Streams`] hands that call's messages to the handler that is waiting.
//! Only the node the request went to can answer it; a request nobody
//! answers in time fails with the node named.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use skiff_proto::wire::v1::{self, StreamUp, gateway_message};
use tokio::sync::{mpsc, oneshot};

/// How long a node has to open the `Stream` call for a request.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("node {0} has no session with this gateway")]
    NoSession(String),
    #[error("node {node} did not answer within {within:?}")]
    NoAnswer { node: String, within: Duration },
    /// The gateway holding the node's session could not be asked.
    #[error("node {node}: through gateway {gateway}: {why}")]
    Relay {
        node: String,
        gateway: String,
        why: String,
    },
}

/// A request waiting for its node to call back.
#[derive(Debug)]
struct Pending {
    node: String,
    answer: oneshot::Sender<mpsc::Receiver<StreamUp>>,
}

/// The requests waiting for their node.
#[derive(Debug, Default)]
pub struct Streams {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Streams {
    /// Sends `kind` about `allocation` to `node` through `send` (its
    /// session) and waits for the node's `Stream` call; returns what the
    /// node sends on it, the `open` message excluded.
    pub async fn open(
        &self,
        node: &str,
        allocation: &str,
        kind: v1::stream_request::Kind,
        send: impl FnOnce(v1::GatewayMessage) -> bool,
    ) -> Result<mpsc::Receiver<StreamUp>, StreamError> {
        let request_id = crate::pki::random_hex(12);
        let (answer, answered) = oneshot::channel();
        self.pending.lock().expect("lock").insert(
            request_id.clone(),
            Pending {
                node: node.to_string(),
                answer,
            },
        );
        let msg = v1::GatewayMessage {
            kind: Some(gateway_message::Kind::StreamRequest(v1::StreamRequest {
                request_id: request_id.clone(),
                allocation_id: allocation.to_string(),
                kind: Some(kind),
            })),
        };
        if !send(msg) {
            self.pending.lock().expect("lock").remove(&request_id);
            return Err(StreamError::NoSession(node.to_string()));
        }
        let result = tokio::time::timeout(ANSWER_WITHIN, answered).await;
        self.pending.lock().expect("lock").remove(&request_id);
        match result {
            Ok(Ok(rx)) => Ok(rx),
            _ => Err(StreamError::NoAnswer {
                node: node.to_string(),
                within: ANSWER_WITHIN,
            }),
        }
    }

    /// The node's `Stream` call for `request_id`: where to put its
    /// messages, if the request exists and went to this node.
    pub fn accept(&self, node: &str, request_id: &str) -> Option<mpsc::Sender<StreamUp>> {
        let mut pending = self.pending.lock().expect("lock");
        if pending.get(request_id).is_none_or(|p| p.node != node) {
            return None;
        }
        let p = pending.remove(request_id)?;
        let (tx, rx) = mpsc::channel(64);
        p.answer.send(rx).ok()?;
        Some(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs() -> v1::stream_request::Kind {
        v1::stream_request::Kind::Logs(v1::LogsRequest::default())
    }

    #[tokio::test]
    async fn only_the_asked_node_can_answer() {
        let streams = std::sync::Arc::new(Streams::default());
        let (sent_tx, mut sent) = mpsc::unbounded_channel();
        let s = std::sync::Arc::clone(&streams);
        let opening = tokio::spawn(async move {
            s.open("node-a", "alloc-1", logs(), |m| sent_tx.send(m).is_ok())
                .await
        });
        let msg = sent.recv().await.unwrap();
        let Some(gateway_message::Kind::StreamRequest(req)) = msg.kind else {
            panic!("{msg:?}");
        };
        assert_eq!(req.allocation_id, "alloc-1");
        assert!(streams.accept("node-b", &req.request_id).is_none());
        let tx = streams.accept("node-a", &req.request_id).unwrap();
        let mut rx = opening.await.unwrap().unwrap();
        tx.send(StreamUp::default()).await.unwrap();
        assert!(rx.recv().await.is_some());
        // Accepted once only.
        assert!(streams.accept("node-a", &req.request_id).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_without_a_session_or_an_answer_is_named() {
        let streams = Streams::default();
        let e = streams
            .open("node-a", "x", logs(), |_| false)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "node node-a has no session with this gateway"
        );
        let e = streams
            .open("node-b", "x", logs(), |_| true)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "node node-b did not answer within 10s");
        assert!(streams.pending.lock().unwrap().is_empty());
    }
}
