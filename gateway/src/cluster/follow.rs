//! A follower's state: the store's watch, applied as it comes; a reload
//! when the watch cannot continue (compacted, broken, a stale state).

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};

use super::Cluster;
use crate::store::Kind;

const RETRY: Duration = Duration::from_millis(500);

impl Cluster {
    pub(super) async fn follow(self: Arc<Self>) {
        let mut client = self.etcd.client();
        let codec = self.etcd.codec();
        let prefix = self.etcd.records_prefix();
        loop {
            if self.control.is_stale() && !self.control.is_leader() {
                if let Err(e) = self.control.reload() {
                    tracing::debug!(error = %e, "reload");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
                tracing::info!(revision = self.control.applied_revision(), "state reloaded");
            }
            let from = self.control.applied_revision() + 1;
            let opts = WatchOptions::new().with_prefix().with_start_revision(from);
            let mut stream = match client.watch(prefix.clone(), Some(opts)).await {
                Ok(s) => s,
                Err(e) => {
                    self.store_failed_watch(&e);
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            loop {
                let msg = match tokio::time::timeout(Duration::from_secs(1), stream.message()).await
                {
                    Ok(Ok(Some(m))) => m,
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        self.store_failed_watch(&e);
                        break;
                    }
                    // Quiet: look whether the state went stale meanwhile.
                    Err(_) if self.control.is_stale() && !self.control.is_leader() => break,
                    Err(_) => continue,
                };
                if msg.canceled() || msg.compact_revision() > 0 {
                    // History this gateway needs is gone: load it all.
                    tracing::warn!(
                        reason = msg.cancel_reason(),
                        compacted = msg.compact_revision(),
                        "watch ended; reloading"
                    );
                    if let Err(e) = self.control.reload() {
                        tracing::warn!(error = %e, "reload");
                        tokio::time::sleep(RETRY).await;
                    }
                    break;
                }
                let mut revision = 0;
                let changes: Vec<(Kind, String, Option<Vec<u8>>)> = msg
                    .events()
                    .iter()
                    .filter_map(|ev| {
                        let kv = ev.kv()?;
                        revision = revision.max(kv.mod_revision());
                        let (kind, key) = codec.parse(kv.key_str().ok()?)?;
                        let value = match ev.event_type() {
                            EventType::Put => Some(kv.value().to_vec()),
                            EventType::Delete => None,
                        };
                        Some((kind, key.to_string(), value))
                    })
                    .collect();
                if changes.is_empty() {
                    continue;
                }
                if let Err(e) = self.control.apply_remote(&changes, revision) {
                    tracing::warn!(error = %e, "apply a change from the store; reloading");
                    if self.control.reload().is_err() {
                        tokio::time::sleep(RETRY).await;
                    }
                    break;
                }
                if self.control.is_stale() && !self.control.is_leader() {
                    // Changes are not applied to a stale state: reload.
                    break;
                }
            }
        }
    }

    fn store_failed_watch(&self, e: &etcd_client::Error) {
        tracing::debug!(error = %e, "watch");
    }
}
