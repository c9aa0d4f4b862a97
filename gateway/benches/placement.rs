//! Placement engine benchmark: `cargo bench -p skiff-gateway --bench placement`.
//!
//! Prints one line per scenario:
//!
//! * `c1m`: 10,000 nodes over 3 sites, 1,000,000 allocations of mixed shapes
//!   (10% with constraints, 10% with site spread), placed in one pass; the
//!   rate, the p99 time of one placement decision, and the peak memory.
//! * `packing`: nodes used by bin-pack against first-fit-decreasing and the
//!   volume lower bound, on homogeneous nodes and mixed shapes.
//! * `launch`: 1,000 pending allocations of mixed shapes on a full on-prem
//!   site, planned onto AWS-like instance types; cost over the fractional
//!   lower bound, and the time of the pass.
//!
//! The environment variable `SKIFF_BENCH_SCALE` (default 1.0) scales the
//! c1m scenario down for quick runs.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use skiff_gateway::scheduler::{
    Group, InstanceType, NODE_ADDRESSES, NodeInfo, Options, Request, Scheduler, SiteInfo, Snapshot,
    Target, place,
};
use skiff_proto::Spread;
use skiff_proto::cluster::{Capacity, NodeStatus, SiteKind};

const MI: u64 = 1 << 20;
const GI: u64 = 1 << 30;

/// Deterministic generator for the scenarios (SplitMix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn site(name: &str, kind: SiteKind, rank: u32) -> SiteInfo {
    SiteInfo {
        name: name.into(),
        kind,
        cost_rank: rank,
        max_nodes: None,
        budget: None,
        instance_types: vec![],
        launch_labels: BTreeMap::new(),
    }
}

fn node(id: String, site: &str, cpu_cores: u64, mem_gib: u64) -> NodeInfo {
    NodeInfo {
        id,
        site: site.into(),
        status: NodeStatus::Ready,
        allocatable: Capacity::new(cpu_cores * 1000, mem_gib * GI, 0),
        addresses: NODE_ADDRESSES,
        labels: BTreeMap::new(),
        arch: "amd64".into(),
        os: "linux".into(),
        price: 0,
        host_volumes: Vec::new(),
    }
}

fn group(name: String, cpu_millis: u64, mem: u64) -> Group {
    Group {
        workload: name,
        demand: Capacity::new(cpu_millis, mem, 0),
        address: true,
        priority: 50,
        host_ports: vec![],
        sites: vec![],
        prefer: vec![],
        spread: None,
        max_skew: 1,
        constraints: vec![],
        distinct_nodes: false,
        host_volumes: Vec::new(),
        budget: None,
    }
}

/// (millicores, bytes) of the mixed shapes.
const SHAPES: [(u64, u64); 6] = [
    (100, 128 * MI),
    (250, 256 * MI),
    (500, 512 * MI),
    (1000, GI),
    (1000, 4 * GI),
    (2000, 4 * GI),
];

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .map_or(0, |kib| kib / 1024)
}

fn c1m(scale: f64) {
    let n_nodes = (10_000.0 * scale) as usize;
    let n_allocs = (1_000_000.0 * scale) as usize;
    let mut rng = Rng(42);
    let sites = ["dc1", "dc2", "aws"];
    let snap = Snapshot {
        sites: vec![
            site("dc1", SiteKind::Static, 0),
            site("dc2", SiteKind::Static, 1),
            site("aws", SiteKind::Aws, 10),
        ],
        nodes: (0..n_nodes)
            .map(|i| {
                let s = sites[[0, 0, 0, 0, 0, 1, 1, 1, 2, 2][i % 10]];
                let (cores, mem) = [(96, 384), (128, 512), (160, 640)][rng.below(3) as usize];
                let mut n = node(format!("node-{i:05}"), s, cores, mem);
                n.labels
                    .insert("disk".into(), ["ssd", "hdd"][rng.below(2) as usize].into());
                n.labels
                    .insert("zone".into(), ["a", "b", "c"][rng.below(3) as usize].into());
                n.labels
                    .insert("rack".into(), format!("r{}", rng.below(40)));
                n
            })
            .collect(),
        ..Default::default()
    };
    // Workloads of 100 replicas each.
    let replicas = 100;
    let n_groups = n_allocs / replicas;
    let groups: Vec<Group> = (0..n_groups)
        .map(|i| {
            let (cpu, mem) = SHAPES[rng.below(SHAPES.len() as u64) as usize];
            let mut g = group(format!("w{i}"), cpu, mem);
            g.priority = 10 + rng.below(80) as u32;
            match i % 10 {
                0 => {
                    g.constraints = vec![
                        ["node.labels.disk == ssd", "node.labels.zone in (a, b)"]
                            [rng.below(2) as usize]
                            .parse()
                            .unwrap(),
                    ]
                }
                1 => {
                    g.spread = Some(Spread::Site);
                    g.max_skew = 1 + rng.below(3) as u32;
                }
                _ => {}
            }
            g
        })
        .collect();
    let requests: Vec<Request> = (0..n_groups * replicas)
        .map(|i| Request {
            id: format!("a{i}"),
            group: i / replicas,
            node: None,
            existing_only: false,
        })
        .collect();

    let start = Instant::now();
    let mut s = Scheduler::new(&snap, &groups, Options::default()).unwrap();
    let order = s.order(&requests);
    let mut decisions = Vec::with_capacity(requests.len());
    for r in order {
        let t = Instant::now();
        s.place_on_nodes(&requests, r);
        decisions.push(t.elapsed().as_nanos() as u64);
    }
    let finish = Instant::now();
    let plan = s.finish(&requests);
    let finish_seconds = finish.elapsed().as_secs_f64();
    let seconds = start.elapsed().as_secs_f64();
    decisions.sort_unstable();
    let placed = plan.placements.len();
    println!(
        "placement scenario=c1m nodes={n_nodes} allocations={} seconds={seconds:.3} rate={:.0}/s p99_decision_us={:.1} p50_decision_us={:.1} placed={placed} unplaced={} launches={} finish_seconds={finish_seconds:.3} peak_rss_mib={}",
        requests.len(),
        placed as f64 / seconds,
        percentile(&decisions, 0.99) as f64 / 1000.0,
        percentile(&decisions, 0.50) as f64 / 1000.0,
        plan.unplaced.len(),
        plan.launches.len(),
        peak_rss_mib(),
    );
}

/// Bin-pack against first-fit-decreasing on identical nodes.
fn packing() {
    let n_nodes = 2000;
    let (cap_cpu, cap_mem) = (32_000u64, 128 * GI);
    let mut rng = Rng(7);
    let snap = Snapshot {
        sites: vec![site("dc1", SiteKind::Static, 0)],
        nodes: (0..n_nodes)
            .map(|i| node(format!("n{i:04}"), "dc1", 32, 128))
            .collect(),
        ..Default::default()
    };
    let groups: Vec<Group> = (0..400)
        .map(|i| {
            let (cpu, mem) = SHAPES[rng.below(SHAPES.len() as u64) as usize];
            group(format!("w{i}"), cpu, mem)
        })
        .collect();
    let mut requests = Vec::new();
    for (gi, _) in groups.iter().enumerate() {
        for r in 0..(20 + rng.below(80)) {
            requests.push(Request {
                id: format!("w{gi}-{r}"),
                group: gi,
                node: None,
                existing_only: false,
            });
        }
    }
    let plan = place(&snap, &groups, &requests, Options::default()).unwrap();
    assert!(plan.unplaced.is_empty(), "the packing scenario must fit");
    let used: std::collections::BTreeSet<&Target> =
        plan.placements.iter().map(|p| &p.target).collect();

    // First-fit decreasing (by memory, then cpu) over the same nodes.
    let mut items: Vec<(u64, u64)> = requests
        .iter()
        .map(|r| {
            let d = &groups[r.group].demand;
            (d.memory.bytes(), d.cpu.millis())
        })
        .collect();
    items.sort_unstable_by(|a, b| b.cmp(a));
    let mut bins: Vec<(u64, u64)> = Vec::new();
    for (mem, cpu) in &items {
        match bins
            .iter_mut()
            .find(|(bm, bc)| bm + mem <= cap_mem && bc + cpu <= cap_cpu)
        {
            Some(b) => {
                b.0 += mem;
                b.1 += cpu;
            }
            None => bins.push((*mem, *cpu)),
        }
    }
    let total_mem: u64 = items.iter().map(|i| i.0).sum();
    let total_cpu: u64 = items.iter().map(|i| i.1).sum();
    let lower = (total_mem.div_ceil(cap_mem)).max(total_cpu.div_ceil(cap_cpu));
    println!(
        "packing scenario=mixed allocations={} nodes_used={} ffd_nodes={} lower_bound={lower} over_ffd_pct={:.2}",
        requests.len(),
        used.len(),
        bins.len(),
        (used.len() as f64 / bins.len() as f64 - 1.0) * 100.0,
    );
}

/// 1,000 pending allocations, nothing free on-prem: the launch plan.
fn launch() {
    let mut rng = Rng(99);
    let mut aws = site("aws", SiteKind::Aws, 10);
    // Shapes and prices in the spirit of general, compute and memory
    // optimised families (micro-dollars per hour).
    aws.instance_types = [
        ("m.large", 2, 8, 96_000),
        ("m.xlarge", 4, 16, 192_000),
        ("m.2xlarge", 8, 32, 384_000),
        ("m.4xlarge", 16, 64, 768_000),
        ("c.2xlarge", 8, 16, 340_000),
        ("c.4xlarge", 16, 32, 680_000),
        ("r.xlarge", 4, 32, 252_000),
        ("r.2xlarge", 8, 64, 504_000),
    ]
    .into_iter()
    .map(|(name, cores, mem, price)| InstanceType {
        name: name.into(),
        allocatable: Capacity::new(cores * 1000, mem * GI, 0),
        price,
        arch: "amd64".into(),
        held: false,
    })
    .collect();
    let types = aws.instance_types.clone();
    let snap = Snapshot {
        sites: vec![site("dc1", SiteKind::Static, 0), aws],
        nodes: vec![node("full".into(), "dc1", 1, 1)],
        ..Default::default()
    };
    let groups: Vec<Group> = (0..50)
        .map(|i| {
            let (cpu, mem) = SHAPES[rng.below(SHAPES.len() as u64) as usize];
            group(format!("w{i}"), cpu, mem)
        })
        .collect();
    let requests: Vec<Request> = (0..1000)
        .map(|i| Request {
            id: format!("p{i}"),
            group: i % groups.len(),
            node: None,
            existing_only: false,
        })
        .collect();
    let start = Instant::now();
    let plan = place(&snap, &groups, &requests, Options::default()).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    assert!(plan.unplaced.is_empty());
    let (cpu, mem): (u64, u64) = requests.iter().fold((0, 0), |(c, m), r| {
        let d = &groups[r.group].demand;
        (c + d.cpu.millis(), m + d.memory.bytes())
    });
    let shape = |t: &InstanceType| {
        (
            t.allocatable.cpu.millis(),
            t.allocatable.memory.bytes(),
            t.price,
        )
    };
    let all: Vec<(u64, u64, u64)> = types.iter().map(shape).collect();
    let vms: Vec<(u64, u64, u64)> = plan
        .launches
        .iter()
        .map(|l| shape(types.iter().find(|t| t.name == l.instance_type).unwrap()))
        .collect();
    println!(
        "launch scenario=burst1000 pending={} {} seconds={seconds:.4}",
        requests.len(),
        common::cover(&all, &vms, cpu, mem)
    );
}

fn main() {
    let wants = common::scenarios();
    let scale: f64 = std::env::var("SKIFF_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    if wants("packing") {
        packing();
    }
    if wants("launch") {
        launch();
    }
    if wants("c1m") {
        c1m(scale);
    }
}
