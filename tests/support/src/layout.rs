//! OCI image layouts written by hand, for images no build tool would make:
//! layers with hostile entries, large random layers for benchmarks, and
//! multi-platform indexes.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// `sha256:<hex>` of some bytes.
pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A tar stream built entry by entry, with no checks on names, so tests
/// can write what a hostile image would.
#[derive(Debug, Default)]
pub struct RawTar {
    buf: Vec<u8>,
}

impl RawTar {
    pub fn new() -> Self {
        Self::default()
    }

    fn header(&mut self, name: &[u8], kind: u8, size: u64, mode: u32, link: &[u8]) {
        assert!(
            name.len() <= 100 && link.len() <= 100,
            "names up to 100 bytes"
        );
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        let octal = |field: &mut [u8], v: u64| {
            let s = format!("{:0width$o}", v, width = field.len() - 1);
            field[..s.len()].copy_from_slice(s.as_bytes());
        };
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 1_700_000_000);
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.buf.extend_from_slice(&h);
    }

    pub fn dir(mut self, name: &str) -> Self {
        self.header(name.as_bytes(), b'5', 0, 0o755, b"");
        self
    }

    pub fn file(mut self, name: &str, content: &[u8]) -> Self {
        self.header(name.as_bytes(), b'0', content.len() as u64, 0o644, b"");
        self.buf.extend_from_slice(content);
        let pad = (512 - content.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn symlink(mut self, name: &str, target: &str) -> Self {
        self.header(name.as_bytes(), b'2', 0, 0o777, target.as_bytes());
        self
    }

    pub fn hardlink(mut self, name: &str, target: &str) -> Self {
        self.header(name.as_bytes(), b'1', 0, 0o644, target.as_bytes());
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0u8, 1024));
        self.buf
    }
}

/// Gzip-compresses a layer (fast level: test data is often random).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("in-memory write");
    e.finish().expect("in-memory write")
}

/// An OCI layout being written.
#[derive(Debug)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes a blob; returns its descriptor fields (digest, size).
    pub fn blob(&self, data: &[u8]) -> Result<(String, usize)> {
        let d = digest(data);
        std::fs::write(
            self.dir
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
            data,
        )?;
        Ok((d, data.len()))
    }

    /// Writes an image of the given uncompressed tar layers (stored
    /// gzip-compressed) for `arch`; returns the manifest descriptor.
    pub fn image(&self, layers: &[Vec<u8>], arch: &str) -> Result<Value> {
        self.image_of(layers, arch, true)
    }

    /// The same with the layers stored as they are, uncompressed (what
    /// `docker import` of a tarball and `buildah` write).
    pub fn image_uncompressed(&self, layers: &[Vec<u8>], arch: &str) -> Result<Value> {
        self.image_of(layers, arch, false)
    }

    fn image_of(&self, layers: &[Vec<u8>], arch: &str, compress: bool) -> Result<Value> {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for tar in layers {
            diff_ids.push(digest(tar));
            let (d, size, media) = if compress {
                let (d, size) = self.blob(&gzip(tar))?;
                (d, size, "application/vnd.oci.image.layer.v1.tar+gzip")
            } else {
                let (d, size) = self.blob(tar)?;
                (d, size, "application/vnd.oci.image.layer.v1.tar")
            };
            descs.push(json!({ "mediaType": media, "digest": d, "size": size }));
        }
        let config = json!({
            "architecture": arch, "os": "linux",
            "config": { "Cmd": ["/bin/sh"], "Env": ["PATH=/bin"] },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        let (cd, cs) = self.blob(&serde_json::to_vec(&config)?)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs },
            "layers": descs,
        });
        let (md, ms) = self.blob(&serde_json::to_vec(&manifest)?)?;
        Ok(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": ms,
            "platform": { "architecture": arch, "os": "linux" },
        }))
    }

    /// Writes an image index over `manifests`; returns its descriptor.
    pub fn index(&self, manifests: Vec<Value>) -> Result<Value> {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let (d, s) = self.blob(&serde_json::to_vec(&index)?)?;
        Ok(
            json!({ "mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": s }),
        )
    }

    /// Tags `desc` as `tag` in the layout's `index.json`.
    pub fn tag(&self, mut desc: Value, tag: &str) -> Result<()> {
        desc["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
        let path = self.dir.join("index.json");
        let mut index: Value = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)?,
            Err(_) => json!({ "schemaVersion": 2, "manifests": [] }),
        };
        index["manifests"]
            .as_array_mut()
            .expect("manifests is an array")
            .push(desc);
        std::fs::write(path, serde_json::to_vec(&index)?)?;
        Ok(())
    }

    /// `oci:DIR:TAG` for skopeo.
    pub fn transport(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }
}
