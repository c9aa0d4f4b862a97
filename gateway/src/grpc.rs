//! The agent port: `Join` (TLS; the token is the credential) and
//! `Session` (mutual TLS; the node is whoever its certificate says).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use skiff_proto::wire::v1::{
    self, AgentMessage, GatewayMessage, JoinRequest, JoinResponse, RenewRequest, RenewResponse,
    agent_message, gateway_message,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::control::{Control, ControlError, now_ms};
use crate::pki::{Pki, sha256_hex};

pub use crate::control::changes::JOIN_TOKEN_PREFIX;

/// Both services.
#[derive(Debug, Clone)]
pub struct AgentPort {
    pub control: Arc<Control>,
    pub pki: Arc<Pki>,
    /// The other gateways of the fleet (over etcd).
    pub peers: Option<Arc<dyn crate::peers::Peers>>,
}

impl AgentPort {
    /// Whether a change failed because this gateway stopped leading while
    /// it made it: it goes to the leader instead.
    fn lost_lead(&self, e: &ControlError) -> bool {
        self.peers.is_some()
            && !self.control.is_leader()
            && matches!(
                e,
                ControlError::Unavailable(_)
                    | ControlError::Store(crate::store::StoreError::NotLeader)
            )
    }

    fn leader_now(&self) -> Result<&dyn crate::peers::Peers, Status> {
        self.leader()
            .ok_or_else(|| Status::unavailable(crate::control::leadership::NOT_LEADER))
    }

    /// Status reports, taken here when this gateway leads, else by the
    /// leader.
    async fn report(&self, node: &str, report: &v1::AllocationStatusReport) {
        if let Some(l) = self.leader() {
            return l.report(node, report).await;
        }
        match self.control.report(node, report) {
            Err(e) if self.lost_lead(&e) => {
                if let Some(l) = self.leader() {
                    l.report(node, report).await;
                }
            }
            Err(e) => tracing::error!(node, error = %e, "store allocation status"),
            Ok(()) => {}
        }
    }

    /// A node's cloud notice, recorded by the leader.
    async fn notice(&self, node: &str, n: &v1::Notice) -> Result<(), ControlError> {
        match self.leader() {
            Some(l) => match l.notice(node, n).await {
                Err(e) if crate::peers::leads_now(&e) => self.control.notice(node, n),
                other => other,
            },
            None => match self.control.notice(node, n) {
                Err(e) if self.lost_lead(&e) => match self.leader() {
                    Some(l) => l.notice(node, n).await,
                    None => Err(e),
                },
                other => other,
            },
        }
    }

    /// Where changes go when this gateway does not lead: the leader.
    fn leader(&self) -> Option<&dyn crate::peers::Peers> {
        self.peers.as_deref().filter(|_| !self.control.is_leader())
    }
}

pub(crate) fn status(e: ControlError) -> Status {
    match e {
        ControlError::NotFound(m) => Status::not_found(m),
        ControlError::Conflict(m) => Status::already_exists(m),
        ControlError::Invalid(m) => Status::invalid_argument(m),
        ControlError::Unauthenticated(m) => Status::unauthenticated(m),
        ControlError::Forbidden(m) => Status::permission_denied(m),
        ControlError::Store(
            e
            @ (crate::store::StoreError::Unavailable { .. } | crate::store::StoreError::NotLeader),
        ) => Status::unavailable(e.to_string()),
        ControlError::Store(e) => Status::internal(e.to_string()),
        ControlError::Placement(e) => Status::internal(e.to_string()),
        ControlError::Unavailable(m) => Status::unavailable(m),
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
        let out = match self.leader() {
            Some(l) => match l.join(&r).await {
                Err(e) if crate::peers::leads_now(&e) => self.control.join(&r, &self.pki),
                other => other,
            },
            None => match self.control.join(&r, &self.pki) {
                Err(e) if self.lost_lead(&e) => self.leader_now()?.join(&r).await,
                other => other,
            },
        }
        .map_err(status)?;
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
        let leader = self.leader();
        let registered = match &leader {
            Some(l) => match l.register(&node, &reg).await {
                Err(e) if crate::peers::leads_now(&e) => c.register(&node, &reg),
                other => other,
            },
            None => match c.register(&node, &reg) {
                Err(e) if self.lost_lead(&e) => self.leader_now()?.register(&node, &reg).await,
                other => other,
            },
        }
        .map_err(status)?;
        let (tx, rx) = mpsc::channel::<GatewayMessage>(16);
        let serial = c.open_session(&node, tx.clone());
        let _ = tx
            .send(GatewayMessage {
                kind: Some(gateway_message::Kind::Registered(registered)),
            })
            .await;
        // What it runs now; then its desired state (which may stop some).
        let report = v1::AllocationStatusReport {
            allocations: reg.allocations.clone(),
            volumes: reg.volumes.clone(),
        };
        self.report(&node, &report).await;
        let _ = tx.send(c.desired_state(&node)).await;
        c.wake();
        let c2 = Arc::clone(&c);
        let node2 = node.clone();
        let port = self.clone();
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
                    Some(agent_message::Kind::Allocations(r)) => {
                        port.report(&node2, &r).await;
                    }
                    Some(agent_message::Kind::Notice(n)) => {
                        if let Err(e) = port.notice(&node2, &n).await {
                            tracing::warn!(node = %node2, error = %e, "record a node's cloud notice (the agent tells the next session)");
                        }
                    }
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
        match self.leader() {
            Some(l) => match l.renewed(&node, &hash, not_after).await {
                Err(e) if crate::peers::leads_now(&e) => {
                    self.control.renewed(&node, &hash, not_after)
                }
                other => other,
            },
            None => match self.control.renewed(&node, &hash, not_after) {
                Err(e) if self.lost_lead(&e) => {
                    self.leader_now()?.renewed(&node, &hash, not_after).await
                }
                other => other,
            },
        }
        .map_err(status)?;
        Ok(Response::new(RenewResponse {
            certificate_der: cert,
            not_after_unix_ms: not_after,
        }))
    }
}
