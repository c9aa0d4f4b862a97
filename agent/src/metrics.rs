//! Prometheus metrics of the agent (prometheus-client), served at
//! `/metrics` on `metrics_listen` when it is set.
//!
//! * `skiff_agent_containers{state}`: containers by state, at scrape time.
//! * `skiff_agent_container_starts_total{result}`: starts (`ok`, `failed`).
//! * `skiff_agent_container_start_seconds`: start latency (from the start
//!   request to the first process running).
//! * `skiff_agent_container_warm_starts_total`: starts that used a warm
//!   shim (see `runtime::warm`).
//! * `skiff_agent_container_oom_kills_total`, `..._restarts_total`.
//! * `skiff_agent_image_pulls_total{result}`, `skiff_agent_image_pull_seconds`.
//!
//! One registry per process, like the default registry of most Prometheus
//! clients: the agent is one process.

use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub containers: Family<StateLabel, Gauge>,
    pub starts: Family<ResultLabel, Counter>,
    pub start_seconds: Histogram,
    pub warm_starts: Counter,
    pub oom_kills: Counter,
    pub restarts: Counter,
    pub pulls: Family<ResultLabel, Counter>,
    pub pull_seconds: Histogram,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("skiff_agent");
        let containers = Family::<StateLabel, Gauge>::default();
        registry.register("containers", "Containers by state", containers.clone());
        let starts = Family::<ResultLabel, Counter>::default();
        registry.register(
            "container_starts",
            "Container starts by result",
            starts.clone(),
        );
        let start_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "container_start_seconds",
            "Time from a start request to the container's first process running",
            start_seconds.clone(),
        );
        let warm_starts = Counter::default();
        registry.register(
            "container_warm_starts",
            "Starts that used a warm shim (cgroup v1)",
            warm_starts.clone(),
        );
        let oom_kills = Counter::default();
        registry.register(
            "container_oom_kills",
            "Containers ended by the kernel's OOM killer",
            oom_kills.clone(),
        );
        let restarts = Counter::default();
        registry.register(
            "container_restarts",
            "Restarts by restart policy",
            restarts.clone(),
        );
        let pulls = Family::<ResultLabel, Counter>::default();
        registry.register("image_pulls", "Image pulls by result", pulls.clone());
        let pull_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "image_pull_seconds",
            "Image pull duration",
            pull_seconds.clone(),
        );
        Self {
            registry,
            containers,
            starts,
            start_seconds,
            warm_starts,
            oom_kills,
            restarts,
            pulls,
            pull_seconds,
        }
    }

    /// The Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// `ok` or `failed`.
pub fn result<T, E>(r: &Result<T, E>) -> ResultLabel {
    ResultLabel {
        result: if r.is_ok() { "ok" } else { "failed" }.into(),
    }
}

/// The `ok` label.
pub fn ok() -> ResultLabel {
    result::<(), ()>(&Ok(()))
}

/// The `failed` label.
pub fn failed() -> ResultLabel {
    result::<(), ()>(&Err(()))
}

static METRICS: LazyLock<Arc<Metrics>> = LazyLock::new(|| Arc::new(Metrics::new()));

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}
