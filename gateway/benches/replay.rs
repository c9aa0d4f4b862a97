//! The replay simulator: a day of submissions, scalings and deletions
//! through the gateway's own control loop (`Control::reconcile`, the
//! placement engine, the liveness check) and its own autoscaler
//! (`Autoscaler::tick`: launches, settling, scale-in, consolidation), all
//! on a simulated clock moved one second at a time, against a simulated
//! cloud: VMs boot in 45–90 s and then join and register with their own
//! single-use token from their user data, as an agent does; a vCPU quota
//! per type; capacity errors on a share of launches; spot VMs that get an
//! interruption notice and are taken two minutes later. Agents are
//! perfect: what is placed on a node runs at once.
//!
//! It prints, with consolidation on and then off on the same trace and
//! the same cloud:
//!
//! * cloud VM-hours and cost against a proven lower bound of the offline
//!   optimum: at every second, the demand beyond what on-prem holds must
//!   run on cloud capacity, which costs at least the cheapest price per
//!   core within each type's quota (a fractional cover: no boot time, no
//!   packing loss, no idle VM; any schedule that runs the trace costs at
//!   least this);
//! * the longest any replica waited past the boot of the VM it waited for
//!   (from its creation until it ran, less the time until that VM was
//!   up; a replica placed on capacity already there counts it all);
//! * VM-minutes idle past the scale-in cool-down (`scale_in_after`), and
//!   the longest such stretch of one VM;
//! * consolidation moves per workload per day.
//!
//! `cargo bench -p skiff-gateway --bench replay [-- TRACE.jsonl]`; without a
//! trace it makes one (an on-prem site that overflows at the day's peak).
//! The trace format is in docs/operations.md ("Replaying a day").

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use skiff_cloud::{
    CloudError, CloudProvider, Instance, InstanceState, InstanceType, LaunchRequest, TAG_NODE,
};
use skiff_gateway::autoscale::Autoscaler;
use skiff_gateway::clock::{Clock, ManualClock};
use skiff_gateway::config::{GatewayConfig, Overrides};
use skiff_gateway::control::{Control, MoveCause};
use skiff_gateway::pki::Pki;
use skiff_gateway::store::MemStore;
use skiff_proto::cluster::AllocationState;
use skiff_proto::wire::v1;

const GI: u64 = 1 << 30;
const DAY_S: u64 = 24 * 3600;

/// On-prem: 8 nodes of 16 cores and 64 GiB.
const ONPREM_NODES: usize = 8;
const ONPREM_CORES: u64 = 16;

/// The cloud's types: (name, cores, GiB, micro-dollars per hour, vCPU
/// quota, spot). Spot is cheaper, with a small quota; the large on-demand
/// type sometimes has no capacity.
const TYPES: [(&str, u64, u64, u64, u64, bool); 3] = [
    ("m.2xlarge", 8, 32, 384_000, 2048, false),
    ("m.4xlarge", 16, 64, 768_000, 2048, false),
    ("s.2xlarge", 8, 32, 134_000, 64, true),
];
/// Share of launches of `m.2xlarge` refused for capacity.
const CAPACITY_ERROR_PCT: u64 = 20;
/// Spot VMs interrupted per VM-hour, in thousandths.
const SPOT_INTERRUPTIONS_PER_KILOHOUR: u64 = 80;
/// Between a spot notice and the VM's end.
const SPOT_NOTICE: Duration = Duration::from_secs(120);
const SCALE_IN_AFTER_S: u64 = 300;
const CONSOLIDATION_INTERVAL_S: u64 = 60;

/// One line of a trace.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    /// A service is created (or updated) with `replicas` of `cpu` and
    /// `memory`.
    Apply {
        name: String,
        replicas: u32,
        cpu: String,
        memory: String,
        #[serde(default)]
        priority: Option<u32>,
    },
    Scale {
        name: String,
        replicas: u32,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
struct Line {
    /// Seconds since the start of the day.
    at_s: u64,
    #[serde(flatten)]
    op: Op,
}

/// xorshift64: the same day and the same cloud every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A day whose demand is a base of long-lived services on-prem and,
/// from 07:00 to 21:00, a bump of shorter-lived ones (30 min to 4 h)
/// that peaks at about twice what on-prem holds, with scalings.
fn synthetic_day() -> Vec<Line> {
    let mut rng = Rng(0x5eed_f1ee7);
    let mut lines = Vec::new();
    let mut n = 0;
    let mut apply = |lines: &mut Vec<Line>, rng: &mut Rng, at_s: u64, life_s: Option<u64>| {
        n += 1;
        let name = format!("w{n}");
        let replicas = 2 + 2 * rng.below(4) as u32;
        let cpu = ["500m", "1000m"][rng.below(2) as usize];
        lines.push(Line {
            at_s,
            op: Op::Apply {
                name: name.clone(),
                replicas,
                cpu: cpu.into(),
                memory: "1Gi".into(),
                priority: None,
            },
        });
        if let Some(life) = life_s {
            // Some scale once in their life.
            if rng.below(3) == 0 {
                lines.push(Line {
                    at_s: at_s + life / 2,
                    op: Op::Scale {
                        name: name.clone(),
                        replicas: (replicas as i64 + [-2i64, 2][rng.below(2) as usize]).max(1)
                            as u32,
                    },
                });
            }
            if at_s + life < DAY_S {
                lines.push(Line {
                    at_s: at_s + life,
                    op: Op::Delete { name },
                });
            }
        }
    };
    // About 90 cores of services that stay all day.
    for i in 0..24 {
        apply(&mut lines, &mut rng, i * 5, None);
    }
    // The bump: arrivals per minute follow a half sine from 07:00 to
    // 21:00 (Little's law: ~0.5/min × 3.75 cores × 135 min ≈ 250 cores at
    // the peak).
    for minute in 0..(DAY_S / 60) {
        let t = minute as f64 / 60.0;
        if !(7.0..21.0).contains(&t) {
            continue;
        }
        let rate = 0.5 * (std::f64::consts::PI * (t - 7.0) / 14.0).sin();
        if (rng.below(1000) as f64) < rate * 1000.0 {
            let life = 1800 + rng.below(3 * 3600 + 1800);
            let at = minute * 60 + rng.below(60);
            apply(&mut lines, &mut rng, at, Some(life));
        }
    }
    lines.sort_by_key(|l| l.at_s);
    lines
}

fn read_trace(path: &str) -> Vec<Line> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut lines: Vec<Line> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}:{}: {e}", i + 1)))
        .collect();
    lines.sort_by_key(|l| l.at_s);
    lines
}

/// A simulated VM.
#[derive(Debug, Clone)]
struct Vm {
    id: String,
    node: String,
    instance_type: String,
    price: u64,
    spot: bool,
    token: String,
    launched_s: u64,
    boots_s: u64,
    /// When it joined and registered.
    joined_s: Option<u64>,
    /// When a spot notice was sent; it is taken [`SPOT_NOTICE`] later.
    noticed_s: Option<u64>,
    ended_s: Option<u64>,
}

/// The simulated cloud: its time is the simulation's.
#[derive(Debug)]
struct SimCloud {
    clock: Arc<ManualClock>,
    start_ms: i64,
    inner: Mutex<SimInner>,
}

#[derive(Debug)]
struct SimInner {
    vms: Vec<Vm>,
    rng: u64,
    launches: u64,
    capacity_errors: u64,
    quota_errors: u64,
}

impl SimCloud {
    fn now_s(&self) -> u64 {
        ((self.clock.now_ms() - self.start_ms) / 1000) as u64
    }
}

fn draw(state: &mut u64, n: u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % n.max(1)
}

#[async_trait::async_trait]
impl CloudProvider for SimCloud {
    async fn instance_types(&self) -> Result<Vec<InstanceType>, CloudError> {
        Ok(TYPES
            .iter()
            .map(|t| InstanceType {
                name: t.0.into(),
                cpu_millis: t.1 * 1000,
                memory_bytes: t.2 * GI,
                price_micros_per_hour: t.3,
                arch: "amd64".into(),
            })
            .collect())
    }

    async fn launch(&self, req: &LaunchRequest) -> Result<Vec<Instance>, CloudError> {
        let now = self.now_s();
        let mut g = self.inner.lock().unwrap();
        let ty = TYPES
            .iter()
            .find(|t| t.0 == req.instance_type)
            .ok_or_else(|| CloudError::Invalid(format!("no type {}", req.instance_type)))?;
        let running = g
            .vms
            .iter()
            .filter(|v| v.instance_type == ty.0 && v.ended_s.is_none())
            .count() as u64;
        if (running + 1) * ty.1 > ty.4 {
            g.quota_errors += 1;
            return Err(CloudError::Quota(format!(
                "{} vCPUs of {} in use, quota {}",
                running * ty.1,
                ty.0,
                ty.4
            )));
        }
        if ty.0 == "m.2xlarge" && draw(&mut g.rng, 100) < CAPACITY_ERROR_PCT {
            g.capacity_errors += 1;
            return Err(CloudError::Capacity(format!("no {} capacity now", ty.0)));
        }
        let token = req
            .user_data
            .0
            .split("SKIFF_AGENT_JOIN_TOKEN=")
            .nth(1)
            .and_then(|r| r.lines().next())
            .ok_or_else(|| CloudError::Invalid("no join token in the user data".into()))?
            .to_string();
        g.launches += 1;
        let id = format!("i-{:08}", g.launches);
        let boot = 45 + draw(&mut g.rng, 46);
        g.vms.push(Vm {
            id: id.clone(),
            node: req.tags.get(TAG_NODE).cloned().unwrap_or_default(),
            instance_type: ty.0.into(),
            price: ty.3,
            spot: ty.5,
            token,
            launched_s: now,
            boots_s: now + boot,
            joined_s: None,
            noticed_s: None,
            ended_s: None,
        });
        Ok(vec![Instance {
            id,
            site: req.site.clone(),
            instance_type: req.instance_type.clone(),
            state: InstanceState::Pending,
            tags: req.tags.clone(),
        }])
    }

    async fn describe(&self, _tag: &str, _value: &str) -> Result<Vec<Instance>, CloudError> {
        let g = self.inner.lock().unwrap();
        Ok(g.vms
            .iter()
            .map(|v| Instance {
                id: v.id.clone(),
                site: "aws".into(),
                instance_type: v.instance_type.clone(),
                state: if v.ended_s.is_some() {
                    InstanceState::Terminated
                } else {
                    InstanceState::Running
                },
                tags: BTreeMap::from([
                    (skiff_cloud::TAG_CLUSTER.to_string(), "replay".to_string()),
                    (TAG_NODE.to_string(), v.node.clone()),
                ]),
            })
            .collect())
    }

    async fn terminate(&self, ids: &[String]) -> Result<(), CloudError> {
        let now = self.now_s();
        let mut g = self.inner.lock().unwrap();
        for v in g.vms.iter_mut().filter(|v| ids.contains(&v.id)) {
            v.ended_s.get_or_insert(now);
        }
        Ok(())
    }
}

/// What one simulated day measured.
#[derive(Debug, Default)]
struct Figures {
    vm_hours: f64,
    cost: f64,
    lower_bound: f64,
    fractional_bound: f64,
    /// VM-hours and cost by instance type.
    by_type: String,
    /// Cores of joined cloud VMs, and cores their replicas asked for.
    cloud_core_hours: f64,
    used_core_hours: f64,
    /// On-prem cores idle while cloud VMs ran work.
    onprem_idle_core_hours: f64,
    vms: usize,
    max_wait_past_boot_s: u64,
    /// The replica that waited longest past boot.
    worst_wait: String,
    idle_past_cool_down_min: f64,
    longest_idle_past_cool_down_s: u64,
    moves: usize,
    most_moves_of_a_workload: usize,
    /// VMs consolidation emptied.
    emptied: usize,
    notice_moves: usize,
    workloads: usize,
    spot_notices: usize,
    capacity_errors: u64,
    quota_errors: u64,
    max_pending_at_end: usize,
    wall_s: f64,
}

fn config(dir: &std::path::Path, consolidation: bool) -> GatewayConfig {
    let mut toml = format!(
        "heartbeat_interval = \"1s\"\ndown_after = \"5s\"\n\
         [consolidation]\nenabled = {consolidation}\ninterval = \"{CONSOLIDATION_INTERVAL_S}s\"\ncool_down = \"10m\"\n\
         [[sites]]\nname = \"onprem\"\nkind = \"static\"\n\
         [[sites]]\nname = \"aws\"\nkind = \"aws\"\ncost_rank = 2\nmax_nodes = 1000\n\
         gateway_url = \"https://gw.example.com:7071\"\njoin_timeout = \"5m\"\nscale_in_after = \"{SCALE_IN_AFTER_S}s\"\n"
    );
    for (name, cores, gib, price, _, spot) in TYPES {
        toml.push_str(&format!(
            "[[sites.instance_types]]\nname = \"{name}\"\ncpu = \"{cores}\"\nmemory = \"{gib}Gi\"\nprice_per_hour = \"{}\"\nspot = {spot}\n",
            price as f64 / 1e6
        ));
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, toml).unwrap();
    GatewayConfig::load(&Overrides {
        config: Some(path),
        state_dir: Some(dir.join("state")),
        ..Overrides::default()
    })
    .unwrap()
}

fn csr(name: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn register(cores: u64, site: &str) -> v1::Register {
    let res = v1::Resources {
        cpu_millis: cores * 1000,
        memory_bytes: cores * 4 * GI,
        disk_bytes: 100 * GI,
    };
    v1::Register {
        agent_version: "replay".into(),
        platform: Some(v1::Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            ..Default::default()
        }),
        capacity: Some(res),
        allocatable: Some(res),
        labels: [("skiff/site".to_string(), site.to_string())].into(),
        max_allocations: 250,
        ..Default::default()
    }
}

/// The cheapest cover of `cores` of demand by whole VMs within each
/// type's quota, per hour (micro-dollars): what any schedule pays at
/// least at that instant (it must run that many cores in the cloud).
/// Memoised: the demand takes few values in a day.
fn cover_rate(cores: f64, memo: &mut HashMap<u64, f64>) -> f64 {
    let need = cores.ceil().max(0.0) as u64;
    if need == 0 {
        return 0.0;
    }
    if let Some(r) = memo.get(&need) {
        return *r;
    }
    // best[c]: the cheapest whole VMs giving at least c cores, each type
    // at most its quota (a bounded knapsack, by types).
    let mut best = vec![f64::INFINITY; need as usize + 1];
    best[0] = 0.0;
    for (_, cpus, _, price, quota, _) in TYPES {
        let max = quota / cpus;
        let mut next = best.clone();
        for (c, &base) in best.iter().enumerate() {
            if base.is_infinite() {
                continue;
            }
            for k in 1..=max {
                let to = (c + (k * cpus) as usize).min(need as usize);
                let cost = base + (k * price) as f64;
                if cost < next[to] {
                    next[to] = cost;
                }
                if to == need as usize {
                    break;
                }
            }
        }
        best = next;
    }
    let r = best[need as usize];
    memo.insert(need, r);
    r
}

/// The same cover with fractions of VMs (a weaker bound, shown beside).
fn fractional_rate(mut cores: f64) -> f64 {
    let mut types: Vec<_> = TYPES.iter().collect();
    types.sort_by(|a, b| (a.3 as f64 / a.1 as f64).total_cmp(&(b.3 as f64 / b.1 as f64)));
    let mut rate = 0.0;
    for t in types {
        let take = cores.min(t.4 as f64);
        rate += take * t.3 as f64 / t.1 as f64;
        cores -= take;
    }
    rate
}

/// What perfect agents report: every allocation placed on a live node
/// runs.
fn starting(
    control: &Control,
    live_nodes: &BTreeSet<String>,
) -> Vec<(String, v1::AllocationStatusReport)> {
    control.read(|s| {
        let mut by_node: BTreeMap<String, Vec<v1::AllocationStatus>> = BTreeMap::new();
        for a in s.allocations.values() {
            if a.state == AllocationState::Starting
                && let Some(n) = a.node.as_ref().filter(|n| live_nodes.contains(*n))
            {
                by_node
                    .entry(n.clone())
                    .or_default()
                    .push(v1::AllocationStatus {
                        allocation_id: a.id.clone(),
                        generation: s.nodes.get(n).map_or(0, |n| n.generation),
                        state: v1::AllocationState::Running as i32,
                        ..Default::default()
                    });
            }
        }
        by_node
            .into_iter()
            .map(|(n, allocations)| {
                (
                    n,
                    v1::AllocationStatusReport {
                        allocations,
                        volumes: Vec::new(),
                    },
                )
            })
            .collect()
    })
}

fn day(trace: &[Line], consolidation: bool) -> Figures {
    let wall = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), consolidation);
    std::fs::create_dir_all(&config.state_dir).unwrap();
    let pki = Arc::new(Pki::open(&config.state_dir, &[]).unwrap());
    let clock = Arc::new(ManualClock::default());
    let start_ms = clock.now_ms();
    let control = Control::open_with_clock(
        config,
        Arc::new(MemStore::default()),
        clock.clone() as Arc<dyn Clock>,
    )
    .unwrap();
    let cloud = Arc::new(SimCloud {
        clock: clock.clone(),
        start_ms,
        inner: Mutex::new(SimInner {
            vms: Vec::new(),
            rng: 0x000c_100d,
            launches: 0,
            capacity_errors: 0,
            quota_errors: 0,
        }),
    });
    let autoscaler = Autoscaler::new(
        Arc::clone(&control),
        pki.clone(),
        BTreeMap::from([("aws".to_string(), cloud.clone() as Arc<dyn CloudProvider>)]),
        "replay".into(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    // On-prem joins first.
    let mut live_nodes: BTreeSet<String> = BTreeSet::new();
    for i in 0..ONPREM_NODES {
        let t = control
            .issue_join_token("onprem", Duration::from_secs(600))
            .unwrap();
        let name = format!("onprem-{i}");
        let j = control
            .join(
                &v1::JoinRequest {
                    token: t.secret,
                    csr_der: csr(&name),
                    requested_name: name.clone(),
                    instance_id: String::new(),
                },
                &pki,
            )
            .unwrap();
        control
            .register(&j.node_id, &register(ONPREM_CORES, "onprem"))
            .unwrap();
        live_nodes.insert(j.node_id);
    }
    let onprem_cores = (ONPREM_NODES as u64 * ONPREM_CORES) as f64;
    let mut next = 0;
    // Demand by workload (cores, as the trace asks), for the lower bound.
    let mut demand: HashMap<String, (u32, f64)> = HashMap::new();
    let mut lower_bound = 0.0;
    let mut cloud_core_s = 0.0;
    // On-prem cores without work while the cloud ran some.
    let mut onprem_idle_core_s = 0.0;
    let mut used_core_s = 0.0;
    let mut fractional = 0.0;
    let mut memo = HashMap::new();
    // When each allocation was seen waiting, and the VM it went to.
    let mut running_at: HashMap<String, u64> = HashMap::new();
    let mut max_wait_past_boot = 0u64;
    let mut worst = String::new();
    // What each allocation said while it waited.
    let mut waits: HashMap<String, String> = HashMap::new();
    // The VM each allocation waited for.
    let mut waited_for: HashMap<String, String> = HashMap::new();
    // Idle stretches of VM nodes: since when.
    let mut idle_since: HashMap<String, u64> = HashMap::new();
    let mut idle_past_s = 0u64;
    let mut longest_idle_past = 0u64;
    let mut spot_notices = 0;
    let mut workloads = BTreeSet::new();
    // Allocations started by moves, and consolidation's moves by workload.
    let mut moved: BTreeSet<String> = BTreeSet::new();
    let mut moves: BTreeMap<String, usize> = BTreeMap::new();
    let mut notice_moves = 0;
    let mut emptied: BTreeSet<String> = BTreeSet::new();
    let step = Duration::from_secs(1);
    for now_s in 0..DAY_S {
        // The trace.
        while next < trace.len() && trace[next].at_s <= now_s {
            match &trace[next].op {
                Op::Apply {
                    name,
                    replicas,
                    cpu,
                    memory,
                    priority,
                } => {
                    let spec = skiff_proto::parse_workloads(
                        &format!(
                            "name: {name}\nimage: busybox\nreplicas: {replicas}\nresources: {{cpu: '{cpu}', memory: {memory}}}\npriority: {}\n",
                            priority.unwrap_or(50)
                        ),
                        skiff_proto::Format::Yaml,
                    )
                    .unwrap()
                    .remove(0);
                    let cores = spec.resources.cpu.millis() as f64 / 1000.0;
                    demand.insert(name.clone(), (*replicas, cores));
                    workloads.insert(name.clone());
                    if control.create_workload(spec.clone()).is_err() {
                        control.update_workload(spec).unwrap();
                    }
                }
                Op::Scale { name, replicas } => {
                    if let Some(d) = demand.get_mut(name) {
                        d.0 = *replicas;
                        control.scale_workload(name, *replicas).unwrap();
                    }
                }
                Op::Delete { name } => {
                    if demand.remove(name).is_some() {
                        control.delete_workload(name, false).unwrap();
                    }
                }
            }
            next += 1;
        }
        let want: f64 = demand.values().map(|(r, c)| *r as f64 * c).sum();
        let excess = (want - onprem_cores).max(0.0);
        lower_bound += cover_rate(excess, &mut memo) / 3600.0;
        fractional += fractional_rate(excess) / 3600.0;
        // VMs that booted join and register with their own token; spot
        // VMs are interrupted now and then, and taken after the notice.
        let (booted, noticed, taken) = {
            let mut g = cloud.inner.lock().unwrap();
            let mut rng = g.rng;
            let mut booted = Vec::new();
            let mut noticed = Vec::new();
            let mut taken = Vec::new();
            for v in g.vms.iter_mut().filter(|v| v.ended_s.is_none()) {
                if v.joined_s.is_none() && v.boots_s <= now_s {
                    v.joined_s = Some(now_s);
                    booted.push(v.clone());
                }
                if v.spot
                    && v.joined_s.is_some()
                    && v.noticed_s.is_none()
                    && draw(&mut rng, 3_600_000) < SPOT_INTERRUPTIONS_PER_KILOHOUR
                {
                    v.noticed_s = Some(now_s);
                    noticed.push(v.node.clone());
                }
                if v.noticed_s
                    .is_some_and(|t| now_s >= t + SPOT_NOTICE.as_secs())
                {
                    v.ended_s = Some(now_s);
                    taken.push(v.node.clone());
                }
            }
            g.rng = rng;
            (booted, noticed, taken)
        };
        for v in booted {
            let cores = TYPES.iter().find(|t| t.0 == v.instance_type).unwrap().1;
            let j = control
                .join(
                    &v1::JoinRequest {
                        token: v.token.clone(),
                        csr_der: csr(&v.node),
                        requested_name: v.node.clone(),
                        instance_id: v.id.clone(),
                    },
                    &pki,
                )
                .unwrap();
            control
                .register(&j.node_id, &register(cores, "aws"))
                .unwrap();
            live_nodes.insert(j.node_id);
        }
        for node in noticed {
            spot_notices += 1;
            // A node already scaled in has nothing left to move.
            if let Err(e) = control.notice(
                &node,
                &v1::Notice {
                    kind: "aws-spot-terminate".into(),
                    message: "spot interruption".into(),
                    deadline_unix_ms: clock.now_ms() + SPOT_NOTICE.as_millis() as i64,
                },
            ) {
                eprintln!("replay: notice for {node}: {e}");
            }
        }
        for node in taken {
            live_nodes.remove(&node);
        }
        // Agents heartbeat, and run what is placed on them at once.
        let ended: BTreeSet<String> = {
            let g = cloud.inner.lock().unwrap();
            g.vms
                .iter()
                .filter(|v| v.ended_s.is_some())
                .map(|v| v.node.clone())
                .collect()
        };
        live_nodes.retain(|n| !ended.contains(n));
        for n in &live_nodes {
            control.heard_from(n);
        }
        let reports = starting(&control, &live_nodes);
        if !reports.is_empty() {
            control.report_many(&reports).unwrap();
        }
        control.check_liveness();
        control.reconcile().unwrap();
        rt.block_on(autoscaler.tick());
        control.reconcile().unwrap();
        // What the passes placed runs within the same second.
        let reports = starting(&control, &live_nodes);
        if !reports.is_empty() {
            control.report_many(&reports).unwrap();
            control.reconcile().unwrap();
        }
        // Waits, and idle VMs.
        let vms: HashMap<String, Vm> = cloud
            .inner
            .lock()
            .unwrap()
            .vms
            .iter()
            .map(|v| (v.node.clone(), v.clone()))
            .collect();
        // When each VM was up: it joined then, or was due to.
        let vm_up: HashMap<&str, u64> = vms
            .values()
            .map(|v| (v.id.as_str(), v.joined_s.unwrap_or(v.boots_s)))
            .collect();
        control.read(|s| {
            for v in s.vms.values() {
                for id in &v.allocations {
                    waited_for.insert(id.clone(), v.id.clone());
                }
            }
            for n in s.nodes.values() {
                if n.vacating
                    .as_ref()
                    .is_some_and(|v| v.cause == MoveCause::Consolidation)
                {
                    emptied.insert(n.id.clone());
                }
            }
            for a in s.allocations.values() {
                if let Some(vm) = a
                    .message
                    .strip_prefix("waiting for VM ")
                    .and_then(|m| m.strip_suffix(" to join"))
                {
                    waited_for.insert(a.id.clone(), vm.to_string());
                }
                if a.state == AllocationState::Pending && !a.message.is_empty() {
                    let seen = waits.entry(a.id.clone()).or_default();
                    if !seen.ends_with(&a.message) {
                        seen.push_str(&format!(" | {now_s}: {}", a.message));
                    }
                }
                if let Some(m) = &a.moved
                    && moved.insert(a.id.clone())
                {
                    match m.cause {
                        MoveCause::Consolidation => *moves.entry(a.workload.clone()).or_default() += 1,
                        MoveCause::Notice => notice_moves += 1,
                    }
                }
                if a.state != AllocationState::Running
                    || a.moved.is_some()
                    || running_at.contains_key(&a.id)
                {
                    continue;
                }
                running_at.insert(a.id.clone(), now_s);
                let created_s = ((a.created_ms - start_ms) / 1000) as u64;
                // It waited for a VM (one launched for it, or one already
                // launching that had room): what counts is how long it
                // waited once that VM was up (or was due up), and nothing
                // if it ran before (room freed elsewhere).
                let up_at = waited_for
                    .get(&a.id)
                    .and_then(|vm| vm_up.get(vm.as_str()))
                    .copied()
                    .unwrap_or(created_s);
                let past = now_s.saturating_sub(up_at.max(created_s));
                let boot = up_at.saturating_sub(created_s);
                if past > max_wait_past_boot {
                    max_wait_past_boot = past;
                    worst = format!(
                        "{} of {} created at {created_s} s, running at {now_s} s on {} ({boot} s until its VM was up; {})",
                        a.id,
                        a.workload,
                        a.node.as_deref().unwrap_or("?"),
                        waits.get(&a.id).map_or("", String::as_str)
                    );
                }
            }
            let busy: BTreeSet<&str> = s
                .allocations
                .values()
                .filter(|a| a.is_live())
                .filter_map(|a| a.node.as_deref())
                .collect();
            for v in vms.values().filter(|v| v.joined_s.is_some() && v.ended_s.is_none()) {
                cloud_core_s += TYPES.iter().find(|t| t.0 == v.instance_type).map_or(0, |t| t.1) as f64;
            }
            let mut onprem_used = 0.0;
            let mut in_cloud = false;
            for a in s.allocations.values().filter(|a| a.is_live()) {
                let Some(w) = s.workloads.get(&a.workload) else {
                    continue;
                };
                let cores = w.spec.resources.cpu.millis() as f64 / 1000.0;
                match a.node.as_ref() {
                    Some(n) if vms.contains_key(n) => {
                        used_core_s += cores;
                        in_cloud = true;
                    }
                    Some(_) => onprem_used += cores,
                    None => {}
                }
            }
            if in_cloud {
                onprem_idle_core_s += onprem_cores - onprem_used;
            }
            for v in vms.values() {
                let up = v.joined_s.is_some() && v.ended_s.is_none();
                let idle = up && !busy.contains(v.node.as_str());
                match (idle, idle_since.get(&v.node).copied()) {
                    (true, None) => {
                        idle_since.insert(v.node.clone(), now_s);
                    }
                    (false, Some(since)) => {
                        idle_since.remove(&v.node);
                        let past = (now_s - since).saturating_sub(SCALE_IN_AFTER_S);
                        idle_past_s += past;
                        longest_idle_past = longest_idle_past.max(past);
                    }
                    _ => {}
                }
            }
        });
        clock.advance(step);
    }
    let end = DAY_S;
    let g = cloud.inner.lock().unwrap();
    let mut vm_hours = 0.0;
    let mut cost = 0.0;
    let mut by_type: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for v in &g.vms {
        let h = (v.ended_s.unwrap_or(end) - v.launched_s) as f64 / 3600.0;
        vm_hours += h;
        cost += h * v.price as f64 / 1e6;
        let e = by_type.entry(v.instance_type.as_str()).or_default();
        e.0 += h;
        e.1 += h * v.price as f64 / 1e6;
    }
    let by_type = by_type
        .iter()
        .map(|(t, (h, c))| format!("{t}: {h:.1} VM-h {c:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    for since in idle_since.values() {
        let past = (end - since).saturating_sub(SCALE_IN_AFTER_S);
        idle_past_s += past;
        longest_idle_past = longest_idle_past.max(past);
    }
    let pending = control.read(|s| {
        s.allocations
            .values()
            .filter(|a| a.state == AllocationState::Pending)
            .count()
    });
    Figures {
        vm_hours,
        cost,
        lower_bound: lower_bound / 1e6,
        fractional_bound: fractional / 1e6,
        by_type,
        cloud_core_hours: cloud_core_s / 3600.0,
        used_core_hours: used_core_s / 3600.0,
        onprem_idle_core_hours: onprem_idle_core_s / 3600.0,
        vms: g.vms.len(),
        max_wait_past_boot_s: max_wait_past_boot,
        worst_wait: worst,
        idle_past_cool_down_min: idle_past_s as f64 / 60.0,
        longest_idle_past_cool_down_s: longest_idle_past,
        moves: moves.values().sum(),
        most_moves_of_a_workload: moves.values().copied().max().unwrap_or(0),
        emptied: emptied.len(),
        notice_moves,
        workloads: workloads.len(),
        spot_notices,
        capacity_errors: g.capacity_errors,
        quota_errors: g.quota_errors,
        max_pending_at_end: pending,
        wall_s: wall.elapsed().as_secs_f64(),
    }
}

fn print(label: &str, f: &Figures) {
    println!(
        "replay {label}: cost={:.2} lower_bound={:.2} ratio={:.3} fractional_bound={:.2} vm_hours={:.1} vms={} \
         max_wait_past_boot_s={} idle_past_cool_down_vm_min={:.1} longest_idle_past_cool_down_s={} \
         emptied={} moves={} moves_per_workload={:.3} most_moves_of_a_workload={} notice_moves={} spot_notices={} capacity_errors={} quota_errors={} \
         pending_at_end={} wall_s={:.0}",
        f.cost,
        f.lower_bound,
        f.cost / f.lower_bound,
        f.fractional_bound,
        f.vm_hours,
        f.vms,
        f.max_wait_past_boot_s,
        f.idle_past_cool_down_min,
        f.longest_idle_past_cool_down_s,
        f.emptied,
        f.moves,
        f.moves as f64 / f.workloads.max(1) as f64,
        f.most_moves_of_a_workload,
        f.notice_moves,
        f.spot_notices,
        f.capacity_errors,
        f.quota_errors,
        f.max_pending_at_end,
        f.wall_s,
    );
    println!("replay {label}: longest wait past boot: {}", f.worst_wait);
    println!(
        "replay {label}: by type: {}; cloud cores {:.0} core-h, used {:.0} core-h ({:.1}%); on-prem idle while the cloud ran work {:.0} core-h",
        f.by_type,
        f.cloud_core_hours,
        f.used_core_hours,
        f.used_core_hours / f.cloud_core_hours * 100.0,
        f.onprem_idle_core_hours
    );
}

fn main() {
    let trace = match std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        Some(path) => read_trace(&path),
        None => synthetic_day(),
    };
    println!("replay: {} trace lines", trace.len());
    let on = day(&trace, true);
    print("consolidation=on", &on);
    let off = day(&trace, false);
    print("consolidation=off", &off);
    println!(
        "replay: consolidation saves {:.1}% (target >= 20%); on: cost/lower_bound {:.3} (target <= 1.10), \
         max wait past boot {} s (target <= 1 s), longest idle past the cool-down {} s (target <= {CONSOLIDATION_INTERVAL_S} s)",
        (1.0 - on.cost / off.cost) * 100.0,
        on.cost / on.lower_bound,
        on.max_wait_past_boot_s,
        on.longest_idle_past_cool_down_s,
    );
}
