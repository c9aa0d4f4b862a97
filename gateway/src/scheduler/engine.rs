//! One scheduling pass: real nodes first (with preemption), then capacity
//! not yet launched.

use std::collections::{BTreeSet, HashMap};

use skiff_proto::Spread;

use super::error::PlanError;
use super::explain::{Explanation, NodeFilter};
use super::fleet::{Fleet, Res, port_key};
use super::launch::Cloud;
use super::model::{
    Eviction, Group, Options, Placement, Plan, Policy, Request, Snapshot, Target, Unplaced,
};

/// What a preemption costs, compared in order: the highest priority evicted,
/// how many are evicted, the memory they free, and the node's tie-break rank.
type PreemptCost = (u32, usize, i64, u64);

/// Per-group state during a pass.
#[derive(Debug)]
pub(crate) struct GroupState {
    pub demand: Res,
    pub ports: Vec<u32>,
    /// Allowed sites in the order to try them.
    pub site_order: Vec<usize>,
    /// Sites that count for spread: allowed, and with a ready node or a
    /// launchable shape that fits.
    pub domain: Vec<usize>,
    /// Replicas per site (existing + placed in this pass).
    pub site_count: Vec<u32>,
    /// Replicas per node (existing + placed), when distinct or node spread.
    pub node_count: HashMap<u32, u32>,
    /// Ready nodes that satisfy the constraints (for node spread).
    pub eligible_nodes: usize,
    /// Feasible classes per site (by site index), computed once.
    pub classes: Vec<Vec<u32>>,
    /// Sites whose real nodes have no room left for this group.
    pub site_full: Vec<bool>,
    pub name_constraint: bool,
    pub explanation: Option<Explanation>,
}

/// A scheduling pass in progress. [`super::place`] drives it; benchmarks
/// drive it request by request to time each decision.
#[derive(Debug)]
pub struct Scheduler<'a> {
    pub(crate) snap: &'a Snapshot,
    pub(crate) groups: &'a [Group],
    pub(crate) opts: Options,
    pub(crate) fleet: Fleet<'a>,
    pub(crate) gs: Vec<GroupState>,
    pub(crate) cloud: Cloud,
    group_of_workload: HashMap<&'a str, usize>,
    pub(crate) plan: Plan,
    leftovers: Vec<usize>,
}

impl<'a> Scheduler<'a> {
    /// Prepares a pass; fails on inconsistent input, naming the culprit.
    pub fn new(snap: &'a Snapshot, groups: &'a [Group], opts: Options) -> Result<Self, PlanError> {
        let mut site_index: HashMap<&str, usize> = HashMap::new();
        for (i, s) in snap.sites.iter().enumerate() {
            if site_index.insert(s.name.as_str(), i).is_some() {
                return Err(PlanError::SiteTwice(s.name.clone()));
            }
        }
        let label_keys: BTreeSet<&str> = groups
            .iter()
            .flat_map(|g| &g.constraints)
            .filter_map(|c| match &c.attribute {
                skiff_proto::Attribute::Label(k) => Some(k.as_str()),
                _ => None,
            })
            .collect();
        let volume_names: BTreeSet<&str> = groups
            .iter()
            .flat_map(|g| &g.host_volumes)
            .map(String::as_str)
            .collect();
        let fleet = Fleet::new(snap, &site_index, &label_keys, &volume_names, opts.seed)?;
        let mut cloud = Cloud::new(snap, &site_index)?;
        let mut group_of_workload = HashMap::new();
        let mut gs = Vec::with_capacity(groups.len());
        for (gi, g) in groups.iter().enumerate() {
            group_of_workload.insert(g.workload.as_str(), gi);
            gs.push(GroupState::new(g, snap, &site_index, &fleet, &cloud)?);
        }
        // Replicas waiting for a launching VM: its room is theirs, and they
        // count for spread.
        for (v, vm) in snap.launching.iter().enumerate() {
            for &gi in &vm.reserved {
                let st = gs.get_mut(gi).ok_or_else(|| PlanError::NoGroup {
                    what: "launching VM",
                    id: vm.id.clone(),
                    group: gi,
                })?;
                let site = cloud.reserve(v, gi, &st.demand, &st.ports);
                st.site_count[site] += 1;
            }
        }
        // Existing replicas count for spread and distinct nodes.
        for (a, alloc) in snap.allocations.iter().enumerate() {
            if let Some(&gi) = group_of_workload.get(alloc.workload.as_str()) {
                let node = fleet.alloc_node[a];
                gs[gi].site_count[fleet.site_of[node as usize]] += 1;
                *gs[gi].node_count.entry(node).or_default() += 1;
            }
        }
        Ok(Self {
            snap,
            groups,
            opts,
            fleet,
            gs,
            cloud,
            group_of_workload,
            plan: Plan::default(),
            leftovers: Vec::new(),
        })
    }

    /// The order a batch is placed in: priority first, then largest first
    /// (best fit decreasing packs tightest), then input order.
    pub fn order(&self, requests: &[Request]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by_key(|&i| {
            let g = &self.groups[requests[i].group];
            (
                std::cmp::Reverse(g.priority),
                std::cmp::Reverse(g.demand.memory.bytes()),
                std::cmp::Reverse(g.demand.cpu.millis()),
                requests[i].group,
                i,
            )
        });
        order
    }

    /// Places one request on a joined node (evicting lower-priority work if
    /// allowed); otherwise keeps it for the capacity-not-yet-launched phase.
    /// Returns whether it was placed.
    pub fn place_on_nodes(&mut self, requests: &[Request], r: usize) -> bool {
        let gi = requests[r].group;
        if let Some(pin) = &requests[r].node {
            return self.place_pinned(gi, r, pin);
        }
        if let Some(node) = self.find_node(gi) {
            self.commit_node(gi, r, node);
            return true;
        }
        if self.opts.preemption && !requests[r].existing_only && self.preempt(gi, r) {
            return true;
        }
        self.leftovers.push(r);
        false
    }

    /// Places a request that may go to one node only, if it fits there;
    /// otherwise it is unplaced, with that node's reason.
    fn place_pinned(&mut self, gi: usize, r: usize, pin: &str) -> bool {
        let filter = match self.fleet.index_of.get(pin).map(|&i| i as usize) {
            Some(node) => {
                let allowed = self.sites_for(gi);
                match self.node_filter(gi, node, &allowed) {
                    None => {
                        self.commit_node(gi, r, node);
                        return true;
                    }
                    Some(filter) => filter,
                }
            }
            None => NodeFilter::Status("not joined".into()),
        };
        let mut explanation = Explanation {
            nodes: 1,
            ..Default::default()
        };
        explanation.excluded.insert(filter, 1);
        self.plan.unplaced.push(Unplaced {
            request: r,
            explanation,
        });
        false
    }

    /// Plans launches for what did not fit and finishes the pass.
    pub fn finish(mut self, requests: &[Request]) -> Plan {
        let leftovers = std::mem::take(&mut self.leftovers);
        self.place_on_new_capacity(requests, &leftovers);
        self.plan
    }

    /// Sites to try for group `gi`, honouring spread skew.
    pub(crate) fn sites_for(&self, gi: usize) -> Vec<usize> {
        let st = &self.gs[gi];
        let g = &self.groups[gi];
        if g.spread != Some(Spread::Site) {
            return st.site_order.clone();
        }
        let min = st
            .domain
            .iter()
            .map(|&s| st.site_count[s])
            .min()
            .unwrap_or(0);
        let mut sites: Vec<usize> = st
            .site_order
            .iter()
            .copied()
            .filter(|&s| st.domain.contains(&s) && st.site_count[s] + 1 - min <= g.max_skew)
            .collect();
        // Fewest replicas first; the allowed order breaks ties.
        sites.sort_by_key(|&s| st.site_count[s]);
        sites
    }

    /// Whether node spread allows one more replica on `node`.
    fn node_spread_ok(&self, gi: usize, node: u32) -> bool {
        let g = &self.groups[gi];
        let st = &self.gs[gi];
        let here = st.node_count.get(&node).copied().unwrap_or(0);
        if g.distinct_nodes && here > 0 {
            return false;
        }
        if g.spread != Some(Spread::Node) {
            return true;
        }
        let min = if st.node_count.len() < st.eligible_nodes {
            0
        } else {
            st.node_count.values().copied().min().unwrap_or(0)
        };
        here + 1 - min <= g.max_skew
    }

    /// The best ready node for group `gi`, without changing anything.
    pub(crate) fn find_node(&mut self, gi: usize) -> Option<usize> {
        let sites = self.sites_for(gi);
        for s in sites {
            if self.gs[gi].site_full[s] {
                continue;
            }
            if let Some(n) = self.best_in_site(gi, s) {
                return Some(n);
            }
            self.gs[gi].site_full[s] = true;
        }
        None
    }

    /// What one replica of group `gi` on `node` adds to its namespace's
    /// cloud spend: the node's price times the larger of the shares of its
    /// CPU and memory the replica takes (0 on an unpriced node).
    fn spend_on(&self, gi: usize, node: usize) -> u64 {
        let n = &self.fleet.nodes[node];
        if n.price == 0 {
            return 0;
        }
        super::model::price_share(n.price, &self.groups[gi].demand, &n.allocatable)
    }

    /// Whether group `gi`'s namespace may spend what a replica on `node`
    /// costs.
    fn within_spend(&self, gi: usize, node: usize) -> bool {
        match self.groups[gi]
            .budget
            .and_then(|b| self.cloud.budgets.get(b))
        {
            None => true,
            Some(b) => {
                let c = self.spend_on(gi, node);
                c == 0 || b.spend + c <= b.limit
            }
        }
    }

    fn node_ok(&self, gi: usize, node: usize, demand: &Res) -> bool {
        let st = &self.gs[gi];
        self.fleet.free[node].fits(demand)
            && (self.groups[gi].budget.is_none() || self.within_spend(gi, node))
            && (st.ports.is_empty() || self.fleet.ports_free(node, &st.ports))
            && self.node_spread_ok(gi, node as u32)
            && (!st.name_constraint
                || self.fleet.classes[self.fleet.class_of[node] as usize]
                    .attrs
                    .satisfies(
                        &self.groups[gi].constraints,
                        Some(self.fleet.nodes[node].id.as_str()),
                    ))
    }

    fn best_in_site(&self, gi: usize, site: usize) -> Option<usize> {
        let st = &self.gs[gi];
        let demand = st.demand;
        let mut best: Option<(i64, u64, u32)> = None;
        for &c in &st.classes[site] {
            let index = &self.fleet.classes[c as usize].index;
            let range = index.range((demand.mem, 0, 0)..);
            let found = match self.opts.policy {
                Policy::BinPack => range
                    .filter(|&&(_, _, n)| self.node_ok(gi, n as usize, &demand))
                    .copied()
                    .next(),
                Policy::Spread => range
                    .rev()
                    .filter(|&&(_, _, n)| self.node_ok(gi, n as usize, &demand))
                    .copied()
                    .next(),
            };
            best = match (best, found, self.opts.policy) {
                (None, f, _) => f,
                (b, None, _) => b,
                (Some(b), Some(f), Policy::BinPack) => Some(b.min(f)),
                (Some(b), Some(f), Policy::Spread) => Some(b.max(f)),
            };
        }
        best.map(|(_, _, n)| n as usize)
    }

    pub(crate) fn commit_node(&mut self, gi: usize, r: usize, node: usize) {
        if let Some(b) = self.groups[gi].budget {
            let c = self.spend_on(gi, node);
            if let Some(b) = self.cloud.budgets.get_mut(b) {
                b.spend += c;
            }
        }
        let st = &mut self.gs[gi];
        self.fleet.take(node, &st.demand, &st.ports);
        st.site_count[self.fleet.site_of[node]] += 1;
        *st.node_count.entry(node as u32).or_default() += 1;
        self.plan.placements.push(Placement {
            request: r,
            target: Target::Node(self.fleet.nodes[node].id.clone()),
        });
    }

    /// Evicts the fewest, lowest-priority allocations (all below the
    /// request's priority) from one node so the request fits there.
    fn preempt(&mut self, gi: usize, r: usize) -> bool {
        let g = &self.groups[gi];
        if g.priority <= 1 {
            return false;
        }
        let demand = self.gs[gi].demand;
        let wanted_ports = self.gs[gi].ports.clone();
        let mut best: Option<(PreemptCost, usize, Vec<u32>)> = None;
        for s in self.sites_for(gi) {
            for &c in &self.gs[gi].classes[s] {
                for &(_, rank, node) in &self.fleet.classes[c as usize].index {
                    let node = node as usize;
                    if !self.node_spread_ok(gi, node as u32) {
                        continue;
                    }
                    if let Some((cost, victims)) =
                        self.victims_on(node, g.priority, &demand, &wanted_ports)
                    {
                        let key = (cost.0, cost.1, cost.2, rank);
                        if best.as_ref().is_none_or(|(b, _, _)| key < *b) {
                            best = Some((key, node, victims));
                        }
                    }
                }
            }
            if best.is_some() {
                break; // an earlier (preferred) site wins
            }
        }
        let Some((_, node, victims)) = best else {
            return false;
        };
        for a in victims {
            let alloc = &self.snap.allocations[a as usize];
            self.fleet.evicted[a as usize] = true;
            let ports: Vec<u32> = alloc
                .host_ports
                .iter()
                .map(|(p, pr)| port_key(*p, *pr))
                .collect();
            self.fleet.give(node, &alloc.res(), &ports);
            if let Some(&vg) = self.group_of_workload.get(alloc.workload.as_str()) {
                let vs = &mut self.gs[vg];
                vs.site_count[self.fleet.site_of[node]] -= 1;
                if let Some(n) = vs.node_count.get_mut(&(node as u32)) {
                    *n -= 1;
                    if *n == 0 {
                        vs.node_count.remove(&(node as u32));
                    }
                }
            }
            self.plan.evictions.push(Eviction {
                allocation: alloc.id.clone(),
                node: alloc.node.clone(),
                priority: alloc.priority,
                for_request: r,
            });
        }
        self.commit_node(gi, r, node);
        true
    }

    /// The cheapest set of victims on `node`, or None when evicting every
    /// lower-priority allocation would still not make room.
    fn victims_on(
        &self,
        node: usize,
        priority: u32,
        demand: &Res,
        ports: &[u32],
    ) -> Option<((u32, usize, i64), Vec<u32>)> {
        let allocs = &self.snap.allocations;
        let mut free = self.fleet.free[node];
        // Ports held by allocations we may not evict rule the node out.
        let port_holders: Vec<u32> = self.fleet.allocs_on[node]
            .iter()
            .copied()
            .filter(|&a| !self.fleet.evicted[a as usize])
            .filter(|&a| {
                allocs[a as usize]
                    .host_ports
                    .iter()
                    .any(|(p, pr)| ports.contains(&port_key(*p, *pr)))
            })
            .collect();
        if port_holders
            .iter()
            .any(|&a| allocs[a as usize].priority >= priority)
        {
            return None;
        }
        // A wanted port held by something placed in this pass cannot be freed.
        let freeable = |p: &u32| {
            port_holders.iter().any(|&a| {
                allocs[a as usize]
                    .host_ports
                    .iter()
                    .any(|(hp, pr)| port_key(*hp, *pr) == *p)
            })
        };
        if ports
            .iter()
            .any(|p| self.fleet.ports[node].contains(p) && !freeable(p))
        {
            return None;
        }
        let mut candidates: Vec<u32> = self.fleet.allocs_on[node]
            .iter()
            .copied()
            .filter(|&a| !self.fleet.evicted[a as usize] && allocs[a as usize].priority < priority)
            .filter(|a| !port_holders.contains(a))
            .collect();
        // Lowest priority first; within a priority the largest first, so
        // that as few as possible go.
        candidates.sort_by_key(|&a| {
            let x = &allocs[a as usize];
            (
                x.priority,
                std::cmp::Reverse(x.demand.memory.bytes()),
                std::cmp::Reverse(x.demand.cpu.millis()),
                a,
            )
        });
        let mut victims = port_holders;
        for &a in &victims {
            free.add(&allocs[a as usize].res());
        }
        for a in candidates {
            if free.fits(demand) {
                break;
            }
            free.add(&allocs[a as usize].res());
            victims.push(a);
        }
        if !free.fits(demand) || victims.is_empty() {
            return None;
        }
        // Drop victims that turned out unnecessary (latest, largest first).
        let mut i = victims.len();
        while i > 0 {
            i -= 1;
            let a = victims[i] as usize;
            let holds_port = allocs[a]
                .host_ports
                .iter()
                .any(|(p, pr)| ports.contains(&port_key(*p, *pr)));
            let mut without = free;
            without.sub(&allocs[a].res());
            if !holds_port && without.fits(demand) {
                free = without;
                victims.remove(i);
            }
        }
        let top = victims
            .iter()
            .map(|&a| allocs[a as usize].priority)
            .max()
            .unwrap_or(0);
        let freed = victims.iter().map(|&a| allocs[a as usize].res().mem).sum();
        Some(((top, victims.len(), freed), victims))
    }

    /// Phase two: requests no joined node could take go to VMs launching or
    /// to be launched; spread groups may also find real room again now.
    fn place_on_new_capacity(&mut self, requests: &[Request], leftovers: &[usize]) {
        for (pos, &r) in leftovers.iter().enumerate() {
            let gi = requests[r].group;
            if self.groups[gi].spread == Some(Spread::Site)
                && let Some(node) = self.find_node(gi)
            {
                self.commit_node(gi, r, node);
                continue;
            }
            let sites = self.sites_for(gi);
            if !requests[r].existing_only
                && let Some(target) = self.place_virtual(gi, &sites, requests, &leftovers[pos..])
            {
                let site = self.cloud.vm_site(&target);
                self.gs[gi].site_count[site] += 1;
                self.plan.placements.push(Placement { request: r, target });
                continue;
            }
            let explanation = match &self.gs[gi].explanation {
                Some(e) => e.clone(),
                None => {
                    let e = self.explain(gi);
                    self.gs[gi].explanation = Some(e.clone());
                    e
                }
            };
            self.plan.unplaced.push(Unplaced {
                request: r,
                explanation,
            });
        }
        self.plan.launches = self.cloud.launches();
    }

    /// Why group `gi` cannot go to node `i` (its first failing filter), or
    /// `None` if it can; `allowed_sites` as [`Scheduler::sites_for`] gives
    /// them.
    fn node_filter(&self, gi: usize, i: usize, allowed_sites: &[usize]) -> Option<NodeFilter> {
        let g = &self.groups[gi];
        let st = &self.gs[gi];
        let node = &self.fleet.nodes[i];
        let site = self.fleet.site_of[i];
        let attrs = &self.fleet.classes[self.fleet.class_of[i] as usize].attrs;
        let free = &self.fleet.free[i];
        Some(if !self.fleet.is_ready(i) {
            NodeFilter::Status(node.status.to_string())
        } else if !st.site_order.contains(&site) {
            NodeFilter::SiteNotAllowed
        } else if let Some(c) = attrs.first_failing(&g.constraints, Some(node.id.as_str())) {
            NodeFilter::Constraint(c.to_string())
        } else if let Some(v) = attrs.missing_volume(&g.host_volumes) {
            NodeFilter::NoHostVolume(v.to_string())
        } else if !allowed_sites.contains(&site) {
            NodeFilter::SpreadSkew
        } else if !self.node_spread_ok(gi, i as u32) {
            NodeFilter::DistinctNodes
        } else if let Some(p) = g
            .host_ports
            .iter()
            .find(|(p, pr)| self.fleet.ports[i].contains(&port_key(*p, *pr)))
        {
            NodeFilter::PortInUse(format!(
                "{}/{}",
                p.0,
                if p.1 == skiff_proto::Protocol::Udp {
                    "udp"
                } else {
                    "tcp"
                }
            ))
        } else if free.cpu < st.demand.cpu {
            NodeFilter::InsufficientCpu
        } else if free.mem < st.demand.mem {
            NodeFilter::InsufficientMemory
        } else if free.disk < st.demand.disk {
            NodeFilter::InsufficientDisk
        } else if free.addrs < st.demand.addrs {
            NodeFilter::NoFreeAddress
        } else if !self.within_spend(gi, i) {
            NodeFilter::SpendLimit
        } else {
            return None;
        })
    }

    /// Why group `gi` fits nowhere: every node's first failing filter, and
    /// every allowed site's launch verdict.
    fn explain(&self, gi: usize) -> Explanation {
        let g = &self.groups[gi];
        let st = &self.gs[gi];
        let allowed_sites = self.sites_for(gi);
        let mut e = Explanation {
            nodes: self.fleet.nodes.len(),
            ..Default::default()
        };
        for i in 0..self.fleet.nodes.len() {
            if let Some(filter) = self.node_filter(gi, i, &allowed_sites) {
                *e.excluded.entry(filter).or_default() += 1;
            }
        }
        for &s in &st.site_order {
            let why = self.cloud.why_not(s, g, &st.demand);
            e.sites.insert(self.snap.sites[s].name.clone(), why);
        }
        if self.opts.preemption {
            e.preemption = Some(if g.priority <= 1 {
                "priority 1 cannot preempt".into()
            } else {
                format!(
                    "no node frees enough by evicting allocations below priority {}",
                    g.priority
                )
            });
        }
        e
    }
}

impl GroupState {
    fn new(
        g: &Group,
        snap: &Snapshot,
        site_index: &HashMap<&str, usize>,
        fleet: &Fleet<'_>,
        cloud: &Cloud,
    ) -> Result<Self, PlanError> {
        let n_sites = snap.sites.len();
        let lookup = |name: &String, field: &'static str| {
            site_index
                .get(name.as_str())
                .copied()
                .ok_or_else(|| PlanError::WorkloadSite {
                    workload: g.workload.clone(),
                    field,
                    site: name.clone(),
                })
        };
        let allowed: Vec<usize> = if g.sites.is_empty() {
            (0..n_sites).collect()
        } else {
            g.sites
                .iter()
                .map(|s| lookup(s, "placement.sites"))
                .collect::<Result<_, _>>()?
        };
        let prefer: Vec<usize> = g
            .prefer
            .iter()
            .map(|s| lookup(s, "placement.prefer"))
            .collect::<Result<_, _>>()?;
        let mut site_order = allowed;
        site_order.sort_by_key(|&s| {
            let site = &snap.sites[s];
            (
                prefer.iter().position(|&p| p == s).unwrap_or(usize::MAX),
                site.cost_rank,
                site.name.as_str(),
            )
        });
        let name_constraint = g
            .constraints
            .iter()
            .any(|c| c.attribute == skiff_proto::Attribute::Name);
        let mut classes = vec![Vec::new(); n_sites];
        let mut eligible_nodes = 0;
        for (ci, class) in fleet.classes.iter().enumerate() {
            // Name constraints are checked per node; the rest per class.
            let ok = site_order.contains(&class.site)
                && class.attrs.satisfies(
                    &g.constraints
                        .iter()
                        .filter(|c| c.attribute != skiff_proto::Attribute::Name)
                        .cloned()
                        .collect::<Vec<_>>(),
                    None,
                )
                && class.attrs.missing_volume(&g.host_volumes).is_none();
            if ok {
                classes[class.site].push(ci as u32);
                eligible_nodes += class.index.len();
            }
        }
        let demand = Res::demand(&g.demand, g.address);
        let domain = site_order
            .iter()
            .copied()
            .filter(|&s| {
                classes[s]
                    .iter()
                    .any(|&c| !fleet.classes[c as usize].index.is_empty())
                    || cloud.could_launch(s, g, &demand)
            })
            .collect();
        Ok(Self {
            demand,
            ports: g
                .host_ports
                .iter()
                .map(|(p, pr)| port_key(*p, *pr))
                .collect(),
            site_order,
            domain,
            site_count: vec![0; n_sites],
            node_count: HashMap::new(),
            eligible_nodes,
            classes,
            site_full: vec![false; n_sites],
            name_constraint,
            explanation: None,
        })
    }
}
