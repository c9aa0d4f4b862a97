//! Tenancy's cost on placement: `cargo bench -p skiff-gateway --bench tenants`.
//!
//! The same 50,000 replicas (1,000 workloads of 50, mixed shapes) on the
//! same 2,000 nodes, placed by the gateway's own reconcile pass, twice:
//!
//! * `without`: every workload in `default`, no namespace records;
//! * `with`: the workloads spread over 100 namespaces, each with a quota
//!   (CPU, memory, disk, allocations) checked at every submission as
//!   `POST /v1/workloads` checks it, and a policy pinning it to the
//!   on-prem site; a quarter with a cloud spend limit;
//! * `pools`: as `with`, and half the namespaces also pinned to a node
//!   pool by label (which narrows, and so speeds, their search).
//!
//! Each run times the submissions' checks and one whole pass (which
//! places every replica). Prints the placement rate of each (median of 5
//! runs, interleaved), with and without the submissions, and the ratios.
//! Target: `with` within 10% of `without`. Asserts nothing but that every
//! replica was placed.

use std::collections::BTreeMap;
use std::time::Instant;

use skiff_gateway::control::namespaces::{self, NamespaceRecord, Policy, Quota};
use skiff_gateway::control::reconcile;
use skiff_gateway::control::{NodeRecord, State, WorkloadRecord};
use skiff_gateway::scheduler::{InstanceType, SiteInfo};
use skiff_proto::cluster::{Capacity, SiteKind};
use skiff_proto::{ByteSize, Cpu, WorkloadSpec};

const NODES: usize = 2_000;
const NAMESPACES: usize = 100;
const WORKLOADS: usize = 1_000;
const REPLICAS: u32 = 50;
const POOLS: usize = 10;
const RUNS: usize = 5;
const GI: u64 = 1 << 30;
const MI: u64 = 1 << 20;

/// (millicores, bytes) of the workloads.
const SHAPES: [(u64, u64); 6] = [
    (100, 128 * MI),
    (250, 256 * MI),
    (500, 512 * MI),
    (1000, GI),
    (1000, 2 * GI),
    (2000, 4 * GI),
];

fn sites() -> Vec<SiteInfo> {
    vec![
        SiteInfo {
            name: "dc1".into(),
            kind: SiteKind::Static,
            cost_rank: 0,
            max_nodes: None,
            budget: None,
            instance_types: vec![],
            launch_labels: BTreeMap::new(),
        },
        SiteInfo {
            name: "aws".into(),
            kind: SiteKind::Aws,
            cost_rank: 10,
            max_nodes: None,
            budget: None,
            instance_types: vec![InstanceType {
                name: "m.2xlarge".into(),
                allocatable: Capacity::new(8000, 32 * GI, 0),
                price: 384_000,
                arch: "amd64".into(),
                held: false,
            }],
            launch_labels: BTreeMap::new(),
        },
    ]
}

fn node(i: usize) -> NodeRecord {
    serde_json::from_value(serde_json::json!({
        "id": format!("node-{i:05}"), "site": "dc1", "status": "ready",
        "subnet": "10.128.9.0/24", "cert_hash": "x", "cert_not_after_ms": 0,
        "capacity": {"cpu": "32", "memory": "128Gi"},
        "allocatable": {"cpu": "32", "memory": "128Gi"},
        "labels": {"pool": format!("p{}", i % POOLS)},
        "joined_ms": 0, "generation": 1
    }))
    .expect("a node record")
}

fn spec(i: usize, namespace: &str) -> WorkloadSpec {
    let (cpu, mem) = SHAPES[i % SHAPES.len()];
    let mut s = skiff_proto::parse_workloads(
        &format!("name: w{i}\nimage: busybox\nreplicas: {REPLICAS}\n"),
        skiff_proto::Format::Yaml,
    )
    .expect("a spec")
    .remove(0);
    s.namespace = namespace.to_string();
    s.resources.cpu = Cpu::from_millis(cpu);
    s.resources.memory = ByteSize::from_bytes(mem);
    s
}

fn tenant(n: usize, pools: bool) -> NamespaceRecord {
    NamespaceRecord {
        name: format!("team-{n:03}"),
        quota: Quota {
            cpu: Some(Cpu::from_cores(1_000)),
            memory: Some(ByteSize::gib(4_000)),
            disk: Some(ByteSize::gib(1_000)),
            allocations: Some(10_000),
            cloud_spend_per_hour: n.is_multiple_of(4).then(|| "5.00".to_string()),
        },
        policy: Policy {
            sites: vec!["dc1".into()],
            node_labels: if pools && n.is_multiple_of(2) {
                BTreeMap::from([("pool".to_string(), format!("p{}", n % POOLS))])
            } else {
                BTreeMap::new()
            },
            ..Policy::default()
        },
        created_ms: 0,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Without,
    With,
    Pools,
}

/// One run: (placements, seconds in all, seconds of the pass alone).
fn run(scenario: Scenario) -> (usize, f64, f64) {
    let with = scenario != Scenario::Without;
    let mut s = State::default();
    for i in 0..NODES {
        let n = node(i);
        s.nodes.insert(n.id.clone(), n);
    }
    if with {
        for n in 0..NAMESPACES {
            let r = tenant(n, scenario == Scenario::Pools);
            s.namespaces.insert(r.name.clone(), r);
        }
    }
    let specs: Vec<WorkloadSpec> = (0..WORKLOADS)
        .map(|i| {
            let ns = if with {
                format!("team-{:03}", i % NAMESPACES)
            } else {
                skiff_proto::namespace::DEFAULT.to_string()
            };
            spec(i, &ns)
        })
        .collect();
    let sites = sites();
    let t = Instant::now();
    for spec in specs {
        namespaces::check_spec(&s, &spec).expect("within quota and policy");
        s.workloads.insert(
            spec.key(),
            WorkloadRecord {
                spec,
                version: 1,
                created_ms: 0,
                updated_ms: 0,
                job: None,
            },
        );
    }
    let pass = Instant::now();
    let changes = reconcile::reconcile(&s, 1, &sites).expect("a pass");
    let (secs, pass) = (t.elapsed().as_secs_f64(), pass.elapsed().as_secs_f64());
    let placed = changes
        .allocations
        .values()
        .filter(|a| a.node.is_some())
        .count();
    assert_eq!(
        placed,
        WORKLOADS * REPLICAS as usize,
        "every replica is placed"
    );
    (placed, secs, pass)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let scenarios = [Scenario::Without, Scenario::With, Scenario::Pools];
    let mut all: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut pass: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for _ in 0..RUNS {
        for (i, sc) in scenarios.iter().enumerate() {
            let (n, secs, p) = run(*sc);
            all[i].push(n as f64 / secs);
            pass[i].push(n as f64 / p);
        }
    }
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let base = median(all[0].clone());
    let base_pass = median(pass[0].clone());
    for (i, name) in ["without", "with", "pools"].iter().enumerate() {
        let (m, mp) = (median(all[i].clone()), median(pass[i].clone()));
        println!(
            "tenants {name}: namespaces={} placements_per_s={m:.0} ratio={:.3} pass_alone_per_s={mp:.0} pass_ratio={:.3} runs=[{}]",
            if i == 0 { 0 } else { NAMESPACES },
            m / base,
            mp / base_pass,
            fmt(&all[i])
        );
    }
    println!("tenants target: with ratio >= 0.900");
}
