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

mod jobs;
mod system;

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
    keep_replicas(s, now, &jobs, &mut draft, &mut touched);
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
                Some(Some(n)) if n.status != NodeStatus::Down && (!n.draining || system) => {
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
    created_ms: i64,
    version: u64,
    state: AllocationState,
}

/// Replica counts and rolling updates: too many replicas stop (pending
/// ones first, then the newest), too few get new pending ones; an
/// outdated replica is replaced one at a time, when every current one
/// runs. A batch job has as many runs as it wants now (`jobs`: progress
/// this pass changed), and no rolling update: a run ends by itself. A
/// system workload has a copy on every eligible node (`system`).
fn keep_replicas(
    s: &State,
    now: i64,
    jobs: &BTreeMap<String, JobStatus>,
    draft: &mut Draft,
    touched: &mut BTreeSet<String>,
) {
    let mut live: HashMap<&str, Vec<Replica>> = HashMap::new();
    for a in draft.all(s).filter(|a| a.is_live()) {
        live.entry(a.workload.as_str()).or_default().push(Replica {
            id: a.id.clone(),
            placed: a.node.is_some(),
            node: a.node.clone(),
            pinned_to: a.pinned_to.clone(),
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
        let (want, mut add) = match w.spec.batch_rules() {
            Some(rules) => {
                let job = jobs
                    .get(name)
                    .or(w.job.as_ref())
                    .cloned()
                    .unwrap_or_default();
                let (want, may_add) = jobs::runs_wanted(&rules, &job, now);
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
                (want, want.saturating_sub(live.len()))
            }
        };
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
        for _ in 0..add {
            new.push(pending(name, w, None));
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

/// The placement engine's view of the fleet and of what is pending.
fn placement_input(s: &State, draft: &Draft, sites: &[scheduler::SiteInfo]) -> Option<Input> {
    let pending: Vec<&AllocationRecord> = draft
        .all(s)
        .filter(|a| a.state == AllocationState::Pending && a.node.is_none())
        .collect();
    if pending.is_empty() {
        return None;
    }
    let nodes = s
        .nodes
        .values()
        .map(|n| scheduler::NodeInfo {
            id: n.id.clone(),
            site: n.site.clone(),
            status: if n.status == NodeStatus::Down {
                NodeStatus::Down
            } else if n.draining {
                NodeStatus::Draining
            } else if n.unschedulable {
                NodeStatus::Cordoned
            } else {
                n.status
            },
            allocatable: n.allocatable,
            labels: n.labels.clone(),
            arch: n.arch.clone(),
            os: n.os.clone(),
            price: 0,
        })
        .collect();
    let mut groups = Vec::new();
    let mut group_of: HashMap<&str, usize> = HashMap::new();
    for (name, w) in &s.workloads {
        group_of.insert(name, groups.len());
        groups.push(scheduler::Group::from_spec(&w.spec));
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
                priority: g.priority,
                host_ports: g.host_ports.clone(),
            })
        })
        .collect();
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
            })
        })
        .collect();
    let launching = s
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
        snapshot: scheduler::Snapshot {
            sites: sites.to_vec(),
            nodes,
            allocations,
            launching,
        },
        groups,
        requests,
        reserved,
    })
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
        let msg = u.explanation.to_string();
        let explanation = Some(Explanation::from(&u.explanation));
        let Some(a) = draft.get(s, id) else { continue };
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
mod tests {
    use skiff_proto::cluster::SiteKind;

    use super::*;
    use crate::control::{JobState, JoinTokenRecord, NodeRecord, WorkloadRecord};

    const NOW: i64 = 1_000_000_000;

    fn dc1() -> Vec<scheduler::SiteInfo> {
        vec![scheduler::SiteInfo {
            name: "dc1".into(),
            kind: SiteKind::Static,
            cost_rank: 0,
            max_nodes: None,
            budget: None,
            instance_types: Vec::new(),
            launch_labels: BTreeMap::new(),
        }]
    }

    fn node(id: &str, status: &str) -> NodeRecord {
        serde_json::from_value(serde_json::json!({
            "id": id, "site": "dc1", "status": status, "subnet": "10.128.9.0/24",
            "cert_hash": "x", "cert_not_after_ms": 0, "capacity": {"cpu": "2", "memory": "4Gi"},
            "allocatable": {"cpu": "2", "memory": "4Gi"}, "joined_ms": 0, "generation": 1
        }))
        .unwrap()
    }

    fn workload(replicas: u32, version: u64) -> WorkloadRecord {
        let spec = skiff_proto::parse_workloads(
            &format!(
                "name: web\nimage: busybox\nreplicas: {replicas}\nresources: {{cpu: '1', memory: 1Gi}}\n"
            ),
            skiff_proto::Format::Yaml,
        )
        .unwrap()
        .remove(0);
        WorkloadRecord {
            spec,
            version,
            created_ms: 0,
            updated_ms: 0,
            job: None,
        }
    }

    /// A batch job `job` of 1-CPU runs, created at 0.
    fn batch(rules: &str) -> WorkloadRecord {
        let spec = skiff_proto::parse_workloads(
            &format!(
                "name: job\nkind: batch\nimage: busybox\nresources: {{cpu: '1', memory: 1Gi}}\nbatch: {rules}\n"
            ),
            skiff_proto::Format::Yaml,
        )
        .unwrap()
        .remove(0);
        WorkloadRecord {
            job: Some(JobStatus::default()),
            ..WorkloadRecord {
                spec,
                version: 1,
                created_ms: 0,
                updated_ms: 0,
                job: None,
            }
        }
    }

    fn alloc(
        id: &str,
        node: Option<&str>,
        state: AllocationState,
        version: u64,
    ) -> AllocationRecord {
        AllocationRecord {
            id: id.into(),
            workload: "web".into(),
            workload_version: version,
            node: node.map(str::to_string),
            site: node.map(|_| "dc1".to_string()),
            state,
            exit_code: None,
            message: String::new(),
            address: String::new(),
            restarts: 0,
            created_ms: 0,
            updated_ms: 0,
            explanation: None,
            done: false,
            pinned_to: None,
        }
    }

    fn fleet(nodes: &[(&str, &str)], replicas: u32, allocs: Vec<AllocationRecord>) -> State {
        let mut s = State::default();
        for (id, status) in nodes {
            s.nodes.insert(id.to_string(), node(id, status));
        }
        s.workloads.insert("web".into(), workload(replicas, 1));
        for a in allocs {
            s.allocations.insert(a.id.clone(), a);
        }
        s.desired = s.desired_sets();
        s
    }

    /// The state after `c` (what `Control` does, without a store).
    fn apply(s: &mut State, c: Changes) {
        for id in &c.forgotten {
            s.allocations.remove(id);
        }
        s.allocations.extend(c.allocations);
        for (name, job) in c.jobs {
            s.workloads.get_mut(&name).unwrap().job = Some(job);
        }
        for k in &c.expired_join_tokens {
            s.join_tokens.remove(k);
        }
        s.desired = c.desired;
    }

    fn on<'a>(c: &'a Changes, node: &str) -> Vec<&'a AllocationRecord> {
        c.allocations
            .values()
            .filter(|a| a.node.as_deref() == Some(node) && a.is_live())
            .collect()
    }

    #[test]
    fn missing_replicas_are_made_and_placed_and_only_their_nodes_change() {
        let s = fleet(
            &[("n1", "ready"), ("n2", "ready"), ("n3", "ready")],
            3,
            vec![],
        );
        let c = reconcile(&s, NOW, &dc1()).unwrap();
        assert_eq!(c.allocations.len(), 3);
        for a in c.allocations.values() {
            assert_eq!(a.state, AllocationState::Starting, "{a:?}");
            assert_eq!((a.created_ms, a.updated_ms), (NOW, NOW));
        }
        // Bin-packing: two on one node, one on another; the third node is
        // untouched and keeps its generation.
        let placed: BTreeSet<&str> = c
            .allocations
            .values()
            .filter_map(|a| a.node.as_deref())
            .collect();
        assert_eq!(
            c.nodes.iter().map(String::as_str).collect::<BTreeSet<_>>(),
            placed
        );
        assert_eq!(placed.len(), 2);
        let desired: usize = c.desired.values().map(BTreeSet::len).sum();
        assert_eq!(desired, 3);
        let placed_events = c
            .events
            .iter()
            .filter(|e| e.2.starts_with("placed on "))
            .count();
        assert_eq!(placed_events, 3);
        assert!(s.allocations.is_empty(), "the state itself is not changed");
        // A second pass over the result has nothing to do.
        let mut s = s;
        apply(&mut s, c);
        let again = reconcile(&s, NOW + 1, &dc1()).unwrap();
        assert!(
            again.allocations.is_empty() && again.nodes.is_empty(),
            "{again:?}"
        );
        assert_eq!(again.planned, None, "nothing pending, no plan");
    }

    #[test]
    fn a_down_nodes_allocations_are_lost_and_replaced_in_the_same_pass() {
        use AllocationState::Running;
        let s = fleet(
            &[("n1", "down"), ("n2", "ready")],
            2,
            vec![
                alloc("web-a", Some("n1"), Running, 1),
                alloc("web-b", Some("n1"), Running, 1),
            ],
        );
        let c = reconcile(&s, NOW, &dc1()).unwrap();
        for id in ["web-a", "web-b"] {
            assert_eq!(c.allocations[id].state, AllocationState::Lost);
            assert_eq!(c.allocations[id].message, "node down");
        }
        assert_eq!(on(&c, "n2").len(), 2, "replaced on n2: {c:?}");
        assert!(c.nodes.contains("n1") && c.nodes.contains("n2"));
        assert!(c.desired.get("n1").is_none_or(BTreeSet::is_empty));
    }

    #[test]
    fn an_update_replaces_one_replica_at_a_time_once_the_new_one_runs() {
        use AllocationState::Running;
        let mut s = fleet(
            &[("n1", "ready"), ("n2", "ready")],
            2,
            vec![
                alloc("web-a", Some("n1"), Running, 1),
                alloc("web-b", Some("n2"), Running, 1),
            ],
        );
        s.workloads.get_mut("web").unwrap().version = 2;
        let c = reconcile(&s, NOW, &dc1()).unwrap();
        let stopped: Vec<&str> = c
            .allocations
            .values()
            .filter(|a| a.state == AllocationState::Stopped)
            .map(|a| a.id.as_str())
            .collect();
        assert_eq!(stopped.len(), 1, "one at a time: {c:?}");
        let new: Vec<&AllocationRecord> = c
            .allocations
            .values()
            .filter(|a| a.workload_version == 2)
            .collect();
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].state, AllocationState::Starting);
        let new_id = new[0].id.clone();
        apply(&mut s, c);
        // Until the new replica runs, the other old one stays.
        let c = reconcile(&s, NOW + 1, &dc1()).unwrap();
        assert!(c.allocations.is_empty(), "settling: {c:?}");
        s.allocations.get_mut(&new_id).unwrap().state = Running;
        let c = reconcile(&s, NOW + 2, &dc1()).unwrap();
        let stopped = c
            .allocations
            .values()
            .filter(|a| a.state == AllocationState::Stopped && a.workload_version == 1)
            .count();
        assert_eq!(stopped, 1, "then the next: {c:?}");
    }

    #[test]
    fn old_records_expired_tokens_and_deleted_workloads_are_forgotten() {
        let mut old: Vec<AllocationRecord> = (0..105)
            .map(|i| {
                let mut a = alloc(&format!("web-{i:03}"), None, AllocationState::Stopped, 1);
                a.updated_ms = i;
                a
            })
            .collect();
        old.push(alloc("web-live", Some("n1"), AllocationState::Running, 1));
        let mut s = fleet(&[("n1", "ready")], 1, old);
        let token = |expires_ms| JoinTokenRecord {
            site: "dc1".into(),
            expires_ms,
            used: false,
            created_ms: 0,
        };
        s.join_tokens
            .insert("stale".into(), token(NOW - 2 * 3_600_000));
        s.join_tokens
            .insert("recent".into(), token(NOW - 1_800_000));
        let c = reconcile(&s, NOW, &dc1()).unwrap();
        let gone: Vec<&str> = c.forgotten.iter().map(String::as_str).collect();
        assert_eq!(
            gone,
            ["web-000", "web-001", "web-002", "web-003", "web-004"]
        );
        assert_eq!(c.expired_join_tokens, ["stale"]);
        // The workload deleted: its live replica stops, every record goes.
        s.workloads.clear();
        let c = reconcile(&s, NOW, &dc1()).unwrap();
        assert_eq!(c.forgotten.len(), 106);
        assert!(c.allocations.is_empty());
        assert!(c.nodes.contains("n1"), "n1 stops web-live");
        assert!(
            c.events
                .iter()
                .any(|e| e.1 == "web-live" && e.2 == "stopped: workload deleted"),
            "{:?}",
            c.events
        );
    }

    #[test]
    fn what_cannot_be_placed_waits_with_its_reason() {
        let s = fleet(&[("n1", "ready")], 3, vec![]);
        let c = reconcile(&s, NOW, &dc1()).unwrap();
        assert_eq!(on(&c, "n1").len(), 2);
        let waiting: Vec<&AllocationRecord> = c
            .allocations
            .values()
            .filter(|a| a.state == AllocationState::Pending)
            .collect();
        assert_eq!(waiting.len(), 1);
        assert!(
            waiting[0].message.contains("insufficient cpu"),
            "{:?}",
            waiting[0]
        );
        assert!(waiting[0].explanation.is_some());
        assert_eq!(
            c.planned,
            Some(Vec::new()),
            "a static site launches nothing"
        );
        assert!(
            c.events
                .iter()
                .any(|e| e.0 == "workload" && e.2.starts_with("1 replica(s) cannot be placed")),
            "{:?}",
            c.events
        );
    }

    /// Every live run of `job` exits with `code` (as its agent reports).
    fn runs_exit(s: &mut State, code: i32, at: i64) -> usize {
        let mut n = 0;
        for a in s.allocations.values_mut() {
            if a.workload == "job" && a.is_live() && a.node.is_some() {
                a.state = AllocationState::Exited;
                a.exit_code = Some(code);
                a.updated_ms = at;
                n += 1;
            }
        }
        n
    }

    fn job_fleet(rules: &str) -> State {
        let mut s = fleet(&[("n1", "ready"), ("n2", "ready")], 0, vec![]);
        s.workloads.clear();
        s.workloads.insert("job".into(), batch(rules));
        s
    }

    fn live_runs(s: &State) -> usize {
        s.allocations
            .values()
            .filter(|a| a.workload == "job" && a.is_live())
            .count()
    }

    #[test]
    fn a_batch_job_runs_parallelism_at_a_time_until_its_completions_succeed() {
        let mut s = job_fleet("{completions: 5, parallelism: 2}");
        let mut now = NOW;
        let mut rounds = 0;
        loop {
            let c = reconcile(&s, now, &dc1()).unwrap();
            apply(&mut s, c);
            let job = s.workloads["job"].job.clone().unwrap();
            if job.state != JobState::Running {
                assert_eq!(job.state, JobState::Complete);
                assert_eq!((job.succeeded, job.failed), (5, 0));
                assert_eq!(job.finished_ms, Some(now));
                break;
            }
            // Never more than parallelism, nor more than still missing.
            let live = live_runs(&s);
            assert_eq!(live, 2.min(5 - job.succeeded as usize), "{job:?}");
            now += 1000;
            runs_exit(&mut s, 0, now);
            rounds += 1;
            assert!(rounds < 10, "never completes: {job:?}");
        }
        // Done: nothing live, nothing on the nodes; the exit codes kept.
        assert_eq!(live_runs(&s), 0);
        assert!(s.desired.values().all(BTreeSet::is_empty));
        let done: Vec<_> = s.allocations.values().filter(|a| a.done).collect();
        assert_eq!(done.len(), 5);
        assert!(done.iter().all(|a| a.exit_code == Some(0)));
        // Another pass changes nothing.
        let c = reconcile(&s, now + 1000, &dc1()).unwrap();
        assert!(c.allocations.is_empty() && c.jobs.is_empty(), "{c:?}");
    }

    #[test]
    fn a_failing_batch_job_backs_off_between_runs_and_fails_past_its_backoff_limit() {
        let mut s = job_fleet("{completions: 1, backoff_limit: 2, backoff: 10s}");
        let c = reconcile(&s, NOW, &dc1()).unwrap();
        apply(&mut s, c);
        assert_eq!(live_runs(&s), 1);
        // First failure: the next run waits 10 s, then 20 s.
        let mut failed_at = NOW;
        for (failures, wait) in [(1, 10_000), (2, 20_000)] {
            failed_at += 1000;
            assert_eq!(runs_exit(&mut s, 3, failed_at), 1);
            let c = reconcile(&s, failed_at + wait - 1, &dc1()).unwrap();
            apply(&mut s, c);
            let job = s.workloads["job"].job.clone().unwrap();
            assert_eq!((job.state, job.failed), (JobState::Running, failures));
            assert_eq!(live_runs(&s), 0, "a run before its back-off");
            let c = reconcile(&s, failed_at + wait, &dc1()).unwrap();
            apply(&mut s, c);
            assert_eq!(live_runs(&s), 1, "no run after {wait} ms");
            failed_at += wait;
        }
        // The third failure is more than backoff_limit (2): failed.
        assert_eq!(runs_exit(&mut s, 3, failed_at + 1000), 1);
        let c = reconcile(&s, failed_at + 60_000, &dc1()).unwrap();
        assert!(
            c.events
                .iter()
                .any(|(_, id, m)| id == "job" && m.starts_with("job failed: 3 runs failed")),
            "{:?}",
            c.events
        );
        apply(&mut s, c);
        let job = s.workloads["job"].job.clone().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert!(
            job.message.contains("batch.backoff_limit (2)"),
            "{}",
            job.message
        );
        assert_eq!(live_runs(&s), 0);
        // Every run's exit code stays visible.
        let codes: Vec<_> = s.allocations.values().map(|a| a.exit_code).collect();
        assert_eq!(codes, [Some(3); 3]);
    }

    #[test]
    fn a_batch_job_past_its_deadline_fails_and_its_runs_stop_and_lost_runs_do_not_count() {
        let mut s = job_fleet("{completions: 4, parallelism: 2, deadline: 1m}");
        let c = reconcile(&s, 1000, &dc1()).unwrap();
        apply(&mut s, c);
        assert_eq!(live_runs(&s), 2);
        // A node lost: its run is run again, not counted as failed.
        let lost_node = s.allocations.values().find_map(|a| a.node.clone()).unwrap();
        s.nodes.get_mut(&lost_node).unwrap().status = NodeStatus::Down;
        let c = reconcile(&s, 2000, &dc1()).unwrap();
        apply(&mut s, c);
        let job = s.workloads["job"].job.clone().unwrap();
        assert_eq!((job.failed, job.state), (0, JobState::Running));
        assert_eq!(live_runs(&s), 2);
        // The deadline: failed, every live run stopped.
        let c = reconcile(&s, 60_000, &dc1()).unwrap();
        apply(&mut s, c);
        let job = s.workloads["job"].job.clone().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert!(
            job.message.contains("deadline (1m) passed"),
            "{}",
            job.message
        );
        assert_eq!(live_runs(&s), 0);
        assert!(
            s.allocations
                .values()
                .filter(|a| a.state == AllocationState::Stopped)
                .all(|a| a.message == "job failed")
        );
    }

    /// A system workload `agent` (100m, 64Mi), with constraints.
    fn system(constraints: &str) -> WorkloadRecord {
        let spec = skiff_proto::parse_workloads(
            &format!(
                "name: agent\nkind: system\nimage: busybox\nresources: {{cpu: 100m, memory: 64Mi}}\nplacement: {{constraints: {constraints}}}\n"
            ),
            skiff_proto::Format::Yaml,
        )
        .unwrap()
        .remove(0);
        WorkloadRecord {
            spec,
            version: 1,
            created_ms: 0,
            updated_ms: 0,
            job: None,
        }
    }

    /// The nodes the system workload's live copies are placed on.
    fn copies_on(s: &State) -> Vec<String> {
        let mut v: Vec<String> = s
            .allocations
            .values()
            .filter(|a| a.workload == "agent" && a.is_live())
            .map(|a| {
                if a.node.is_some() {
                    assert_eq!(a.node, a.pinned_to, "{a:?}");
                }
                a.node
                    .clone()
                    .unwrap_or_else(|| format!("pending:{:?}", a.pinned_to))
            })
            .collect();
        v.sort();
        v
    }

    fn pass(s: &mut State) -> Changes {
        let c = reconcile(s, NOW, &dc1()).unwrap();
        let out = Changes {
            allocations: c.allocations.clone(),
            planned: c.planned.clone(),
            events: c.events.clone(),
            ..Changes::default()
        };
        apply(s, c);
        out
    }

    #[test]
    fn a_system_workload_has_a_copy_on_every_eligible_node_as_nodes_join_and_leave() {
        let mut s = fleet(&[("n1", "ready"), ("n2", "ready")], 0, vec![]);
        s.workloads.clear();
        s.workloads
            .insert("agent".into(), system(r#"["node.labels.role != edge"]"#));
        pass(&mut s);
        assert_eq!(copies_on(&s), ["n1", "n2"]);
        assert!(pass(&mut s).allocations.is_empty(), "settled");

        // A node that joins gets one; one that the constraint excludes,
        // or that is cordoned, does not.
        s.nodes.insert("n3".into(), node("n3", "ready"));
        let mut edge = node("edge", "ready");
        edge.labels.insert("role".into(), "edge".into());
        s.nodes.insert("edge".into(), edge);
        let mut cordoned = node("n4", "ready");
        cordoned.unschedulable = true;
        s.nodes.insert("n4".into(), cordoned);
        let c = pass(&mut s);
        assert_eq!(c.allocations.len(), 1, "only n3 changes: {c:?}");
        assert_eq!(copies_on(&s), ["n1", "n2", "n3"]);

        // Draining keeps it; a down node's is lost and not replaced
        // elsewhere; a removed node's goes.
        s.nodes.get_mut("n1").unwrap().draining = true;
        s.nodes.get_mut("n2").unwrap().status = NodeStatus::Down;
        s.nodes.remove("n3");
        pass(&mut s);
        assert_eq!(copies_on(&s), ["n1"]);
        let lost: BTreeSet<String> = s
            .allocations
            .values()
            .filter(|a| a.state == AllocationState::Lost)
            .filter_map(|a| a.node.clone())
            .collect();
        assert_eq!(lost, BTreeSet::from(["n2".to_string(), "n3".to_string()]));

        // Back, it gets a copy again; a node without room for one keeps
        // it waiting there, and nothing is launched for it.
        s.nodes.get_mut("n2").unwrap().status = NodeStatus::Ready;
        let mut small = node("small", "ready");
        small.allocatable.cpu = "50m".parse().unwrap();
        s.nodes.insert("small".into(), small);
        let c = pass(&mut s);
        assert_eq!(copies_on(&s), ["n1", "n2", "pending:Some(\"small\")"]);
        assert_eq!(c.planned, Some(Vec::new()));
        let waiting = s
            .allocations
            .values()
            .find(|a| a.pinned_to.as_deref() == Some("small") && a.is_live())
            .unwrap();
        assert!(
            waiting.message.contains("1 insufficient cpu"),
            "{waiting:?}"
        );
    }
}
