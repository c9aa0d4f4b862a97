//! The CLI's benchmarks: `cargo bench -p skiff --bench cli` (as root,
//! with nftables and iproute2). Each figure is a median of several runs:
//!
//! * `skiff dev --demo`: from the command to the first burst replica
//!   running (`SKIFF_BENCH_RUNS`, default 3, fleets started one after the
//!   other; the figure `skiff dev` prints itself);
//! * `skiff ps` against a gateway with 1,000 workloads (20 runs; target
//!   under 100 ms);
//! * `skiff logs -f`: from a container's write (an HTTP request to the demo
//!   server, which logs it) to the line on the operator's stdout (30
//!   lines; target under 100 ms at the median).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Dev, env_or, median, percentile};

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the CLI benchmark needs root"
    );
    let runs = env_or("SKIFF_BENCH_RUNS", 3);

    // skiff dev --demo: command to first burst replica running.
    let mut burst = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let dev = Dev::start(dir.path(), true, &[]);
        let text = dev.wait_for("first burst replica running", 300);
        let secs: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("demo: first burst replica running "))
            .and_then(|l| l.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap();
        burst.push(secs);
        dev.stop();
    }
    println!(
        "dev_demo runs={runs} first_burst_replica_running_median_s={:.2} all={burst:?}",
        median(&mut burst.clone())
    );

    // One more fleet for ps and logs -f.
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), true, &[]);
    let text = dev.wait_for("demo: all 6 replicas running", 300);
    let image = text
        .lines()
        .find_map(|l| l.split("serving ").nth(1).map(|s| s.trim().to_string()))
        .unwrap();

    // logs -f: write (an HTTP request the demo logs) to the operator's line.
    let status = dev
        .skiff()
        .args(["status", "demo", "-o", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let local = v["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["site"] == "local" && a["state"] == "running")
        .unwrap()
        .clone();
    let alloc = local["id"].as_str().unwrap().to_string();
    let addr = format!("{}:8080", local["address"].as_str().unwrap());
    let mut follow = dev
        .skiff()
        .args(["logs", "-f", "demo", "--alloc", &alloc, "--tail", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    std::thread::sleep(Duration::from_millis(500));
    let mut latency = Vec::new();
    for i in 0..30 {
        let path = format!("/bench-{i}");
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut sink = String::new();
        let _ = s.read_to_string(&mut sink);
        loop {
            let line = lines.next().unwrap().unwrap();
            if line.contains(&path) {
                latency.push(t.elapsed().as_secs_f64() * 1000.0);
                break;
            }
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    println!(
        "logs_follow lines=30 write_to_terminal_p50_ms={:.1} p90_ms={:.1}",
        percentile(&mut latency, 0.5),
        percentile(&mut latency, 0.9)
    );

    // ps with 1,000 workloads.
    for i in 0..1000 {
        let spec = format!(
            "name: w{i}\nimage: {image}\nreplicas: 1\nresources: {{ cpu: 4, memory: 4Mi }}\nplacement: {{ sites: [local] }}\n"
        );
        dev.submit(&spec);
    }
    let mut ps = Vec::new();
    let mut rows = 0;
    for _ in 0..20 {
        let t = Instant::now();
        let out = dev.skiff().arg("ps").output().unwrap();
        ps.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(out.status.success());
        rows = out.stdout.iter().filter(|b| **b == b'\n').count() - 1;
    }
    println!(
        "ps workloads={rows} runs=20 median_ms={:.1} p90_ms={:.1}",
        percentile(&mut ps.clone(), 0.5),
        percentile(&mut ps, 0.9)
    );
    dev.stop();
}
