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
