//! The leader election: a lease per gateway, one leadership key.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::Cluster;
use crate::control::leadership::Peer;
use crate::control::now_ms;
use crate::peers::GatewayView;
use crate::store::etcd::{Fence, prefix_end};

/// How often a follower looks whether the leadership key is still there
/// (besides watching it).
const POLL: Duration = Duration::from_millis(250);
/// How long a new leader waits for its watch to bring it up to date
/// before it reloads the state instead.
const CATCH_UP: Duration = Duration::from_secs(1);

impl Cluster {
    fn me(&self, since_ms: i64) -> Peer {
        Peer {
            name: self.control.config.name.clone(),
            url: self.control.config.peer_url.clone(),
            since_ms,
        }
    }

    fn store_failed(&self, what: &str, e: &etcd_client::Error) {
        let why = format!("state store unavailable: {what}: {e}");
        if self.control.store_down().as_deref() != Some(&why) {
            tracing::warn!(%why, "etcd");
        }
        self.control.set_store_down(Some(why));
    }

    /// Campaigns for the lead for as long as the process runs: with a
    /// lease of its own, kept alive; leads while it holds the key, follows
    /// the holder otherwise.
    pub(super) async fn elect(self: Arc<Self>) {
        let ttl = self.lease_ttl;
        let ttl_s = ttl.as_secs().max(1) as i64;
        let mut client = self.etcd.client();
        let leader_key = self.etcd.leader_key();
        let stopping = || self.stopping.load(Ordering::SeqCst);
        while !stopping() {
            let lease = match client.lease_grant(ttl_s, None).await {
                Ok(l) => l.id(),
                Err(e) => {
                    self.store_failed("lease", &e);
                    tokio::time::sleep(POLL * 2).await;
                    continue;
                }
            };
            let granted = Instant::now();
            let (mut keeper, mut acks) = match client.lease_keep_alive(lease).await {
                Ok(k) => k,
                Err(e) => {
                    self.store_failed("lease keep-alive", &e);
                    tokio::time::sleep(POLL * 2).await;
                    continue;
                }
            };
            self.control.set_store_down(None);
            *self.lease.lock().expect("lock") = Some(lease);
            // The lease holds while acknowledgements come: the last one
            // (measured from when it was asked for) plus the TTL.
            let held = Arc::new(std::sync::Mutex::new(granted));
            let held2 = Arc::clone(&held);
            // On the etcd client's own runtime: a busy gateway (its
            // workers waiting on the state lock) still renews its lease.
            let mut ka_client = client.clone();
            let keepalive = self.etcd.handle().spawn(async move {
                loop {
                    let asked = Instant::now();
                    let sent = keeper.keep_alive().await.is_ok();
                    let ack = if sent {
                        tokio::time::timeout(ttl / 3, acks.message()).await
                    } else {
                        Ok(Ok(None))
                    };
                    match ack {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => {
                            *held2.lock().expect("lock") = asked;
                        }
                        Ok(Ok(Some(_))) => return, // expired
                        Err(_) => {}               // slow: ask again
                        Ok(_) => {
                            // The stream broke (its member went away):
                            // the lease lives on for its TTL; keep it
                            // through another member.
                            match ka_client.lease_keep_alive(lease).await {
                                Ok((k, a)) => (keeper, acks) = (k, a),
                                Err(_) => tokio::time::sleep(ttl / 10).await,
                            }
                            continue;
                        }
                    }
                    tokio::time::sleep(ttl / 3).await;
                }
            });
            let alive = || held.lock().expect("lock").elapsed() + POLL < ttl;
            let member = serde_json::to_vec(&self.me(self.started_ms)).expect("serializes");
            if let Err(e) = client
                .put(
                    self.key(&format!("gateways/{}", self.control.config.name)),
                    member,
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await
            {
                self.store_failed("register", &e);
            }
            // The leadership key's changes: a follower campaigns as soon
            // as it goes (with its holder's lease), not at its next look.
            let mut changes = client.watch(leader_key.clone(), None).await.ok();
            while alive() && !stopping() {
                match self.campaign(&mut client, &leader_key, lease).await {
                    Ok(Some(revision)) => {
                        self.lead(revision, &leader_key, &alive).await;
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => self.store_failed("leader", &e),
                }
                match changes.as_mut() {
                    Some(stream) => {
                        if let Ok(Err(_) | Ok(None)) =
                            tokio::time::timeout(POLL, stream.message()).await
                        {
                            // The watch broke: looked at every POLL.
                            changes = None;
                        }
                    }
                    None => tokio::time::sleep(POLL).await,
                }
            }
            keepalive.abort();
            // Whatever this lease held goes with it.
            let _ = client.lease_revoke(lease).await;
            if self
                .control
                .leader()
                .is_some_and(|l| l.name == self.control.config.name)
            {
                self.control.set_leader(None);
            }
        }
    }

    /// Takes the leadership key if nobody holds it (its creation revision
    /// then), or learns who holds it (`None`).
    async fn campaign(
        &self,
        client: &mut etcd_client::Client,
        key: &str,
        lease: i64,
    ) -> Result<Option<i64>, etcd_client::Error> {
        let me = serde_json::to_vec(&self.me(now_ms())).expect("serializes");
        let r = client
            .txn(
                Txn::new()
                    .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key,
                        me,
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([TxnOp::get(key, None)]),
            )
            .await?;
        self.control.set_store_down(None);
        if r.succeeded() {
            return Ok(r.header().map(|h| h.revision()));
        }
        let holder = r.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .and_then(|kv| serde_json::from_slice::<Peer>(kv.value()).ok()),
            _ => None,
        });
        if holder
            .as_ref()
            .is_some_and(|h| h.name == self.control.config.name)
        {
            // Ours, from a lease this gateway gave up: it goes with that
            // lease; until then nobody leads.
            self.control.set_leader(None);
        } else {
            self.control.set_leader(holder);
        }
        Ok(None)
    }

    /// Whether this gateway's state has every change committed before it
    /// won (`revision`), without a reload (which takes seconds at 10,000
    /// nodes): a mark committed now comes back on its own watch after all
    /// of them.
    async fn catch_up(&self, revision: i64) -> bool {
        let mut batch = crate::store::Batch::default();
        batch.put(
            crate::store::Kind::Meta,
            "leader",
            &serde_json::json!({"name": self.control.config.name, "won_at": revision}),
        );
        let etcd = Arc::clone(&self.etcd);
        let marked =
            tokio::task::spawn_blocking(move || crate::store::Store::commit(etcd.as_ref(), &batch))
                .await;
        let why = match marked {
            Ok(Ok(mark)) => return self.control.caught_up(mark, CATCH_UP).await,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(error = %why, "mark the takeover; the state is reloaded");
        false
    }

    /// Reads who leads now, for a follower whose leader stopped answering
    /// (its own campaign loop may be busy renewing its lease): the next
    /// attempt goes to the new one at once.
    pub(super) async fn refresh_leader(&self) {
        // One read per 100 ms, however many requests are held.
        let now = now_ms();
        let last = self.leader_checked_ms.load(Ordering::SeqCst);
        if now - last < 100
            || self
                .leader_checked_ms
                .compare_exchange(last, now, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return;
        }
        let mut kv = self.etcd.client().kv_client();
        let Ok(Ok(r)) = tokio::time::timeout(POLL * 2, kv.get(self.etcd.leader_key(), None)).await
        else {
            return;
        };
        let holder = r
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice::<Peer>(kv.value()).ok())
            .filter(|p| p.name != self.control.config.name);
        if !self.control.is_leader() {
            self.control.set_leader(holder);
        }
    }

    /// Leads until the lease is lost or a commit is refused.
    async fn lead(&self, revision: i64, key: &str, alive: &(dyn Fn() -> bool + Sync)) {
        self.etcd.set_fence(Some(Fence {
            key: key.to_string(),
            revision,
        }));
        let won = Instant::now();
        let caught_up = self.catch_up(revision).await;
        if let Err(e) = self.control.become_leader(caught_up) {
            tracing::warn!(error = %e, "take the lead: reload the state");
            self.etcd.set_fence(None);
            return;
        }
        let since = now_ms();
        self.leading_since_ms.store(since, Ordering::SeqCst);
        self.control.set_leader(Some(self.me(since)));
        tracing::info!(
            revision,
            caught_up,
            took_ms = won.elapsed().as_millis() as u64,
            "leads the fleet"
        );
        while alive() && self.control.is_leader() && !self.stopping.load(Ordering::SeqCst) {
            tokio::time::sleep(POLL / 5).await;
        }
        self.etcd.set_fence(None);
        self.control
            .step_down("the lease was not renewed within its TTL");
        self.leading_since_ms.store(0, Ordering::SeqCst);
        self.control.set_leader(None);
    }

    /// The gateways registered now, and which one leads.
    pub(super) async fn members(&self) -> Vec<GatewayView> {
        let mut kv = self.etcd.client().kv_client();
        let start = self.key("gateways/");
        let r = kv
            .get(
                start.clone(),
                Some(GetOptions::new().with_range(prefix_end(&start))),
            )
            .await;
        let leader = self.control.leader();
        let mut out: Vec<GatewayView> = match r {
            Ok(r) => r
                .kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice::<Peer>(kv.value()).ok())
                .map(|p| {
                    let leads = leader.as_ref().is_some_and(|l| l.name == p.name);
                    GatewayView {
                        role: if leads { "leader" } else { "follower" }.into(),
                        leading_since_ms: leader.as_ref().filter(|_| leads).map(|l| l.since_ms),
                        name: p.name,
                        url: p.url,
                        up_since_ms: p.since_ms,
                    }
                })
                .collect(),
            // What this gateway knows without the store.
            Err(_) => Vec::new(),
        };
        if !out.iter().any(|g| g.name == self.control.config.name) {
            let leads = self.control.is_leader();
            out.push(GatewayView {
                name: self.control.config.name.clone(),
                url: self.control.config.peer_url.clone(),
                role: if leads { "leader" } else { "follower" }.into(),
                up_since_ms: self.started_ms,
                leading_since_ms: leads.then(|| self.leading_since_ms.load(Ordering::SeqCst)),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}
