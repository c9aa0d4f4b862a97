//! The limits and accounting tests (`limits.rs`) on real cgroup v2: this
//! project's hosts have a hybrid (v1) layout, so `scripts/vm-test` builds
//! them statically and runs them in a VM (qemu, software emulation) booting
//! Debian's cloud kernel with a unified hierarchy that has every
//! controller. Slow (a static build, then the VM): the nextest config gives
//! it a long slow-timeout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use skiff_test_support::tools::require_root;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace('\r', "")
}

/// Names of the tests in `limits.rs`, which the VM must have run.
fn limits_tests(manifest_dir: &Path) -> Vec<String> {
    let source = std::fs::read_to_string(manifest_dir.join("tests/limits.rs")).unwrap();
    let mut names = Vec::new();
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "#[test]" {
            let f = lines.next().unwrap_or_default().trim();
            let name = f
                .strip_prefix("fn ")
                .and_then(|r| r.split('(').next())
                .unwrap_or_else(|| panic!("limits.rs: no fn after #[test]: {f}"));
            names.push(name.to_string());
        }
    }
    names
}

/// libtest's verdict on `name` in `console`: the word after `test NAME ...`
/// (on a later line if something else was printed in between).
fn outcome(console: &str, name: &str) -> Option<String> {
    let start = format!("test {name} ...");
    let mut lines = console.lines().skip_while(|l| !l.starts_with(&start));
    let first = lines.next()?[start.len()..].trim();
    let verdicts = ["ok", "FAILED", "ignored"];
    if let Some(v) = verdicts.iter().find(|v| first.ends_with(*v)) {
        return Some(v.to_string());
    }
    lines
        .take_while(|l| !l.starts_with("test "))
        .map(str::trim)
        .find(|l| verdicts.contains(l))
        .map(str::to_string)
}

#[test]
fn limits_and_accounting_on_cgroup_v2_in_a_vm() {
    require_root();
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = manifest_dir.join("../scripts/vm-test");
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let console = text(&out.stdout);
    let log = text(&out.stderr);
    let context = format!("--- VM console:\n{console}\n--- scripts/vm-test:\n{log}");
    assert!(
        out.status.success(),
        "scripts/vm-test failed ({})\n{context}",
        out.status
    );

    // The VM really ran cgroup v2, with the controllers the agent uses
    // enabled for children of the root.
    let line = |prefix: &str| -> Vec<String> {
        console
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("the VM printed no {prefix:?} line\n{context}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let controllers = line("cgroup2 controllers:");
    let enabled = line("cgroup2 subtree_control:");
    for c in ["cpu", "memory", "pids", "io"] {
        assert!(
            controllers.iter().any(|x| x == c),
            "cgroup v2 in the VM has no {c} controller: {controllers:?}\n{context}"
        );
        assert!(
            enabled.iter().any(|x| x == c),
            "the {c} controller is not enabled for children: {enabled:?}\n{context}"
        );
    }
    assert!(
        console.contains("skiff-vm: SKIFF_TEST_EXPECT_CGROUP=v2"),
        "the tests in the VM were not told to expect cgroup v2\n{context}"
    );

    // Every limits test ran there and passed.
    let tests = limits_tests(&manifest_dir);
    assert!(tests.len() >= 5, "limits.rs has only {tests:?}");
    for name in &tests {
        assert_eq!(
            outcome(&console, name).as_deref(),
            Some("ok"),
            "{name} did not pass in the VM\n{context}"
        );
    }
    let summary = format!("test result: ok. {} passed; 0 failed", tests.len());
    assert!(
        console.contains(&summary),
        "no {summary:?} in the VM's output\n{context}"
    );
}
