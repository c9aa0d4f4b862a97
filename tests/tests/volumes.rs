//! Volumes end to end, as root: a real gateway, real agents, real
//! containers writing into local volumes, host volumes and tmpfs.

use std::path::Path;

use skiff_e2e::{Agent, Gateway, eventually};
use skiff_test_support::tools::require_root;

const CONFIG: &str = "heartbeat_interval = \"250ms\"\ndown_after = \"2s\"\n";

/// The workload's live allocations: (id, node, state, message).
fn live(g: &Gateway, name: &str) -> Vec<(String, Option<String>, String, String)> {
    let (_, w) = g.call("GET", &format!("/v1/workloads/{name}"), None);
    w["allocations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|a| !["stopped", "lost"].contains(&a["state"].as_str().unwrap_or("")))
        .map(|a| {
            (
                a["id"].as_str().unwrap_or_default().to_string(),
                a["node"].as_str().map(str::to_string),
                a["state"].as_str().unwrap_or_default().to_string(),
                a["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The one running allocation of `name`: (id, node).
fn running(g: &Gateway, name: &str) -> (String, String) {
    let mut found = None;
    eventually(
        60,
        || {
            let l = live(g, name);
            found = match l.as_slice() {
                [(id, Some(node), state, _)] if state == "running" => {
                    Some((id.clone(), node.clone()))
                }
                _ => None,
            };
            found.is_some()
        },
        || format!("{:?}\n{}", live(g, name), g.log()),
    );
    found.unwrap()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_local_volume_keeps_its_data_through_restarts_a_kill_9_and_a_partition_and_its_replica_waits_for_its_node()
 {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image) = skiff_e2e::busybox_registry(dir.path());
    let g = Gateway::start(&dir.path().join("gw"), CONFIG);
    let mut agents = [
        Agent::joined(dir.path(), "node-a", &g),
        Agent::joined(dir.path(), "node-b", &g),
    ];
    // Each run appends its allocation to /data/runs, then waits for
    // /data/stop, removes it and fails (restarted on failure).
    let spec = format!(
        "name: db\nimage: {image}\nrestart: on-failure\nstop_timeout: 1s\n\
         resources: {{cpu: 10m, memory: 16Mi}}\n\
         command: [\"sh\", \"-c\", \"echo $SKIFF_ALLOCATION >> /data/runs; while [ ! -f /data/stop ]; do sleep 0.1; done; rm /data/stop; exit 1\"]\n\
         volumes: [{{name: data, local: {{}}}}]\n\
         mounts: [{{volume: data, path: /data}}]\n"
    );
    let (code, v) = g.call("POST", "/v1/workloads", Some(&spec));
    assert_eq!(code, 202, "{v}");
    let (first, holder) = running(&g, "db");
    let h = agents.iter().position(|a| a.name == holder).unwrap();
    let other = agents[1 - h].name.clone();
    let data = agents[h].dir.join("state/volumes/db.data.0");
    let runs = data.join("runs");
    eventually(
        10,
        || lines(&runs) == [first.clone()],
        || format!("{:?}", lines(&runs)),
    );
    let (_, vols) = g.call("GET", "/v1/volumes", None);
    assert_eq!(vols.as_array().map(Vec::len), Some(1), "{vols}");
    assert_eq!(vols[0]["id"], "db.data.0", "{vols}");
    assert_eq!(vols[0]["node"], holder.as_str(), "{vols}");

    // The container restarts: its data stays.
    std::fs::write(data.join("stop"), "").unwrap();
    eventually(
        30,
        || lines(&runs).len() == 2,
        || format!("{:?}\n{}", lines(&runs), agents[h].log()),
    );

    // The agent is killed with SIGKILL and started again: the container
    // ran on, its data stays, and it still restarts into it.
    agents[h].kill9();
    agents[h].restart();
    std::fs::write(data.join("stop"), "").unwrap();
    eventually(
        30,
        || lines(&runs).len() == 3,
        || format!("{:?}\n{}", lines(&runs), agents[h].log()),
    );

    // A partition: the node goes silent until it is marked down. The
    // replica is lost, and its replacement waits for the node that holds
    // its volume, though the other node has room.
    agents[h].kill9();
    let want = format!("waiting for node {holder}, which holds volume db.data.0");
    eventually(
        30,
        || {
            live(&g, "db")
                .iter()
                .any(|(id, node, _, msg)| id != &first && node.is_none() && msg.starts_with(&want))
        },
        || format!("{:?}\n{}", live(&g, "db"), g.log()),
    );
    let (_, w) = g.call("GET", "/v1/workloads/db", None);
    let pending = w["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["state"] == "pending")
        .cloned()
        .unwrap();
    assert_eq!(
        pending["explanation"]["waiting_for"],
        format!("node {holder}, which holds volume db.data.0").as_str(),
        "{pending}"
    );
    let elsewhere = agents[1 - h].containers();
    assert!(
        elsewhere
            .iter()
            .all(|c| c["labels"]["skiff.workload"] != "db"),
        "started empty on {other}: {elsewhere:?}"
    );

    // The partition heals: the replacement goes back to the node, to its
    // data, and the stale container there is stopped.
    agents[h].restart();
    let (back, node) = running(&g, "db");
    assert_eq!(node, holder);
    assert_ne!(back, first);
    eventually(
        30,
        || lines(&runs).last() == Some(&back),
        || format!("{:?}\n{}", lines(&runs), agents[h].log()),
    );
    assert_eq!(lines(&runs).len(), 4, "{:?}", lines(&runs));
    eventually(
        30,
        || agents[h].running() == [back.clone()],
        || format!("{:?}", agents[h].running()),
    );

    // A volume a running replica mounts is not removed; a removed
    // workload keeps its volume unless asked.
    let (code, v) = g.call("DELETE", "/v1/volumes/db.data.0", None);
    assert_eq!(code, 409, "{v}");
    assert!(
        v["message"].as_str().unwrap_or_default().contains(&back),
        "{v}"
    );
    let (code, _) = g.call("DELETE", "/v1/workloads/db", None);
    assert_eq!(code, 202);
    eventually(
        30,
        || agents[h].running().is_empty(),
        || format!("{:?}", agents[h].running()),
    );
    let (_, vols) = g.call("GET", "/v1/volumes", None);
    assert_eq!(vols[0]["id"], "db.data.0", "{vols}");
    assert_eq!(lines(&runs).len(), 4);
    // Removed: its node deletes the data, then the record goes.
    let (code, v) = g.call("DELETE", "/v1/volumes/db.data.0", None);
    assert_eq!(code, 202, "{v}");
    eventually(
        30,
        || !data.exists() && g.call("GET", "/v1/volumes", None).1 == serde_json::json!([]),
        || format!("{} {}", data.exists(), g.call("GET", "/v1/volumes", None).1),
    );
    let (code, _) = g.call("DELETE", "/v1/volumes/db.data.0", None);
    assert_eq!(code, 404);
}

#[test]
fn host_volumes_go_only_to_nodes_that_publish_them_read_only_when_asked_and_tmpfs_has_its_size() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image) = skiff_e2e::busybox_registry(dir.path());
    let g = Gateway::start(&dir.path().join("gw"), CONFIG);
    let srv = dir.path().join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    std::fs::write(srv.join("hello"), "from the host\n").unwrap();
    let (token, hash) = g.join_token("default", "10m");
    let publisher = Agent::spawn_configured(
        dir.path(),
        "node-h",
        &g,
        &token,
        &hash,
        &format!("\n[volumes.data]\npath = {:?}\n", srv.display().to_string()),
    );
    publisher.wait_up();
    let _plain = Agent::joined(dir.path(), "node-p", &g);
    g.until("/v1/nodes/node-h", "ready", 15, |v| v["status"] == "ready");
    let (_, n) = g.call("GET", "/v1/nodes/node-h", None);
    assert_eq!(n["host_volumes"], serde_json::json!(["data"]), "{n}");

    let spec = format!(
        "name: reader\nimage: {image}\ncommand: [\"sleep\", \"3600\"]\nstop_timeout: 1s\n\
         resources: {{cpu: 10m, memory: 16Mi}}\n\
         volumes: [{{name: d, host: data}}, {{name: scratch, tmpfs: {{size: 1Mi}}}}]\n\
         mounts: [{{volume: d, path: /srv/data, read_only: true}}, {{volume: scratch, path: /scratch}}]\n"
    );
    let (code, v) = g.call("POST", "/v1/workloads", Some(&spec));
    assert_eq!(code, 202, "{v}");
    let (id, node) = running(&g, "reader");
    assert_eq!(node, "node-h");
    let exec = |script: &str| {
        let out = publisher.cli(&["exec", &id, "sh", "-c", script]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(
        exec("cat /srv/data/hello"),
        (Some(0), "from the host\n".to_string())
    );
    let (code, _) = exec("touch /srv/data/new");
    assert_ne!(code, Some(0), "a read-only host volume took a write");
    assert!(!srv.join("new").exists());
    // The tmpfs takes 512 KiB, not 2 MiB.
    assert_eq!(
        exec("dd if=/dev/zero of=/scratch/a bs=1k count=512 2>/dev/null").0,
        Some(0)
    );
    assert_ne!(
        exec("dd if=/dev/zero of=/scratch/b bs=1k count=2048 2>/dev/null").0,
        Some(0)
    );

    // A host volume no node publishes: it waits, and says why.
    let spec = format!(
        "name: logs\nimage: {image}\ncommand: [\"sleep\", \"3600\"]\n\
         resources: {{cpu: 10m, memory: 16Mi}}\n\
         volumes: [{{name: l, host: logs}}]\nmounts: [{{volume: l, path: /logs}}]\n"
    );
    let (code, v) = g.call("POST", "/v1/workloads", Some(&spec));
    assert_eq!(code, 202, "{v}");
    eventually(
        20,
        || {
            live(&g, "logs").iter().any(|(_, _, _, m)| {
                m.starts_with("0/2 nodes fit: 2 do not publish host volume logs;")
            })
        },
        || format!("{:?}", live(&g, "logs")),
    );
    // A spec that names a path instead of a published name is refused.
    let bad = spec.replace("host: logs", "host: /var/log");
    let (code, v) = g.call(
        "POST",
        "/v1/workloads",
        Some(&bad.replace("name: logs", "name: logs2")),
    );
    assert_eq!(code, 400, "{v}");
    assert!(v.to_string().contains("spec.volumes[0].host"), "{v}");
}
