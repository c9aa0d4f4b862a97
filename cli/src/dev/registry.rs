//! The dev fleet's image registry: the read side of the OCI distribution
//! API (`/v2/`, manifests and blobs by tag or digest, `GET` and `HEAD`),
//! over plain HTTP on the VMs' bridge, serving the images `skiff dev`
//! holds (the demo image, `--image` archives). Every agent of the fleet
//! pulls from it as real nodes pull from a registry. Nothing can be
//! pushed: there is no write route.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::Digest as _;
use skiff_agent::images::unpack::Compression;

/// Why an image cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: {reason}")]
    Image { path: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn image_err(path: &Path, reason: impl std::fmt::Display) -> RegistryError {
    RegistryError::Image {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A blob the registry holds: its digest, size, and the layer media type
/// its first bytes show (for a docker-archive's layers, which have none).
#[derive(Debug, Clone)]
struct Blob {
    digest: String,
    size: u64,
    layer_type: &'static str,
}

/// A manifest the registry serves under a name and tag.
#[derive(Debug, Clone)]
struct Tagged {
    digest: String,
    media_type: String,
}

/// The images, by `repository:tag`; blobs in `dir/blobs/sha256/`.
#[derive(Debug)]
pub struct Images {
    dir: PathBuf,
    tags: BTreeMap<(String, String), Tagged>,
}

impl Images {
    /// An empty store in `dir`.
    pub fn new(dir: &Path) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(|source| RegistryError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tags: BTreeMap::new(),
        })
    }

    /// Adds every image of an oci-archive (a tar of an OCI layout) or an
    /// OCI layout directory, each under `repository:tag` from its
    /// `ref.name` (`name:tag`, or a bare tag taken with `default_repo`), or
    /// of a docker-archive (see [`Images::add_docker`]). Every blob is
    /// checked against its digest. Returns the names added.
    pub fn add(&mut self, source: &Path, default_repo: &str) -> Result<Vec<String>, RegistryError> {
        let index: serde_json::Value = if source.is_dir() {
            let blobs = source.join("blobs/sha256");
            for e in std::fs::read_dir(&blobs).map_err(|e| image_err(source, e))? {
                let e = e.map_err(|e| image_err(source, e))?;
                let data = std::fs::read(e.path()).map_err(|e| image_err(source, e))?;
                self.put_blob(source, &e.file_name().to_string_lossy(), &data)?;
            }
            serde_json::from_slice(
                &std::fs::read(source.join("index.json")).map_err(|e| image_err(source, e))?,
            )
            .map_err(|e| image_err(source, format!("index.json: {e}")))?
        } else {
            let file = std::fs::File::open(source).map_err(|e| image_err(source, e))?;
            let mut archive = tar::Archive::new(std::io::BufReader::new(file));
            let mut index = None;
            let mut docker_manifest = None;
            let mut files = BTreeMap::new();
            for entry in archive.entries().map_err(|e| image_err(source, e))? {
                let mut entry = entry.map_err(|e| image_err(source, e))?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let name = entry
                    .path()
                    .map_err(|e| image_err(source, e))?
                    .to_string_lossy()
                    .into_owned();
                let name = name.trim_start_matches("./").to_string();
                let mut data = Vec::new();
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| image_err(source, e))?;
                match name.as_str() {
                    "index.json" => {
                        index = Some(
                            serde_json::from_slice(&data)
                                .map_err(|e| image_err(source, format!("index.json: {e}")))?,
                        );
                    }
                    "manifest.json" => docker_manifest = Some(data),
                    "oci-layout" | "repositories" => {}
                    _ => {
                        let blob = match name.strip_prefix("blobs/sha256/") {
                            Some(hex) => self.put_blob(source, hex, &data)?,
                            None => self.put_blob(
                                source,
                                &hex::encode(sha2::Sha256::digest(&data)),
                                &data,
                            )?,
                        };
                        files.insert(name, blob);
                    }
                }
            }
            match (index, docker_manifest) {
                (Some(index), _) => index,
                (None, Some(manifest)) => {
                    return self.add_docker(source, &manifest, &files, default_repo);
                }
                (None, None) => {
                    return Err(image_err(
                        source,
                        "neither an oci-archive (no index.json) nor a docker-archive (no manifest.json)",
                    ));
                }
            }
        };
        let mut added = Vec::new();
        for m in index["manifests"].as_array().into_iter().flatten() {
            let digest = m["digest"].as_str().unwrap_or_default().to_string();
            let media_type = m["mediaType"]
                .as_str()
                .unwrap_or("application/vnd.oci.image.manifest.v1+json")
                .to_string();
            let refname = m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap_or("latest");
            let (repo, tag) = match refname.rsplit_once(':') {
                Some((r, t)) if !r.is_empty() => (r.to_string(), t.to_string()),
                _ => (default_repo.to_string(), refname.to_string()),
            };
            if !self.blob_path(&digest).is_some_and(|p| p.is_file()) {
                return Err(image_err(
                    source,
                    format!("manifest {digest} is not in the archive"),
                ));
            }
            added.push(format!("{repo}:{tag}"));
            self.tags.insert((repo, tag), Tagged { digest, media_type });
        }
        if added.is_empty() {
            return Err(image_err(source, "index.json lists no image"));
        }
        Ok(added)
    }

    /// Stores `data` as the blob `sha256:hex`, checked against its digest.
    fn put_blob(&self, source: &Path, hex: &str, data: &[u8]) -> Result<Blob, RegistryError> {
        let actual = hex::encode(sha2::Sha256::digest(data));
        if actual != hex {
            return Err(image_err(
                source,
                format!("blob sha256:{hex} has digest sha256:{actual}"),
            ));
        }
        let path = self.dir.join("blobs/sha256").join(hex);
        std::fs::write(&path, data).map_err(|source| RegistryError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Blob {
            digest: format!("sha256:{hex}"),
            size: data.len() as u64,
            layer_type: Compression::sniff(data).oci_layer_media_type(),
        })
    }

    /// Adds the images of a docker-archive (`docker save`, `skopeo copy
    /// docker-archive:`), whose blobs `files` holds by their archive path:
    /// each gets an OCI manifest made for it, and is served under every
    /// name in its `RepoTags` (as `docker load` names it), or under
    /// `default_repo:latest` when it has none.
    fn add_docker(
        &mut self,
        source: &Path,
        manifest: &[u8],
        files: &BTreeMap<String, Blob>,
        default_repo: &str,
    ) -> Result<Vec<String>, RegistryError> {
        let entries: Vec<skiff_agent::images::DockerArchiveEntry> =
            serde_json::from_slice(manifest)
                .map_err(|e| image_err(source, format!("manifest.json: {e}")))?;
        let blob = |name: &str| {
            files.get(name.trim_start_matches("./")).ok_or_else(|| {
                image_err(
                    source,
                    format!("manifest.json names {name}, which is not in the archive"),
                )
            })
        };
        let mut added = Vec::new();
        for e in entries {
            let config = blob(&e.config)?;
            let layers = e
                .layers
                .iter()
                .map(|l| {
                    blob(l).map(|b| {
                        serde_json::json!({"mediaType": b.layer_type, "digest": b.digest, "size": b.size})
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config.digest,
                    "size": config.size,
                },
                "layers": layers,
            });
            let raw = serde_json::to_vec(&manifest).map_err(|e| image_err(source, e))?;
            let digest = self
                .put_blob(source, &hex::encode(sha2::Sha256::digest(&raw)), &raw)?
                .digest;
            let names = e
                .repo_tags
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| vec![format!("{default_repo}:latest")]);
            for name in names {
                let (repo, tag) = match name.rsplit_once(':') {
                    Some((r, t)) if !r.is_empty() && !t.contains('/') => {
                        (r.to_string(), t.to_string())
                    }
                    _ => (name.clone(), "latest".to_string()),
                };
                added.push(format!("{repo}:{tag}"));
                self.tags.insert(
                    (repo, tag),
                    Tagged {
                        digest: digest.clone(),
                        media_type: OCI_MANIFEST.to_string(),
                    },
                );
            }
        }
        if added.is_empty() {
            return Err(image_err(source, "manifest.json lists no image"));
        }
        Ok(added)
    }

    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.dir.join("blobs/sha256").join(hex))
    }
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"errors": [{"code": "MANIFEST_UNKNOWN", "message": what}]})),
    )
        .into_response()
}

async fn v2() -> Response {
    ([("Docker-Distribution-API-Version", "registry/2.0")], "{}").into_response()
}

/// `/v2/<name>/manifests/<reference>` and `/v2/<name>/blobs/<digest>`.
async fn object(
    State(images): State<Arc<Images>>,
    method: Method,
    UrlPath(rest): UrlPath<String>,
    _headers: HeaderMap,
) -> Response {
    let (name, kind, reference) = match rest.rsplit_once("/manifests/") {
        Some((n, r)) => (n, "manifest", r),
        None => match rest.rsplit_once("/blobs/") {
            Some((n, r)) => (n, "blob", r),
            None => return not_found("no such route"),
        },
    };
    let (digest, media_type) = if kind == "manifest" && !reference.starts_with("sha256:") {
        match images.tags.get(&(name.to_string(), reference.to_string())) {
            Some(t) => (t.digest.clone(), t.media_type.clone()),
            None => return not_found(&format!("no image {name}:{reference}")),
        }
    } else if kind == "manifest" {
        let media = images.tags.values().find(|t| t.digest == reference).map_or(
            "application/vnd.oci.image.manifest.v1+json".to_string(),
            |t| t.media_type.clone(),
        );
        (reference.to_string(), media)
    } else {
        (
            reference.to_string(),
            "application/octet-stream".to_string(),
        )
    };
    let Some(path) = images.blob_path(&digest) else {
        return not_found(&format!("bad digest {digest}"));
    };
    let Ok(data) = std::fs::read(&path) else {
        return not_found(&format!("no {kind} {digest}"));
    };
    let headers = [
        (header::CONTENT_TYPE, media_type),
        (header::CONTENT_LENGTH, data.len().to_string()),
        (
            header::HeaderName::from_static("docker-content-digest"),
            digest,
        ),
    ];
    if method == Method::HEAD {
        return (headers, Body::empty()).into_response();
    }
    (headers, data).into_response()
}

/// The registry's router.
pub fn router(images: Arc<Images>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route("/v2/", get(v2))
        .route("/v2/{*rest}", get(object))
        .with_state(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_image_is_served_by_its_name_and_blobs_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("demo.oci.tar");
        std::fs::write(&archive, crate::dev::demo::ARCHIVE).unwrap();
        let mut images = Images::new(&dir.path().join("store")).unwrap();
        assert_eq!(images.add(&archive, "dev/demo").unwrap(), ["skiff/demo:1"]);
        let t = &images.tags[&("skiff/demo".to_string(), "1".to_string())];
        assert!(images.blob_path(&t.digest).unwrap().is_file());
        // A layout whose blob does not match its name is refused, named.
        let bad = dir.path().join("bad");
        std::fs::create_dir_all(bad.join("blobs/sha256")).unwrap();
        std::fs::write(bad.join("blobs/sha256").join("0".repeat(64)), b"x").unwrap();
        std::fs::write(bad.join("index.json"), b"{\"manifests\":[]}").unwrap();
        let e = images.add(&bad, "dev/bad").unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: blob sha256:000", bad.display())),
            "{e}"
        );
    }

    /// A tar of `(name, bytes)` files.
    fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn docker_archives_are_served_under_their_repo_tags() {
        let dir = tempfile::tempdir().unwrap();
        let layer = tar_of(&[("hello", b"hi\n".to_vec())]);
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        let manifest = serde_json::json!([{
            "Config": "cfg.json",
            "RepoTags": ["hello:1.0", "localhost:5000/team/hello:v2"],
            "Layers": ["abc/layer.tar"],
        }]);
        let archive = dir.path().join("hello.tar");
        std::fs::write(
            &archive,
            tar_of(&[
                ("cfg.json", config.clone()),
                ("abc/layer.tar", layer.clone()),
                ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
            ]),
        )
        .unwrap();
        let mut images = Images::new(&dir.path().join("store")).unwrap();
        assert_eq!(
            images.add(&archive, "dev/hello").unwrap(),
            ["hello:1.0", "localhost:5000/team/hello:v2"]
        );
        let t = &images.tags[&("hello".to_string(), "1.0".to_string())];
        let served: serde_json::Value =
            serde_json::from_slice(&std::fs::read(images.blob_path(&t.digest).unwrap()).unwrap())
                .unwrap();
        let sha = |d: &[u8]| format!("sha256:{}", hex::encode(sha2::Sha256::digest(d)));
        assert_eq!(served["config"]["digest"], sha(&config));
        assert_eq!(served["layers"][0]["digest"], sha(&layer));
        assert_eq!(
            served["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar"
        );
        assert_eq!(served["layers"][0]["size"], layer.len());
        for digest in [sha(&config), sha(&layer)] {
            assert!(images.blob_path(&digest).unwrap().is_file(), "{digest}");
        }
        // A layer the manifest names but the archive lacks is named.
        let broken = dir.path().join("broken.tar");
        std::fs::write(
            &broken,
            tar_of(&[
                ("cfg.json", config),
                ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
            ]),
        )
        .unwrap();
        let e = images.add(&broken, "dev/broken").unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: manifest.json names abc/layer.tar, which is not in the archive",
                broken.display()
            )
        );
        // Neither kind of archive: said so.
        let other = dir.path().join("other.tar");
        std::fs::write(&other, tar_of(&[("x", b"y".to_vec())])).unwrap();
        let e = images.add(&other, "dev/other").unwrap_err().to_string();
        assert!(e.contains("neither an oci-archive"), "{e}");
    }
}
