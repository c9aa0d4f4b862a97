//! Container runtime benchmark: `cargo bench -p skiff-agent --bench runtime`
//! (as root; needs Debian's `runc` and `umoci`).
//!
//! 1. Run-to-exit of a cached busybox `true`: `skiff-agent run --rm IMAGE
//!    true` on the bridge network (the default) and with `--network none`,
//!    against `runc run` of an OCI bundle of the same rootfs (no network
//!    set up), alternating, `SKIFF_BENCH_RUNS` times each (default 50).
//!    All are timed as a user sees them: one CLI invocation, start to exit.
//! 2. Throughput: create-start-exit-remove cycles (`run --rm … true`) with
//!    8 in flight, for `SKIFF_BENCH_CYCLES` cycles (default 400); runc the
//!    same way for reference.
//! 3. Footprint: the agent's resident memory when idle, then with 100
//!    `sleep` containers, and each container's supervisor (`skiff-shim`).
//!
//! Prints medians and ratios; asserts nothing (speed is not a test).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use skiff_test_support::bench::throughput;
use skiff_test_support::images::OciImage;
use skiff_test_support::net::NetSlot;
use skiff_test_support::procs::ChildGuard;
use skiff_test_support::tools::{require, require_root};

const BIN: &str = env!("CARGO_BIN_EXE_skiff-agent");
const IMAGE: &str = "skiff/busybox:bench";

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

struct Agent {
    socket: PathBuf,
    process: ChildGuard,
    /// Its own bridge, subnet and table (removed after the agent).
    _net: NetSlot,
}

impl Agent {
    fn start(dir: &Path) -> Agent {
        let socket = dir.join("agent.sock");
        let config = dir.join("agent.toml");
        let net = NetSlot::take().unwrap();
        std::fs::write(&config, net.agent_config()).unwrap();
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let process = ChildGuard::spawn(
            "skiff-agent",
            Command::new(BIN)
                .args(["serve", "--name", "bench", "--state-dir"])
                .arg(dir.join("state"))
                .arg("--socket")
                .arg(&socket)
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "agent did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Agent {
            socket,
            process,
            _net: net,
        }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skiff-agent {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// An OCI bundle of the image for runc, running `true`.
fn runc_bundle(layout: &Path, dir: &Path) -> PathBuf {
    let bundle = dir.join("bundle");
    let status = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:test", layout.display()))
        .arg(&bundle)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "umoci unpack");
    let path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["process"]["args"] = serde_json::json!(["true"]);
    config["process"]["terminal"] = serde_json::json!(false);
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    bundle
}

fn runc_run(bundle: &Path, id: &str) {
    let status = Command::new("runc")
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "runc run");
}

fn time(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// Resident and proportional set size of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let field = |file: &str, key: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .trim()
                    .trim_end_matches(" kB")
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    (field("status", "VmRSS:"), field("smaps_rollup", "Pss:"))
}

fn main() {
    require_root();
    require("runc").unwrap();
    require("umoci").unwrap();
    let runs = env_or("SKIFF_BENCH_RUNS", 50);
    let cycles = env_or("SKIFF_BENCH_CYCLES", 400);
    let work = tempfile::tempdir().unwrap();
    let image = OciImage::busybox(work.path(), "test", &[]).unwrap();
    let agent = Agent::start(work.path());
    agent.cli(&["import", image.layout.to_str().unwrap(), "--name", IMAGE]);
    let bundle = runc_bundle(&image.layout, work.path());
    let run_id = AtomicUsize::new(0);
    let runc_id = || {
        format!(
            "skiff-bench-{}-{}",
            std::process::id(),
            run_id.fetch_add(1, Ordering::Relaxed)
        )
    };

    // Warm both paths (page cache, first-use costs).
    for _ in 0..3 {
        agent.cli(&["run", "--rm", IMAGE, "true"]);
        runc_run(&bundle, &runc_id());
    }

    // 1. Run to exit.
    let (mut bridge, mut none, mut runc) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        bridge.push(time(|| {
            agent.cli(&["run", "--rm", IMAGE, "true"]);
        }));
        none.push(time(|| {
            agent.cli(&["run", "--rm", "--network", "none", IMAGE, "true"]);
        }));
        runc.push(time(|| runc_run(&bundle, &runc_id())));
    }
    let b = median(&mut bridge) * 1000.0;
    let (s, r) = (median(&mut none) * 1000.0, median(&mut runc) * 1000.0);
    println!("run --rm busybox true, {runs} runs each, medians:");
    println!("  skiff-agent run --rm (bridge)   {b:8.1} ms");
    println!("  skiff-agent run --rm (none)     {s:8.1} ms");
    println!("  runc run (bundle, no network)   {r:8.1} ms");
    println!(
        "  ratio skiff/runc (none)         {:8.2}   (target <= 0.50)",
        s / r
    );
    println!("  ratio skiff/runc (bridge)       {:8.2}", b / r);
    println!(
        "  bridge network setup adds       {:8.1} ms   (target <= 5)",
        b - s
    );

    // 2. Throughput with 8 in flight.
    let skiff_rate = throughput(cycles, 8, |_| {
        agent.cli(&["run", "--rm", IMAGE, "true"]);
    });
    let runc_rate = throughput(cycles, 8, |_| runc_run(&bundle, &runc_id()));
    println!("create-start-exit-remove, {cycles} cycles, 8 in flight:");
    println!("  skiff-agent            {skiff_rate:8.1} cycles/s   (target >= 100)");
    println!("  runc run               {runc_rate:8.1} cycles/s");
    let left = agent.cli(&["ps", "-a", "-q"]);
    assert!(left.stdout.is_empty(), "containers left behind");

    // 3. Footprint, once the agent has been idle a while (it hands freed
    // memory back every 10 s).
    std::thread::sleep(Duration::from_secs(11));
    let agent_pid = agent.process.pid();
    let (idle, _) = memory_kib(agent_pid);
    let mut ids = Vec::new();
    for i in 0..100 {
        let out = agent.cli(&[
            "run",
            "-d",
            "--name",
            &format!("sleeper{i}"),
            IMAGE,
            "sleep",
            "600",
        ]);
        ids.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    std::thread::sleep(Duration::from_secs(1));
    let (busy, _) = memory_kib(agent_pid);
    let mut shim_rss = Vec::new();
    let mut shim_pss = Vec::new();
    for id in &ids {
        let v: serde_json::Value =
            serde_json::from_slice(&agent.cli(&["inspect", id]).stdout).unwrap();
        let pid = v["shim_pid"].as_u64().expect("shim pid") as u32;
        let (rss, pss) = memory_kib(pid);
        shim_rss.push(rss as f64);
        shim_pss.push(pss as f64);
    }
    let shim_rss_total: f64 = shim_rss.iter().sum();
    let shim_pss_total: f64 = shim_pss.iter().sum();
    let per_container = ((busy as f64 - idle as f64) + shim_rss_total) / 100.0;
    println!("memory (resident):");
    println!(
        "  agent idle             {:8.1} MiB   (target <= 15)",
        idle as f64 / 1024.0
    );
    println!("  agent, 100 containers  {:8.1} MiB", busy as f64 / 1024.0);
    println!(
        "  supervisor per container: RSS median {:.0} KiB, PSS median {:.0} KiB",
        median(&mut shim_rss),
        median(&mut shim_pss)
    );
    println!(
        "  per container (agent growth + supervisor RSS) / 100: {per_container:.0} KiB   (target <= 1024); with PSS: {:.0} KiB",
        ((busy as f64 - idle as f64) + shim_pss_total) / 100.0
    );
    let mut args = vec!["rm", "-f"];
    args.extend(ids.iter().map(String::as_str));
    agent.cli(&args);
}
