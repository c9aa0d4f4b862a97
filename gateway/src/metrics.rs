//! Prometheus metrics (prometheus-client), served at `/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub method: String,
    pub status: String,
}

/// The gateway's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub nodes: Family<StatusLabel, Gauge>,
    pub allocations: Family<StateLabel, Gauge>,
    pub sessions: Gauge,
    pub heartbeats: Counter,
    /// From an agent sending a heartbeat to the gateway handling it.
    pub heartbeat_delay_seconds: Histogram,
    pub placement_seconds: Histogram,
    pub reconcile_seconds: Histogram,
    pub api_seconds: Family<RouteLabel, Histogram>,
    /// 1 while this gateway leads the fleet.
    pub leader: Gauge,
    /// Time of a commit to the state store (etcd: the transactions).
    pub store_commit_seconds: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("skiff_gateway");
        let nodes = Family::<StatusLabel, Gauge>::default();
        let allocations = Family::<StateLabel, Gauge>::default();
        let sessions = Gauge::default();
        let heartbeats = Counter::default();
        let heartbeat_delay_seconds = latency();
        let placement_seconds = latency();
        let reconcile_seconds = latency();
        let api_seconds = Family::<RouteLabel, Histogram>::new_with_constructor(latency);
        let leader = Gauge::default();
        let store_commit_seconds = latency();
        r.register(
            "leader",
            "1 while this gateway leads the fleet (runs the reconciler and the autoscaler)",
            leader.clone(),
        );
        r.register(
            "store_commit_seconds",
            "Time of a commit to the state store",
            store_commit_seconds.clone(),
        );
        r.register("nodes", "Nodes by status", nodes.clone());
        r.register("allocations", "Allocations by state", allocations.clone());
        r.register("sessions", "Agent sessions open", sessions.clone());
        r.register("heartbeats", "Heartbeats received", heartbeats.clone());
        r.register(
            "heartbeat_delay_seconds",
            "Time from an agent sending a heartbeat to the gateway handling it",
            heartbeat_delay_seconds.clone(),
        );
        r.register(
            "placement_seconds",
            "Time of a reconcile pass including placement",
            placement_seconds.clone(),
        );
        r.register(
            "reconcile_seconds",
            "Time of a reconcile pass, as the loop sees it",
            reconcile_seconds.clone(),
        );
        r.register(
            "api_request_seconds",
            "REST API latency by method and status",
            api_seconds.clone(),
        );
        Self {
            registry: Mutex::new(r),
            nodes,
            allocations,
            sessions,
            heartbeats,
            heartbeat_delay_seconds,
            placement_seconds,
            reconcile_seconds,
            api_seconds,
            leader,
            store_commit_seconds,
        }
    }

    pub fn set_gauges(
        &self,
        nodes: &BTreeMap<String, i64>,
        allocations: &BTreeMap<String, i64>,
        sessions: i64,
    ) {
        for s in ["ready", "draining", "cordoned", "down"] {
            self.nodes
                .get_or_create(&StatusLabel { status: s.into() })
                .set(nodes.get(s).copied().unwrap_or(0));
        }
        for (state, n) in allocations {
            self.allocations
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(*n);
        }
        self.sessions.set(sessions);
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(
            &mut out,
            &self.registry.lock().expect("lock"),
        );
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabel {
    pub namespace: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabel {
    pub namespace: String,
    pub resource: String,
}

/// One namespace's figures for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct NamespaceRow {
    pub namespace: String,
    pub reserved: crate::control::namespaces::Usage,
    pub in_use: crate::control::namespaces::Usage,
    /// Quota limits by resource (`cpu_millis`, `memory_bytes`, …).
    pub quota: Vec<(&'static str, u64)>,
    /// Millionths per hour.
    pub spend: u64,
}

/// Per-namespace series (OpenMetrics text, without `# EOF`), made at each
/// scrape from the namespaces the caller may see: a namespace's name never
/// reaches a scraper without a token for it.
pub fn encode_namespaces(rows: &[NamespaceRow]) -> String {
    let mut registry = Registry::with_prefix("skiff_namespace");
    let reserved = Family::<QuotaLabel, Gauge>::default();
    let in_use = Family::<QuotaLabel, Gauge>::default();
    let quota = Family::<QuotaLabel, Gauge>::default();
    let spend = Family::<NamespaceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    registry.register(
        "reserved",
        "What a namespace's workloads reserve (replicas times one's demand)",
        reserved.clone(),
    );
    registry.register(
        "in_use",
        "What a namespace's live allocations hold",
        in_use.clone(),
    );
    registry.register("quota", "A namespace's quota", quota.clone());
    registry.register(
        "cloud_spend_per_hour",
        "The price per hour of the cloud capacity a namespace holds",
        spend.clone(),
    );
    for r in rows {
        let label = |resource: &str| QuotaLabel {
            namespace: r.namespace.clone(),
            resource: resource.to_string(),
        };
        for (family, u) in [(&reserved, &r.reserved), (&in_use, &r.in_use)] {
            for (res, v) in [
                ("cpu_millis", u.cpu_millis),
                ("memory_bytes", u.memory_bytes),
                ("disk_bytes", u.disk_bytes),
                ("allocations", u.allocations),
            ] {
                family
                    .get_or_create(&label(res))
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
        for (res, v) in &r.quota {
            quota
                .get_or_create(&label(res))
                .set(i64::try_from(*v).unwrap_or(i64::MAX));
        }
        spend
            .get_or_create(&NamespaceLabel {
                namespace: r.namespace.clone(),
            })
            .set(r.spend as f64 / 1e6);
    }
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out.strip_suffix("# EOF\n").unwrap_or(&out).to_string()
}
