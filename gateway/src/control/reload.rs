//! Reloading the state from the store: after a write the store refused or
//! did not answer (the state may hold what was not written), on a
//! follower whose watch cannot continue, on a leader that did not catch
//! up.
//!
//! The state is marked stale first: no one writes to it and no remote
//! change is applied until the reload is done. The store is read without
//! the state lock, so reads are answered meanwhile, from the state as it
//! was (a load takes seconds at 10,000 nodes, and the whole store timeout
//! when the store does not answer). One reload runs at a time; a writer
//! that waited for one that failed gets its error rather than trying again
//! at once, so a write never waits for two timeouts of a store that is
//! down.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Control, leadership, load_state};
use crate::store::StoreError;

/// Reloads under way and done.
#[derive(Debug, Default)]
pub(crate) struct Reloads {
    /// Held while one runs; the last one's failure, if it failed.
    running: Mutex<Option<StoreError>>,
    /// Reloads finished.
    done: AtomicU64,
}

impl Control {
    /// Reloads the whole state from the store, and pushes the nodes whose
    /// desired state changed.
    pub fn reload(&self) -> Result<(), StoreError> {
        let mut last = self.reloads.running.lock().expect("lock");
        let changed = self.reload_held(&mut last)?;
        drop(last);
        self.push(&changed);
        Ok(())
    }

    /// Reloads the state if it is stale: the nodes whose desired state
    /// changed (for the caller to push once it released the state lock).
    pub(super) fn reload_if_stale(&self) -> Result<BTreeSet<String>, StoreError> {
        let before = self.reloads.done.load(Ordering::SeqCst);
        let mut last = self.reloads.running.lock().expect("lock");
        if !self.lead.is_stale() {
            return Ok(BTreeSet::new());
        }
        if self.reloads.done.load(Ordering::SeqCst) != before
            && let Some(e) = last.as_ref()
        {
            // One failed while this waited for it.
            return Err(e.duplicate());
        }
        self.reload_held(&mut last)
    }

    /// Reloads, `running` held.
    fn reload_held(&self, last: &mut Option<StoreError>) -> Result<BTreeSet<String>, StoreError> {
        {
            let _state = self.state.lock().expect("state lock");
            self.lead.mark_stale();
            // What is queued is written first (or fails): the load then
            // has everything the state will ever have written.
            self.settle_commits();
        }
        let loaded = load_state(self.store.as_ref());
        self.reloads.done.fetch_add(1, Ordering::SeqCst);
        let (mut fresh, revision) = match loaded {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "reload the state");
                *last = Some(e.duplicate());
                return Err(e);
            }
        };
        *last = None;
        let mut state = self.state.lock().expect("state lock");
        // Nothing changed it meanwhile: it was stale.
        fresh.version = state.version + 1;
        let before = std::mem::replace(&mut *state, fresh);
        self.lead.loaded(revision);
        Ok(leadership::changed_nodes(&before, &state))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use crate::config::{FileConfig, GatewayConfig, Overrides};
    use crate::control::{Control, ControlError};
    use crate::store::MemStore;
    use crate::store::{Batch, Loaded, Revision, Store, StoreError};

    /// A store that can stop answering, and counts its loads.
    #[derive(Debug, Default)]
    struct Outage {
        inner: MemStore,
        down: AtomicBool,
        loads: AtomicUsize,
    }

    impl Outage {
        fn check(&self, what: &str) -> Result<(), StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable {
                    what: what.into(),
                    source: "no quorum".into(),
                });
            }
            Ok(())
        }
    }

    impl Store for Outage {
        fn load(&self) -> Result<Loaded, StoreError> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            self.check("load")?;
            self.inner.load()
        }
        fn commit(&self, batch: &Batch) -> Result<Revision, StoreError> {
            self.check("commit")?;
            self.inner.commit(batch)
        }
    }

    fn submit(c: &Control, name: &str) -> Result<(), ControlError> {
        let spec = skiff_proto::parse_workloads(
            &format!("name: {name}\nimage: busybox\nresources: {{cpu: 10m, memory: 8Mi}}\n"),
            skiff_proto::Format::Yaml,
        )
        .unwrap()
        .remove(0);
        c.create_workload(spec).map(|_| ())
    }

    fn names(c: &Control) -> Vec<String> {
        c.read(|s| s.workloads.keys().cloned().collect())
    }

    #[test]
    fn a_write_the_store_did_not_answer_waits_for_one_call_and_the_next_write_reloads() {
        let store = Arc::new(Outage::default());
        let config = GatewayConfig::resolve(FileConfig::default(), &Overrides::default()).unwrap();
        let c = Control::open(config, Arc::clone(&store) as Arc<dyn Store>).unwrap();
        submit(&c, "kept").unwrap();
        let loads = store.loads.load(Ordering::SeqCst);

        store.down.store(true, Ordering::SeqCst);
        let e = submit(&c, "lost").unwrap_err();
        assert!(e.to_string().contains("state store unavailable"), "{e}");
        // Answered after the commit alone: the store was not read again.
        assert_eq!(store.loads.load(Ordering::SeqCst), loads);
        assert!(c.is_stale());
        // Still down: the next write tries one reload, and is refused.
        let e = submit(&c, "again").unwrap_err();
        assert!(
            e.to_string().contains("state store unavailable: load"),
            "{e}"
        );
        assert_eq!(store.loads.load(Ordering::SeqCst), loads + 1);

        // Back: the next write reloads first; what was refused is gone.
        store.down.store(false, Ordering::SeqCst);
        submit(&c, "after").unwrap();
        assert_eq!(store.loads.load(Ordering::SeqCst), loads + 2);
        assert!(!c.is_stale());
        assert_eq!(names(&c), ["after", "kept"]);
        c.reload().unwrap();
        assert_eq!(names(&c), ["after", "kept"]);
    }
}
