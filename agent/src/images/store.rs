//! The on-disk content store.
//!
//! ```text
//! ROOT/blobs/sha256/<hex>   verified blobs (manifests, configs, layers), immutable
//! ROOT/layers/<hex>/        unpacked layers by diff id: overlayfs lower dirs
//! ROOT/tmp/                 downloads and unpacks in progress; wiped at open
//! ```
//!
//! Nothing appears under `blobs/` or `layers/` until it is complete and
//! verified: blobs are written to `tmp/`, hashed while written, fsynced and
//! renamed; layers are unpacked into `tmp/` and renamed. A crash at any
//! point leaves only `tmp/` debris, removed at the next open.

use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use super::ImageError;
use super::digest::{Digest, HashingReader};
use super::unpack::{Compression, UnpackLimits, UnpackStats, unpack_layer};

/// The content store's directories.
#[derive(Debug)]
pub struct ContentStore {
    root: PathBuf,
    seq: AtomicU64,
}

/// A blob being written; becomes visible only through
/// [`ContentStore::commit_blob`]. Dropped uncommitted (a failed download,
/// a full disk), it removes what it wrote at once rather than leaving the
/// space taken until the next open.
#[derive(Debug)]
pub struct BlobWriter {
    file: io::BufWriter<File>,
    path: PathBuf,
    hasher: Sha256,
    bytes: u64,
    committed: bool,
}

impl BlobWriter {
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        self.file.write_all(data)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl ContentStore {
    /// Opens (creating) the store at `root` and removes unfinished work.
    /// `root` is made `0700`: unpacked layers hold whatever the image put in
    /// them (set-id binaries, device nodes when allowed), which no user of
    /// the host may reach.
    pub fn open(root: &Path) -> io::Result<Self> {
        for d in ["blobs/sha256", "layers", "tmp"] {
            fs::create_dir_all(root.join(d))?;
        }
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))?;
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp)? {
            let path = entry?.path();
            let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
        }
        Ok(Self {
            root: root.to_path_buf(),
            seq: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_path(&self, kind: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{kind}-{}-{n}", std::process::id()))
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_path(diff_id).is_dir()
    }

    pub fn begin_blob(&self) -> io::Result<BlobWriter> {
        let path = self.tmp_path("blob");
        Ok(BlobWriter {
            file: io::BufWriter::with_capacity(1 << 20, File::create(&path)?),
            path,
            hasher: Sha256::new(),
            bytes: 0,
            committed: false,
        })
    }

    /// Verifies the written blob against `expected` and makes it visible.
    pub fn commit_blob(&self, mut w: BlobWriter, expected: &Digest) -> Result<(), ImageError> {
        let actual = Digest::from_hasher(std::mem::take(&mut w.hasher));
        if &actual != expected {
            return Err(ImageError::DigestMismatch {
                what: format!("blob {expected} ({} bytes)", w.bytes),
                actual: actual.to_string(),
            });
        }
        w.file.flush()?;
        w.file.get_ref().sync_all()?;
        fs::rename(&w.path, self.blob_path(expected))?;
        w.committed = true;
        fsync_dir(&self.root.join("blobs/sha256"))?;
        Ok(())
    }

    /// Stores bytes already in memory (manifests, configs).
    pub fn put_blob(&self, data: &[u8], expected: &Digest) -> Result<(), ImageError> {
        if self.has_blob(expected) {
            return Ok(());
        }
        let mut w = self.begin_blob()?;
        w.write(data)?;
        self.commit_blob(w, expected)
    }

    /// Copies a file into the store, verifying it.
    pub fn ingest_file(&self, src: &Path, expected: &Digest) -> Result<(), ImageError> {
        if self.has_blob(expected) {
            return Ok(());
        }
        let mut reader = File::open(src)?;
        let mut w = self.begin_blob()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = io::Read::read(&mut reader, &mut buf)?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n])?;
        }
        self.commit_blob(w, expected)
    }

    pub fn read_blob(&self, d: &Digest) -> io::Result<Vec<u8>> {
        fs::read(self.blob_path(d))
    }

    /// Unpacks the layer blob `blob` (whose uncompressed digest must be
    /// `diff_id`) into `layers/`, unless it is there already.
    pub fn unpack(
        &self,
        blob: &Digest,
        media_type: &str,
        diff_id: &Digest,
        limits: &UnpackLimits,
    ) -> Result<Option<UnpackStats>, ImageError> {
        if self.has_layer(diff_id) {
            return Ok(None);
        }
        let mut file = BufReader::with_capacity(1 << 20, File::open(self.blob_path(blob))?);
        let compression = match Compression::from_media_type(media_type) {
            Some(c) => c,
            None => Compression::sniff(io::BufRead::fill_buf(&mut file)?),
        };
        let tmp = self.tmp_path("layer");
        fs::create_dir(&tmp)?;
        let result = (|| {
            let stats = match compression {
                Compression::None => {
                    let mut hashing = HashingReader::new(file);
                    let stats = unpack_layer(&mut hashing, Compression::None, &tmp, limits)
                        .map_err(|e| ImageError::Layer {
                            layer: blob.to_string(),
                            source: e,
                        })?;
                    (stats, hashing.finish()?.0)
                }
                Compression::Gzip => {
                    let decoder =
                        BufReader::with_capacity(1 << 20, flate2::read::MultiGzDecoder::new(file));
                    let mut hashing = HashingReader::new(decoder);
                    let stats = unpack_layer(&mut hashing, Compression::None, &tmp, limits)
                        .map_err(|e| ImageError::Layer {
                            layer: blob.to_string(),
                            source: e,
                        })?;
                    (stats, hashing.finish()?.0)
                }
                Compression::Zstd => {
                    let decoder = zstd::stream::read::Decoder::with_buffer(file)?;
                    let mut hashing = HashingReader::new(decoder);
                    let stats = unpack_layer(&mut hashing, Compression::None, &tmp, limits)
                        .map_err(|e| ImageError::Layer {
                            layer: blob.to_string(),
                            source: e,
                        })?;
                    (stats, hashing.finish()?.0)
                }
            };
            let (stats, actual) = stats;
            if &actual != diff_id {
                return Err(ImageError::DigestMismatch {
                    what: format!("layer {blob}: uncompressed content (diff id {diff_id})"),
                    actual: actual.to_string(),
                });
            }
            Ok(stats)
        })();
        match result {
            Ok(stats) => {
                // Flush the layer's files before it becomes visible, so a
                // power loss can never leave a torn layer under `layers/`.
                nix::unistd::syncfs(File::open(&tmp)?).map_err(io::Error::from)?;
                match fs::rename(&tmp, self.layer_path(diff_id)) {
                    Ok(()) => {}
                    // Someone else finished the same layer first.
                    Err(_) if self.has_layer(diff_id) => {
                        let _ = fs::remove_dir_all(&tmp);
                    }
                    Err(e) => return Err(e.into()),
                }
                fsync_dir(&self.root.join("layers"))?;
                Ok(Some(stats))
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    /// Every blob digest on disk.
    pub fn blobs(&self) -> io::Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.root.join("blobs/sha256"))? {
            let e = e?;
            if let Ok(d) = format!("sha256:{}", e.file_name().to_string_lossy()).parse() {
                out.push((d, e.metadata()?.len()));
            }
        }
        Ok(out)
    }

    /// Every unpacked layer on disk.
    pub fn layers(&self) -> io::Result<Vec<Digest>> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.root.join("layers"))? {
            if let Ok(d) = format!("sha256:{}", e?.file_name().to_string_lossy()).parse() {
                out.push(d);
            }
        }
        Ok(out)
    }

    pub fn remove_blob(&self, d: &Digest) -> io::Result<()> {
        fs::remove_file(self.blob_path(d))
    }

    /// Removes an unpacked layer: renamed into `tmp/` first, so a crash
    /// half-way leaves debris there, never a half-deleted layer in use.
    pub fn remove_layer(&self, diff_id: &Digest) -> io::Result<()> {
        let doomed = self.tmp_path("gone");
        fs::rename(self.layer_path(diff_id), &doomed)?;
        fs::remove_dir_all(&doomed)
    }

    /// A scratch directory inside the store, removed on drop.
    pub fn scratch(&self) -> io::Result<Scratch> {
        let path = self.tmp_path("scratch");
        fs::create_dir(&path)?;
        Ok(Scratch(path))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: `open` wipes `tmp/` anyway.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A scratch directory removed when dropped.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debris(store: &ContentStore) -> usize {
        fs::read_dir(store.root().join("tmp")).unwrap().count()
    }

    #[test]
    fn a_download_given_up_or_refused_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let data = vec![7u8; 3 << 20];

        // Given up half-way (the stream failed, the disk filled).
        let mut w = store.begin_blob().unwrap();
        w.write(&data[..1 << 20]).unwrap();
        drop(w);
        assert_eq!(debris(&store), 0);

        // Refused: the bytes are not what the digest says.
        let mut w = store.begin_blob().unwrap();
        w.write(&data).unwrap();
        let wrong = Digest::of(b"something else");
        assert!(matches!(
            store.commit_blob(w, &wrong),
            Err(ImageError::DigestMismatch { .. })
        ));
        assert_eq!(debris(&store), 0);
        assert!(!store.has_blob(&wrong));

        // Committed: visible under `blobs/`, nothing left in `tmp/`.
        let digest = Digest::of(&data);
        let mut w = store.begin_blob().unwrap();
        w.write(&data).unwrap();
        store.commit_blob(w, &digest).unwrap();
        assert_eq!(debris(&store), 0);
        assert_eq!(store.read_blob(&digest).unwrap(), data);
    }
}
