//! Table-driven tests of the placement engine.

use std::collections::BTreeMap;

use skiff_proto::cluster::{Capacity, NodeStatus, SiteKind};
use skiff_proto::{Protocol, Spread};

use super::*;

const GI: u64 = 1 << 30;

pub(super) fn site(name: &str, kind: SiteKind, rank: u32) -> SiteInfo {
    SiteInfo {
        name: name.into(),
        kind,
        cost_rank: rank,
        max_nodes: None,
        budget: None,
        instance_types: Vec::new(),
        launch_labels: BTreeMap::new(),
    }
}

pub(super) fn ty(name: &str, cores: u64, mem_gib: u64, price_micros: u64) -> InstanceType {
    InstanceType {
        name: name.into(),
        allocatable: Capacity::new(cores * 1000, mem_gib * GI, 0),
        price: price_micros,
        arch: "amd64".into(),
        held: false,
    }
}

pub(super) fn node(id: &str, site: &str, cores: u64, mem_gib: u64) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        site: site.into(),
        status: NodeStatus::Ready,
        allocatable: Capacity::new(cores * 1000, mem_gib * GI, 0),
        addresses: NODE_ADDRESSES,
        labels: BTreeMap::new(),
        arch: "amd64".into(),
        os: "linux".into(),
        price: 0,
        host_volumes: Vec::new(),
    }
}

pub(super) fn group(name: &str, cpu_millis: u64, mem_gib: u64) -> Group {
    Group {
        workload: name.into(),
        demand: Capacity::new(cpu_millis, mem_gib * GI, 0),
        address: true,
        priority: 50,
        host_ports: Vec::new(),
        sites: Vec::new(),
        prefer: Vec::new(),
        spread: None,
        max_skew: 1,
        constraints: Vec::new(),
        distinct_nodes: false,
        host_volumes: Vec::new(),
        budget: None,
    }
}

fn alloc(
    id: &str,
    node: &str,
    workload: &str,
    cpu: u64,
    mem_gib: u64,
    prio: u32,
) -> ExistingAllocation {
    ExistingAllocation {
        id: id.into(),
        node: node.into(),
        workload: workload.into(),
        demand: Capacity::new(cpu, mem_gib * GI, 0),
        address: true,
        priority: prio,
        host_ports: Vec::new(),
    }
}

pub(super) fn requests(group: usize, n: usize) -> Vec<Request> {
    (0..n)
        .map(|i| Request {
            id: format!("g{group}-{i}"),
            group,
            node: None,
            existing_only: false,
        })
        .collect()
}

fn onprem(nodes: Vec<NodeInfo>) -> Snapshot {
    Snapshot {
        sites: vec![site("dc1", SiteKind::Static, 0)],
        nodes,
        ..Default::default()
    }
}

/// Node id each request landed on (None: not on a joined node).
fn landed(plan: &Plan, n: usize) -> Vec<Option<String>> {
    let mut out = vec![None; n];
    for p in &plan.placements {
        if let Target::Node(id) = &p.target {
            out[p.request] = Some(id.clone());
        }
    }
    out
}

fn run(snap: &Snapshot, groups: &[Group], reqs: &[Request]) -> Plan {
    place(snap, groups, reqs, Options::default()).unwrap()
}

#[test]
fn bin_pack_takes_the_fullest_node_that_fits() {
    let mut snap = onprem(vec![node("a", "dc1", 8, 32), node("b", "dc1", 8, 32)]);
    snap.allocations
        .push(alloc("x", "b", "other", 4000, 20, 50));
    let groups = [group("web", 1000, 4)];
    let plan = run(&snap, &groups, &requests(0, 1));
    assert_eq!(landed(&plan, 1), vec![Some("b".to_string())]);
}

#[test]
fn spread_policy_takes_the_emptiest_node() {
    let mut snap = onprem(vec![node("a", "dc1", 8, 32), node("b", "dc1", 8, 32)]);
    snap.allocations
        .push(alloc("x", "b", "other", 4000, 20, 50));
    let groups = [group("web", 1000, 4)];
    let opts = Options {
        policy: Policy::Spread,
        ..Options::default()
    };
    let plan = place(&snap, &groups, &requests(0, 1), opts).unwrap();
    assert_eq!(landed(&plan, 1), vec![Some("a".to_string())]);
}

#[test]
fn preferred_sites_fill_first_then_cheapest_rank() {
    let snap = Snapshot {
        sites: vec![
            site("aws", SiteKind::Aws, 10),
            site("dc1", SiteKind::Static, 0),
            site("dc2", SiteKind::Static, 1),
        ],
        nodes: vec![
            node("cloud", "aws", 8, 32),
            node("one", "dc1", 8, 32),
            node("two", "dc2", 8, 32),
        ],
        ..Default::default()
    };
    let mut preferring = group("web", 1000, 4);
    preferring.prefer = vec!["dc2".into()];
    let groups = [group("plain", 1000, 4), preferring];
    let mut reqs = requests(0, 1);
    reqs.extend(requests(1, 1));
    let plan = run(&snap, &groups, &reqs);
    assert_eq!(
        landed(&plan, 2),
        vec![Some("one".to_string()), Some("two".to_string())]
    );
}

#[test]
fn constraints_pick_matching_nodes() {
    let mut ssd = node("ssd", "dc1", 8, 32);
    ssd.labels.insert("disk".into(), "ssd".into());
    ssd.labels.insert("zone".into(), "a".into());
    let mut hdd = node("hdd", "dc1", 8, 32);
    hdd.labels.insert("disk".into(), "hdd".into());
    let bare = node("bare", "dc1", 8, 32);
    let snap = onprem(vec![ssd, hdd, bare]);
    let cases: &[(&str, &[&str])] = &[
        ("node.labels.disk == ssd", &["ssd"]),
        ("node.labels.disk != ssd", &["hdd", "bare"]),
        ("node.labels.disk in (hdd, nvme)", &["hdd"]),
        ("node.labels.disk not in (hdd)", &["ssd", "bare"]),
        ("node.labels.zone exists", &["ssd"]),
        ("node.labels.disk not exists", &["bare"]),
        ("node.name == hdd", &["hdd"]),
        ("node.site == dc1", &["ssd", "hdd", "bare"]),
        ("node.arch == arm64", &[]),
    ];
    for (constraint, allowed) in cases {
        let mut g = group("web", 1000, 1);
        g.constraints = vec![constraint.parse().unwrap()];
        g.distinct_nodes = true;
        let plan = run(&snap, &[g], &requests(0, 3));
        let mut got: Vec<String> = landed(&plan, 3).into_iter().flatten().collect();
        got.sort();
        let mut want: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "{constraint}");
        assert_eq!(plan.unplaced.len(), 3 - allowed.len(), "{constraint}");
        for u in &plan.unplaced {
            assert!(
                u.explanation
                    .excluded
                    .keys()
                    .any(|f| matches!(f, NodeFilter::Constraint(_) | NodeFilter::DistinctNodes)),
                "{constraint}: {}",
                u.explanation
            );
        }
    }
}

#[test]
fn host_ports_never_collide() {
    let mut snap = onprem(vec![node("a", "dc1", 8, 32), node("b", "dc1", 8, 32)]);
    let mut held = alloc("x", "a", "other", 100, 1, 90);
    held.host_ports = vec![(80, Protocol::Tcp)];
    snap.allocations.push(held);
    let mut g = group("web", 100, 1);
    g.host_ports = vec![(80, Protocol::Tcp)];
    g.distinct_nodes = true;
    let plan = run(&snap, &[g], &requests(0, 2));
    assert_eq!(landed(&plan, 2), vec![Some("b".to_string()), None]);
    let why = &plan.unplaced[0].explanation;
    assert_eq!(
        why.excluded.get(&NodeFilter::PortInUse("80/tcp".into())),
        Some(&1)
    );
    assert_eq!(why.excluded.get(&NodeFilter::DistinctNodes), Some(&1));
    assert_eq!(
        why.to_string(),
        "0/2 nodes fit: 1 host port 80/tcp in use, 1 already runs a replica; dc1: static site: it only has the nodes that join it; preemption: no node frees enough by evicting allocations below priority 50"
    );
}

#[test]
fn a_node_takes_no_more_bridged_replicas_than_it_has_addresses() {
    // Tiny replicas bin-pack onto the fullest node until its addresses
    // run out; the rest go to the next node, and past both, nowhere.
    let mut a = node("a", "dc1", 64, 256);
    a.addresses = 3;
    let mut b = node("b", "dc1", 64, 256);
    b.addresses = 2;
    let mut snap = onprem(vec![a, b]);
    snap.allocations.push(alloc("x", "a", "other", 1, 0, 50));
    let plan = run(&snap, &[group("web", 1, 0)], &requests(0, 5));
    let on = |n: &str| {
        landed(&plan, 5)
            .iter()
            .filter(|l| l.as_deref() == Some(n))
            .count()
    };
    assert_eq!((on("a"), on("b")), (2, 2));
    assert_eq!(plan.unplaced.len(), 1);
    let why = &plan.unplaced[0].explanation;
    assert_eq!(why.excluded.get(&NodeFilter::NoFreeAddress), Some(&2));
    assert!(
        why.to_string()
            .starts_with("0/2 nodes fit: 2 no free container address;"),
        "{why}"
    );
    // Host-networked replicas take no address: they still fit.
    let mut host = group("agent", 1, 0);
    host.address = false;
    let mut full = snap.clone();
    for i in 0..3 {
        full.allocations.push(alloc(
            &format!("y{i}"),
            if i < 2 { "a" } else { "b" },
            "web",
            1,
            0,
            50,
        ));
    }
    full.allocations.push(alloc("y3", "b", "web", 1, 0, 50));
    let plan = run(&full, &[host], &requests(0, 2));
    assert!(plan.unplaced.is_empty(), "{:?}", plan.unplaced);
}

#[test]
fn only_ready_nodes_take_work() {
    let mut nodes = vec![];
    for (id, status) in [
        ("down", NodeStatus::Down),
        ("cordoned", NodeStatus::Cordoned),
        ("draining", NodeStatus::Draining),
    ] {
        let mut n = node(id, "dc1", 8, 32);
        n.status = status;
        nodes.push(n);
    }
    let snap = onprem(nodes);
    let plan = run(&snap, &[group("web", 100, 1)], &requests(0, 1));
    assert!(plan.placements.is_empty());
    let why = &plan.unplaced[0].explanation;
    assert_eq!(why.nodes, 3);
    for s in ["down", "cordoned", "draining"] {
        assert_eq!(
            why.excluded.get(&NodeFilter::Status(s.into())),
            Some(&1),
            "{why}"
        );
    }
}

#[test]
fn spread_over_sites_honours_max_skew() {
    let snap = Snapshot {
        sites: vec![
            site("a", SiteKind::Static, 0),
            site("b", SiteKind::Static, 0),
            site("c", SiteKind::Static, 0),
        ],
        nodes: vec![
            node("a1", "a", 64, 256),
            node("b1", "b", 64, 256),
            // Site c only has room for one replica.
            node("c1", "c", 1, 4),
        ],
        ..Default::default()
    };
    let mut g = group("web", 1000, 4);
    g.spread = Some(Spread::Site);
    let plan = run(&snap, std::slice::from_ref(&g), &requests(0, 9));
    let count = |id: &str| {
        landed(&plan, 9)
            .iter()
            .filter(|n| n.as_deref() == Some(id))
            .count()
    };
    // c holds one; with max_skew 1, a and b may hold at most two each.
    assert_eq!((count("a1"), count("b1"), count("c1")), (2, 2, 1));
    assert_eq!(plan.unplaced.len(), 4);
    assert!(
        plan.unplaced[0]
            .explanation
            .excluded
            .contains_key(&NodeFilter::SpreadSkew)
    );

    g.max_skew = 3;
    let plan = run(&snap, &[g], &requests(0, 9));
    let count = |id: &str| {
        landed(&plan, 9)
            .iter()
            .filter(|n| n.as_deref() == Some(id))
            .count()
    };
    assert_eq!((count("a1"), count("b1"), count("c1")), (4, 4, 1));
}

#[test]
fn preemption_evicts_the_fewest_lowest_priority_allocations() {
    let mut snap = onprem(vec![node("a", "dc1", 4, 16), node("b", "dc1", 4, 16)]);
    // Node a: four small low-priority allocations; node b: one big one of
    // priority 20 and one small of priority 10.
    for i in 0..4 {
        snap.allocations
            .push(alloc(&format!("a{i}"), "a", "batch", 1000, 4, 10));
    }
    snap.allocations
        .push(alloc("b-big", "b", "etl", 3000, 12, 20));
    snap.allocations
        .push(alloc("b-small", "b", "batch", 1000, 4, 10));
    let mut g = group("api", 2000, 8);
    g.priority = 80;
    let plan = run(&snap, &[g], &requests(0, 1));
    // Node a needs two priority-10 evictions; node b would need the
    // priority-20 one: the lowest priority wins over the count.
    let mut evicted: Vec<&str> = plan
        .evictions
        .iter()
        .map(|e| e.allocation.as_str())
        .collect();
    evicted.sort();
    assert_eq!(evicted.len(), 2, "{:?}", plan.evictions);
    assert!(evicted.iter().all(|e| e.starts_with('a')));
    assert_eq!(landed(&plan, 1), vec![Some("a".to_string())]);
    assert!(plan.evictions.iter().all(|e| e.priority < 80));
}

#[test]
fn preemption_never_evicts_equal_or_higher_priority() {
    let mut snap = onprem(vec![node("a", "dc1", 4, 16)]);
    snap.allocations
        .push(alloc("same", "a", "db", 4000, 16, 50));
    let plan = run(&snap, &[group("api", 1000, 1)], &requests(0, 1));
    assert!(plan.evictions.is_empty());
    assert_eq!(plan.unplaced.len(), 1);
    assert!(plan.unplaced[0].explanation.preemption.is_some());
}

fn burst_snapshot() -> Snapshot {
    let mut aws = site("aws", SiteKind::Aws, 10);
    aws.instance_types = vec![
        ty("small", 2, 8, 100_000),
        ty("large", 8, 32, 350_000),
        ty("huge", 32, 128, 1_600_000),
    ];
    Snapshot {
        sites: vec![site("dc1", SiteKind::Static, 0), aws],
        nodes: vec![node("full", "dc1", 1, 1)],
        ..Default::default()
    }
}

#[test]
fn what_does_not_fit_becomes_a_launch_plan_at_the_lowest_price() {
    let snap = burst_snapshot();
    let plan = run(&snap, &[group("web", 1000, 4)], &requests(0, 16));
    assert!(plan.unplaced.is_empty());
    // 16 x (1 CPU, 4Gi) = 16 CPU / 64Gi: two "large" (0.70/h) beat eight
    // "small" (0.80/h) and one "huge" (1.60/h).
    let types: Vec<&str> = plan
        .launches
        .iter()
        .map(|l| l.instance_type.as_str())
        .collect();
    assert_eq!(types, vec!["large", "large"]);
    assert!(plan.launches.iter().all(|l| l.site == "aws"));
    assert!(
        plan.placements
            .iter()
            .all(|p| matches!(p.target, Target::NewVm(0 | 1)))
    );
}

#[test]
fn site_limits_stop_launches_and_say_so() {
    let mut snap = burst_snapshot();
    snap.sites[1].max_nodes = Some(1);
    let plan = run(&snap, &[group("web", 1000, 4)], &requests(0, 16));
    assert_eq!(plan.launches.len(), 1);
    assert_eq!(plan.unplaced.len(), 8);
    let why = plan.unplaced[0].explanation.to_string();
    assert!(why.contains("aws: max_nodes 1 reached"), "{why}");

    let mut snap = burst_snapshot();
    snap.sites[1].budget = Some(400_000);
    let plan = run(&snap, &[group("web", 1000, 4)], &requests(0, 16));
    assert_eq!(plan.launches.len(), 1);
    let why = plan.unplaced[0].explanation.to_string();
    assert!(
        why.contains("aws: budget 0.400000/h reached (0.350000/h in use)"),
        "{why}"
    );

    let plan = run(
        &burst_snapshot(),
        &[group("web", 64_000, 4)],
        &requests(0, 1),
    );
    let why = plan.unplaced[0].explanation.to_string();
    assert!(
        why.contains("aws: no instance type fits 64 CPU, 4Gi memory"),
        "{why}"
    );
}

#[test]
fn launching_vms_count_as_capacity() {
    let mut snap = burst_snapshot();
    snap.launching.push(LaunchingVm {
        id: "i-123".into(),
        site: "aws".into(),
        instance_type: "large".into(),
        reserved: Vec::new(),
    });
    let plan = run(&snap, &[group("web", 1000, 4)], &requests(0, 8));
    assert!(plan.launches.is_empty(), "{:?}", plan.launches);
    assert!(
        plan.placements
            .iter()
            .all(|p| p.target == Target::Launching("i-123".into()))
    );
}

#[test]
fn the_same_input_and_seed_give_the_same_plan() {
    let mut snap = onprem(
        (0..50)
            .map(|i| node(&format!("n{i}"), "dc1", 4, 16))
            .collect(),
    );
    snap.sites.push(burst_snapshot().sites[1].clone());
    let groups = [group("a", 500, 1), group("b", 1500, 3)];
    let mut reqs = requests(0, 100);
    reqs.extend(requests(1, 80));
    let opts = Options {
        seed: 7,
        ..Options::default()
    };
    let one = place(&snap, &groups, &reqs, opts).unwrap();
    let two = place(&snap, &groups, &reqs, opts).unwrap();
    assert_eq!(one, two);
}

#[test]
fn bad_input_is_named() {
    let snap = onprem(vec![node("a", "nowhere", 1, 1)]);
    let e = place(&snap, &[], &[], Options::default())
        .unwrap_err()
        .to_string();
    assert_eq!(e, "node a: unknown site nowhere");
    let mut snap = onprem(vec![node("a", "dc1", 1, 1)]);
    snap.allocations.push(alloc("x", "ghost", "w", 1, 1, 1));
    let e = place(&snap, &[], &[], Options::default())
        .unwrap_err()
        .to_string();
    assert_eq!(e, "allocation x: unknown node ghost");
    let mut g = group("web", 1, 1);
    g.sites = vec!["mars".into()];
    let e = place(&onprem(vec![]), &[g], &requests(0, 1), Options::default())
        .unwrap_err()
        .to_string();
    assert_eq!(e, "workload web: placement.sites: unknown site mars");
    let e = place(&onprem(vec![]), &[], &requests(3, 1), Options::default())
        .unwrap_err()
        .to_string();
    assert_eq!(e, "request g3-0: no group 3");
}

#[test]
fn a_pinned_request_goes_to_its_node_or_waits_and_never_to_a_vm() {
    let mut snap = burst_snapshot();
    snap.nodes.push(node("roomy", "dc1", 8, 16));
    let groups = [group("agent", 2000, 1)];
    let pin = |id: &str, node: &str| Request {
        id: id.into(),
        group: 0,
        node: Some(node.into()),
        existing_only: false,
    };
    let reqs = [pin("a", "roomy"), pin("b", "full"), pin("c", "gone")];
    let plan = run(&snap, &groups, &reqs);
    // Only its node, though the full one leaves room elsewhere.
    assert_eq!(landed(&plan, 3), [Some("roomy".to_string()), None, None]);
    assert!(plan.launches.is_empty(), "{:?}", plan.launches);
    let why: Vec<String> = plan
        .unplaced
        .iter()
        .map(|u| format!("{} {}", reqs[u.request].id, u.explanation))
        .collect();
    assert_eq!(
        why,
        [
            "b 0/1 nodes fit: 1 insufficient cpu",
            "c 0/1 nodes fit: 1 node not joined"
        ]
    );
}

#[test]
fn host_volumes_go_only_to_nodes_that_publish_them_and_never_launch_a_vm() {
    let mut snap = burst_snapshot();
    let mut with = node("with-data", "dc1", 8, 16);
    with.host_volumes = vec!["data".into(), "logs".into()];
    snap.nodes.push(with);
    snap.nodes.push(node("plain", "dc1", 64, 256));
    let mut g = group("db", 1000, 1);
    g.host_volumes = vec!["data".into()];
    let plan = run(&snap, &[g.clone()], &requests(0, 1));
    assert_eq!(landed(&plan, 1), [Some("with-data".to_string())]);
    // A volume no node publishes: it waits, with the reason, and no VM
    // is launched for it (a new VM publishes nothing).
    g.host_volumes = vec!["backups".into()];
    let plan = run(&snap, &[g], &requests(0, 1));
    assert!(plan.launches.is_empty(), "{:?}", plan.launches);
    let why = plan.unplaced[0].explanation.to_string();
    assert!(
        why.contains("do not publish host volume backups")
            && why.contains("aws: a new VM publishes no host volume backups"),
        "{why}"
    );
}
