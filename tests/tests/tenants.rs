//! Tenants end to end, as root: two namespaces with their own tokens on a
//! real gateway and agent, real containers. Every route of the API (from
//! the gateway's own OpenAPI document) is tried with one tenant's token
//! against the other's namespace; quotas and policies refuse with the rule
//! named; a container of one namespace cannot open a TCP connection to
//! another's on the same node, and can to its own.

use base64::Engine as _;
use serde_json::{Value, json};
use skiff_e2e::{Agent, Gateway, eventually};
use skiff_test_support::tools::require_root;

const CONFIG: &str = "heartbeat_interval = \"250ms\"\ndown_after = \"2s\"\n";

/// A REST call with `token` and a JSON or YAML body.
fn call(g: &Gateway, token: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    g.call_as(Some(token), method, path, body.map(str::as_bytes))
}

fn ok(g: &Gateway, token: &str, method: &str, path: &str, body: Option<&str>) -> Value {
    let (code, v) = call(g, token, method, path, body);
    assert!((200..300).contains(&code), "{method} {path}: {code} {v}");
    v
}

fn api_token(g: &Gateway, name: &str, role: &str, namespaces: &[&str]) -> (String, String) {
    let v = ok(
        g,
        &g.admin_token(),
        "POST",
        "/v1/api-tokens",
        Some(&json!({"name": name, "role": role, "namespaces": namespaces}).to_string()),
    );
    (
        v["token"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

/// An httpd answering `ok` on 8080, with a local volume (so the namespace
/// has one) and, given `host_port`, published there.
fn web(image: &str, host_port: Option<u16>) -> String {
    let ports = host_port.map_or(String::new(), |p| {
        format!("ports: [{{container: 8080, host: {p}}}]\n")
    });
    format!(
        "name: web\nimage: {image}\nstop_timeout: 1s\nresources: {{cpu: 100m, memory: 16Mi}}\n{ports}\
         command: [\"sh\", \"-c\", \"mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www\"]\n\
         volumes: [{{name: data, local: {{}}}}]\nmounts: [{{volume: data, path: /data}}]\n"
    )
}

fn sleeper(name: &str, image: &str) -> String {
    format!(
        "name: {name}\nimage: {image}\nstop_timeout: 1s\nresources: {{cpu: 100m, memory: 16Mi}}\n\
         command: [\"sleep\", \"3600\"]\n"
    )
}

/// Runs `cmd` in `workload` (of the token's namespace): its exit code.
fn exec(g: &Gateway, token: &str, workload: &str, cmd: &[&str]) -> i64 {
    let (code, v) = call(
        g,
        token,
        "POST",
        &format!("/v1/workloads/{workload}/exec"),
        Some(&json!({ "command": cmd }).to_string()),
    );
    assert_eq!(code, 200, "exec {workload}: {v}");
    let text = match &v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let code = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|e| e["exit_code"].as_i64())
        .unwrap_or_else(|| panic!("exec {workload}: no exit code in {text}"));
    if code != 0 {
        eprintln!("exec {workload} {cmd:?}: {text}");
    }
    code
}

/// The address of `workload`'s running replica, as the token sees it.
fn address(g: &Gateway, token: &str, workload: &str) -> String {
    let mut addr = String::new();
    eventually(
        60,
        || {
            let (_, w) = call(g, token, "GET", &format!("/v1/workloads/{workload}"), None);
            let a = &w["allocations"][0];
            addr = a["address"].as_str().unwrap_or_default().to_string();
            a["state"] == "running" && !addr.is_empty()
        },
        || format!("{workload} never ran\n{}", g.log()),
    );
    addr
}

/// Whether a connection from `client` to `addr:8080` gets `ok` back.
fn reaches(g: &Gateway, token: &str, client: &str, addr: &str) -> bool {
    exec(
        g,
        token,
        client,
        // (busybox's own `wget -T` crashes: `timeout` bounds it instead.)
        &[
            "busybox",
            "timeout",
            "3",
            "wget",
            "-qO-",
            &format!("http://{addr}:8080/"),
        ],
    ) == 0
}

#[test]
fn two_tenants_cannot_see_change_or_reach_each_other_and_quotas_and_policies_refuse_by_rule() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image) = skiff_e2e::busybox_registry(dir.path());
    let g = Gateway::start(&dir.path().join("gw"), CONFIG);
    let _agent = Agent::joined(dir.path(), "node-a", &g);
    let admin = g.admin_token();
    ok(
        &g,
        &admin,
        "POST",
        "/v1/namespaces",
        Some(r#"{"name": "team-a", "quota": {"cpu": "1", "allocations": 4}}"#),
    );
    ok(
        &g,
        &admin,
        "POST",
        "/v1/namespaces",
        Some(r#"{"name": "team-b"}"#),
    );
    // Each tenant is an admin of its own namespace: the strongest tenant.
    let (a, a_id) = api_token(&g, "team-a", "admin", &["team-a"]);
    let (b, _) = api_token(&g, "team-b", "admin", &["team-b"]);

    // Same names in both: names are unique within a namespace.
    let port = skiff_e2e::free_port();
    for (t, spec) in [
        (&a, web(&image, None)),
        (&a, sleeper("client", &image)),
        (&b, web(&image, Some(port))),
    ] {
        ok(&g, t, "POST", "/v1/workloads", Some(&spec));
    }
    let secret = json!({"name": "db", "data": {"password": base64::engine::general_purpose::STANDARD.encode("pw-a")}});
    ok(&g, &a, "POST", "/v1/secrets", Some(&secret.to_string()));
    let a_web = address(&g, &a, "web");
    let b_web = address(&g, &b, "web");
    address(&g, &a, "client");
    let a_version = ok(&g, &a, "GET", "/v1/workloads/web", None)["version"].clone();

    // Every route, as team-b's admin, at team-a's names.
    let doc = ok(&g, &b, "GET", "/v1/openapi.json", None);
    let node = ok(&g, &admin, "GET", "/v1/nodes", None)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let volume = ok(&g, &a, "GET", "/v1/volumes", None)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(volume.starts_with("team-a."), "{volume}");
    let mut tried = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let method = method.to_ascii_uppercase();
            let fleet_only = op["responses"]["403"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("bound to namespaces"));
            let concrete = path
                .replace(
                    "{name}",
                    if path.starts_with("/v1/namespaces") {
                        "team-a"
                    } else {
                        "web"
                    },
                )
                .replace(
                    "{id}",
                    if path.starts_with("/v1/nodes") {
                        &node
                    } else if path.starts_with("/v1/volumes") {
                        &volume
                    } else {
                        &a_id
                    },
                );
            let body = match (method.as_str(), path.as_str()) {
                ("POST", "/v1/workloads") | ("PUT", "/v1/workloads/{name}") => {
                    Some(sleeper("web", &image))
                }
                ("POST", "/v1/workloads/{name}/scale") => Some(r#"{"replicas": 0}"#.into()),
                ("POST", "/v1/workloads/{name}/exec") => Some(r#"{"command": ["true"]}"#.into()),
                ("POST", "/v1/secrets") => Some(secret.to_string()),
                ("PUT", "/v1/secrets/{name}") => Some(r#"{"data": {"k": "eA=="}}"#.into()),
                ("POST", "/v1/api-tokens") => {
                    Some(r#"{"name": "x", "role": "admin", "namespaces": ["team-a"]}"#.into())
                }
                ("POST", "/v1/namespaces") => Some(r#"{"name": "team-c"}"#.into()),
                ("PUT", "/v1/namespaces/{name}") => {
                    Some(r#"{"policy": {"allow_from": ["team-b"]}}"#.into())
                }
                ("POST", "/v1/join-tokens") => Some(r#"{"site": "default"}"#.into()),
                _ => None,
            };
            let url = format!("{concrete}?namespace=team-a&follow=false");
            let (code, v) = call(&g, &b, &method, &url, body.as_deref());
            let public = op["security"] == json!([]);
            let unscoped = matches!(
                (method.as_str(), path.as_str()),
                ("GET", "/v1/version")
                    | ("GET", "/v1/sites")
                    | ("GET", "/v1/namespaces")
                    | ("GET", "/v1/api-tokens")
            );
            if fleet_only {
                assert_eq!(code, 403, "{method} {url}: {v}");
            } else if public || unscoped {
                assert_eq!(code, 200, "{method} {url}: {v}");
            } else {
                assert_eq!(code, 404, "{method} {url}: {v}");
            }
            if code == 200 {
                let text = v.to_string();
                assert!(
                    !text.contains("team-a") || path == "/v1/openapi.json",
                    "{method} {url} shows team-a: {text}"
                );
                assert!(
                    !text.contains(&a_web),
                    "{method} {url} shows team-a's address: {text}"
                );
            }
            tried += 1;
        }
    }
    assert!(tried >= 40, "only {tried} routes");
    // Nothing of team-a changed.
    let w = ok(&g, &a, "GET", "/v1/workloads/web", None);
    assert_eq!(w["version"], a_version, "{w}");
    assert_eq!(w["spec"]["image"].as_str(), Some(image.as_str()));
    assert_eq!(ok(&g, &a, "GET", "/v1/secrets", None)[0]["name"], "db");
    assert_eq!(
        ok(&g, &admin, "GET", "/v1/namespaces/team-a", None)["policy"]["allow_from"],
        Value::Null
    );

    // Lists with no namespace, and with every one: only team-b's.
    for path in [
        "/v1/workloads",
        "/v1/allocations",
        "/v1/secrets",
        "/v1/volumes",
        "/v1/namespaces",
    ] {
        for q in ["", "?namespace=*"] {
            let v = ok(&g, &b, "GET", &format!("{path}{q}"), None);
            assert!(!v.to_string().contains("team-a"), "{path}{q}: {v}");
        }
    }
    let mine = ok(&g, &b, "GET", "/v1/workloads?namespace=*", None);
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine[0]["spec"]["namespace"], "team-b");
    let events = ok(&g, &b, "GET", "/v1/events?follow=false", None).to_string();
    assert!(
        events.contains("team-b") && !events.contains("team-a"),
        "{events}"
    );
    // Sites: the capacity, and only the tenant's own use.
    let sites = ok(&g, &b, "GET", "/v1/sites", None);
    assert_eq!(sites[0]["allocations"], 1, "{sites}");
    assert!(sites[0]["cpu_millis"].as_u64().unwrap() > 0);
    // Metrics: team-b's series with its token, none without one.
    let (_, m) = g.call_as(Some(&b), "GET", "/metrics", None);
    let m = m.as_str().unwrap_or_default().to_string();
    assert!(
        m.contains("skiff_namespace_reserved{namespace=\"team-b\",resource=\"cpu_millis\"} 100"),
        "{m}"
    );
    assert!(!m.contains("team-a"), "{m}");
    let (_, m) = g.call_as(None, "GET", "/metrics", None);
    assert!(!m.as_str().unwrap_or_default().contains("skiff_namespace_"));
    // A fleet admin sees both, by namespace.
    let all = ok(&g, &admin, "GET", "/v1/workloads?namespace=*", None);
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");

    // Quotas, at submission and at scale, named.
    let (code, v) = call(
        &g,
        &a,
        "POST",
        "/v1/workloads",
        Some(&sleeper("big", &image).replace("cpu: 100m", "cpu: '1'")),
    );
    assert_eq!(code, 403, "{v}");
    assert_eq!(
        v["message"], "quota exceeded: namespace team-a would use 1200m of 1 cpu",
        "{v}"
    );
    let (code, v) = call(
        &g,
        &a,
        "POST",
        "/v1/workloads/client/scale",
        Some(r#"{"replicas": 4}"#),
    );
    assert_eq!(code, 403, "{v}");
    assert_eq!(
        v["message"], "quota exceeded: namespace team-a would use 5 of 4 allocations",
        "{v}"
    );
    ok(
        &g,
        &a,
        "POST",
        "/v1/workloads/client/scale",
        Some(r#"{"replicas": 2}"#),
    );
    // Policies: a tenant's namespace takes nothing from the host.
    for (extra, rule) in [
        ("network: host\n", "policy.allow_host_network"),
        ("security: {privileged: true}\n", "policy.allow_privileged"),
    ] {
        let spec = format!("{}{extra}", sleeper("hostile", &image));
        let (code, v) = call(&g, &a, "POST", "/v1/workloads", Some(&spec));
        assert_eq!(code, 403, "{v}");
        assert!(v["message"].as_str().unwrap().contains(rule), "{v}");
    }
    assert_eq!(call(&g, &a, "GET", "/v1/workloads/hostile", None).0, 404);
    // A namespace that requires user namespaces: refused without, and
    // with one, root in the container is uid 100000 on the host.
    ok(
        &g,
        &admin,
        "POST",
        "/v1/namespaces",
        Some(r#"{"name": "team-u", "policy": {"require_user_namespace": true}}"#),
    );
    let (code, v) = call(
        &g,
        &admin,
        "POST",
        "/v1/workloads?namespace=team-u",
        Some(&sleeper("app", &image)),
    );
    assert_eq!(code, 403, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("policy.require_user_namespace"),
        "{v}"
    );
    let mapped = format!(
        "{}security: {{user_namespace: true}}\n",
        sleeper("app", &image)
    );
    ok(
        &g,
        &admin,
        "POST",
        "/v1/workloads?namespace=team-u",
        Some(&mapped),
    );
    address(&g, &admin, "app?namespace=team-u");
    let (code, v) = call(
        &g,
        &admin,
        "POST",
        "/v1/workloads/app/exec?namespace=team-u",
        Some(r#"{"command": ["cat", "/proc/self/uid_map"]}"#),
    );
    assert_eq!(code, 200, "{v}");
    let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let out: String = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["data"].as_str().map(str::to_string))
        .map(|d| {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(d).unwrap()).unwrap()
        })
        .collect();
    let map: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(map.first().copied(), Some("0"), "{out}");
    assert_ne!(
        map.get(1).copied(),
        Some("0"),
        "root is root on the host: {out}"
    );

    // The network: its own namespace yes, the other no; published ports
    // stay reachable from outside.
    assert!(
        reaches(&g, &a, "client", &a_web),
        "team-a cannot reach its own web"
    );
    assert!(
        !reaches(&g, &a, "client", &b_web),
        "team-a reached team-b's web"
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", "-m", "5", &format!("http://127.0.0.1:{port}/")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok", "{out:?}");
    // team-b lets team-a in: then it can.
    ok(
        &g,
        &admin,
        "PUT",
        "/v1/namespaces/team-b",
        Some(r#"{"policy": {"allow_from": ["team-a"]}}"#),
    );
    eventually(
        20,
        || reaches(&g, &a, "client", &b_web),
        || format!("team-a never let into team-b\n{}", g.log()),
    );
}

/// Across nodes, each on a host of its own (a network namespace on a
/// shared LAN) whose node subnets the operator routes: a container's
/// address is no way in from another node, for another namespace's
/// containers nor its own, and a published port is.
#[test]
fn across_nodes_a_tenant_reaches_another_only_through_published_ports() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let f = skiff_e2e::hosts::Fleet::start(dir.path(), CONFIG, &["node-0", "node-1"]);
    let (g, hosts, image) = (&f.gateway, &f.hosts, &f.image);
    // The operator routes each node's subnet through its host.
    let admin = g.admin_token();
    let subnet = |node: &str| {
        ok(g, &admin, "GET", &format!("/v1/nodes/{node}"), None)["subnet"]
            .as_str()
            .unwrap()
            .to_string()
    };
    hosts[0].route(&subnet("node-1"), hosts[1].address);
    hosts[1].route(&subnet("node-0"), hosts[0].address);
    for ns in ["team-a", "team-b"] {
        ok(
            g,
            &admin,
            "POST",
            "/v1/namespaces",
            Some(&json!({ "name": ns }).to_string()),
        );
    }
    let (a, _) = api_token(g, "team-a", "admin", &["team-a"]);
    let (b, _) = api_token(g, "team-b", "admin", &["team-b"]);
    let on = |node: &str| format!("placement: {{constraints: [\"node.name == {node}\"]}}\n");
    let port = skiff_e2e::free_port();
    for (t, spec) in [
        (&a, sleeper("client", image) + &on("node-0")),
        (&a, web(image, None) + &on("node-1")),
        (&b, web(image, Some(port)) + &on("node-1")),
    ] {
        ok(g, t, "POST", "/v1/workloads", Some(&spec));
    }
    let a_web = address(g, &a, "web");
    let b_web = address(g, &b, "web");
    address(g, &a, "client");
    // The route is there: the client reaches node-1's host, and through
    // it team-b's published port.
    let published = exec(
        g,
        &a,
        "client",
        &[
            "busybox",
            "timeout",
            "3",
            "wget",
            "-qO-",
            &format!("http://{}:{port}/", hosts[1].address),
        ],
    );
    assert_eq!(published, 0, "team-b's published port did not answer");
    assert!(
        !reaches(g, &a, "client", &b_web),
        "team-a reached team-b's web on another node"
    );
    assert!(
        !reaches(g, &a, "client", &a_web),
        "team-a reached its own web's address on another node"
    );
}

/// A namespace at its cloud-spend limit stays pending with the reason
/// while another's burst launches a VM; one pinned to on-prem never
/// bursts. The local cloud's "VMs" are network namespaces running a real
/// agent, booted from the cloud-init the gateway renders.
#[test]
fn a_tenant_at_its_spend_limit_stays_pending_while_another_bursts_and_one_pinned_on_prem_never_does()
 {
    use skiff_cloud::local::{LocalCloud, LocalConfig};
    use skiff_cloud::{CloudProvider, TAG_SITE};
    use skiff_test_support::images::OciImage;
    use skiff_test_support::net::NetSlot;
    use skiff_test_support::registry::Registry;

    require_root();
    let dir = tempfile::tempdir().unwrap();
    let slot = NetSlot::take().unwrap();
    let vms = dir.path().join("vms");
    let cloud = || {
        LocalCloud::new(LocalConfig {
            root: vms.clone(),
            agent_bin: skiff_e2e::bin("skiff-agent"),
            bridge: slot.bridge(),
            subnet: slot.subnet().parse().unwrap(),
            types: Vec::new(),
        })
    };
    // Whatever happens, no VM outlives the test.
    struct Terminate(LocalCloud);
    impl Drop for Terminate {
        fn drop(&mut self) {
            let rt = tokio::runtime::Runtime::new().unwrap();
            if let Ok(all) = rt.block_on(self.0.describe(TAG_SITE, "local")) {
                let ids: Vec<String> = all.into_iter().map(|i| i.id).collect();
                let _ = rt.block_on(self.0.terminate(&ids));
            }
        }
    }
    let _terminate = Terminate(cloud());
    let host = cloud().ensure_bridge().unwrap();
    let registry = Registry::start_on(host).unwrap();
    let image = OciImage::busybox(&dir.path().join("image"), "test", &[])
        .unwrap()
        .push(&registry, "skiff/busybox")
        .unwrap();
    let host = host.to_string();
    let config = format!(
        "heartbeat_interval = \"250ms\"\ndown_after = \"2s\"\nadvertise = [\"{host}\"]\n\
         [[sites]]\nname = \"dc\"\nkind = \"static\"\n\
         [[sites]]\nname = \"local\"\nkind = \"local\"\ncost_rank = 10\ngateway_url = \"{{{{agent_url}}}}\"\njoin_timeout = \"60s\"\nscale_in_after = \"1s\"\n\
         agent_config = \"[images]\\ninsecure_registries = [\\\"{}\\\"]\\n\"\n\
         [[sites.instance_types]]\nname = \"local.small\"\ncpu = \"1\"\nmemory = \"1Gi\"\nprice_per_hour = \"0.10\"\n\
         [sites.local]\nroot = \"{}\"\nagent_bin = \"{}\"\nbridge = \"{}\"\nsubnet = \"{}\"\n",
        registry.host(),
        vms.display(),
        skiff_e2e::bin("skiff-agent").display(),
        slot.bridge(),
        slot.subnet()
    );
    let g = Gateway::start_on(&dir.path().join("gw"), &config, &host);
    let admin = g.admin_token();
    for ns in [
        r#"{"name": "team-a", "quota": {"cloud_spend_per_hour": "0.001"}}"#,
        r#"{"name": "team-b"}"#,
        r#"{"name": "team-c", "policy": {"sites": ["dc"]}}"#,
    ] {
        ok(&g, &admin, "POST", "/v1/namespaces", Some(ns));
    }
    // Less than a VM, or a share of one, costs.
    let spec = sleeper("job", &image).replace("cpu: 100m", "cpu: 800m");
    // No node anywhere: each can only run on a VM launched for it. The
    // limited and the pinned ones first, so a pass has weighed them by
    // the time the other's VM runs its replica.
    for ns in ["team-a", "team-c", "team-b"] {
        ok(
            &g,
            &admin,
            "POST",
            &format!("/v1/workloads?namespace={ns}"),
            Some(&spec),
        );
    }
    let w = g.until(
        "/v1/workloads/job?namespace=team-b",
        "running on a VM",
        90,
        |w| {
            w["allocations"][0]["state"] == "running"
                && w["allocations"][0]["node"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("local-"))
        },
    );
    assert_eq!(w["allocations"][0]["site"], "local", "{w}");
    let a = ok(
        &g,
        &admin,
        "GET",
        "/v1/workloads/job?namespace=team-a",
        None,
    );
    let alloc = &a["allocations"][0];
    assert_eq!(alloc["state"], "pending", "{a}");
    assert_eq!(
        alloc["explanation"]["sites"]["local"],
        "namespace team-a's cloud spend limit 0.001000/h reached (0.000000/h in use)",
        "{a}"
    );
    // Nor does it take a share of team-b's VM: that costs too.
    assert!(
        alloc["explanation"]["excluded"]
            .as_object()
            .is_some_and(|e| e.contains_key("over the namespace's cloud spend limit")),
        "{a}"
    );
    let c = ok(
        &g,
        &admin,
        "GET",
        "/v1/workloads/job?namespace=team-c",
        None,
    );
    let alloc = &c["allocations"][0];
    assert_eq!(alloc["state"], "pending", "{c}");
    assert!(alloc["explanation"]["sites"].get("local").is_none(), "{c}");
    // One VM, team-b's: nothing was launched for the other two.
    assert_eq!(std::fs::read_dir(&vms).unwrap().count(), 1);
    let sites = ok(&g, &admin, "GET", "/v1/sites", None);
    let local = sites
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "local")
        .unwrap();
    assert_eq!(local["planned_launches"], json!([]), "{sites}");
    // team-b's spend shows on its namespace: its share of the VM's price.
    let b = ok(&g, &admin, "GET", "/v1/namespaces/team-b", None);
    let spend: f64 = b["cloud_spend_per_hour"].as_str().unwrap().parse().unwrap();
    assert!(spend > 0.0 && spend <= 0.1, "{b}");

    // Cleanup: the VM goes with the work.
    for ns in ["team-a", "team-b", "team-c"] {
        ok(
            &g,
            &admin,
            "DELETE",
            &format!("/v1/workloads/job?namespace={ns}"),
            None,
        );
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    eventually(
        30,
        || {
            rt.block_on(cloud().describe(TAG_SITE, "local"))
                .unwrap()
                .iter()
                .all(|i| i.state == skiff_cloud::InstanceState::Terminated)
        },
        || format!("the VM was never scaled in\n{}", g.log()),
    );
}

/// `skiff` with `token` against the gateway: (exit code, stdout, stderr).
fn skiff(g: &Gateway, token: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(skiff_e2e::bin("skiff"))
        .args(args)
        .env("SKIFF_ADDR", &g.api)
        .env("SKIFF_TOKEN", token)
        .env("SKIFF_CONFIG", g.dir.join("no-such-config.toml"))
        .env_remove("SKIFF_NAMESPACE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_makes_namespaces_and_bound_tokens_and_works_in_one_namespace_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(&dir.path().join("gw"), CONFIG);
    let admin = g.admin_token();
    let (code, out, err) = skiff(
        &g,
        &admin,
        &[
            "namespace",
            "create",
            "team-x",
            "--cpu",
            "2",
            "--allocations",
            "3",
            "--site",
            "default",
            "--allow-host-network",
        ],
        None,
    );
    assert_eq!((code, out.trim()), (0, "namespace team-x created"), "{err}");
    let (code, out, err) = skiff(
        &g,
        &admin,
        &["namespace", "set", "team-x", "--cpu", "4"],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = skiff(
        &g,
        &admin,
        &["namespace", "show", "team-x", "-o", "json"],
        None,
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["quota"]["cpu"], "4", "{v}");
    assert_eq!(v["quota"]["allocations"], 3, "{v}");
    assert_eq!(v["policy"]["sites"], json!(["default"]), "{v}");
    assert_eq!(v["policy"]["allow_host_network"], true, "{v}");
    let (code, out, err) = skiff(
        &g,
        &admin,
        &[
            "token",
            "create",
            "--role",
            "operator",
            "--namespaces",
            "team-x",
            "--name",
            "x",
            "-o",
            "json",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let t: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(t["namespaces"], json!(["team-x"]), "{t}");
    let tx = t["token"].as_str().unwrap().to_string();

    // With the bound token, commands work in its namespace without -n.
    let spec = "name: web\nimage: busybox\nresources: {cpu: 100m, memory: 16Mi}\n";
    let (code, out, err) = skiff(&g, &tx, &["run", "-f", "-", "--detach"], Some(spec));
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = skiff(&g, &tx, &["ps", "-o", "json"], None);
    let ps: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ps[0]["spec"]["namespace"], "team-x", "{ps}");
    let (code, _, err) = skiff(&g, &tx, &["scale", "web", "5"], None);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "skiff: quota exceeded: namespace team-x would use 5 of 3 allocations"
    );
    let (code, _, err) = skiff(&g, &tx, &["-n", "default", "ps"], None);
    assert_eq!((code, err.trim()), (1, "skiff: no namespace default"));
    let (code, _, err) = skiff(&g, &tx, &["nodes"], None);
    assert_eq!(code, 1);
    assert!(err.contains("this needs a fleet token"), "{err}");
    // A fleet admin lists every namespace's, with the namespace.
    let (_, out, _) = skiff(&g, &admin, &["ps", "-A"], None);
    let header = out.lines().next().unwrap_or_default();
    assert!(header.starts_with("NAMESPACE"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("team-x") && l.contains("web")),
        "{out}"
    );
    let (_, out, _) = skiff(&g, &admin, &["ps"], None);
    assert!(!out.contains("web"), "default has no web: {out}");

    // A namespace with a workload is not deleted; empty, it is, with
    // the tokens bound only to it.
    let (code, _, err) = skiff(&g, &admin, &["namespace", "rm", "team-x"], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("namespace team-x still has 1 workloads"),
        "{err}"
    );
    let (code, _, err) = skiff(&g, &admin, &["-n", "team-x", "rm", "web"], None);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = skiff(&g, &admin, &["namespace", "rm", "team-x"], None);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = skiff(&g, &tx, &["ps"], None);
    assert_eq!(code, 1);
    assert!(err.contains("unknown token"), "{err}");
}
