//! Image metadata in an embedded, crash-safe database (redb): one record per
//! image name, and the unpacked size of each layer.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::ImageError;
use super::digest::Digest;

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const LAYERS: TableDefinition<&str, &[u8]> = TableDefinition::new("layers");

/// What the runtime needs from the image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as stored (compressed).
    pub digest: Digest,
    /// Digest of the uncompressed tar: the unpacked layer's key.
    pub diff_id: Digest,
    pub media_type: String,
    pub size: u64,
}

/// An image in the store, under one name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Canonical name: `docker.io/library/busybox:latest`, or `…@sha256:…`.
    pub reference: String,
    /// Digest of the image manifest.
    pub digest: Digest,
    /// Digest of the multi-platform index it was chosen from, if any.
    #[serde(default)]
    pub index_digest: Option<Digest>,
    /// The image id: the digest of its config.
    pub config_digest: Digest,
    pub layers: Vec<LayerRecord>,
    pub config: ImageConfig,
    /// `os/arch`.
    pub platform: String,
    /// Compressed size: manifest, config and layers.
    pub size: u64,
    /// When it was stored (seconds since the epoch).
    pub created: i64,
    /// What its layers' unpacking left out, for the operator
    /// (`layer sha256:…: 8 device nodes not created (dev/console, …)`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The unpacked size of a layer, and what unpacking it left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerUsage {
    pub bytes: u64,
    pub entries: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

fn db_err(e: impl std::fmt::Display) -> ImageError {
    ImageError::Db(e.to_string())
}

/// The metadata database.
#[derive(Debug)]
pub struct Meta {
    db: Database,
}

impl Meta {
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let db = crate::open_db(path).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(IMAGES).map_err(db_err)?;
        tx.open_table(LAYERS).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Self { db })
    }

    pub fn put_image(&self, rec: &ImageRecord) -> Result<(), ImageError> {
        let value = serde_json::to_vec(rec).map_err(db_err)?;
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.open_table(IMAGES)
            .map_err(db_err)?
            .insert(rec.reference.as_str(), value.as_slice())
            .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    pub fn remove_image(&self, reference: &str) -> Result<bool, ImageError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let removed = tx
            .open_table(IMAGES)
            .map_err(db_err)?
            .remove(reference)
            .map_err(db_err)?
            .is_some();
        tx.commit().map_err(db_err)?;
        Ok(removed)
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(IMAGES).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            out.push(serde_json::from_slice(v.value()).map_err(db_err)?);
        }
        Ok(out)
    }

    pub fn put_layer(&self, diff_id: &Digest, usage: LayerUsage) -> Result<(), ImageError> {
        let value = serde_json::to_vec(&usage).map_err(db_err)?;
        let key = diff_id.to_string();
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.open_table(LAYERS)
            .map_err(db_err)?
            .insert(key.as_str(), value.as_slice())
            .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    pub fn remove_layer(&self, diff_id: &Digest) -> Result<(), ImageError> {
        let key = diff_id.to_string();
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.open_table(LAYERS)
            .map_err(db_err)?
            .remove(key.as_str())
            .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// The usage record of one unpacked layer, if there is one.
    pub fn layer(&self, diff_id: &Digest) -> Result<Option<LayerUsage>, ImageError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(LAYERS).map_err(db_err)?;
        let key = diff_id.to_string();
        match table.get(key.as_str()).map_err(db_err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(db_err)?)),
            None => Ok(None),
        }
    }

    pub fn layer_usage(&self) -> Result<BTreeMap<String, LayerUsage>, ImageError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(LAYERS).map_err(db_err)?;
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.insert(
                k.value().to_string(),
                serde_json::from_slice(v.value()).map_err(db_err)?,
            );
        }
        Ok(out)
    }
}
