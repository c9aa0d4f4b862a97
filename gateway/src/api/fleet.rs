//! `/v1/sites`, `/v1/events` and `/v1/version`: the fleet as a whole.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use serde::{Deserialize, Serialize};
use skiff_proto::WorkloadSpec;
use skiff_proto::cluster::NodeStatus;
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::body::query;
use super::error::ApiError;
use crate::control::{AllocationRecord, Event, NodeRecord, PlannedLaunch};

/// Capacity and use of one site.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SiteView {
    pub name: String,
    /// `static`, `aws`, `azure` or `local`.
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
    pub planned_launches: Vec<PlannedLaunch>,
    /// What it can launch, with the shapes placement uses (from the
    /// config, or the cloud's for types listed by name).
    pub instance_types: Vec<InstanceTypeView>,
}

/// An instance type a cloud site can launch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceTypeView {
    pub name: String,
    /// What workloads can use on one (after the agent's reserve).
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    /// Per hour, e.g. `"0.096"`.
    pub price_per_hour: String,
    pub arch: String,
    pub spot: bool,
}

/// Every configured site: its nodes' capacity, what runs there, and the
/// VMs planned for it. A namespace's token sees the capacity and only
/// its own namespaces' use (and no planned launches).
#[utoipa::path(get, path = "/v1/sites", tag = "fleet",
    responses((status = 200, body = [SiteView])))]
pub(super) async fn sites(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<Vec<SiteView>> {
    let cfg = &s.control.config;
    let planned = if caller.is_fleet() {
        s.control.planned_launches()
    } else {
        Vec::new()
    };
    Json(s.control.read(|st| {
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
                    .filter(|a| caller.sees(a.namespace()))
                    .collect();
                let demand = |f: &dyn Fn(&WorkloadSpec) -> u64| -> u64 {
                    live.iter()
                        .filter_map(|a| st.workloads.get(&a.workload))
                        .map(|w| f(&w.spec))
                        .sum()
                };
                SiteView {
                    name: site.name.clone(),
                    kind: site.kind.to_string(),
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
                    instance_types: site
                        .instance_types
                        .iter()
                        .map(|t| InstanceTypeView {
                            name: t.name.clone(),
                            cpu_millis: t.cpu.map_or(0, |c| c.millis()),
                            memory_bytes: t.memory.map_or(0, |m| m.bytes()),
                            disk_bytes: t.disk.bytes(),
                            price_per_hour: t.price_per_hour.clone(),
                            arch: t.arch.clone(),
                            spot: t.spot,
                        })
                        .collect(),
                }
            })
            .collect()
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Keep the stream open for new events (default). With `false`, the
    /// stream ends after the recent events.
    pub follow: Option<bool>,
    /// Only this namespace's events. Without it: every event the token
    /// may see (a fleet token's include the fleet's own: nodes, sites,
    /// tokens; a namespace's token sees its namespaces' only).
    pub namespace: Option<String>,
}

/// Server-sent events, one JSON `Event` in each `data:` (the SSE event
/// name is its kind): first the last 1,000 events the gateway kept, then,
/// unless `follow=false`, every new one as it happens.
#[utoipa::path(get, path = "/v1/events", tag = "fleet", params(EventsQuery),
    responses((status = 200, description = "A text/event-stream of events",
        content_type = "text/event-stream", body = Object),
        (status = 400, description = "A bad query string", body = ApiError),
        (status = 404, description = "No such namespace", body = ApiError)))]
pub(super) async fn events(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    use tokio_stream::StreamExt;
    let q = query(q)?;
    if let Some(ns) = &q.namespace {
        super::scope::visible(&s, &caller, ns)?;
    }
    let only = q.namespace.clone();
    let shows = move |e: &Event| match (&only, &e.namespace) {
        (Some(want), Some(ns)) => want == ns,
        (Some(_), None) => false,
        (None, Some(ns)) => caller.sees(ns),
        (None, None) => caller.is_fleet(),
    };
    let (recent, rx) = s.control.subscribe_events();
    let recent: Vec<Event> = recent.into_iter().filter(|e| shows(e)).collect();
    let sse = |e: Event| {
        Ok::<_, std::convert::Infallible>(
            SseEvent::default()
                .event(e.kind.clone())
                .data(serde_json::to_string(&e).unwrap_or_default()),
        )
    };
    let history = tokio_stream::iter(recent).map(sse);
    let stream: std::pin::Pin<Box<dyn futures::Stream<Item = _> + Send>> =
        if q.follow.unwrap_or(true) {
            let live = tokio_stream::wrappers::BroadcastStream::new(rx)
                .filter_map(|e| e.ok())
                .filter(move |e| shows(e))
                .map(sse);
            Box::pin(history.chain(live))
        } else {
            Box::pin(history)
        };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `GET /v1/state`: every record of the store, as `skiff-gateway state
/// export` writes them (NDJSON: a header line, then one record a line),
/// exactly what is committed: a backup of a running gateway, or what
/// `state import` puts into another store.
#[utoipa::path(get, path = "/v1/state", tag = "fleet",
    responses((status = 200, description = "The state export (NDJSON)",
        content_type = "application/x-ndjson", body = String),
        (status = 503, description = "The store cannot be read", body = ApiError)))]
pub(super) async fn state(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let c = std::sync::Arc::clone(&s.control);
    let loaded = tokio::task::spawn_blocking(move || c.export())
        .await
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                e.to_string(),
            )
        })?
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        crate::state_io::export(&loaded, crate::control::now_ms()),
    ))
}

/// The gateway's version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VersionView {
    pub version: String,
    /// What agents pin to join (`--ca-hash`).
    pub ca_hash: String,
}

#[utoipa::path(get, path = "/v1/version", tag = "fleet",
    responses((status = 200, body = VersionView)))]
pub(super) async fn version(State(s): State<AppState>) -> Json<VersionView> {
    Json(VersionView {
        version: crate::VERSION.to_string(),
        ca_hash: s.pki.ca_hash(),
    })
}

/// `GET /v1/gateways`: the gateways of the fleet, which one leads and
/// since when (one, the leader, with the embedded store).
#[utoipa::path(get, path = "/v1/gateways", tag = "fleet",
    responses((status = 200, body = Vec<crate::peers::GatewayView>)))]
pub(super) async fn gateways(State(s): State<AppState>) -> Json<Vec<crate::peers::GatewayView>> {
    match &s.peers {
        Some(p) => Json(p.gateways().await),
        None => Json(vec![crate::peers::GatewayView {
            name: s.control.config.name.clone(),
            url: s.control.config.peer_url.clone(),
            role: "leader".into(),
            up_since_ms: s.started_ms,
            leading_since_ms: Some(s.started_ms),
        }]),
    }
}

/// `GET /metrics`: Prometheus metrics (OpenMetrics text). The fleet's
/// without a token; with one, also the `skiff_namespace_*` series of the
/// namespaces it may see (a bad token is refused).
#[utoipa::path(get, path = "/metrics", tag = "fleet",
    responses((status = 200, description = "Prometheus metrics",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String),
        (status = 401, description = "A token the gateway does not know", body = ApiError)))]
pub(super) async fn metrics(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let caller = match headers.contains_key(axum::http::header::AUTHORIZATION) {
        true => Some(super::auth::authenticate(&s, &headers)?),
        false => None,
    };
    s.control.update_gauges();
    let mut text = s.control.metrics.encode();
    if let Some(caller) = caller {
        let rows = namespace_rows(&s, &caller);
        let extra = crate::metrics::encode_namespaces(&rows);
        if let Some(at) = text.rfind("# EOF") {
            text.insert_str(at, &extra);
        }
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}

fn namespace_rows(s: &AppState, caller: &Caller) -> Vec<crate::metrics::NamespaceRow> {
    use crate::control::namespaces;
    let prices = namespaces::Prices::of(&s.control.site_infos());
    s.control.read(|st| {
        let spend = namespaces::spend_by_namespace(st, &prices);
        let mut in_use = namespaces::in_use_by_namespace(st);
        let mut names: Vec<String> = st.namespaces.keys().cloned().collect();
        if !st.namespaces.contains_key(skiff_proto::namespace::DEFAULT) {
            names.push(skiff_proto::namespace::DEFAULT.to_string());
        }
        names
            .into_iter()
            .filter(|n| caller.sees(n))
            .filter_map(|n| {
                let rec = namespaces::get(st, &n)?;
                let q = &rec.quota;
                let quota = [
                    ("cpu_millis", q.cpu.map(|c| c.millis())),
                    ("memory_bytes", q.memory.map(|m| m.bytes())),
                    ("disk_bytes", q.disk.map(|d| d.bytes())),
                    ("allocations", q.allocations.map(u64::from)),
                    ("cloud_spend_micros_per_hour", namespaces::spend_limit(&rec)),
                ]
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect();
                Some(crate::metrics::NamespaceRow {
                    reserved: namespaces::declared(st, &n, None),
                    in_use: in_use.remove(&n).unwrap_or_default(),
                    quota,
                    spend: spend.get(&n).copied().unwrap_or(0),
                    namespace: n,
                })
            })
            .collect()
    })
}
