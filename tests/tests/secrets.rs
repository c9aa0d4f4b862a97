//! Secrets end to end, as root: made through the REST API, sealed in the
//! gateway's store, read by a real container as a file and a variable,
//! rotated into the running container, and nowhere else in plain text.

use base64::Engine as _;
use skiff_e2e::{Agent, Gateway, eventually};
use skiff_test_support::tools::require_root;

const CONFIG: &str = "heartbeat_interval = \"250ms\"\ndown_after = \"2s\"\n";
const VALUE: &str = "pw-0f3a9c-first";
const ROTATED: &str = "pw-7be21d-second";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Whether `haystack` holds a value, as is or base64.
fn leaks(haystack: &[u8], value: &str) -> bool {
    let b = b64(value);
    [value.as_bytes(), b.as_bytes()]
        .iter()
        .any(|v| haystack.windows(v.len()).any(|w| w == *v))
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_secret_reaches_its_container_as_a_file_and_a_variable_rotates_in_place_and_leaks_nowhere() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image) = skiff_e2e::busybox_registry(dir.path());
    let gw_dir = dir.path().join("gw");
    let g = Gateway::start(&gw_dir, CONFIG);
    let agent = Agent::joined(dir.path(), "node-a", &g);

    let body = format!(
        r#"{{"name": "db", "data": {{"password": "{}"}}}}"#,
        b64(VALUE)
    );
    let (code, v) = g.call("POST", "/v1/secrets", Some(&body));
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["version"], 1, "{v}");
    assert_eq!(v["keys"], serde_json::json!(["password"]), "{v}");
    let (code, v) = g.call("POST", "/v1/secrets", Some(&body));
    assert_eq!(code, 409, "{v}");
    // A bad body is named by its field, and its value is not echoed.
    let (code, v) = g.call(
        "POST",
        "/v1/secrets",
        Some(&format!(r#"{{"name": "x", "data": {{"k": "{VALUE}!"}}}}"#)),
    );
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["message"], "data.k: not a base64 string", "{v}");

    // A workload naming a secret that does not exist is refused.
    let spec = |secret: &str| {
        format!(
            "name: app\nimage: {image}\ncommand: [\"sleep\", \"3600\"]\nstop_timeout: 1s\n\
             resources: {{cpu: 10m, memory: 16Mi}}\n\
             secrets: [{{name: {secret}, path: /run/secrets/db, env: {{PGPASSWORD: password}}}}]\n"
        )
    };
    let (code, v) = g.call("POST", "/v1/workloads", Some(&spec("nope")));
    assert_eq!(code, 404, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("spec.secrets[0].name: no secret nope"),
        "{v}"
    );
    let (code, v) = g.call("POST", "/v1/workloads", Some(&spec("db")));
    assert_eq!(code, 202, "{v}");
    let w = g.until("/v1/workloads/app", "running", 60, |w| w["running"] == 1);
    let id = w["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["state"] == "running")
        .and_then(|a| a["id"].as_str())
        .unwrap()
        .to_string();
    let exec = |script: &str| {
        let out = agent.cli(&["exec", &id, "sh", "-c", script]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(exec("cat /run/secrets/db/password"), VALUE);
    assert_eq!(exec("echo -n $PGPASSWORD"), VALUE);
    assert_eq!(
        exec("touch /run/secrets/db/x 2>/dev/null && echo written"),
        ""
    );

    // Rotated: the running container reads the new value from its file.
    let (code, v) = g.call(
        "PUT",
        "/v1/secrets/db",
        Some(&format!(
            r#"{{"data": {{"password": "{}"}}}}"#,
            b64(ROTATED)
        )),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["version"], 2, "{v}");
    eventually(
        30,
        || exec("cat /run/secrets/db/password") == ROTATED,
        || {
            format!(
                "{:?}\n{}",
                exec("cat /run/secrets/db/password"),
                agent.log()
            )
        },
    );
    assert_eq!(
        agent.running(),
        std::slice::from_ref(&id),
        "the container was not replaced"
    );
    // In use: not deleted.
    let (code, v) = g.call("DELETE", "/v1/secrets/db", None);
    assert_eq!(code, 409, "{v}");

    // Nowhere in plain text (or base64): the gateway's store and state
    // directory, its log, the agent's log and state on disk, and every
    // read of the API.
    for value in [VALUE, ROTATED] {
        for f in files_under(&gw_dir) {
            let bytes = std::fs::read(&f).unwrap_or_default();
            assert!(!leaks(&bytes, value), "{} holds the secret", f.display());
        }
        let secrets_tmpfs = agent.dir.join("state/secrets");
        for f in files_under(&agent.dir) {
            if f.starts_with(&secrets_tmpfs) {
                continue;
            }
            // (A variable is in the container's config, as Docker keeps it.)
            if f.file_name().is_some_and(|n| n == "config.json") {
                continue;
            }
            let bytes = std::fs::read(&f).unwrap_or_default();
            assert!(!leaks(&bytes, value), "{} holds the secret", f.display());
        }
        for path in [
            "/v1/secrets",
            "/v1/workloads/app",
            "/v1/workloads",
            "/v1/allocations",
            "/v1/events?follow=false",
            "/v1/state",
            "/v1/nodes/node-a",
        ] {
            let (code, v) = g.call("GET", path, None);
            assert_eq!(code, 200, "{path}: {v}");
            assert!(!leaks(v.to_string().as_bytes(), value), "{path}: {v}");
        }
    }
    // The store file holds it sealed: its record is there, its value not.
    let store = std::fs::read(gw_dir.join("state/state.redb")).unwrap();
    assert!(store.windows(2).any(|w| w == b"db"));

    // Gone with its workload: then it can be deleted.
    let (code, _) = g.call("DELETE", "/v1/workloads/app", None);
    assert_eq!(code, 202);
    let (code, v) = g.call("DELETE", "/v1/secrets/db", None);
    assert_eq!(code, 204, "{v}");
    assert_eq!(g.call("GET", "/v1/secrets", None).1, serde_json::json!([]));
}
