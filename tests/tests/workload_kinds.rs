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

/// The nodes a workload's live copies run on.
fn running_on(g: &Gateway, name: &str) -> Vec<String> {
    let (_, w) = g.call("GET", &format!("/v1/workloads/{name}"), None);
    let mut nodes: Vec<String> = allocations(&w)
        .iter()
        .filter(|a| a["state"] == "running")
        .filter_map(|a| a["node"].as_str().map(str::to_string))
        .collect();
    nodes.sort();
    nodes
}

#[test]
fn a_system_workload_runs_on_every_node_one_that_joins_later_too_and_leaves_a_removed_one() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image) = skiff_e2e::busybox_registry(dir.path());
    let g = Gateway::start(&dir.path().join("gw"), CONFIG);
    let a = Agent::joined(dir.path(), "node-a", &g);
    let b = Agent::joined(dir.path(), "node-b", &g);
    let spec = format!(
        "name: shipper\nkind: system\nimage: {image}\ncommand: [\"sleep\", \"3600\"]\nresources: {{cpu: 10m, memory: 8Mi}}\nstop_timeout: 1s\n"
    );
    let (code, v) = g.call("POST", "/v1/workloads", Some(&spec));
    assert_eq!(code, 202, "{v}");
    let why = || {
        format!(
            "{}\n{}",
            g.call("GET", "/v1/workloads/shipper", None).1,
            g.log()
        )
    };
    eventually(
        60,
        || running_on(&g, "shipper") == ["node-a", "node-b"],
        why,
    );
    assert_eq!(a.running().len(), 1);
    assert_eq!(b.running().len(), 1);

    // A node that joins later gets its copy.
    let c = Agent::joined(dir.path(), "node-c", &g);
    eventually(
        60,
        || running_on(&g, "shipper") == ["node-a", "node-b", "node-c"],
        why,
    );
    assert_eq!(c.running().len(), 1);

    // Draining a node leaves its copy running.
    let (code, v) = g.call("POST", "/v1/nodes/node-c/drain", None);
    assert!((200..300).contains(&code), "{code} {v}");
    // A removed node's copy is gone from the workload; no other node gets
    // a second one.
    let (code, v) = g.call("DELETE", "/v1/nodes/node-b", None);
    assert_eq!(code, 202, "{v}");
    eventually(
        30,
        || running_on(&g, "shipper") == ["node-a", "node-c"],
        why,
    );
    let (_, w) = g.call("GET", "/v1/workloads/shipper", None);
    let on_c: Vec<Value> = allocations(&w)
        .into_iter()
        .filter(|x| x["node"] == "node-c")
        .collect();
    assert_eq!(on_c.len(), 1, "{w}");
    assert_eq!(on_c[0]["state"], "running", "{w}");
    assert_eq!(a.running().len(), 1);
    assert_eq!(c.running().len(), 1);
    // It is not scaled.
    let (code, _) = g.call(
        "POST",
        "/v1/workloads/shipper/scale",
        Some(r#"{"replicas": 3}"#),
    );
    assert_eq!(code, 400);
}

#[test]
fn a_workload_asking_for_disk_goes_to_the_node_that_has_it() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image) = skiff_e2e::busybox_registry(dir.path());
    let g = Gateway::start(&dir.path().join("gw"), CONFIG);
    // Both agents' state is on this machine's filesystem; one keeps all
    // but a sliver of it for the host.
    let big = Agent::joined(dir.path(), "node-big", &g);
    let (token, hash) = g.join_token("default", "10m");
    let small = Agent::spawn_configured(
        dir.path(),
        "node-small",
        &g,
        &token,
        &hash,
        "[reserve]\ndisk = \"1Ei\"\n",
    );
    small.wait_up();
    let node = g.until("/v1/nodes/node-small", "ready", 15, |v| {
        v["status"] == "ready"
    });
    assert_eq!(node["allocatable"]["disk"], "0", "{node}");
    let node = g.call("GET", "/v1/nodes/node-big", None).1;
    let disk = node["capacity"]["disk"].as_str().unwrap_or_default();
    assert!(!disk.is_empty() && disk != "0", "{node}");

    let spec = format!(
        "name: scratch\nimage: {image}\nreplicas: 2\ncommand: [\"sleep\", \"3600\"]\nresources: {{cpu: 10m, memory: 8Mi, disk: 100Mi}}\nstop_timeout: 1s\n"
    );
    let (code, v) = g.call("POST", "/v1/workloads", Some(&spec));
    assert_eq!(code, 202, "{v}");
    eventually(
        60,
        || running_on(&g, "scratch") == ["node-big", "node-big"],
        || format!("{}", g.call("GET", "/v1/workloads/scratch", None).1),
    );
    assert_eq!(big.running().len(), 2);
    assert!(small.running().is_empty());
    // More than any node has: waits, saying why.
    let spec = format!(
        "name: huge\nimage: {image}\ncommand: [\"sleep\", \"3600\"]\nresources: {{cpu: 10m, memory: 8Mi, disk: 1Ei}}\n"
    );
    let (code, v) = g.call("POST", "/v1/workloads", Some(&spec));
    assert_eq!(code, 202, "{v}");
    eventually(
        30,
        || {
            let (_, w) = g.call("GET", "/v1/workloads/huge", None);
            allocations(&w).iter().any(|a| {
                a["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("insufficient disk")
            })
        },
        || format!("{}", g.call("GET", "/v1/workloads/huge", None).1),
    );
}
