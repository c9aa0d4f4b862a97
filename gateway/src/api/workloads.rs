//! `/v1/workloads`: create, read, update, scale, restart, delete.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use skiff_proto::WorkloadSpec;
use skiff_proto::cluster::AllocationState;
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::body::{json_body, query, spec_body};
use super::error::{ApiError, ApiResult};
use super::scope::{self, NamespaceQuery};
use crate::control::{AllocationRecord, JobStatus, WorkloadRecord};

/// A workload with its allocations.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkloadView {
    #[schema(value_type = Object)]
    pub spec: WorkloadSpec,
    /// Bumped by every change of what runs (and by a restart).
    pub version: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Replicas running now.
    pub running: usize,
    /// Replicas not placed yet, or waiting for a VM.
    pub pending: usize,
    /// The sites its live allocations are in.
    pub sites: Vec<String>,
    /// A batch job's progress (absent for a service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobStatus>,
    /// Live allocations (every one kept, stopped and lost too, for a
    /// single workload).
    pub allocations: Vec<AllocationRecord>,
}

pub(super) fn view(s: &crate::control::State, w: &WorkloadRecord, all: bool) -> WorkloadView {
    let key = w.spec.key();
    let allocations: Vec<AllocationRecord> = s
        .allocations
        .values()
        .filter(|a| a.workload == key)
        .filter(|a| all || a.is_live())
        .map(AllocationRecord::shown)
        .collect();
    let live = || allocations.iter().filter(|a| a.is_live());
    let mut sites: Vec<String> = live().filter_map(|a| a.site.clone()).collect();
    sites.sort();
    sites.dedup();
    WorkloadView {
        spec: w.spec.clone(),
        version: w.version,
        created_ms: w.created_ms,
        updated_ms: w.updated_ms,
        running: live()
            .filter(|a| a.state == AllocationState::Running)
            .count(),
        pending: live()
            .filter(|a| a.state == AllocationState::Pending)
            .count(),
        sites,
        job: w.job.clone(),
        allocations,
    }
}

fn not_found(scope: &scope::Scope, name: &str) -> ApiError {
    if scope.namespace == skiff_proto::namespace::DEFAULT {
        ApiError::not_found(format!("no workload {name}"))
    } else {
        ApiError::not_found(format!(
            "no workload {name} in namespace {}",
            scope.namespace
        ))
    }
}

/// The spec of a request in namespace `scope`: its own `namespace` must
/// be that one, or absent.
fn in_scope(
    s: &AppState,
    caller: &Caller,
    q: Result<Query<NamespaceQuery>, QueryRejection>,
    body: &[u8],
) -> ApiResult<WorkloadSpec> {
    let mut spec = spec_body(body)?;
    let given = query(q)?.namespace;
    let ns = match (given, spec.namespace.as_str()) {
        (None, skiff_proto::namespace::DEFAULT) => None,
        (None, theirs) => Some(theirs.to_string()),
        (Some(q), skiff_proto::namespace::DEFAULT) => Some(q),
        (Some(q), theirs) if q == theirs => Some(q),
        (Some(q), theirs) => {
            return Err(ApiError::bad(format!(
                "namespace: the spec says {theirs:?}, the request {q:?}"
            )));
        }
    };
    let scope = scope::one(s, caller, Ok(Query(NamespaceQuery { namespace: ns })))?;
    spec.namespace = scope.namespace;
    Ok(spec)
}

/// Every workload of a namespace (`?namespace=*`: of every namespace),
/// with its live allocations.
#[utoipa::path(get, path = "/v1/workloads", tag = "workloads", params(NamespaceQuery),
    responses((status = 200, body = [WorkloadView]), (status = 404, description = "No such namespace", body = ApiError)))]
pub(super) async fn list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ns: Result<Query<NamespaceQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<WorkloadView>>> {
    let many = scope::many(&s, &caller, ns)?;
    Ok(Json(s.control.read(|st| {
        st.workloads
            .values()
            .filter(|w| many.has(&w.spec.namespace))
            .map(|w| view(st, w, false))
            .collect()
    })))
}

/// Creates a workload from a spec (YAML or JSON), in the spec's
/// `namespace` or the request's.
#[utoipa::path(post, path = "/v1/workloads", tag = "workloads", params(NamespaceQuery),
    request_body(content = Object, description = "A workload spec (see the spec reference)"),
    responses(
        (status = 202, description = "Stored; its replicas are being placed", body = WorkloadView),
        (status = 400, description = "The spec is invalid (the field named)", body = ApiError),
        (status = 403, description = "The namespace's quota or policy refuses it (the rule named)", body = ApiError),
        (status = 404, description = "A secret it names, or its namespace, does not exist", body = ApiError),
        (status = 409, description = "A workload of that name exists, the fleet would have more than max_fleet_replicas, or a secret lacks a key it reads", body = ApiError)))]
pub(super) async fn create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ns: Result<Query<NamespaceQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<WorkloadView>)> {
    let spec = in_scope(&s, &caller, ns, &body?)?;
    let w = s.control.create_workload(spec)?;
    let v = s.control.read(|st| view(st, &w, false));
    Ok((StatusCode::ACCEPTED, Json(v)))
}

/// One workload, with every allocation it has (stopped and lost included).
#[utoipa::path(get, path = "/v1/workloads/{name}", tag = "workloads", params(("name" = String, Path), NamespaceQuery),
    responses((status = 200, body = WorkloadView), (status = 404, body = ApiError)))]
pub(super) async fn get(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ns: Result<Query<NamespaceQuery>, QueryRejection>,
) -> ApiResult<Json<WorkloadView>> {
    let scope = scope::one(&s, &caller, ns)?;
    let key = scope.key(&name)?;
    s.control
        .read(|st| st.workloads.get(&key).map(|w| view(st, w, true)))
        .map(Json)
        .ok_or_else(|| not_found(&scope, &name))
}

/// Replaces a workload's spec; a change of anything but `replicas` rolls
/// the replicas, one at a time.
#[utoipa::path(put, path = "/v1/workloads/{name}", tag = "workloads", params(("name" = String, Path), NamespaceQuery),
    request_body(content = Object, description = "The new spec; its name must be the path's"),
    responses(
        (status = 202, body = WorkloadView),
        (status = 400, description = "The spec is invalid, or names another workload", body = ApiError),
        (status = 403, description = "The namespace's quota or policy refuses it (the rule named)", body = ApiError),
        (status = 404, description = "No such workload, or a secret it names does not exist", body = ApiError),
        (status = 409, description = "The fleet would have more than max_fleet_replicas, or a secret lacks a key it reads", body = ApiError)))]
pub(super) async fn update(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ns: Result<Query<NamespaceQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<WorkloadView>)> {
    let spec = in_scope(&s, &caller, ns, &body?)?;
    if spec.name != name {
        return Err(ApiError::bad(format!(
            "name: {:?} does not match the path ({name:?})",
            spec.name
        )));
    }
    let w = s.control.update_workload(spec)?;
    let v = s.control.read(|st| view(st, &w, false));
    Ok((StatusCode::ACCEPTED, Json(v)))
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    #[schema(maximum = 100_000)]
    pub replicas: u32,
}

/// Sets the number of replicas.
#[utoipa::path(post, path = "/v1/workloads/{name}/scale", tag = "workloads", params(("name" = String, Path), NamespaceQuery),
    request_body = ScaleRequest,
    responses(
        (status = 202, body = WorkloadView),
        (status = 400, body = ApiError),
        (status = 403, description = "The namespace's quota refuses it", body = ApiError),
        (status = 404, body = ApiError),
        (status = 409, description = "The fleet would have more than max_fleet_replicas", body = ApiError)))]
pub(super) async fn scale(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ns: Result<Query<NamespaceQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<WorkloadView>)> {
    let scope = scope::one(&s, &caller, ns)?;
    let req: ScaleRequest = json_body(&body?)?;
    let w = s.control.scale_workload(&scope.key(&name)?, req.replicas)?;
    let v = s.control.read(|st| view(st, &w, false));
    Ok((StatusCode::ACCEPTED, Json(v)))
}

/// Replaces every replica, one at a time (a new version, same spec).
#[utoipa::path(post, path = "/v1/workloads/{name}/restart", tag = "workloads", params(("name" = String, Path), NamespaceQuery),
    responses((status = 202, body = WorkloadView), (status = 404, body = ApiError)))]
pub(super) async fn restart(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ns: Result<Query<NamespaceQuery>, QueryRejection>,
) -> ApiResult<(StatusCode, Json<WorkloadView>)> {
    let scope = scope::one(&s, &caller, ns)?;
    let w = s.control.restart_workload(&scope.key(&name)?)?;
    let v = s.control.read(|st| view(st, &w, false));
    Ok((StatusCode::ACCEPTED, Json(v)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DeleteQuery {
    /// Also remove its local volumes and their data (kept by default: a
    /// workload of the same name takes them again).
    #[serde(default)]
    pub volumes: bool,
}

/// Deletes a workload; its replicas are stopped.
#[utoipa::path(delete, path = "/v1/workloads/{name}", tag = "workloads", params(("name" = String, Path), DeleteQuery, NamespaceQuery),
    responses((status = 202, description = "Deleted; its replicas are being stopped"),
        (status = 400, description = "A bad query string", body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn delete(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ns: Result<Query<NamespaceQuery>, QueryRejection>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> ApiResult<StatusCode> {
    let scope = scope::one(&s, &caller, ns)?;
    let q = query(q)?;
    s.control.delete_workload(&scope.key(&name)?, q.volumes)?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AllocationQuery {
    /// Only this workload's.
    pub workload: Option<String>,
    /// Only those on this node.
    pub node: Option<String>,
}

/// Allocations (every one kept) of a namespace (`?namespace=*`: of
/// every namespace), by workload and node.
#[utoipa::path(get, path = "/v1/allocations", tag = "fleet", params(AllocationQuery, NamespaceQuery),
    responses((status = 200, body = [AllocationRecord]),
        (status = 400, description = "A bad query string", body = ApiError),
        (status = 404, description = "No such namespace", body = ApiError)))]
pub(super) async fn allocations(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ns: Result<Query<NamespaceQuery>, QueryRejection>,
    q: Result<Query<AllocationQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<AllocationRecord>>> {
    let many = scope::many(&s, &caller, ns)?;
    let q = query(q)?;
    Ok(Json(s.control.read(|st| {
        st.allocations
            .values()
            .filter(|a| many.has(a.namespace()))
            .map(AllocationRecord::shown)
            .filter(|a| q.workload.as_ref().is_none_or(|w| &a.workload == w))
            .filter(|a| q.node.as_ref().is_none_or(|n| a.node.as_ref() == Some(n)))
            .collect()
    })))
}
