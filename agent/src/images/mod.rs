//! The image store: pulls images from OCI registries, imports archives,
//! keeps verified blobs and unpacked layers shared by every image and
//! container, and garbage-collects what nothing uses.
//!
//! * [`store`]: blobs by digest and unpacked layers, crash-safe on disk.
//! * [`meta`]: image records in an embedded database.
//! * [`pull`]: the registry client (oci-client) and the pull pipeline:
//!   layers download concurrently and unpack as soon as they are verified.
//! * [`import`]: OCI layout directories, `oci-archive` and `docker-archive`.
//! * [`unpack`]: safe extraction of hostile layers into overlayfs format.

pub mod digest;
mod gc;
mod import;
pub mod meta;
mod pull;
pub mod store;
pub mod unpack;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use skiff_proto::{ByteSize, ImageRef};

pub use digest::Digest;
pub use gc::{DiskUsage, PruneReport};
pub use import::DockerArchiveEntry;
pub use meta::{ImageConfig, ImageRecord, LayerRecord};
pub use pull::PullEvent;

use meta::Meta;
use store::ContentStore;
use unpack::UnpackLimits;

/// Everything that can go wrong in the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no such image: {0}")]
    NotFound(String),
    #[error("{0}")]
    BadReference(String),
    #[error("registry: {0}")]
    Registry(String),
    #[error("{what}: digest mismatch (got {actual})")]
    DigestMismatch { what: String, actual: String },
    #[error("layer {layer}: {source}")]
    Layer {
        layer: String,
        #[source]
        source: unpack::UnpackError,
    },
    #[error("manifest: {0}")]
    BadManifest(String),
    #[error("no manifest for platform {0}")]
    NoPlatform(String),
    #[error("{path}: {reason}")]
    Import { path: String, reason: String },
    #[error("metadata database: {0}")]
    Db(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Credentials for one registry. Never logged: `Debug` shows no secret.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// A bearer token, instead of username and password.
    #[serde(default)]
    pub token: Option<String>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The `[images]` section of the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// Registries (host[:port]) reached over plain HTTP. Loopback
    /// registries always are; anything else needs to be listed here.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// A PEM file of extra CA certificates trusted for registries, on top of
    /// the system roots.
    #[serde(default)]
    pub extra_ca_file: Option<PathBuf>,
    /// Layers downloaded at once per pull.
    #[serde(default = "default_concurrency")]
    pub concurrent_downloads: usize,
    /// Largest unpacked size of one layer.
    #[serde(default = "default_max_layer_bytes")]
    pub max_layer_bytes: ByteSize,
    /// Most entries in one layer.
    #[serde(default = "default_max_layer_entries")]
    pub max_layer_entries: u64,
    /// Let layers create device nodes (off: hostile images cannot).
    #[serde(default)]
    pub allow_devices: bool,
    /// Credentials per registry host (`registry.example.com`, `host:5000`).
    #[serde(default)]
    pub auth: BTreeMap<String, RegistryAuth>,
}

fn default_concurrency() -> usize {
    4
}
fn default_max_layer_bytes() -> ByteSize {
    ByteSize::gib(64)
}
fn default_max_layer_entries() -> u64 {
    2_000_000
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            insecure_registries: Vec::new(),
            extra_ca_file: None,
            concurrent_downloads: default_concurrency(),
            max_layer_bytes: default_max_layer_bytes(),
            max_layer_entries: default_max_layer_entries(),
            allow_devices: false,
            auth: BTreeMap::new(),
        }
    }
}

impl ImagesConfig {
    fn limits(&self) -> UnpackLimits {
        UnpackLimits {
            max_bytes: self.max_layer_bytes.bytes(),
            max_entries: self.max_layer_entries,
            allow_devices: self.allow_devices,
        }
    }
}

/// One image as `images` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    pub reference: String,
    pub id: String,
    pub digest: String,
    pub platform: String,
    pub layers: usize,
    pub size: u64,
    pub created: i64,
    /// What unpacking left out (see [`ImageRecord::warnings`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl From<&ImageRecord> for ImageSummary {
    fn from(r: &ImageRecord) -> Self {
        Self {
            reference: r.reference.clone(),
            id: r.config_digest.to_string(),
            digest: r.digest.to_string(),
            platform: r.platform.clone(),
            layers: r.layers.len(),
            size: r.size,
            created: r.created,
            warnings: r.warnings.clone(),
        }
    }
}

/// The image store of one agent.
#[derive(Debug)]
pub struct ImageStore {
    content: ContentStore,
    meta: Meta,
    config: ImagesConfig,
    /// Pulls and imports hold it shared; garbage collection exclusively, so
    /// it never removes content an unfinished pull is about to record.
    gc_lock: tokio::sync::RwLock<()>,
}

impl ImageStore {
    /// Opens the store under `root` (e.g. `/var/lib/skiff/images`).
    pub fn open(root: &Path, config: ImagesConfig) -> Result<Self, ImageError> {
        let content = ContentStore::open(root)?;
        let meta = Meta::open(&root.join("images.redb"))?;
        Ok(Self {
            content,
            meta,
            config,
            gc_lock: tokio::sync::RwLock::new(()),
        })
    }

    pub fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let mut v: Vec<ImageSummary> = self.meta.images()?.iter().map(Into::into).collect();
        v.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(v)
    }

    /// Finds an image by name (`busybox`, `host:5000/a/b:tag`, `…@sha256:…`)
    /// or by id (`sha256:…`, or a unique prefix of 12 or more hex digits).
    ///
    /// A short name is docker's first (`bb:latest` is
    /// `docker.io/library/bb:latest`), then podman's `localhost/bb:latest`,
    /// where images imported without a registry name are kept.
    pub fn get(&self, name: &str) -> Result<ImageRecord, ImageError> {
        let images = self.meta.images()?;
        if let Ok(r) = name.parse::<ImageRef>() {
            let candidates = [Some(canonical(&r)), r.on_localhost().map(|l| canonical(&l))];
            for want in candidates.iter().flatten() {
                if let Some(rec) = images.iter().find(|i| &i.reference == want) {
                    return Ok(rec.clone());
                }
            }
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<&ImageRecord> = images
                .iter()
                .filter(|i| {
                    i.config_digest.hex().starts_with(hex) || i.digest.hex().starts_with(hex)
                })
                .collect();
            if let [one] = hits.as_slice() {
                return Ok((*one).clone());
            }
        }
        Err(ImageError::NotFound(name.to_string()))
    }

    /// The layers of an image as overlayfs lower dirs, top layer first.
    pub fn lower_dirs(&self, image: &ImageRecord) -> Vec<PathBuf> {
        image
            .layers
            .iter()
            .rev()
            .map(|l| self.content.layer_path(&l.diff_id))
            .collect()
    }

    pub fn config(&self) -> &ImagesConfig {
        &self.config
    }
}

/// The name an image is stored under: fully qualified, tag or digest.
pub fn canonical(r: &ImageRef) -> String {
    r.canonical()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `os/arch` of this host, in OCI names.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    ("linux", arch)
}
