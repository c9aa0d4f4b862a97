//! The control plane end to end, as root: a real gateway, real agents
//! joining it over mutual TLS, workloads over REST running as real
//! containers, agents killed and partitioned, the gateway killed.

use std::time::Duration;

use serde_json::Value;
use skiff_e2e::{Agent, Gateway, eventually};
use skiff_test_support::tools::require_root;

/// Down after 2 s here, so tests do not wait for the 5 s default.
const CONFIG: &str = "heartbeat_interval = \"250ms\"\ndown_after = \"2s\"\n";

fn registry(dir: &std::path::Path) -> (skiff_test_support::registry::Registry, String) {
    skiff_e2e::busybox_registry(dir)
}

fn joined(g: &Gateway, dir: &std::path::Path, name: &str) -> Agent {
    Agent::joined(dir, name, g)
}

fn sleeper(name: &str, image: &str, replicas: u32) -> String {
    format!(
        "name: {name}\nimage: {image}\nreplicas: {replicas}\ncommand: [\"sleep\", \"3600\"]\nresources: {{cpu: 100m, memory: 32Mi}}\nstop_timeout: 1s\n"
    )
}

/// Allocations of a workload that are running.
fn running(w: &Value) -> Vec<Value> {
    w["allocations"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|a| a["state"] == "running")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn joins_are_refused_with_used_expired_or_forged_tokens_and_a_wrong_ca() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(&dir.path().join("gw"), CONFIG);
    let (token, hash) = g.join_token("default", "10m");
    let a = Agent::spawn(dir.path(), "node-a", &g, &token, &hash);
    a.wait_up();
    g.until("/v1/nodes/node-a", "ready", 15, |v| v["status"] == "ready");

    let refused = |name: &str, token: &str, hash: &str, why: &str| {
        let mut b = Agent::spawn(dir.path(), name, &g, token, hash);
        let (code, log) = b.wait_exit();
        assert_ne!(code, Some(0), "{name} joined: {log}");
        assert!(log.contains(why), "{name}: wanted {why:?} in:\n{log}");
    };
    refused("reuse", &token, &hash, "join token was already used");
    let (short, _) = g.join_token("default", "1s");
    std::thread::sleep(Duration::from_millis(1500));
    refused("late", &short, &hash, "join token has expired");
    refused(
        "forged",
        "skiff-join-0123456789abcdef0123456789abcdef0123456789abcdef",
        &hash,
        "join token is not valid",
    );
    let (fresh, _) = g.join_token("default", "10m");
    let wrong = format!("sha256:{}", "ab".repeat(32));
    refused("mitm", &fresh, &wrong, "does not match the pinned");
    // Only the first joined; the unused token still works for a good CA.
    let (code, nodes) = g.call("GET", "/v1/nodes", None);
    assert_eq!(code, 200);
    assert_eq!(nodes.as_array().unwrap().len(), 1, "{nodes}");
    let c = Agent::spawn(dir.path(), "node-c", &g, &fresh, &hash);
    c.wait_up();
    g.until("/v1/nodes/node-c", "ready", 15, |v| v["status"] == "ready");
    // Nodes get subnets that do not overlap.
    let (_, nodes) = g.call("GET", "/v1/nodes", None);
    let subnets: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["subnet"].as_str().unwrap())
        .collect();
    assert_eq!(subnets.len(), 2);
    assert_ne!(subnets[0], subnets[1]);
}

#[test]
fn an_agent_started_while_its_gateway_is_down_waits_and_joins_when_it_is_back() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start(&dir.path().join("gw"), CONFIG);
    let (token, hash) = g.join_token("default", "10m");
    // A VM that boots before its gateway is back from a restart.
    g.kill9();
    let mut a = Agent::spawn(dir.path(), "node-a", &g, &token, &hash);
    eventually(
        15,
        || {
            a.log()
                .contains("no gateway answered the join; trying again")
        },
        || a.log(),
    );
    assert!(
        a.process.as_mut().unwrap().is_running(),
        "the agent gave up on a gateway that did not answer:\n{}",
        a.log()
    );
    g.restart();
    a.wait_up();
    g.until("/v1/nodes/node-a", "ready", 30, |v| v["status"] == "ready");
    assert!(a.log().contains("joined the gateway"), "{}", a.log());
}

#[test]
fn a_workload_runs_moves_off_a_dead_agent_and_leaves_no_duplicate() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image) = registry(dir.path());
    let g = Gateway::start(&dir.path().join("gw"), CONFIG);
    let mut agents = [
        joined(&g, dir.path(), "node-a"),
        joined(&g, dir.path(), "node-b"),
    ];
    let (code, v) = g.call("POST", "/v1/workloads", Some(&sleeper("web", &image, 1)));
    assert_eq!(code, 202, "{v}");
    let w = g.until("/v1/workloads/web", "running", 60, |w| {
        running(w).len() == 1
    });
    let first = running(&w)[0].clone();
    let alloc = first["id"].as_str().unwrap().to_string();
    let on = first["node"].as_str().unwrap().to_string();
    let i = agents.iter().position(|a| a.name == on).unwrap();
    assert_eq!(
        agents[i].running(),
        std::slice::from_ref(&alloc),
        "the container runs on {on}"
    );

    // The agent dies: its node goes down, the replica is replaced on the
    // other node.
    agents[i].kill9();
    g.until(&format!("/v1/nodes/{on}"), "down", 10, |n| {
        n["status"] == "down"
    });
    let w = g.until("/v1/workloads/web", "replaced", 60, |w| {
        running(w).iter().any(|a| a["node"] != on.as_str())
    });
    let other = &agents[1 - i];
    let moved = running(&w)[0]["id"].as_str().unwrap().to_string();
    assert_ne!(moved, alloc);
    assert_eq!(other.running(), std::slice::from_ref(&moved));
    let lost = w["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == alloc.as_str())
        .cloned()
        .unwrap();
    assert_eq!(lost["state"], "lost", "{w}");
    // Its old container kept running meanwhile (a partition, as far as
    // the agent can tell).
    assert!(agents[i].dir.join("state/containers").is_dir());

    // Back: the stale copy is stopped, one replica runs in the fleet.
    agents[i].restart();
    g.until(&format!("/v1/nodes/{on}"), "ready", 15, |n| {
        n["status"] == "ready"
    });
    eventually(
        20,
        || agents[i].running().is_empty(),
        || "the stale copy still runs".to_string(),
    );
    assert_eq!(agents[1 - i].running(), [moved]);
    let w = g.until("/v1/workloads/web", "one running", 10, |w| {
        running(w).len() == 1
    });
    assert_eq!(w["running"], 1);
}

#[test]
fn a_gateway_killed_keeps_what_it_acknowledged_and_agents_reconnect() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image) = registry(dir.path());
    let mut g = Gateway::start(&dir.path().join("gw"), CONFIG);
    let a = joined(&g, dir.path(), "node-a");
    for name in ["one", "two", "three"] {
        let (code, v) = g.call("POST", "/v1/workloads", Some(&sleeper(name, &image, 1)));
        assert_eq!(code, 202, "{v}");
    }
    // Killed right after acknowledging: nothing acknowledged is lost.
    g.process.as_mut().unwrap().kill9();
    g.restart();
    let (code, list) = g.call("GET", "/v1/workloads", None);
    assert_eq!(code, 200);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["spec"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "three", "two"]);
    // They run, on the agent that reconnected by itself.
    for name in ["one", "two", "three"] {
        g.until(&format!("/v1/workloads/{name}"), "running", 60, |w| {
            running(w).len() == 1
        });
    }
    let before = a.containers();
    // Killed again while they run: the same containers, not new ones.
    g.process.as_mut().unwrap().kill9();
    std::thread::sleep(Duration::from_millis(500));
    g.restart();
    g.until("/v1/nodes/node-a", "ready after the restart", 15, |n| {
        n["status"] == "ready"
    });
    std::thread::sleep(Duration::from_secs(1));
    let ids = |v: &[Value]| -> Vec<String> {
        let mut ids: Vec<String> = v.iter().map(|c| c["id"].to_string()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&a.containers()), ids(&before));
    assert_eq!(a.running().len(), 3);
}

#[test]
fn an_agent_given_several_gateways_joins_and_reattaches_through_one_that_answers() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image) = registry(dir.path());
    let mut g = Gateway::start(&dir.path().join("gw"), CONFIG);
    // The first gateway it is given is not there: passed over for the join
    // and for every session.
    let dead = format!(
        "https://127.0.0.1:{}",
        skiff_test_support::net::free_port().unwrap()
    );
    let (token, hash) = g.join_token("default", "10m");
    let mut a = Agent::spawn_via(
        dir.path(),
        "node-m",
        &format!("{dead},{}", g.agent_url),
        &token,
        &hash,
    );
    a.wait_up();
    g.until("/v1/nodes/node-m", "ready", 30, |v| v["status"] == "ready");
    let (code, v) = g.call("POST", "/v1/workloads", Some(&sleeper("multi", &image, 1)));
    assert_eq!(code, 202, "{v}");
    g.until("/v1/workloads/multi", "running", 60, |w| {
        running(w).len() == 1
    });
    let before = a.containers();
    // Its gateway goes away and comes back: it re-attaches, its container
    // kept; and after its own restart too.
    g.process.as_mut().unwrap().kill9();
    g.restart();
    g.until("/v1/nodes/node-m", "ready after the restart", 30, |n| {
        n["status"] == "ready"
    });
    a.kill9();
    a.restart();
    g.until("/v1/nodes/node-m", "ready after its restart", 30, |n| {
        n["status"] == "ready"
    });
    assert_eq!(a.containers().len(), before.len());
    // The session is live: new work reaches the node and reports back.
    let (code, v) = g.call(
        "POST",
        "/v1/workloads/multi/scale",
        Some(r#"{"replicas": 2}"#),
    );
    assert_eq!(code, 202, "{v}");
    g.until("/v1/workloads/multi", "two running", 60, |w| {
        running(w).len() == 2
    });
    assert_eq!(a.running().len(), 2);
    assert!(
        a.log().contains(&format!("gateway {dead}")),
        "the dead gateway was never tried: {}",
        a.log()
    );
}

#[test]
fn an_agent_cannot_report_for_another_node() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image) = registry(dir.path());
    let g = Gateway::start(&dir.path().join("gw"), CONFIG);
    let a = joined(&g, dir.path(), "node-a");
    // Only node-a can take it (node-b is cordoned as it joins).
    let b = joined(&g, dir.path(), "node-b");
    let (code, _) = g.call("POST", "/v1/nodes/node-b/cordon", None);
    assert_eq!(code, 200);
    g.call("POST", "/v1/workloads", Some(&sleeper("web", &image, 1)));
    let w = g.until("/v1/workloads/web", "running", 60, |w| {
        running(w).len() == 1
    });
    let alloc = running(&w)[0]["id"].as_str().unwrap().to_string();
    assert_eq!(running(&w)[0]["node"], "node-a");
    assert_eq!(a.running(), std::slice::from_ref(&alloc));

    // node-b's certificate, claiming node-a's allocation failed.
    let (ca, cert, key) = b.identity();
    let url = g.agent_url.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use skiff_proto::wire::v1;
        let ch = skiff_agent::link::channel(&url, &ca, Some((&cert, &key)))
            .await
            .unwrap();
        let mut client = v1::session_client::SessionClient::new(ch);
        let forged = v1::AllocationStatus {
            allocation_id: alloc.clone(),
            state: v1::AllocationState::Failed as i32,
            message: "forged".into(),
            ..Default::default()
        };
        let msgs = vec![
            v1::AgentMessage {
                kind: Some(v1::agent_message::Kind::Register(v1::Register {
                    allocations: vec![forged.clone()],
                    ..Default::default()
                })),
            },
            v1::AgentMessage {
                kind: Some(v1::agent_message::Kind::Allocations(
                    v1::AllocationStatusReport {
                        allocations: vec![forged],
                        volumes: Vec::new(),
                    },
                )),
            },
        ];
        let mut inbound = client
            .attach(tokio_stream::iter(msgs))
            .await
            .unwrap()
            .into_inner();
        // Registered as node-b, whatever it claims.
        let first = inbound.message().await.unwrap().unwrap();
        match first.kind {
            Some(v1::gateway_message::Kind::Registered(r)) => assert_eq!(r.node_id, "node-b"),
            other => panic!("expected Registered, got {other:?}"),
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let (_, w) = g.call("GET", "/v1/workloads/web", None);
    let a0 = &w["allocations"][0];
    assert_eq!(a0["state"], "running", "{w}");
    assert_ne!(a0["message"], "forged");
    assert!(
        g.log()
            .contains("ignored a report for an allocation the node does not hold")
    );

    // Without a certificate, no session at all.
    rt.block_on(async {
        use skiff_proto::wire::v1;
        let ch = skiff_agent::link::channel(&url, &ca, None).await.unwrap();
        let mut client = v1::session_client::SessionClient::new(ch);
        let e = client
            .attach(tokio_stream::iter(Vec::<v1::AgentMessage>::new()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    });
}

#[test]
fn the_api_checks_tokens_roles_and_bodies() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(&dir.path().join("gw"), "max_body = \"64Ki\"\n");
    let spec = "name: web\nimage: busybox\n";
    // No token, an unknown one.
    let (code, v) = g.call_as(None, "GET", "/v1/workloads", None);
    assert_eq!(
        (code, v["code"].as_str()),
        (401, Some("unauthenticated")),
        "{v}"
    );
    let (code, _) = g.call_as(Some("skiff-api-nope"), "GET", "/v1/workloads", None);
    assert_eq!(code, 401);
    // A read-only token reads but does not write.
    let (code, t) = g.call(
        "POST",
        "/v1/api-tokens",
        Some("{\"name\": \"ci\", \"role\": \"read-only\"}"),
    );
    assert_eq!(code, 201, "{t}");
    let ro = t["token"].as_str().unwrap().to_string();
    let (code, _) = g.call_as(Some(&ro), "GET", "/v1/workloads", None);
    assert_eq!(code, 200);
    let (code, v) = g.call_as(Some(&ro), "POST", "/v1/workloads", Some(spec.as_bytes()));
    assert_eq!((code, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    assert_eq!(v["message"], "this needs the operator role");
    // An operator writes workloads but makes no join tokens.
    let (_, t) = g.call(
        "POST",
        "/v1/api-tokens",
        Some("{\"name\": \"deploy\", \"role\": \"operator\"}"),
    );
    let op = t["token"].as_str().unwrap().to_string();
    let (code, v) = g.call_as(Some(&op), "POST", "/v1/workloads", Some(spec.as_bytes()));
    assert_eq!(code, 202, "{v}");
    let (code, _) = g.call_as(
        Some(&op),
        "POST",
        "/v1/join-tokens",
        Some(b"{\"site\": \"default\"}"),
    );
    assert_eq!(code, 403);
    // Malformed bodies name the field.
    for (body, want) in [
        (
            "name: web2\nimage: busybox\nports: [{container: 70000}]\n",
            "spec.ports[0].container: 70000 is not a port",
        ),
        (
            "name: web2\nimage: busybox\nreplicas: many\n",
            "spec.replicas: invalid type",
        ),
        ("{\"name\": \"web2\"}", "spec: missing field `image`"),
    ] {
        let (code, v) = g.call("POST", "/v1/workloads", Some(body));
        assert_eq!(
            (code, v["code"].as_str()),
            (400, Some("bad_request")),
            "{body}: {v}"
        );
        assert!(
            v["message"].as_str().unwrap().starts_with(want),
            "{body}: {v}"
        );
    }
    let (code, v) = g.call("POST", "/v1/join-tokens", Some("{\"site\": \"mars\"}"));
    assert_eq!(code, 400);
    assert_eq!(v["message"], "site: \"mars\" is not a configured site");
    let (code, v) = g.call("POST", "/v1/workloads", Some(spec));
    assert_eq!((code, v["code"].as_str()), (409, Some("conflict")), "{v}");
    // Too large.
    let big = format!("name: big\nimage: busybox\n# {}\n", "x".repeat(100 << 10));
    let (code, v) = g.call("POST", "/v1/workloads", Some(&big));
    assert_eq!((code, v["code"].as_str()), (413, Some("too_large")), "{v}");
    // The OpenAPI document describes the routes.
    let (code, doc) = g.call_as(None, "GET", "/v1/openapi.json", None);
    assert_eq!(code, 200);
    for path in [
        "/v1/workloads",
        "/v1/nodes/{id}/drain",
        "/v1/join-tokens",
        "/v1/events",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["components"]["schemas"]["WorkloadSpec"].is_object());
}

#[test]
fn certificates_rotate_and_a_removed_node_is_shut_out() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(
        &dir.path().join("gw"),
        &format!("{CONFIG}cert_lifetime = \"3s\"\n"),
    );
    let a = joined(&g, dir.path(), "node-a");
    let first = a.identity().1;
    let hash = g.call("GET", "/v1/nodes/node-a", None).1["cert_hash"].clone();
    // Renewed at two thirds of its life, before it expires; the node stays
    // ready throughout.
    eventually(
        15,
        || a.identity().1 != first,
        || format!("never renewed: {}", a.log()),
    );
    std::thread::sleep(Duration::from_secs(4));
    let n = g.until(
        "/v1/nodes/node-a",
        "ready with a new certificate",
        10,
        |n| n["status"] == "ready" && n["cert_hash"] != hash,
    );
    assert!(n["cert_not_after_ms"].as_i64().unwrap() > 0);

    // Removed: the session ends and the certificate opens no new one.
    let (code, _) = g.call("DELETE", "/v1/nodes/node-a", None);
    assert_eq!(code, 202);
    eventually(
        15,
        || {
            a.log()
                .contains("the gateway does not accept this node any more")
        },
        || a.log(),
    );
    let (code, _) = g.call("GET", "/v1/nodes/node-a", None);
    assert_eq!(code, 404);
}

#[test]
fn scale_update_drain_events_and_metrics() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image) = registry(dir.path());
    let g = Gateway::start(&dir.path().join("gw"), CONFIG);
    let a = joined(&g, dir.path(), "node-a");
    let b = joined(&g, dir.path(), "node-b");
    // Events, as a client would follow them.
    let events_file = dir.path().join("events.txt");
    let mut events = skiff_test_support::procs::ChildGuard::spawn(
        "curl events",
        std::process::Command::new("curl")
            .args(["-sN", "-m", "120", "-H"])
            .arg(format!("Authorization: Bearer {}", g.admin_token()))
            .arg(format!("{}/v1/events", g.api))
            .stdout(std::fs::File::create(&events_file).unwrap()),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // Everything on node-a first (node-b cordoned).
    let (code, n) = g.call("POST", "/v1/nodes/node-b/cordon", None);
    assert_eq!(code, 200);
    assert_eq!(n["status"], "cordoned", "{n}");
    g.call("POST", "/v1/workloads", Some(&sleeper("web", &image, 2)));
    g.until("/v1/workloads/web", "2 running", 60, |w| {
        running(w).len() == 2
    });
    let (code, _) = g.call("POST", "/v1/workloads/web/scale", Some("{\"replicas\": 3}"));
    assert_eq!(code, 202);
    g.until("/v1/workloads/web", "3 running", 60, |w| {
        running(w).len() == 3
    });
    // Sites and allocations views.
    let (code, sites) = g.call("GET", "/v1/sites", None);
    assert_eq!(code, 200);
    let site = &sites[0];
    assert_eq!(
        (
            site["name"].as_str(),
            site["nodes"].as_u64(),
            site["nodes_ready"].as_u64()
        ),
        (Some("default"), Some(2), Some(2)),
        "{sites}"
    );
    assert_eq!(site["allocations"], 3, "{sites}");
    assert_eq!(site["cpu_millis_used"], 300, "{sites}");
    let (_, allocs) = g.call("GET", "/v1/allocations?node=node-a", None);
    assert_eq!(allocs.as_array().unwrap().len(), 3, "{allocs}");
    let (_, none) = g.call("GET", "/v1/allocations?node=node-b", None);
    assert_eq!(none, serde_json::json!([]));

    // An update replaces the replicas, one at a time, with the new spec.
    let updated = sleeper("web", &image, 3).replace("command:", "env: {MODE: blue}\ncommand:");
    let (code, v) = g.call("PUT", "/v1/workloads/web", Some(&updated));
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["version"], 2);
    let w = g.until("/v1/workloads/web", "rolled to version 2", 90, |w| {
        let r = running(w);
        r.len() == 3 && r.iter().all(|a| a["workload_version"] == 2)
    });
    let new_id = running(&w)[0]["id"].as_str().unwrap().to_string();
    let holder = if a.running().contains(&new_id) {
        &a
    } else {
        &b
    };
    let env = holder.cli(&["exec", &new_id, "sh", "-c", "echo $MODE"]);
    assert_eq!(String::from_utf8_lossy(&env.stdout).trim(), "blue");

    assert_eq!(a.running().len(), 3);
    assert!(b.running().is_empty());
    // Drained: node-a's replicas move to node-b.
    let (code, _) = g.call("POST", "/v1/nodes/node-b/uncordon", None);
    assert_eq!(code, 200);
    let (code, n) = g.call("POST", "/v1/nodes/node-a/drain", None);
    assert_eq!(code, 200);
    assert_eq!(n["status"], "draining", "{n}");
    // Shown so in the list too, not as the `ready` it also is.
    let (_, nodes) = g.call("GET", "/v1/nodes", None);
    let a_shown = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "node-a")
        .cloned();
    assert_eq!(
        a_shown.map(|n| n["status"].clone()),
        Some("draining".into()),
        "{nodes}"
    );
    g.until("/v1/workloads/web", "all on node-b", 60, |w| {
        let r = running(w);
        r.len() == 3 && r.iter().all(|a| a["node"] == "node-b")
    });
    eventually(
        20,
        || a.running().is_empty(),
        || format!("node-a still runs {:?}", a.running()),
    );
    assert_eq!(b.running().len(), 3);

    // Deleted: nothing runs.
    let (code, _) = g.call("DELETE", "/v1/workloads/web", None);
    assert_eq!(code, 202);
    eventually(
        20,
        || b.running().is_empty(),
        || format!("node-b still runs {:?}", b.running()),
    );

    // The event stream saw it all happen.
    events.stop(Duration::ZERO);
    let text = std::fs::read_to_string(&events_file).unwrap();
    for want in [
        "\"created\"",
        "scaled to 3",
        "updated to version 2",
        "drained",
        "\"deleted\"",
        "placed on node-b",
    ] {
        assert!(
            text.contains(want),
            "{want} missing from the events:\n{text}"
        );
    }
    // Metrics.
    let (code, m) = g.call_as(None, "GET", "/metrics", None);
    assert_eq!(code, 200);
    let m = m.as_str().unwrap_or_default().to_string();
    assert!(m.contains("skiff_gateway_nodes{status=\"ready\"} 2"), "{m}");
    assert!(m.contains("skiff_gateway_sessions 2"), "{m}");
    assert!(m.contains("skiff_gateway_heartbeats_total"), "{m}");
}

#[test]
fn containers_take_the_subnet_the_gateway_gives_their_node() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image) = registry(dir.path());
    // A pool of one /24 that no other test uses.
    let pool = skiff_test_support::net::NetSlot::take().unwrap();
    let g = Gateway::start(
        &dir.path().join("gw"),
        &format!("{CONFIG}node_subnets = \"{}\"\n", pool.subnet()),
    );
    let (token, hash) = g.join_token("default", "10m");
    let a = Agent::spawn_with(dir.path(), "node-a", &g, &token, &hash, false);
    a.wait_up();
    let n = g.until("/v1/nodes/node-a", "ready", 15, |v| v["status"] == "ready");
    assert_eq!(n["subnet"], pool.subnet());
    g.call("POST", "/v1/workloads", Some(&sleeper("web", &image, 1)));
    let w = g.until("/v1/workloads/web", "running", 60, |w| {
        running(w).len() == 1
    });
    let address = running(&w)[0]["address"].as_str().unwrap().to_string();
    let prefix = pool.subnet().trim_end_matches("0/24").to_string();
    assert!(
        address.starts_with(&prefix),
        "{address} not in {}",
        pool.subnet()
    );
    // The pool is full: a second node cannot join.
    let (token, _) = g.join_token("default", "10m");
    let mut b = Agent::spawn_with(dir.path(), "node-b", &g, &token, &hash, false);
    let (code, log) = b.wait_exit();
    assert_ne!(code, Some(0));
    assert!(log.contains("every /24 is taken"), "{log}");
}

#[test]
fn a_node_that_was_only_late_comes_back_and_stops_its_stale_copy() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image) = registry(dir.path());
    let g = Gateway::start(&dir.path().join("gw"), CONFIG);
    let a = joined(&g, dir.path(), "node-a");
    let b = joined(&g, dir.path(), "node-b");
    g.call("POST", "/v1/nodes/node-b/cordon", None);
    g.call("POST", "/v1/workloads", Some(&sleeper("web", &image, 1)));
    g.until("/v1/workloads/web", "running on node-a", 60, |w| {
        running(w).first().is_some_and(|r| r["node"] == "node-a")
    });
    g.call("POST", "/v1/nodes/node-b/uncordon", None);
    // node-a stops answering (SIGSTOP) past the grace: down, replaced.
    let pid = nix::unistd::Pid::from_raw(a.process.as_ref().unwrap().pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    g.until("/v1/nodes/node-a", "down", 10, |n| n["status"] == "down");
    g.until("/v1/workloads/web", "replaced on node-b", 60, |w| {
        running(w).iter().any(|r| r["node"] == "node-b")
    });
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    // Heard from again on the same session: ready, and its copy stopped.
    g.until("/v1/nodes/node-a", "ready again", 15, |n| {
        n["status"] == "ready"
    });
    eventually(
        20,
        || a.running().is_empty(),
        || format!("node-a still runs {:?}", a.running()),
    );
    assert_eq!(b.running().len(), 1);
    assert!(
        !a.log().contains("gateway session ended"),
        "it was the same session: {}",
        a.log()
    );
}
