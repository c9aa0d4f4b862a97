//! What a follower hands to the leader, and the leader's side of it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use prost::Message;
use serde::{Deserialize, Serialize};
use skiff_proto::wire::v1;

use super::Cluster;
use crate::api::ApiError;
use crate::control::ControlError;
use crate::control::leadership::{NOT_LEADER, is_not_leader};
use crate::peers::{GatewayView, LEADS_NOW, Peers};

use crate::api::{FORWARDED, REVISION};

/// How long an agent's change may take on a busy leader (joins queue for
/// the state lock behind one another).
const AGENT_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a change waits for a leader during an election.
const HOLD: Duration = Duration::from_secs(5);

/// The credential of the internal endpoint: derived from the admin token,
/// which every gateway of a fleet has (and no one else should).
pub(super) fn peer_secret(admin_token: &str) -> String {
    let hash = crate::pki::sha256_hex(format!("skiff-peer:{admin_token}").as_bytes());
    format!("skiff-peer-{}", hash.trim_start_matches("sha256:"))
}

/// An agent's change, from the gateway holding its session to the leader.
/// Protobuf messages travel as base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentChange {
    Join {
        request: String,
    },
    Register {
        node: String,
        register: String,
    },
    Report {
        node: String,
        statuses: String,
    },
    /// Status reports of several nodes, in the order they came.
    Reports {
        reports: Vec<(String, String)>,
    },
    Renewed {
        node: String,
        cert_hash: String,
        not_after_ms: i64,
    },
    /// Nodes heard from (heartbeats) since the last batch.
    Seen {
        nodes: Vec<String>,
    },
    /// A node's cloud takes it back soon.
    Notice {
        node: String,
        notice: String,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AgentAnswer {
    /// A protobuf answer (`JoinResponse`, `Registered`), base64.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    message: String,
}

pub(super) fn b64<M: Message>(m: &M) -> String {
    base64::engine::general_purpose::STANDARD.encode(m.encode_to_vec())
}

pub(super) fn unb64<M: Message + Default>(s: &str) -> Result<M, ControlError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| ControlError::Invalid(format!("base64: {e}")))?;
    M::decode(bytes.as_slice()).map_err(|e| ControlError::Invalid(format!("protobuf: {e}")))
}

/// The internal endpoints: the leader's for agents' changes, every
/// gateway's for streams of the nodes whose session it holds.
pub fn internal_router(c: Arc<Cluster>) -> axum::Router {
    axum::Router::new()
        .route("/internal/v1/agent", axum::routing::post(agent_change))
        .route(
            "/internal/v1/stream",
            axum::routing::post(super::streams::stream_here),
        )
        .with_state(c)
}

/// Whether the caller is a gateway of this fleet (the answer if not).
pub(super) fn authenticated(c: &Cluster, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !crate::api::auth::constant_time_eq(token.as_bytes(), c.secret.as_bytes()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "not a gateway of this fleet",
        ));
    }
    Ok(())
}

async fn agent_change(
    State(c): State<Arc<Cluster>>,
    headers: HeaderMap,
    axum::Json(change): axum::Json<AgentChange>,
) -> Response {
    if let Err(denied) = authenticated(&c, &headers) {
        return denied.into_response();
    }
    if !c.control.is_leader() {
        return not_leader().into_response();
    }
    // Off the async workers: the change waits for the state lock and its
    // commit.
    let r = match tokio::task::spawn_blocking(move || apply(&c, change)).await {
        Ok(r) => r,
        Err(e) => Err(ControlError::Unavailable(format!("the change failed: {e}"))),
    };
    match r {
        Ok(message) => axum::Json(AgentAnswer { message }).into_response(),
        Err(e) if is_not_leader(&e) => not_leader().into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// An agent's change, made here (the leader).
fn apply(c: &Cluster, change: AgentChange) -> Result<String, ControlError> {
    let control = &c.control;
    match change {
        AgentChange::Join { request } => unb64::<v1::JoinRequest>(&request)
            .and_then(|r| control.join(&r, &c.pki))
            .map(|m| b64(&m)),
        AgentChange::Register { node, register } => unb64::<v1::Register>(&register)
            .and_then(|r| control.register(&node, &r))
            .map(|m| b64(&m)),
        AgentChange::Report { node, statuses } => unb64::<v1::AllocationStatusReport>(&statuses)
            .and_then(|r| control.report(&node, &r))
            .map(|()| String::new()),
        AgentChange::Reports { reports } => reports
            .iter()
            .map(|(node, r)| unb64::<v1::AllocationStatusReport>(r).map(|r| (node.clone(), r)))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|all| control.report_many(&all))
            .map(|()| String::new()),
        AgentChange::Renewed {
            node,
            cert_hash,
            not_after_ms,
        } => control
            .renewed(&node, &cert_hash, not_after_ms)
            .map(|()| String::new()),
        AgentChange::Seen { nodes } => {
            control.heard_from_many(&nodes);
            Ok(String::new())
        }
        AgentChange::Notice { node, notice } => unb64::<v1::Notice>(&notice)
            .and_then(|n| control.notice(&node, &n))
            .map(|()| String::new()),
    }
}

/// The internal endpoint's answer when this gateway does not lead (any
/// more): nothing was written, the sender tries the leader again.
fn not_leader() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, NOT_LEADER_CODE, NOT_LEADER)
}

const NOT_LEADER_CODE: &str = "not_leader";

fn no_leader(c: &Cluster) -> ControlError {
    ControlError::Unavailable(match c.control.store_down() {
        Some(why) => why,
        None => "no gateway leads the fleet now (an election is under way); retry".into(),
    })
}

impl Cluster {
    /// The leader's URL, if another gateway leads.
    fn leader_url(&self) -> Result<String, ControlError> {
        match self.control.leader() {
            Some(l) if l.name != self.control.config.name => Ok(l.url),
            _ => Err(no_leader(self)),
        }
    }

    /// Sends a request to the leader, built by `request` for the leader's
    /// base URL. While an election is under way (no leader, one that
    /// cannot be connected to, or one that says it no longer leads:
    /// nothing was written), it waits for the next, as Nomad's servers
    /// hold forwarded RPCs: up to [`HOLD`].
    async fn to_leader(
        &self,
        request: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<Sent, ControlError> {
        let deadline = tokio::time::Instant::now() + HOLD;
        loop {
            if self.control.is_leader() {
                return Ok(Sent::LeadsNow);
            }
            let attempt = match self.leader_url() {
                Ok(base) => match request(&base).send().await {
                    Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                        let (status, headers) = (r.status(), r.headers().clone());
                        let body = r.bytes().await.unwrap_or_default();
                        let e: Option<ApiError> = serde_json::from_slice(&body).ok();
                        if !e.is_some_and(|e| {
                            e.code == NOT_LEADER_CODE || e.message.starts_with(NOT_LEADER)
                        }) {
                            return Ok(Sent::Unavailable {
                                status,
                                headers,
                                body,
                            });
                        }
                        ControlError::Unavailable(NOT_LEADER.into())
                    }
                    Ok(response) => return Ok(Sent::Answer { base, response }),
                    // It never reached the leader: safe to send again,
                    // to the one that leads now.
                    Err(e) if e.is_connect() => {
                        self.refresh_leader().await;
                        ControlError::Unavailable(format!("the leader at {base}: {e}"))
                    }
                    Err(e) => {
                        return Err(ControlError::Unavailable(format!(
                            "the leader at {base}: {e}"
                        )));
                    }
                },
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(attempt);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn send(&self, change: &AgentChange) -> Result<String, ControlError> {
        let body = serde_json::to_vec(change).expect("serializes");
        let sent = self
            .to_leader(|base| {
                self.http
                    .post(format!("{base}/internal/v1/agent"))
                    .bearer_auth(&self.secret)
                    .header(axum::http::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .timeout(AGENT_CHANGE_TIMEOUT)
            })
            .await?;
        let (base, r) = match sent {
            Sent::LeadsNow => return Err(ControlError::Unavailable(LEADS_NOW.into())),
            Sent::Unavailable { body, .. } => {
                let e: Option<ApiError> = serde_json::from_slice(&body).ok();
                return Err(ControlError::Unavailable(e.map_or_else(
                    || "the leader answered 503".to_string(),
                    |e| e.message,
                )));
            }
            Sent::Answer { base, response } => (base, response),
        };
        let status = r.status();
        let body = r
            .bytes()
            .await
            .map_err(|e| ControlError::Unavailable(format!("the leader at {base}: {e}")))?;
        if status.is_success() {
            let a: AgentAnswer = serde_json::from_slice(&body)
                .map_err(|e| ControlError::Unavailable(format!("the leader at {base}: {e}")))?;
            return Ok(a.message);
        }
        let e: ApiError = serde_json::from_slice(&body).unwrap_or_else(|_| {
            ApiError::unavailable(format!("the leader at {base} answered {status}"))
        });
        Err(match status {
            StatusCode::NOT_FOUND => ControlError::NotFound(e.message),
            StatusCode::CONFLICT => ControlError::Conflict(e.message),
            StatusCode::BAD_REQUEST => ControlError::Invalid(e.message),
            StatusCode::UNAUTHORIZED => ControlError::Unauthenticated(e.message),
            _ => ControlError::Unavailable(e.message),
        })
    }

    /// Sends the nodes heard from to the leader, twice per heartbeat
    /// interval (nothing when this gateway leads: it saw them itself).
    pub(super) async fn send_heard(self: Arc<Self>) {
        let every = (self.control.config.heartbeat_interval / 2).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(every).await;
            if self.control.is_leader() {
                continue;
            }
            let nodes = self.control.take_heard();
            if nodes.is_empty() {
                continue;
            }
            if let Err(e) = self.send(&AgentChange::Seen { nodes }).await {
                // A new leader gives every node a full grace period.
                tracing::debug!(error = %e, "liveness to the leader");
            }
        }
    }

    /// Sends the status reports gathered since the last flush to the
    /// leader, every 20 ms, in order; kept and sent again while no leader
    /// takes them (agents send everything again on reconnect anyway).
    pub(super) async fn send_reports(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let batch = std::mem::take(&mut *self.reports.lock().expect("lock"));
            if batch.is_empty() {
                continue;
            }
            if self.control.is_leader() {
                if let Err(e) = self.control.report_many(&batch) {
                    tracing::warn!(error = %e, "store allocation status");
                }
                continue;
            }
            let change = AgentChange::Reports {
                reports: batch.iter().map(|(n, r)| (n.clone(), b64(r))).collect(),
            };
            if let Err(e) = self.send(&change).await {
                if self.control.is_leader() {
                    if let Err(e) = self.control.report_many(&batch) {
                        tracing::warn!(error = %e, "store allocation status");
                    }
                    continue;
                }
                tracing::warn!(error = %e, reports = batch.len(), "status reports to the leader; again");
                // In front of what came since.
                let mut pending = self.reports.lock().expect("lock");
                let later = std::mem::replace(&mut *pending, batch);
                pending.extend(later);
            }
        }
    }

    /// Forwards a REST request to the leader.
    async fn forward_rest(
        &self,
        req: axum::extract::Request,
    ) -> Result<Result<Response, axum::extract::Request>, ApiError> {
        if req.headers().contains_key(FORWARDED) {
            // A forwarded request reached a gateway that no longer leads.
            // (Said with NOT_LEADER first: the follower that forwarded it
            // sends it on to the next leader.)
            return Err(ApiError::unavailable(format!(
                "{NOT_LEADER} (any more): a request forwarded to it goes to the next leader"
            )));
        }
        let (parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |p| p.as_str());
        let body = axum::body::to_bytes(body, self.control.config.max_body)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "the request body is larger than max_body",
                )
            })?;
        let sent = self
            .to_leader(|base| {
                let mut out = self
                    .http
                    .request(parts.method.clone(), format!("{base}{path}"))
                    .body(body.clone());
                for (name, value) in &parts.headers {
                    if name != axum::http::header::HOST
                        && name != axum::http::header::CONTENT_LENGTH
                    {
                        out = out.header(name, value);
                    }
                }
                out.header(
                    FORWARDED,
                    HeaderValue::from_str(&self.control.config.name)
                        .expect("a name is a header value"),
                )
            })
            .await?;
        let (base, r) = match sent {
            Sent::LeadsNow => {
                let req = axum::extract::Request::from_parts(parts, axum::body::Body::from(body));
                return Ok(Err(req));
            }
            // The leader's own 503 (its store is down, say) goes back.
            Sent::Unavailable {
                status,
                headers,
                body,
            } => return Ok(Ok(relay(status, headers, axum::body::Body::from(body)))),
            Sent::Answer { base, response } => (base, response),
        };
        let status = r.status();
        let mut headers = r.headers().clone();
        let revision = headers
            .remove(REVISION)
            .and_then(|v| v.to_str().ok()?.parse::<i64>().ok());
        headers.remove(axum::http::header::TRANSFER_ENCODING);
        headers.remove(axum::http::header::CONNECTION);
        if let Some(rev) = revision {
            // Read your writes: this gateway's state has the change before
            // the caller reads it here.
            let body = r
                .bytes()
                .await
                .map_err(|e| ApiError::unavailable(format!("the leader at {base}: {e}")))?;
            self.control.caught_up(rev, Duration::from_secs(2)).await;
            return Ok(Ok(relay(status, headers, axum::body::Body::from(body))));
        }
        let body = axum::body::Body::from_stream(r.bytes_stream());
        Ok(Ok(relay(status, headers, body)))
    }
}

/// What became of a request to the leader.
enum Sent {
    /// This gateway took the lead meanwhile: it answers itself.
    LeadsNow,
    /// The leader's answer.
    Answer {
        base: String,
        response: reqwest::Response,
    },
    /// The leader's 503 for another reason than not leading (its store
    /// is down, say), its body read.
    Unavailable {
        status: StatusCode,
        headers: HeaderMap,
        body: axum::body::Bytes,
    },
}

/// The leader's answer, as this gateway's (the body's length may change
/// in transit).
fn relay(status: StatusCode, headers: HeaderMap, body: axum::body::Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp.headers_mut()
        .remove(axum::http::header::CONTENT_LENGTH);
    resp
}

#[tonic::async_trait]
impl Peers for Cluster {
    async fn forward(
        &self,
        req: axum::extract::Request,
    ) -> Result<Response, axum::extract::Request> {
        match self.forward_rest(req).await {
            Ok(r) => r,
            Err(e) => Ok(e.into_response()),
        }
    }

    async fn join(&self, r: &v1::JoinRequest) -> Result<v1::JoinResponse, ControlError> {
        let m = self.send(&AgentChange::Join { request: b64(r) }).await?;
        unb64(&m)
    }

    async fn register(
        &self,
        node: &str,
        reg: &v1::Register,
    ) -> Result<v1::Registered, ControlError> {
        let m = self
            .send(&AgentChange::Register {
                node: node.to_string(),
                register: b64(reg),
            })
            .await?;
        unb64(&m)
    }

    async fn report(&self, node: &str, report: &v1::AllocationStatusReport) {
        // Batched: the next flush sends every node's reports in one
        // request, which the leader commits at once.
        self.reports
            .lock()
            .expect("lock")
            .push((node.to_string(), report.clone()));
    }

    async fn renewed(
        &self,
        node: &str,
        cert_hash: &str,
        not_after: i64,
    ) -> Result<(), ControlError> {
        self.send(&AgentChange::Renewed {
            node: node.to_string(),
            cert_hash: cert_hash.to_string(),
            not_after_ms: not_after,
        })
        .await
        .map(|_| ())
    }

    async fn notice(&self, node: &str, notice: &v1::Notice) -> Result<(), ControlError> {
        self.send(&AgentChange::Notice {
            node: node.to_string(),
            notice: b64(notice),
        })
        .await
        .map(|_| ())
    }

    async fn gateways(&self) -> Vec<GatewayView> {
        self.members().await
    }

    async fn stream(
        &self,
        node: &str,
        allocation: &str,
        kind: v1::stream_request::Kind,
    ) -> Result<tokio::sync::mpsc::Receiver<v1::StreamUp>, crate::streams::StreamError> {
        self.stream_elsewhere(node, allocation, kind).await
    }
}
