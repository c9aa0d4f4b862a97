//! Several gateways over one etcd: who leads, how followers keep up, and
//! how they hand changes to the leader.
//!
//! * **Election** ([`election`]): each gateway holds an etcd lease of its
//!   own (`lease_ttl`, kept alive every third of it) and registers itself
//!   under `PREFIX/gateways/NAME` with it. The leader is whoever created
//!   `PREFIX/leader` with its lease; the store fences every commit with
//!   that key's creation revision. A leader that misses its keep-alives
//!   for the lease's TTL steps down on its own; one that does not notice
//!   (paused, partitioned) has its commits refused.
//! * **Following** ([`follow`]): a watch on `PREFIX/records/` from the
//!   revision the state is at; a compacted or broken watch reloads.
//! * **Forwarding** ([`forward`]): REST writes and the event stream are
//!   forwarded to the leader's API as they are; agent changes go to its
//!   internal endpoint, `POST /internal/v1/agent`, authenticated by a
//!   secret derived from the admin token all gateways share.
//! * **Liveness** costs no etcd write: heartbeats stay in the memory of
//!   the gateway holding the session, which sends the leader the nodes it
//!   heard from twice per heartbeat interval, in one request.

use std::sync::Arc;
use std::time::Duration;

use crate::control::Control;
use crate::pki::Pki;
use crate::store::etcd::EtcdStore;

mod election;
mod follow;
mod forward;
mod streams;

pub use forward::{AgentChange, internal_router};

/// This gateway's part in the fleet.
#[derive(Debug)]
pub struct Cluster {
    control: Arc<Control>,
    pki: Arc<Pki>,
    etcd: Arc<EtcdStore>,
    http: reqwest::Client,
    /// What gateways show each other on the internal endpoint.
    secret: String,
    lease_ttl: Duration,
    started_ms: i64,
    /// Since when this gateway has led (unix ms; 0: it does not).
    leading_since_ms: std::sync::atomic::AtomicI64,
    /// Set by [`Cluster::resign`]: campaign no more.
    stopping: std::sync::atomic::AtomicBool,
    /// The lease this gateway holds now.
    lease: std::sync::Mutex<Option<i64>>,
    /// When a follower last read who leads (unix ms), its leader gone.
    leader_checked_ms: std::sync::atomic::AtomicI64,
    /// Status reports waiting for the next batch to the leader.
    reports: std::sync::Mutex<Vec<(String, skiff_proto::wire::v1::AllocationStatusReport)>>,
}

/// A cluster failure at start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("peer client: {0}")]
    Http(#[from] reqwest::Error),
}

impl Cluster {
    /// Starts the election, the watch and the liveness batches.
    pub fn start(
        control: Arc<Control>,
        etcd: Arc<EtcdStore>,
        pki: Arc<Pki>,
    ) -> Result<Arc<Self>, ClusterError> {
        let ca = reqwest::Certificate::from_pem(pki.ca_pem().as_bytes())?;
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        let lease_ttl = control
            .config
            .etcd
            .as_ref()
            .map_or(Duration::from_secs(2), |e| e.lease_ttl.std());
        let c = Arc::new(Self {
            secret: forward::peer_secret(&pki.admin_token),
            control,
            etcd,
            http,
            lease_ttl,
            started_ms: crate::control::now_ms(),
            leading_since_ms: std::sync::atomic::AtomicI64::new(0),
            leader_checked_ms: std::sync::atomic::AtomicI64::new(0),
            lease: std::sync::Mutex::new(None),
            stopping: std::sync::atomic::AtomicBool::new(false),
            reports: std::sync::Mutex::new(Vec::new()),
            pki,
        });
        tokio::spawn(Arc::clone(&c).elect());
        tokio::spawn(Arc::clone(&c).follow());
        tokio::spawn(Arc::clone(&c).send_heard());
        tokio::spawn(Arc::clone(&c).send_reports());
        Ok(c)
    }

    /// Gives the lead (and this gateway's place among the members) up at
    /// once, for a stop: another gateway leads within a poll, not a lease.
    pub async fn resign(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.etcd.set_fence(None);
        self.control.step_down("stopping");
        let lease = self.lease.lock().expect("lock").take();
        if let Some(id) = lease {
            let mut client = self.etcd.client();
            match tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(id)).await {
                Ok(Ok(_)) => tracing::info!("left the fleet's election"),
                _ => tracing::warn!("could not revoke the lease: the others wait for its TTL"),
            }
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.etcd.prefix())
    }
}
