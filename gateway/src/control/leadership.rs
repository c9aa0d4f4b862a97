//! Who leads the fleet, and what a follower applied of the store.
//!
//! One gateway leads: it alone runs the reconciler, the liveness check and
//! the autoscaler, and it alone commits (over etcd its commits are fenced
//! by its leadership, see `store::etcd`). The others follow: they serve
//! reads from a state kept current by the store's watch
//! ([`Control::apply_remote`]), push desired states to the agents whose
//! sessions they hold, and hand every change to the leader. With the
//! embedded store the one gateway always leads.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::{Control, ControlError, State, now_ms};
use crate::store::{Kind, Revision, StoreError};

/// What a change made on a gateway that does not lead fails with (before
/// anything is written: it may be sent again to the leader).
pub const NOT_LEADER: &str = "this gateway does not lead the fleet";

/// Whether `e` says this gateway did not lead, nothing written.
pub fn is_not_leader(e: &ControlError) -> bool {
    match e {
        ControlError::Unavailable(m) => m == NOT_LEADER,
        ControlError::Store(StoreError::NotLeader) => true,
        _ => false,
    }
}

/// A gateway of the fleet, as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Peer {
    pub name: String,
    /// Its REST API.
    pub url: String,
    /// Since when it has been up (unix ms), or leading, for the leader.
    pub since_ms: i64,
}

#[derive(Debug)]
pub(crate) struct Lead {
    leading: AtomicBool,
    /// The state may hold a write the store did not take: reload first.
    stale: AtomicBool,
    applied: tokio::sync::watch::Sender<Revision>,
    leader: Mutex<Option<Peer>>,
    /// Nodes heard from since the last batch to the leader (followers).
    heard: Mutex<BTreeSet<String>>,
    /// Why the store could not be reached, while it cannot.
    store_down: Mutex<Option<String>>,
}

impl Lead {
    pub(crate) fn new(leading: bool, revision: Revision) -> Self {
        Self {
            leading: AtomicBool::new(leading),
            stale: AtomicBool::new(false),
            applied: tokio::sync::watch::Sender::new(revision),
            leader: Mutex::new(None),
            heard: Mutex::new(BTreeSet::new()),
            store_down: Mutex::new(None),
        }
    }

    /// Whether this gateway may write now.
    pub(crate) fn may_write(&self) -> Result<(), ControlError> {
        if !self.leading.load(Ordering::SeqCst) {
            return Err(ControlError::Unavailable(NOT_LEADER.into()));
        }
        Ok(())
    }

    pub(crate) fn is_stale(&self) -> bool {
        self.stale.load(Ordering::SeqCst)
    }

    pub(crate) fn mark_stale(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }

    pub(crate) fn committed(&self, revision: Revision) {
        self.applied.send_if_modified(|r| {
            let newer = revision > *r;
            if newer {
                *r = revision;
            }
            newer
        });
    }

    pub(crate) fn loaded(&self, revision: Revision) {
        self.stale.store(false, Ordering::SeqCst);
        self.applied.send_replace(revision);
    }

    pub(crate) fn heard(&self, node: &str) {
        self.heard.lock().expect("lock").insert(node.to_string());
    }
}

impl Control {
    pub fn is_leader(&self) -> bool {
        self.lead.leading.load(Ordering::SeqCst)
    }

    /// The gateway that leads, as the last election said (`None` while
    /// none does, or with the embedded store).
    pub fn leader(&self) -> Option<Peer> {
        self.lead.leader.lock().expect("lock").clone()
    }

    pub fn set_leader(&self, leader: Option<Peer>) {
        *self.lead.leader.lock().expect("lock") = leader;
    }

    /// The store revision this gateway's state is at.
    pub fn applied_revision(&self) -> Revision {
        *self.lead.applied.borrow()
    }

    /// Waits until the state is at `revision` at least (a follower
    /// answering after the leader wrote), at most `within`.
    pub async fn caught_up(&self, revision: Revision, within: std::time::Duration) -> bool {
        let mut rx = self.lead.applied.subscribe();
        tokio::time::timeout(within, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether the state must be reloaded before it is trusted.
    pub fn is_stale(&self) -> bool {
        self.lead.is_stale()
    }

    /// Notes that the store cannot be reached (`Some(why)`) or can again.
    pub fn set_store_down(&self, why: Option<String>) {
        *self.lead.store_down.lock().expect("lock") = why;
    }

    pub fn store_down(&self) -> Option<String> {
        self.lead.store_down.lock().expect("lock").clone()
    }

    /// The nodes heard from since the last call (a follower's batch for
    /// the leader).
    pub fn take_heard(&self) -> Vec<String> {
        std::mem::take(&mut *self.lead.heard.lock().expect("lock"))
            .into_iter()
            .collect()
    }

    /// Takes the lead: the state as the store has it now (reloaded unless
    /// `caught_up`: the watch brought everything), every node a full grace
    /// period (their heartbeats went to other gateways), and a pass at
    /// once.
    pub fn become_leader(&self, caught_up: bool) -> Result<(), StoreError> {
        if !caught_up || self.is_stale() {
            self.reload()?;
        }
        let now = self.clock.now();
        {
            let nodes: Vec<String> = self.read(|s| s.nodes.keys().cloned().collect());
            let mut seen = self.last_seen.lock().expect("lock");
            for n in nodes {
                seen.insert(n, now);
            }
        }
        self.lead.leading.store(true, Ordering::SeqCst);
        self.metrics.leader.set(1);
        self.event(
            "gateway",
            &self.config.name,
            format!(
                "leads the fleet (store revision {})",
                self.applied_revision()
            ),
        );
        self.wake();
        Ok(())
    }

    /// Stops leading: no more passes, commits or launches from here. The
    /// state is reloaded before this gateway follows.
    pub fn step_down(&self, why: &str) {
        if self.lead.leading.swap(false, Ordering::SeqCst) {
            self.metrics.leader.set(0);
            self.lead.mark_stale();
            tracing::warn!(why, "no longer leads the fleet");
            self.event("gateway", &self.config.name, format!("stepped down: {why}"));
        }
    }

    /// Changes another gateway committed, as the store's watch gives them
    /// (a follower's view; the leader knows its own). The nodes whose
    /// desired state changed get it pushed, if their session is here.
    pub fn apply_remote(
        &self,
        changes: &[(Kind, String, Option<Vec<u8>>)],
        revision: Revision,
    ) -> Result<(), StoreError> {
        if self.is_leader() || revision <= self.applied_revision() || self.is_stale() {
            return Ok(());
        }
        // Nodes whose desired state changed: a new generation, or an
        // allocation that joined or left their set (a state that changed
        // within it, such as a report, pushes nothing).
        let mut touched = BTreeSet::new();
        {
            let mut s = self.state.lock().expect("state lock");
            s.version += 1;
            let placed = |s: &State, id: &str| {
                s.allocations
                    .get(id)
                    .filter(|a| a.is_live())
                    .and_then(|a| a.node.clone())
            };
            for (kind, key, value) in changes {
                // Half applied: reloaded before it is trusted.
                let apply = |s: &mut State| {
                    s.apply(*kind, key, value.as_deref())
                        .inspect_err(|_| self.lead.mark_stale())
                };
                match kind {
                    Kind::Allocation => {
                        let before = placed(&s, key);
                        apply(&mut s)?;
                        let after = placed(&s, key);
                        if before == after {
                            continue;
                        }
                        if let Some(n) = before {
                            let set = s.desired.entry(n.clone()).or_default();
                            set.remove(key);
                            if set.is_empty() {
                                s.desired.remove(&n);
                            }
                            touched.insert(n);
                        }
                        if let Some(n) = after {
                            s.desired.entry(n.clone()).or_default().insert(key.clone());
                            touched.insert(n);
                        }
                    }
                    Kind::Node => {
                        let before = s.nodes.get(key).map(|n| n.generation);
                        apply(&mut s)?;
                        if s.nodes.get(key).map(|n| n.generation) != before {
                            touched.insert(key.clone());
                        }
                    }
                    _ => apply(&mut s)?,
                }
            }
        }
        self.lead.committed(revision);
        self.push(&touched);
        Ok(())
    }

    /// How long this gateway has led, for `/v1/gateways`.
    pub fn uptime_peer(&self, started_ms: i64) -> Peer {
        Peer {
            name: self.config.name.clone(),
            url: self.config.peer_url.clone(),
            since_ms: started_ms.min(now_ms()),
        }
    }
}

/// The nodes whose generation or desired set differs between two states.
pub(crate) fn changed_nodes(before: &State, after: &State) -> BTreeSet<String> {
    after
        .nodes
        .iter()
        .filter(|(id, n)| {
            before.nodes.get(*id).map(|b| b.generation) != Some(n.generation)
                || before.desired.get(*id) != after.desired.get(*id)
        })
        .map(|(id, _)| id.clone())
        .collect()
}
