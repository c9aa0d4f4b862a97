//! Importing images without a registry: an OCI image layout directory, an
//! `oci-archive` (a tarred layout) and a `docker-archive` (what `docker
//! save` and `podman save` write). Every blob is verified on the way in.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{ImageIndex, ImageManifest};
use serde::Deserialize;
use skiff_proto::ImageRef;

use super::digest::{Digest, HashingReader};
use super::meta::ImageRecord;
use super::pull::{choose_platform, describe};
use super::store::Scratch;
use super::unpack::Compression;
use super::{ImageError, ImageStore, now};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One image in a docker-archive's `manifest.json` (`docker save`): paths
/// in the archive of its config and layers, and the names it is loaded as.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerArchiveEntry {
    pub config: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    pub layers: Vec<String>,
}

fn import_err(path: &Path, reason: impl std::fmt::Display) -> ImageError {
    ImageError::Import {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The kind of thing being imported.
enum Source {
    Layout(PathBuf),
    OciArchive,
    DockerArchive,
}

/// An archive unpacked into a scratch directory: regular files only, and
/// the archive's symlinks as a name map (never created on disk).
struct Extracted {
    _scratch: Scratch,
    root: PathBuf,
    links: BTreeMap<PathBuf, PathBuf>,
}

impl Extracted {
    /// The on-disk path of `name` inside the archive, following the
    /// archive's own symlinks (a few hops at most, never outside it).
    fn path(&self, name: &str) -> Option<PathBuf> {
        let mut rel = normalize(Path::new(name))?;
        for _ in 0..8 {
            match self.links.get(&rel) {
                Some(target) => rel = target.clone(),
                None => {
                    let p = self.root.join(&rel);
                    return p.is_file().then_some(p);
                }
            }
        }
        None
    }
}

/// A relative path with no `..`, no root and no empty name, or None.
fn normalize(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn extract_archive(store: &ImageStore, path: &Path) -> Result<Extracted, ImageError> {
    let scratch = store.content.scratch()?;
    let root = scratch.path().to_path_buf();
    let mut links = BTreeMap::new();
    let file = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries().map_err(|e| import_err(path, e))? {
        let mut entry = entry.map_err(|e| import_err(path, e))?;
        let raw = entry.path().map_err(|e| import_err(path, e))?.into_owned();
        let Some(rel) = normalize(&raw) else {
            return Err(import_err(
                path,
                format!("entry {raw:?} escapes the archive"),
            ));
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let dest = root.join(&rel);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut out = File::create(&dest)?;
                io::copy(&mut entry, &mut out)?;
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| import_err(path, e))?
                    .ok_or_else(|| import_err(path, format!("link {raw:?} has no target")))?
                    .into_owned();
                // Symlinks are relative to their directory; hard links to the root.
                let joined = if entry.header().entry_type() == tar::EntryType::Symlink {
                    rel.parent().unwrap_or(Path::new("")).join(&target)
                } else {
                    target.clone()
                };
                let resolved = resolve_dots(&joined).ok_or_else(|| {
                    import_err(
                        path,
                        format!("link {raw:?} -> {target:?} escapes the archive"),
                    )
                })?;
                links.insert(rel, resolved);
            }
            _ => {}
        }
    }
    Ok(Extracted {
        _scratch: scratch,
        root,
        links,
    })
}

/// Resolves `a/../b` textually, refusing to climb above the root.
fn resolve_dots(p: &Path) -> Option<PathBuf> {
    let mut out: Vec<&std::ffi::OsStr> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            _ => return None,
        }
    }
    (!out.is_empty()).then(|| out.iter().collect())
}

fn archive_kind(path: &Path) -> Result<Source, ImageError> {
    if path.is_dir() {
        if path.join("oci-layout").is_file() {
            return Ok(Source::Layout(path.to_path_buf()));
        }
        return Err(import_err(
            path,
            "a directory without an oci-layout file is not an OCI image layout",
        ));
    }
    let mut archive = tar::Archive::new(BufReader::new(File::open(path)?));
    let mut kind = None;
    for entry in archive
        .entries()
        .map_err(|e| import_err(path, format!("not a tar archive: {e}")))?
    {
        let entry = entry.map_err(|e| import_err(path, format!("not a tar archive: {e}")))?;
        let name = entry.path().map_err(|e| import_err(path, e))?;
        match normalize(&name).as_deref().and_then(Path::to_str) {
            Some("oci-layout") => kind = Some(Source::OciArchive),
            Some("manifest.json") if kind.is_none() => kind = Some(Source::DockerArchive),
            _ => {}
        }
    }
    kind.ok_or_else(|| {
        import_err(
            path,
            "neither an oci-archive (no oci-layout) nor a docker-archive (no manifest.json)",
        )
    })
}

/// The name of an image in an OCI layout, from its
/// `org.opencontainers.image.ref.name` annotation, as podman and docker
/// give it:
///
/// * a reference (`bb:latest`, `registry:5000/x:1`, anything with a `:`,
///   `/` or `@`) names the image by that reference, short names the way
///   docker completes them (`bb:latest` → `docker.io/library/bb:latest`);
/// * a bare tag (`latest`, `v1`, what `umoci` and `skopeo oci:DIR:TAG`
///   write) names it `localhost/<archive stem>:<tag>`;
/// * no annotation: `localhost/<archive stem>:<first 12 hex digits of the
///   image id>`.
fn layout_name(origin: &Path, annotation: Option<&str>, id: &Digest) -> Result<String, ImageError> {
    match annotation {
        Some(a) if a.contains([':', '/', '@']) => a
            .parse::<ImageRef>()
            .map(|r| r.canonical())
            .map_err(|e| import_err(origin, format!("annotation {REF_NAME}: {e}"))),
        Some(tag) if skiff_proto::is_tag(tag) => Ok(fallback_name(origin, tag)),
        Some(other) => Err(import_err(
            origin,
            format!("annotation {REF_NAME} {other:?} is neither an image reference nor a tag"),
        )),
        None => Ok(fallback_name(origin, &id.hex()[..12])),
    }
}

/// `localhost/<archive stem>:<tag>`: the name of an image whose archive
/// gives only a tag, or nothing.
fn fallback_name(path: &Path, tag: &str) -> String {
    let stem: String = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("image")
        .split('.')
        .next()
        .unwrap_or("image")
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let stem = stem.trim_matches('-');
    format!(
        "localhost/{}:{tag}",
        if stem.is_empty() { "image" } else { stem }
    )
}

impl ImageStore {
    /// Imports every image in `path`. `name` renames a single image;
    /// otherwise names come from the archive.
    pub async fn import(
        self: &std::sync::Arc<Self>,
        path: &Path,
        name: Option<&ImageRef>,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let _guard = self.gc_lock.read().await;
        let store = std::sync::Arc::clone(self);
        let path = path.to_path_buf();
        let name = name.cloned();
        tokio::task::spawn_blocking(move || store.import_blocking(&path, name.as_ref()))
            .await
            .map_err(|e| ImageError::Io(io::Error::other(e)))?
    }

    fn import_blocking(
        &self,
        path: &Path,
        name: Option<&ImageRef>,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        match archive_kind(path)? {
            Source::Layout(dir) => self.import_layout(path, &dir, name),
            Source::OciArchive => {
                let x = extract_archive(self, path)?;
                self.import_layout(path, &x.root, name)
            }
            Source::DockerArchive => {
                let x = extract_archive(self, path)?;
                self.import_docker(path, &x, name)
            }
        }
    }

    fn import_layout(
        &self,
        origin: &Path,
        dir: &Path,
        name: Option<&ImageRef>,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let blob = |d: &Digest| dir.join("blobs/sha256").join(d.hex());
        let index = ImageIndex::from_file(dir.join("index.json"))
            .map_err(|e| import_err(origin, format!("index.json: {e}")))?;
        let entries = index.manifests();
        if entries.is_empty() {
            return Err(import_err(origin, "index.json lists no image"));
        }
        if name.is_some() && entries.len() > 1 {
            return Err(import_err(
                origin,
                format!(
                    "--name needs a single image, the layout has {}",
                    entries.len()
                ),
            ));
        }
        let mut out = Vec::new();
        for entry in entries {
            let mut digest: Digest = entry
                .digest()
                .to_string()
                .parse()
                .map_err(|e| import_err(origin, e))?;
            let mut index_digest = None;
            let mut media = entry.media_type().to_string();
            if media.contains("index") || media.contains("manifest.list") {
                self.content.ingest_file(&blob(&digest), &digest)?;
                let nested =
                    ImageIndex::from_file(blob(&digest)).map_err(|e| import_err(origin, e))?;
                let (chosen, m) = choose_platform(&nested)?;
                index_digest = Some(digest);
                digest = chosen;
                media = m;
            }
            let _ = media;
            self.content.ingest_file(&blob(&digest), &digest)?;
            let raw = self.content.read_blob(&digest)?;
            let manifest =
                ImageManifest::from_reader(raw.as_slice()).map_err(|e| import_err(origin, e))?;
            let config: Digest = manifest
                .config()
                .digest()
                .to_string()
                .parse()
                .map_err(|e| import_err(origin, e))?;
            self.content.ingest_file(&blob(&config), &config)?;
            for l in manifest.layers() {
                let d: Digest = l
                    .digest()
                    .to_string()
                    .parse()
                    .map_err(|e| import_err(origin, e))?;
                self.content.ingest_file(&blob(&d), &d)?;
            }
            let annotation = entry.annotations().as_ref().and_then(|a| a.get(REF_NAME));
            let reference = match name {
                Some(n) => n.canonical(),
                None => layout_name(origin, annotation.map(String::as_str), &config)?,
            };
            out.push(self.record_image(
                reference,
                digest,
                index_digest,
                &manifest,
                raw.len() as u64,
            )?);
        }
        Ok(out)
    }

    fn import_docker(
        &self,
        origin: &Path,
        x: &Extracted,
        name: Option<&ImageRef>,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let manifest_path = x
            .path("manifest.json")
            .ok_or_else(|| import_err(origin, "no manifest.json"))?;
        let entries: Vec<DockerArchiveEntry> =
            serde_json::from_slice(&std::fs::read(manifest_path)?)
                .map_err(|e| import_err(origin, format!("manifest.json: {e}")))?;
        if name.is_some() && entries.len() != 1 {
            return Err(import_err(
                origin,
                format!(
                    "--name needs a single image, the archive has {}",
                    entries.len()
                ),
            ));
        }
        let mut out = Vec::new();
        for e in entries {
            let config_path = x
                .path(&e.config)
                .ok_or_else(|| import_err(origin, format!("missing {}", e.config)))?;
            let config_bytes = std::fs::read(&config_path)?;
            let config_digest = Digest::of(&config_bytes);
            self.content.put_blob(&config_bytes, &config_digest)?;
            let mut layers = Vec::new();
            for l in &e.layers {
                let p = x
                    .path(l)
                    .ok_or_else(|| import_err(origin, format!("missing layer {l}")))?;
                let mut first = [0u8; 4];
                let n = File::open(&p)?.read(&mut first)?;
                let media = match Compression::sniff(&first[..n]) {
                    Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                    Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
                };
                let (digest, size) = HashingReader::new(File::open(&p)?).finish()?;
                self.content.ingest_file(&p, &digest)?;
                layers.push(serde_json::json!({"mediaType": media, "digest": digest.to_string(), "size": size}));
            }
            let manifest_json = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest.to_string(),
                    "size": config_bytes.len(),
                },
                "layers": layers,
            });
            let raw = serde_json::to_vec(&manifest_json).map_err(|e| import_err(origin, e))?;
            let digest = Digest::of(&raw);
            self.content.put_blob(&raw, &digest)?;
            let manifest =
                ImageManifest::from_reader(raw.as_slice()).map_err(|e| import_err(origin, e))?;
            // `docker load`: the image gets every name in RepoTags.
            let references: Vec<String> = match (name, e.repo_tags.as_deref()) {
                (Some(n), _) => vec![n.canonical()],
                (None, Some(tags)) if !tags.is_empty() => tags
                    .iter()
                    .map(|t| {
                        t.parse::<ImageRef>()
                            .map(|r| r.canonical())
                            .map_err(|e| import_err(origin, format!("RepoTags: {e}")))
                    })
                    .collect::<Result<_, _>>()?,
                _ => vec![fallback_name(origin, &config_digest.hex()[..12])],
            };
            for reference in references {
                out.push(self.record_image(
                    reference,
                    digest.clone(),
                    None,
                    &manifest,
                    raw.len() as u64,
                )?);
            }
        }
        Ok(out)
    }

    /// Unpacks the layers of a manifest whose blobs are all in the store,
    /// and records the image under `reference` (blocking).
    fn record_image(
        &self,
        reference: String,
        digest: Digest,
        index_digest: Option<Digest>,
        manifest: &ImageManifest,
        manifest_size: u64,
    ) -> Result<ImageRecord, ImageError> {
        let config_digest: Digest = manifest
            .config()
            .digest()
            .to_string()
            .parse()
            .map_err(|e| ImageError::BadManifest(format!("{e}")))?;
        let config = self.content.read_blob(&config_digest)?;
        let (layers, image_config, platform) = describe(manifest, &config)?;
        for layer in &layers {
            self.unpack_layer(layer)?;
        }
        let warnings = self.layer_warnings(&layers)?;
        let record = ImageRecord {
            reference,
            size: manifest_size + config.len() as u64 + layers.iter().map(|l| l.size).sum::<u64>(),
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
        tracing::info!(image = %record.reference, digest = %record.digest, "imported");
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_never_escape() {
        assert_eq!(normalize(Path::new("./a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(normalize(Path::new("../a")), None);
        assert_eq!(normalize(Path::new("/etc/passwd")), None);
        assert_eq!(
            resolve_dots(Path::new("a/../b/c")),
            Some(PathBuf::from("b/c"))
        );
        assert_eq!(resolve_dots(Path::new("a/../../etc")), None);
        assert_eq!(resolve_dots(Path::new("/etc")), None);
    }

    #[test]
    fn fallback_names_are_valid_references() {
        let n = fallback_name(Path::new("/tmp/My Image.oci.tar"), "v1");
        assert_eq!(n, "localhost/my-image:v1");
        assert!(n.parse::<ImageRef>().is_ok());
    }

    #[test]
    fn layout_names_as_podman_and_docker_give_them() {
        let id: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let archive = Path::new("/tmp/bb.tar");
        let name = |a: Option<&str>| layout_name(archive, a, &id);
        // skopeo copy ... oci-archive:bb.tar:bb:latest
        assert_eq!(
            name(Some("bb:latest")).unwrap(),
            "docker.io/library/bb:latest"
        );
        assert_eq!(
            name(Some("registry:5000/x:1")).unwrap(),
            "registry:5000/x:1"
        );
        assert_eq!(
            name(Some("team/tool")).unwrap(),
            "docker.io/team/tool:latest"
        );
        // umoci, skopeo oci:DIR:TAG: only a tag.
        assert_eq!(name(Some("latest")).unwrap(), "localhost/bb:latest");
        assert_eq!(name(None).unwrap(), "localhost/bb:abababababab");
        for bad in ["BB:latest", "bb::x", "-x", "a b"] {
            let e = name(Some(bad)).unwrap_err().to_string();
            assert!(e.starts_with("/tmp/bb.tar: annotation"), "{bad}: {e}");
        }
        // Every name is one `run` accepts.
        for a in [Some("bb:latest"), Some("latest"), None] {
            assert!(name(a).unwrap().parse::<ImageRef>().is_ok());
        }
    }
}
