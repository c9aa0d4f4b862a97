//! `/v1/volumes`: the fleet's local volumes, and removing one.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::control::volumes::VolumeView;

/// Every local volume: its workload, replica slot, the node that holds
/// its data, and its size limit.
#[utoipa::path(get, path = "/v1/volumes", tag = "volumes",
    responses((status = 200, body = [VolumeView])))]
pub(super) async fn list(State(s): State<AppState>) -> Json<Vec<VolumeView>> {
    Json(s.control.volumes())
}

/// Removes a local volume and its data (its node's agent deletes it); a
/// volume a placed replica mounts is refused.
#[utoipa::path(delete, path = "/v1/volumes/{id}", tag = "volumes", params(("id" = String, Path, description = "WORKLOAD.VOLUME.N")),
    responses((status = 202, description = "Being removed"), (status = 404, body = ApiError),
        (status = 409, description = "A replica mounts it", body = ApiError)))]
pub(super) async fn remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.control.remove_volume(&id)?;
    Ok(StatusCode::ACCEPTED)
}
