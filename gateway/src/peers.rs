//! The other gateways of a fleet, as the API and the agent port see them.
//!
//! A follower hands every change to the leader: REST writes (and the
//! event stream, which the leader emits) are forwarded as they are, with
//! the caller's token, and answered with the leader's answer; what agents
//! change (a join, a registration, status reports, a renewed certificate,
//! liveness) goes to the leader's internal endpoint. With the embedded
//! store there are no peers and nothing is forwarded. The implementation
//! over etcd is `crate::cluster`.

use serde::{Deserialize, Serialize};
use skiff_proto::wire::v1;

use crate::control::ControlError;

/// What `GET /v1/gateways` shows of one gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GatewayView {
    pub name: String,
    /// Its REST API.
    pub url: String,
    /// `leader` or `follower`.
    pub role: String,
    /// Since when it has been up (unix ms).
    pub up_since_ms: i64,
    /// Since when it has led (unix ms), for the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leading_since_ms: Option<i64>,
}

/// What a change handed to the leader fails with when this gateway took
/// the lead meanwhile: the caller makes it here.
pub const LEADS_NOW: &str = "this gateway leads the fleet now";

/// Whether `e` is [`LEADS_NOW`].
pub fn leads_now(e: &ControlError) -> bool {
    matches!(e, ControlError::Unavailable(m) if m == LEADS_NOW)
}

#[tonic::async_trait]
pub trait Peers: Send + Sync + std::fmt::Debug {
    /// Sends a REST request to the leader and answers with its answer
    /// (`503` when no gateway leads); gives the request back when this
    /// gateway took the lead meanwhile.
    async fn forward(
        &self,
        req: axum::extract::Request,
    ) -> Result<axum::response::Response, axum::extract::Request>;
    async fn join(&self, r: &v1::JoinRequest) -> Result<v1::JoinResponse, ControlError>;
    async fn register(
        &self,
        node: &str,
        reg: &v1::Register,
    ) -> Result<v1::Registered, ControlError>;
    /// Status reports (retried while no gateway leads; agents send them
    /// all again when they reconnect).
    async fn report(&self, node: &str, report: &v1::AllocationStatusReport);
    async fn renewed(
        &self,
        node: &str,
        cert_hash: &str,
        not_after: i64,
    ) -> Result<(), ControlError>;
    /// A node's cloud takes it back soon.
    async fn notice(&self, node: &str, notice: &v1::Notice) -> Result<(), ControlError>;
    /// Every gateway of the fleet.
    async fn gateways(&self) -> Vec<GatewayView>;
    /// Opens a stream (logs, exec) to a node whose session another
    /// gateway holds, through that gateway.
    async fn stream(
        &self,
        node: &str,
        allocation: &str,
        kind: v1::stream_request::Kind,
    ) -> Result<tokio::sync::mpsc::Receiver<v1::StreamUp>, crate::streams::StreamError>;
}
