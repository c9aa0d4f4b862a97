//! State on etcd, shared by several gateways.
//!
//! Records live under `PREFIX/records/KIND/KEY` (JSON, as in the embedded
//! store). Only the gateway that leads the fleet commits records, and each
//! of its commits is an etcd transaction that first checks the leadership
//! key still holds the revision at which this gateway won it: a gateway
//! that lost its lease (partitioned, paused, slow) has every commit
//! refused ([`StoreError::NotLeader`]), so two leaders never both write.
//! Followers learn the records through a watch (`crate::cluster`).
//!
//! etcd refuses a transaction of more than `--max-txn-ops` operations
//! (128 by default). A batch larger than `max_txn_ops` is committed as
//! several fenced transactions, node records first: each record is whole
//! on its own, a node's generation is never behind the allocations placed
//! on it, and what a cut-short batch leaves out the next leader's pass
//! does again. Raise `--max-txn-ops` on the etcd members (and
//! `max_txn_ops` here) to keep large passes in one transaction.
//!
//! The [`Store`] trait is synchronous (the gateway commits under its state
//! lock); the etcd client runs on a runtime of its own, and a call waits
//! for it, at most `timeout`.

use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn, TxnOp,
};

use super::{Batch, Kind, Loaded, Revision, Snapshot, Store, StoreError};
use crate::config::EtcdConfig;

/// The leadership this gateway holds: the key and the revision at which
/// it was created. Commits check both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub revision: Revision,
}

pub struct EtcdStore {
    client: Client,
    /// Always `Some` until dropped (a runtime is shut down in the
    /// background: it may be dropped inside another one).
    rt: Option<tokio::runtime::Runtime>,
    prefix: String,
    fence: Mutex<Option<Fence>>,
    max_txn_ops: usize,
    timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

/// Records per page when loading (each a few hundred bytes; gRPC takes
/// messages of up to 4 MiB).
const PAGE: i64 = 2000;
/// Bytes of values per transaction, below etcd's 1.5 MiB request limit.
const MAX_TXN_BYTES: usize = 1 << 20;
/// Between attempts at a call a member did not answer.
const RETRY: Duration = Duration::from_millis(100);

pub(crate) fn unavailable(what: &str) -> impl FnOnce(etcd_client::Error) -> StoreError + '_ {
    move |e| StoreError::Unavailable {
        what: what.to_string(),
        source: Box::new(e),
    }
}

fn timed_out(what: &str, after: Duration) -> StoreError {
    StoreError::Unavailable {
        what: what.to_string(),
        source: format!("no answer within {}ms", after.as_millis()).into(),
    }
}

impl EtcdStore {
    /// Connects (lazily: a member down now is tried again on each call).
    pub fn connect(c: &EtcdConfig) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("skiff-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::backend("etcd client runtime", e))?;
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(c.timeout.std() / 2)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_require_leader(true);
        if let Some(ca) = &c.ca_file {
            let read = |p: &std::path::Path| {
                std::fs::read(p)
                    .map_err(|e| StoreError::backend(format!("etcd {}", p.display()), e))
            };
            let mut tls = TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(ca)?))
                .domain_name(
                    c.tls_server_name
                        .clone()
                        .unwrap_or_else(|| "localhost".into()),
                );
            if let (Some(cert), Some(key)) = (&c.cert_file, &c.key_file) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            opts = opts.with_tls(tls);
        }
        if let Some(user) = &c.username {
            let password = match &c.password_file {
                Some(p) => std::fs::read_to_string(p)
                    .map_err(|e| StoreError::backend(format!("etcd {}", p.display()), e))?
                    .trim()
                    .to_string(),
                None => String::new(),
            };
            opts = opts.with_user(user.clone(), password);
        }
        let endpoints = c.endpoints.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(Client::connect(endpoints, Some(opts)).await);
        });
        let client = rx
            .recv()
            .map_err(|_| timed_out("connect", c.timeout.std()))?
            .map_err(unavailable("connect"))?;
        Ok(Self {
            client,
            rt: Some(rt),
            prefix: c.prefix.trim_end_matches('/').to_string(),
            fence: Mutex::new(None),
            max_txn_ops: c.max_txn_ops,
            timeout: c.timeout.std(),
        })
    }

    /// A client for the cluster's own calls (election, watch).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The runtime the client runs on.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.rt().handle().clone()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where records are: `PREFIX/records/`.
    pub fn records_prefix(&self) -> String {
        format!("{}/records/", self.prefix)
    }

    pub fn key_of(&self, kind: Kind, key: &str) -> String {
        format!("{}/records/{}/{key}", self.prefix, kind.name())
    }

    /// The leadership key: whoever created it (with a lease) leads.
    pub fn leader_key(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    /// Takes the leadership key for a one-off writer (`state import`)
    /// and fences commits with it; refused while a gateway leads. Its
    /// lease, for [`EtcdStore::release`].
    pub fn claim(&self, holder: &str, ttl: Duration) -> Result<i64, StoreError> {
        let mut client = self.client.clone();
        let key = self.leader_key();
        let value = serde_json::json!({"name": holder, "url": "", "since_ms": 0}).to_string();
        let (lease, revision) = self.block("claim", async move {
            let lease = client
                .lease_grant(ttl.as_secs().max(1) as i64, None)
                .await
                .map_err(unavailable("lease"))?
                .id();
            let r = client
                .txn(
                    Txn::new()
                        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(
                            key.clone(),
                            value,
                            Some(etcd_client::PutOptions::new().with_lease(lease)),
                        )])
                        .or_else([TxnOp::get(key, None)]),
                )
                .await
                .map_err(unavailable("claim"))?;
            if !r.succeeded() {
                let _ = client.lease_revoke(lease).await;
                let holder = r
                    .op_responses()
                    .into_iter()
                    .find_map(|op| match op {
                        etcd_client::TxnOpResponse::Get(g) => g
                            .kvs()
                            .first()
                            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                        _ => None,
                    })
                    .unwrap_or_default();
                return Err(StoreError::InUse(format!(
                    "a gateway leads this fleet ({holder}): stop every gateway first"
                )));
            }
            Ok((lease, r.header().map_or(0, |h| h.revision())))
        })?;
        self.set_fence(Some(Fence {
            key: self.leader_key(),
            revision,
        }));
        Ok(lease)
    }

    /// Gives a [`EtcdStore::claim`] back.
    pub fn release(&self, lease: i64) {
        self.set_fence(None);
        let mut client = self.client.clone();
        let revoked = self.block("release", async move {
            client
                .lease_revoke(lease)
                .await
                .map_err(unavailable("release"))
        });
        if let Err(e) = revoked {
            // The claim ends with its lease's TTL anyway.
            tracing::warn!(error = %e, "release the import's claim on the leadership key");
        }
    }

    /// Reads record keys back.
    pub fn codec(&self) -> KeyCodec {
        KeyCodec {
            prefix: self.prefix.clone(),
        }
    }

    /// Sets (or clears) the leadership commits are fenced with.
    pub fn set_fence(&self, fence: Option<Fence>) {
        *self.fence.lock().expect("lock") = fence;
    }

    pub fn fence(&self) -> Option<Fence> {
        self.fence.lock().expect("lock").clone()
    }

    /// Runs `f` on the client's runtime and waits for it (from any
    /// thread, inside another runtime too), at most `timeout`.
    fn block<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.block_within(what, self.timeout + RETRY * 5, f)
    }

    /// [`EtcdStore::block`] for work of several calls (a load in pages, a
    /// batch in several transactions), all of it within `timeout` (each
    /// call has its own deadline inside `f`).
    fn block_within<T: Send + 'static>(
        &self,
        what: &'static str,
        timeout: Duration,
        f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt().spawn(async move {
            let r = match tokio::time::timeout(timeout, f).await {
                Ok(r) => r,
                Err(_) => Err(timed_out(what, timeout)),
            };
            let _ = tx.send(r);
        });
        rx.recv().map_err(|_| timed_out(what, timeout))?
    }

    /// Splits a batch into transactions of at most `max_txn_ops`
    /// operations and `MAX_TXN_BYTES`: node records first, then the other
    /// puts, then the deletes.
    fn plan(&self, batch: &Batch) -> Vec<Vec<TxnOp>> {
        let mut puts: Vec<&(Kind, String, Vec<u8>)> = batch.puts.iter().collect();
        puts.sort_by_key(|(k, _, _)| *k != Kind::Node);
        let ops = puts
            .into_iter()
            .map(|(k, key, v)| (v.len(), TxnOp::put(self.key_of(*k, key), v.clone(), None)))
            .chain(
                batch
                    .deletes
                    .iter()
                    .map(|(k, key)| (0, TxnOp::delete(self.key_of(*k, key), None))),
            );
        let mut txns: Vec<Vec<TxnOp>> = vec![Vec::new()];
        let mut bytes = 0;
        for (len, op) in ops {
            let cur = txns.last_mut().expect("one");
            if !cur.is_empty() && (cur.len() >= self.max_txn_ops || bytes + len > MAX_TXN_BYTES) {
                txns.push(Vec::new());
                bytes = 0;
            }
            bytes += len;
            txns.last_mut().expect("one").push(op);
        }
        txns
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl EtcdStore {
    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("a runtime until dropped")
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let mut kv = self.client.kv_client();
        let start = self.records_prefix();
        let end = prefix_end(&start);
        let keys = self.codec();
        let per_page = self.timeout;
        // Pages come while etcd answers; a big fleet's state takes more
        // than one call's time.
        self.block_within("load", per_page * 10, async move {
            let mut out = Snapshot::new();
            let mut from = start.clone().into_bytes();
            let mut revision = 0;
            loop {
                let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
                if revision > 0 {
                    opts = opts.with_revision(revision);
                }
                let deadline = tokio::time::Instant::now() + per_page;
                let r = loop {
                    match kv.get(from.clone(), Some(opts.clone())).await {
                        Ok(r) => break r,
                        Err(e) if tokio::time::Instant::now() + RETRY < deadline => {
                            tracing::debug!(error = %e, "etcd load; again");
                            tokio::time::sleep(RETRY).await;
                        }
                        Err(e) => return Err(unavailable("load")(e)),
                    }
                };
                if revision == 0 {
                    revision = r.header().map_or(0, |h| h.revision());
                }
                for e in r.kvs() {
                    let k = std::str::from_utf8(e.key()).unwrap_or_default();
                    if let Some((kind, key)) = keys.parse(k) {
                        out.entry(kind)
                            .or_default()
                            .insert(key.to_string(), e.value().to_vec());
                    }
                }
                match (r.more(), r.kvs().last()) {
                    (true, Some(last)) => {
                        from = last.key().to_vec();
                        from.push(0);
                    }
                    _ => break,
                }
            }
            Ok(Loaded {
                records: out,
                revision,
            })
        })
    }

    fn max_batch_ops(&self) -> usize {
        self.max_txn_ops
    }

    fn commit(&self, batch: &Batch) -> Result<Revision, StoreError> {
        let fence = self.fence().ok_or(StoreError::NotLeader)?;
        let txns = if batch.is_empty() {
            // Still fenced: the caller learns it no longer leads.
            vec![Vec::new()]
        } else {
            self.plan(batch)
        };
        let mut kv = self.client.kv_client();
        // Each transaction has the whole timeout (a pass placing
        // thousands takes many).
        let per_txn = self.timeout;
        let within = (per_txn + RETRY * 5) * txns.len().max(1) as u32;
        self.block_within("commit", within, async move {
            let mut revision = 0;
            for ops in txns {
                let deadline = tokio::time::Instant::now() + per_txn;
                let txn = Txn::new()
                    .when([Compare::create_revision(
                        fence.key.clone(),
                        CompareOp::Equal,
                        fence.revision,
                    )])
                    .and_then(ops);
                // A member that went away fails the call before the
                // balancer moves on: try again while there is time. Every
                // batch is absolute puts and deletes, so a transaction
                // that did land and is sent again changes nothing.
                let r = loop {
                    match kv.txn(txn.clone()).await {
                        Ok(r) => break r,
                        Err(e) if tokio::time::Instant::now() + RETRY < deadline => {
                            tracing::debug!(error = %e, "etcd commit; again");
                            tokio::time::sleep(RETRY).await;
                        }
                        Err(e) => return Err(unavailable("commit")(e)),
                    }
                };
                if !r.succeeded() {
                    return Err(StoreError::NotLeader);
                }
                revision = r.header().map_or(revision, |h| h.revision());
            }
            Ok(revision)
        })
    }
}

/// Record keys without the rest of the store (for futures that outlive a
/// borrow of it).
#[derive(Debug, Clone)]
pub struct KeyCodec {
    pub prefix: String,
}

impl KeyCodec {
    pub fn parse<'a>(&self, k: &'a str) -> Option<(Kind, &'a str)> {
        let rest = k.strip_prefix(&self.prefix)?.strip_prefix("/records/")?;
        let (kind, key) = rest.split_once('/')?;
        Some((Kind::from_name(kind)?, key))
    }
}

/// The end of the range of keys that start with `p`.
pub fn prefix_end(p: &str) -> Vec<u8> {
    let mut end = p.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
