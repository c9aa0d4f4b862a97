//! Properties that must hold for any fleet and any batch.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use skiff_proto::cluster::{Capacity, NodeStatus, SiteKind};
use skiff_proto::{Protocol, Spread};

use super::tests::{group, node, site, ty};
use super::*;

const GI: u64 = 1 << 30;

#[derive(Debug, Clone)]
struct Case {
    snap: Snapshot,
    groups: Vec<Group>,
    requests: Vec<Request>,
    seed: u64,
}

fn arb_case() -> impl Strategy<Value = Case> {
    let nodes = prop::collection::vec(
        (0usize..3, 1u64..16, 1u64..64, 0u8..6, prop::bool::ANY),
        0..24,
    );
    let existing = prop::collection::vec(
        (
            0usize..24,
            1u64..4000,
            1u64..8,
            1u32..100,
            prop::option::of(0u16..3),
        ),
        0..30,
    );
    let groups = prop::collection::vec(
        (
            (1u64..6000, 1u64..24, 1u32..100, 1usize..12),
            (
                0u8..4,
                0u8..3,
                prop::bool::ANY,
                prop::option::of(0u16..3),
                1u32..3,
            ),
        ),
        1..6,
    );
    (nodes, existing, groups, any::<u64>(), 0u8..3).prop_map(
        |(nodes, existing, groups, seed, budget)| {
            let mut sites = vec![
                site("dc1", SiteKind::Static, 0),
                site("dc2", SiteKind::Static, 1),
                site("aws", SiteKind::Aws, 10),
            ];
            sites[2].instance_types = vec![ty("m", 4, 16, 200_000), ty("l", 16, 64, 700_000)];
            sites[2].max_nodes = Some(6);
            sites[2].budget = [None, Some(1_000_000), Some(3_000_000)][budget as usize];
            sites[2].launch_labels.insert("disk".into(), "ssd".into());
            let names = ["dc1", "dc2", "aws"];
            let snap_nodes: Vec<NodeInfo> = nodes
                .iter()
                .enumerate()
                .map(|(i, &(s, cores, mem, status, ssd))| {
                    let mut n = node(&format!("n{i}"), names[s], cores, mem);
                    n.status = match status {
                        0 => NodeStatus::Down,
                        1 => NodeStatus::Cordoned,
                        _ => NodeStatus::Ready,
                    };
                    n.labels
                        .insert("disk".into(), if ssd { "ssd" } else { "hdd" }.into());
                    n
                })
                .collect();
            let mut allocations = Vec::new();
            if !snap_nodes.is_empty() {
                for (i, &(n, cpu, mem, prio, port)) in existing.iter().enumerate() {
                    let n = n % snap_nodes.len();
                    allocations.push(ExistingAllocation {
                        id: format!("x{i}"),
                        node: snap_nodes[n].id.clone(),
                        workload: format!("old{}", i % 3),
                        demand: Capacity::new(cpu, mem * GI / 4, 0),
                        address: true,
                        priority: prio,
                        host_ports: port
                            .map(|p| vec![(8000 + p, Protocol::Tcp)])
                            .unwrap_or_default(),
                    });
                }
            }
            let mut gs = Vec::new();
            let mut requests = Vec::new();
            for (gi, &((cpu, mem, prio, replicas), (constraint, spread, distinct, port, skew))) in
                groups.iter().enumerate()
            {
                let mut g = group(&format!("w{gi}"), cpu, 1);
                g.demand = Capacity::new(cpu, mem * GI / 4, 0);
                g.priority = prio;
                g.constraints = match constraint {
                    0 => vec![],
                    1 => vec!["node.labels.disk == ssd".parse().unwrap()],
                    2 => vec!["node.labels.disk != ssd".parse().unwrap()],
                    _ => vec!["node.site in (dc1, aws)".parse().unwrap()],
                };
                g.spread = match spread {
                    1 => Some(Spread::Site),
                    2 => Some(Spread::Node),
                    _ => None,
                };
                g.max_skew = skew;
                g.host_ports = port
                    .map(|p| vec![(8000 + p, Protocol::Tcp)])
                    .unwrap_or_default();
                g.distinct_nodes = distinct || port.is_some();
                for r in 0..replicas {
                    requests.push(Request {
                        id: format!("w{gi}-{r}"),
                        group: gi,
                        node: None,
                        existing_only: false,
                    });
                }
                gs.push(g);
            }
            // Allocations whose node allocatable is exceeded are fine: the
            // scheduler must simply not add to an over-full node.
            Case {
                snap: Snapshot {
                    sites,
                    nodes: snap_nodes,
                    allocations,
                    launching: vec![],
                    budgets: vec![],
                },
                groups: gs,
                requests,
                seed,
            }
        },
    )
}

fn attrs_of_node<'a>(n: &'a NodeInfo) -> impl Fn(&skiff_proto::Attribute) -> Option<&'a str> {
    move |a: &skiff_proto::Attribute| match a {
        skiff_proto::Attribute::Label(k) => n.labels.get(k).map(String::as_str),
        skiff_proto::Attribute::Name => Some(n.id.as_str()),
        skiff_proto::Attribute::Site => Some(n.site.as_str()),
        skiff_proto::Attribute::Arch => Some(n.arch.as_str()),
        skiff_proto::Attribute::Os => Some(n.os.as_str()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn plans_are_sound(case in arb_case()) {
        let opts = Options { seed: case.seed, ..Options::default() };
        let plan = place(&case.snap, &case.groups, &case.requests, opts).unwrap();
        let again = place(&case.snap, &case.groups, &case.requests, opts).unwrap();
        prop_assert_eq!(&plan, &again, "not deterministic");

        // Every request is placed or explained, exactly once.
        let mut seen = vec![0; case.requests.len()];
        for p in &plan.placements { seen[p.request] += 1; }
        for u in &plan.unplaced {
            seen[u.request] += 1;
            prop_assert_eq!(u.explanation.nodes, case.snap.nodes.len());
        }
        prop_assert!(seen.iter().all(|&s| s == 1), "{:?}", seen);

        // Never over-commit a joined node, never double-book a host port.
        let evicted: Vec<&str> = plan.evictions.iter().map(|e| e.allocation.as_str()).collect();
        let by_id: HashMap<&str, &NodeInfo> = case.snap.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        let mut used: HashMap<&str, (u64, u64)> = HashMap::new();
        let mut ports: HashMap<&str, Vec<u16>> = HashMap::new();
        let mut placed_on: BTreeMap<&str, u64> = BTreeMap::new();
        for a in case.snap.allocations.iter().filter(|a| !evicted.contains(&a.id.as_str())) {
            let u = used.entry(a.node.as_str()).or_default();
            u.0 += a.demand.cpu.millis();
            u.1 += a.demand.memory.bytes();
            ports.entry(a.node.as_str()).or_default().extend(a.host_ports.iter().map(|p| p.0));
        }
        for p in &plan.placements {
            let g = &case.groups[case.requests[p.request].group];
            if let Target::Node(id) = &p.target {
                let n = by_id[id.as_str()];
                prop_assert_eq!(n.status, NodeStatus::Ready);
                let u = used.entry(id.as_str()).or_default();
                u.0 += g.demand.cpu.millis();
                u.1 += g.demand.memory.bytes();
                *placed_on.entry(id.as_str()).or_default() += 1;
                prop_assert!(u.0 <= n.allocatable.cpu.millis() && u.1 <= n.allocatable.memory.bytes(),
                    "node {} over-committed", id);
                for (port, _) in &g.host_ports {
                    let held = ports.entry(id.as_str()).or_default();
                    prop_assert!(!held.contains(port), "port {} twice on {}", port, id);
                    held.push(*port);
                }
                // Constraints and allowed sites hold on the node.
                for c in &g.constraints {
                    prop_assert!(c.matches(attrs_of_node(n)), "{} broken on {}", c, id);
                }
            }
        }

        // Distinct nodes and preemption rules.
        for (gi, g) in case.groups.iter().enumerate() {
            let mut nodes: Vec<&Target> = plan.placements.iter()
                .filter(|p| case.requests[p.request].group == gi)
                .map(|p| &p.target)
                .collect();
            if g.distinct_nodes {
                let n = nodes.len();
                nodes.sort_by_key(|t| format!("{t:?}"));
                nodes.dedup();
                prop_assert_eq!(nodes.len(), n, "{} shares a node", g.workload);
            }
        }
        for e in &plan.evictions {
            let g = &case.groups[case.requests[e.for_request].group];
            prop_assert!(e.priority < g.priority, "evicted priority {} for {}", e.priority, g.priority);
        }

        // Site spread never exceeds max skew over the sites that got replicas
        // or could have (the groups here have no earlier replicas).
        for (gi, g) in case.groups.iter().enumerate() {
            if g.spread != Some(Spread::Site) { continue; }
            let mut per_site: BTreeMap<String, u32> = BTreeMap::new();
            for p in plan.placements.iter().filter(|p| case.requests[p.request].group == gi) {
                let s = match &p.target {
                    Target::Node(id) => by_id[id.as_str()].site.clone(),
                    _ => "aws".to_string(),
                };
                *per_site.entry(s).or_default() += 1;
            }
            if let (Some(max), Some(min)) = (per_site.values().max(), per_site.values().min()) {
                prop_assert!(max - min <= g.max_skew, "{}: {:?}", g.workload, per_site);
            }
        }

        // Launches respect the site's limits.
        let aws = &case.snap.sites[2];
        prop_assert!(plan.launches.len() as u32 <= aws.max_nodes.unwrap());
        if let Some(budget) = aws.budget {
            let spend: u64 = plan.launches.iter()
                .map(|l| aws.instance_types.iter().find(|t| t.name == l.instance_type).unwrap().price)
                .sum();
            prop_assert!(spend <= budget);
        }
    }
}
