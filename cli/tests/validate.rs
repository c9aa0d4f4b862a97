//! `skiff validate` and `skiff schema`, run as a user would run them.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const EXAMPLE: &str = include_str!("../../docs/examples/web.yaml");

fn skiff(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn accepts_the_sketch_example() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "web.yaml", EXAMPLE);
    let out = skiff(&["validate", &file], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{file}: ok (web)\n")
    );
}

#[test]
fn rejects_bad_files_with_one_line_per_error_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir, "good.yaml", EXAMPLE);
    let bad = write(
        &dir,
        "bad.yaml",
        "name: web\nimage: busybox\npriority: 0\nports: [{container: 80}, {container: 70000}]\n",
    );
    let typo = write(
        &dir,
        "typo.json",
        r#"{"name": "web", "image": "busybox", "replica": 2}"#,
    );
    let out = skiff(&["validate", &good, &bad, &typo], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines.contains(&format!("{bad}: spec.ports[1].container: 70000 is not a port").as_str()),
        "{stderr}"
    );
    assert!(
        lines.contains(&format!("{bad}: spec.priority: 0 is not between 1 and 100").as_str()),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{typo}: spec.replica: unknown field `replica`"))),
        "{stderr}"
    );
    // The good file is still reported as good.
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{good}: ok (web)")));
}

#[test]
fn reads_standard_input_and_reports_missing_files() {
    let out = skiff(&["validate", "-"], Some("name: x\nimage: busybox\n"));
    assert!(out.status.success());
    let out = skiff(&["validate", "/nonexistent/web.yaml"], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("/nonexistent/web.yaml: cannot read:"),
        "{stderr}"
    );
}

#[test]
fn schema_prints_a_json_schema_the_example_satisfies() {
    let out = skiff(&["schema"], None);
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let validator = jsonschema::validator_for(&schema).unwrap();
    let example: serde_json::Value = serde_yaml_ng::from_str(EXAMPLE).unwrap();
    assert!(validator.is_valid(&example));
    let typo: serde_json::Value =
        serde_yaml_ng::from_str("name: web\nimage: busybox\nreplica: 3").unwrap();
    assert!(!validator.is_valid(&typo));
}
