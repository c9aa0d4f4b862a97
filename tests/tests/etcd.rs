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
    let (_registry, image) = skiff_e2e::busybox_registry(dir.path());
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
    // Its session is on the leader, which is killed below.
    let urls: Vec<String> = ["g1", "g2", "g3"]
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
    // It re-attached to another gateway, its containers kept.
    assert!(
        agent.log().contains("gateway session ended"),
        "{}",
        agent.log()
    );
    gs["g3"].until("/v1/nodes/node-e", "ready", 30, |v| v["status"] == "ready");
    // Exec reaches the node through either live gateway: the one holding
    // its session brokers it for the other.
    for n in ["g2", "g3"] {
        let path = format!("/v1/workloads/{}/exec", acknowledged[0]);
        let (code, v) = gs[n].call("POST", &path, Some(r#"{"command": ["echo", "relayed"]}"#));
        let text = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        assert_eq!(code, 200, "{n}: {text}");
        // "relayed\n", base64; then the exit code.
        assert!(text.contains("cmVsYXllZAo="), "{n}: {text}");
        assert!(text.contains(r#""exit_code":0"#), "{n}: {text}");
    }

    // The killed gateway back, then a rolling restart of all three
    // (SIGTERM, as an upgrade does) while workloads are submitted.
    gs.get_mut("g1").unwrap().restart();
    eventually(15, || gateways(&gs["g1"]).len() == 3, || gs["g1"].log());
    let apis: Vec<String> = gs.values().map(|g| g.api.clone()).collect();
    let token = gs["g2"].admin_token();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = {
        let (stop, image) = (std::sync::Arc::clone(&stop), image.clone());
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut codes: BTreeMap<u16, u32> = BTreeMap::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let name = format!("r{i}");
                // As the CLI given every gateway does: the next one when
                // one cannot be connected to.
                for api in &apis {
                    let code = skiff_e2e::post_workload(api, &token, &sleeper(&name, &image));
                    *codes.entry(code).or_default() += 1;
                    match code {
                        0 => continue,
                        202 => acked.push(name.clone()),
                        _ => {}
                    }
                    break;
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(150));
            }
            println!("rolling restart: answers {codes:?}");
            (acked, i)
        })
    };
    for name in ["g1", "g2", "g3"] {
        let g = gs.get_mut(name).unwrap();
        let t = Instant::now();
        let status = g.process.as_mut().unwrap().stop(Duration::from_secs(15));
        println!(
            "{name}: stopped by SIGTERM in {:.2}s ({status:?})",
            t.elapsed().as_secs_f64()
        );
        assert!(
            status.is_some_and(|s| s.success()),
            "{name} did not stop cleanly:\n{}",
            g.log()
        );
        g.restart();
        let g = &gs[name];
        eventually(
            30,
            || gateways(g).len() == 3 && leader_of(g).is_some(),
            || format!("{:?}\n{}", gateways(g), g.log()),
        );
        // Load on the fleet between restarts.
        std::thread::sleep(Duration::from_secs(2));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (rolled, tried) = loader.join().unwrap();
    println!(
        "rolling restart: {} of {tried} submissions acknowledged",
        rolled.len()
    );
    assert!(
        tried >= 10 && rolled.len() * 10 >= tried * 9,
        "{} of {tried}",
        rolled.len()
    );
    acknowledged.extend(rolled);
    eventually(
        90,
        || all_running(&gs["g1"], &acknowledged),
        || format!("{:?}", live(&gs["g1"])),
    );
    gs["g3"].until("/v1/nodes/node-e", "ready", 30, |v| v["status"] == "ready");
    let containers_before = agent.running();

    // The leader paused past its lease: another leads; resumed, the paused
    // one commits nothing and follows.
    // Whoever leads after the rolling restart.
    let paused = leader_of(&gs["g1"]).expect("a leader after the restarts");
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
    println!(
        "quorum lost: {other} asked, {:?} leads",
        leader_of(&gs[&other])
    );
    etcd.kill(1);
    // Until the leader notices, a write may still land (or time out and
    // land when quorum returns: a 503 on a timeout is ambiguous, as with
    // any store); it is one workload, never two.
    let mut maybe = Vec::new();
    eventually(
        20,
        || {
            let name = format!("no-quorum-{}", maybe.len());
            let t = Instant::now();
            let (code, v) = gs[&other].call("POST", "/v1/workloads", Some(&sleeper(&name, &image)));
            println!(
                "quorum lost: {name} answered {code} in {:.2}s: {}",
                t.elapsed().as_secs_f64(),
                v["message"]
            );
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

/// `skiff-gateway state …` with `args`: its exit and stderr.
fn state_cmd(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(skiff_e2e::bin("skiff-gateway"))
        .arg("state")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The records of an export, by kind and key.
fn records(path: &Path) -> BTreeMap<(String, String), Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                (
                    v["kind"].as_str().unwrap().to_string(),
                    v["key"].as_str().unwrap().to_string(),
                ),
                v["value"].clone(),
            )
        })
        .collect()
}

#[test]
fn a_running_fleet_moves_from_the_embedded_store_to_etcd_and_back() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image) = skiff_e2e::busybox_registry(dir.path());
    let embedded = "heartbeat_interval = \"250ms\"\ndown_after = \"2s\"\nname = \"solo\"\n";
    let mut g = Gateway::start(&dir.path().join("gw"), embedded);
    let (token, hash) = g.join_token("default", "10m");
    let agent = Agent::spawn(dir.path(), "node-r", &g, &token, &hash);
    agent.wait_up();
    g.until("/v1/nodes/node-r", "ready", 30, |v| v["status"] == "ready");
    let two = sleeper("kept", &image).replace("image:", "replicas: 2\nimage:");
    let (code, v) = g.call("POST", "/v1/workloads", Some(&two));
    assert_eq!(code, 202, "{v}");
    let (code, v) = g.call(
        "POST",
        "/v1/api-tokens",
        Some(r#"{"name": "ci", "role": "read-only"}"#),
    );
    assert_eq!(code, 201, "{v}");
    let ci = v["token"].as_str().unwrap().to_string();
    g.until("/v1/workloads/kept", "two running", 60, |w| {
        w["running"] == 2
    });
    let containers = agent.containers();

    // Exported from the running gateway, over its API.
    let first = dir.path().join("first.ndjson");
    let (ok, err) = state_cmd(&[
        "export",
        "--api",
        &g.api,
        "--token",
        &g.admin_token(),
        "--out",
        first.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let exported = records(&first);
    assert!(exported.contains_key(&("workloads".into(), "kept".into())));
    assert!(exported.contains_key(&("nodes".into(), "node-r".into())));

    // Into etcd, with the gateway stopped; then the same gateway over it.
    let etcd = Etcd::start(&dir.path().join("etcd"));
    let over_etcd = format!(
        "{embedded}\n[etcd]\nendpoints = {}\nlease_ttl = \"2s\"\n",
        etcd.endpoints_toml()
    );
    let etcd_config = dir.path().join("etcd.toml");
    std::fs::write(&etcd_config, &over_etcd).unwrap();
    let state_dir = g.dir.join("state");
    g.process.as_mut().unwrap().stop(Duration::from_secs(10));
    let import = |config: &Path, from: &Path| {
        state_cmd(&[
            "import",
            "--config",
            config.to_str().unwrap(),
            "--state-dir",
            state_dir.to_str().unwrap(),
            "--in",
            from.to_str().unwrap(),
        ])
    };
    let (ok, err) = import(&etcd_config, &first);
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("imported {} records", exported.len())),
        "{err}"
    );
    // Not twice: the store holds records now.
    let (ok, err) = import(&etcd_config, &first);
    assert!(
        !ok && err.contains("an import goes into an empty one"),
        "{err}"
    );
    std::fs::write(g.dir.join("gateway.toml"), &over_etcd).unwrap();
    g.restart();
    g.until("/v1/nodes/node-r", "ready over etcd", 30, |v| {
        v["status"] == "ready"
    });
    let w = g.until("/v1/workloads/kept", "two running over etcd", 60, |w| {
        w["running"] == 2
    });
    assert_eq!(w["version"], 1);
    // The same containers, none restarted; the API token still valid.
    let same = |a: &[Value], b: &[Value]| {
        let ids = |x: &[Value]| {
            let mut v: Vec<String> = x.iter().map(|c| c["id"].to_string()).collect();
            v.sort();
            v
        };
        ids(a) == ids(b)
    };
    assert!(
        same(&containers, &agent.containers()),
        "{:?}",
        agent.containers()
    );
    let (code, v) = g.call_as(Some(&ci), "GET", "/v1/workloads", None);
    assert_eq!(code, 200, "{v}");
    // A gateway leads: an import is refused.
    let (ok, err) = import(&etcd_config, &first);
    assert!(!ok && err.contains("in use"), "{err}");

    // And back: etcd exported (while the gateway runs) into a fresh
    // embedded store holds the same records.
    let second = dir.path().join("second.ndjson");
    let (ok, err) = state_cmd(&[
        "export",
        "--config",
        etcd_config.to_str().unwrap(),
        "--out",
        second.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let back = records(&second);
    let keys = |r: &BTreeMap<(String, String), Value>| r.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&back), keys(&exported));
    assert_eq!(
        back[&("workloads".to_string(), "kept".to_string())],
        exported[&("workloads".to_string(), "kept".to_string())]
    );
    let fresh = dir.path().join("fresh");
    let embedded_config = dir.path().join("embedded.toml");
    std::fs::write(&embedded_config, embedded).unwrap();
    let (embedded_config, fresh) = (embedded_config.to_str().unwrap(), fresh.to_str().unwrap());
    let (ok, err) = state_cmd(&[
        "import",
        "--config",
        embedded_config,
        "--state-dir",
        fresh,
        "--in",
        second.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let third = dir.path().join("third.ndjson");
    let (ok, err) = state_cmd(&[
        "export",
        "--config",
        embedded_config,
        "--state-dir",
        fresh,
        "--out",
        third.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(records(&third), back);
}
