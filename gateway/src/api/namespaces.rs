//! `/v1/namespaces`: tenants' spaces, with their quotas, policies and
//! use. Fleet admins make, change and delete them; a namespace's token
//! sees only the namespaces it is bound to.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::body::json_body;
use super::error::{ApiError, ApiResult};
use crate::control::namespaces::{self, NamespaceRecord, Policy, Quota, Usage};

/// A namespace with what it reserves and uses.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NamespaceView {
    #[serde(flatten)]
    pub record: NamespaceRecord,
    /// What its workloads reserve (replicas times what one reserves):
    /// what the quota is checked against.
    pub reserved: Usage,
    /// What its live allocations hold now.
    pub in_use: Usage,
    /// The price per hour of the cloud VMs launched for it and still up
    /// (e.g. `"0.192"`).
    pub cloud_spend_per_hour: String,
}

/// `POST /v1/namespaces`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceRequest {
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: String,
    #[serde(default)]
    pub quota: Quota,
    /// Absent: nothing from the host (no host network, host volumes or
    /// privileged containers), every site and registry.
    #[serde(default)]
    pub policy: Policy,
}

/// `PUT /v1/namespaces/{name}`: what is given replaces what it had.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceUpdate {
    #[serde(default)]
    pub quota: Option<Quota>,
    #[serde(default)]
    pub policy: Option<Policy>,
}

/// Refuses a body whose `quota` or `policy` is not an object (serde would
/// take a struct from an array).
fn objects(body: &[u8]) -> ApiResult<()> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad(e.to_string()))?;
    for field in ["quota", "policy"] {
        match v.get(field) {
            None | Some(serde_json::Value::Null | serde_json::Value::Object(_)) => {}
            Some(_) => return Err(ApiError::bad(format!("{field}: not an object"))),
        }
    }
    Ok(())
}

/// What the views of namespaces are made of, each summed once over the
/// state (one pass, however many namespaces are shown).
struct Sums {
    spend: HashMap<String, u64>,
    in_use: HashMap<String, Usage>,
}

impl Sums {
    fn of(prices: &namespaces::Prices, st: &crate::control::State) -> Sums {
        Sums {
            spend: namespaces::spend_by_namespace(st, prices),
            in_use: namespaces::in_use_by_namespace(st),
        }
    }

    fn view(&self, st: &crate::control::State, rec: NamespaceRecord) -> NamespaceView {
        NamespaceView {
            reserved: namespaces::declared(st, &rec.name, None),
            in_use: self.in_use.get(&rec.name).copied().unwrap_or_default(),
            cloud_spend_per_hour: crate::scheduler::money(
                self.spend.get(&rec.name).copied().unwrap_or(0),
            ),
            record: rec,
        }
    }
}

/// The price table, made before the state is locked.
fn prices(s: &AppState) -> namespaces::Prices {
    namespaces::Prices::of(&s.control.site_infos())
}

fn view(s: &AppState, rec: NamespaceRecord) -> NamespaceView {
    let prices = prices(s);
    s.control.read(|st| Sums::of(&prices, st).view(st, rec))
}

/// The namespaces the token may see.
#[utoipa::path(get, path = "/v1/namespaces", tag = "namespaces",
    responses((status = 200, body = [NamespaceView])))]
pub(super) async fn list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<Vec<NamespaceView>> {
    let prices = prices(&s);
    Json(s.control.read(|st| {
        let sums = Sums::of(&prices, st);
        let mut names: Vec<String> = st.namespaces.keys().cloned().collect();
        if !names.iter().any(|n| n == skiff_proto::namespace::DEFAULT) {
            names.insert(0, skiff_proto::namespace::DEFAULT.to_string());
        }
        names
            .into_iter()
            .filter(|n| caller.sees(n))
            .filter_map(|n| namespaces::get(st, &n).map(|r| sums.view(st, r.into_owned())))
            .collect()
    }))
}

/// One namespace.
#[utoipa::path(get, path = "/v1/namespaces/{name}", tag = "namespaces", params(("name" = String, Path)),
    responses((status = 200, body = NamespaceView), (status = 404, body = ApiError)))]
pub(super) async fn get(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<NamespaceView>> {
    super::scope::visible(&s, &caller, &name)?;
    let prices = prices(&s);
    s.control
        .read(|st| {
            namespaces::get(st, &name).map(|r| Sums::of(&prices, st).view(st, r.into_owned()))
        })
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no namespace {name}")))
}

/// Makes a namespace.
#[utoipa::path(post, path = "/v1/namespaces", tag = "namespaces", request_body = NamespaceRequest,
    responses((status = 201, body = NamespaceView), (status = 400, body = ApiError),
        (status = 409, description = "It exists", body = ApiError)))]
pub(super) async fn create(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<NamespaceView>)> {
    let body = body?;
    let req: NamespaceRequest = json_body(&body)?;
    objects(&body)?;
    let rec = s.control.put_namespace(
        NamespaceRecord {
            name: req.name,
            quota: req.quota,
            policy: req.policy,
            created_ms: 0,
        },
        true,
    )?;
    Ok((StatusCode::CREATED, Json(view(&s, rec))))
}

/// Changes a namespace's quota or policy (`default`'s too).
#[utoipa::path(put, path = "/v1/namespaces/{name}", tag = "namespaces", params(("name" = String, Path)),
    request_body = NamespaceUpdate,
    responses((status = 200, body = NamespaceView), (status = 400, body = ApiError),
        (status = 404, body = ApiError)))]
pub(super) async fn update(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<NamespaceView>> {
    let body = body?;
    let req: NamespaceUpdate = json_body(&body)?;
    objects(&body)?;
    let mut rec = s
        .control
        .read(|st| namespaces::get(st, &name).map(|r| r.into_owned()))
        .ok_or_else(|| ApiError::not_found(format!("no namespace {name}")))?;
    if let Some(q) = req.quota {
        rec.quota = q;
    }
    if let Some(p) = req.policy {
        rec.policy = p;
    }
    let rec = s.control.put_namespace(rec, false)?;
    Ok(Json(view(&s, rec)))
}

/// Deletes an empty namespace; tokens bound only to it are revoked.
#[utoipa::path(delete, path = "/v1/namespaces/{name}", tag = "namespaces", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"),
        (status = 404, body = ApiError),
        (status = 409, description = "It still has workloads, secrets or volumes, or it is default", body = ApiError)))]
pub(super) async fn delete(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.control.delete_namespace(&name)?;
    Ok(StatusCode::NO_CONTENT)
}
