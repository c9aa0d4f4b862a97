//! The agent port: `Join` (TLS; the token is the credential) and
//! `Session` (mutual TLS; the node is whoever its certificate says).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use skiff_proto::cluster::NodeStatus;
use skiff_proto::wire::v1::{
    self, AgentMessage, GatewayMessage, JoinRequest, JoinResponse, RenewRequest, RenewResponse,
    agent_message, gateway_message,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::control::{Control, ControlError, NodeRecord, now_ms};
use crate::pki::{Pki, sha256_hex};
use crate::store::Kind;

pub use crate::control::changes::JOIN_TOKEN_PREFIX;

/// Both services.
#[derive(Debug, Clone)]
pub struct AgentPort {
    pub control: Arc<Control>,
    pub pki: Arc<Pki>,
}

fn status(e: ControlError) -> Status {
    match e {
        ControlError::NotFound(m) => Status::not_found(m),
        ControlError::Conflict(m) => Status::already_exists(m),
        ControlError::Invalid(m) => Status::invalid_argument(m),
        ControlError::Unauthenticated(m) => Status::unauthenticated(m),
        ControlError::Store(e) => Status::internal(e.to_string()),
    }
}

impl AgentPort {
    /// The node whose certificate made this connection.
    fn node_of<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let certs = req.peer_certs().ok_or_else(|| {
            Status::unauthenticated("a node certificate is required (join first)")
        })?;
        let leaf = certs.first().ok_or_else(|| {
            Status::unauthenticated("a node certificate is required (join first)")
        })?;
        let hash = sha256_hex(leaf.as_ref());
        self.control
            .read(|s| {
                s.nodes
                    .values()
                    .find(|n| n.cert_hash == hash)
                    .map(|n| n.id.clone())
            })
            .ok_or_else(|| {
                Status::unauthenticated(
                    "this certificate belongs to no node (it was removed or replaced)",
                )
            })
    }
}

#[tonic::async_trait]
impl v1::join_server::Join for AgentPort {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let r = req.into_inner();
        let token_hash = sha256_hex(r.token.as_bytes());
        let c = &self.control;
        let pki = &self.pki;
        let lifetime = c.config.cert_lifetime;
        let out = c
            .write(|s, b| {
                let now = now_ms();
                let t = s.join_tokens.get_mut(&token_hash).ok_or_else(|| {
                    ControlError::Unauthenticated("join token is not valid".into())
                })?;
                if t.used {
                    return Err(ControlError::Unauthenticated(
                        "join token was already used".into(),
                    ));
                }
                if t.expires_ms <= now {
                    return Err(ControlError::Unauthenticated(
                        "join token has expired".into(),
                    ));
                }
                t.used = true;
                let site = t.site.clone();
                b.put(Kind::JoinToken, &token_hash, t);
                let base = if skiff_proto::is_valid_name(&r.requested_name) {
                    r.requested_name.clone()
                } else {
                    "node".to_string()
                };
                let mut id = base.clone();
                while s.nodes.contains_key(&id) {
                    id = format!(
                        "{}-{}",
                        &base[..base.len().min(54)],
                        crate::pki::random_hex(4)
                    );
                }
                let subnet = c.next_subnet(s)?;
                let (cert, not_after) = pki
                    .issue_node(&r.csr_der, &id, lifetime)
                    .map_err(|e| ControlError::Invalid(e.to_string()))?;
                let node = NodeRecord {
                    id: id.clone(),
                    site: site.clone(),
                    status: NodeStatus::Down,
                    unschedulable: false,
                    draining: false,
                    subnet,
                    cert_hash: sha256_hex(&cert),
                    cert_not_after_ms: not_after,
                    labels: Default::default(),
                    capacity: Default::default(),
                    allocatable: Default::default(),
                    os: String::new(),
                    arch: String::new(),
                    agent_version: String::new(),
                    hostname: String::new(),
                    joined_ms: now,
                    generation: 1,
                    instance_id: None,
                    idle_since_ms: None,
                    scale_in: None,
                };
                b.put(Kind::Node, &id, &node);
                s.nodes.insert(id.clone(), node);
                Ok(JoinResponse {
                    node_id: id,
                    site,
                    certificate_der: cert,
                    ca_certificate_der: pki.ca_der().to_vec(),
                    not_after_unix_ms: not_after,
                    container_subnet: subnet.to_string(),
                })
            })
            .map_err(status)?;
        c.event("node", &out.node_id, format!("joined site {}", out.site));
        Ok(Response::new(out))
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<GatewayMessage, Status>> + Send>>;
type DownStream = Pin<Box<dyn Stream<Item = Result<v1::StreamDown, Status>> + Send>>;

#[tonic::async_trait]
impl v1::session_server::Session for AgentPort {
    type AttachStream = OutStream;
    type StreamStream = DownStream;

    /// A node answering a `StreamRequest`: its messages go to the REST
    /// handler waiting for them; when that one is done (the operator went
    /// away), this call's answer ends, which stops the agent's work.
    async fn stream(
        &self,
        req: Request<Streaming<v1::StreamUp>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let node = self.node_of(&req)?;
        let mut inbound = req.into_inner();
        let first = inbound
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("the stream ended before open"))??;
        let Some(v1::stream_up::Kind::Open(open)) = first.kind else {
            return Err(Status::invalid_argument("the first message must be open"));
        };
        let tx = self
            .control
            .streams
            .accept(&node, &open.request_id)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no request {} for node {node} (it timed out or was cancelled)",
                    open.request_id
                ))
            })?;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = inbound.next() => match m {
                        Some(Ok(m)) => if tx.send(m).await.is_err() { break },
                        _ => break,
                    },
                    () = tx.closed() => break,
                }
            }
            drop(done_tx);
        });
        // Nothing goes down yet; the answer ends when the relay does.
        let down = futures::stream::once(async move {
            let _ = done_rx.await;
            None
        })
        .filter_map(|x: Option<Result<v1::StreamDown, Status>>| x);
        Ok(Response::new(Box::pin(down)))
    }

    async fn attach(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let node = self.node_of(&req)?;
        let mut inbound = req.into_inner();
        let first = inbound
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("the stream ended before Register"))??;
        let Some(agent_message::Kind::Register(reg)) = first.kind else {
            return Err(Status::invalid_argument(
                "the first message must be Register",
            ));
        };
        let c = Arc::clone(&self.control);
        // Soft: the agent sends all of it again on its next connect.
        let (was_down, registered) = c
            .write_soft(|s, b| {
                let n = s.nodes.get_mut(&node).ok_or_else(|| {
                    ControlError::Unauthenticated(format!("node {node} was removed"))
                })?;
                let was_down = n.status == NodeStatus::Down;
                n.status = NodeStatus::Ready;
                n.capacity = reg.capacity.unwrap_or_default().into();
                n.allocatable = reg.allocatable.unwrap_or_default().into();
                n.labels = reg.labels.clone().into_iter().collect();
                if let Some(p) = &reg.platform {
                    n.os = p.os.clone();
                    n.arch = p.architecture.clone();
                }
                n.agent_version = reg.agent_version.clone();
                n.hostname = reg.hostname.clone();
                b.put(Kind::Node, &node, n);
                Ok((
                    was_down,
                    v1::Registered {
                        node_id: n.id.clone(),
                        site: n.site.clone(),
                        container_subnet: n.subnet.to_string(),
                        heartbeat_interval_ms: c.config.heartbeat_interval.as_millis() as u32,
                    },
                ))
            })
            .map_err(status)?;
        let (tx, rx) = mpsc::channel::<GatewayMessage>(16);
        let serial = c.open_session(&node, tx.clone());
        if was_down {
            c.event("node", &node, "ready");
        }
        let _ = tx
            .send(GatewayMessage {
                kind: Some(gateway_message::Kind::Registered(registered)),
            })
            .await;
        // What it runs now; then its desired state (which may stop some).
        c.report(&node, &reg.allocations);
        let _ = tx.send(c.desired_state(&node)).await;
        c.wake();
        let c2 = Arc::clone(&c);
        let node2 = node.clone();
        tokio::spawn(async move {
            while let Some(msg) = inbound.next().await {
                let Ok(msg) = msg else { break };
                c2.heard_from(&node2);
                match msg.kind {
                    Some(agent_message::Kind::Heartbeat(hb)) => {
                        c2.metrics.heartbeats.inc();
                        let delay = (now_ms() - hb.sent_unix_ms).max(0) as f64 / 1000.0;
                        c2.metrics.heartbeat_delay_seconds.observe(delay);
                    }
                    Some(agent_message::Kind::Allocations(r)) => c2.report(&node2, &r.allocations),
                    Some(agent_message::Kind::NodeStatus(_)) => {}
                    Some(agent_message::Kind::Register(_)) | None => {}
                }
            }
            c2.close_session(&node2, serial);
            tracing::info!(node = %node2, "session ended");
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        let node = self.node_of(&req)?;
        let csr = req.into_inner().csr_der;
        let (cert, not_after) = self
            .pki
            .issue_node(&csr, &node, self.control.config.cert_lifetime)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let hash = sha256_hex(&cert);
        self.control
            .write(|s, b| {
                let n = s
                    .nodes
                    .get_mut(&node)
                    .ok_or_else(|| ControlError::NotFound(node.clone()))?;
                n.cert_hash = hash;
                n.cert_not_after_ms = not_after;
                b.put(Kind::Node, &node, n);
                Ok(())
            })
            .map_err(status)?;
        self.control.event("node", &node, "certificate renewed");
        Ok(Response::new(RenewResponse {
            certificate_der: cert,
            not_after_unix_ms: not_after,
        }))
    }
}
