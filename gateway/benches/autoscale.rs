//! The autoscaler's speed and accuracy, through the gateway's own control
//! loop and autoscaler (in process; the cloud is the in-memory fake, with
//! every launch call timed):
//!
//! * `latency`: a workload that fits nowhere is stored (as `POST
//!   /v1/workloads` stores it) → the first launch call for it. Target:
//!   median ≤ 1 s.
//! * `burst1000`: 1,000 pending allocations of mixed shapes (50 workloads
//!   of 20 replicas), nothing free on-prem: one placement pass plans the
//!   VMs, one autoscaler pass launches them; what was launched is compared
//!   with a lower bound of the ideal (cost and capacity). Target: ≤ 10 %
//!   over-provisioning. A second pass must launch nothing.
//!
//! `cargo bench -p skiff-gateway --bench autoscale [latency|burst1000]`

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff_cloud::fake::FakeCloud;
use skiff_cloud::{CloudError, CloudProvider, Instance, InstanceType, LaunchRequest};
use skiff_gateway::autoscale::Autoscaler;
use skiff_gateway::config::{GatewayConfig, Overrides};
use skiff_gateway::control::Control;
use skiff_gateway::pki::Pki;
use skiff_gateway::store::RedbStore;

const GI: u64 = 1 << 30;
const MI: u64 = 1 << 20;

/// The fake cloud, with the time of every launch call.
#[derive(Debug)]
struct Timed {
    inner: FakeCloud,
    launches: Mutex<Vec<Instant>>,
}

#[async_trait::async_trait]
impl CloudProvider for Timed {
    async fn instance_types(&self) -> Result<Vec<InstanceType>, CloudError> {
        self.inner.instance_types().await
    }
    async fn launch(&self, req: &LaunchRequest) -> Result<Vec<Instance>, CloudError> {
        self.launches.lock().unwrap().push(Instant::now());
        self.inner.launch(req).await
    }
    async fn describe(&self, tag: &str, value: &str) -> Result<Vec<Instance>, CloudError> {
        self.inner.describe(tag, value).await
    }
    async fn terminate(&self, ids: &[String]) -> Result<(), CloudError> {
        self.inner.terminate(ids).await
    }
}

/// (name, cores, GiB, micro-dollars per hour): general, compute and
/// memory optimised families.
const TYPES: [(&str, u64, u64, u64); 8] = [
    ("m.large", 2, 8, 96_000),
    ("m.xlarge", 4, 16, 192_000),
    ("m.2xlarge", 8, 32, 384_000),
    ("m.4xlarge", 16, 64, 768_000),
    ("c.2xlarge", 8, 16, 340_000),
    ("c.4xlarge", 16, 32, 680_000),
    ("r.xlarge", 4, 32, 252_000),
    ("r.2xlarge", 8, 64, 504_000),
];

/// (millicores, bytes) of the workloads.
const SHAPES: [(u64, u64); 6] = [
    (100, 128 * MI),
    (250, 256 * MI),
    (500, 512 * MI),
    (1000, GI),
    (1000, 4 * GI),
    (2000, 4 * GI),
];

struct Fleet {
    control: Arc<Control>,
    autoscaler: Arc<Autoscaler>,
    cloud: Arc<Timed>,
    _dir: tempfile::TempDir,
}

fn fleet(types: &[(&str, u64, u64, u64)]) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let mut toml = String::from(
        "[[sites]]\nname = \"onprem\"\nkind = \"static\"\n\
         [[sites]]\nname = \"aws\"\nkind = \"aws\"\ncost_rank = 2\nmax_nodes = 100000\n\
         gateway_url = \"https://gw.example.com:7071\"\n",
    );
    for (name, cores, gib, price) in types {
        toml.push_str(&format!(
            "[[sites.instance_types]]\nname = \"{name}\"\ncpu = \"{cores}\"\nmemory = \"{gib}Gi\"\nprice_per_hour = \"{}\"\n",
            *price as f64 / 1e6
        ));
    }
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, toml).unwrap();
    let config = GatewayConfig::load(&Overrides {
        config: Some(path),
        state_dir: Some(dir.path().join("state")),
        ..Overrides::default()
    })
    .unwrap();
    std::fs::create_dir_all(&config.state_dir).unwrap();
    let store = RedbStore::open(&config.state_dir.join("state.redb")).unwrap();
    let pki = Arc::new(Pki::open(&config.state_dir, &[]).unwrap());
    let control = Control::open(config, Arc::new(store)).unwrap();
    let cloud = Arc::new(Timed {
        inner: FakeCloud::new(
            types
                .iter()
                .map(|(name, cores, gib, price)| InstanceType {
                    name: name.to_string(),
                    cpu_millis: cores * 1000,
                    memory_bytes: gib * GI,
                    price_micros_per_hour: *price,
                    arch: "amd64".into(),
                })
                .collect(),
        ),
        launches: Mutex::new(Vec::new()),
    });
    let providers: BTreeMap<String, Arc<dyn CloudProvider>> =
        BTreeMap::from([("aws".to_string(), cloud.clone() as Arc<dyn CloudProvider>)]);
    let autoscaler = Arc::new(Autoscaler::new(
        Arc::clone(&control),
        pki,
        providers,
        "bench".into(),
    ));
    Fleet {
        control,
        autoscaler,
        cloud,
        _dir: dir,
    }
}

/// Stores a workload as `POST /v1/workloads` does (which asks for a pass).
fn submit(c: &Control, yaml: &str) {
    let spec = skiff_proto::parse_workloads(yaml, skiff_proto::Format::Yaml)
        .unwrap()
        .remove(0);
    c.create_workload(spec).unwrap();
}

fn latency(rt: &tokio::runtime::Runtime) {
    let f = fleet(&TYPES[..1]);
    let _guard = rt.enter();
    f.control.spawn_loops();
    Arc::clone(&f.autoscaler).spawn();
    let runs = 25;
    let mut ms = Vec::new();
    for i in 0..runs {
        // A whole m.large each: no launching VM has room for it.
        let t0 = Instant::now();
        submit(
            &f.control,
            &format!("name: w{i}\nimage: busybox\nresources: {{cpu: '2', memory: 1Gi}}\n"),
        );
        let deadline = t0 + Duration::from_secs(10);
        let at = loop {
            if let Some(t) = f.cloud.launches.lock().unwrap().get(i).copied() {
                break t;
            }
            assert!(Instant::now() < deadline, "no launch for w{i}");
            std::thread::sleep(Duration::from_millis(1));
        };
        ms.push(at.duration_since(t0).as_secs_f64() * 1000.0);
        // Let the pass that follows the launch settle.
        std::thread::sleep(Duration::from_millis(300));
    }
    let launched = f.cloud.launches.lock().unwrap().len();
    ms.sort_by(f64::total_cmp);
    println!(
        "latency unplaceable->first_launch_call runs={runs} median_ms={:.1} p90_ms={:.1} max_ms={:.1} min_ms={:.1} launches={launched} (target median <= 1000 ms)",
        ms[runs / 2],
        ms[runs * 9 / 10],
        ms[runs - 1],
        ms[0],
    );
}

fn burst(rt: &tokio::runtime::Runtime) {
    let f = fleet(&TYPES);
    let mut seed: u64 = 99;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut cpu, mut mem) = (0u64, 0u64);
    for i in 0..50 {
        let (c, m) = SHAPES[(next() % SHAPES.len() as u64) as usize];
        cpu += 20 * c;
        mem += 20 * m;
        submit(
            &f.control,
            &format!(
                "name: w{i}\nimage: busybox\nreplicas: 20\nresources: {{cpu: {c}m, memory: {}Mi}}\n",
                m / MI
            ),
        );
    }
    let t = Instant::now();
    f.control.reconcile().unwrap();
    let plan_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    rt.block_on(f.autoscaler.tick());
    let launch_s = t.elapsed().as_secs_f64();
    let launched = f.cloud.inner.instances();
    // The launching VMs are capacity: another pass launches nothing.
    f.control.reconcile().unwrap();
    rt.block_on(f.autoscaler.tick());
    let second = f.cloud.inner.instances().len() - launched.len();
    let shape = |t: &(&str, u64, u64, u64)| (t.1 * 1000, t.2 * GI, t.3);
    let types: Vec<(u64, u64, u64)> = TYPES.iter().map(shape).collect();
    let vms: Vec<(u64, u64, u64)> = launched
        .iter()
        .map(|i| shape(TYPES.iter().find(|t| t.0 == i.instance_type).unwrap()))
        .collect();
    let waiting = f.control.read(|s| {
        s.allocations
            .values()
            .filter(|a| a.message.starts_with("waiting for VM"))
            .count()
    });
    println!(
        "burst1000 pending=1000 waiting_for_launched_vms={waiting} second_pass_vms={second} {} plan_s={plan_s:.3} launch_calls_s={launch_s:.3} (target: over_ideal_pct <= 10)",
        common::cover(&types, &vms, cpu, mem)
    );
}

fn main() {
    let wants = common::scenarios();
    let rt = tokio::runtime::Runtime::new().unwrap();
    if wants("latency") {
        latency(&rt);
    }
    if wants("burst1000") {
        burst(&rt);
    }
}
