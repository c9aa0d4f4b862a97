//! Kinds of workloads end to end, as root: a real gateway, a real agent,
//! batch jobs as real containers that run to completion or fail.

use serde_json::Value;
use skiff_e2e::{Agent, Gateway, eventually};
use skiff_test_support::tools::require_root;

const CONFIG: &str = "heartbeat_interval = \"250ms\"\ndown_after = \"2s\"\n";

fn job(name: &str, image: &str, script: &str, batch: &str) -> String {
    format!(
        "name: {name}\nkind: batch\nimage: {image}\ncommand: [\"sh\", \"-c\", {script:?}]\nresources: {{cpu: 10m, memory: 8Mi}}\nstop_timeout: 1s\nbatch: {batch}\n"
    )
}

fn allocations(w: &Value) -> Vec<Value> {
    w["allocations"].as_array().cloned().unwrap_or_default()
}

/// Runs on their node now: neither ended (done) nor stopped.
fn live_runs(w: &Value) -> usize {
    allocations(w)
        .iter()
        .filter(|a| {
            a["done"] != true && !["stopped", "lost"].contains(&a["state"].as_str().unwrap_or(""))
        })
        .count()
}

#[test]
fn a_batch_job_completes_parallelism_at_a_time_and_a_failing_one_stops_at_its_backoff_limit() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image) = skiff_e2e::busybox_registry(dir.path());
    let g = Gateway::start(&dir.path().join("gw"), CONFIG);
    let agent = Agent::joined(dir.path(), "node-a", &g);

    // Twenty runs that succeed, five at a time.
    let spec = job(
        "twenty",
        &image,
        "sleep 0.3",
        "{completions: 20, parallelism: 5}",
    );
    let (code, v) = g.call("POST", "/v1/workloads", Some(&spec));
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["job"]["state"], "running", "{v}");
    let mut most = 0;
    eventually(
        120,
        || {
            let (_, w) = g.call("GET", "/v1/workloads/twenty", None);
            most = most.max(live_runs(&w));
            w["job"]["state"] == "complete"
        },
        || {
            format!(
                "{}\n{}",
                g.call("GET", "/v1/workloads/twenty", None).1,
                g.log()
            )
        },
    );
    let (_, w) = g.call("GET", "/v1/workloads/twenty", None);
    assert_eq!(w["job"]["succeeded"], 20, "{w}");
    assert_eq!(w["job"]["failed"], 0, "{w}");
    assert!((1..=5).contains(&most), "{most} runs at once");
    // Its runs' records and exit codes stay; nothing runs on the node.
    let runs = allocations(&w);
    assert_eq!(runs.len(), 20, "{w}");
    assert!(
        runs.iter()
            .all(|a| a["state"] == "exited" && a["exit_code"] == 0 && a["done"] == true),
        "{w}"
    );
    eventually(
        30,
        || agent.running().is_empty(),
        || format!("{:?}", agent.running()),
    );
    // A batch job is not scaled.
    let (code, v) = g.call(
        "POST",
        "/v1/workloads/twenty/scale",
        Some(r#"{"replicas": 3}"#),
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("batch job"),
        "{v}"
    );

    // Runs that always fail: one, retried after a back-off, twice; then
    // the job fails, each run's exit code shown.
    let spec = job(
        "failing",
        &image,
        "exit 3",
        "{backoff_limit: 2, backoff: 1s}",
    );
    let (code, v) = g.call("POST", "/v1/workloads", Some(&spec));
    assert_eq!(code, 202, "{v}");
    eventually(
        60,
        || g.call("GET", "/v1/workloads/failing", None).1["job"]["state"] == "failed",
        || {
            format!(
                "{}\n{}",
                g.call("GET", "/v1/workloads/failing", None).1,
                g.log()
            )
        },
    );
    let (_, w) = g.call("GET", "/v1/workloads/failing", None);
    assert_eq!(w["job"]["failed"], 3, "{w}");
    assert_eq!(w["job"]["succeeded"], 0, "{w}");
    let message = w["job"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("batch.backoff_limit (2)"), "{w}");
    let codes: Vec<Value> = allocations(&w)
        .iter()
        .map(|a| a["exit_code"].clone())
        .collect();
    assert_eq!(codes, vec![Value::from(3); 3], "{w}");
    // Told as an event.
    let log = g.log();
    assert!(log.contains("job failed: 3 runs failed"), "{log}");
    assert!(
        log.contains("job complete: 20 of 20 runs succeeded"),
        "{log}"
    );
}
