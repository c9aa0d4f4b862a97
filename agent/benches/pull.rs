//! Image pull benchmark: `cargo bench -p skiff-agent --bench pull` (as root).
//!
//! Builds a multi-layer image of about 100 MB of gzip layers, pushes it to
//! Debian's docker-registry on loopback, then times, alternating, over
//! `SKIFF_BENCH_RUNS` runs (default 5), each into fresh directories:
//!
//! * skiff: `ImageStore::pull` (download, verify, unpack every layer);
//! * the peer: `skopeo copy docker://… oci:DIR:TAG` then `umoci unpack`.
//!
//! Prints both medians and their ratio, the gzip unpack throughput of one
//! layer, and what a second pull of the same image downloads.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use skiff_agent::images::unpack::{Compression, UnpackLimits, unpack_layer};
use skiff_agent::images::{ImageStore, ImagesConfig, PullEvent};
use skiff_proto::ImageRef;
use skiff_test_support::images::push_transport;
use skiff_test_support::layout::{Layout, RawTar, gzip};
use skiff_test_support::registry::Registry;
use skiff_test_support::tools::{require, require_root, run};

/// Deterministic filler: half random bytes, half text, so gzip compresses
/// it roughly like real binaries and libraries.
fn content(seed: &mut u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        if (*seed >> 60) & 1 == 0 {
            out.extend_from_slice(&seed.to_le_bytes());
        } else {
            out.extend_from_slice(b"lib_function_name_");
        }
    }
    out.truncate(len);
    out
}

/// Four layers of many files, about 100 MB gzip-compressed in total.
fn layers() -> Vec<Vec<u8>> {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    (0..4)
        .map(|l| {
            let mut tar = RawTar::new().dir(&format!("layer{l}"));
            for f in 0..600 {
                let size = 4 * 1024 + (f % 7) * 34 * 1024;
                tar = tar.file(
                    &format!("layer{l}/file{f:04}.so"),
                    &content(&mut seed, size),
                );
            }
            tar.finish()
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    require_root();
    let runs: usize = std::env::var("SKIFF_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let work = tempfile::tempdir().unwrap();
    let layers = layers();
    let compressed: usize = layers.iter().map(|l| gzip(l).len()).sum();
    let uncompressed: usize = layers.iter().map(Vec::len).sum();
    let layout = Layout::create(&work.path().join("layout")).unwrap();
    let desc = layout.image(&layers, "amd64").unwrap();
    layout.tag(desc, "bench").unwrap();
    let registry = Registry::start().unwrap();
    let reference = push_transport(&registry, &layout.transport("bench"), "bench/image:1").unwrap();
    let image: ImageRef = reference.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let skopeo = require("skopeo").unwrap();
    let umoci = require("umoci").unwrap();

    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    let mut repull = (0usize, 0.0f64);
    for i in 0..runs {
        // skiff
        let dir = tempfile::tempdir_in(work.path()).unwrap();
        let store = Arc::new(
            ImageStore::open(&dir.path().join("images"), ImagesConfig::default()).unwrap(),
        );
        let t = Instant::now();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        rt.block_on(store.pull(&image, tx)).unwrap();
        ours.push(t.elapsed().as_secs_f64());
        if i == 0 {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let t = Instant::now();
            rt.block_on(store.pull(&image, tx)).unwrap();
            let secs = t.elapsed().as_secs_f64();
            let mut downloads = 0;
            while let Ok(e) = rx.try_recv() {
                if matches!(e, PullEvent::Downloaded { .. }) {
                    downloads += 1;
                }
            }
            repull = (downloads, secs);
        }
        drop(store);
        drop(dir);

        // skopeo copy + umoci unpack
        let dir = tempfile::tempdir_in(work.path()).unwrap();
        let oci = dir.path().join("oci");
        let bundle = dir.path().join("bundle");
        let t = Instant::now();
        run(Command::new(&skopeo)
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:bench", oci.display())))
        .unwrap();
        run(Command::new(&umoci)
            .args(["unpack", "--image"])
            .arg(format!("{}:bench", oci.display()))
            .arg(&bundle))
        .unwrap();
        peer.push(t.elapsed().as_secs_f64());
    }
    let (m_ours, m_peer) = (median(&mut ours), median(&mut peer));
    println!(
        "pull image_mb={:.1} unpacked_mb={:.1} layers={} runs={runs} skiff_median_s={m_ours:.3} skopeo_umoci_median_s={m_peer:.3} ratio={:.2}",
        compressed as f64 / 1e6,
        uncompressed as f64 / 1e6,
        layers.len(),
        m_ours / m_peer
    );
    println!("repull downloads={} seconds={:.3}", repull.0, repull.1);

    // Unpack throughput of one gzip layer, from memory to disk.
    let blob = gzip(&layers[0]);
    let mut rates = Vec::new();
    for _ in 0..runs {
        let dest = tempfile::tempdir_in(work.path()).unwrap();
        let t = Instant::now();
        let stats = unpack_layer(
            blob.as_slice(),
            Compression::Gzip,
            dest.path(),
            &UnpackLimits::default(),
        )
        .unwrap();
        rates.push(stats.bytes as f64 / 1e6 / t.elapsed().as_secs_f64());
    }
    println!(
        "unpack gzip_layer_mb={:.1} median_mb_per_s={:.0}",
        layers[0].len() as f64 / 1e6,
        median(&mut rates)
    );
}
