//! Removing images and collecting what no image (or container) uses.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::{ImageError, ImageStore};

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub blobs_removed: usize,
    pub layers_removed: usize,
    pub bytes_freed: u64,
}

/// Disk used by the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub images: usize,
    pub blobs: usize,
    pub blob_bytes: u64,
    pub layers: usize,
    pub layer_bytes: u64,
}

impl ImageStore {
    /// Removes the image named `name` and the content only it used.
    /// `in_use` lists layer diff ids that containers still run on.
    pub async fn remove(
        &self,
        name: &str,
        in_use: &BTreeSet<Digest>,
    ) -> Result<PruneReport, ImageError> {
        let _guard = self.gc_lock.write().await;
        let record = self.get(name)?;
        self.meta.remove_image(&record.reference)?;
        tracing::info!(image = %record.reference, "removed");
        self.collect(in_use)
    }

    /// Removes blobs and unpacked layers that no image and no container uses.
    pub async fn prune(&self, in_use: &BTreeSet<Digest>) -> Result<PruneReport, ImageError> {
        let _guard = self.gc_lock.write().await;
        self.collect(in_use)
    }

    fn collect(&self, in_use: &BTreeSet<Digest>) -> Result<PruneReport, ImageError> {
        let images = self.meta.images()?;
        let mut blobs: BTreeSet<&Digest> = BTreeSet::new();
        let mut layers: BTreeSet<&Digest> = in_use.iter().collect();
        for i in &images {
            blobs.insert(&i.digest);
            blobs.insert(&i.config_digest);
            if let Some(d) = &i.index_digest {
                blobs.insert(d);
            }
            for l in &i.layers {
                blobs.insert(&l.digest);
                layers.insert(&l.diff_id);
            }
        }
        let mut report = PruneReport::default();
        for (d, size) in self.content.blobs()? {
            if !blobs.contains(&d) {
                self.content.remove_blob(&d)?;
                report.blobs_removed += 1;
                report.bytes_freed += size;
            }
        }
        let usage = self.meta.layer_usage()?;
        for d in self.content.layers()? {
            if !layers.contains(&d) {
                self.content.remove_layer(&d)?;
                self.meta.remove_layer(&d)?;
                report.layers_removed += 1;
                report.bytes_freed += usage.get(&d.to_string()).map_or(0, |u| u.bytes);
            }
        }
        if report.blobs_removed + report.layers_removed > 0 {
            tracing::info!(
                blobs = report.blobs_removed,
                layers = report.layers_removed,
                bytes = report.bytes_freed,
                "garbage collected"
            );
        }
        Ok(report)
    }

    /// Disk used by blobs and unpacked layers (reported to the gateway).
    pub fn disk_usage(&self) -> Result<DiskUsage, ImageError> {
        let blobs = self.content.blobs()?;
        let layers = self.content.layers()?;
        let usage = self.meta.layer_usage()?;
        Ok(DiskUsage {
            images: self.meta.images()?.len(),
            blobs: blobs.len(),
            blob_bytes: blobs.iter().map(|(_, s)| s).sum(),
            layers: layers.len(),
            layer_bytes: layers
                .iter()
                .filter_map(|d| usage.get(&d.to_string()))
                .map(|u| u.bytes)
                .sum(),
        })
    }
}
