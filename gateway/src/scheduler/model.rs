//! The scheduler's inputs and outputs. Everything here is plain data: the
//! gateway builds a [`Snapshot`] and [`Request`]s from its store, and carries
//! out the [`Plan`] it gets back.

use std::collections::BTreeMap;

use skiff_proto::cluster::{Capacity, NodeStatus, SiteKind};
use skiff_proto::{Constraint, Protocol, Spread, WorkloadSpec};

use super::explain::Explanation;

/// A price in millionths of a currency unit per hour (exact, no floats).
pub type MicrosPerHour = u64;

/// Container addresses of a node given a /24 from the fleet's pool (the
/// bridge takes one of its 254 hosts): the most bridge-networked
/// allocations a launched VM can hold.
pub const NODE_ADDRESSES: u32 = 253;

/// A shape a cloud site can launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceType {
    pub name: String,
    /// What workloads can use on such a VM (after the system reservation).
    pub allocatable: Capacity,
    pub price: MicrosPerHour,
    pub arch: String,
    /// Set aside after failed launches: VMs of it already launching still
    /// count, no new one is planned.
    pub held: bool,
}

/// A site and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteInfo {
    pub name: String,
    pub kind: SiteKind,
    /// Lower is cheaper; used after the workload's own `prefer` order.
    /// Static (on-prem) sites usually rank 0.
    pub cost_rank: u32,
    /// Most nodes the site may have, joined and launching together.
    pub max_nodes: Option<u32>,
    /// Most the site may cost per hour, over its cloud nodes.
    pub budget: Option<MicrosPerHour>,
    /// What it can launch (empty for static sites).
    pub instance_types: Vec<InstanceType>,
    /// Labels every node launched here gets.
    pub launch_labels: BTreeMap<String, String>,
}

/// A node that has joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub site: String,
    pub status: NodeStatus,
    pub allocatable: Capacity,
    /// Container addresses it has: at most this many allocations on the
    /// bridge network run there at once.
    pub addresses: u32,
    pub labels: BTreeMap<String, String>,
    pub arch: String,
    pub os: String,
    /// Price of the node per hour (0 for on-prem), counted against the budget.
    pub price: MicrosPerHour,
    /// Host volumes its agent publishes, by name.
    pub host_volumes: Vec<String>,
}

/// A VM launched but not joined yet: capacity on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchingVm {
    pub id: String,
    pub site: String,
    pub instance_type: String,
    /// Groups (an entry per replica) of the requests it was launched for:
    /// they wait for it, outside the pass, and its room is reserved.
    pub reserved: Vec<usize>,
}

/// An allocation already running (or assigned) on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingAllocation {
    pub id: String,
    pub node: String,
    pub workload: String,
    pub demand: Capacity,
    /// Holds one of its node's container addresses (bridge network).
    pub address: bool,
    pub priority: u32,
    pub host_ports: Vec<(u16, Protocol)>,
}

/// Everything the scheduler looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub sites: Vec<SiteInfo>,
    pub nodes: Vec<NodeInfo>,
    pub allocations: Vec<ExistingAllocation>,
    pub launching: Vec<LaunchingVm>,
    /// Cloud spend limits of namespaces (a group names its own by index).
    pub budgets: Vec<SpendLimit>,
}

/// A namespace's cloud spend: the most its pending work may launch VMs
/// for, and what it spends now (millionths per hour).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpendLimit {
    pub namespace: String,
    pub limit: MicrosPerHour,
    pub spend: MicrosPerHour,
}

/// Placement rules shared by the replicas of one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub workload: String,
    pub demand: Capacity,
    /// Each replica takes a container address of its node (bridge network).
    pub address: bool,
    pub priority: u32,
    pub host_ports: Vec<(u16, Protocol)>,
    /// Allowed sites; empty allows all.
    pub sites: Vec<String>,
    /// Sites to fill first, in order.
    pub prefer: Vec<String>,
    pub spread: Option<Spread>,
    pub max_skew: u32,
    pub constraints: Vec<Constraint>,
    pub distinct_nodes: bool,
    /// Host volumes (by name) a node must publish to take it.
    pub host_volumes: Vec<String>,
    /// Its namespace's spend limit (an index into `Snapshot::budgets`):
    /// a new VM for it must fit there too.
    pub budget: Option<usize>,
}

/// The disk a replica's local volumes may fill: the sum of their sizes
/// (one without a size counts nothing).
/// What holding `used` of a node with `of` costs of its `price`: the
/// price times the larger of the CPU and memory shares (at most all of
/// it). The placement engine's spend limits and the reported spend of
/// namespaces both count this way.
pub fn price_share(price: MicrosPerHour, used: &Capacity, of: &Capacity) -> MicrosPerHour {
    let share = |u: u64, o: u64| if o == 0 { 1.0 } else { u as f64 / o as f64 };
    let frac = share(used.cpu.millis(), of.cpu.millis())
        .max(share(used.memory.bytes(), of.memory.bytes()))
        .min(1.0);
    (price as f64 * frac).round() as u64
}

pub fn local_volume_bytes(spec: &WorkloadSpec) -> u64 {
    spec.volumes
        .iter()
        .filter_map(|v| v.local?.size)
        .map(|s| s.bytes())
        .sum()
}

impl Group {
    /// The placement rules of a workload spec.
    pub fn from_spec(spec: &WorkloadSpec) -> Self {
        let r = &spec.resources;
        let host_ports: Vec<_> = spec
            .ports
            .iter()
            .filter_map(|p| p.host.map(|h| (h as u16, p.protocol)))
            .collect();
        Self {
            workload: spec.key(),
            demand: Capacity::new(
                r.cpu.millis(),
                r.memory.bytes(),
                r.disk.map_or(0, |d| d.bytes()) + local_volume_bytes(spec),
            ),
            address: spec.network == skiff_proto::NetworkMode::Bridge,
            priority: spec.priority,
            distinct_nodes: spec.placement.distinct_nodes || !host_ports.is_empty(),
            host_ports,
            sites: spec.placement.sites.clone(),
            prefer: spec.placement.prefer.clone(),
            spread: spec.placement.spread,
            max_skew: spec.placement.max_skew(),
            constraints: spec.placement.constraints.clone(),
            host_volumes: spec.volumes.iter().filter_map(|v| v.host.clone()).collect(),
            budget: None,
        }
    }
}

/// One replica to place: an index into the groups passed alongside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: String,
    pub group: usize,
    /// The only node it may go to (a system workload's copy for that
    /// node): placed there when it fits, otherwise left unplaced, never
    /// on a VM and never by evicting anything.
    pub node: Option<String>,
    /// Placed on a joined node or not at all: no VM is launched for it and
    /// nothing is evicted (a consolidation's move, which must save what it
    /// set out to).
    pub existing_only: bool,
}

/// How to score nodes that fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Policy {
    /// Fullest node that fits first: fewer nodes, idle ones can go.
    #[default]
    BinPack,
    /// Emptiest node first: spreads load.
    Spread,
}

/// Knobs of one scheduling pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub policy: Policy,
    /// Breaks ties between equally good nodes; same seed, same plan.
    pub seed: u64,
    /// Let higher-priority requests evict lower-priority allocations.
    pub preemption: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            policy: Policy::BinPack,
            seed: 0,
            preemption: true,
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A joined node (its id).
    Node(String),
    /// A VM launching already (its id).
    Launching(String),
    /// A VM this plan asks to launch: index into [`Plan::launches`].
    NewVm(usize),
}

/// A placed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub request: usize,
    pub target: Target,
}

/// An allocation to stop so a higher-priority request fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    pub allocation: String,
    pub node: String,
    pub priority: u32,
    /// The request it makes room for.
    pub for_request: usize,
}

/// A VM to launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub site: String,
    pub instance_type: String,
}

/// A request left unplaced, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    pub request: usize,
    pub explanation: Explanation,
}

/// The result of one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub placements: Vec<Placement>,
    pub evictions: Vec<Eviction>,
    /// VMs to launch, cheapest first; requests waiting on them point here.
    pub launches: Vec<Launch>,
    pub unplaced: Vec<Unplaced>,
}
