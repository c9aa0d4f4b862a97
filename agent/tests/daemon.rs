//! The `skiff-agent` binary as an operator uses it: the daemon on a socket,
//! and the image commands against it. Runs as root.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, BIN};

use skiff_test_support::images::{OciImage, push_transport};
use skiff_test_support::layout::{Layout, RawTar};
use skiff_test_support::procs::ChildGuard;
use skiff_test_support::registry::Registry;
use skiff_test_support::tools::require_root;

fn images_json(agent: &Agent) -> Vec<serde_json::Value> {
    serde_json::from_str(&agent.ok(&["images", "-o", "json"])).unwrap()
}

#[test]
fn pull_images_import_rmi_prune_through_the_cli() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let image = OciImage::busybox(work.path(), "cli", &[]).unwrap();
    let registry = Registry::start().unwrap();
    let reference = image.push(&registry, "skiff/busybox").unwrap();
    let agent = Agent::start(dir.path());

    let out = agent.ok(&["pull", &reference]);
    assert!(
        out.contains(&format!("pulled {reference} (sha256:")),
        "{out}"
    );
    let images = images_json(&agent);
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["reference"], reference.as_str());

    let archive = image.docker_archive("skiff/imported:1").unwrap();
    let out = agent.ok(&["import", archive.to_str().unwrap()]);
    assert!(
        out.starts_with("imported docker.io/skiff/imported:1"),
        "{out}"
    );
    assert_eq!(images_json(&agent).len(), 2);
    let table = agent.ok(&["images"]);
    assert!(
        table.lines().next().unwrap().starts_with("REFERENCE"),
        "{table}"
    );

    // Bad input: one clear line, exit 1, nothing changes.
    let bad = agent.cli(&["pull", "Not A Reference"]);
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("\"Not A Reference\" is not an image reference"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let missing = agent.cli(&["rmi", "nosuch:image"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such image: nosuch:image"));
    assert_eq!(images_json(&agent).len(), 2);

    agent.ok(&["rmi", &reference, "docker.io/skiff/imported:1"]);
    assert!(images_json(&agent).is_empty());
    let out = agent.ok(&["prune"]);
    assert!(out.starts_with("removed 0 blobs and 0 layers"), "{out}");
    let df: serde_json::Value = serde_json::from_str(&agent.ok(&["df", "-o", "json"])).unwrap();
    assert_eq!(df["layers"], 0);
    assert_eq!(df["blobs"], 0);
}

#[test]
fn an_interrupted_pull_resumes_cleanly_after_kill_9() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // A large, incompressible layer so the pull is still running when the
    // agent is killed, and a small one that finishes early.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let big: Vec<u8> = (0..48 << 20)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let layout = Layout::create(&work.path().join("big")).unwrap();
    let desc = layout
        .image(
            &[
                RawTar::new().file("small", b"small layer").finish(),
                RawTar::new().file("big.bin", &big).finish(),
            ],
            "amd64",
        )
        .unwrap();
    layout.tag(desc, "big").unwrap();
    let registry = Registry::start().unwrap();
    let reference = push_transport(&registry, &layout.transport("big"), "skiff/big:1").unwrap();

    let mut agent = Agent::start(dir.path());
    let mut pull = ChildGuard::spawn(
        "skiff-agent pull",
        Command::new(BIN)
            .arg("--socket")
            .arg(&agent.socket)
            .args(["pull", &reference])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    // Wait until a partial blob is on disk, then crash the agent.
    let tmp = agent.state.join("images/tmp");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let partial = std::fs::read_dir(&tmp)
            .map(|d| {
                d.flatten()
                    .any(|e| e.metadata().map(|m| m.len() > 1 << 20).unwrap_or(false))
            })
            .unwrap_or(false);
        if partial {
            break;
        }
        assert!(Instant::now() < deadline, "the pull never started writing");
        std::thread::sleep(Duration::from_millis(5));
    }
    agent.process.as_mut().unwrap().kill9();
    pull.stop(Duration::from_secs(5));
    assert!(
        std::fs::read_dir(&tmp).unwrap().next().is_some(),
        "a partial download was left, as a crash would leave it"
    );

    agent.restart();
    assert!(
        std::fs::read_dir(&tmp).unwrap().next().is_none(),
        "the restarted agent cleared unfinished downloads"
    );
    assert!(
        images_json(&agent).is_empty(),
        "no half-pulled image is listed"
    );
    let out = agent.ok(&["pull", &reference]);
    assert!(out.contains("pulled"), "{out}");
    let rec: serde_json::Value =
        serde_json::from_str(&agent.ok(&["image-inspect", &reference])).unwrap();
    let diff_id = rec["layers"][1]["diff_id"].as_str().unwrap();
    let unpacked = agent
        .state
        .join("images/layers")
        .join(diff_id.trim_start_matches("sha256:"))
        .join("big.bin");
    assert_eq!(std::fs::read(unpacked).unwrap(), big, "the layer is whole");
}
