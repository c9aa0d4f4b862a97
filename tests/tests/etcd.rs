//! Several gateways over etcd, end to end, as root: three etcd members on
//! loopback, three real gateways sharing them (and their CA and admin
//! token, copied as an operator distributes them), a real agent; the
//! leader killed while workloads are submitted, a leader paused past its
//! lease, an etcd member lost, quorum lost and restored.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_e2e::etcd::Etcd;
use skiff_e2e::{Agent, Gateway, eventually};
use skiff_test_support::images::OciImage;
use skiff_test_support::registry::Registry;
use skiff_test_support::tools::require_root;

fn config(name: &str, etcd: &Etcd) -> String {
    format!(
        "heartbeat_interval = \"250ms\"\ndown_after = \"2s\"\nname = \"{name}\"\n\n[etcd]\nendpoints = {}\nlease_ttl = \"2s\"\n",
        etcd.endpoints_toml()
    )
}

/// Gateway `name`, sharing `first`'s CA and admin token (none for the
/// first).
fn gateway(dir: &Path, name: &str, etcd: &Etcd, first: Option<&Gateway>) -> Gateway {
    let gdir = dir.join(name);
    if let Some(f) = first {
        let state = gdir.join("state");
        std::fs::create_dir_all(state.join("pki")).unwrap();
        for file in ["pki/ca.key", "pki/ca.crt", "admin.token"] {
            std::fs::copy(f.dir.join("state").join(file), state.join(file)).unwrap();
        }
    }
    Gateway::start(&gdir, &config(name, etcd))
}

fn gateways(g: &Gateway) -> Vec<Value> {
    let (code, v) = g.call("GET", "/v1/gateways", None);
    assert_eq!(code, 200, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

fn leader_of(g: &Gateway) -> Option<String> {
    gateways(g)
        .iter()
        .find(|x| x["role"] == "leader")
        .and_then(|x| x["name"].as_str().map(str::to_string))
}

fn sleeper(name: &str, image: &str) -> String {
    format!(
        "name: {name}\nimage: {image}\ncommand: [\"sleep\", \"3600\"]\nresources: {{cpu: 10m, memory: 8Mi}}\nstop_timeout: 1s\n"
    )
}

/// Live allocations by workload, as `g` shows them.
fn live(g: &Gateway) -> BTreeMap<String, Vec<Value>> {
    let (code, v) = g.call("GET", "/v1/allocations", None);
    assert_eq!(code, 200, "{v}");
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for a in v.as_array().cloned().unwrap_or_default() {
        if a["state"] != "stopped" && a["state"] != "lost" {
            out.entry(a["workload"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push(a);
        }
    }
    out
}

fn all_running(g: &Gateway, names: &[String]) -> bool {
    let l = live(g);
    names.iter().all(|n| {
        l.get(n)
            .is_some_and(|a| a.len() == 1 && a[0]["state"] == "running")
    })
}

#[test]
fn three_gateways_over_etcd_survive_a_killed_leader_a_paused_one_and_lost_quorum() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start().unwrap();
    let image = OciImage::busybox(&dir.path().join("image"), "test", &[])
        .unwrap()
        .push(&registry, "skiff/busybox")
        .unwrap();
    let mut etcd = Etcd::start(&dir.path().join("etcd"));
    let mut gs: BTreeMap<String, Gateway> = BTreeMap::new();
    let g1 = gateway(dir.path(), "g1", &etcd, None);
    eventually(15, || leader_of(&g1).as_deref() == Some("g1"), || g1.log());
    let g2 = gateway(dir.path(), "g2", &etcd, Some(&g1));
    let g3 = gateway(dir.path(), "g3", &etcd, Some(&g1));
    gs.insert("g1".into(), g1);
    gs.insert("g2".into(), g2);
    gs.insert("g3".into(), g3);
    // Every gateway sees the three, and the same leader.
    for g in gs.values() {
        eventually(
            15,
            || gateways(g).len() == 3 && leader_of(g).as_deref() == Some("g1"),
            || format!("{:?}\n{}", gateways(g), g.log()),
        );
    }

    // A join token made on a follower (forwarded to the leader), an agent
    // that knows every gateway, joining through a follower.
    let (token, hash) = gs["g3"].join_token("default", "10m");
    let urls: Vec<String> = ["g2", "g1", "g3"]
        .iter()
        .map(|n| gs[*n].agent_url.clone())
        .collect();
    let agent = Agent::spawn_via(dir.path(), "node-e", &urls.join(","), &token, &hash);
    agent.wait_up();
    for g in gs.values() {
        g.until("/v1/nodes/node-e", "ready", 30, |v| v["status"] == "ready");
    }

    // Workloads submitted through a follower while the leader is killed.
    let mut acknowledged: Vec<String> = Vec::new();
    let mut killed_at = None;
    let mut first_after = None;
    for i in 0..30 {
        let name = format!("w{i}");
        if i == 10 {
            gs.get_mut("g1").unwrap().process.as_mut().unwrap().kill9();
            killed_at = Some(Instant::now());
        }
        let (code, v) = gs["g2"].call("POST", "/v1/workloads", Some(&sleeper(&name, &image)));
        match code {
            202 => {
                if let (Some(k), None) = (killed_at, first_after) {
                    first_after = Some(Instant::now().duration_since(k));
                }
                acknowledged.push(name);
            }
            503 => assert_eq!(v["code"], "unavailable", "{v}"),
            _ => panic!("{name}: {code} {v}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eventually(
        20,
        || leader_of(&gs["g2"]).is_some_and(|l| l != "g1"),
        || gs["g2"].log(),
    );
    println!(
        "leader killed: the first submission after it acknowledged {:.2}s later (lease TTL 2s)",
        first_after.unwrap().as_secs_f64()
    );
    // Held through the election rather than refused.
    assert!(acknowledged.len() >= 28, "{acknowledged:?}");
    // Every acknowledged submission runs, once; the agent re-attached.
    let new_leader = leader_of(&gs["g2"]).unwrap();
    eventually(
        60,
        || all_running(&gs["g2"], &acknowledged),
        || format!("{:?}\n{}", live(&gs["g2"]), gs[&new_leader].log()),
    );
    eventually(
        30,
        || agent.running().len() == acknowledged.len(),
        || format!("{:?} vs {acknowledged:?}", agent.running()),
    );
    let containers_before = agent.running();
    gs["g3"].until("/v1/nodes/node-e", "ready", 30, |v| v["status"] == "ready");

    // The leader paused past its lease: another leads; resumed, the paused
    // one commits nothing and follows.
    let paused = new_leader.clone();
    let pid = gs[&paused].process.as_ref().unwrap().pid() as i32;
    let other = gs
        .keys()
        .find(|n| **n != paused && *n != "g1")
        .unwrap()
        .clone();
    signal(pid, "STOP");
    eventually(
        20,
        || leader_of(&gs[&other]).is_some_and(|l| l != paused),
        || gs[&other].log(),
    );
    let (code, v) = gs[&other].call(
        "POST",
        "/v1/workloads",
        Some(&sleeper("after-pause", &image)),
    );
    assert_eq!(code, 202, "{v}");
    acknowledged.push("after-pause".into());
    signal(pid, "CONT");
    eventually(
        15,
        || {
            gs[&paused].log().contains("stepped down")
                && leader_of(&gs[&paused]).is_some_and(|l| l != paused)
        },
        || gs[&paused].log(),
    );
    eventually(
        60,
        || all_running(&gs[&paused], &acknowledged),
        || {
            format!(
                "{:?}\nagent:\n{}\n{}",
                live(&gs[&paused]),
                agent.log(),
                gs.values()
                    .map(|g| g.log())
                    .collect::<Vec<_>>()
                    .join("\n=====\n")
            )
        },
    );
    let leaders: Vec<String> = gateways(&gs[&other])
        .iter()
        .filter(|g| g["role"] == "leader")
        .map(|g| g["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(leaders.len(), 1, "{leaders:?}");

    // One etcd member lost: nothing changes.
    etcd.kill(0);
    let (code, v) = gs[&other].call("POST", "/v1/workloads", Some(&sleeper("one-down", &image)));
    assert_eq!(code, 202, "{v}");
    acknowledged.push("one-down".into());
    eventually(
        60,
        || all_running(&gs[&other], &acknowledged),
        || format!("{:?}", live(&gs[&other])),
    );

    // Quorum lost: writes refused with 503, reads answered, containers
    // kept.
    etcd.kill(1);
    // Until the leader notices, a write may still land (or time out and
    // land when quorum returns: a 503 on a timeout is ambiguous, as with
    // any store); it is one workload, never two.
    let mut maybe = Vec::new();
    eventually(
        20,
        || {
            let name = format!("no-quorum-{}", maybe.len());
            let (code, v) = gs[&other].call("POST", "/v1/workloads", Some(&sleeper(&name, &image)));
            maybe.push(name);
            code == 503
                && v["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("state store unavailable")
        },
        || gs[&other].log(),
    );
    let (code, _) = gs[&paused].call("GET", "/v1/workloads", None);
    assert_eq!(code, 200);
    assert!(agent.running().len() >= containers_before.len());
    // Quorum back: everything converges, and writes are taken again.
    etcd.start_member(0);
    etcd.start_member(1);
    eventually(
        60,
        || {
            let (code, _) = gs[&other].call(
                "POST",
                "/v1/workloads",
                Some(&sleeper("quorum-back", &image)),
            );
            code == 202 || code == 409
        },
        || gs[&other].log(),
    );
    acknowledged.push("quorum-back".into());
    for g in gs
        .values()
        .filter(|g| g.process.as_ref().is_some_and(|p| p.pid() != 0))
    {
        if g.dir.ends_with("g1") {
            continue;
        }
        eventually(
            60,
            || all_running(g, &acknowledged),
            || format!("{:?}", live(g)),
        );
    }
    // Exactly one container per workload, every acknowledged one among
    // them.
    let workloads: Vec<String> = agent
        .running()
        .iter()
        .map(|c| {
            c.rsplit_once('-')
                .map_or(c.as_str(), |(w, _)| w)
                .to_string()
        })
        .collect();
    let mut unique = workloads.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), workloads.len(), "duplicated: {workloads:?}");
    for w in &acknowledged {
        assert!(unique.contains(w), "{w} is not running: {unique:?}");
    }
    for w in &unique {
        assert!(
            acknowledged.contains(w) || maybe.contains(w),
            "{w} was never submitted"
        );
    }
}

fn signal(pid: i32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}
