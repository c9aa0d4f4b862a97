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
