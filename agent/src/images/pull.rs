//! Pulling from OCI distribution registries with `oci-client`.
//!
//! The manifest (and, for a multi-platform index, the host platform's
//! manifest) and the config are fetched and verified first; then every
//! layer downloads concurrently, is verified against its digest while it is
//! written, and unpacks (on a blocking thread) as soon as it is complete, so
//! downloads and unpacking overlap. Blobs and layers already present are
//! neither downloaded nor unpacked again.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth as OciAuth;
use oci_spec::image::{ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};
use skiff_proto::ImageRef;
use tokio::sync::mpsc;

use super::digest::Digest;
use super::meta::{ImageRecord, LayerRecord, LayerUsage};
use super::unpack::UnpackStats;
use super::{ImageError, ImageStore, ImagesConfig, host_platform, now};

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Progress of a pull, streamed to the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// The manifest is known: the layers and their sizes.
    Resolved {
        digest: String,
        layers: Vec<(String, u64)>,
    },
    /// A layer was already in the store.
    LayerExists { layer: String },
    /// Bytes of a layer downloaded so far.
    Downloading {
        layer: String,
        current: u64,
        total: u64,
    },
    /// A layer is downloaded and verified.
    Downloaded { layer: String },
    /// A layer is unpacked.
    Unpacked { layer: String },
}

/// Whether `registry` (host[:port]) is reached over plain HTTP: loopback
/// addresses, and registries the operator listed as insecure.
pub fn is_plain_http(registry: &str, config: &ImagesConfig) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(registry, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback || config.insecure_registries.iter().any(|r| r == registry)
}

fn client_for(registry: &str, config: &ImagesConfig) -> Result<oci_client::Client, ImageError> {
    let mut extra_root_certificates = Vec::new();
    if let Some(path) = &config.extra_ca_file {
        let data = std::fs::read(path)
            .map_err(|e| ImageError::Registry(format!("extra_ca_file {}: {e}", path.display())))?;
        extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    let protocol = if is_plain_http(registry, config) {
        ClientProtocol::HttpsExcept(vec![registry.to_string()])
    } else {
        ClientProtocol::Https
    };
    // Not `Client::new`: it panics when TLS cannot be set up (a host
    // without CA certificates); that is an error to report.
    oci_client::Client::try_from(ClientConfig {
        protocol,
        extra_root_certificates,
        max_concurrent_download: config.concurrent_downloads.max(1),
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    })
    .map_err(|e| {
        ImageError::Registry(format!(
            "{registry}: cannot set up TLS ({}); install the host's CA certificates (ca-certificates) or set images.extra_ca_file",
            skiff_proto::error_chain(&e)
        ))
    })
}

fn auth_for(registry: &str, config: &ImagesConfig) -> OciAuth {
    match config.auth.get(registry) {
        Some(a) => match (&a.token, &a.username, &a.password) {
            (Some(t), _, _) => OciAuth::Bearer(t.clone()),
            (None, Some(u), Some(p)) => OciAuth::Basic(u.clone(), p.clone()),
            _ => OciAuth::Anonymous,
        },
        None => OciAuth::Anonymous,
    }
}

/// With its causes: "error sending request" alone does not say whether
/// the registry refused, timed out or could not be resolved.
fn registry_err(e: impl std::error::Error) -> ImageError {
    ImageError::Registry(skiff_proto::error_chain(&e))
}

fn bad_manifest(e: impl std::fmt::Display) -> ImageError {
    ImageError::BadManifest(e.to_string())
}

/// Layers of a manifest, with their diff ids from the config, and the
/// runtime config.
pub(super) fn describe(
    manifest: &ImageManifest,
    config: &[u8],
) -> Result<(Vec<LayerRecord>, super::ImageConfig, String), ImageError> {
    let cfg = oci_spec::image::ImageConfiguration::from_reader(config).map_err(bad_manifest)?;
    let diff_ids = cfg.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(ImageError::BadManifest(format!(
            "{} layers but {} diff ids in the config",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let layers = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(l, diff)| {
            Ok(LayerRecord {
                digest: l.digest().to_string().parse().map_err(bad_manifest)?,
                diff_id: diff.parse().map_err(bad_manifest)?,
                media_type: l.media_type().to_string(),
                size: l.size(),
            })
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    let runtime = cfg.config().as_ref();
    let image_config = super::ImageConfig {
        entrypoint: runtime
            .and_then(|c| c.entrypoint().clone())
            .unwrap_or_default(),
        cmd: runtime.and_then(|c| c.cmd().clone()).unwrap_or_default(),
        env: runtime.and_then(|c| c.env().clone()).unwrap_or_default(),
        working_dir: runtime
            .and_then(|c| c.working_dir().clone())
            .unwrap_or_default(),
        user: runtime.and_then(|c| c.user().clone()).unwrap_or_default(),
        exposed_ports: runtime
            .and_then(|c| c.exposed_ports().clone())
            .unwrap_or_default(),
        labels: runtime
            .and_then(|c| c.labels().clone())
            .unwrap_or_default()
            .into_iter()
            .collect(),
        stop_signal: runtime.and_then(|c| c.stop_signal().clone()),
    };
    Ok((
        layers,
        image_config,
        format!("{}/{}", cfg.os(), cfg.architecture()),
    ))
}

/// Picks the host platform's manifest from an index.
pub(super) fn choose_platform(index: &ImageIndex) -> Result<(Digest, String), ImageError> {
    let (os, arch) = host_platform();
    index
        .manifests()
        .iter()
        .find(|m| {
            m.platform()
                .as_ref()
                .is_some_and(|p| p.os().to_string() == os && p.architecture().to_string() == arch)
        })
        .map(|m| {
            m.digest()
                .to_string()
                .parse()
                .map(|d| (d, m.media_type().to_string()))
                .map_err(bad_manifest)
        })
        .unwrap_or_else(|| Err(ImageError::NoPlatform(format!("{os}/{arch}"))))
}

fn is_index(raw: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Probe>(raw).is_ok_and(|p| {
        p.manifests.is_some()
            || p.media_type.as_deref().is_some_and(|m| {
                m == "application/vnd.oci.image.index.v1+json"
                    || m == "application/vnd.docker.distribution.manifest.list.v2+json"
            })
    })
}

impl ImageStore {
    /// Pulls `reference` and records it; events go to `progress`.
    pub async fn pull(
        self: &Arc<Self>,
        reference: &ImageRef,
        progress: mpsc::UnboundedSender<PullEvent>,
    ) -> Result<ImageRecord, ImageError> {
        let started = std::time::Instant::now();
        let r = self.pull_inner(reference, progress).await;
        let m = crate::metrics::get();
        m.pulls.get_or_create(&crate::metrics::result(&r)).inc();
        m.pull_seconds.observe(started.elapsed().as_secs_f64());
        r
    }

    async fn pull_inner(
        self: &Arc<Self>,
        reference: &ImageRef,
        progress: mpsc::UnboundedSender<PullEvent>,
    ) -> Result<ImageRecord, ImageError> {
        let _guard = self.gc_lock.read().await;
        let oref: oci_client::Reference = reference.reference().clone();
        let registry = oref.resolve_registry().to_string();
        let client = client_for(&registry, &self.config)?;
        let auth = auth_for(oref.registry(), &self.config);

        // The manifest: verified against its digest, and against the
        // reference's digest when pulled by digest.
        let (raw, digest) = client
            .pull_manifest_raw(&oref, &auth, MANIFEST_TYPES)
            .await
            .map_err(registry_err)?;
        let mut digest = verify_manifest(&raw, &digest, reference.digest())?;
        let mut raw = raw.to_vec();
        let mut index_digest = None;
        if is_index(&raw) {
            let index = ImageIndex::from_reader(raw.as_slice()).map_err(bad_manifest)?;
            self.content.put_blob(&raw, &digest)?;
            let (chosen, _) = choose_platform(&index)?;
            let by_digest = oref.clone_with_digest(chosen.to_string());
            let (m, d) = client
                .pull_manifest_raw(&by_digest, &auth, MANIFEST_TYPES)
                .await
                .map_err(registry_err)?;
            index_digest = Some(digest);
            digest = verify_manifest(&m, &d, Some(&chosen.to_string()))?;
            raw = m.to_vec();
        }
        let manifest = ImageManifest::from_reader(raw.as_slice()).map_err(bad_manifest)?;
        self.content.put_blob(&raw, &digest)?;

        // The config, then the layers.
        let config_digest: Digest = manifest
            .config()
            .digest()
            .to_string()
            .parse()
            .map_err(bad_manifest)?;
        if !self.content.has_blob(&config_digest) {
            let desc = OciDescriptor {
                digest: config_digest.to_string(),
                media_type: manifest.config().media_type().to_string(),
                size: manifest.config().size() as i64,
                ..Default::default()
            };
            let mut buf = Vec::new();
            client
                .pull_blob(&oref, &desc, &mut buf)
                .await
                .map_err(registry_err)?;
            self.content.put_blob(&buf, &config_digest)?;
        }
        let config = self.content.read_blob(&config_digest)?;
        let (layers, image_config, platform) = describe(&manifest, &config)?;
        let _ = progress.send(PullEvent::Resolved {
            digest: digest.to_string(),
            layers: layers
                .iter()
                .map(|l| (l.digest.to_string(), l.size))
                .collect(),
        });

        let client = Arc::new(client);
        let oref = Arc::new(oref);
        futures::stream::iter(layers.iter().cloned())
            .map(|layer| {
                let store = Arc::clone(self);
                let client = Arc::clone(&client);
                let oref = Arc::clone(&oref);
                let progress = progress.clone();
                async move { store.fetch_layer(&client, &oref, layer, progress).await }
            })
            .buffer_unordered(self.config.concurrent_downloads.max(1))
            .try_collect::<Vec<()>>()
            .await?;

        let warnings = self.layer_warnings(&layers)?;
        let record = ImageRecord {
            reference: reference.canonical(),
            size: raw.len() as u64
                + config.len() as u64
                + layers.iter().map(|l| l.size).sum::<u64>(),
            digest,
            index_digest,
            config_digest,
            layers,
            config: image_config,
            platform,
            created: now(),
            warnings,
        };
        self.meta.put_image(&record)?;
        tracing::info!(image = %record.reference, digest = %record.digest, "pulled");
        Ok(record)
    }

    async fn fetch_layer(
        self: Arc<Self>,
        client: &oci_client::Client,
        oref: &oci_client::Reference,
        layer: LayerRecord,
        progress: mpsc::UnboundedSender<PullEvent>,
    ) -> Result<(), ImageError> {
        let name = layer.digest.to_string();
        if self.content.has_layer(&layer.diff_id) || self.content.has_blob(&layer.digest) {
            let _ = progress.send(PullEvent::LayerExists {
                layer: name.clone(),
            });
        } else {
            let desc = OciDescriptor {
                digest: name.clone(),
                media_type: layer.media_type.clone(),
                size: layer.size as i64,
                ..Default::default()
            };
            let mut stream = client
                .pull_blob_stream(oref, &desc)
                .await
                .map_err(registry_err)?;
            let mut writer = self.content.begin_blob()?;
            let mut last = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(registry_err)?;
                writer.write(&chunk)?;
                if writer.bytes() - last >= 256 * 1024 || writer.bytes() == layer.size {
                    last = writer.bytes();
                    let _ = progress.send(PullEvent::Downloading {
                        layer: name.clone(),
                        current: last,
                        total: layer.size,
                    });
                }
            }
            let store = Arc::clone(&self);
            let digest = layer.digest.clone();
            tokio::task::spawn_blocking(move || store.content.commit_blob(writer, &digest))
                .await
                .map_err(|e| ImageError::Io(std::io::Error::other(e)))??;
            let _ = progress.send(PullEvent::Downloaded {
                layer: name.clone(),
            });
        }
        let store = Arc::clone(&self);
        let record = layer.clone();
        let unpacked = tokio::task::spawn_blocking(move || store.unpack_layer(&record))
            .await
            .map_err(|e| ImageError::Io(std::io::Error::other(e)))??;
        if unpacked {
            let _ = progress.send(PullEvent::Unpacked { layer: name });
        }
        Ok(())
    }

    /// Unpacks one layer if needed (blocking); true when it did.
    pub(super) fn unpack_layer(&self, layer: &LayerRecord) -> Result<bool, ImageError> {
        let limits = self.config.limits();
        match self
            .content
            .unpack(&layer.digest, &layer.media_type, &layer.diff_id, &limits)?
        {
            Some(stats) => {
                let warning = skipped_devices_warning(&stats);
                if let Some(w) = &warning {
                    tracing::warn!(layer = %layer.digest, "{w}");
                }
                self.meta.put_layer(
                    &layer.diff_id,
                    LayerUsage {
                        bytes: stats.bytes,
                        entries: stats.entries,
                        warning,
                    },
                )?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The warnings an image's layers left when they were unpacked, each
    /// naming its layer.
    pub(super) fn layer_warnings(&self, layers: &[LayerRecord]) -> Result<Vec<String>, ImageError> {
        let mut out = Vec::new();
        for layer in layers {
            if let Some(w) = self.meta.layer(&layer.diff_id)?.and_then(|u| u.warning) {
                out.push(format!("layer {}: {w}", layer.digest));
            }
        }
        Ok(out)
    }
}

/// `8 device nodes not created (dev/console, dev/full, …)`, or nothing.
fn skipped_devices_warning(stats: &UnpackStats) -> Option<String> {
    if stats.devices_skipped == 0 {
        return None;
    }
    let mut names = stats.devices_skipped_names.join(", ");
    if stats.devices_skipped > stats.devices_skipped_names.len() as u64 {
        names.push_str(", …");
    }
    let n = stats.devices_skipped;
    let nodes = if n == 1 {
        "device node"
    } else {
        "device nodes"
    };
    Some(format!(
        "{n} {nodes} not created ({names}); containers get their own /dev (images.allow_devices creates them)"
    ))
}

fn verify_manifest(raw: &[u8], claimed: &str, wanted: Option<&str>) -> Result<Digest, ImageError> {
    let actual = Digest::of(raw);
    for expected in [Some(claimed), wanted].into_iter().flatten() {
        if !expected.is_empty() && expected != actual.to_string() {
            return Err(ImageError::DigestMismatch {
                what: format!("manifest {expected}"),
                actual: actual.to_string(),
            });
        }
    }
    Ok(actual)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_listed_registries() {
        let mut cfg = ImagesConfig::default();
        assert!(is_plain_http("127.0.0.1:5000", &cfg));
        assert!(is_plain_http("localhost:5000", &cfg));
        assert!(is_plain_http("[::1]:5000", &cfg));
        assert!(!is_plain_http("registry.example.com", &cfg));
        assert!(!is_plain_http("10.0.0.1:5000", &cfg));
        cfg.insecure_registries.push("10.0.0.1:5000".into());
        assert!(is_plain_http("10.0.0.1:5000", &cfg));
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        let a = super::super::RegistryAuth {
            username: Some("u".into()),
            password: Some("hunter2".into()),
            token: Some("tok3n".into()),
        };
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok3n"),
            "{shown}"
        );
    }
}
