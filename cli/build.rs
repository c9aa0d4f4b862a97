//! Packs the demo image `skiff dev --demo` runs: `demo/web.rs` built as a
//! static program and laid out as an OCI image (one gzip layer with
//! `/web`, a config whose command is `/web`), tarred as an oci-archive
//! into `OUT_DIR/demo.oci.tar` for `include_bytes!`. Built here, so the
//! dev fleet needs no registry and no internet.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest as _;

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A tar of `entries` (path, mode, contents), every time fixed so the same
/// program makes the same layer.
fn tar(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).expect("tar path");
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *data).expect("tar append");
    }
    b.into_inner().expect("tar finish")
}

fn main() {
    let src = "demo/web.rs";
    println!("cargo:rerun-if-changed={src}");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let bin = out_dir.join("demo-web");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("TARGET");
    let status = Command::new(rustc)
        .args([
            "--edition=2024",
            "--crate-name=web",
            "--crate-type=bin",
            "-Copt-level=s",
            "-Cpanic=abort",
            "-Cstrip=symbols",
            "-Ctarget-feature=+crt-static",
            "--target",
            &target,
            "-o",
        ])
        .arg(&bin)
        .arg(src)
        .status()
        .expect("run rustc for the demo image");
    assert!(
        status.success(),
        "building the demo image's web server failed (it needs the static C library: libc6-dev)"
    );
    let program = std::fs::read(&bin).expect("read the demo program");
    let layer = tar(&[("web", 0o755, &program)]);
    let diff_id = sha256(&layer);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer).expect("gzip");
    let layer_gz = gz.finish().expect("gzip");
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "amd64",
        Ok("aarch64") => "arm64",
        Ok(other) => other.to_string().leak(),
        Err(_) => "amd64",
    };
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": { "Cmd": ["/web"], "Env": ["PATH=/"], "ExposedPorts": {"8080/tcp": {}} },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    }))
    .expect("config");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha256(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                     "digest": sha256(&layer_gz), "size": layer_gz.len() }],
    }))
    .expect("manifest");
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": sha256(&manifest), "size": manifest.len(),
                        "annotations": { "org.opencontainers.image.ref.name": "skiff/demo:1" } }],
    }))
    .expect("index");
    let blob = |d: &[u8]| format!("blobs/sha256/{}", &sha256(d)[7..]);
    let (b1, b2, b3) = (blob(&layer_gz), blob(&config), blob(&manifest));
    let archive = tar(&[
        ("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", 0o644, &index),
        (&b1, 0o644, &layer_gz),
        (&b2, 0o644, &config),
        (&b3, 0o644, &manifest),
    ]);
    std::fs::write(Path::new(&out_dir).join("demo.oci.tar"), archive).expect("write demo.oci.tar");
}
