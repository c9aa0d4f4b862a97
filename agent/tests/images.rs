//! The image store against a real registry (Debian's docker-registry on
//! loopback) and real archives. Runs as root (layers keep their owners).

use std::collections::BTreeSet;
use std::sync::Arc;

use skiff_agent::images::{ImageRecord, ImageStore, ImagesConfig, PullEvent, RegistryAuth};
use skiff_proto::ImageRef;
use skiff_test_support::images::{OciImage, push_transport};
use skiff_test_support::layout::{Layout, RawTar};
use skiff_test_support::registry::Registry;
use skiff_test_support::tools::require_root;

fn store(dir: &std::path::Path, config: ImagesConfig) -> Arc<ImageStore> {
    Arc::new(ImageStore::open(&dir.join("images"), config).unwrap())
}

async fn pull(
    store: &Arc<ImageStore>,
    reference: &str,
) -> (Result<ImageRecord, String>, Vec<PullEvent>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let r: ImageRef = reference.parse().unwrap();
    let result = store.pull(&r, tx).await.map_err(|e| e.to_string());
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (result, events)
}

fn downloaded(events: &[PullEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, PullEvent::Downloaded { .. }))
        .count()
}

#[tokio::test]
async fn pull_by_tag_and_by_digest() {
    require_root();
    let work = tempfile::tempdir().unwrap();
    let motd = vec![("/etc/motd".to_string(), b"hi\n".to_vec())];
    let image = OciImage::busybox(work.path(), "v1", &[motd]).unwrap();
    let registry = Registry::start().unwrap();
    let reference = image.push(&registry, "skiff/busybox").unwrap();

    let state = tempfile::tempdir().unwrap();
    let s = store(state.path(), ImagesConfig::default());
    let (rec, events) = pull(&s, &reference).await;
    let rec = rec.unwrap();
    assert_eq!(rec.reference, reference);
    assert_eq!(rec.layers.len(), 2);
    assert_eq!(downloaded(&events), 2);
    assert_eq!(rec.config.cmd, vec!["/bin/sh"]);
    assert_eq!(rec.platform, "linux/amd64");
    // The layers are unpacked where the runtime will stack them.
    let lower = s.lower_dirs(&rec);
    assert_eq!(std::fs::read(lower[0].join("etc/motd")).unwrap(), b"hi\n");
    assert!(lower[1].join("bin/busybox").is_file());

    // By digest: same manifest, nothing downloaded again.
    let by_digest = format!("{}/skiff/busybox@{}", registry.host(), rec.digest);
    let (again, events) = pull(&s, &by_digest).await;
    let again = again.unwrap();
    assert_eq!(again.digest, rec.digest);
    assert_eq!(downloaded(&events), 0, "{events:?}");
    assert_eq!(s.list().unwrap().len(), 2);

    // A digest the registry does not have is an error naming the registry.
    let missing = format!(
        "{}/skiff/busybox@sha256:{}",
        registry.host(),
        "0".repeat(64)
    );
    let (err, _) = pull(&s, &missing).await;
    let err = err.unwrap_err();
    assert!(err.starts_with("registry:"), "{err}");
}

#[tokio::test]
async fn a_multi_platform_index_resolves_to_this_host() {
    require_root();
    let work = tempfile::tempdir().unwrap();
    let layout = Layout::create(&work.path().join("multi")).unwrap();
    let amd = layout
        .image(&[RawTar::new().file("arch", b"amd64").finish()], "amd64")
        .unwrap();
    let arm = layout
        .image(&[RawTar::new().file("arch", b"arm64").finish()], "arm64")
        .unwrap();
    let index = layout.index(vec![arm, amd.clone()]).unwrap();
    layout.tag(index, "multi").unwrap();
    let registry = Registry::start().unwrap();
    let reference = push_transport(&registry, &layout.transport("multi"), "skiff/multi:1").unwrap();

    let state = tempfile::tempdir().unwrap();
    let s = store(state.path(), ImagesConfig::default());
    let rec = pull(&s, &reference).await.0.unwrap();
    assert_eq!(rec.digest.to_string(), amd["digest"].as_str().unwrap());
    assert!(rec.index_digest.is_some());
    assert_eq!(
        std::fs::read(s.lower_dirs(&rec)[0].join("arch")).unwrap(),
        b"amd64"
    );
}

#[tokio::test]
async fn basic_auth_registries_need_the_configured_credentials() {
    require_root();
    let work = tempfile::tempdir().unwrap();
    let image = OciImage::busybox(work.path(), "p", &[]).unwrap();
    let registry = Registry::start_with_auth("skiff", "s3cret").unwrap();
    let reference = image.push(&registry, "private/busybox").unwrap();

    let state = tempfile::tempdir().unwrap();
    let anonymous = store(state.path(), ImagesConfig::default());
    let err = pull(&anonymous, &reference).await.0.unwrap_err();
    assert!(err.starts_with("registry:"), "{err}");
    assert!(anonymous.list().unwrap().is_empty());
    drop(anonymous);

    let mut config = ImagesConfig::default();
    config.auth.insert(
        registry.host(),
        RegistryAuth {
            username: Some("skiff".into()),
            password: Some("s3cret".into()),
            token: None,
        },
    );
    let authed = store(state.path(), config);
    assert_eq!(
        pull(&authed, &reference).await.0.unwrap().reference,
        reference
    );
}

#[tokio::test]
async fn shared_layers_are_not_downloaded_again_and_gc_keeps_them() {
    require_root();
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("a")).unwrap();
    std::fs::create_dir_all(work.path().join("b")).unwrap();
    let base = OciImage::busybox(&work.path().join("a"), "base", &[]).unwrap();
    let extra = vec![("/app".to_string(), b"app".to_vec())];
    let app = OciImage::busybox(&work.path().join("b"), "app", &[extra]).unwrap();
    let registry = Registry::start().unwrap();
    let base_ref = base.push(&registry, "skiff/base").unwrap();
    let app_ref = app.push(&registry, "skiff/app").unwrap();

    let state = tempfile::tempdir().unwrap();
    let s = store(state.path(), ImagesConfig::default());
    pull(&s, &base_ref).await.0.unwrap();
    let (rec, events) = pull(&s, &app_ref).await;
    let rec = rec.unwrap();
    if base.layer_digests().unwrap()[0] == app.layer_digests().unwrap()[0] {
        assert_eq!(downloaded(&events), 1, "only the app layer: {events:?}");
        assert!(
            events
                .iter()
                .any(|e| matches!(e, PullEvent::LayerExists { .. }))
        );
    }
    // Same content means the same unpacked layer, whatever the compression.
    assert_eq!(s.disk_usage().unwrap().layers, 2);

    // Removing the app frees only its own layer; the base stays.
    let report = s.remove(&app_ref, &BTreeSet::new()).await.unwrap();
    assert_eq!(report.layers_removed, 1);
    assert!(!s.lower_dirs(&rec)[0].exists());
    assert!(s.lower_dirs(&rec)[1].join("bin/busybox").exists());
    assert!(s.get(&app_ref).is_err());
    let usage = s.disk_usage().unwrap();
    assert_eq!((usage.images, usage.layers), (1, 1));
    s.remove(&base_ref, &BTreeSet::new()).await.unwrap();
    let usage = s.disk_usage().unwrap();
    assert_eq!((usage.images, usage.blobs, usage.layers), (0, 0, 0));
}

#[tokio::test]
async fn archives_of_all_three_formats_import() {
    require_root();
    let work = tempfile::tempdir().unwrap();
    let image = OciImage::busybox(work.path(), "v2", &[]).unwrap();
    let oci_archive = image.oci_archive().unwrap();
    let docker_archive = image.docker_archive("skiff/busybox:v2").unwrap();

    let state = tempfile::tempdir().unwrap();
    let s = store(state.path(), ImagesConfig::default());
    let from_dir = s.import(&image.layout, None).await.unwrap();
    assert_eq!(from_dir[0].reference, "localhost/layout:v2");
    let named: ImageRef = "example.com/team/tool:1".parse().unwrap();
    let from_oci = s.import(&oci_archive, Some(&named)).await.unwrap();
    assert_eq!(from_oci[0].reference, "example.com/team/tool:1");
    let from_docker = s.import(&docker_archive, None).await.unwrap();
    assert_eq!(from_docker[0].reference, "docker.io/skiff/busybox:v2");
    for rec in [&from_dir[0], &from_oci[0], &from_docker[0]] {
        assert_eq!(rec.config.cmd, vec!["/bin/sh"], "{}", rec.reference);
        assert!(s.lower_dirs(rec)[0].join("bin/busybox").is_file());
    }
    // The same layer content is one unpacked layer, shared by all three.
    assert_eq!(
        from_dir[0].layers[0].diff_id,
        from_docker[0].layers[0].diff_id
    );
    assert_eq!(s.disk_usage().unwrap().layers, 1);

    let not_an_image = work.path().join("junk.tar");
    std::fs::write(&not_an_image, b"not a tar").unwrap();
    let e = s.import(&not_an_image, None).await.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}:", not_an_image.display())),
        "{e}"
    );
}

#[tokio::test]
async fn a_hostile_layer_is_refused_and_writes_nothing_outside() {
    require_root();
    let work = tempfile::tempdir().unwrap();
    let layout = Layout::create(&work.path().join("evil")).unwrap();
    let evil = RawTar::new()
        .dir("etc")
        .symlink("etc/link", "../../../../../../tmp")
        .file("etc/link/skiff-pwned", b"gotcha")
        .finish();
    let desc = layout.image(&[evil], "amd64").unwrap();
    layout.tag(desc, "evil").unwrap();
    let registry = Registry::start().unwrap();
    let reference = push_transport(&registry, &layout.transport("evil"), "skiff/evil:1").unwrap();

    let state = tempfile::tempdir().unwrap();
    let s = store(state.path(), ImagesConfig::default());
    let err = pull(&s, &reference).await.0.unwrap_err();
    assert!(err.contains("etc/link/skiff-pwned"), "{err}");
    assert!(!std::path::Path::new("/tmp/skiff-pwned").exists());
    assert!(s.list().unwrap().is_empty());
    // No half-unpacked layer is left to be used later.
    assert_eq!(s.disk_usage().unwrap().layers, 0);
}
