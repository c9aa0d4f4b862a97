//! The scheduler's working copy of the fleet: free capacity per node, and an
//! index that finds the best-fitting node without scanning the fleet.
//!
//! Nodes are grouped into *classes* of identical placement attributes (site,
//! arch, os, and the labels any constraint of the pass looks at), so
//! constraints are checked once per class, not once per node. Each class
//! keeps its ready nodes ordered by free memory; best fit is a range query
//! from the demand upwards, worst fit the same range read backwards.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use skiff_proto::cluster::{Capacity, NodeStatus};
use skiff_proto::{Attribute, Constraint, Protocol};

use super::error::PlanError;
use super::model::{ExistingAllocation, InstanceType, NODE_ADDRESSES, NodeInfo, Snapshot};

/// Capacity as plain integers (millicores, bytes, bytes, container
/// addresses). Signed, so a node whose allocations exceed what it has (its
/// allocatable shrank) stays in deficit until enough is evicted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Res {
    pub cpu: i64,
    pub mem: i64,
    pub disk: i64,
    pub addrs: i64,
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Res {
    /// What a node or a VM shape has: its capacity and `addresses`
    /// container addresses.
    pub fn room(c: &Capacity, addresses: u32) -> Self {
        Self {
            cpu: signed(c.cpu.millis()),
            mem: signed(c.memory.bytes()),
            disk: signed(c.disk.bytes()),
            addrs: i64::from(addresses),
        }
    }
    /// What one replica takes: its capacity, and a container address when
    /// it is on its node's bridge network.
    pub fn demand(c: &Capacity, address: bool) -> Self {
        Self {
            addrs: i64::from(address),
            ..Self::room(c, 0)
        }
    }
    pub fn fits(&self, d: &Res) -> bool {
        d.cpu <= self.cpu && d.mem <= self.mem && d.disk <= self.disk && d.addrs <= self.addrs
    }
    pub fn sub(&mut self, d: &Res) {
        self.cpu -= d.cpu;
        self.mem -= d.mem;
        self.disk -= d.disk;
        self.addrs -= d.addrs;
    }
    pub fn add(&mut self, d: &Res) {
        self.cpu += d.cpu;
        self.mem += d.mem;
        self.disk += d.disk;
        self.addrs += d.addrs;
    }
}

impl ExistingAllocation {
    /// What it takes of its node.
    pub(crate) fn res(&self) -> Res {
        Res::demand(&self.demand, self.address)
    }
}

impl InstanceType {
    /// What a VM of this shape has once joined: its allocatable, and the
    /// container addresses of the /24 the gateway gives every node.
    pub(crate) fn room(&self) -> Res {
        Res::room(&self.allocatable, NODE_ADDRESSES)
    }
}

/// A host port and protocol as one number.
pub(crate) fn port_key(port: u16, proto: Protocol) -> u32 {
    (u32::from(port) << 1) | u32::from(proto == Protocol::Udp)
}

/// SplitMix64: a seeded, well-mixed tie-breaker (no global randomness).
pub(crate) fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The attributes constraints can look at, for one class of nodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Attrs {
    pub site: String,
    pub arch: String,
    pub os: String,
    pub labels: BTreeMap<String, String>,
    /// The host volumes it publishes (of those the pass's groups ask for).
    pub volumes: BTreeSet<String>,
}

impl Attrs {
    /// The first of `wanted` host volumes it does not publish.
    pub fn missing_volume<'w>(&self, wanted: &'w [String]) -> Option<&'w str> {
        wanted
            .iter()
            .find(|v| !self.volumes.contains(*v))
            .map(String::as_str)
    }

    /// Whether every constraint holds; `name` is the node's name if known.
    pub fn satisfies(&self, constraints: &[Constraint], name: Option<&str>) -> bool {
        constraints.iter().all(|c| {
            c.matches(|a| match a {
                Attribute::Label(k) => self.labels.get(k).map(String::as_str),
                Attribute::Site => Some(self.site.as_str()),
                Attribute::Arch => Some(self.arch.as_str()),
                Attribute::Os => Some(self.os.as_str()),
                Attribute::Name => name,
            })
        })
    }

    /// The first constraint that fails, if any.
    pub fn first_failing<'c>(
        &self,
        constraints: &'c [Constraint],
        name: Option<&str>,
    ) -> Option<&'c Constraint> {
        constraints
            .iter()
            .find(|c| !self.satisfies(std::slice::from_ref(c), name))
    }
}

#[derive(Debug)]
pub(crate) struct Class {
    pub site: usize,
    pub attrs: Attrs,
    /// Ready nodes by (free memory, tie-break rank, node).
    pub index: BTreeSet<(i64, u64, u32)>,
}

/// Working state of joined nodes during one pass.
#[derive(Debug)]
pub(crate) struct Fleet<'a> {
    pub nodes: &'a [NodeInfo],
    pub free: Vec<Res>,
    pub ports: Vec<Vec<u32>>,
    pub rank: Vec<u64>,
    pub site_of: Vec<usize>,
    pub class_of: Vec<u32>,
    pub classes: Vec<Class>,
    /// Existing allocations on each node (indices into the snapshot's).
    pub allocs_on: Vec<Vec<u32>>,
    /// The node of each existing allocation.
    pub alloc_node: Vec<u32>,
    pub evicted: Vec<bool>,
    /// Each node's index, by id.
    pub index_of: HashMap<&'a str, u32>,
}

impl<'a> Fleet<'a> {
    /// Builds the working state; `label_keys` are the labels constraints
    /// use, `volume_names` the host volumes groups ask for.
    pub fn new(
        snap: &'a Snapshot,
        site_index: &HashMap<&str, usize>,
        label_keys: &BTreeSet<&str>,
        volume_names: &BTreeSet<&str>,
        seed: u64,
    ) -> Result<Self, PlanError> {
        let n = snap.nodes.len();
        let mut node_index: HashMap<&str, u32> = HashMap::with_capacity(n);
        let mut fleet = Fleet {
            nodes: &snap.nodes,
            free: Vec::with_capacity(n),
            ports: vec![Vec::new(); n],
            rank: Vec::with_capacity(n),
            site_of: Vec::with_capacity(n),
            class_of: Vec::with_capacity(n),
            classes: Vec::new(),
            allocs_on: vec![Vec::new(); n],
            alloc_node: Vec::with_capacity(snap.allocations.len()),
            evicted: vec![false; snap.allocations.len()],
            index_of: HashMap::new(),
        };
        let mut class_ids: HashMap<Attrs, u32> = HashMap::new();
        for (i, node) in snap.nodes.iter().enumerate() {
            if node_index.insert(node.id.as_str(), i as u32).is_some() {
                return Err(PlanError::NodeTwice(node.id.clone()));
            }
            let site = *site_index
                .get(node.site.as_str())
                .ok_or_else(|| PlanError::NodeSite {
                    node: node.id.clone(),
                    site: node.site.clone(),
                })?;
            let attrs = Attrs {
                site: node.site.clone(),
                arch: node.arch.clone(),
                os: node.os.clone(),
                labels: node
                    .labels
                    .iter()
                    .filter(|(k, _)| label_keys.contains(k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                volumes: node
                    .host_volumes
                    .iter()
                    .filter(|v| volume_names.contains(v.as_str()))
                    .cloned()
                    .collect(),
            };
            let next = class_ids.len() as u32;
            let class = *class_ids.entry(attrs.clone()).or_insert_with(|| {
                fleet.classes.push(Class {
                    site,
                    attrs,
                    index: BTreeSet::new(),
                });
                next
            });
            fleet
                .free
                .push(Res::room(&node.allocatable, node.addresses));
            fleet.rank.push(mix(seed, i as u64));
            fleet.site_of.push(site);
            fleet.class_of.push(class);
        }
        for (a, alloc) in snap.allocations.iter().enumerate() {
            let &node =
                node_index
                    .get(alloc.node.as_str())
                    .ok_or_else(|| PlanError::AllocationNode {
                        allocation: alloc.id.clone(),
                        node: alloc.node.clone(),
                    })?;
            let node = node as usize;
            fleet.free[node].sub(&alloc.res());
            fleet.ports[node].extend(alloc.host_ports.iter().map(|(p, pr)| port_key(*p, *pr)));
            fleet.allocs_on[node].push(a as u32);
            fleet.alloc_node.push(node as u32);
        }
        fleet.index_of = node_index;
        for i in 0..n {
            if snap.nodes[i].status == NodeStatus::Ready {
                let c = fleet.class_of[i] as usize;
                fleet.classes[c]
                    .index
                    .insert((fleet.free[i].mem, fleet.rank[i], i as u32));
            }
        }
        Ok(fleet)
    }

    pub fn is_ready(&self, node: usize) -> bool {
        self.nodes[node].status == NodeStatus::Ready
    }

    /// Takes `demand` (and ports) from a ready node, keeping the index true.
    pub fn take(&mut self, node: usize, demand: &Res, ports: &[u32]) {
        self.reindex(node, |f| f.free[node].sub(demand));
        self.ports[node].extend_from_slice(ports);
    }

    /// Gives `demand` back to a node (an eviction).
    pub fn give(&mut self, node: usize, demand: &Res, ports: &[u32]) {
        self.reindex(node, |f| f.free[node].add(demand));
        for p in ports {
            if let Some(i) = self.ports[node].iter().position(|q| q == p) {
                self.ports[node].swap_remove(i);
            }
        }
    }

    fn reindex(&mut self, node: usize, change: impl FnOnce(&mut Self)) {
        let ready = self.is_ready(node);
        let class = self.class_of[node] as usize;
        if ready {
            self.classes[class]
                .index
                .remove(&(self.free[node].mem, self.rank[node], node as u32));
        }
        change(self);
        if ready {
            self.classes[class]
                .index
                .insert((self.free[node].mem, self.rank[node], node as u32));
        }
    }

    pub fn ports_free(&self, node: usize, wanted: &[u32]) -> bool {
        wanted.iter().all(|p| !self.ports[node].contains(p))
    }
}
