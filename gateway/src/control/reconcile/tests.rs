//! Unit tests of the reconciler's rules, on a fixed clock.

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

fn alloc(id: &str, node: Option<&str>, state: AllocationState, version: u64) -> AllocationRecord {
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
        instance: None,
        namespace: None,
        moved: None,
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
    s.volumes.extend(c.volumes);
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

    // Drained with --system, its copy stops too (and none comes back
    // while it drains).
    s.nodes.get_mut("n1").unwrap().drain_system = true;
    pass(&mut s);
    pass(&mut s);
    assert_eq!(copies_on(&s), ["n2", "pending:Some(\"small\")"]);
}

/// A service `db` of `replicas` with a local volume `data`.
fn db(replicas: u32, on_node_loss: &str) -> WorkloadRecord {
    let spec = skiff_proto::parse_workloads(
        &format!(
            "name: db\nimage: busybox\nreplicas: {replicas}\nresources: {{cpu: '1', memory: 1Gi}}\n\
             volumes: [{{name: data, local: {{on_node_loss: {on_node_loss}}}}}]\n\
             mounts: [{{volume: data, path: /data}}]\n"
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

fn live_db(s: &State) -> Vec<&AllocationRecord> {
    s.allocations
        .values()
        .filter(|a| a.workload == "db" && a.is_live())
        .collect()
}

#[test]
fn a_local_volume_keeps_its_replica_on_its_node_and_the_replica_waits_for_it() {
    let mut s = fleet(&[("n1", "ready"), ("n2", "ready")], 0, vec![]);
    s.workloads.insert("db".into(), db(1, "wait"));
    let c = reconcile(&s, NOW, &dc1()).unwrap();
    apply(&mut s, c);
    let first = live_db(&s)[0].clone();
    let holder = first.node.clone().expect("placed");
    assert_eq!(first.instance, Some(0));
    let v = &s.volumes["db.data.0"];
    assert_eq!(
        (v.node.as_str(), v.workload.as_str(), v.instance),
        (holder.as_str(), "db", 0)
    );
    // Its node goes down: the replica is lost and its replacement waits
    // for that node, though the other one has room.
    s.nodes.get_mut(&holder).unwrap().status = NodeStatus::Down;
    let c = reconcile(&s, NOW + 1, &dc1()).unwrap();
    apply(&mut s, c);
    let waiting = live_db(&s);
    assert_eq!(waiting.len(), 1);
    let w = waiting[0];
    assert_ne!(w.id, first.id);
    assert_eq!((w.node.as_deref(), w.instance), (None, Some(0)));
    assert_eq!(
        w.message,
        format!(
            "waiting for node {holder}, which holds volume db.data.0 (0/1 nodes fit: 1 node down)"
        )
    );
    assert_eq!(
        w.explanation.as_ref().and_then(|e| e.waiting_for.clone()),
        Some(format!("node {holder}, which holds volume db.data.0"))
    );
    // The node is back: the replica goes there, to its data.
    s.nodes.get_mut(&holder).unwrap().status = NodeStatus::Ready;
    let c = reconcile(&s, NOW + 2, &dc1()).unwrap();
    apply(&mut s, c);
    let back = live_db(&s);
    assert_eq!(back[0].node.as_deref(), Some(holder.as_str()));
    assert_eq!(s.volumes.len(), 1);
    // A second replica takes slot 1, with a volume of its own; an update
    // replaces slot 0's replica on slot 0's node.
    let w = s.workloads.get_mut("db").unwrap();
    w.spec.replicas = 2;
    let c = reconcile(&s, NOW + 3, &dc1()).unwrap();
    apply(&mut s, c);
    let slots: BTreeSet<Option<u32>> = live_db(&s).iter().map(|a| a.instance).collect();
    assert_eq!(slots, BTreeSet::from([Some(0), Some(1)]));
    assert!(s.volumes.contains_key("db.data.1"));
    for a in s.allocations.values_mut().filter(|a| a.is_live()) {
        a.state = AllocationState::Running;
    }
    s.workloads.get_mut("db").unwrap().version = 2;
    let c = reconcile(&s, NOW + 4, &dc1()).unwrap();
    apply(&mut s, c);
    let new = live_db(&s)
        .into_iter()
        .find(|a| a.workload_version == 2)
        .cloned()
        .expect("a replica of the update");
    let slot = new.instance.unwrap();
    let volume = &s.volumes[&format!("db.data.{slot}")];
    assert_eq!(new.node.as_deref(), Some(volume.node.as_str()));
}

#[test]
fn with_on_node_loss_recreate_a_replica_starts_elsewhere_with_a_new_volume() {
    let mut s = fleet(&[("n1", "ready"), ("n2", "ready")], 0, vec![]);
    s.workloads.insert("db".into(), db(1, "recreate"));
    let c = reconcile(&s, NOW, &dc1()).unwrap();
    apply(&mut s, c);
    let holder = live_db(&s)[0].node.clone().unwrap();
    s.nodes.get_mut(&holder).unwrap().status = NodeStatus::Down;
    let c = reconcile(&s, NOW + 1, &dc1()).unwrap();
    assert_eq!(c.volumes.len(), 1, "{:?}", c.volumes);
    apply(&mut s, c);
    let moved = live_db(&s)[0].node.clone().expect("placed elsewhere");
    assert_ne!(moved, holder);
    assert_eq!(s.volumes["db.data.0"].node, moved);
    assert_eq!(s.volumes["db.data.0"].created_ms, NOW + 1);
    // The old node returns holding its copy: that copy is stale, and its
    // agent is told to delete it (the new node keeps the live one).
    s.nodes.get_mut(&holder).unwrap().status = NodeStatus::Ready;
    let mut b = crate::store::Batch::default();
    let held = vec!["db.data.0".to_string()];
    assert!(crate::control::volumes::note_stale(
        &mut s, &mut b, &holder, &held
    ));
    assert_eq!(crate::control::volumes::to_remove(&s, &holder), held);
    assert!(!crate::control::volumes::note_stale(
        &mut s, &mut b, &moved, &held
    ));
    assert!(crate::control::volumes::to_remove(&s, &moved).is_empty());
    // Deleted: nothing more to ask. A volume with no record is never
    // taken for a stale one.
    assert!(crate::control::volumes::note_stale(
        &mut s,
        &mut b,
        &holder,
        &[]
    ));
    assert!(crate::control::volumes::to_remove(&s, &holder).is_empty());
    let unknown = vec!["old.data.0".to_string()];
    assert!(!crate::control::volumes::note_stale(
        &mut s, &mut b, &holder, &unknown
    ));
}

#[test]
fn a_sized_local_volume_counts_against_node_disk_and_shows_whether_its_node_enforces_it() {
    let mut s = fleet(&[("n1", "ready"), ("n2", "ready")], 0, vec![]);
    for (id, disk) in [("n1", "2Gi"), ("n2", "4Gi")] {
        let n = s.nodes.get_mut(id).unwrap();
        n.allocatable.disk = disk.parse().unwrap();
        n.capacity.disk = disk.parse().unwrap();
    }
    s.nodes.get_mut("n2").unwrap().volume_quota_missing =
        Some("/var/lib/skiff/volumes is on ext4 without project quotas".into());
    let mut w = db(1, "wait");
    w.spec.volumes[0].local = Some(skiff_proto::LocalVolume {
        size: Some("3Gi".parse().unwrap()),
        ..Default::default()
    });
    s.workloads.insert("db".into(), w);
    let c = reconcile(&s, NOW, &dc1()).unwrap();
    apply(&mut s, c);
    // Only n2 has 3Gi of disk for it.
    assert_eq!(live_db(&s)[0].node.as_deref(), Some("n2"));
    let v = crate::control::volumes::view(&s, &s.volumes["db.data.0"]);
    assert_eq!(v.size_bytes, Some(3 << 30));
    assert_eq!(
        v.size_not_enforced.as_deref(),
        Some("/var/lib/skiff/volumes is on ext4 without project quotas")
    );
    // A second replica fits nowhere: n2's disk is taken by the first.
    s.workloads.get_mut("db").unwrap().spec.replicas = 2;
    let c = reconcile(&s, NOW + 1, &dc1()).unwrap();
    apply(&mut s, c);
    let pending: Vec<_> = live_db(&s)
        .into_iter()
        .filter(|a| a.node.is_none())
        .collect();
    assert_eq!(pending.len(), 1);
    assert!(
        pending[0].message.contains("insufficient disk"),
        "{}",
        pending[0].message
    );
}

#[test]
fn scaling_down_stops_cloud_replicas_first_and_the_one_that_empties_a_launched_vm() {
    // dc1 on-prem (n1), a cloud site with two launched VMs: c1 runs one
    // replica and another workload's, c2 runs one replica alone. The
    // cloud replicas are the oldest: newest-first would stop on-prem ones.
    let mut sites = dc1();
    sites.push(scheduler::SiteInfo {
        name: "cloud".into(),
        kind: SiteKind::Aws,
        cost_rank: 10,
        ..sites[0].clone()
    });
    let mut s = fleet(
        &[("n1", "ready"), ("c1", "ready"), ("c2", "ready")],
        4,
        vec![],
    );
    for id in ["c1", "c2"] {
        let n = s.nodes.get_mut(id).unwrap();
        n.site = "cloud".into();
        n.instance_id = Some(format!("i-{id}"));
    }
    let placed = |id: &str, node: &str, site: &str, created: i64| AllocationRecord {
        site: Some(site.into()),
        created_ms: created,
        ..alloc(id, Some(node), AllocationState::Running, 1)
    };
    for a in [
        placed("on-c1", "c1", "cloud", 1),
        placed("on-c2", "c2", "cloud", 2),
        placed("on-n1-a", "n1", "dc1", 3),
        placed("on-n1-b", "n1", "dc1", 4),
        AllocationRecord {
            workload: "other".into(),
            ..placed("other-c1", "c1", "cloud", 0)
        },
    ] {
        s.allocations.insert(a.id.clone(), a);
    }
    s.workloads.insert("other".into(), {
        let mut o = workload(1, 1);
        o.spec.name = "other".into();
        o
    });
    let live = |s: &State| -> BTreeSet<String> {
        s.allocations
            .values()
            .filter(|a| a.workload == "web" && a.is_live())
            .map(|a| a.id.clone())
            .collect()
    };
    // One fewer: the replica alone on c2 goes (its VM can scale in).
    s.workloads.get_mut("web").unwrap().spec.replicas = 3;
    let c = reconcile(&s, NOW, &sites).unwrap();
    apply(&mut s, c);
    assert_eq!(
        live(&s),
        BTreeSet::from(["on-c1".into(), "on-n1-a".into(), "on-n1-b".into()])
    );
    // Then the other cloud one, though on-prem ones are newer.
    s.workloads.get_mut("web").unwrap().spec.replicas = 2;
    let c = reconcile(&s, NOW + 1, &sites).unwrap();
    apply(&mut s, c);
    assert_eq!(
        live(&s),
        BTreeSet::from(["on-n1-a".into(), "on-n1-b".into()])
    );
    // On one site, the newest goes.
    s.workloads.get_mut("web").unwrap().spec.replicas = 1;
    let c = reconcile(&s, NOW + 2, &sites).unwrap();
    apply(&mut s, c);
    assert_eq!(live(&s), BTreeSet::from(["on-n1-a".into()]));
}

#[test]
fn replicas_on_a_node_being_emptied_start_elsewhere_before_they_stop() {
    // Both replicas of web (1 CPU each) on c1, which is being emptied
    // (`max_moving` at a time); n1 has room for both.
    let emptying = |cause, max_moving| {
        let mut s = fleet(
            &[("n1", "ready"), ("c1", "ready")],
            2,
            vec![
                alloc("old-1", Some("c1"), AllocationState::Running, 1),
                alloc("old-2", Some("c1"), AllocationState::Running, 1),
            ],
        );
        s.nodes.get_mut("c1").unwrap().vacating = Some(crate::control::Vacate {
            cause,
            since_ms: NOW,
            saving_micros_per_hour: 0,
            max_moving,
            notice: String::new(),
        });
        s
    };
    let mut s = emptying(crate::control::MoveCause::Consolidation, 1);
    let running = |s: &State| {
        s.allocations
            .values()
            .filter(|a| a.state == AllocationState::Running)
            .count()
    };
    let mut moved = Vec::new();
    for step in 0..6 {
        let c = reconcile(&s, NOW + step, &dc1()).unwrap();
        apply(&mut s, c);
        // What started comes up (the agent's report).
        for a in s.allocations.values_mut() {
            if a.state == AllocationState::Starting {
                a.state = AllocationState::Running;
            }
        }
        assert!(running(&s) >= 2, "step {step}: fewer than 2 running");
        let live: Vec<_> = s.allocations.values().filter(|a| a.is_live()).collect();
        assert!(live.len() <= 3, "step {step}: more than one moving at once");
        for a in live.iter().filter(|a| a.node.as_deref() == Some("n1")) {
            if !moved.contains(&a.id) {
                moved.push(a.id.clone());
                let m = a.moved.as_ref().expect("a move");
                assert_eq!(
                    (m.from_node.as_str(), m.cause),
                    ("c1", crate::control::MoveCause::Consolidation)
                );
            }
        }
    }
    // Both moved, and the old ones stopped once their replacements ran.
    assert_eq!(moved.len(), 2);
    let on_c1: Vec<_> = s
        .allocations
        .values()
        .filter(|a| a.node.as_deref() == Some("c1"))
        .map(|a| (a.state, a.message.as_str()))
        .collect();
    assert_eq!(
        on_c1,
        [(AllocationState::Stopped, "moved: its replacement runs"); 2]
    );
    // A notice moves every replica at once.
    let s = emptying(crate::control::MoveCause::Notice, u32::MAX);
    let c = reconcile(&s, NOW, &dc1()).unwrap();
    assert_eq!(on(&c, "n1").len(), 2);
    assert!(
        c.allocations
            .values()
            .filter(|a| a.state == AllocationState::Stopped)
            .count()
            == 0
    );
}
