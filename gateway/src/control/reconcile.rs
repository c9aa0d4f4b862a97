//! The reconciler's rules: what one pass changes, a pure function of the
//! state and the time.
//!
//! ```text
//! reconcile(&State, now, &[SiteInfo]) -> Changes
//!   = finish(&State, prepare(&State, now, sites), placement plan)
//! ```
//!
//! A pass ends allocations whose node is down or draining or whose
//! workload is gone, forgets long-expired join tokens and the records of
//! deleted workloads, keeps each workload at its replica count (rolling
//! an update one replica at a time), places what is pending with the
//! placement engine, and gives every node whose set of allocations changed
//! a new generation. [`Control::reconcile`](super::Control::reconcile)
//! runs `prepare` and `finish` under the state lock and the placement
//! engine between them, outside it; tests call [`reconcile`] directly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use skiff_proto::cluster::{AllocationState, NodeStatus};

use super::{AllocationRecord, Explanation, JobStatus, PlannedLaunch, State};
use crate::scheduler;

pub mod consolidate;
mod jobs;
mod system;
mod volumes;

/// Terminal (stopped, lost) allocations kept per workload: they show what
/// happened; the oldest beyond go.
const KEPT_TERMINAL: usize = 100;
/// Join tokens are forgotten this long after they expire (every VM launch
/// makes one).
const TOKEN_GRACE_MS: i64 = 3_600_000;

/// An event a pass emits: kind, id, message.
pub type PassEvent = (&'static str, String, String);

/// What one pass changes.
#[derive(Debug, Default)]
pub struct Changes {
    /// Allocations made or changed, whole.
    pub allocations: BTreeMap<String, AllocationRecord>,
    /// Allocations forgotten.
    pub forgotten: BTreeSet<String>,
    /// Batch jobs whose progress changed.
    pub jobs: BTreeMap<String, JobStatus>,
    /// Local volumes made (or moved, with `recreate`) by placements.
    pub volumes: BTreeMap<String, super::volumes::VolumeRecord>,
    /// Join tokens (by key) an hour past their expiry.
    pub expired_join_tokens: Vec<String>,
    /// Nodes whose desired state changes: each gets a new generation.
    pub nodes: BTreeSet<String>,
    /// Every node's desired set after the pass.
    pub desired: HashMap<String, BTreeSet<String>>,
    /// What the autoscaler is to launch, when something was pending
    /// (`None`: nothing is, no plan).
    pub planned: Option<Vec<PlannedLaunch>>,
    pub events: Vec<PassEvent>,
}

/// The placement engine refused its input (a state that names an unknown
/// site or node twice, say).
#[derive(Debug, thiserror::Error)]
#[error("placement: {0}")]
pub struct ReconcileError(#[from] pub scheduler::PlanError);

/// The allocations as a pass has changed them so far, over the state.
#[derive(Debug, Default)]
struct Draft {
    changed: BTreeMap<String, AllocationRecord>,
    forgotten: BTreeSet<String>,
}

impl Draft {
    fn get<'a>(&'a self, s: &'a State, id: &str) -> Option<&'a AllocationRecord> {
        if self.forgotten.contains(id) {
            return None;
        }
        self.changed.get(id).or_else(|| s.allocations.get(id))
    }

    /// The record to change (copied into the draft on first change).
    fn edit(&mut self, s: &State, id: &str) -> Option<&mut AllocationRecord> {
        if self.forgotten.contains(id) {
            return None;
        }
        if !self.changed.contains_key(id) {
            let a = s.allocations.get(id)?.clone();
            self.changed.insert(id.to_string(), a);
        }
        self.changed.get_mut(id)
    }

    fn insert(&mut self, a: AllocationRecord) {
        self.forgotten.remove(&a.id);
        self.changed.insert(a.id.clone(), a);
    }

    fn forget(&mut self, s: &State, id: &str) {
        self.changed.remove(id);
        if s.allocations.contains_key(id) {
            self.forgotten.insert(id.to_string());
        }
    }

    /// Every allocation, as changed.
    fn all<'a>(&'a self, s: &'a State) -> impl Iterator<Item = &'a AllocationRecord> + 'a {
        s.allocations
            .iter()
            .filter(|(id, _)| !self.forgotten.contains(*id))
            .map(|(id, a)| self.changed.get(id).unwrap_or(a))
            .chain(
                self.changed
                    .iter()
                    .filter(|(id, _)| !s.allocations.contains_key(*id))
                    .map(|(_, a)| a),
            )
    }
}

/// The placement engine's input for what is pending.
#[derive(Debug)]
struct Input {
    snapshot: scheduler::Snapshot,
    groups: Vec<scheduler::Group>,
    requests: Vec<scheduler::Request>,
    /// Pending allocations a launching VM was launched for: allocation →
    /// VM. They wait for it and are not planned again.
    reserved: BTreeMap<String, String>,
}

/// A pass up to placement: what it decided, and the placement engine's
/// input (`None`: nothing is pending).
#[derive(Debug)]
pub struct Pass {
    now: i64,
    draft: Draft,
    touched: BTreeSet<String>,
    events: Vec<PassEvent>,
    expired: Vec<String>,
    jobs: BTreeMap<String, JobStatus>,
    input: Option<Input>,
}

impl Pass {
    /// Runs the placement engine (pure; the costly part of a pass, run
    /// outside the state lock).
    pub fn schedule(&self) -> Result<Option<scheduler::Plan>, ReconcileError> {
        let Some(input) = &self.input else {
            return Ok(None);
        };
        let plan = scheduler::place(
            &input.snapshot,
            &input.groups,
            &input.requests,
            scheduler::Options {
                seed: self.now as u64,
                ..scheduler::Options::default()
            },
        )?;
        Ok(Some(plan))
    }
}

/// One whole pass.
pub fn reconcile(
    s: &State,
    now: i64,
    sites: &[scheduler::SiteInfo],
) -> Result<Changes, ReconcileError> {
    let pass = prepare(s, now, sites);
    let plan = pass.schedule()?;
    Ok(finish(s, pass, plan))
}

/// A pass up to placement: allocations ended, records forgotten, replica
/// counts kept, and the placement engine's input.
pub fn prepare(s: &State, now: i64, sites: &[scheduler::SiteInfo]) -> Pass {
    let mut draft = Draft::default();
    let mut touched = BTreeSet::new();
    let mut events = Vec::new();
    end_allocations(s, now, &mut draft, &mut touched, &mut events);
    let expired = s
        .join_tokens
        .iter()
        .filter(|(_, t)| t.expires_ms < now - TOKEN_GRACE_MS)
        .map(|(k, _)| k.clone())
        .collect();
    // Deleted workloads' allocations are forgotten once stopped.
    let orphans: Vec<String> = s
        .allocations
        .values()
        .filter(|a| !s.workloads.contains_key(&a.workload))
        .map(|a| a.id.clone())
        .collect();
    for id in orphans {
        draft.forget(s, &id);
    }
    let jobs = jobs::count_runs(s, now, &mut draft, &mut events);
    keep_replicas(s, now, sites, &jobs, &mut draft, &mut touched);
    volumes::repin(s, now, &mut draft);
    let input = placement_input(s, &draft, sites);
    Pass {
        now,
        draft,
        touched,
        events,
        expired,
        jobs,
        input,
    }
}

/// Allocations on down or draining nodes, or of deleted workloads, are
/// over.
fn end_allocations(
    s: &State,
    now: i64,
    draft: &mut Draft,
    touched: &mut BTreeSet<String>,
    events: &mut Vec<PassEvent>,
) {
    for a in s.allocations.values().filter(|a| a.is_live()) {
        let node = a.node.as_ref().map(|n| s.nodes.get(n));
        let (state, why) = if !s.workloads.contains_key(&a.workload) {
            (AllocationState::Stopped, "workload deleted")
        } else {
            let system = s.workloads[&a.workload].spec.kind == skiff_proto::WorkloadKind::System;
            match node {
                None => continue,
                Some(Some(n))
                    if n.status != NodeStatus::Down
                        && (!n.draining || (system && !n.drain_system)) =>
                {
                    continue;
                }
                Some(Some(n)) if n.status != NodeStatus::Down => {
                    (AllocationState::Stopped, "node draining")
                }
                Some(_) => (AllocationState::Lost, "node down"),
            }
        };
        let a = draft.edit(s, &a.id).expect("in the state");
        a.state = state;
        a.message = why.into();
        a.updated_ms = now;
        if let Some(n) = &a.node {
            touched.insert(n.clone());
        }
        events.push(("allocation", a.id.clone(), format!("{state}: {why}")));
    }
}

/// A live replica, as the replica count looks at it.
struct Replica {
    id: String,
    placed: bool,
    node: Option<String>,
    pinned_to: Option<String>,
    instance: Option<u32>,
    created_ms: i64,
    version: u64,
    state: AllocationState,
}

/// Which of a workload's live replicas go first when there are too many
/// ([`keep_replicas`]): pending ones, then by cost, the replica on the
/// least preferred site (its place in `placement.prefer`), then on the
/// most expensive one (`cost_rank`: the cloud before on-prem), then one
/// whose going empties a VM the gateway launched (so it can scale in),
/// then the newest. The smallest key goes first.
fn stop_order(
    s: &State,
    sites: &[scheduler::SiteInfo],
    w: &super::WorkloadRecord,
    on_node: &HashMap<&str, usize>,
    a: &Replica,
) -> (bool, Reverse<usize>, Reverse<u32>, bool, Reverse<i64>) {
    let node = a.node.as_deref().and_then(|n| s.nodes.get(n));
    let site = node.map(|n| n.site.as_str());
    let prefer = &w.spec.placement.prefer;
    let preference = site
        .and_then(|site| prefer.iter().position(|p| p == site))
        .unwrap_or(prefer.len());
    let cost = site
        .and_then(|site| sites.iter().find(|i| i.name == site))
        .map_or(0, |i| i.cost_rank);
    let empties_vm = node
        .is_some_and(|n| n.instance_id.is_some() && on_node.get(n.id.as_str()).copied() == Some(1));
    (
        a.placed,
        Reverse(preference),
        Reverse(cost),
        !empties_vm,
        Reverse(a.created_ms),
    )
}

/// Replica counts and rolling updates: too many replicas stop (pending
/// ones first, then the costliest, see [`stop_order`]), too few get new
/// pending ones; an
/// outdated replica is replaced one at a time, when every current one
/// runs. A batch job has as many runs as it wants now (`jobs`: progress
/// this pass changed), and no rolling update: a run ends by itself. A
/// system workload has a copy on every eligible node (`system`).
fn keep_replicas(
    s: &State,
    now: i64,
    sites: &[scheduler::SiteInfo],
    jobs: &BTreeMap<String, JobStatus>,
    draft: &mut Draft,
    touched: &mut BTreeSet<String>,
) {
    let mut live: HashMap<&str, Vec<Replica>> = HashMap::new();
    // Live allocations per node, of every workload.
    let mut on_node: HashMap<&str, usize> = HashMap::new();
    for a in draft.all(s).filter(|a| a.is_live()) {
        if let Some(n) = a.node.as_deref() {
            *on_node.entry(n).or_default() += 1;
        }
        live.entry(a.workload.as_str()).or_default().push(Replica {
            id: a.id.clone(),
            placed: a.node.is_some(),
            node: a.node.clone(),
            pinned_to: a.pinned_to.clone(),
            instance: a.instance,
            created_ms: a.created_ms,
            version: a.workload_version,
            state: a.state,
        });
    }
    let mut stop: Vec<(String, &'static str)> = Vec::new();
    let mut new: Vec<AllocationRecord> = Vec::new();
    let pending =
        |name: &str, w: &super::WorkloadRecord, pinned_to: Option<String>| AllocationRecord {
            id: format!("{name}-{}", crate::pki::random_hex(4)),
            workload: name.to_string(),
            workload_version: w.version,
            node: None,
            site: None,
            state: AllocationState::Pending,
            exit_code: None,
            message: String::new(),
            address: String::new(),
            restarts: 0,
            created_ms: now,
            updated_ms: now,
            explanation: None,
            done: false,
            pinned_to,
            instance: None,
            namespace: None,
            moved: None,
        };
    for (name, w) in &s.workloads {
        let mut live = live.remove(name.as_str()).unwrap_or_default();
        live.sort_by_key(|a| (a.placed, Reverse(a.created_ms)));
        if w.spec.kind == skiff_proto::WorkloadKind::System {
            let (stops, nodes) = system::copies(s, w, &live);
            stop.extend(stops);
            new.extend(nodes.into_iter().map(|n| pending(name, w, Some(n))));
            continue;
        }
        // Some are to stop: the costliest first (only then is it worth
        // looking at their nodes and sites).
        let surplus = |want: usize, live: &mut Vec<Replica>| {
            if live.len() > want {
                live.sort_by_cached_key(|a| stop_order(s, sites, w, &on_node, a));
            }
        };
        if w.spec.batch_rules().is_none()
            && let Some(moving) = moving_off(s, &mut live)
        {
            let (stops, adds) = move_replicas(s, sites, w, &on_node, moving, &mut live);
            stop.extend(stops);
            new.extend(adds.into_iter().map(|moved| AllocationRecord {
                moved,
                ..pending(name, w, None)
            }));
            continue;
        }
        let (want, mut add) = match w.spec.batch_rules() {
            Some(rules) => {
                let job = jobs
                    .get(name)
                    .or(w.job.as_ref())
                    .cloned()
                    .unwrap_or_default();
                let (want, may_add) = jobs::runs_wanted(&rules, &job, now);
                surplus(want, &mut live);
                let extra = live.len().saturating_sub(want);
                let why = jobs::why_stopped(&job);
                stop.extend(live[..extra].iter().map(|a| (a.id.clone(), why)));
                (
                    want,
                    if may_add {
                        want.saturating_sub(live.len())
                    } else {
                        0
                    },
                )
            }
            None => {
                let want = w.spec.replicas as usize;
                surplus(want, &mut live);
                (want, want.saturating_sub(live.len()))
            }
        };
        let stopped_before = stop.len();
        if w.spec.batch_rules().is_some() {
            // No rolling update: a run ends by itself.
        } else if live.len() > want {
            stop.extend(
                live[..live.len() - want]
                    .iter()
                    .map(|a| (a.id.clone(), "replaced or scaled down")),
            );
        } else {
            let outdated = live.iter().find(|a| a.version < w.version);
            let settling = live
                .iter()
                .any(|a| a.version == w.version && a.state != AllocationState::Running);
            if let (Some(old), false) = (outdated, settling) {
                stop.push((old.id.clone(), "replaced or scaled down"));
                add += 1;
            }
        }
        // A service with local volumes: each new replica takes the lowest
        // free slot (a replaced one's, say), pinned to its volumes' node.
        let mut taken: Option<BTreeSet<u32>> = volumes::has_local(w).then(|| {
            let stopping: BTreeSet<&str> = stop[stopped_before..]
                .iter()
                .map(|(id, _)| id.as_str())
                .collect();
            live.iter()
                .filter(|a| !stopping.contains(a.id.as_str()))
                .filter_map(|a| a.instance)
                .collect()
        });
        for _ in 0..add {
            let mut a = pending(name, w, None);
            if let Some(taken) = taken.as_mut() {
                let k = volumes::free_slot(taken);
                taken.insert(k);
                a.instance = Some(k);
                a.pinned_to = volumes::pin(s, w, k);
            }
            new.push(a);
        }
    }
    for (id, why) in stop {
        let a = draft.edit(s, &id).expect("live");
        a.state = AllocationState::Stopped;
        a.message = why.into();
        a.updated_ms = now;
        if let Some(n) = &a.node {
            touched.insert(n.clone());
        }
    }
    for a in new {
        draft.insert(a);
    }
}

/// The node being emptied that `a` is on, if it is (and it can move: a
/// replica with local volumes stays with them).
fn vacating_under<'a>(s: &'a State, a: &Replica) -> Option<&'a super::NodeRecord> {
    let n = s.nodes.get(a.node.as_deref()?)?;
    (n.vacating.is_some() && a.pinned_to.is_none() && a.instance.is_none()).then_some(n)
}

/// Takes a service's replicas on nodes being emptied out of `live`
/// (`None`: it has none).
fn moving_off(s: &State, live: &mut Vec<Replica>) -> Option<Vec<Replica>> {
    if !live.iter().any(|a| vacating_under(s, a).is_some()) {
        return None;
    }
    let (moving, rest) = std::mem::take(live)
        .into_iter()
        .partition(|a| vacating_under(s, a).is_some());
    *live = rest;
    Some(moving)
}

/// A service with replicas on nodes being emptied (`moving`; `rest` are
/// the others): each is started elsewhere first, at most the node's
/// `max_moving` at once, and stops once its replacement runs, so as many
/// run as ran before. A scale-down meanwhile stops the surplus of the
/// rest as usual. What to stop, and the replacements to add (each with
/// where it moves from; `None`: one the workload lacked anyway).
fn move_replicas(
    s: &State,
    sites: &[scheduler::SiteInfo],
    w: &super::WorkloadRecord,
    on_node: &HashMap<&str, usize>,
    moving: Vec<Replica>,
    rest: &mut Vec<Replica>,
) -> (Vec<(String, &'static str)>, Vec<Option<super::Moved>>) {
    let want = w.spec.replicas as usize;
    let mut stop = Vec::new();
    if rest.len() > want {
        rest.sort_by_cached_key(|a| stop_order(s, sites, w, on_node, a));
        let extra = rest.len() - want;
        stop.extend(
            rest.drain(..extra)
                .map(|a| (a.id, "replaced or scaled down")),
        );
    }
    let ready = rest
        .iter()
        .filter(|a| a.state == AllocationState::Running && a.version == w.version)
        .count();
    // Each running replacement lets one moving replica go.
    let done = moving
        .len()
        .min((ready + moving.len()).saturating_sub(want));
    stop.extend(
        moving[..done]
            .iter()
            .map(|a| (a.id.clone(), "moved: its replacement runs")),
    );
    let left = &moving[done..];
    let lacking = want.saturating_sub(rest.len() + left.len());
    let starting = rest.len() - ready;
    let budget = left
        .iter()
        .filter_map(|a| vacating_under(s, a)?.vacating.as_ref())
        .map(|v| v.max_moving as usize)
        .min()
        .unwrap_or(0);
    let moves = want
        .saturating_sub(rest.len() + lacking)
        .min(left.len())
        .min(budget.saturating_sub(starting));
    let mut adds: Vec<Option<super::Moved>> = vec![None; lacking];
    adds.extend(left.iter().take(moves).filter_map(|a| {
        let n = vacating_under(s, a)?;
        Some(Some(super::Moved {
            from_node: n.id.clone(),
            from_site: n.site.clone(),
            cause: n.vacating.as_ref()?.cause,
        }))
    }));
    (stop, adds)
}

/// The placement engine's view of the fleet: its nodes and what runs on
/// them, the workloads' rules (by group) and namespaces' spend limits.
struct FleetView<'a> {
    snapshot: scheduler::Snapshot,
    groups: Vec<scheduler::Group>,
    group_of: HashMap<&'a str, usize>,
}

/// The placement engine's view of the fleet and of what is pending.
fn placement_input(s: &State, draft: &Draft, sites: &[scheduler::SiteInfo]) -> Option<Input> {
    let pending: Vec<&AllocationRecord> = draft
        .all(s)
        .filter(|a| a.state == AllocationState::Pending && a.node.is_none())
        .collect();
    if pending.is_empty() {
        return None;
    }
    let FleetView {
        mut snapshot,
        groups,
        group_of,
    } = fleet_view(s, draft, sites);
    // The room of a launching VM is reserved for the allocations it was
    // launched for (by group).
    let mut reserved_groups: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut reserved = BTreeMap::new();
    for v in s.vms.values() {
        for id in &v.allocations {
            if let Some(a) = draft.get(s, id)
                && a.state == AllocationState::Pending
                && a.node.is_none()
                && let Some(&g) = group_of.get(a.workload.as_str())
            {
                reserved_groups.entry(v.id.as_str()).or_default().push(g);
                reserved.insert(id.clone(), v.id.clone());
            }
        }
    }
    let requests = pending
        .iter()
        .filter(|a| !reserved.contains_key(&a.id))
        .filter_map(|a| {
            Some(scheduler::Request {
                id: a.id.clone(),
                group: *group_of.get(a.workload.as_str())?,
                node: a.pinned_to.clone(),
                // A consolidation's move goes where the fleet has room,
                // or not at all (then it is called off).
                existing_only: a
                    .moved
                    .as_ref()
                    .is_some_and(|m| m.cause == super::MoveCause::Consolidation),
            })
        })
        .collect();
    snapshot.launching = s
        .vms
        .values()
        .map(|v| scheduler::LaunchingVm {
            id: v.id.clone(),
            site: v.site.clone(),
            instance_type: v.instance_type.clone(),
            reserved: reserved_groups.remove(v.id.as_str()).unwrap_or_default(),
        })
        .collect();
    Some(Input {
        snapshot,
        groups,
        requests,
        reserved,
    })
}

/// The fleet as the placement engine sees it (no VM launching: callers
/// add those).
fn fleet_view<'a>(s: &'a State, draft: &Draft, sites: &[scheduler::SiteInfo]) -> FleetView<'a> {
    // A launched node costs its instance type's price (the site budget
    // and namespaces' spend limits count it).
    let prices = super::namespaces::Prices::of(sites);
    let nodes = s
        .nodes
        .values()
        .map(|n| scheduler::NodeInfo {
            id: n.id.clone(),
            site: n.site.clone(),
            status: n.shown_status(),
            allocatable: n.allocatable,
            addresses: n.addresses(),
            labels: n.labels.clone(),
            arch: n.arch.clone(),
            os: n.os.clone(),
            price: prices.of_node(s, n),
            host_volumes: n.host_volumes.clone(),
        })
        .collect();
    let mut groups = Vec::new();
    let mut group_of: HashMap<&'a str, usize> = HashMap::new();
    // Namespaces' rules: where they may run, and what they may spend.
    let budgets = super::namespaces::budgets(s, &prices);
    for (name, w) in &s.workloads {
        group_of.insert(name, groups.len());
        let mut g = scheduler::Group::from_spec(&w.spec);
        if let Some(ns) = s.namespaces.get(&w.spec.namespace) {
            super::namespaces::restrict(&mut g, ns);
            g.budget = budgets.iter().position(|b| b.namespace == ns.name);
        }
        groups.push(g);
    }
    let allocations = draft
        .all(s)
        .filter(|a| a.is_live())
        .filter_map(|a| {
            let node = a.node.clone()?;
            let g = &groups[*group_of.get(a.workload.as_str())?];
            Some(scheduler::ExistingAllocation {
                id: a.id.clone(),
                node,
                workload: a.workload.clone(),
                demand: g.demand,
                address: g.address,
                priority: g.priority,
                host_ports: g.host_ports.clone(),
            })
        })
        .collect();
    FleetView {
        snapshot: scheduler::Snapshot {
            sites: sites.to_vec(),
            nodes,
            allocations,
            launching: Vec::new(),
            budgets,
        },
        groups,
        group_of,
    }
}

/// The rest of a pass, given the placement engine's plan for it: the plan
/// applied, desired sets and generations, old records forgotten.
pub fn finish(s: &State, pass: Pass, plan: Option<scheduler::Plan>) -> Changes {
    let Pass {
        now,
        mut draft,
        mut touched,
        mut events,
        expired,
        jobs,
        input,
    } = pass;
    let planned = match (input, plan) {
        (Some(input), Some(plan)) => Some(apply_plan(
            s,
            now,
            &input,
            &plan,
            &mut draft,
            &mut touched,
            &mut events,
        )),
        _ => None,
    };
    let volumes = volumes::made_by(s, now, &draft);
    // Terminal allocations leave their node's desired set.
    let mut desired: HashMap<String, BTreeSet<String>> = HashMap::new();
    for a in draft.all(s) {
        if let (Some(n), true) = (&a.node, a.is_live()) {
            desired.entry(n.clone()).or_default().insert(a.id.clone());
        }
    }
    let empty = BTreeSet::new();
    for n in s.nodes.keys() {
        if desired.get(n).unwrap_or(&empty) != s.desired.get(n).unwrap_or(&empty) {
            touched.insert(n.clone());
        }
    }
    touched.retain(|n| s.nodes.contains_key(n));
    // Stopped and lost records are kept a while, not forever.
    let mut terminal: HashMap<&str, Vec<(i64, String)>> = HashMap::new();
    for a in draft.all(s).filter(|a| !a.is_live()) {
        terminal
            .entry(a.workload.as_str())
            .or_default()
            .push((a.updated_ms, a.id.clone()));
    }
    let mut old = Vec::new();
    for (_, mut v) in terminal {
        v.sort();
        let extra = v.len().saturating_sub(KEPT_TERMINAL);
        old.extend(v.into_iter().take(extra).map(|(_, id)| id));
    }
    for id in old {
        draft.forget(s, &id);
    }
    Changes {
        allocations: draft.changed,
        forgotten: draft.forgotten,
        jobs,
        volumes,
        expired_join_tokens: expired,
        nodes: touched,
        desired,
        planned,
        events,
    }
}

/// The plan's evictions and placements, why the rest waits, and the
/// launches the autoscaler is to make.
fn apply_plan(
    s: &State,
    now: i64,
    input: &Input,
    plan: &scheduler::Plan,
    draft: &mut Draft,
    touched: &mut BTreeSet<String>,
    events: &mut Vec<PassEvent>,
) -> Vec<PlannedLaunch> {
    let requests = &input.requests;
    for e in &plan.evictions {
        if let Some(a) = draft.edit(s, &e.allocation) {
            a.state = AllocationState::Stopped;
            a.message = format!("preempted by {}", requests[e.for_request].id);
            a.updated_ms = now;
            touched.insert(e.node.clone());
        }
    }
    for p in &plan.placements {
        let scheduler::Target::Node(node) = &p.target else {
            continue;
        };
        let id = &requests[p.request].id;
        let site = s.nodes.get(node).map(|n| n.site.clone());
        if let Some(a) = draft.edit(s, id) {
            a.node = Some(node.clone());
            a.site = site;
            a.state = AllocationState::Starting;
            a.message = String::new();
            a.explanation = None;
            a.updated_ms = now;
            touched.insert(node.clone());
            events.push(("allocation", id.clone(), format!("placed on {node}")));
        }
    }
    // Waiting for VMs: for each new VM the allocations it is for.
    let mut per_vm: Vec<Vec<String>> = vec![Vec::new(); plan.launches.len()];
    for p in &plan.placements {
        if let scheduler::Target::NewVm(i) = &p.target {
            per_vm[*i].push(requests[p.request].id.clone());
        }
    }
    let mut launches: BTreeMap<(String, String), Vec<Vec<String>>> = BTreeMap::new();
    for (l, ids) in plan.launches.iter().zip(per_vm) {
        launches
            .entry((l.site.clone(), l.instance_type.clone()))
            .or_default()
            .push(ids);
    }
    let waiting = plan.placements.iter().filter_map(|p| {
        let msg = match &p.target {
            scheduler::Target::NewVm(i) => {
                let l = &plan.launches[*i];
                format!("waiting for a new {} in {}", l.instance_type, l.site)
            }
            scheduler::Target::Launching(vm) => format!("waiting for VM {vm} to join"),
            scheduler::Target::Node(_) => return None,
        };
        Some((requests[p.request].id.clone(), msg))
    });
    let waiting_reserved = input
        .reserved
        .iter()
        .map(|(a, vm)| (a.clone(), format!("waiting for VM {vm} to join")));
    for (id, msg) in waiting.chain(waiting_reserved).collect::<Vec<_>>() {
        if draft.get(s, &id).is_some_and(|a| a.message != msg)
            && let Some(a) = draft.edit(s, &id)
        {
            a.explanation = Some(Explanation {
                waiting_for: msg.strip_prefix("waiting for ").map(str::to_string),
                ..Explanation::default()
            });
            a.message = msg;
            a.updated_ms = now;
        }
    }
    // Why nothing is launched for the rest: an event per workload and
    // reason when it changes.
    let mut unplaced: BTreeMap<(String, String), u32> = BTreeMap::new();
    for u in &plan.unplaced {
        let id = &requests[u.request].id;
        let Some(a) = draft.get(s, id) else { continue };
        let mut msg = u.explanation.to_string();
        let mut explanation = Explanation::from(&u.explanation);
        if let Some(on) = volumes::waiting_on(s, a) {
            msg = format!("waiting for {on} ({msg})");
            explanation.waiting_for = Some(on);
        }
        let explanation = Some(explanation);
        if a.message == msg && a.explanation == explanation {
            continue;
        }
        let a = draft.edit(s, id).expect("present");
        if a.message != msg {
            *unplaced
                .entry((a.workload.clone(), msg.clone()))
                .or_default() += 1;
            a.message = msg;
        }
        a.explanation = explanation;
        a.updated_ms = now;
    }
    for ((workload, why), n) in unplaced {
        events.push((
            "workload",
            workload,
            format!("{n} replica(s) cannot be placed or launched for: {why}"),
        ));
    }
    launches
        .into_iter()
        .map(|((site, instance_type), vms)| PlannedLaunch {
            site,
            instance_type,
            count: vms.len() as u32,
            vms,
        })
        .collect()
}

#[cfg(test)]
mod tests;
