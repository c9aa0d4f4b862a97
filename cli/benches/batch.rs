//! Batch throughput: `cargo bench -p skiff --bench batch` (as root, with
//! nftables, iproute2, skopeo and busybox-static).
//!
//! A `skiff dev` fleet serving a busybox image runs a batch job of
//! `SKIFF_BENCH_COMPLETIONS` (default 1,000) completions of `true`,
//! `SKIFF_BENCH_PARALLELISM` (default 8) at a time, on its `local` node,
//! `SKIFF_BENCH_RUNS` times (default 3): completions per second from the
//! submission (`skiff run --detach`) to the job's `complete`, median of
//! the runs. Beside it, on the same node (the dev fleet's agent, its
//! socket), the same count of `skiff-agent run --rm IMAGE true` with the
//! same number in flight, the single-node peer without a gateway.
//!
//! Prints the figures; asserts nothing (speed is not a test).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Dev, env_or, median};
use skiff_test_support::bench::throughput;
use skiff_test_support::images::OciImage;
use skiff_test_support::tools::{require, require_root};

fn job_spec(name: &str, image: &str, completions: usize, parallelism: usize) -> String {
    format!(
        "name: {name}\nkind: batch\nimage: {image}\ncommand: [\"true\"]\n\
         resources: {{ cpu: 100m, memory: 16Mi }}\nstop_timeout: 1s\n\
         placement: {{ sites: [local] }}\n\
         batch: {{ completions: {completions}, parallelism: {parallelism} }}\n"
    )
}

fn job_state(dev: &Dev, name: &str) -> serde_json::Value {
    let out = dev
        .skiff()
        .args(["status", name, "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skiff status {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    w["job"].clone()
}

fn main() {
    require_root();
    require("skopeo").unwrap();
    let runs = env_or("SKIFF_BENCH_RUNS", 3);
    let completions = env_or("SKIFF_BENCH_COMPLETIONS", 1000);
    let parallelism = env_or("SKIFF_BENCH_PARALLELISM", 8);

    let dir = tempfile::tempdir().unwrap();
    let image = OciImage::busybox(&dir.path().join("busybox"), "bench", &[]).unwrap();
    let archive = image.oci_archive().unwrap();
    let dev = Dev::start(
        dir.path(),
        false,
        &["--image".as_ref(), archive.as_os_str()],
    );
    let text = dev.wait_for("a fleet on this machine is up", 300);
    let image = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("and "))
        .expect("skiff dev serves the busybox image")
        .trim()
        .to_string();

    let mut rates = Vec::new();
    for run in 0..runs {
        let name = format!("batch-{run}");
        let t = Instant::now();
        dev.submit(&job_spec(&name, &image, completions, parallelism));
        let job = loop {
            let job = job_state(&dev, &name);
            if job["state"] != "running" {
                break job;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(job["state"], "complete", "{job}");
        assert_eq!(job["succeeded"], completions, "{job}");
        rates.push(completions as f64 / secs);
        println!(
            "  run {run}: {completions} completions in {secs:.1} s ({:.1}/s)",
            completions as f64 / secs
        );
        let rm = dev.skiff().args(["rm", &name]).output().unwrap();
        assert!(rm.status.success(), "skiff rm {name}");
    }

    // The same count of run --rm on the dev fleet's node, which has the
    // image in its store now.
    let agent = dev.state.join("bin/skiff-agent");
    let socket = dev.state.join("agent.sock");
    let mut peer = Vec::new();
    for _ in 0..runs {
        peer.push(throughput(completions, parallelism, |_| {
            let out = Command::new(&agent)
                .arg("--socket")
                .arg(&socket)
                .args(["run", "--rm", &image, "true"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "skiff-agent run --rm: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }));
    }
    dev.stop();

    println!(
        "{completions} runs of `true`, {parallelism} at a time, on the dev fleet's local node:"
    );
    println!(
        "  batch job (skiff dev)        {:8.1} completions/s   median of {runs}: {rates:.1?}",
        median(&mut rates.clone())
    );
    println!(
        "  skiff-agent run --rm         {:8.1} runs/s          median of {runs}: {peer:.1?}",
        median(&mut peer.clone())
    );
}
