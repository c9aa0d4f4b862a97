//! `/v1/nodes`: the fleet's nodes; cordon, uncordon, drain, remove.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::control::NodeRecord;
use crate::control::changes::NodeAction;

/// Every node of every site.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes",
    responses((status = 200, body = [NodeRecord])))]
pub(super) async fn list(State(s): State<AppState>) -> Json<Vec<NodeRecord>> {
    Json(
        s.control
            .read(|st| st.nodes.values().map(|n| n.clone().shown()).collect()),
    )
}

#[utoipa::path(get, path = "/v1/nodes/{id}", tag = "nodes", params(("id" = String, Path)),
    responses((status = 200, body = NodeRecord), (status = 404, body = ApiError)))]
pub(super) async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeRecord>> {
    s.control
        .read(|st| st.nodes.get(&id).cloned())
        .map(|n| Json(n.shown()))
        .ok_or_else(|| ApiError::not_found(format!("no node {id}")))
}

/// The node takes no new work.
#[utoipa::path(post, path = "/v1/nodes/{id}/cordon", tag = "nodes", params(("id" = String, Path)),
    responses((status = 200, body = NodeRecord), (status = 404, body = ApiError)))]
pub(super) async fn cordon(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeRecord>> {
    Ok(Json(s.control.set_node(&id, NodeAction::Cordon)?.shown()))
}

/// The node takes work again.
#[utoipa::path(post, path = "/v1/nodes/{id}/uncordon", tag = "nodes", params(("id" = String, Path)),
    responses((status = 200, body = NodeRecord), (status = 404, body = ApiError)))]
pub(super) async fn uncordon(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeRecord>> {
    Ok(Json(s.control.set_node(&id, NodeAction::Uncordon)?.shown()))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DrainQuery {
    /// Also stop its system workloads' copies (they stay by default, as a
    /// DaemonSet's pods do).
    #[serde(default)]
    pub system: bool,
}

/// The node takes no new work, and its allocations are replaced elsewhere.
#[utoipa::path(post, path = "/v1/nodes/{id}/drain", tag = "nodes", params(("id" = String, Path), DrainQuery),
    responses((status = 200, body = NodeRecord), (status = 400, description = "A bad query string", body = ApiError),
        (status = 404, body = ApiError)))]
pub(super) async fn drain(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<axum::extract::Query<DrainQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<NodeRecord>> {
    let q = super::body::query(q)?;
    let action = if q.system {
        NodeAction::DrainAll
    } else {
        NodeAction::Drain
    };
    Ok(Json(s.control.set_node(&id, action)?.shown()))
}

/// Removes a node: its session ends and its certificate opens no new one
/// (its agent keeps its containers; it joins again with a new token).
#[utoipa::path(delete, path = "/v1/nodes/{id}", tag = "nodes", params(("id" = String, Path)),
    responses((status = 202, description = "Removed"), (status = 404, body = ApiError)))]
pub(super) async fn remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.control
        .remove_node(&id, "removed; its certificate no longer opens a session")?;
    Ok(StatusCode::ACCEPTED)
}
