//! The REST API (axum), on `listen` (`127.0.0.1:7070` by default).
//!
//! Every route is in one table, [`routes`], with who may call it: the
//! router is built from that table alone (a route cannot exist without its
//! rule), the one authorization layer ([`auth::require`]) checks the rule,
//! and the OpenAPI document's security and 401/403 responses are derived
//! from it. Tokens: the admin token (`STATE/admin.token`) or one made with
//! `POST /v1/api-tokens`, each with a role (`read-only` < `operator` <
//! `admin`). Errors are `{"code": …, "message": …}` ([`ApiError`]), the
//! message naming the field for bad input. Spec bodies are YAML or JSON,
//! checked by the same code as `skiff validate`.

pub(crate) mod auth;
mod body;
mod error;
mod fleet;
mod namespaces;
mod nodes;
mod scope;
mod secrets;
mod streams;
pub mod tls;
mod tokens;
mod volumes;
mod workloads;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use utoipa::OpenApi;

pub use auth::Caller;
pub use error::ApiError;
pub use fleet::{SiteView, VersionView};
pub use namespaces::{NamespaceRequest, NamespaceUpdate, NamespaceView};
pub use streams::{ExecEntry, ExecRequest, LogEntry};
pub use tokens::{
    ApiTokenRequest, ApiTokenResponse, ApiTokenView, JoinTokenRequest, JoinTokenResponse,
    JoinTokenView,
};
pub use workloads::{ScaleRequest, WorkloadView};

use crate::control::{Control, Role};
use crate::pki::Pki;

#[derive(Debug, Clone)]
pub struct AppState {
    pub control: Arc<Control>,
    pub pki: Arc<Pki>,
    /// The other gateways of the fleet (over etcd): a follower forwards
    /// the routes that run on the leader to it.
    pub peers: Option<Arc<dyn crate::peers::Peers>>,
    /// When this gateway started (unix ms).
    pub started_ms: i64,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone who reaches the port.
    Public,
    /// A token whose role is at least this one (a namespace's token
    /// sees only its namespaces).
    At(Role),
    /// A fleet token (bound to no namespace) whose role is at least this.
    Fleet(Role),
}

impl Access {
    fn role(self) -> Option<Role> {
        match self {
            Access::Public => None,
            Access::At(r) | Access::Fleet(r) => Some(r),
        }
    }
}

/// One route of the API.
#[derive(Debug)]
pub struct Route {
    pub method: Method,
    /// As axum writes it (`/v1/workloads/{name}`), also the OpenAPI path.
    pub path: &'static str,
    pub access: Access,
    /// Answered by the fleet's leader: a follower forwards it there. Every
    /// change (a route that is not a `GET`) and the event stream (the
    /// leader emits events); not `exec`, which goes to the node's session
    /// on this gateway, as `logs` does.
    pub on_leader: bool,
    handler: MethodRouter<AppState>,
}

fn route(
    method: Method,
    path: &'static str,
    access: Access,
    handler: MethodRouter<AppState>,
) -> Route {
    let on_leader = (method != Method::GET && !path.ends_with("/exec")) || path == "/v1/events";
    Route {
        method,
        path,
        access,
        on_leader,
        handler,
    }
}

/// Every route, with who may call it.
pub fn routes() -> Vec<Route> {
    use Access::{At, Fleet, Public};
    use Method as M;
    use Role::{Admin, Operator, ReadOnly};
    vec![
        route(M::GET, "/v1/openapi.json", Public, get(openapi_json)),
        route(M::GET, "/metrics", Public, get(fleet::metrics)),
        route(M::GET, "/v1/version", At(ReadOnly), get(fleet::version)),
        route(M::GET, "/v1/workloads", At(ReadOnly), get(workloads::list)),
        route(
            M::POST,
            "/v1/workloads",
            At(Operator),
            post(workloads::create),
        ),
        route(
            M::GET,
            "/v1/workloads/{name}",
            At(ReadOnly),
            get(workloads::get),
        ),
        route(
            M::PUT,
            "/v1/workloads/{name}",
            At(Operator),
            put(workloads::update),
        ),
        route(
            M::DELETE,
            "/v1/workloads/{name}",
            At(Operator),
            delete(workloads::delete),
        ),
        route(
            M::POST,
            "/v1/workloads/{name}/scale",
            At(Operator),
            post(workloads::scale),
        ),
        route(
            M::POST,
            "/v1/workloads/{name}/restart",
            At(Operator),
            post(workloads::restart),
        ),
        route(
            M::GET,
            "/v1/workloads/{name}/logs",
            At(ReadOnly),
            get(streams::logs),
        ),
        route(
            M::POST,
            "/v1/workloads/{name}/exec",
            At(Operator),
            post(streams::exec),
        ),
        route(
            M::GET,
            "/v1/allocations",
            At(ReadOnly),
            get(workloads::allocations),
        ),
        route(M::GET, "/v1/secrets", At(ReadOnly), get(secrets::list)),
        route(M::POST, "/v1/secrets", At(Operator), post(secrets::create)),
        route(
            M::PUT,
            "/v1/secrets/{name}",
            At(Operator),
            put(secrets::update),
        ),
        route(
            M::DELETE,
            "/v1/secrets/{name}",
            At(Operator),
            delete(secrets::delete),
        ),
        route(M::GET, "/v1/volumes", At(ReadOnly), get(volumes::list)),
        route(
            M::DELETE,
            "/v1/volumes/{id}",
            At(Operator),
            delete(volumes::remove),
        ),
        route(M::GET, "/v1/nodes", Fleet(ReadOnly), get(nodes::list)),
        route(M::GET, "/v1/nodes/{id}", Fleet(ReadOnly), get(nodes::get)),
        route(
            M::DELETE,
            "/v1/nodes/{id}",
            Fleet(Admin),
            delete(nodes::remove),
        ),
        route(
            M::POST,
            "/v1/nodes/{id}/cordon",
            Fleet(Operator),
            post(nodes::cordon),
        ),
        route(
            M::POST,
            "/v1/nodes/{id}/uncordon",
            Fleet(Operator),
            post(nodes::uncordon),
        ),
        route(
            M::POST,
            "/v1/nodes/{id}/drain",
            Fleet(Operator),
            post(nodes::drain),
        ),
        route(M::GET, "/v1/sites", At(ReadOnly), get(fleet::sites)),
        route(
            M::GET,
            "/v1/namespaces",
            At(ReadOnly),
            get(namespaces::list),
        ),
        route(
            M::POST,
            "/v1/namespaces",
            Fleet(Admin),
            post(namespaces::create),
        ),
        route(
            M::GET,
            "/v1/namespaces/{name}",
            At(ReadOnly),
            get(namespaces::get),
        ),
        route(
            M::PUT,
            "/v1/namespaces/{name}",
            Fleet(Admin),
            put(namespaces::update),
        ),
        route(
            M::DELETE,
            "/v1/namespaces/{name}",
            Fleet(Admin),
            delete(namespaces::delete),
        ),
        route(
            M::GET,
            "/v1/gateways",
            Fleet(ReadOnly),
            get(fleet::gateways),
        ),
        route(M::GET, "/v1/state", Fleet(Admin), get(fleet::state)),
        route(M::GET, "/v1/events", At(ReadOnly), get(fleet::events)),
        route(
            M::POST,
            "/v1/join-tokens",
            Fleet(Admin),
            post(tokens::create_join_token),
        ),
        route(
            M::GET,
            "/v1/join-tokens",
            Fleet(Admin),
            get(tokens::list_join_tokens),
        ),
        route(
            M::DELETE,
            "/v1/join-tokens/{id}",
            Fleet(Admin),
            delete(tokens::revoke_join_token),
        ),
        route(
            M::POST,
            "/v1/api-tokens",
            At(Admin),
            post(tokens::create_api_token),
        ),
        route(
            M::GET,
            "/v1/api-tokens",
            At(Admin),
            get(tokens::list_api_tokens),
        ),
        route(
            M::DELETE,
            "/v1/api-tokens/{id}",
            At(Admin),
            delete(tokens::revoke_api_token),
        ),
    ]
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Skiff gateway", description = "Workloads, nodes, sites and allocations of a Skiff fleet."),
    paths(
        openapi_json, fleet::metrics, fleet::version, fleet::gateways, fleet::state,
        workloads::list, workloads::create, workloads::get, workloads::update, workloads::delete,
        workloads::scale, workloads::restart, streams::logs, streams::exec, workloads::allocations,
        nodes::list, nodes::get, nodes::remove, nodes::cordon, nodes::uncordon, nodes::drain,
        fleet::sites, fleet::events, volumes::list, volumes::remove,
        namespaces::list, namespaces::create, namespaces::get, namespaces::update, namespaces::delete,
        secrets::list, secrets::create, secrets::update, secrets::delete,
        tokens::create_join_token, tokens::list_join_tokens, tokens::revoke_join_token,
        tokens::create_api_token, tokens::list_api_tokens, tokens::revoke_api_token,
    ),
    components(schemas(ApiError, crate::peers::GatewayView, WorkloadView, crate::control::NodeRecord, crate::control::AllocationRecord, crate::control::JobStatus, crate::control::JobState, crate::control::volumes::VolumeRecord, crate::control::volumes::VolumeView, crate::control::secrets::SecretView, secrets::SecretCreate, secrets::SecretUpdate,
        crate::control::namespaces::NamespaceRecord, crate::control::namespaces::Quota, crate::control::namespaces::Policy, crate::control::namespaces::Usage, namespaces::NamespaceView, namespaces::NamespaceRequest, namespaces::NamespaceUpdate,
        crate::control::Explanation, SiteView, fleet::InstanceTypeView, crate::control::Event, crate::control::PlannedLaunch,
        crate::control::Vacate, crate::control::Moved, crate::control::MoveCause,
        VersionView, LogEntry, ExecEntry, ExecRequest,
        JoinTokenRequest, JoinTokenResponse, JoinTokenView, ApiTokenRequest, ApiTokenResponse,
        ApiTokenView, ScaleRequest, Role)),
    modifiers(&Contract)
)]
struct ApiDoc;

/// Makes the document say what the route table and the server do: the
/// bearer scheme and each route's security, and the 401/403/413 answers
/// the layers give (the spec bodies' schema: [`add_spec_schemas`]).
struct Contract;

impl utoipa::Modify for Contract {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The workload spec's JSON Schema and its definitions, as `skiff_proto`
/// generates them, into `components.schemas`: inserted as JSON, since
/// utoipa's schema type cannot hold all of JSON Schema 2020-12
/// (`prefixItems`, `if`/`then`, `propertyNames`, `not`).
fn add_spec_schemas(doc: &mut serde_json::Value) {
    // (And the events stream's: in OpenAPI 3.1 an event stream's schema
    // is one event's, its fields as the SSE format names them.)
    doc["paths"]["/v1/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"] = serde_json::json!({
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": { "type": "string", "description": "The event's kind" },
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": { "$ref": "#/components/schemas/Event" }
            }
        }
    });
    let (spec, defs) = skiff_proto::schema::workload_schema_components();
    let schemas = &mut doc["components"]["schemas"];
    for (name, def) in defs {
        schemas[name] = def;
    }
    schemas["WorkloadSpec"] = spec;
    if let (Some(q), serde_json::Value::Object(props)) = (
        schemas["Quota"]["properties"].as_object_mut(),
        skiff_proto::schema::spec::quota_properties(),
    ) {
        for (k, v) in props {
            q.insert(k, v);
        }
    }
    schemas["SecretCreate"] = secrets::request_schema(true);
    schemas["SecretUpdate"] = secrets::request_schema(false);
}

/// Fills in what `utoipa` cannot know from the handlers alone (see
/// [`Contract`]); works on JSON so it can set what utoipa's types do not
/// model (several content types of one body).
fn finish(mut doc: serde_json::Value) -> serde_json::Value {
    let error = serde_json::json!({
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApiError"}}}
    });
    let described = |what: &str| {
        let mut e = error.clone();
        e["description"] = what.into();
        e
    };
    let spec_body = serde_json::json!({
        "description": "A workload spec, JSON or YAML (see the spec reference)",
        "required": true,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/WorkloadSpec"}},
            "application/yaml": {"schema": {"$ref": "#/components/schemas/WorkloadSpec"}}
        }
    });
    for r in routes() {
        let method = r.method.as_str().to_ascii_lowercase();
        let Some(op) = doc["paths"][r.path][&method].as_object_mut() else {
            continue;
        };
        let mut add = serde_json::Map::new();
        let security = match r.access.role() {
            None => serde_json::json!([]),
            Some(role) => {
                add.insert(
                    "401".into(),
                    described("No token, or one the gateway does not know"),
                );
                let fleet = matches!(r.access, Access::Fleet(_));
                match (role > Role::ReadOnly, fleet) {
                    (true, true) => add.insert(
                        "403".into(),
                        described(&format!(
                            "The token's role is below {role}, or it is bound to namespaces"
                        )),
                    ),
                    (true, false) => add.insert(
                        "403".into(),
                        described(&format!("The token's role is below {role}")),
                    ),
                    (false, true) => {
                        add.insert("403".into(), described("The token is bound to namespaces"))
                    }
                    (false, false) => None,
                };
                serde_json::json!([{"bearer": []}])
            }
        };
        op.insert("security".into(), security);
        if op.contains_key("requestBody") {
            add.insert("413".into(), described("The body is larger than max_body"));
            add.insert(
                "400".into(),
                described("The body is not what the schema says"),
            );
        }
        let responses = op
            .entry("responses")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(responses) = responses.as_object_mut() {
            for (status, answer) in add {
                // A handler's own description of a status stays.
                responses.entry(status).or_insert(answer);
            }
        }
        let is_spec = matches!(
            (r.method.clone(), r.path),
            (Method::POST, "/v1/workloads") | (Method::PUT, "/v1/workloads/{name}")
        );
        if is_spec {
            op.insert("requestBody".into(), spec_body.clone());
        }
    }
    doc
}

/// The OpenAPI document of a gateway with these sites (join tokens name
/// one of them).
pub fn openapi_for(sites: &[String]) -> serde_json::Value {
    let mut doc = finish(serde_json::to_value(ApiDoc::openapi()).unwrap_or_default());
    add_spec_schemas(&mut doc);
    doc["components"]["schemas"]["JoinTokenRequest"]["properties"]["site"]["enum"] =
        serde_json::json!(sites);
    doc["components"]["schemas"]["Policy"]["properties"]["sites"]["items"] =
        serde_json::json!({"type": "string", "enum": sites});
    doc
}

/// The OpenAPI document of a gateway with the default config.
pub fn openapi() -> serde_json::Value {
    openapi_for(&["default".to_string()])
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "fleet",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)))]
async fn openapi_json(State(s): State<AppState>) -> axum::Json<serde_json::Value> {
    let sites: Vec<String> = s
        .control
        .config
        .sites
        .iter()
        .map(|x| x.name.clone())
        .collect();
    axum::Json(openapi_for(&sites))
}

/// The router: every route of [`routes`] with its access rule.
pub fn router(state: AppState) -> axum::Router {
    let max_body = state.control.config.max_body;
    let mut by_path: BTreeMap<&'static str, MethodRouter<AppState>> = BTreeMap::new();
    for r in routes() {
        let handler = match r.access.role() {
            None => r.handler,
            Some(role) => r.handler.route_layer(axum::middleware::from_fn_with_state(
                (state.clone(), role, matches!(r.access, Access::Fleet(_))),
                auth::require,
            )),
        };
        // Outside the authorization: the leader checks the token.
        let handler = if r.on_leader {
            handler.route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                to_leader,
            ))
        } else {
            handler
        };
        let merged = match by_path.remove(r.path) {
            Some(existing) => existing.merge(handler),
            None => handler,
        };
        by_path.insert(r.path, merged);
    }
    let mut router = axum::Router::new();
    for (path, handler) in by_path {
        router = router.route(path, handler);
    }
    router
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Set on a request a follower forwards to the leader.
pub const FORWARDED: &str = "skiff-forwarded-by";
/// The leader's store revision after it answered a forwarded request.
pub const REVISION: &str = "skiff-revision";

/// On a follower, hands the request to the leader.
async fn to_leader(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match &s.peers {
        Some(p) if !s.control.is_leader() => match p.forward(req).await {
            Ok(resp) => resp,
            // This gateway leads now: it answers.
            Err(req) => next.run(req).await,
        },
        Some(p) if req.uri().path() != "/v1/events" => {
            let forwarded = req.headers().contains_key(FORWARDED);
            // Kept, to hand the request on if this gateway loses the lead
            // before it writes anything.
            let (parts, body) = req.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, s.control.config.max_body).await else {
                return ApiError::new(
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "the request body is larger than max_body",
                )
                .into_response();
            };
            let mut copy = axum::extract::Request::new(axum::body::Body::from(bytes.clone()));
            *copy.method_mut() = parts.method.clone();
            *copy.uri_mut() = parts.uri.clone();
            *copy.headers_mut() = parts.headers.clone();
            let req = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
            let mut resp = next.run(req).await;
            if resp.status() == axum::http::StatusCode::SERVICE_UNAVAILABLE
                && !forwarded
                && !s.control.is_leader()
            {
                let (rparts, rbody) = resp.into_parts();
                let rbytes = axum::body::to_bytes(rbody, 1 << 20)
                    .await
                    .unwrap_or_default();
                let e: Option<ApiError> = serde_json::from_slice(&rbytes).ok();
                if e.is_some_and(|e| {
                    e.message
                        .starts_with(crate::control::leadership::NOT_LEADER)
                }) {
                    // Nothing was written: the new leader takes it.
                    if let Ok(r) = p.forward(copy).await {
                        return r;
                    }
                }
                resp = Response::from_parts(rparts, axum::body::Body::from(rbytes));
            }
            if forwarded {
                // The follower answers once it has caught up with this.
                let rev = s.control.applied_revision();
                if let Ok(v) = axum::http::HeaderValue::from_str(&rev.to_string()) {
                    resp.headers_mut().insert(REVISION, v);
                }
            }
            resp
        }
        _ => next.run(req).await,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The document and the table agree: every route is documented with
    /// its security, and nothing is documented that is not served.
    #[test]
    fn the_document_is_the_route_table() {
        let doc = openapi();
        let mut documented = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                documented.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = routes()
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
        for r in routes() {
            let op = &doc["paths"][r.path][r.method.as_str().to_ascii_lowercase()];
            match r.access.role() {
                None => assert_eq!(op["security"], serde_json::json!([]), "{}", r.path),
                Some(role) => {
                    assert_eq!(
                        op["security"][0]["bearer"],
                        serde_json::json!([]),
                        "{}",
                        r.path
                    );
                    assert!(
                        op["responses"]["401"].is_object(),
                        "{} {}",
                        r.method,
                        r.path
                    );
                    assert_eq!(
                        op["responses"]["403"].is_object(),
                        role > Role::ReadOnly || matches!(r.access, Access::Fleet(_)),
                        "{} {}",
                        r.method,
                        r.path
                    );
                }
            }
        }
        // Spec bodies point at the spec's schema, which resolves.
        let body = &doc["paths"]["/v1/workloads"]["post"]["requestBody"]["content"];
        assert_eq!(
            body["application/json"]["schema"]["$ref"],
            "#/components/schemas/WorkloadSpec"
        );
        // The spec's schemas are there whole (nothing lost on the way), and
        // every reference in the document resolves.
        let (spec, defs) = skiff_proto::schema::workload_schema_components();
        assert_eq!(doc["components"]["schemas"]["WorkloadSpec"], spec);
        for (name, def) in defs {
            assert_eq!(doc["components"]["schemas"][&name], def, "{name}");
        }
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = r.split('"').next().unwrap();
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{name} is not defined"
            );
        }
    }
}
