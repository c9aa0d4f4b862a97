//! The REST API against its own OpenAPI document: schemathesis (from
//! PyPI, installed by `scripts/install-test-deps`) generates requests from
//! the document a live gateway serves, valid and invalid, and checks every
//! answer: no 5xx, no status or content type the document does not list,
//! answers that match their schemas, invalid requests refused and valid
//! ones accepted.
//!
//! A few rules of the spec bodies relate two values of one request (or
//! the request and the gateway's state), which no JSON Schema can state
//! (the document says them in words): a PUT's name is its path's, a port
//! appears once per protocol, preferred sites are allowed ones, a mount
//! names a volume of the spec, its namespace exists. `tests/fuzz/skiff_hooks.py` makes requests
//! generated as valid keep them; everything else is the schema's alone.
//!
//! `GET /v1/events` and the logs route are fuzzed with `follow=false`:
//! following, those streams never end.

use std::process::Command;

use skiff_e2e::Gateway;

fn schemathesis() -> std::path::PathBuf {
    let venv = std::env::var_os("SKIFF_SCHEMATHESIS_VENV")
        .unwrap_or_else(|| "/var/tmp/skiff-schemathesis-venv".into());
    let bin = std::path::Path::new(&venv).join("bin/schemathesis");
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/install-test-deps",
        bin.display()
    );
    bin
}

#[test]
fn the_api_does_what_its_openapi_document_says() {
    let dir = tempfile::tempdir().unwrap();
    // A small fleet limit keeps generated scales from loading a debug build.
    let g = Gateway::start(&dir.path().join("gw"), "max_fleet_replicas = 2000\n");
    // Something for the `{name}` routes to find.
    let (code, v) = g.call("POST", "/v1/workloads", Some("name: fuzzed\nimage: x\n"));
    assert_eq!(code, 202, "{v}");
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        r#"
# The spec's patterns are large (a size's bounds in each of 13 units), so
# generating a spec is slower than hypothesis likes; it is not wrong.
suppress-health-check = ["too_slow"]

# Following, these streams never end: the fuzzer reads them as they stand.
# Requests act in `default` (the only namespace that surely exists; a
# namespace that does not is a 404, which tests/tests/tenants.rs covers).
[[operations]]
include-path = "/v1/events"
parameters = { "query.follow" = "false", "query.namespace" = "default" }

[[operations]]
include-path = "/v1/workloads/{name}/logs"
parameters = { "path.name" = "fuzzed", "query.follow" = "false", "query.namespace" = "default" }

# (The first entry that matches an operation is the one used.)
[[operations]]
include-path-regex = "^/v1/workloads/\\{name\\}"
parameters = { "path.name" = "fuzzed", "query.namespace" = "default" }

[[operations]]
include-path-regex = "^/v1/(workloads|allocations|secrets|volumes)"
parameters = { "query.namespace" = "default" }
"#,
    )
    .unwrap();
    let out = Command::new(schemathesis())
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/v1/openapi.json", g.api))
        .args(["--url", &g.api])
        .args(["-H", &format!("Authorization: Bearer {}", g.admin_token())])
        .args(["--max-examples", "30", "--no-color"])
        .args(["--seed", "1"])
        .current_dir(dir.path())
        .env(
            "PYTHONPATH",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz"),
        )
        .env("SCHEMATHESIS_HOOKS", "skiff_hooks")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = report
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect();
    println!("{}", summary.join("\n"));
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        g.log()
    );
}
