//! `/v1/volumes`: the fleet's local volumes, and removing one.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::scope::{self, NamespaceQuery};
use crate::control::volumes::VolumeView;

/// Every local volume: its workload, replica slot, the node that holds
/// its data, and its size limit.
#[utoipa::path(get, path = "/v1/volumes", tag = "volumes", params(NamespaceQuery),
    responses((status = 200, body = [VolumeView]), (status = 404, description = "No such namespace", body = ApiError)))]
pub(super) async fn list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ns: Result<Query<NamespaceQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<VolumeView>>> {
    let many = scope::many(&s, &caller, ns)?;
    let mut v = s.control.volumes();
    v.retain(|x| many.has(skiff_proto::namespace::of_volume(&x.record.id)));
    Ok(Json(v))
}

/// Removes a local volume and its data (its node's agent deletes it); a
/// volume a placed replica mounts is refused.
#[utoipa::path(delete, path = "/v1/volumes/{id}", tag = "volumes", params(("id" = String, Path, description = "[NAMESPACE.]WORKLOAD.VOLUME.N")),
    responses((status = 202, description = "Being removed"), (status = 404, body = ApiError),
        (status = 409, description = "A replica mounts it", body = ApiError)))]
pub(super) async fn remove(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    // A volume id names its namespace; one the token does not see is
    // not found.
    if !caller.sees(skiff_proto::namespace::of_volume(&id)) {
        return Err(ApiError::not_found(format!("no volume {id}")));
    }
    s.control.remove_volume(&id)?;
    Ok(StatusCode::ACCEPTED)
}
