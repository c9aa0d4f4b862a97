//! Consolidation's rule on fixed states: which node it empties, and when
//! it leaves the fleet alone.

use std::collections::BTreeMap;

use skiff_proto::cluster::{AllocationState, SiteKind};

use super::*;
use crate::control::{AllocationRecord, Moved, NodeRecord, Vacate, WorkloadRecord};
use crate::scheduler::{InstanceType, SiteInfo};
use skiff_proto::cluster::Capacity;

const NOW: i64 = 1_000_000_000;
const MINUTE: i64 = 60_000;

fn rules() -> Rules {
    Rules {
        min_saving: 10_000,
        cool_down_ms: 10 * MINUTE,
        max_moves_per_site_hour: 20,
        max_candidates: 16,
    }
}

/// An on-prem site `dc1` and a cloud site `cloud` whose `c.small` (2 CPUs,
/// 4 GiB) costs 0.10/h and `c.large` 0.20/h.
fn sites() -> Vec<SiteInfo> {
    let ty = |name: &str, cpus: u64, price| InstanceType {
        name: name.into(),
        allocatable: Capacity::new(cpus * 1000, cpus << 31, 0),
        price,
        arch: "amd64".into(),
        held: false,
    };
    vec![
        SiteInfo {
            name: "dc1".into(),
            kind: SiteKind::Static,
            cost_rank: 0,
            max_nodes: None,
            budget: None,
            instance_types: Vec::new(),
            launch_labels: BTreeMap::new(),
        },
        SiteInfo {
            name: "cloud".into(),
            kind: SiteKind::Aws,
            cost_rank: 10,
            max_nodes: None,
            budget: None,
            instance_types: vec![ty("c.small", 2, 100_000), ty("c.large", 4, 200_000)],
            launch_labels: BTreeMap::new(),
        },
    ]
}

fn node(id: &str, site: &str, cpus: u32, ty: Option<&str>) -> NodeRecord {
    let mut n: NodeRecord = serde_json::from_value(serde_json::json!({
        "id": id, "site": site, "status": "ready", "subnet": "10.128.9.0/24",
        "cert_hash": "x", "cert_not_after_ms": 0,
        "capacity": {"cpu": cpus.to_string(), "memory": format!("{}Gi", cpus * 2)},
        "allocatable": {"cpu": cpus.to_string(), "memory": format!("{}Gi", cpus * 2)},
        "joined_ms": 0, "generation": 1
    }))
    .unwrap();
    if let Some(ty) = ty {
        n.instance_id = Some(format!("i-{id}"));
        n.instance_type = Some(ty.into());
    }
    n
}

fn workload(name: &str, replicas: u32, extra: &str) -> WorkloadRecord {
    let spec = skiff_proto::parse_workloads(
        &format!(
            "name: {name}\nimage: busybox\nreplicas: {replicas}\nresources: {{cpu: '1', memory: 1Gi}}\n{extra}"
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

fn running(id: &str, workload: &str, node: &str, site: &str) -> AllocationRecord {
    AllocationRecord {
        id: id.into(),
        workload: workload.into(),
        workload_version: 1,
        node: Some(node.into()),
        site: Some(site.into()),
        state: AllocationState::Running,
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

fn state(
    nodes: Vec<NodeRecord>,
    workloads: Vec<WorkloadRecord>,
    allocs: Vec<AllocationRecord>,
) -> State {
    let mut s = State::default();
    for n in nodes {
        s.nodes.insert(n.id.clone(), n);
    }
    for w in workloads {
        s.workloads.insert(w.spec.name.clone(), w);
    }
    for a in allocs {
        s.allocations.insert(a.id.clone(), a);
    }
    s
}

/// Two small VMs, each half full (one 1-CPU replica of 2 CPUs).
fn half_empty_pair() -> State {
    state(
        vec![
            node("c1", "cloud", 2, Some("c.small")),
            node("c2", "cloud", 2, Some("c.small")),
        ],
        vec![workload("a", 1, ""), workload("b", 1, "")],
        vec![
            running("a-1", "a", "c1", "cloud"),
            running("b-1", "b", "c2", "cloud"),
        ],
    )
}

#[test]
fn a_half_empty_pair_of_vms_is_consolidated_into_one() {
    let s = half_empty_pair();
    let d = plan(&s, NOW, &sites(), &rules())
        .unwrap()
        .expect("a decision");
    assert_eq!(d.node, "c1");
    assert_eq!(d.saving, 100_000);
    assert_eq!(d.replicas, 1);
    assert_eq!(d.onto, BTreeSet::from(["c2".to_string()]));
}

#[test]
fn the_dearer_vm_goes_first_and_only_when_its_work_fits_elsewhere() {
    // c1 is large (0.20/h) and half full; c2 small and half full: c1's
    // one replica fits on c2, so c1 goes, not c2.
    let mut s = half_empty_pair();
    s.nodes
        .insert("c1".into(), node("c1", "cloud", 4, Some("c.large")));
    let d = plan(&s, NOW, &sites(), &rules()).unwrap().unwrap();
    assert_eq!((d.node.as_str(), d.saving), ("c1", 200_000));
    // Both full: nothing fits anywhere, nothing moves.
    let mut s = half_empty_pair();
    for (id, node) in [("a-2", "c1"), ("b-2", "c2")] {
        let w = &id[..1];
        s.allocations
            .insert(id.into(), running(id, w, node, "cloud"));
    }
    assert_eq!(plan(&s, NOW, &sites(), &rules()).unwrap(), None);
}

#[test]
fn work_in_the_cloud_goes_back_on_prem_once_there_is_room() {
    let mut s = state(
        vec![
            node("n1", "dc1", 2, None),
            node("c1", "cloud", 2, Some("c.small")),
        ],
        vec![workload("web", 1, ""), workload("fill", 2, "")],
        vec![
            running("web-1", "web", "c1", "cloud"),
            running("fill-1", "fill", "n1", "dc1"),
            running("fill-2", "fill", "n1", "dc1"),
        ],
    );
    // On-prem is full: the VM stays.
    assert_eq!(plan(&s, NOW, &sites(), &rules()).unwrap(), None);
    // Room frees on-prem: web goes back, and its VM is emptied.
    s.allocations.remove("fill-2");
    let d = plan(&s, NOW, &sites(), &rules()).unwrap().unwrap();
    assert_eq!(d.node, "c1");
    assert_eq!(d.onto, BTreeSet::from(["n1".to_string()]));
    // On-prem nodes are never emptied: they cost nothing more.
    s.allocations.remove("web-1");
    assert_eq!(plan(&s, NOW, &sites(), &rules()).unwrap(), None);
}

#[test]
fn a_workload_moved_within_the_cool_down_is_not_moved_again() {
    let mut s = half_empty_pair();
    // Both workloads moved 5 minutes ago (cool-down 10): none moves.
    for id in ["a-1", "b-1"] {
        let a = s.allocations.get_mut(id).unwrap();
        a.created_ms = NOW - 5 * MINUTE;
        a.moved = Some(Moved {
            from_node: "gone".into(),
            from_site: "cloud".into(),
            cause: MoveCause::Consolidation,
        });
    }
    assert_eq!(plan(&s, NOW, &sites(), &rules()).unwrap(), None);
    // Once the cool-down is over, they may.
    let later = NOW + 5 * MINUTE + 1;
    assert!(plan(&s, later, &sites(), &rules()).unwrap().is_some());
}

#[test]
fn a_site_moves_at_most_its_hourly_budget() {
    let mut s = half_empty_pair();
    let r = Rules {
        max_moves_per_site_hour: 2,
        cool_down_ms: 0,
        ..rules()
    };
    // Two replicas moved off the cloud site within the hour (of a third
    // workload): a third move waits for the hour to pass.
    s.workloads.insert("old".into(), workload("old", 2, ""));
    for id in ["old-1", "old-2"] {
        let mut a = running(id, "old", "gone", "cloud");
        a.state = AllocationState::Stopped;
        a.created_ms = NOW - 30 * MINUTE;
        a.moved = Some(Moved {
            from_node: "gone".into(),
            from_site: "cloud".into(),
            cause: MoveCause::Consolidation,
        });
        s.allocations.insert(id.into(), a);
    }
    assert_eq!(plan(&s, NOW, &sites(), &r).unwrap(), None);
    assert!(plan(&s, NOW + 31 * MINUTE, &sites(), &r).unwrap().is_some());
}

#[test]
fn one_node_is_emptied_at_a_time_and_a_launching_vm_does_not_hold_it_up() {
    let mut s = half_empty_pair();
    s.vms.insert(
        "i-new".into(),
        crate::control::VmRecord {
            id: "i-new".into(),
            site: "cloud".into(),
            instance_type: "c.small".into(),
            node: "c3".into(),
            launched_ms: NOW,
            allocations: Vec::new(),
        },
    );
    // (What waits for it keeps its room: see the test above.)
    assert_eq!(
        plan(&s, NOW, &sites(), &rules()).unwrap().map(|d| d.node),
        Some("c1".into())
    );
    let mut s = half_empty_pair();
    s.nodes.get_mut("c2").unwrap().vacating = Some(Vacate {
        cause: MoveCause::Consolidation,
        since_ms: NOW,
        saving_micros_per_hour: 100_000,
        max_moving: 1,
        notice: String::new(),
    });
    assert_eq!(plan(&s, NOW, &sites(), &rules()).unwrap(), None);
    // A node emptied for its cloud's notice is not consolidation's, and
    // holds nothing up: nothing can move onto it, though.
    let v = s.nodes.get_mut("c2").unwrap().vacating.as_mut().unwrap();
    v.cause = MoveCause::Notice;
    assert_eq!(plan(&s, NOW, &sites(), &rules()).unwrap(), None);
    s.nodes
        .insert("c3".into(), node("c3", "cloud", 2, Some("c.small")));
    let d = plan(&s, NOW, &sites(), &rules()).unwrap().unwrap();
    assert_eq!(
        (d.node.as_str(), d.onto.first().map(String::as_str)),
        ("c1", Some("c3"))
    );
}

#[test]
fn work_that_cannot_move_or_a_saving_below_the_threshold_keeps_the_vm() {
    let cheap = Rules {
        min_saving: 100_001,
        ..rules()
    };
    assert_eq!(
        plan(&half_empty_pair(), NOW, &sites(), &cheap).unwrap(),
        None
    );
    // A batch run finishes where it is.
    let mut s = half_empty_pair();
    let job = skiff_proto::parse_workloads(
        "name: a\nkind: batch\nimage: busybox\nresources: {cpu: '1', memory: 1Gi}\nbatch: {completions: 1}\n",
        skiff_proto::Format::Yaml,
    )
    .unwrap()
    .remove(0);
    s.workloads.get_mut("a").unwrap().spec = job;
    let d = plan(&s, NOW, &sites(), &rules()).unwrap().unwrap();
    assert_eq!(d.node, "c2", "the VM with the batch run stays");
    // A replica that is still starting is not moved.
    let mut s = half_empty_pair();
    s.allocations.get_mut("a-1").unwrap().state = AllocationState::Starting;
    let d = plan(&s, NOW, &sites(), &rules()).unwrap().unwrap();
    assert_eq!(d.node, "c2");
    // A workload kept to the cloud site's other VM by a constraint on its
    // node cannot leave.
    let mut s = half_empty_pair();
    s.workloads.insert(
        "a".into(),
        workload("a", 1, "placement:\n  constraints: [\"node.name == c1\"]\n"),
    );
    s.workloads.insert(
        "b".into(),
        workload("b", 1, "placement:\n  constraints: [\"node.name == c2\"]\n"),
    );
    assert_eq!(plan(&s, NOW, &sites(), &rules()).unwrap(), None);
}

#[test]
fn a_move_never_takes_the_room_of_work_waiting_to_be_placed() {
    // c2 just joined for b's replica, which is not placed yet: c1's work
    // would fit on c2 only by taking b's room (and launching again for b).
    let mut s = half_empty_pair();
    s.allocations.remove("b-1");
    s.workloads.insert("b".into(), workload("b", 1, ""));
    s.allocations.get_mut("a-1").unwrap().node = Some("c1".into());
    s.workloads.get_mut("a").unwrap().spec.resources.cpu = skiff_proto::Cpu::from_millis(1500);
    s.workloads.get_mut("b").unwrap().spec.resources.cpu = skiff_proto::Cpu::from_millis(1500);
    let mut b = running("b-1", "b", "c2", "cloud");
    b.node = None;
    b.site = None;
    b.state = AllocationState::Pending;
    s.allocations.insert("b-1".into(), b);
    assert_eq!(plan(&s, NOW, &sites(), &rules()).unwrap(), None);
    // Once b runs on c2 nothing fits anywhere either; with b gone, c1's
    // work moves to c2 (whose room nothing waits for).
    s.allocations.remove("b-1");
    let d = plan(&s, NOW, &sites(), &rules()).unwrap().unwrap();
    assert_eq!(d.node, "c1");
}
