//! The test support itself: images build, the registry serves them, and
//! helper processes never outlive a test.

use std::process::Command;
use std::time::Duration;

use skiff_test_support::images::{OciImage, inspect};
use skiff_test_support::procs::{ChildGuard, pid_exists};
use skiff_test_support::registry::Registry;

fn payload_layer(name: &str, size: usize) -> Vec<(String, Vec<u8>)> {
    vec![(
        format!("/data/{name}"),
        (0..size).map(|i| (i % 251) as u8).collect(),
    )]
}

#[test]
fn busybox_image_pushes_to_the_registry_and_reads_back() {
    let work = tempfile::tempdir().unwrap();
    let image = OciImage::busybox(work.path(), "test", &[payload_layer("a", 4096)]).unwrap();
    let layers = image.layer_digests().unwrap();
    assert_eq!(layers.len(), 2, "base layer plus one extra");

    let registry = Registry::start().unwrap();
    let reference = image.push(&registry, "skiff/busybox").unwrap();
    assert_eq!(reference, format!("{}/skiff/busybox:test", registry.host()));

    let remote = inspect(&format!("docker://{reference}"), &[]).unwrap();
    let remote_layers: Vec<&str> = remote["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(remote_layers, layers);
    assert_eq!(remote["Os"], "linux");

    let pid = registry.pid();
    let storage = registry.storage_dir();
    assert!(storage.exists());
    drop(registry);
    assert!(
        !pid_exists(pid),
        "registry process {pid} outlived its guard"
    );
    assert!(!storage.exists(), "registry storage outlived its guard");
}

#[test]
fn archives_in_both_formats() {
    let work = tempfile::tempdir().unwrap();
    let image = OciImage::busybox(work.path(), "v1", &[]).unwrap();
    let layers = image.layer_digests().unwrap();

    let oci = image.oci_archive().unwrap();
    let info = inspect(&format!("oci-archive:{}:v1", oci.display()), &[]).unwrap();
    assert_eq!(info["Layers"].as_array().unwrap().len(), layers.len());

    let docker = image.docker_archive("skiff/busybox:v1").unwrap();
    let listing = String::from_utf8(
        Command::new("tar")
            .arg("tf")
            .arg(&docker)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(listing.lines().any(|l| l == "manifest.json"), "{listing}");
    let info = inspect(&format!("docker-archive:{}", docker.display()), &[]).unwrap();
    assert_eq!(info["Layers"].as_array().unwrap().len(), layers.len());
}

#[test]
fn a_registry_with_basic_auth_refuses_anonymous_pushes() {
    let work = tempfile::tempdir().unwrap();
    let image = OciImage::busybox(work.path(), "auth", &[]).unwrap();
    let registry = Registry::start_with_auth("skiff", "s3cret").unwrap();
    image.push(&registry, "private/busybox").unwrap();

    let reference = format!("docker://{}/private/busybox:auth", registry.host());
    let anonymous = inspect(&reference, &[]);
    assert!(anonymous.is_err(), "anonymous inspect succeeded");
    let authed = inspect(&reference, &["--creds".into(), "skiff:s3cret".into()]).unwrap();
    assert_eq!(authed["Layers"].as_array().unwrap().len(), 1);
}

#[test]
fn helper_processes_are_stopped_when_a_test_panics() {
    let mut pids = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // A helper that ignores SIGTERM still goes (SIGKILL after the grace),
        // and so does its own child in the same process group.
        let guard = ChildGuard::spawn(
            "stubborn",
            Command::new("sh").args(["-c", "trap '' TERM; sleep 60 & wait"]),
        )
        .unwrap();
        pids.push(guard.pid());
        std::thread::sleep(Duration::from_millis(100));
        panic!("the test failed");
    }));
    assert!(result.is_err());
    for pid in pids {
        assert!(!pid_exists(pid), "helper {pid} outlived the failed test");
    }
    let leftover = Command::new("pgrep")
        .args(["-f", "trap '' TERM; sleep 60"])
        .output()
        .unwrap();
    assert!(leftover.stdout.is_empty(), "a grandchild survived");
}
