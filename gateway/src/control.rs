//! The gateway's state and the reconciler.
//!
//! All state lives in memory in [`State`] behind one lock and is written
//! through the [`Store`] before anything is acknowledged. The reconciler
//! ([`Control::reconcile`]) turns workloads into allocations, places
//! pending ones with the scheduler (a pure function of a snapshot), and
//! gives every node whose set of allocations changed a new generation,
//! which its session pushes down. Liveness is in memory only: a heartbeat
//! touches no disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use skiff_proto::WorkloadSpec;
use skiff_proto::cluster::{AllocationState, Capacity, NodeStatus};
use tokio::sync::{Notify, broadcast, mpsc};

pub mod agents;
pub mod changes;
mod commits;
pub mod leadership;
pub mod namespaces;
pub mod reconcile;
mod reload;
pub mod secrets;
pub mod vms;
pub mod volumes;

use crate::clock::{Clock, SystemClock};
use crate::config::GatewayConfig;
use crate::scheduler;
use crate::store::{Batch, Kind, Loaded, Revision, Store, StoreError};

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A workload as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    pub spec: WorkloadSpec,
    /// Bumped by every update of the spec (not by scaling).
    pub version: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// A batch job's progress (`None` for a service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobStatus>,
}

/// Where a batch job is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Runs are made until enough succeed (or too many fail).
    #[default]
    Running,
    /// `batch.completions` runs succeeded.
    Complete,
    /// More than `batch.backoff_limit` runs failed, or the deadline passed.
    Failed,
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobState::Running => "running",
            JobState::Complete => "complete",
            JobState::Failed => "failed",
        })
    }
}

/// A batch job's progress, kept with its workload: its runs' records are
/// forgotten after a while, its counts are not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobStatus {
    pub state: JobState,
    /// Runs that exited 0.
    pub succeeded: u32,
    /// Runs that exited non-zero or could not start.
    pub failed: u32,
    /// When the last failed run ended: the next run waits its back-off
    /// from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_ms: Option<i64>,
    /// When it completed or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One replica, placed or waiting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AllocationRecord {
    pub id: String,
    pub workload: String,
    pub workload_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[schema(value_type = String, example = "running")]
    pub state: AllocationState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it is in its state (e.g. why it cannot be placed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The container's address on its node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(default)]
    pub restarts: u32,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Why a pending allocation waits, in parts (`skiff explain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<Explanation>,
    /// A batch run that ended and was counted in its job's progress: it
    /// holds no room and leaves its node (its exit code stays here).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub done: bool,
    /// The only node it may run on: a system workload's copy for that
    /// node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_to: Option<String>,
    /// Its replica slot, for a service with local volumes: it mounts
    /// slot N's volumes (`WORKLOAD.VOLUME.N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<u32>,
    /// Its workload's namespace, as reads show it (then `workload` is the
    /// workload's name in it); not stored: the id starts with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Started to take over from a replica on a node being emptied
    /// (consolidation, a cloud's notice): where that replica was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved: Option<Moved>,
}

/// Where a replica started by a move came from, and why it moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Moved {
    pub from_node: String,
    pub from_site: String,
    /// `consolidation` or `notice`.
    pub cause: MoveCause,
}

/// Why a node is emptied with its work started elsewhere first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MoveCause {
    /// Its work fits on capacity the fleet already pays for (on-prem, or
    /// other VMs): emptied so that it scales in.
    Consolidation,
    /// Its cloud takes it back soon (a spot interruption or a scheduled
    /// eviction).
    Notice,
}

/// A node being emptied: each replica on it is started elsewhere, and
/// stops once that one runs; then it scales in (or its cloud takes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Vacate {
    pub cause: MoveCause,
    pub since_ms: i64,
    /// What emptying it saves per hour, in millionths (consolidation).
    #[serde(default)]
    pub saving_micros_per_hour: u64,
    /// Most replicas of one workload starting elsewhere at once
    /// (consolidation's disruption budget; a notice moves all at once).
    pub max_moving: u32,
    /// What the cloud said, for a notice (`spot interruption at …`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notice: String,
}

/// Why a pending allocation is not running yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Explanation {
    /// The VM it waits for: `a new m.large in aws-us-east-1`, `VM i-0ab… to
    /// join`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// Joined nodes the placement engine looked at.
    #[serde(default)]
    pub nodes: usize,
    /// How many nodes each filter excluded (`insufficient memory`,
    /// `fails node.labels.disk == ssd`, `node down`, …).
    #[serde(default)]
    pub excluded: BTreeMap<String, usize>,
    /// For each allowed site, why no VM is launched there.
    #[serde(default)]
    pub sites: BTreeMap<String, String>,
    /// Why preemption did not help, when it was tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemption: Option<String>,
}

impl From<&scheduler::Explanation> for Explanation {
    fn from(e: &scheduler::Explanation) -> Self {
        Self {
            waiting_for: None,
            nodes: e.nodes,
            excluded: e
                .excluded
                .iter()
                .map(|(f, n)| (f.to_string(), *n))
                .collect(),
            sites: e.sites.clone(),
            preemption: e.preemption.clone(),
        }
    }
}

impl AllocationRecord {
    /// As the API shows it: its workload by name, with its namespace.
    pub fn shown(&self) -> AllocationRecord {
        let (ns, name) = skiff_proto::namespace::split(&self.workload);
        AllocationRecord {
            workload: name.to_string(),
            namespace: Some(ns.to_string()),
            ..self.clone()
        }
    }

    /// Its workload's namespace.
    pub fn namespace(&self) -> &str {
        skiff_proto::namespace::split(&self.workload).0
    }

    /// Counts toward the workload's replicas, and is on its node.
    pub fn is_live(&self) -> bool {
        !self.done && !matches!(self.state, AllocationState::Stopped | AllocationState::Lost)
    }
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeRecord {
    pub id: String,
    pub site: String,
    #[schema(value_type = String, example = "ready")]
    pub status: NodeStatus,
    /// Takes no new work (set by cordon and drain).
    #[serde(default)]
    pub unschedulable: bool,
    /// Being emptied: its allocations are replaced elsewhere.
    #[serde(default)]
    pub draining: bool,
    /// Drained with its system workloads' copies too (`drain --system`);
    /// otherwise they stay, as a DaemonSet's pods do.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain_system: bool,
    /// The container subnet it was given.
    #[schema(value_type = String)]
    pub subnet: Ipv4Net,
    /// SHA-256 of its current certificate: its identity on sessions.
    pub cert_hash: String,
    pub cert_not_after_ms: i64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Host volumes its agent publishes, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_volumes: Vec<String>,
    /// Why its agent cannot hold local volumes to their `size` (its state
    /// directory's filesystem has no project quotas); none when it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_quota_missing: Option<String>,
    /// Local volumes it still holds whose slot was recreated on another
    /// node (`on_node_loss: recreate` while it was down): its agent
    /// deletes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale_volumes: Vec<String>,
    #[schema(value_type = Object)]
    pub capacity: Capacity,
    #[schema(value_type = Object)]
    pub allocatable: Capacity,
    /// Container addresses its agent has (one per allocation on the
    /// bridge network); unset before an agent reports it, when its /24
    /// counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_allocations: Option<u32>,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub hostname: String,
    pub joined_ms: i64,
    /// The generation of its desired state last sent (or to send).
    pub generation: u64,
    /// The cloud instance it runs on (nodes the autoscaler launched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The instance type of that instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// Since when it has had no work (launched nodes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since_ms: Option<i64>,
    /// Where its scale-in is: `cordoned`, then `terminating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_in: Option<String>,
    /// Being emptied, its work started elsewhere first (consolidation, a
    /// cloud's notice); it takes no new work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vacating: Option<Vacate>,
}

impl NodeRecord {
    /// Its status as the API and the CLI show it, and placement reads it:
    /// a live node being drained is `draining`, a cordoned one
    /// `cordoned` (the stored `status` is liveness only: ready or down).
    pub fn shown_status(&self) -> NodeStatus {
        match (
            self.status,
            self.draining || self.vacating.is_some(),
            self.unschedulable,
        ) {
            (NodeStatus::Down, _, _) => NodeStatus::Down,
            (_, true, _) => NodeStatus::Draining,
            (_, false, true) => NodeStatus::Cordoned,
            (s, false, false) => s,
        }
    }

    /// The most bridge-networked allocations it can run at once: what its
    /// agent reported, or the addresses of the subnet it was given.
    pub fn addresses(&self) -> u32 {
        self.max_allocations.unwrap_or_else(|| {
            u32::try_from(self.subnet.hosts().count().saturating_sub(1)).unwrap_or(u32::MAX)
        })
    }

    /// The record as the API returns it: its status is [`Self::shown_status`].
    pub fn shown(mut self) -> Self {
        self.status = self.shown_status();
        self
    }
}

/// A join token as stored (by the hash of its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    pub site: String,
    pub expires_ms: i64,
    pub used: bool,
    pub created_ms: i64,
}

/// A cloud VM launched for pending work, until its node joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmRecord {
    pub id: String,
    pub site: String,
    pub instance_type: String,
    /// The node it joins as.
    pub node: String,
    pub launched_ms: i64,
    /// The pending allocations it was launched for: they wait for it
    /// (later passes do not plan them again).
    #[serde(default)]
    pub allocations: Vec<String>,
}

/// An API token as stored (by the hash of its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    pub name: String,
    pub role: Role,
    pub created_ms: i64,
    /// The namespaces it is bound to, its role in each; empty: a fleet
    /// token (every namespace, nodes, sites and tokens).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

impl ApiTokenRecord {
    /// Bound to some of `namespaces` and nothing else (never a fleet
    /// token).
    pub fn is_within(&self, namespaces: &[String]) -> bool {
        !self.namespaces.is_empty() && self.namespaces.iter().all(|n| namespaces.contains(n))
    }
}

/// What an API token may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Reads everything.
    ReadOnly,
    /// And changes workloads, drains and cordons nodes.
    Operator,
    /// And joins and removes nodes, and makes tokens.
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::ReadOnly => "read-only",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

/// Everything the gateway knows.
#[derive(Debug, Default)]
pub struct State {
    pub workloads: BTreeMap<String, WorkloadRecord>,
    pub allocations: BTreeMap<String, AllocationRecord>,
    pub nodes: BTreeMap<String, NodeRecord>,
    pub join_tokens: BTreeMap<String, JoinTokenRecord>,
    pub api_tokens: BTreeMap<String, ApiTokenRecord>,
    /// Cloud VMs launched, not joined yet.
    pub vms: BTreeMap<String, VmRecord>,
    /// Local volumes, by id.
    pub volumes: BTreeMap<String, volumes::VolumeRecord>,
    /// Secrets, by key (`[NAMESPACE.]NAME`; their data sealed).
    pub secrets: BTreeMap<String, secrets::SecretRecord>,
    /// Namespaces made with `POST /v1/namespaces` (and `default`, once an
    /// admin stores its quota or policy).
    pub namespaces: BTreeMap<String, namespaces::NamespaceRecord>,
    /// Allocation ids in each node's desired state.
    desired: HashMap<String, BTreeSet<String>>,
    /// Bumped by every change (a write that wrote something or failed, a
    /// reload, a watched change): a pass that placed outside the lock sees
    /// whether the state moved meanwhile.
    version: u64,
}

/// How many events `GET /v1/events` can show from before it was called.
pub const RECENT_EVENTS: usize = 1000;

/// Something that happened, for `/v1/events`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub time_ms: i64,
    /// `workload`, `allocation`, `node`.
    pub kind: String,
    /// A workload's or secret's name (in `namespace`); otherwise the id.
    pub id: String,
    pub message: String,
    /// The namespace of a workload, allocation, secret or volume event;
    /// absent on the fleet's own (nodes, sites, tokens): only fleet
    /// tokens see those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// VMs the placement engine asks for, by site and type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlannedLaunch {
    pub site: String,
    pub instance_type: String,
    pub count: u32,
    /// Per VM, the pending allocations it is for.
    #[serde(skip)]
    #[schema(ignore)]
    pub vms: Vec<Vec<String>>,
}

/// A live session's channel and liveness.
#[derive(Debug)]
struct Session {
    /// Identifies this session (a node may reconnect before the old one
    /// noticed).
    serial: u64,
    tx: mpsc::Sender<skiff_proto::wire::v1::GatewayMessage>,
}

/// Errors of control operations.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unauthenticated(String),
    /// A namespace's quota or policy refuses it (the rule named).
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The placement engine refused the state it was given (a bug: the
    /// gateway builds that input).
    #[error(transparent)]
    Placement(#[from] reconcile::ReconcileError),
    /// This gateway does not lead the fleet and could not hand the change
    /// to the one that does.
    #[error("{0}")]
    Unavailable(String),
}

/// The gateway's core.
#[derive(Debug)]
pub struct Control {
    pub config: GatewayConfig,
    store: Arc<dyn Store>,
    state: Mutex<State>,
    sessions: Mutex<HashMap<String, Session>>,
    /// Operator requests waiting for a node's `Stream` call (logs, exec).
    pub streams: crate::streams::Streams,
    /// Last time each node was heard from (memory only).
    last_seen: Mutex<HashMap<String, Instant>>,
    next_serial: std::sync::atomic::AtomicU64,
    wake: Notify,
    pub events: broadcast::Sender<Event>,
    /// The last events, for `GET /v1/events` (memory only).
    recent_events: Mutex<std::collections::VecDeque<Event>>,
    pub metrics: crate::metrics::Metrics,
    /// The last launch plan (the autoscaler acts on it).
    planned: Mutex<Vec<PlannedLaunch>>,
    /// Set by each pass that computed a plan; taken by the autoscaler, so it
    /// acts once on each plan (the next counts what it launched).
    plan_fresh: std::sync::atomic::AtomicBool,
    /// Instance types set aside after a failed launch (quota, capacity,
    /// throttling, refusal), by (site, type), until then: plans go around
    /// them, to another type or site.
    held: Mutex<BTreeMap<(String, String), Instant>>,
    /// Notified when a pass plans VMs (the autoscaler wakes for it).
    plan_ready: Notify,
    /// Leadership of the fleet and what this gateway applied of the store
    /// (see [`leadership`]).
    pub(crate) lead: leadership::Lead,
    /// Batches waiting to be committed, as one (see [`commits`]).
    commits: commits::Commits,
    /// The reload running, and the last one's failure (see [`reload`]).
    reloads: reload::Reloads,
    /// What time it is (a test's own clock, or the system's).
    pub clock: Arc<dyn Clock>,
    /// The key secrets are sealed with, once loaded.
    secret_box: std::sync::OnceLock<crate::secrets::SecretBox>,
}

fn parse<T: for<'de> Deserialize<'de>>(kind: Kind, key: &str, b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|source| StoreError::Corrupt {
        kind,
        key: key.to_string(),
        source,
    })
}

impl Control {
    /// Loads the state from the store.
    pub fn open(config: GatewayConfig, store: Arc<dyn Store>) -> Result<Arc<Self>, StoreError> {
        Self::open_with_clock(config, store, Arc::new(SystemClock))
    }

    /// [`Control::open`] on a given clock.
    pub fn open_with_clock(
        config: GatewayConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, StoreError> {
        let (state, revision) = load_state(store.as_ref())?;
        // With the embedded store this gateway is the fleet's only one, so
        // it leads; over etcd it follows until it wins an election.
        let lead = leadership::Lead::new(config.etcd.is_none(), revision);
        let metrics = crate::metrics::Metrics::new();
        metrics.leader.set(i64::from(config.etcd.is_none()));
        // Every node gets a full grace period after a gateway restart.
        let start = clock.now();
        let last_seen = state.nodes.keys().map(|n| (n.clone(), start)).collect();
        let (events, _) = broadcast::channel(1024);
        Ok(Arc::new(Self {
            config,
            store,
            state: Mutex::new(state),
            sessions: Mutex::new(HashMap::new()),
            streams: crate::streams::Streams::default(),
            last_seen: Mutex::new(last_seen),
            next_serial: std::sync::atomic::AtomicU64::new(1),
            wake: Notify::new(),
            events,
            recent_events: Mutex::new(std::collections::VecDeque::new()),
            metrics,
            planned: Mutex::new(Vec::new()),
            plan_fresh: std::sync::atomic::AtomicBool::new(false),
            held: Mutex::new(BTreeMap::new()),
            plan_ready: Notify::new(),
            lead,
            commits: commits::Commits::default(),
            reloads: reload::Reloads::default(),
            clock,
            secret_box: std::sync::OnceLock::new(),
        }))
    }
}

/// The state as the store has it, and the store's revision.
fn load_state(store: &dyn Store) -> Result<(State, Revision), StoreError> {
    let Loaded { records, revision } = store.load()?;
    let mut state = State::default();
    for (kind, rows) in &records {
        for (k, v) in rows {
            state.apply(*kind, k, Some(v))?;
        }
    }
    state.desired = state.desired_sets();
    Ok((state, revision))
}

/// What a pass's commit leaves to do once it is durable.
struct Applied {
    nodes: BTreeSet<String>,
    planned: Option<Vec<PlannedLaunch>>,
    events: Vec<reconcile::PassEvent>,
}

/// A pass's changes, into the state and the batch.
fn apply_changes(s: &mut State, b: &mut Batch, c: reconcile::Changes) -> Applied {
    for k in &c.expired_join_tokens {
        s.join_tokens.remove(k);
        b.delete(Kind::JoinToken, k);
    }
    for id in &c.forgotten {
        s.allocations.remove(id);
        b.delete(Kind::Allocation, id);
    }
    for (id, a) in c.allocations {
        b.put(Kind::Allocation, &id, &a);
        s.allocations.insert(id, a);
    }
    for (id, v) in c.volumes {
        b.put(Kind::Volume, &id, &v);
        s.volumes.insert(id, v);
    }
    for (name, job) in c.jobs {
        if let Some(w) = s.workloads.get_mut(&name) {
            w.job = Some(job);
            b.put(Kind::Workload, &name, w);
        }
    }
    for n in &c.nodes {
        if let Some(node) = s.nodes.get_mut(n) {
            node.generation += 1;
            b.put(Kind::Node, n, node);
        }
    }
    s.desired = c.desired;
    Applied {
        nodes: c.nodes,
        planned: c.planned,
        events: c.events,
    }
}

impl State {
    /// Sets (`Some`) or removes (`None`) one record as the store has it.
    /// The desired sets are not touched (see [`State::desired_sets`]).
    pub(crate) fn apply(
        &mut self,
        kind: Kind,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        fn set<T: for<'de> Deserialize<'de>>(
            map: &mut BTreeMap<String, T>,
            kind: Kind,
            key: &str,
            value: Option<&[u8]>,
        ) -> Result<(), StoreError> {
            match value {
                Some(v) => {
                    map.insert(key.to_string(), parse(kind, key, v)?);
                }
                None => {
                    map.remove(key);
                }
            }
            Ok(())
        }
        match kind {
            Kind::Workload => set(&mut self.workloads, kind, key, value),
            Kind::Allocation => set(&mut self.allocations, kind, key, value),
            Kind::Node => set(&mut self.nodes, kind, key, value),
            Kind::JoinToken => set(&mut self.join_tokens, kind, key, value),
            Kind::ApiToken => set(&mut self.api_tokens, kind, key, value),
            Kind::Vm => set(&mut self.vms, kind, key, value),
            Kind::Volume => set(&mut self.volumes, kind, key, value),
            Kind::Secret => set(&mut self.secrets, kind, key, value),
            Kind::Namespace => set(&mut self.namespaces, kind, key, value),
            Kind::Meta => Ok(()),
        }
    }

    /// The instance type a launched node runs on: recorded on it, or (in
    /// the moments after it joined, before the autoscaler saw it) on the
    /// VM launched as it.
    pub fn instance_type_of<'a>(&'a self, n: &'a NodeRecord) -> Option<&'a str> {
        n.instance_type.as_deref().or_else(|| {
            self.vms
                .values()
                .find(|v| v.node == n.id)
                .map(|v| v.instance_type.as_str())
        })
    }

    /// Every node's desired set: its live, placed allocations.
    pub(crate) fn desired_sets(&self) -> HashMap<String, BTreeSet<String>> {
        let mut desired: HashMap<String, BTreeSet<String>> = HashMap::new();
        for a in self.allocations.values() {
            if let (Some(n), true) = (&a.node, a.is_live()) {
                desired.entry(n.clone()).or_default().insert(a.id.clone());
            }
        }
        desired
    }
}

impl Control {
    /// The VMs the last placement pass asked for.
    pub fn planned_launches(&self) -> Vec<PlannedLaunch> {
        self.planned.lock().expect("lock").clone()
    }

    /// Stores a new workload (durably, before returning) and asks for a
    /// pass; a name in use is a conflict.
    pub fn create_workload(&self, spec: WorkloadSpec) -> Result<WorkloadRecord, ControlError> {
        let name = spec.key();
        let w = self.write(|st, b| {
            if st.workloads.contains_key(&name) {
                return Err(ControlError::Conflict(format!(
                    "workload {} exists in namespace {} (update it with PUT /v1/workloads/{})",
                    spec.name, spec.namespace, spec.name
                )));
            }
            namespaces::check_spec(st, &spec)?;
            self.check_fleet_replicas(st, &name, spec.live_at_most())?;
            secrets::check_spec(st, &spec)?;
            let now = self.clock.now_ms();
            let w = WorkloadRecord {
                job: spec.batch_rules().map(|_| JobStatus::default()),
                spec,
                version: 1,
                created_ms: now,
                updated_ms: now,
            };
            b.put(Kind::Workload, &name, &w);
            st.workloads.insert(name.clone(), w.clone());
            Ok(w)
        })?;
        self.event("workload", &name, "created");
        self.wake();
        Ok(w)
    }

    /// Refuses a change that would make the fleet's replicas (with
    /// `workload` at `replicas`) more than `max_fleet_replicas`.
    pub(crate) fn check_fleet_replicas(
        &self,
        st: &State,
        workload: &str,
        replicas: u32,
    ) -> Result<(), ControlError> {
        let others: u64 = st
            .workloads
            .iter()
            .filter(|(k, _)| k.as_str() != workload)
            .map(|(_, w)| u64::from(w.spec.live_at_most()))
            .sum();
        let total = others + u64::from(replicas);
        let limit = u64::from(self.config.max_fleet_replicas);
        if total > limit {
            return Err(ControlError::Conflict(format!(
                "the fleet would have {total} replicas, over max_fleet_replicas ({limit})"
            )));
        }
        Ok(())
    }

    /// Sets `instance_type` of `site` aside for `hold`: the next plans
    /// launch another type or in another site. Plans again at once.
    pub fn hold_instance_type(&self, site: &str, instance_type: &str, hold: Duration, why: &str) {
        self.held.lock().expect("lock").insert(
            (site.to_string(), instance_type.to_string()),
            self.clock.now() + hold,
        );
        self.event(
            "site",
            site,
            format!(
                "{instance_type} set aside for {}s ({why}); planning around it",
                hold.as_secs()
            ),
        );
        self.wake();
    }

    /// Whether `instance_type` of `site` is set aside now.
    pub fn is_held(&self, site: &str, instance_type: &str) -> bool {
        self.held
            .lock()
            .expect("lock")
            .get(&(site.to_string(), instance_type.to_string()))
            .is_some_and(|until| *until > self.clock.now())
    }

    /// Resolves when a placement pass has planned VMs.
    pub async fn plan_wanted(&self) {
        self.plan_ready.notified().await;
    }

    /// The plan, if a pass computed one since the last call.
    pub fn take_fresh_plan(&self) -> Option<Vec<PlannedLaunch>> {
        self.plan_fresh
            .swap(false, std::sync::atomic::Ordering::SeqCst)
            .then(|| self.planned_launches())
    }

    /// Reads the state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().expect("state lock"))
    }

    /// Changes the state: `f` edits it under the lock and fills the batch
    /// with what it changed, which is committed (durably, with whatever
    /// else was queued meanwhile: [`commits`]) before the caller answers
    /// anyone. If `f` fails, or the commit does, the state is reloaded
    /// from the store: it holds exactly what was committed. Called by the
    /// named operations of this module ([`changes`], [`agents`], [`vms`],
    /// the reconciler, liveness, reports) and by tests, not elsewhere.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&mut State, &mut Batch) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        self.write_with(false, f)
    }

    /// [`Control::write`] for soft state (see [`Batch::soft`]).
    pub(crate) fn write_soft<T>(
        &self,
        f: impl FnOnce(&mut State, &mut Batch) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        self.write_with(true, f)
    }

    fn write_with<T>(
        &self,
        soft: bool,
        f: impl FnOnce(&mut State, &mut Batch) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        let t = Instant::now();
        // Nodes whose desired state a reload changed: pushed once the lock
        // is released.
        let mut reloaded = BTreeSet::new();
        // Only the leader writes; and not on a state that may hold a write
        // the store refused (it is reloaded first). The epoch is read
        // before staleness: a commit that fails after this read refuses
        // this batch.
        let (mut state, epoch) = loop {
            let state = self.state.lock().expect("state lock");
            let epoch = self.commits.epoch();
            self.lead.may_write()?;
            if !self.lead.is_stale() {
                break (state, epoch);
            }
            drop(state);
            reloaded.extend(self.reload_if_stale()?);
        };
        let mut batch = Batch {
            soft,
            ..Batch::default()
        };
        let out = f(&mut state, &mut batch);
        let wrote = !batch.is_empty();
        if wrote || out.is_err() {
            state.version += 1;
        }
        let ticket = match &out {
            Ok(_) => self.commits.enqueue(epoch, batch).transpose(),
            Err(e) if !wrote && !matches!(e, ControlError::Store(_)) => None,
            Err(_) => {
                // `f` changed the state and gave up: what others queued
                // fails (it was built on this change), and the state is
                // reloaded below.
                self.commits.fail_pending(StoreError::Unavailable {
                    what: "commit".into(),
                    source: "a change made meanwhile failed and the state was reloaded".into(),
                });
                self.lead.mark_stale();
                None
            }
        };
        drop(state);
        let result = match ticket {
            None => Ok(()),
            Some(ticket) => ticket
                .and_then(|ticket| {
                    self.commits.wait(
                        ticket,
                        self.store.as_ref(),
                        |revision| self.lead.committed(revision),
                        |_| self.lead.mark_stale(),
                    )
                })
                .map_err(ControlError::from),
        };
        match &result {
            Err(ControlError::Store(StoreError::Unavailable { .. })) => {
                // The store did not answer: reading it now would keep the
                // caller waiting as long again for its 503. The next write
                // or pass (woken now) reloads the state.
                self.wake();
            }
            Err(ControlError::Store(e)) => {
                if matches!(e, StoreError::NotLeader) {
                    self.step_down("a commit was refused: another gateway leads now");
                }
                // The state holds what was not written: reloaded now (or,
                // if the store cannot be read, before the next write).
                if let Ok(changed) = self.reload_if_stale() {
                    reloaded.extend(changed);
                }
            }
            Ok(()) if out.is_err() => {
                if let Ok(changed) = self.reload_if_stale() {
                    reloaded.extend(changed);
                }
            }
            Ok(()) if wrote => {
                self.metrics
                    .store_commit_seconds
                    .observe(t.elapsed().as_secs_f64());
            }
            _ => {}
        }
        if !reloaded.is_empty() {
            self.push(&reloaded);
        }
        result.and(out)
    }

    /// Waits (under the state lock) until nothing is being committed or
    /// queued: the store then has every change the state holds that will
    /// ever be written.
    fn settle_commits(&self) {
        self.commits.wait_idle(
            self.store.as_ref(),
            |revision| self.lead.committed(revision),
            |_| self.lead.mark_stale(),
        );
    }

    /// Every record the store holds, read under the state lock: exactly
    /// what is committed (`GET /v1/state`, backups).
    pub fn export(&self) -> Result<Loaded, StoreError> {
        let _state = self.state.lock().expect("state lock");
        self.settle_commits();
        self.store.load()
    }

    pub fn event(&self, kind: &str, id: &str, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(kind, id, %message, "event");
        let namespace = skiff_proto::namespace::of_event(kind, id).map(str::to_string);
        let shown = match kind {
            "workload" | "secret" => skiff_proto::namespace::split(id).1,
            _ => id,
        };
        let event = Event {
            time_ms: now_ms(),
            kind: kind.into(),
            id: shown.into(),
            message,
            namespace,
        };
        // Kept and sent under one lock: a subscriber that read the recent
        // ones under it misses nothing and sees nothing twice.
        let mut recent = self.recent_events.lock().expect("lock");
        if recent.len() == RECENT_EVENTS {
            recent.pop_front();
        }
        recent.push_back(event.clone());
        let _ = self.events.send(event);
    }

    /// The last [`RECENT_EVENTS`] events, oldest first, and a subscription
    /// to the ones after them.
    pub fn subscribe_events(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let recent = self.recent_events.lock().expect("lock");
        (recent.iter().cloned().collect(), self.events.subscribe())
    }

    /// Asks the reconciler for a pass.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs the reconciler and the liveness check until the process ends.
    pub fn spawn_loops(self: &Arc<Self>) {
        let c = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = c.wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                // Batches what arrived together.
                tokio::time::sleep(Duration::from_millis(5)).await;
                if !c.is_leader() {
                    continue;
                }
                let t = Instant::now();
                // Off the async workers: a pass waits for its commit (over
                // etcd, a round trip or more) and places for a while.
                let pass = Arc::clone(&c);
                match tokio::task::spawn_blocking(move || pass.reconcile()).await {
                    Ok(Err(e)) => tracing::error!(error = %e, "reconcile"),
                    Ok(Ok(())) => {}
                    Err(e) => tracing::error!(error = %e, "reconcile pass panicked"),
                }
                c.metrics
                    .reconcile_seconds
                    .observe(t.elapsed().as_secs_f64());
            }
        });
        let c = Arc::clone(self);
        tokio::spawn(async move {
            let tick = (c.config.heartbeat_interval / 4).max(Duration::from_millis(50));
            loop {
                tokio::time::sleep(tick).await;
                if c.is_leader() {
                    c.check_liveness();
                }
            }
        });
    }

    /// Marks nodes not heard from within `down_after` as down (the
    /// liveness loop runs it four times a heartbeat; a simulation on its
    /// own clock calls it itself).
    pub fn check_liveness(&self) {
        let now = self.clock.now();
        let stale: Vec<String> = {
            let seen = self.last_seen.lock().expect("lock");
            self.read(|s| {
                s.nodes
                    .values()
                    .filter(|n| n.status != NodeStatus::Down)
                    .filter(|n| {
                        seen.get(&n.id)
                            .is_none_or(|t| now.duration_since(*t) > self.config.down_after)
                    })
                    .map(|n| n.id.clone())
                    .collect()
            })
        };
        if stale.is_empty() {
            return;
        }
        let r = self.write_soft(|s, b| {
            for id in &stale {
                if let Some(n) = s.nodes.get_mut(id) {
                    n.status = NodeStatus::Down;
                    b.put(Kind::Node, id, n);
                }
            }
            Ok(())
        });
        match r {
            Ok(()) => {
                for id in &stale {
                    self.event("node", id, "down: no heartbeat within the grace period");
                }
                self.wake();
            }
            Err(e) => tracing::error!(error = %e, "mark nodes down"),
        }
    }

    /// A heartbeat (or any message) from `node`.
    pub fn seen(&self, node: &str) {
        self.last_seen
            .lock()
            .expect("lock")
            .insert(node.to_string(), self.clock.now());
    }

    /// A node marked down while its session still stood (its heartbeats
    /// were late, not gone) that is heard from again is ready again; the
    /// allocations it lost meanwhile are already gone from its desired
    /// state, so it stops them.
    pub fn heard_from(&self, node: &str) {
        self.heard_from_many(std::slice::from_ref(&node));
    }

    /// [`Control::heard_from`] for many nodes (a follower's batch): every
    /// one seen at once, those that were down ready again in one write.
    pub fn heard_from_many(&self, nodes: &[impl AsRef<str>]) {
        if !self.is_leader() {
            // The leader learns it in this gateway's next batch.
            for n in nodes {
                self.lead.heard(n.as_ref());
            }
            return;
        }
        {
            let now = self.clock.now();
            let mut seen = self.last_seen.lock().expect("lock");
            for n in nodes {
                seen.insert(n.as_ref().to_string(), now);
            }
        }
        let is_down =
            |s: &State, n: &str| s.nodes.get(n).is_some_and(|n| n.status == NodeStatus::Down);
        if !self.read(|s| nodes.iter().any(|n| is_down(s, n.as_ref()))) {
            return;
        }
        let r = self.write_soft(|s, b| {
            let mut back = Vec::new();
            for n in nodes {
                let n = n.as_ref();
                if is_down(s, n)
                    && let Some(node) = s.nodes.get_mut(n)
                {
                    node.status = NodeStatus::Ready;
                    b.put(Kind::Node, n, node);
                    back.push(n.to_string());
                }
            }
            Ok(back)
        });
        match r {
            Ok(back) => {
                for n in &back {
                    self.event("node", n, "ready: heard from again");
                }
                self.wake();
            }
            Err(e) => {
                tracing::warn!(error = %e, nodes = nodes.len(), "mark nodes heard from ready")
            }
        }
    }

    /// A session opened for `node`: its channel, and a serial to close it
    /// with.
    pub fn open_session(
        &self,
        node: &str,
        tx: mpsc::Sender<skiff_proto::wire::v1::GatewayMessage>,
    ) -> u64 {
        let serial = self
            .next_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sessions
            .lock()
            .expect("lock")
            .insert(node.to_string(), Session { serial, tx });
        self.seen(node);
        serial
    }

    pub fn close_session(&self, node: &str, serial: u64) {
        let mut sessions = self.sessions.lock().expect("lock");
        if sessions.get(node).is_some_and(|s| s.serial == serial) {
            sessions.remove(node);
        }
    }

    /// Ends `node`'s session (it was removed): its stream closes, and its
    /// certificate opens no new one.
    pub fn end_session(&self, node: &str) {
        self.sessions.lock().expect("lock").remove(node);
        self.last_seen.lock().expect("lock").remove(node);
    }

    /// Ends every session (the gateway stops): agents re-attach to another
    /// gateway, or to this one when it is back.
    pub fn end_all_sessions(&self) {
        self.sessions.lock().expect("lock").clear();
    }

    pub fn sessions(&self) -> usize {
        self.sessions.lock().expect("lock").len()
    }

    /// Sends `msg` on `node`'s session, if it has one with room for it.
    pub fn send_to(&self, node: &str, msg: skiff_proto::wire::v1::GatewayMessage) -> bool {
        self.sessions
            .lock()
            .expect("lock")
            .get(node)
            .is_some_and(|s| s.tx.try_send(msg).is_ok())
    }

    /// The desired state of `node` as a wire message.
    pub fn desired_state(&self, node: &str) -> skiff_proto::wire::v1::GatewayMessage {
        use skiff_proto::wire::v1;
        // Only when some workload reads a secret is the key loaded.
        let keys = self
            .read(|s| !s.secrets.is_empty())
            .then(|| self.secret_box().ok())
            .flatten();
        self.read(|s| {
            let generation = s.nodes.get(node).map_or(0, |n| n.generation);
            let allocations = s
                .desired
                .get(node)
                .into_iter()
                .flatten()
                .filter_map(|id| s.allocations.get(id))
                .filter_map(|a| {
                    let w = s.workloads.get(&a.workload)?;
                    let local_volumes = a
                        .instance
                        .map(|k| {
                            w.spec
                                .volumes
                                .iter()
                                .filter(|v| v.local.is_some())
                                .map(|v| {
                                    (v.name.clone(), volumes::volume_id(&a.workload, &v.name, k))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    Some(v1::Allocation {
                        id: a.id.clone(),
                        workload: a.workload.clone(),
                        workload_version: a.workload_version,
                        spec: Some(v1::ContainerSpec::from(&w.spec.container_spec())),
                        local_volumes,
                        secrets: secrets::data_for(s, keys, &w.spec),
                        namespace: w.spec.namespace.clone(),
                    })
                })
                .collect::<Vec<_>>();
            let here: BTreeSet<&str> = allocations.iter().map(|a| a.namespace.as_str()).collect();
            let network_policies = here
                .into_iter()
                .map(|ns| v1::NamespaceNetwork {
                    namespace: ns.to_string(),
                    allow_from: namespaces::get(s, ns)
                        .map(|r| r.policy.allow_from.clone())
                        .unwrap_or_default(),
                })
                .collect();
            v1::GatewayMessage {
                kind: Some(v1::gateway_message::Kind::DesiredState(v1::DesiredState {
                    generation,
                    allocations,
                    remove_volumes: volumes::to_remove(s, node),
                    network_policies,
                })),
            }
        })
    }

    /// Pushes the desired state to `nodes` that have a session.
    pub(crate) fn push(&self, nodes: &BTreeSet<String>) {
        let targets: Vec<(String, mpsc::Sender<_>)> = {
            let sessions = self.sessions.lock().expect("lock");
            nodes
                .iter()
                .filter_map(|n| sessions.get(n).map(|s| (n.clone(), s.tx.clone())))
                .collect()
        };
        for (node, tx) in targets {
            let msg = self.desired_state(&node);
            if tx.try_send(msg).is_err() {
                tracing::warn!(
                    node,
                    "session queue full or closed; the node gets its state on reconnect"
                );
            }
        }
    }

    /// The next free node subnet from the pool.
    pub fn next_subnet(&self, s: &State) -> Result<Ipv4Net, ControlError> {
        let used: BTreeSet<Ipv4Net> = s.nodes.values().map(|n| n.subnet).collect();
        self.config
            .node_subnets
            .subnets(24)
            .map_err(|e| ControlError::Invalid(e.to_string()))?
            .find(|n| !used.contains(n) && n.network() != Ipv4Addr::UNSPECIFIED)
            .ok_or_else(|| {
                ControlError::Conflict(format!(
                    "node_subnets {}: every /24 is taken",
                    self.config.node_subnets
                ))
            })
    }

    /// One reconciler pass (see [`reconcile`]): its first half under the
    /// state lock, the placement engine outside it, the rest under it
    /// again; if the state changed meanwhile, the whole pass runs again
    /// under the lock. Committed as one batch; then its events, the
    /// autoscaler's plan and the nodes' new desired states go out.
    pub fn reconcile(&self) -> Result<(), ControlError> {
        let t = Instant::now();
        let now = self.clock.now_ms();
        let sites = self.site_infos();
        let (version, pass) = self.read(|s| (s.version, reconcile::prepare(s, now, &sites)));
        let plan = pass.schedule();
        let applied = self.write(|s, b| {
            let changes = if s.version == version {
                reconcile::finish(s, pass, plan?)
            } else {
                reconcile::reconcile(s, now, &sites)?
            };
            Ok(apply_changes(s, b, changes))
        })?;
        let Applied {
            nodes,
            planned,
            events,
        } = applied;
        for (kind, id, msg) in events {
            self.event(kind, &id, msg);
        }
        self.set_plan(planned);
        self.push(&nodes);
        self.metrics
            .placement_seconds
            .observe(t.elapsed().as_secs_f64());
        self.update_gauges();
        Ok(())
    }

    /// The sites as the placement engine sees them, with the instance
    /// types set aside now.
    pub(crate) fn site_infos(&self) -> Vec<scheduler::SiteInfo> {
        let price = |p: &str| crate::config::parse_price(p).ok();
        self.config
            .sites
            .iter()
            .map(|c| scheduler::SiteInfo {
                name: c.name.clone(),
                kind: c.kind,
                cost_rank: c.cost_rank,
                max_nodes: c.max_nodes,
                // Checked when the config was loaded.
                budget: c.budget_per_hour.as_deref().and_then(price),
                instance_types: c
                    .instance_types
                    .iter()
                    .map(|t| scheduler::InstanceType {
                        held: self.is_held(&c.name, &t.name),
                        name: t.name.clone(),
                        // Every shape is known once the gateway started
                        // (`crate::instance_types::resolve`).
                        allocatable: Capacity::new(
                            t.cpu.map_or(0, |c| c.millis()),
                            t.memory.map_or(0, |m| m.bytes()),
                            t.disk.bytes(),
                        ),
                        price: price(&t.price_per_hour).unwrap_or(0),
                        arch: t.arch.clone(),
                    })
                    .collect(),
                launch_labels: BTreeMap::new(),
            })
            .collect()
    }

    /// A pass's launch plan for the autoscaler (`None`: nothing pending,
    /// no plan). An event when what it asks for changes.
    fn set_plan(&self, planned: Option<Vec<PlannedLaunch>>) {
        let mut last = self.planned.lock().expect("lock");
        let Some(planned) = planned else {
            last.clear();
            return;
        };
        let shape = |v: &[PlannedLaunch]| -> Vec<(String, String, u32)> {
            v.iter()
                .map(|p| (p.site.clone(), p.instance_type.clone(), p.count))
                .collect()
        };
        let changed = shape(&last) != shape(&planned);
        let wanted = !planned.is_empty();
        if changed {
            for p in &planned {
                self.event(
                    "site",
                    &p.site,
                    format!("launch planned: {} x {}", p.count, p.instance_type),
                );
            }
        }
        *last = planned;
        drop(last);
        self.plan_fresh
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if wanted {
            self.plan_ready.notify_one();
        }
    }

    /// Status reports from `node` (its identity from its certificate): only
    /// allocations placed on it are taken; others are ignored.
    pub fn report(
        &self,
        node: &str,
        report: &skiff_proto::wire::v1::AllocationStatusReport,
    ) -> Result<(), ControlError> {
        self.report_many(&[(node.to_string(), report.clone())])
    }

    /// [`Control::report`] for several nodes in one commit (a follower's
    /// batch of what its sessions reported).
    pub fn report_many(
        &self,
        reports: &[(String, skiff_proto::wire::v1::AllocationStatusReport)],
    ) -> Result<(), ControlError> {
        let mut ignored = Vec::new();
        let mut changed = false;
        // Soft: agents report again on reconnect.
        let r = self.write_soft(|s, b| {
            let now = self.clock.now_ms();
            // Only while some volume is being removed (rare): a batch of
            // reports from 10,000 nodes does not look at the volumes.
            if s.volumes.values().any(|v| v.removing) {
                for (node, r) in reports {
                    changed |= volumes::forget_removed(s, b, node, &r.volumes);
                }
            }
            for (node, r) in reports {
                changed |= volumes::note_stale(s, b, node, &r.volumes);
            }
            for (node, st) in reports
                .iter()
                .flat_map(|(n, r)| r.allocations.iter().map(move |st| (n, st)))
            {
                let Some(a) = s.allocations.get_mut(&st.allocation_id) else {
                    continue;
                };
                if a.node.as_deref() != Some(node.as_str()) {
                    ignored.push((node.clone(), st.allocation_id.clone()));
                    continue;
                }
                if !a.is_live() {
                    continue;
                }
                let state = skiff_proto::wire::allocation_state(st.state).unwrap_or(a.state);
                let differs = a.state != state
                    || a.exit_code != st.exit_code
                    || a.restarts != st.restarts
                    || a.address != st.address
                    || (a.message != st.message && !st.message.is_empty());
                if differs {
                    a.state = state;
                    a.exit_code = st.exit_code;
                    a.restarts = st.restarts;
                    a.address = st.address.clone();
                    if !st.message.is_empty() {
                        a.message = st.message.clone();
                    }
                    a.updated_ms = now;
                    b.put(Kind::Allocation, &a.id, a);
                    changed = true;
                }
            }
            Ok(())
        });
        for (node, id) in ignored {
            tracing::warn!(node, allocation = %id, "ignored a report for an allocation the node does not hold");
        }
        // A state change may let a rolling update go on.
        if changed {
            self.wake();
        }
        r
    }

    /// Sets the gauges from the state.
    pub fn update_gauges(&self) {
        let (nodes, allocs) = self.read(|s| {
            let mut nodes: BTreeMap<String, i64> = BTreeMap::new();
            for n in s.nodes.values() {
                *nodes.entry(n.status.to_string()).or_default() += 1;
            }
            let mut allocs: BTreeMap<String, i64> = BTreeMap::new();
            for a in s.allocations.values() {
                *allocs.entry(a.state.to_string()).or_default() += 1;
            }
            (nodes, allocs)
        });
        self.metrics
            .set_gauges(&nodes, &allocs, self.sessions() as i64);
    }
}

/// Test helpers shared by the gateway's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::config::{FileConfig, GatewayConfig, InstanceTypeConfig, Overrides, SiteConfig};
    use crate::store::RedbStore;

    /// A site with nothing but a name and a kind.
    pub fn site(name: &str, kind: skiff_proto::cluster::SiteKind) -> SiteConfig {
        SiteConfig {
            name: name.into(),
            kind,
            cost_rank: 0,
            max_nodes: None,
            budget_per_hour: None,
            instance_types: Vec::new(),
            gateway_url: None,
            join_timeout: None,
            scale_in_after: None,
            local: None,
            aws: None,
            azure: None,
            agent_config: None,
        }
    }

    /// `aws-us-east-1`: cost rank 2, at most 10 VMs, 2-CPU `m.large`.
    pub fn aws_site() -> SiteConfig {
        SiteConfig {
            cost_rank: 2,
            max_nodes: Some(10),
            instance_types: vec![InstanceTypeConfig {
                name: "m.large".into(),
                cpu: Some("2".parse().unwrap()),
                memory: Some("8Gi".parse().unwrap()),
                disk: "20Gi".parse().unwrap(),
                price_per_hour: "0.096".into(),
                arch: "amd64".into(),
                spot: false,
            }],
            ..site("aws-us-east-1", skiff_proto::cluster::SiteKind::Aws)
        }
    }

    /// A control over a fresh store in `dir` with these sites, on a clock
    /// of its own that moves only when a test moves it.
    pub fn control(dir: &std::path::Path, sites: Vec<SiteConfig>) -> Arc<Control> {
        control_on(dir, sites, Arc::default())
    }

    /// [`control`] on the test's clock.
    pub fn control_on(
        dir: &std::path::Path,
        sites: Vec<SiteConfig>,
        clock: Arc<crate::clock::ManualClock>,
    ) -> Arc<Control> {
        let file = FileConfig {
            sites,
            ..FileConfig::default()
        };
        let config = GatewayConfig::resolve(file, &Overrides::default()).unwrap();
        let store = RedbStore::open(&dir.join("state.redb")).unwrap();
        Control::open_with_clock(config, Arc::new(store), clock).unwrap()
    }

    /// Stores a workload from YAML.
    pub fn workload(c: &Control, text: &str) {
        let spec = skiff_proto::parse_workloads(text, skiff_proto::Format::Yaml)
            .unwrap()
            .remove(0);
        c.create_workload(spec).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{aws_site, site, workload};
    use super::*;

    fn control(dir: &std::path::Path) -> Arc<Control> {
        let aws = crate::config::SiteConfig {
            budget_per_hour: Some("1.00".into()),
            ..aws_site()
        };
        super::testing::control(
            dir,
            vec![site("onprem", skiff_proto::cluster::SiteKind::Static), aws],
        )
    }

    #[test]
    fn a_node_not_heard_from_within_the_grace_period_is_down_and_ready_when_heard_again() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(crate::clock::ManualClock::default());
        let c = super::testing::control_on(
            dir.path(),
            vec![site("onprem", skiff_proto::cluster::SiteKind::Static)],
            clock.clone(),
        );
        for id in ["n1", "n2"] {
            let n: NodeRecord = serde_json::from_value(serde_json::json!({
                "id": id, "site": "onprem", "status": "ready", "subnet": "10.128.9.0/24",
                "cert_hash": "x", "cert_not_after_ms": 0, "capacity": {"cpu": "2", "memory": "8Gi"},
                "allocatable": {"cpu": "2", "memory": "8Gi"}, "joined_ms": 0, "generation": 1
            }))
            .unwrap();
            c.write(|s, b| {
                b.put(Kind::Node, id, &n);
                s.nodes.insert(id.into(), n);
                Ok(())
            })
            .unwrap();
            c.seen(id);
        }
        let status = |id: &str| c.read(|s| s.nodes[id].status);
        let grace = c.config.down_after;
        clock.advance(grace / 2);
        c.heard_from("n2");
        clock.advance(grace / 2);
        c.check_liveness();
        assert_eq!(status("n1"), NodeStatus::Ready, "exactly the grace period");
        clock.advance(Duration::from_millis(1));
        c.check_liveness();
        assert_eq!(status("n1"), NodeStatus::Down);
        assert_eq!(status("n2"), NodeStatus::Ready, "heard from half-way");
        // Heard from again (in a follower's batch): ready.
        c.heard_from_many(&["n1", "n2"]);
        assert_eq!(status("n1"), NodeStatus::Ready);
        clock.advance(grace);
        c.check_liveness();
        assert_eq!(status("n1"), NodeStatus::Ready);
        clock.advance(Duration::from_millis(1));
        c.check_liveness();
        assert_eq!(
            (status("n1"), status("n2")),
            (NodeStatus::Down, NodeStatus::Down)
        );
    }

    #[test]
    fn demand_no_node_fits_becomes_a_launch_plan_and_goes_when_the_demand_does() {
        let dir = tempfile::tempdir().unwrap();
        let c = control(dir.path());
        // Three replicas of 1 CPU: two fit a 2-CPU VM, so two VMs.
        workload(
            &c,
            "name: web\nimage: busybox\nreplicas: 3\nresources: {cpu: '1', memory: 1Gi}\n",
        );
        c.reconcile().unwrap();
        let plan = c.planned_launches();
        assert_eq!(plan.len(), 1);
        assert_eq!(
            (
                plan[0].site.as_str(),
                plan[0].instance_type.as_str(),
                plan[0].count
            ),
            ("aws-us-east-1", "m.large", 2)
        );
        // Each VM is for its own replicas: two and one.
        let mut per_vm: Vec<usize> = plan[0].vms.iter().map(Vec::len).collect();
        per_vm.sort();
        assert_eq!(per_vm, [1, 2]);
        let msgs: Vec<String> =
            c.read(|s| s.allocations.values().map(|a| a.message.clone()).collect());
        assert_eq!(msgs.len(), 3);
        for m in &msgs {
            assert_eq!(m, "waiting for a new m.large in aws-us-east-1");
        }
        // More than the budget allows (10 VMs at 0.096 > 1.00/h): some
        // replicas are left unplaced, with the reason.
        c.write(|s, b| {
            let w = s.workloads.get_mut("web").unwrap();
            w.spec.replicas = 30;
            b.put(Kind::Workload, "web", w);
            Ok(())
        })
        .unwrap();
        let mut rx = c.events.subscribe();
        c.reconcile().unwrap();
        let planned: u32 = c.planned_launches().iter().map(|p| p.count).sum();
        assert_eq!(planned, 10, "max_nodes and the budget cap the plan");
        // An event says why the rest launches nothing.
        let events: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| e.message)
            .collect();
        assert!(
            events.iter().any(|e| e
                .starts_with("10 replica(s) cannot be placed or launched for: ")
                && e.contains("max_nodes 10 reached")),
            "{events:?}"
        );
        let unplaced = c.read(|s| {
            s.allocations
                .values()
                .filter(|a| !a.message.starts_with("waiting for a new"))
                .count()
        });
        assert_eq!(unplaced, 10);
        // No demand, no plan.
        c.write(|s, b| {
            s.workloads.remove("web");
            b.delete(Kind::Workload, "web");
            Ok(())
        })
        .unwrap();
        c.reconcile().unwrap();
        assert!(c.planned_launches().is_empty());
    }
}
