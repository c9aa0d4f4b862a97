//! `skiff-gateway state export|import`: moving the fleet's records
//! between stores and taking backups (see [`crate::state_io`]).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::config::GatewayConfig;
use crate::store::{Store, StoreError};

/// The store the config names, opened for a one-off command.
fn open(config: &GatewayConfig) -> anyhow::Result<Arc<dyn Store>> {
    match &config.etcd {
        None => {
            let path = config.state_dir.join("state.redb");
            if !path.exists() {
                bail!("{}: no such store", path.display());
            }
            let s = crate::store::RedbStore::open(&path).with_context(|| {
                format!(
                    "{} (a running gateway holds it: export with --api from that gateway)",
                    path.display()
                )
            })?;
            Ok(Arc::new(s))
        }
        #[cfg(feature = "etcd")]
        Some(e) => Ok(Arc::new(crate::store::etcd::EtcdStore::connect(e)?)),
        #[cfg(not(feature = "etcd"))]
        Some(_) => bail!("etcd: this build has no etcd store (built without the `etcd` feature)"),
    }
}

/// Every record of the configured store, or of a running gateway's API
/// (`GET {api}/v1/state` with `token`), as an export.
pub fn export(config: &GatewayConfig, api: Option<(&str, &str)>) -> anyhow::Result<String> {
    if let Some((url, token)) = api {
        return export_api(url, token);
    }
    let store = open(config)?;
    let loaded = store.load().context("read the store")?;
    Ok(crate::state_io::export(&loaded, crate::control::now_ms()))
}

#[cfg(feature = "etcd")]
fn export_api(url: &str, token: &str) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let url = format!("{}/v1/state", url.trim_end_matches('/'));
    rt.block_on(async {
        let r = reqwest::Client::new()
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| url.clone())?;
        let status = r.status();
        let text = r.text().await.with_context(|| url.clone())?;
        if !status.is_success() {
            bail!("{url}: {status}: {}", text.trim());
        }
        Ok(text)
    })
}

#[cfg(not(feature = "etcd"))]
fn export_api(_: &str, _: &str) -> anyhow::Result<String> {
    bail!("--api: this build has no HTTP client (built without the `etcd` feature)")
}

/// Writes an export into the configured store, which must hold no
/// record; every record is checked before any is written. How many.
pub fn import(config: &GatewayConfig, file: &Path) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    let records = crate::state_io::parse(&text).with_context(|| format!("{}", file.display()))?;
    let count = records.values().map(|m| m.len()).sum();
    if config.etcd.is_none() {
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| config.state_dir.display().to_string())?;
        let path = config.state_dir.join("state.redb");
        let store = crate::store::RedbStore::open(&path)
            .with_context(|| format!("{} (is a gateway running on it?)", path.display()))?;
        write(&store, &records, usize::MAX)?;
        return Ok(count);
    }
    #[cfg(feature = "etcd")]
    {
        let e = config.etcd.as_ref().expect("etcd");
        let store = crate::store::etcd::EtcdStore::connect(e)?;
        let lease = store.claim(
            "state-import",
            e.lease_ttl.std().max(std::time::Duration::from_secs(30)),
        )?;
        let r = write(&store, &records, e.max_txn_ops);
        store.release(lease);
        r?;
        Ok(count)
    }
    #[cfg(not(feature = "etcd"))]
    bail!("etcd: this build has no etcd store (built without the `etcd` feature)")
}

fn write(store: &dyn Store, records: &crate::store::Snapshot, batch: usize) -> anyhow::Result<()> {
    let held: usize = store
        .load()
        .context("read the target store")?
        .records
        .values()
        .map(|m| m.len())
        .sum();
    if held > 0 {
        return Err(StoreError::InUse(format!(
            "the target store holds {held} records; an import goes into an empty one"
        ))
        .into());
    }
    for b in crate::state_io::batches(records, batch) {
        store.commit(&b).context("write the records")?;
    }
    Ok(())
}
