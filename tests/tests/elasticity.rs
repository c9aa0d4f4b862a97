//! Elasticity end to end, as root, on the local cloud provider (real
//! agents in network namespaces as VMs): consolidation empties a VM whose
//! work fits elsewhere, freed on-prem capacity takes cloud work back,
//! scaling down goes by cost, a flapping load moves nothing twice within
//! the cool-down, and a spot notice (from a fake instance metadata
//! service) moves a VM's work before the VM goes. Every emptied VM scales
//! in.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_cloud::local::{LocalCloud, LocalConfig};
use skiff_cloud::{CloudProvider, InstanceState, TAG_SITE};
use skiff_e2e::{Agent, Gateway, eventually};
use skiff_test_support::images::OciImage;
use skiff_test_support::net::NetSlot;
use skiff_test_support::registry::Registry;
use skiff_test_support::tools::require_root;

/// A gateway with an on-prem site and a local cloud site `cloud` whose
/// `local.small` VMs (1900m: what their agent reports on this host) cost
/// 0.10/h and scale in after 1 s idle; a registry with a busybox image on
/// the VMs' bridge.
struct Fleet {
    dir: tempfile::TempDir,
    slot: NetSlot,
    vms: PathBuf,
    _registry: Registry,
    image: String,
    insecure: String,
    g: Gateway,
}

impl Fleet {
    fn start(consolidation: &str) -> Fleet {
        Self::start_with(consolidation, |_| String::new())
    }

    /// [`Fleet::start`] with more agent config for the cloud site's VMs,
    /// made from the host's address on their bridge.
    fn start_with(consolidation: &str, vm_config: impl Fn(std::net::Ipv4Addr) -> String) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let slot = NetSlot::take().unwrap();
        let vms = dir.path().join("vms");
        let host = cloud(&vms, &slot).ensure_bridge().unwrap();
        let registry = Registry::start_on(host).unwrap();
        let image = OciImage::busybox(&dir.path().join("image"), "test", &[])
            .unwrap()
            .push(&registry, "skiff/busybox")
            .unwrap();
        let insecure = format!(
            "[images]\ninsecure_registries = [\"{}\"]\n",
            registry.host()
        );
        let config = format!(
            "heartbeat_interval = \"250ms\"\ndown_after = \"2s\"\nadvertise = [\"{host}\"]\n\
             [consolidation]\n{consolidation}\n\
             [[sites]]\nname = \"onprem\"\nkind = \"static\"\n\
             [[sites]]\nname = \"cloud\"\nkind = \"local\"\ncost_rank = 10\nmax_nodes = 3\n\
             gateway_url = \"{{{{agent_url}}}}\"\njoin_timeout = \"60s\"\nscale_in_after = \"1s\"\n\
             agent_config = '''\n{insecure}{}'''\n\
             [[sites.instance_types]]\nname = \"local.small\"\ncpu = \"1900m\"\nmemory = \"3Gi\"\nprice_per_hour = \"0.10\"\n\
             [sites.local]\nroot = \"{}\"\nagent_bin = \"{}\"\nbridge = \"{}\"\nsubnet = \"{}\"\n",
            vm_config(host),
            vms.display(),
            skiff_e2e::bin("skiff-agent").display(),
            slot.bridge(),
            slot.subnet()
        );
        let g = Gateway::start_on(&dir.path().join("gw"), &config, &host.to_string());
        Fleet {
            dir,
            slot,
            vms,
            _registry: registry,
            image,
            insecure,
            g,
        }
    }

    /// An on-prem node of `cpu` allocatable (the rest of this host's
    /// cores reserved).
    fn onprem(&self, cpu_millis: u32) -> Agent {
        let (token, ca) = self.g.join_token("onprem", "10m");
        let cores = std::thread::available_parallelism().unwrap().get() as u32;
        let a = Agent::spawn_configured(
            self.dir.path(),
            "onprem-1",
            &self.g,
            &token,
            &ca,
            &format!(
                "{}[reserve]\ncpu = \"{}m\"\n",
                self.insecure,
                cores * 1000 - cpu_millis
            ),
        );
        self.g.until("/v1/nodes/onprem-1", "ready", 30, |n| {
            n["status"] == "ready"
        });
        a
    }

    /// Creates (or updates) a sleeping workload: `replicas` of `cpu`.
    fn apply(&self, name: &str, replicas: u32, cpu: &str, extra: &str) {
        let spec = format!(
            "name: {name}\nimage: {}\nreplicas: {replicas}\ncommand: [\"sleep\", \"3600\"]\n\
             resources: {{cpu: {cpu}, memory: 64Mi}}\nstop_timeout: 1s\n{extra}",
            self.image
        );
        let (code, v) = self.g.call("GET", &format!("/v1/workloads/{name}"), None);
        let (code, v) = if code == 404 {
            self.g.call("POST", "/v1/workloads", Some(&spec))
        } else {
            assert_eq!(code, 200, "{v}");
            self.g
                .call("PUT", &format!("/v1/workloads/{name}"), Some(&spec))
        };
        assert!(code == 202 || code == 200, "{name}: {code} {v}");
    }

    fn scale(&self, name: &str, replicas: u32) {
        let (code, v) = self.g.call(
            "POST",
            &format!("/v1/workloads/{name}/scale"),
            Some(&format!("{{\"replicas\": {replicas}}}")),
        );
        assert!(code == 200 || code == 202, "scale {name}: {code} {v}");
    }

    /// Waits until `name` has exactly `want` replicas running, on nodes
    /// `on` accepts; the nodes they run on.
    fn running(
        &self,
        name: &str,
        want: usize,
        secs: u64,
        on: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let w = self.g.until(
            &format!("/v1/workloads/{name}"),
            &format!("{want} running where wanted"),
            secs,
            |w| {
                let live = live(w);
                live.len() == want
                    && live
                        .iter()
                        .all(|a| a["state"] == "running" && a["node"].as_str().is_some_and(&on))
            },
        );
        live(&w)
            .iter()
            .map(|a| a["node"].as_str().unwrap().to_string())
            .collect()
    }

    /// The nodes of the cloud site the gateway knows.
    fn cloud_nodes(&self) -> Vec<String> {
        let (_, v) = self.g.call("GET", "/v1/nodes", None);
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["site"] == "cloud")
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Instances of the cloud site not terminated.
    fn instances_up(&self) -> Vec<String> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(cloud(&self.vms, &self.slot).describe(TAG_SITE, "cloud"))
            .unwrap()
            .into_iter()
            .filter(|i| i.state != InstanceState::Terminated)
            .map(|i| i.id)
            .collect()
    }

    /// Waits until every cloud node is gone and its VM terminated.
    fn all_scaled_in(&self, secs: u64) {
        eventually(
            secs,
            || self.cloud_nodes().is_empty() && self.instances_up().is_empty(),
            || {
                format!(
                    "cloud nodes {:?}, instances up {:?}\n{}",
                    self.cloud_nodes(),
                    self.instances_up(),
                    self.g.log()
                )
            },
        );
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Whatever happened, no VM outlives the test.
        let ids: Vec<String> = self.instances_up();
        if !ids.is_empty() {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let _ = rt.block_on(cloud(&self.vms, &self.slot).terminate(&ids));
        }
    }
}

fn cloud(vms: &Path, slot: &NetSlot) -> LocalCloud {
    LocalCloud::new(LocalConfig {
        root: vms.to_path_buf(),
        agent_bin: skiff_e2e::bin("skiff-agent"),
        bridge: slot.bridge(),
        subnet: slot.subnet().parse().unwrap(),
        types: Vec::new(),
    })
}

fn live(w: &Value) -> Vec<&Value> {
    w["allocations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] != "stopped" && a["state"] != "lost" && a["done"] != true)
        .collect()
}

fn is_cloud(n: &str) -> bool {
    n.starts_with("cloud-")
}

/// The workload's allocations that were started by a consolidation move,
/// as (created_ms, from_node), oldest first.
fn moves(g: &Gateway, name: &str) -> Vec<(i64, String)> {
    let (_, w) = g.call("GET", &format!("/v1/workloads/{name}"), None);
    let mut out: Vec<(i64, String)> = w["allocations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["moved"]["cause"] == "consolidation")
        .map(|a| {
            (
                a["created_ms"].as_i64().unwrap(),
                a["moved"]["from_node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

const CONSOLIDATE_FAST: &str = "interval = \"1s\"\ncool_down = \"10m\"\n";

#[test]
fn a_half_empty_pair_of_vms_is_consolidated_into_one_without_dropping_below_replicas_minus_one() {
    require_root();
    let f = Fleet::start(CONSOLIDATE_FAST);
    // a (2 × 400m) and a filler (1000m) fill one VM; b (2 × 400m) then
    // needs a second.
    f.apply("a", 2, "400m", "");
    let first = f.running("a", 2, 90, is_cloud);
    f.apply("filler", 1, "1000m", "");
    assert_eq!(f.running("filler", 1, 60, is_cloud), [first[0].clone()]);
    f.apply("b", 2, "400m", "");
    let second = f.running("b", 2, 90, is_cloud);
    assert_ne!(first[0], second[0], "b needed a VM of its own");
    assert_eq!(
        f.instances_up().len(),
        2,
        "a on {first:?}, b on {second:?}, nodes {:?}\n{}",
        f.cloud_nodes(),
        f.g.log()
    );

    // The filler goes: each VM holds 800m of 1900m, so one can take the
    // other's replicas, and one VM is handed back.
    assert_eq!(f.g.call("DELETE", "/v1/workloads/filler", None).0, 202);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut least = (usize::MAX, usize::MAX);
    loop {
        let (_, a) = f.g.call("GET", "/v1/workloads/a", None);
        let (_, b) = f.g.call("GET", "/v1/workloads/b", None);
        let running = |w: &Value| live(w).iter().filter(|a| a["state"] == "running").count();
        least = (least.0.min(running(&a)), least.1.min(running(&b)));
        assert!(
            least.0 >= 1 && least.1 >= 1,
            "a workload fell below replicas - 1 running: a {a}\nb {b}"
        );
        if f.cloud_nodes().len() == 1 && f.instances_up().len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never consolidated:\n{}",
            f.g.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("fewest running while moving: a {}, b {}", least.0, least.1);
    // Everything runs on the one VM left, and only one workload moved.
    let kept = f.cloud_nodes();
    for w in ["a", "b"] {
        assert_eq!(
            f.running(w, 2, 30, |n| n == kept[0]),
            vec![kept[0].clone(); 2]
        );
    }
    let (moved_a, moved_b) = (moves(&f.g, "a"), moves(&f.g, "b"));
    assert_eq!(
        moved_a.len() + moved_b.len(),
        2,
        "a {moved_a:?} b {moved_b:?}"
    );
    let log = f.g.log();
    assert!(
        log.contains("consolidation: emptying it (2 replica(s) fit on")
            && log.contains("saves 0.100000/h"),
        "{log}"
    );
}

#[test]
fn freed_on_prem_capacity_takes_the_work_back_and_the_vm_scales_in() {
    require_root();
    let f = Fleet::start(CONSOLIDATE_FAST);
    let _onprem = f.onprem(1000);
    f.apply("filler", 1, "800m", "");
    f.running("filler", 1, 60, |n| n == "onprem-1");
    // No room on-prem for web: it bursts.
    f.apply("web", 1, "500m", "");
    f.running("web", 1, 90, is_cloud);
    // Room frees on-prem: web comes back, and the VM goes.
    assert_eq!(f.g.call("DELETE", "/v1/workloads/filler", None).0, 202);
    f.running("web", 1, 60, |n| n == "onprem-1");
    f.all_scaled_in(60);
    let m = moves(&f.g, "web");
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(is_cloud(&m[0].1), "{m:?}");
}

#[test]
fn scaling_down_to_what_on_prem_holds_leaves_it_all_on_prem_and_every_vm_scaled_in() {
    require_root();
    // Scale-down alone does it (no consolidation).
    let f = Fleet::start("enabled = false\n");
    let _onprem = f.onprem(1000);
    // 4 × 400m: 2 fit on-prem, 2 burst.
    f.apply("web", 4, "400m", "");
    let nodes = f.running("web", 4, 90, |_| true);
    assert_eq!(
        nodes.iter().filter(|n| *n == "onprem-1").count(),
        2,
        "{nodes:?}"
    );
    // Down to what on-prem holds: the cloud replicas go, not the on-prem
    // ones (the newest), and the VM scales in.
    f.scale("web", 2);
    f.running("web", 2, 30, |n| n == "onprem-1");
    f.all_scaled_in(60);
}

#[test]
fn a_flapping_load_moves_nothing_twice_within_the_cool_down() {
    require_root();
    let cool_down = 30_000;
    let f = Fleet::start(&format!(
        "interval = \"1s\"\ncool_down = \"{}s\"\n",
        cool_down / 1000
    ));
    let _onprem = f.onprem(1000);
    // b (priority 40) and a (priority 60) fill on-prem; each time a rises
    // to 2, its new replica preempts b, which bursts; each time a falls
    // back to 1, on-prem has room for b again.
    f.apply("b", 1, "500m", "priority: 40\n");
    f.running("b", 1, 60, |n| n == "onprem-1");
    f.apply("a", 1, "500m", "priority: 60\n");
    f.running("a", 1, 60, |n| n == "onprem-1");
    for cycle in 0..2 {
        f.scale("a", 2);
        f.running("a", 2, 60, |n| n == "onprem-1");
        f.running("b", 1, 90, is_cloud);
        f.scale("a", 1);
        f.running("a", 1, 30, |n| n == "onprem-1");
        if cycle == 0 {
            // The first time, b comes back on-prem at once.
            f.running("b", 1, 60, |n| n == "onprem-1");
            f.all_scaled_in(60);
        }
    }
    // The second time b moved lately: it stays on its VM until the
    // cool-down is over, then comes back, and the VM scales in.
    f.running("b", 1, 90, |n| n == "onprem-1");
    f.all_scaled_in(60);
    let m = moves(&f.g, "b");
    assert_eq!(m.len(), 2, "{m:?}");
    let gap = m[1].0 - m[0].0;
    println!("b moved back on-prem twice, {gap} ms apart (cool-down {cool_down} ms)");
    assert!(
        gap >= cool_down,
        "b moved twice within the cool-down: {m:?}"
    );
    // a never moved.
    assert_eq!(moves(&f.g, "a"), []);
}

/// A fake EC2 instance metadata service (IMDSv2: a session token, then
/// `spot/instance-action` with it) on the VMs' bridge. It answers 404 (no
/// notice) until armed for a VM's address, then AWS's interruption notice.
struct FakeImds {
    port: u16,
    seen: Arc<Mutex<BTreeSet<IpAddr>>>,
    armed: Arc<Mutex<BTreeSet<IpAddr>>>,
    _rt: tokio::runtime::Runtime,
}

#[derive(Clone)]
struct Imds {
    seen: Arc<Mutex<BTreeSet<IpAddr>>>,
    armed: Arc<Mutex<BTreeSet<IpAddr>>>,
}

const IMDS_TOKEN: &str = "imds-session-1";

async fn instance_action(
    axum::extract::State(st): axum::extract::State<Imds>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    if headers
        .get("x-aws-ec2-metadata-token")
        .is_none_or(|t| t != IMDS_TOKEN)
    {
        return (StatusCode::UNAUTHORIZED, String::new());
    }
    st.seen.lock().unwrap().insert(peer.ip());
    if !st.armed.lock().unwrap().contains(&peer.ip()) {
        return (StatusCode::NOT_FOUND, "Not Found".into());
    }
    (
        StatusCode::OK,
        r#"{"action": "terminate", "time": "2099-01-01T00:02:00Z"}"#.into(),
    )
}

impl FakeImds {
    fn start(host: std::net::Ipv4Addr) -> FakeImds {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind((host, 0)))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let st = Imds {
            seen: Arc::default(),
            armed: Arc::default(),
        };
        let app = axum::Router::new()
            .route(
                "/latest/api/token",
                axum::routing::put(|| async { IMDS_TOKEN }),
            )
            .route(
                "/latest/meta-data/spot/instance-action",
                axum::routing::get(instance_action),
            )
            .with_state(st.clone());
        rt.spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        FakeImds {
            port,
            seen: st.seen,
            armed: st.armed,
            _rt: rt,
        }
    }

    /// Interrupts every VM that has asked so far.
    fn interrupt_seen(&self) -> usize {
        let seen = self.seen.lock().unwrap().clone();
        let n = seen.len();
        self.armed.lock().unwrap().extend(seen);
        n
    }
}

#[test]
fn a_spot_notice_drains_the_vm_and_its_work_runs_elsewhere_before_the_vm_goes() {
    require_root();
    let imds = std::sync::OnceLock::new();
    let f = Fleet::start_with("enabled = false\n", |host| {
        let i = imds.get_or_init(|| FakeImds::start(host));
        format!(
            "[notices]\ncloud = \"aws\"\nmetadata_url = \"http://{host}:{}\"\npoll_interval = \"200ms\"\n",
            i.port
        )
    });
    let imds = imds.get().unwrap();
    // web runs in the cloud only, on one VM.
    f.apply("web", 1, "500m", "placement: {sites: [cloud]}\n");
    let first = f.running("web", 1, 90, is_cloud).remove(0);
    eventually(
        30,
        || !imds.seen.lock().unwrap().is_empty(),
        || "the VM's agent never asked the metadata service".into(),
    );
    // Its cloud takes it back: a new VM is launched and web starts there
    // before the old replica stops; web never stops running meanwhile.
    assert_eq!(imds.interrupt_seen(), 1);
    f.g.until(
        &format!("/v1/nodes/{first}"),
        "draining for the notice",
        30,
        |n| n["status"] == "draining" && n["vacating"]["cause"] == "notice",
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, w) = f.g.call("GET", "/v1/workloads/web", None);
        let running: Vec<&Value> = live(&w)
            .into_iter()
            .filter(|a| a["state"] == "running")
            .collect();
        assert!(!running.is_empty(), "web stopped running: {w}");
        let old_stopped = w["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["node"] == first.as_str() && a["state"] == "stopped");
        if old_stopped {
            let old = w["allocations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["node"] == first.as_str())
                .unwrap();
            assert_eq!(old["message"], "moved: its replacement runs", "{w}");
            break;
        }
        assert!(Instant::now() < deadline, "never moved: {w}\n{}", f.g.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let now_on = f.running("web", 1, 30, |n| is_cloud(n) && n != first);
    let m = moves(&f.g, "web");
    assert_eq!(m, [], "a notice's move is not consolidation's");
    // The emptied VM is handed back; the new one is not interrupted.
    eventually(
        60,
        || f.g.call("GET", &format!("/v1/nodes/{first}"), None).0 == 404,
        || format!("the interrupted VM was never scaled in:\n{}", f.g.log()),
    );
    assert_eq!(f.cloud_nodes(), now_on);
    let log = f.g.log();
    assert!(
        log.contains("notice from its cloud: spot interruption: terminate at 2099-01-01T00:02:00Z"),
        "{log}"
    );
}
