//! The REST API (axum), on `listen` (`127.0.0.1:7070` by default).
//!
//! Every route but `/metrics` and `/v1/openapi.json` needs a bearer token:
//! the admin token (in `STATE/admin.token`) or one made with
//! `POST /v1/api-tokens`, each with a role (`read-only`, `operator`,
//! `admin`). Errors are `{"code": …, "message": …}`, the message naming
//! the field for bad input. Spec bodies are YAML or JSON, checked by the
//! same code as `skiff validate`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use skiff_proto::cluster::{AllocationState, NodeStatus};
use skiff_proto::{Format, WorkloadSpec, parse_workloads};
use utoipa::{OpenApi, ToSchema};

use crate::control::{
    AllocationRecord, ApiTokenRecord, Control, ControlError, Event, JoinTokenRecord, NodeRecord,
    Role, WorkloadRecord, now_ms,
};
use crate::grpc::JOIN_TOKEN_PREFIX;
use crate::pki::{Pki, random_hex, sha256_hex};
use crate::store::Kind;

#[derive(Debug, Clone)]
pub struct AppState {
    pub control: Arc<Control>,
    pub pki: Arc<Pki>,
}

/// An API error: `{"code": …, "message": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Every problem, when the body had several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            errors: Vec::new(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound(m) => ApiError::not_found(m),
            ControlError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            ControlError::Invalid(m) => ApiError::bad(m),
            ControlError::Unauthenticated(m) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", m)
            }
            ControlError::Store(e) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "too_large",
                "the request body is larger than max_body",
            )
        } else {
            ApiError::new(status, "bad_request", r.body_text())
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Checks the bearer token; the caller's role must be at least `min`.
fn auth(s: &AppState, headers: &HeaderMap, min: Role) -> ApiResult<Role> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "an Authorization: Bearer token is required",
            )
        })?;
    let role = if constant_time_eq(token.as_bytes(), s.pki.admin_token.as_bytes()) {
        Some(Role::Admin)
    } else {
        let hash = sha256_hex(token.as_bytes());
        s.control
            .read(|st| st.api_tokens.get(&hash).map(|t| t.role))
    };
    let role = role.ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "unknown token")
    })?;
    if role < min {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the {} role",
                serde_json::to_value(min)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            ),
        ));
    }
    Ok(role)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::bad(inner.to_string())
        } else {
            ApiError::bad(format!("{path}: {inner}"))
        }
    })
}

/// One workload spec from a YAML or JSON body.
fn spec_body(body: &[u8]) -> ApiResult<WorkloadSpec> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad("the body is not UTF-8"))?;
    let mut specs = parse_workloads(text, Format::Detect).map_err(|e| {
        let errors: Vec<String> = e.0.iter().map(|f| f.to_string()).collect();
        let mut err = ApiError::bad(errors.first().cloned().unwrap_or_default());
        err.errors = errors;
        err
    })?;
    if specs.len() != 1 {
        return Err(ApiError::bad(format!(
            "expected one workload, got {}",
            specs.len()
        )));
    }
    Ok(specs.remove(0))
}

/// A workload with its allocations.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkloadView {
    #[schema(value_type = Object)]
    pub spec: WorkloadSpec,
    pub version: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Replicas running now.
    pub running: usize,
    pub allocations: Vec<AllocationRecord>,
}

fn view(s: &crate::control::State, w: &WorkloadRecord, all: bool) -> WorkloadView {
    let allocations: Vec<AllocationRecord> = s
        .allocations
        .values()
        .filter(|a| a.workload == w.spec.name)
        .filter(|a| all || !matches!(a.state, AllocationState::Stopped | AllocationState::Lost))
        .cloned()
        .collect();
    WorkloadView {
        spec: w.spec.clone(),
        version: w.version,
        created_ms: w.created_ms,
        updated_ms: w.updated_ms,
        running: allocations
            .iter()
            .filter(|a| a.state == AllocationState::Running)
            .count(),
        allocations,
    }
}

#[utoipa::path(get, path = "/v1/workloads", responses((status = 200, body = [WorkloadView])), security(("bearer" = [])))]
async fn list_workloads(
    State(s): State<AppState>,
    h: HeaderMap,
) -> ApiResult<Json<Vec<WorkloadView>>> {
    auth(&s, &h, Role::ReadOnly)?;
    Ok(Json(s.control.read(|st| {
        st.workloads.values().map(|w| view(st, w, false)).collect()
    })))
}

#[utoipa::path(post, path = "/v1/workloads", request_body(content = Object, description = "A workload spec, YAML or JSON (see the spec reference)"),
    responses((status = 202, body = WorkloadView), (status = 400, body = ApiError), (status = 409, body = ApiError)), security(("bearer" = [])))]
async fn create_workload(
    State(s): State<AppState>,
    h: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<WorkloadView>)> {
    auth(&s, &h, Role::Operator)?;
    let w = s.control.create_workload(spec_body(&body?)?)?;
    let v = s.control.read(|st| view(st, &w, false));
    Ok((StatusCode::ACCEPTED, Json(v)))
}

#[utoipa::path(get, path = "/v1/workloads/{name}", params(("name" = String, Path)),
    responses((status = 200, body = WorkloadView), (status = 404, body = ApiError)), security(("bearer" = [])))]
async fn get_workload(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<WorkloadView>> {
    auth(&s, &h, Role::ReadOnly)?;
    s.control
        .read(|st| st.workloads.get(&name).map(|w| view(st, w, true)))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no workload {name}")))
}

#[utoipa::path(put, path = "/v1/workloads/{name}", params(("name" = String, Path)), request_body(content = Object),
    responses((status = 202, body = WorkloadView), (status = 400, body = ApiError), (status = 404, body = ApiError)), security(("bearer" = [])))]
async fn update_workload(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<WorkloadView>)> {
    auth(&s, &h, Role::Operator)?;
    let spec = spec_body(&body?)?;
    if spec.name != name {
        return Err(ApiError::bad(format!(
            "name: {:?} does not match the path ({name:?})",
            spec.name
        )));
    }
    let v = s.control.write(|st, b| {
        let w = st
            .workloads
            .get_mut(&name)
            .ok_or_else(|| ControlError::NotFound(format!("no workload {name}")))?;
        // Only a change of what runs rolls the replicas.
        let mut rolled = spec.clone();
        rolled.replicas = w.spec.replicas;
        if rolled != w.spec {
            w.version += 1;
        }
        w.spec = spec;
        w.updated_ms = now_ms();
        b.put(Kind::Workload, &name, w);
        let w = w.clone();
        Ok(view(st, &w, false))
    })?;
    s.control.event(
        "workload",
        &name,
        format!("updated to version {}", v.version),
    );
    s.control.wake();
    Ok((StatusCode::ACCEPTED, Json(v)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    pub replicas: u32,
}

#[utoipa::path(post, path = "/v1/workloads/{name}/scale", params(("name" = String, Path)), request_body = ScaleRequest,
    responses((status = 202, body = WorkloadView), (status = 404, body = ApiError)), security(("bearer" = [])))]
async fn scale_workload(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<WorkloadView>)> {
    auth(&s, &h, Role::Operator)?;
    let req: ScaleRequest = json_body(&body?)?;
    if req.replicas > 10_000 {
        return Err(ApiError::bad("replicas: at most 10000"));
    }
    let v = s.control.write(|st, b| {
        let w = st
            .workloads
            .get_mut(&name)
            .ok_or_else(|| ControlError::NotFound(format!("no workload {name}")))?;
        w.spec.replicas = req.replicas;
        w.updated_ms = now_ms();
        b.put(Kind::Workload, &name, w);
        let w = w.clone();
        Ok(view(st, &w, false))
    })?;
    s.control
        .event("workload", &name, format!("scaled to {}", req.replicas));
    s.control.wake();
    Ok((StatusCode::ACCEPTED, Json(v)))
}

#[utoipa::path(delete, path = "/v1/workloads/{name}", params(("name" = String, Path)),
    responses((status = 202), (status = 404, body = ApiError)), security(("bearer" = [])))]
async fn delete_workload(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    auth(&s, &h, Role::Operator)?;
    s.control.write(|st, b| {
        st.workloads
            .remove(&name)
            .ok_or_else(|| ControlError::NotFound(format!("no workload {name}")))?;
        b.delete(Kind::Workload, &name);
        Ok(())
    })?;
    s.control.event("workload", &name, "deleted");
    s.control.wake();
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(get, path = "/v1/nodes", responses((status = 200, body = [NodeRecord])), security(("bearer" = [])))]
async fn list_nodes(State(s): State<AppState>, h: HeaderMap) -> ApiResult<Json<Vec<NodeRecord>>> {
    auth(&s, &h, Role::ReadOnly)?;
    Ok(Json(
        s.control.read(|st| st.nodes.values().cloned().collect()),
    ))
}

#[utoipa::path(get, path = "/v1/nodes/{id}", params(("id" = String, Path)),
    responses((status = 200, body = NodeRecord), (status = 404, body = ApiError)), security(("bearer" = [])))]
async fn get_node(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeRecord>> {
    auth(&s, &h, Role::ReadOnly)?;
    s.control
        .read(|st| st.nodes.get(&id).cloned())
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no node {id}")))
}

/// Cordon, uncordon or drain.
fn node_flag(s: &AppState, id: &str, what: &str) -> ApiResult<Json<NodeRecord>> {
    let n = s.control.write(|st, b| {
        let n = st
            .nodes
            .get_mut(id)
            .ok_or_else(|| ControlError::NotFound(format!("no node {id}")))?;
        match what {
            "cordon" => n.unschedulable = true,
            "uncordon" => {
                n.unschedulable = false;
                n.draining = false;
            }
            _ => {
                n.unschedulable = true;
                n.draining = true;
            }
        }
        b.put(Kind::Node, id, n);
        Ok(n.clone())
    })?;
    s.control.event("node", id, format!("{what}ed"));
    s.control.wake();
    Ok(Json(n))
}

#[utoipa::path(post, path = "/v1/nodes/{id}/cordon", params(("id" = String, Path)), responses((status = 200, body = NodeRecord)), security(("bearer" = [])))]
async fn cordon(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeRecord>> {
    auth(&s, &h, Role::Operator)?;
    node_flag(&s, &id, "cordon")
}

#[utoipa::path(post, path = "/v1/nodes/{id}/uncordon", params(("id" = String, Path)), responses((status = 200, body = NodeRecord)), security(("bearer" = [])))]
async fn uncordon(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeRecord>> {
    auth(&s, &h, Role::Operator)?;
    node_flag(&s, &id, "uncordon")
}

#[utoipa::path(post, path = "/v1/nodes/{id}/drain", params(("id" = String, Path)), responses((status = 200, body = NodeRecord)), security(("bearer" = [])))]
async fn drain(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeRecord>> {
    auth(&s, &h, Role::Operator)?;
    node_flag(&s, &id, "drain")
}

#[utoipa::path(delete, path = "/v1/nodes/{id}", params(("id" = String, Path)),
    responses((status = 202), (status = 404, body = ApiError)), security(("bearer" = [])))]
async fn remove_node(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    auth(&s, &h, Role::Admin)?;
    s.control.write(|st, b| {
        st.nodes
            .remove(&id)
            .ok_or_else(|| ControlError::NotFound(format!("no node {id}")))?;
        b.delete(Kind::Node, &id);
        Ok(())
    })?;
    s.control.end_session(&id);
    s.control.event(
        "node",
        &id,
        "removed; its certificate no longer opens a session",
    );
    s.control.wake();
    Ok(StatusCode::ACCEPTED)
}

/// Capacity and use of one site.
#[derive(Debug, Serialize, ToSchema)]
pub struct SiteView {
    pub name: String,
    pub kind: String,
    pub nodes: usize,
    pub nodes_ready: usize,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub cpu_millis_used: u64,
    pub memory_bytes_used: u64,
    pub allocations: usize,
    /// VMs the placement engine asks this site for (launched by the
    /// autoscaler).
    pub planned_launches: Vec<crate::control::PlannedLaunch>,
}

#[utoipa::path(get, path = "/v1/sites", responses((status = 200, body = [SiteView])), security(("bearer" = [])))]
async fn list_sites(State(s): State<AppState>, h: HeaderMap) -> ApiResult<Json<Vec<SiteView>>> {
    auth(&s, &h, Role::ReadOnly)?;
    let cfg = &s.control.config;
    let planned = s.control.planned_launches();
    Ok(Json(s.control.read(|st| {
        cfg.sites
            .iter()
            .map(|site| {
                let nodes: Vec<&NodeRecord> =
                    st.nodes.values().filter(|n| n.site == site.name).collect();
                let live: Vec<&AllocationRecord> = st
                    .allocations
                    .values()
                    .filter(|a| a.site.as_deref() == Some(site.name.as_str()))
                    .filter(|a| !a.state.is_terminal())
                    .collect();
                let demand = |f: &dyn Fn(&WorkloadSpec) -> u64| -> u64 {
                    live.iter()
                        .filter_map(|a| st.workloads.get(&a.workload))
                        .map(|w| f(&w.spec))
                        .sum()
                };
                SiteView {
                    name: site.name.clone(),
                    kind: format!("{:?}", site.kind).to_lowercase(),
                    nodes: nodes.len(),
                    nodes_ready: nodes
                        .iter()
                        .filter(|n| n.status == NodeStatus::Ready)
                        .count(),
                    cpu_millis: nodes.iter().map(|n| n.allocatable.cpu.millis()).sum(),
                    memory_bytes: nodes.iter().map(|n| n.allocatable.memory.bytes()).sum(),
                    cpu_millis_used: demand(&|w| w.resources.cpu.millis()),
                    memory_bytes_used: demand(&|w| w.resources.memory.bytes()),
                    allocations: live.len(),
                    planned_launches: planned
                        .iter()
                        .filter(|p| p.site == site.name)
                        .cloned()
                        .collect(),
                }
            })
            .collect()
    })))
}

#[derive(Debug, Deserialize)]
struct AllocationQuery {
    workload: Option<String>,
    node: Option<String>,
}

#[utoipa::path(get, path = "/v1/allocations", params(("workload" = Option<String>, Query), ("node" = Option<String>, Query)),
    responses((status = 200, body = [AllocationRecord])), security(("bearer" = [])))]
async fn list_allocations(
    State(s): State<AppState>,
    h: HeaderMap,
    Query(q): Query<AllocationQuery>,
) -> ApiResult<Json<Vec<AllocationRecord>>> {
    auth(&s, &h, Role::ReadOnly)?;
    Ok(Json(s.control.read(|st| {
        st.allocations
            .values()
            .filter(|a| q.workload.as_ref().is_none_or(|w| &a.workload == w))
            .filter(|a| q.node.as_ref().is_none_or(|n| a.node.as_ref() == Some(n)))
            .cloned()
            .collect()
    })))
}

#[utoipa::path(get, path = "/v1/events", responses((status = 200, description = "Server-sent events, one JSON `Event` each", body = Event)), security(("bearer" = [])))]
async fn events(State(s): State<AppState>, h: HeaderMap) -> ApiResult<impl IntoResponse> {
    auth(&s, &h, Role::ReadOnly)?;
    use tokio_stream::StreamExt;
    let rx = s.control.events.subscribe();
    let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|e| {
        e.ok().map(|e| {
            Ok::<_, std::convert::Infallible>(
                SseEvent::default()
                    .event(e.kind.clone())
                    .data(serde_json::to_string(&e).unwrap_or_default()),
            )
        })
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    /// The site the node joins.
    pub site: String,
    /// How long the token is valid, e.g. `1h` (default `1h`, at most 7 days).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub ttl: Option<skiff_proto::Duration>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JoinTokenResponse {
    /// Single use; give it to `skiff-agent serve --join-token`.
    pub token: String,
    /// What the agent pins (`--ca-hash`).
    pub ca_hash: String,
    pub site: String,
    pub expires_ms: i64,
}

#[utoipa::path(post, path = "/v1/join-tokens", request_body = JoinTokenRequest,
    responses((status = 201, body = JoinTokenResponse), (status = 400, body = ApiError)), security(("bearer" = [])))]
async fn create_join_token(
    State(s): State<AppState>,
    h: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<JoinTokenResponse>)> {
    auth(&s, &h, Role::Admin)?;
    let req: JoinTokenRequest = json_body(&body?)?;
    if s.control.config.site(&req.site).is_none() {
        return Err(ApiError::bad(format!(
            "site: {:?} is not a configured site",
            req.site
        )));
    }
    let ttl = req.ttl.map_or(Duration::from_secs(3600), |d| d.std());
    if ttl.is_zero() || ttl > Duration::from_secs(7 * 24 * 3600) {
        return Err(ApiError::bad("ttl: between 1s and 7 days"));
    }
    let token = format!("{JOIN_TOKEN_PREFIX}{}", random_hex(24));
    let expires_ms = now_ms() + ttl.as_millis() as i64;
    let hash = sha256_hex(token.as_bytes());
    s.control.write(|st, b| {
        let t = JoinTokenRecord {
            site: req.site.clone(),
            expires_ms,
            used: false,
            created_ms: now_ms(),
        };
        b.put(Kind::JoinToken, &hash, &t);
        st.join_tokens.insert(hash.clone(), t);
        Ok(())
    })?;
    s.control.event(
        "join-token",
        &hash[7..19],
        format!("created for site {}", req.site),
    );
    Ok((
        StatusCode::CREATED,
        Json(JoinTokenResponse {
            token,
            ca_hash: s.pki.ca_hash(),
            site: req.site,
            expires_ms,
        }),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenRequest {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiTokenResponse {
    /// Shown once; the gateway keeps only its hash.
    pub token: String,
    pub name: String,
    pub role: Role,
}

#[utoipa::path(post, path = "/v1/api-tokens", request_body = ApiTokenRequest,
    responses((status = 201, body = ApiTokenResponse)), security(("bearer" = [])))]
async fn create_api_token(
    State(s): State<AppState>,
    h: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<ApiTokenResponse>)> {
    auth(&s, &h, Role::Admin)?;
    let req: ApiTokenRequest = json_body(&body?)?;
    if !skiff_proto::is_valid_name(&req.name) {
        return Err(ApiError::bad(format!(
            "name: {:?} is not a valid name",
            req.name
        )));
    }
    let token = format!("skiff-api-{}", random_hex(24));
    let hash = sha256_hex(token.as_bytes());
    s.control.write(|st, b| {
        let t = ApiTokenRecord {
            name: req.name.clone(),
            role: req.role,
            created_ms: now_ms(),
        };
        b.put(Kind::ApiToken, &hash, &t);
        st.api_tokens.insert(hash.clone(), t);
        Ok(())
    })?;
    Ok((
        StatusCode::CREATED,
        Json(ApiTokenResponse {
            token,
            name: req.name,
            role: req.role,
        }),
    ))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Skiff gateway", description = "Workloads, nodes, sites and allocations of a Skiff fleet."),
    paths(
        list_workloads, create_workload, get_workload, update_workload, scale_workload, delete_workload,
        list_nodes, get_node, cordon, uncordon, drain, remove_node,
        list_sites, list_allocations, events, create_join_token, create_api_token
    ),
    components(schemas(ApiError, WorkloadView, NodeRecord, AllocationRecord, SiteView, Event,
        JoinTokenRequest, JoinTokenResponse, ApiTokenRequest, ApiTokenResponse, ScaleRequest, Role)),
    modifiers(&Security)
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // The workload spec's own schema, generated from its types.
        if let Ok(schema) = serde_json::from_value::<utoipa::openapi::Schema>(
            serde_json::to_value(skiff_proto::schema::workload_schema()).unwrap_or_default(),
        ) {
            components
                .schemas
                .insert("WorkloadSpec".into(), schema.into());
        }
    }
}

/// The OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The router.
pub fn router(state: AppState) -> axum::Router {
    let max_body = state.control.config.max_body;
    let doc = serde_json::to_value(openapi()).unwrap_or_default();
    let metrics_control = Arc::clone(&state.control);
    axum::Router::new()
        .route("/v1/openapi.json", get(move || async move { Json(doc) }))
        .route(
            "/metrics",
            get(move || async move {
                metrics_control.update_gauges();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics_control.metrics.encode(),
                )
            }),
        )
        .route("/v1/workloads", get(list_workloads).post(create_workload))
        .route(
            "/v1/workloads/{name}",
            get(get_workload)
                .put(update_workload)
                .delete(delete_workload),
        )
        .route("/v1/workloads/{name}/scale", post(scale_workload))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{id}", get(get_node).delete(remove_node))
        .route("/v1/nodes/{id}/cordon", post(cordon))
        .route("/v1/nodes/{id}/uncordon", post(uncordon))
        .route("/v1/nodes/{id}/drain", post(drain))
        .route("/v1/sites", get(list_sites))
        .route("/v1/allocations", get(list_allocations))
        .route("/v1/events", get(events))
        .route("/v1/join-tokens", post(create_join_token))
        .route("/v1/api-tokens", post(create_api_token))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// API latency by method and status.
async fn observe(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().to_string();
    let t = std::time::Instant::now();
    let res = next.run(req).await;
    s.control
        .metrics
        .api_seconds
        .get_or_create(&crate::metrics::RouteLabel {
            method,
            status: res.status().as_u16().to_string(),
        })
        .observe(t.elapsed().as_secs_f64());
    res
}
