//! Faults end to end, as root: a real gateway and real agents running
//! real containers, each agent on a host of its own ([`Fleet`]); an agent
//! killed, hung (SIGSTOP) or briefly silent, a host cut off, the
//! registry unreachable. Each scenario
//! asserts on the API's view and on the hosts' containers, and prints its
//! figures (`--nocapture` shows them).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_e2e::hosts::Fleet;
use skiff_e2e::{Agent, Gateway, eventually};
use skiff_test_support::tools::require_root;

/// Heartbeats every 250 ms; a node silent for 2 s is down.
const CONFIG: &str = "heartbeat_interval = \"250ms\"\ndown_after = \"2s\"\n";

fn sleeper(name: &str, image: &str, replicas: u32) -> String {
    format!(
        "name: {name}\nimage: {image}\ncommand: [\"sleep\", \"3600\"]\nreplicas: {replicas}\n\
         resources: {{cpu: 10m, memory: 8Mi}}\nstop_timeout: 1s\n"
    )
}

/// Live allocations of `name`: id → (node, state, restarts).
fn live(g: &Gateway, name: &str) -> BTreeMap<String, (String, String, u64)> {
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
                (
                    a["node"].as_str().unwrap_or_default().to_string(),
                    a["state"].as_str().unwrap_or_default().to_string(),
                    a["restarts"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

fn running_count(g: &Gateway, name: &str) -> usize {
    live(g, name)
        .values()
        .filter(|(_, state, _)| state == "running")
        .count()
}

/// The agent's containers of workload `name`: container id → (allocation,
/// started at).
fn containers_of(a: &Agent, name: &str) -> BTreeMap<String, (String, i64)> {
    a.containers()
        .iter()
        .filter(|c| c["labels"]["skiff.workload"] == name && c["state"] == "running")
        .map(|c| {
            (
                c["id"].as_str().unwrap_or_default().to_string(),
                (
                    c["name"].as_str().unwrap_or_default().to_string(),
                    c["started_ms"].as_i64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// What each scenario starts from: a registry with the busybox image, a
/// gateway, and an agent joined for each of `nodes`, each on a host of its
/// own.
fn fleet(nodes: &[&str]) -> Fleet {
    require_root();
    Fleet::start_temp(CONFIG, nodes)
}

/// Submits `replicas` sleepers named `web` and waits until all run.
fn run_web(g: &Gateway, image: &str, replicas: u32) {
    assert_eq!(
        g.call(
            "POST",
            "/v1/workloads",
            Some(&sleeper("web", image, replicas))
        )
        .0,
        202
    );
    eventually(
        120,
        || running_count(g, "web") == replicas as usize,
        || format!("{:?}\n{}", live(g, "web"), g.log()),
    );
}

fn signal(a: &Agent, sig: nix::sys::signal::Signal) {
    let pid = a.process.as_ref().expect("running").pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("signal the agent");
}

fn node_status(g: &Gateway, node: &str) -> Value {
    g.call("GET", &format!("/v1/nodes/{node}"), None).1["status"].clone()
}

#[test]
fn an_agent_killed_with_20_containers_adopts_them_all_again_none_restarted_none_duplicated() {
    let mut f = fleet(&["node-a"]);
    let (g, agent) = (&f.gateway, &mut f.agents[0]);
    run_web(g, &f.image, 20);
    let allocations = live(g, "web");
    let before = containers_of(agent, "web");
    assert_eq!(before.len(), 20, "{before:?}");

    agent.kill9();
    // The containers outlive their agent.
    let t = Instant::now();
    agent.restart();
    eventually(
        30,
        || {
            node_status(g, "node-a") == "ready"
                && running_count(g, "web") == 20
                && containers_of(agent, "web").len() == 20
        },
        || format!("{:?}\n{}", live(g, "web"), agent.log()),
    );
    let adopted = t.elapsed();
    // The same containers, started when they were, and the same
    // allocations: nothing restarted, replaced or duplicated.
    assert_eq!(containers_of(agent, "web"), before);
    let after = live(g, "web");
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        allocations.keys().collect::<Vec<_>>()
    );
    assert!(
        after.values().all(|(_, _, restarts)| *restarts == 0),
        "{after:?}"
    );
    let all = agent.containers().len();
    assert_eq!(all, 20, "no other container: {:?}", agent.containers());
    println!(
        "scenario agent-kill-9: containers=20 readopted=20 restarted=0 duplicated=0 \
         agent_restart_to_all_reported_s={:.2}",
        adopted.as_secs_f64()
    );
}

#[test]
fn a_hung_agent_is_down_its_replicas_run_elsewhere_and_on_sigcont_the_stale_copies_stop() {
    let f = fleet(&["node-a", "node-b"]);
    let (g, a, b) = (&f.gateway, &f.agents[0], &f.agents[1]);
    // Everything on node-a first.
    assert_eq!(g.call("POST", "/v1/nodes/node-b/cordon", None).0, 200);
    run_web(g, &f.image, 3);
    assert_eq!(g.call("POST", "/v1/nodes/node-b/uncordon", None).0, 200);

    // A hung host: the agent stops answering (nothing may ask it while it
    // is stopped: it would not answer); its containers run on.
    let pids: Vec<i64> = a
        .containers()
        .iter()
        .filter(|c| c["labels"]["skiff.workload"] == "web")
        .filter_map(|c| c["pid"].as_i64())
        .collect();
    assert_eq!(pids.len(), 3, "{:?}", a.containers());
    let t = Instant::now();
    signal(a, nix::sys::signal::Signal::SIGSTOP);
    eventually(30, || node_status(g, "node-a") == "down", || g.log());
    let detected = t.elapsed();
    eventually(
        60,
        || containers_of(b, "web").len() == 3 && running_count(g, "web") == 3,
        || format!("{:?}\n{}", live(g, "web"), g.log()),
    );
    let replaced = t.elapsed();
    assert!(
        live(g, "web").values().all(|(node, _, _)| node == "node-b"),
        "{:?}",
        live(g, "web")
    );
    // Meanwhile the hung node's copies still run: 6 copies of 3.
    assert!(
        pids.iter()
            .all(|p| std::path::Path::new(&format!("/proc/{p}")).exists()),
        "{pids:?}"
    );

    // It wakes: its stale copies are stopped, the count is exact again.
    let woke = Instant::now();
    signal(a, nix::sys::signal::Signal::SIGCONT);
    eventually(
        60,
        || containers_of(a, "web").is_empty() && node_status(g, "node-a") == "ready",
        || format!("{:?}\n{}", a.containers(), a.log()),
    );
    let converged = woke.elapsed();
    // Copies above the desired count: from the replacements running until
    // the stale ones stopped (the hang itself is most of it).
    let above = t.elapsed().saturating_sub(replaced);
    assert_eq!(containers_of(b, "web").len(), 3);
    assert_eq!(running_count(g, "web"), 3);
    println!(
        "scenario hung-agent: detect_down_s={:.2} replacements_running_s={:.2} \
         copies_above_desired=3 for_s={:.2} stale_stopped_after_sigcont_s={:.2}",
        detected.as_secs_f64(),
        replaced.as_secs_f64(),
        above.as_secs_f64(),
        converged.as_secs_f64()
    );
}

#[test]
fn a_silence_shorter_than_the_grace_reschedules_nothing() {
    let f = fleet(&["node-a", "node-b"]);
    let (g, a, b) = (&f.gateway, &f.agents[0], &f.agents[1]);
    run_web(g, &f.image, 4);
    let allocations = live(g, "web");
    let (on_a, on_b) = (containers_of(a, "web"), containers_of(b, "web"));
    // Silent for half the 2 s grace.
    signal(a, nix::sys::signal::Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1000));
    signal(a, nix::sys::signal::Signal::SIGCONT);
    // Several heartbeats later: the same allocations and containers.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(node_status(g, "node-a"), "ready");
    assert_eq!(live(g, "web"), allocations);
    assert_eq!(containers_of(a, "web"), on_a);
    assert_eq!(containers_of(b, "web"), on_b);
    let (_, events) = g.call("GET", "/v1/events", None);
    let down = events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["id"] == "node-a" && e["message"].as_str().unwrap_or("").contains("down"))
        .count();
    assert_eq!(down, 0, "{events}");
    println!("scenario blip: silent_s=1.0 grace_s=2.0 rescheduled=0 restarted=0");
}

#[test]
fn a_partitioned_host_is_replaced_and_after_healing_its_stale_copies_stop() {
    // Each agent on a host of its own (a network namespace on a shared
    // LAN): a host can be cut off as a whole.
    let f = fleet(&["node-a", "node-b"]);
    let (g, a, b) = (&f.gateway, &f.agents[0], &f.agents[1]);
    assert_eq!(g.call("POST", "/v1/nodes/node-b/cordon", None).0, 200);
    run_web(g, &f.image, 3);
    assert_eq!(g.call("POST", "/v1/nodes/node-b/uncordon", None).0, 200);
    let before = containers_of(a, "web");
    assert_eq!(before.len(), 3);

    // The host's link goes: nothing in or out, its agent and containers
    // run on, cut off.
    let cut = Instant::now();
    f.hosts[0].partition();
    eventually(30, || node_status(g, "node-a") == "down", || g.log());
    let detected = cut.elapsed();
    eventually(
        60,
        || containers_of(b, "web").len() == 3 && running_count(g, "web") == 3,
        || format!("{:?}\n{}", live(g, "web"), g.log()),
    );
    let replaced = cut.elapsed();
    assert!(
        live(g, "web").values().all(|(node, _, _)| node == "node-b"),
        "{:?}",
        live(g, "web")
    );
    // Cut off, node-a's copies still run (its agent cannot know).
    assert_eq!(containers_of(a, "web"), before);
    // 30 s in all, as a WAN link that drops for a while.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(cut.elapsed()));

    let healed = Instant::now();
    f.hosts[0].heal();
    eventually(
        60,
        || containers_of(a, "web").is_empty() && node_status(g, "node-a") == "ready",
        || format!("{:?}\n{}\n{}", a.containers(), a.log(), g.log()),
    );
    let stale_stopped = healed.elapsed();
    // Exactly the desired count, all on node-b, none restarted there.
    assert_eq!(containers_of(b, "web").len(), 3);
    assert_eq!(running_count(g, "web"), 3);
    assert!(
        live(g, "web")
            .values()
            .all(|(node, _, restarts)| node == "node-b" && *restarts == 0),
        "{:?}",
        live(g, "web")
    );
    println!(
        "scenario partition: partitioned_s={:.1} detect_down_s={:.2} replacements_running_s={:.2} \
         copies_above_desired_after_heal_s={:.2}",
        (healed - cut).as_secs_f64(),
        detected.as_secs_f64(),
        replaced.as_secs_f64(),
        stale_stopped.as_secs_f64()
    );
}

#[test]
fn with_the_registry_unreachable_allocations_wait_with_the_reason_and_start_when_it_returns() {
    let f = fleet(&["node-a"]);
    let g = &f.gateway;
    // An image no host has yet.
    let dir = tempfile::tempdir().unwrap();
    let image = skiff_test_support::images::OciImage::busybox(&dir.path().join("i"), "v2", &[])
        .and_then(|i| i.push(&f.registry, "skiff/other"))
        .unwrap();

    let cut = f.cut_registry();
    let t = Instant::now();
    assert_eq!(
        g.call("POST", "/v1/workloads", Some(&sleeper("web", &image, 1)))
            .0,
        202
    );
    // It waits, and says why.
    let mut why = String::new();
    eventually(
        90,
        || {
            let (_, w) = g.call("GET", "/v1/workloads/web", None);
            why = w["allocations"][0]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            why.contains("pull")
        },
        || format!("{:?}\n{}", live(g, "web"), f.agents[0].log()),
    );
    let reason_shown = t.elapsed();
    assert!(why.contains(&image), "{why}");
    assert!(containers_of(&f.agents[0], "web").is_empty());

    // The registry back: it starts, once.
    let back = Instant::now();
    drop(cut);
    eventually(
        90,
        || running_count(g, "web") == 1 && containers_of(&f.agents[0], "web").len() == 1,
        || format!("{:?}\n{}", live(g, "web"), f.agents[0].log()),
    );
    let started = back.elapsed();
    assert_eq!(live(g, "web").len(), 1, "{:?}", live(g, "web"));
    println!(
        "scenario registry-unreachable: reason_shown_s={:.2} reason={why:?} \
         started_after_return_s={:.2} duplicated=0",
        reason_shown.as_secs_f64(),
        started.as_secs_f64()
    );
}

/// Live allocations by workload, from `GET /v1/allocations`: workload →
/// [(node, state)].
fn live_by_workload(g: &Gateway) -> BTreeMap<String, Vec<(String, String)>> {
    let (_, v) = g.call("GET", "/v1/allocations", None);
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for a in v.as_array().cloned().unwrap_or_default() {
        let state = a["state"].as_str().unwrap_or_default();
        if state != "stopped" && state != "lost" {
            out.entry(a["workload"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push((
                    a["node"].as_str().unwrap_or_default().to_string(),
                    state.to_string(),
                ));
        }
    }
    out
}

/// Running containers per workload over every host.
fn containers_by_workload(agents: &[Agent]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for a in agents {
        for c in a.containers() {
            if c["state"] == "running"
                && let Some(w) = c["labels"]["skiff.workload"].as_str()
            {
                *out.entry(w.to_string()).or_default() += 1;
            }
        }
    }
    out
}

/// The store a gateway scenario runs on.
enum Store {
    Embedded,
    Etcd,
}

/// 500 single-replica workloads submitted one after another, as a client
/// that retries until it has an answer does; the gateway `kill -9`ed
/// after the first 150 are acknowledged and started again.
fn a_gateway_killed_mid_submissions(store: Store) {
    require_root();
    const TOTAL: usize = 500;
    const KILL_AFTER: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    // Declared first, so it stops after the fleet.
    let etcd = matches!(store, Store::Etcd)
        .then(|| skiff_e2e::etcd::Etcd::start(&dir.path().join("etcd")));
    let config = match &etcd {
        None => CONFIG.to_string(),
        Some(e) => format!(
            "{CONFIG}\n[etcd]\nendpoints = {}\nlease_ttl = \"2s\"\n",
            e.endpoints_toml()
        ),
    };
    let mut f = Fleet::start(dir.path(), &config, &["node-a", "node-b", "node-c"]);
    let (api, token, image) = (
        f.gateway.api.clone(),
        f.gateway.admin_token(),
        f.image.clone(),
    );
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let submitter = {
        let acked = std::sync::Arc::clone(&acked);
        std::thread::spawn(move || {
            // name → the answer that settled it (202, or 409: committed
            // before, its answer lost to the crash).
            let mut settled: BTreeMap<String, u16> = BTreeMap::new();
            let mut retries = 0u32;
            for i in 0..TOTAL {
                let name = format!("w{i:03}");
                let spec = format!(
                    "name: {name}\nimage: {image}\ncommand: [\"sleep\", \"3600\"]\n\
                     resources: {{cpu: 1m, memory: 4Mi}}\nstop_timeout: 1s\n"
                );
                loop {
                    match skiff_e2e::post_workload(&api, &token, &spec) {
                        code @ (202 | 409) => {
                            settled.insert(name, code);
                            acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            break;
                        }
                        // Nothing answered, or not yet able to: again.
                        0 | 502 | 503 => {
                            retries += 1;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        other => panic!("{name}: answered {other}"),
                    }
                }
            }
            (settled, retries)
        })
    };
    eventually(
        120,
        || acked.load(std::sync::atomic::Ordering::SeqCst) >= KILL_AFTER,
        || f.gateway.log(),
    );
    let acked_at_kill = acked.load(std::sync::atomic::Ordering::SeqCst);
    let t = Instant::now();
    f.gateway.kill9();
    f.gateway.restart();
    let back = t.elapsed();
    let (settled, retries) = submitter.join().unwrap();
    let lost_answers = settled.values().filter(|c| **c == 409).count();

    // Every acknowledged submission exists, once.
    let (code, list) = f.gateway.call("GET", "/v1/workloads", None);
    assert_eq!(code, 200, "{list}");
    let names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["spec"]["name"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<&String> = settled.keys().filter(|n| !names.contains(n)).collect();
    assert!(missing.is_empty(), "acknowledged but gone: {missing:?}");
    assert_eq!(names.len(), TOTAL, "{names:?}");

    // One replica each, running, one container each on the hosts.
    let t = Instant::now();
    let mut most_live = 0;
    eventually(
        300,
        || {
            let l = live_by_workload(&f.gateway);
            most_live = most_live.max(l.values().map(Vec::len).max().unwrap_or(0));
            l.len() == TOTAL
                && l.values().all(|a| a.len() == 1 && a[0].1 == "running")
                && containers_by_workload(&f.agents)
                    .values()
                    .filter(|n| **n == 1)
                    .count()
                    == TOTAL
        },
        || {
            let l = live_by_workload(&f.gateway);
            let not: Vec<_> = l
                .iter()
                .filter(|(_, a)| a.len() != 1 || a[0].1 != "running")
                .take(10)
                .collect();
            format!(
                "{} live; not one running: {not:?}\n{}",
                l.len(),
                f.gateway.log()
            )
        },
    );
    let converged = t.elapsed();
    let per_node =
        live_by_workload(&f.gateway)
            .values()
            .fold(BTreeMap::<String, usize>::new(), |mut m, a| {
                *m.entry(a[0].0.clone()).or_default() += 1;
                m
            });
    let store = if etcd.is_some() { "etcd" } else { "embedded" };
    println!(
        "scenario gateway-kill-9 ({store}): submitted={TOTAL} acknowledged_before_kill={acked_at_kill} \
         gateway_back_s={:.2} retries={retries} answers_lost_then_409={lost_answers} \
         lost_acknowledged={} most_live_per_workload={most_live} \
         all_running_after_s={:.2} per_node={per_node:?}",
        back.as_secs_f64(),
        missing.len(),
        converged.as_secs_f64()
    );
    assert_eq!(most_live, 1, "a workload had two live allocations");
}

#[test]
fn a_gateway_killed_mid_500_submissions_loses_no_acknowledged_one_on_the_embedded_store() {
    a_gateway_killed_mid_submissions(Store::Embedded);
}

#[test]
fn a_gateway_killed_mid_500_submissions_loses_no_acknowledged_one_on_etcd() {
    a_gateway_killed_mid_submissions(Store::Etcd);
}

#[test]
fn a_rolling_restart_of_every_agent_keeps_all_but_one_replica_running() {
    let mut f = fleet(&["node-a", "node-b", "node-c"]);
    for name in ["web", "api"] {
        let spec = format!(
            "{}placement: {{distinct_nodes: true}}\n",
            sleeper(name, &f.image, 3)
        );
        assert_eq!(f.gateway.call("POST", "/v1/workloads", Some(&spec)).0, 202);
    }
    eventually(
        60,
        || running_count(&f.gateway, "web") == 3 && running_count(&f.gateway, "api") == 3,
        || format!("{:?}", live_by_workload(&f.gateway)),
    );
    let before = containers_by_workload(&f.agents);
    // A sampler of the API's view, while each agent is stopped (SIGTERM)
    // and started again, one after another, as an upgrade does.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, api, token) = (
            std::sync::Arc::clone(&stop),
            f.gateway.api.clone(),
            f.gateway.admin_token(),
        );
        std::thread::spawn(move || {
            let mut least: BTreeMap<String, usize> = BTreeMap::new();
            let mut samples = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let out = std::process::Command::new("curl")
                    .args(["-sS", "-m", "5", "-H"])
                    .arg(format!("Authorization: Bearer {token}"))
                    .arg(format!("{api}/v1/allocations"))
                    .output()
                    .unwrap();
                let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else {
                    continue;
                };
                let mut running: BTreeMap<String, usize> =
                    [("web".to_string(), 0), ("api".to_string(), 0)].into();
                for a in v.as_array().cloned().unwrap_or_default() {
                    if a["state"] == "running" {
                        *running
                            .entry(a["workload"].as_str().unwrap_or_default().to_string())
                            .or_default() += 1;
                    }
                }
                for (w, n) in running {
                    let m = least.entry(w).or_insert(n);
                    *m = (*m).min(n);
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (least, samples)
        })
    };
    let t = Instant::now();
    for i in 0..f.agents.len() {
        f.agents[i].stop();
        f.agents[i].restart();
        let node = ["node-a", "node-b", "node-c"][i];
        eventually(
            30,
            || node_status(&f.gateway, node) == "ready",
            || f.agents[i].log(),
        );
    }
    let rolled = t.elapsed();
    eventually(
        60,
        || running_count(&f.gateway, "web") == 3 && running_count(&f.gateway, "api") == 3,
        || format!("{:?}", live_by_workload(&f.gateway)),
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (least, samples) = sampler.join().unwrap();
    println!(
        "scenario rolling-agent-restart: agents=3 rolled_in_s={:.2} samples={samples} \
         least_running={least:?} (replicas=3)",
        rolled.as_secs_f64()
    );
    assert!(samples > 10, "{samples} samples");
    assert!(least.values().all(|n| *n >= 2), "{least:?}");
    // Nothing was restarted: the same containers run.
    assert_eq!(containers_by_workload(&f.agents), before);
}

#[test]
fn a_rebooted_host_reports_its_containers_gone_and_the_fleet_restores_the_count() {
    let mut f = fleet(&["node-a"]);
    run_web(&f.gateway, &f.image, 3);
    let before = containers_of(&f.agents[0], "web");
    let t = Instant::now();
    f.reboot(0);
    f.agents[0].wait_up();
    let agent_up = t.elapsed();
    eventually(
        60,
        || running_count(&f.gateway, "web") == 3 && containers_of(&f.agents[0], "web").len() == 3,
        || {
            let ps = f.agents[0].cli(&["ps", "-a", "-o", "json"]);
            format!(
                "{:?}\n{}\n{}",
                live(&f.gateway, "web"),
                String::from_utf8_lossy(&ps.stdout),
                f.agents[0].log()
            )
        },
    );
    let restored = t.elapsed();
    let after = containers_of(&f.agents[0], "web");
    // Started afresh: the old ones died with the host.
    let last_before = before.values().map(|(_, at)| *at).max().unwrap_or(0);
    assert!(
        after.values().all(|(_, at)| *at > last_before),
        "{before:?} {after:?}"
    );
    let allocations = live(&f.gateway, "web").len();
    assert_eq!(allocations, 3);
    println!(
        "scenario host-reboot: containers=3 agent_up_s={:.2} restored_s={:.2} duplicated={}",
        agent_up.as_secs_f64(),
        restored.as_secs_f64(),
        allocations + after.len() - 6
    );
}

/// Allocation ids of `name` by node.
fn placed(g: &Gateway, name: &str) -> BTreeMap<String, String> {
    live(g, name)
        .into_iter()
        .map(|(id, (node, _, _))| (id, node))
        .collect()
}

#[test]
fn a_lost_site_moves_what_may_run_elsewhere_and_its_return_moves_nothing_twice() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{CONFIG}\n[[sites]]\nname = \"dc1\"\nkind = \"static\"\ncost_rank = 0\n\n\
         [[sites]]\nname = \"dc2\"\nkind = \"static\"\ncost_rank = 1\n"
    );
    let f = Fleet::start_in_sites(
        dir.path(),
        &config,
        &[("node-a", "dc1"), ("node-b", "dc1"), ("node-c", "dc2")],
    );
    let g = &f.gateway;
    // `web` may run anywhere (dc1 first: it is cheaper); `local` only in
    // dc1.
    run_web(g, &f.image, 4);
    let pinned = format!(
        "{}placement: {{sites: [dc1]}}\n",
        sleeper("local", &f.image, 2)
    );
    assert_eq!(g.call("POST", "/v1/workloads", Some(&pinned)).0, 202);
    eventually(
        60,
        || running_count(g, "local") == 2,
        || format!("{}", g.call("GET", "/v1/workloads/local", None).1),
    );
    let in_dc1 = |n: &String| n == "node-a" || n == "node-b";
    assert!(
        placed(g, "web").values().all(in_dc1),
        "{:?}",
        placed(g, "web")
    );

    // dc1 lost: both its hosts cut off.
    let t = Instant::now();
    f.hosts[0].partition();
    f.hosts[1].partition();
    eventually(
        30,
        || node_status(g, "node-a") == "down" && node_status(g, "node-b") == "down",
        || g.log(),
    );
    let detected = t.elapsed();
    eventually(
        60,
        || {
            let p = placed(g, "web");
            running_count(g, "web") == 4 && p.len() == 4 && p.values().all(|n| n == "node-c")
        },
        || format!("{:?}", live(g, "web")),
    );
    let moved = t.elapsed();
    let after_move = placed(g, "web");
    // `local` may not leave dc1: its replacements wait, placed nowhere.
    assert!(
        placed(g, "local")
            .values()
            .all(|n| n.is_empty() || in_dc1(n)),
        "{:?}",
        live(g, "local")
    );
    // The lost hosts' containers run on, cut off.
    assert_eq!(
        containers_of(&f.agents[0], "web").len() + containers_of(&f.agents[1], "web").len(),
        4
    );

    // dc1 back: its stale copies stop; `web` stays where it moved (no
    // allocation moves twice), `local` runs in dc1 again.
    let healed = Instant::now();
    f.hosts[0].heal();
    f.hosts[1].heal();
    eventually(
        60,
        || {
            containers_of(&f.agents[0], "web").is_empty()
                && containers_of(&f.agents[1], "web").is_empty()
                && running_count(g, "local") == 2
                && containers_of(&f.agents[0], "local").len()
                    + containers_of(&f.agents[1], "local").len()
                    == 2
        },
        || {
            format!(
                "{:?}\n{:?}\n{}",
                live(g, "web"),
                live(g, "local"),
                f.agents[0].log()
            )
        },
    );
    let converged = healed.elapsed();
    let now = placed(g, "web");
    let moved_twice = after_move
        .iter()
        .filter(|(id, node)| now.get(*id) != Some(*node))
        .count();
    let on_dc2 = containers_of(&f.agents[2], "web").len();
    let local_in_dc1 =
        containers_of(&f.agents[0], "local").len() + containers_of(&f.agents[1], "local").len();
    assert_eq!(
        moved_twice, 0,
        "web moved again: {after_move:?} then {now:?}"
    );
    assert_eq!(on_dc2, 4);
    assert_eq!(running_count(g, "web"), 4);
    println!(
        "scenario site-loss: site=dc1 nodes=2 detected_s={:.2} moved_s={:.2} \
         converged_after_return_s={:.2} moved_twice={moved_twice} web_on_dc2={on_dc2} \
         local_back_in_dc1={local_in_dc1}",
        detected.as_secs_f64(),
        moved.as_secs_f64(),
        converged.as_secs_f64()
    );
}

/// An image whose second layer is `mib` MiB that does not compress.
fn big_image(
    dir: &std::path::Path,
    registry: &skiff_test_support::registry::Registry,
    mib: usize,
) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..mib << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    skiff_test_support::images::OciImage::busybox(dir, "big", &[vec![("/noise".into(), noise)]])
        .and_then(|i| i.push(registry, "skiff/big"))
        .unwrap()
}

/// Blobs in an agent's image store whose content is not what their name
/// (a sha256) says.
fn corrupt_blobs(state: &std::path::Path) -> Vec<String> {
    use sha2::Digest as _;
    let blobs = state.join("images/blobs/sha256");
    let mut bad = Vec::new();
    for entry in std::fs::read_dir(&blobs).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let hex = hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()));
        if hex != name {
            bad.push(name);
        }
    }
    bad
}

/// The message of `name`'s first live allocation.
fn message_of(g: &Gateway, name: &str) -> String {
    let (_, w) = g.call("GET", &format!("/v1/workloads/{name}"), None);
    w["allocations"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find_map(|x| x["message"].as_str().filter(|m| !m.is_empty()))
        })
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_full_disk_fails_pulls_and_starts_with_the_reason_corrupts_nothing_and_recovers_once_freed() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // node-a's state directory on a disk of its own with 96 MiB free;
    // declared before the fleet, so unmounted after its agent stops.
    let disk = skiff_e2e::hosts::LoopDisk::mount(&dir.path().join("node-a").join("state"), 640, 96);
    let mut f = Fleet::start(dir.path(), CONFIG, &["node-a"]);
    let g = &f.gateway;
    run_web(g, &f.image, 1);

    // A pull that does not fit: the allocation says why, the image store
    // keeps nothing of it.
    let big = big_image(&dir.path().join("big"), &f.registry, 128);
    let free_before = disk.available();
    assert_eq!(
        g.call("POST", "/v1/workloads", Some(&sleeper("big", &big, 1)))
            .0,
        202
    );
    let t = Instant::now();
    let mut why = String::new();
    eventually(
        90,
        || {
            why = message_of(g, "big");
            why.contains("No space left on device") || why.contains("no space")
        },
        || format!("{:?}\n{}", live(g, "big"), f.agents[0].log()),
    );
    let pull_reason = t.elapsed();
    assert!(why.contains(&big) || why.contains("pull"), "{why}");
    // What the failed pull wrote is given back (within 4 MiB).
    eventually(
        30,
        || disk.available() + (4 << 20) >= free_before,
        || format!("{} of {free_before} free", disk.available()),
    );
    assert_eq!(running_count(g, "web"), 1);

    // Space freed: the same allocation pulls and starts.
    disk.free_ballast();
    let t = Instant::now();
    eventually(
        120,
        || running_count(g, "big") == 1 && containers_of(&f.agents[0], "big").len() == 1,
        || format!("{:?}\n{}", live(g, "big"), f.agents[0].log()),
    );
    let pull_recovered = t.elapsed();
    assert_eq!(g.call("DELETE", "/v1/workloads/big", None).0, 202);
    eventually(
        30,
        || containers_of(&f.agents[0], "big").is_empty(),
        || f.agents[0].log(),
    );

    // A container fills the disk: the agent goes on, and what starts
    // meanwhile either runs (a container needs little space of its own)
    // or fails with the reason, never hangs without one.
    let filler = format!(
        "name: filler\nimage: {}\ncommand: [\"sh\", \"-c\", \"dd if=/dev/zero of=/fill bs=1M; sleep 3600\"]\n\
         resources: {{cpu: 10m, memory: 8Mi}}\nstop_timeout: 1s\n",
        f.image
    );
    assert_eq!(g.call("POST", "/v1/workloads", Some(&filler)).0, 202);
    eventually(
        60,
        || disk.available() < (1 << 20),
        || format!("{} free\n{}", disk.available(), f.agents[0].log()),
    );
    assert_eq!(
        g.call("POST", "/v1/workloads", Some(&sleeper("late", &f.image, 1)))
            .0,
        202
    );
    let t = Instant::now();
    let mut late_why = String::new();
    eventually(
        90,
        || {
            late_why = message_of(g, "late");
            running_count(g, "late") == 1 || late_why.to_lowercase().contains("no space")
        },
        || format!("{:?}\n{}", live(g, "late"), f.agents[0].log()),
    );
    let start_outcome = t.elapsed();
    let late_ran_on_a_full_disk = running_count(g, "late") == 1;
    assert_eq!(running_count(g, "web"), 1, "what ran runs on");
    assert_eq!(running_count(g, "filler"), 1, "the filler itself runs on");

    // The filler gone: `late` starts; the agent, started again, opens
    // its databases and image store as they were.
    assert_eq!(g.call("DELETE", "/v1/workloads/filler", None).0, 202);
    let t = Instant::now();
    eventually(
        120,
        || running_count(g, "late") == 1 && containers_of(&f.agents[0], "late").len() == 1,
        || format!("{:?}\n{}", live(g, "late"), f.agents[0].log()),
    );
    let start_recovered = t.elapsed();
    let running = containers_of(&f.agents[0], "web");
    f.agents[0].kill9();
    f.agents[0].restart();
    f.agents[0].wait_up();
    eventually(
        30,
        || node_status(&f.gateway, "node-a") == "ready" && running_count(&f.gateway, "late") == 1,
        || f.agents[0].log(),
    );
    assert_eq!(containers_of(&f.agents[0], "web"), running);
    let images = f.agents[0].cli(&["images"]);
    let listed = String::from_utf8_lossy(&images.stdout);
    assert!(
        images.status.success() && listed.contains("skiff/busybox") && listed.contains("skiff/big"),
        "{listed}{}",
        String::from_utf8_lossy(&images.stderr)
    );
    let corrupted = corrupt_blobs(&dir.path().join("node-a").join("state"));
    assert!(corrupted.is_empty(), "{corrupted:?}");
    println!(
        "scenario disk-full: pull_reason_s={:.2} reason={why:?} pull_started_after_space_s={:.2} \
         full_disk_start_outcome_s={:.2} ran_on_full_disk={late_ran_on_a_full_disk} \
         reason={late_why:?} running_after_space_s={:.2} corrupted_blobs={}",
        pull_reason.as_secs_f64(),
        pull_recovered.as_secs_f64(),
        start_outcome.as_secs_f64(),
        start_recovered.as_secs_f64(),
        corrupted.len()
    );
}
