//! Group commit. A writer changes the state under the state lock and
//! queues the batch of what it changed; it then releases the lock and
//! waits until its batch is durable. The first waiter to find no commit
//! under way commits every queued batch as one (up to the store's
//! [`Store::max_batch_ops`]) and tells the others, as databases do with
//! their write-ahead log. On etcd, where one transaction takes a network
//! round trip and a disk sync on a quorum, a storm of joins costs one
//! transaction per round trip instead of one per join.
//!
//! A batch is built on the state every batch queued before it left: when
//! a commit fails, every batch queued after it fails too (their writers
//! are told, nothing of theirs is written) and the state is marked stale,
//! to be reloaded before anyone writes again. Writers that read the state
//! before the failure ([`Commits::epoch`]) cannot queue after it.
//!
//! Nothing here takes the state lock, so a writer holding it may wait for
//! the commit under way ([`Commits::wait_idle`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::store::{Batch, Kind, Revision, Store, StoreError};

/// The queue of batches and what became of them.
#[derive(Default)]
pub(crate) struct Commits {
    queue: Mutex<Queue>,
    changed: Condvar,
}

#[derive(Default)]
struct Queue {
    /// Number of the last batch queued (the first is 1).
    last: u64,
    pending: VecDeque<(u64, Batch)>,
    /// A commit is under way (its batches are out of `pending`).
    committing: bool,
    /// Every batch up to this one is durable, unless it failed.
    committed: u64,
    /// Batches that failed, and the writers still to be told.
    failures: Vec<Failure>,
    /// Bumped by every failure: a writer that read the state before it
    /// built on what was not written.
    epoch: u64,
}

struct Failure {
    from: u64,
    to: u64,
    untold: u64,
    error: StoreError,
}

/// A queued batch: [`Commits::wait`] for it.
#[must_use]
pub(crate) struct Ticket(u64);

impl std::fmt::Debug for Commits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Commits");
        if let Ok(q) = self.queue.try_lock() {
            d.field("last", &q.last)
                .field("committed", &q.committed)
                .field("pending", &q.pending.len());
        }
        d.finish_non_exhaustive()
    }
}

impl Commits {
    /// Read under the state lock before the state is read for a write.
    pub(crate) fn epoch(&self) -> u64 {
        self.queue.lock().expect("commit queue").epoch
    }

    /// Queues `batch`, built on the state as of `epoch`. Refused if a
    /// commit failed since: that state held what was never written. An
    /// empty batch (a change that changed nothing) waits for what is
    /// queued or being committed, which it may have read; alone, it has
    /// nothing to wait for (`None`).
    pub(crate) fn enqueue(&self, epoch: u64, batch: Batch) -> Result<Option<Ticket>, StoreError> {
        let mut q = self.queue.lock().expect("commit queue");
        if q.epoch != epoch {
            return Err(StoreError::Unavailable {
                what: "commit".into(),
                source: "an earlier commit failed while this change was made".into(),
            });
        }
        if batch.is_empty() && q.pending.is_empty() && !q.committing {
            return Ok(None);
        }
        q.last += 1;
        let seq = q.last;
        q.pending.push_back((seq, batch));
        Ok(Some(Ticket(seq)))
    }

    /// Waits until the ticket's batch is durable or failed. Commits the
    /// queue itself when no one else is. `durable` runs once per
    /// successful commit with its revision, before any of its writers
    /// returns; `failed` once per failed commit.
    pub(crate) fn wait(
        &self,
        ticket: Ticket,
        store: &dyn Store,
        durable: impl Fn(Revision),
        failed: impl Fn(&StoreError),
    ) -> Result<(), StoreError> {
        let seq = ticket.0;
        let mut q = self.queue.lock().expect("commit queue");
        loop {
            if let Some(i) = q
                .failures
                .iter()
                .position(|f| (f.from..=f.to).contains(&seq))
            {
                let f = &mut q.failures[i];
                f.untold -= 1;
                let e = f.error.duplicate();
                if f.untold == 0 {
                    q.failures.swap_remove(i);
                }
                return Err(e);
            }
            if q.committed >= seq {
                return Ok(());
            }
            q = if q.committing {
                self.changed.wait(q).expect("commit queue")
            } else {
                self.commit_group(q, store, &durable, &failed)
            };
        }
    }

    /// Waits until no commit is under way and nothing is queued: the store
    /// then holds every batch that will be written (before a reload). Only
    /// a writer holding the state lock calls this, so nothing new is
    /// queued meanwhile; what is still queued is committed here (its
    /// writers learn the outcome as usual).
    pub(crate) fn wait_idle(
        &self,
        store: &dyn Store,
        durable: impl Fn(Revision),
        failed: impl Fn(&StoreError),
    ) {
        let mut q = self.queue.lock().expect("commit queue");
        loop {
            if q.committing {
                q = self.changed.wait(q).expect("commit queue");
            } else if q.pending.is_empty() {
                return;
            } else {
                q = self.commit_group(q, store, &durable, &failed);
            }
        }
    }

    /// Commits the oldest queued batches as one (the lock is released
    /// meanwhile) and records the outcome.
    fn commit_group<'a>(
        &'a self,
        mut q: MutexGuard<'a, Queue>,
        store: &dyn Store,
        durable: &impl Fn(Revision),
        failed: &impl Fn(&StoreError),
    ) -> MutexGuard<'a, Queue> {
        let group = take_group(&mut q.pending, store.max_batch_ops());
        let (Some(&(from, _)), Some(&(to, _))) = (group.first(), group.last()) else {
            return q;
        };
        q.committing = true;
        drop(q);
        let merged = merge(group.into_iter().map(|(_, b)| b));
        // Nothing but changes that changed nothing: no store call.
        let result = (!merged.is_empty()).then(|| store.commit(&merged));
        let mut q = self.queue.lock().expect("commit queue");
        q.committing = false;
        match result.transpose() {
            Ok(revision) => {
                if let Some(revision) = revision {
                    durable(revision);
                }
                q.committed = to;
            }
            Err(e) => {
                failed(&e);
                // Everything queued since was built on this.
                let to = q.last;
                q.pending.clear();
                q.epoch += 1;
                q.failures.push(Failure {
                    from,
                    to,
                    untold: to - from + 1,
                    error: e,
                });
            }
        }
        self.changed.notify_all();
        q
    }

    /// Fails every batch queued and not yet being committed (a writer is
    /// about to reload the state they were built on).
    pub(crate) fn fail_pending(&self, error: StoreError) {
        let mut q = self.queue.lock().expect("commit queue");
        let (Some(&(from, _)), to) = (q.pending.front(), q.last) else {
            return;
        };
        q.pending.clear();
        q.failures.push(Failure {
            from,
            to,
            untold: to - from + 1,
            error,
        });
        self.changed.notify_all();
    }
}

/// The oldest queued batches, as many as fit in `max_ops` operations
/// (always at least one).
fn take_group(pending: &mut VecDeque<(u64, Batch)>, max_ops: usize) -> Vec<(u64, Batch)> {
    let mut group = Vec::new();
    let mut ops = 0;
    while let Some((_, b)) = pending.front() {
        if !group.is_empty() && ops + b.len() > max_ops {
            break;
        }
        ops += b.len();
        group.extend(pending.pop_front());
    }
    group
}

/// One batch doing what `batches` do one after the other: each record's
/// last change wins (a store may refuse two changes of one key in one
/// transaction, as etcd does). Within a batch, puts come before deletes,
/// as every store applies them. Soft only if every batch is.
pub(crate) fn merge(batches: impl IntoIterator<Item = Batch>) -> Batch {
    let mut last: BTreeMap<(Kind, String), Option<Vec<u8>>> = BTreeMap::new();
    let mut soft = true;
    for b in batches {
        soft &= b.soft;
        for (k, key, v) in b.puts {
            last.insert((k, key), Some(v));
        }
        for (k, key) in b.deletes {
            last.insert((k, key), None);
        }
    }
    let mut out = Batch {
        soft,
        ..Batch::default()
    };
    for ((k, key), v) in last {
        match v {
            Some(v) => out.puts.push((k, key, v)),
            None => out.deletes.push((k, key)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::store::MemStore;

    /// A store whose commits wait for the test to let each one through,
    /// and which fails the ones the test says.
    #[derive(Debug)]
    struct Gated {
        inner: MemStore,
        entered: Mutex<mpsc::Sender<usize>>,
        release: Mutex<mpsc::Receiver<bool>>,
        commits: Mutex<Vec<usize>>,
    }

    impl Store for Gated {
        fn load(&self) -> Result<crate::store::Loaded, StoreError> {
            self.inner.load()
        }
        fn commit(&self, batch: &Batch) -> Result<Revision, StoreError> {
            self.entered.lock().unwrap().send(batch.len()).unwrap();
            let ok = self.release.lock().unwrap().recv().unwrap();
            if !ok {
                return Err(StoreError::Unavailable {
                    what: "commit".into(),
                    source: "no quorum".into(),
                });
            }
            self.commits.lock().unwrap().push(batch.len());
            self.inner.commit(batch)
        }
        fn max_batch_ops(&self) -> usize {
            3
        }
    }

    fn gated() -> (Arc<Gated>, mpsc::Receiver<usize>, mpsc::Sender<bool>) {
        let (etx, erx) = mpsc::channel();
        let (rtx, rrx) = mpsc::channel();
        let store = Gated {
            inner: MemStore::default(),
            entered: Mutex::new(etx),
            release: Mutex::new(rrx),
            commits: Mutex::new(Vec::new()),
        };
        (Arc::new(store), erx, rtx)
    }

    fn put(key: &str) -> Batch {
        let mut b = Batch::default();
        b.put(Kind::Node, key, &key);
        b
    }

    fn waiter(
        c: &Arc<Commits>,
        store: &Arc<Gated>,
        t: Ticket,
    ) -> std::thread::JoinHandle<Result<(), StoreError>> {
        let (c, store) = (c.clone(), store.clone());
        std::thread::spawn(move || c.wait(t, store.as_ref(), |_| {}, |_| {}))
    }

    #[test]
    fn batches_queued_during_a_commit_go_together_in_the_next() {
        let (store, entered, release) = gated();
        let c = Arc::new(Commits::default());
        let e = c.epoch();
        let first = waiter(&c, &store, c.enqueue(e, put("a")).unwrap().unwrap());
        assert_eq!(entered.recv().unwrap(), 1, "the first batch commits alone");
        // Queued while it commits: b, c and d, e (two ops each... one op
        // each here), at most 3 ops per commit.
        let rest: Vec<_> = ["b", "c", "d", "e"]
            .iter()
            .map(|k| c.enqueue(e, put(k)).unwrap().unwrap())
            .collect();
        let rest: Vec<_> = rest.into_iter().map(|t| waiter(&c, &store, t)).collect();
        release.send(true).unwrap();
        assert_eq!(entered.recv().unwrap(), 3, "b, c, d in one commit");
        release.send(true).unwrap();
        assert_eq!(entered.recv().unwrap(), 1, "then e");
        release.send(true).unwrap();
        first.join().unwrap().unwrap();
        for w in rest {
            w.join().unwrap().unwrap();
        }
        assert_eq!(*store.commits.lock().unwrap(), vec![1, 3, 1]);
        let all = store.load().unwrap();
        assert_eq!(all.records[&Kind::Node].len(), 5);
    }

    #[test]
    fn a_failed_commit_fails_everything_queued_after_it_and_stale_writers() {
        let (store, entered, release) = gated();
        let c = Arc::new(Commits::default());
        let e = c.epoch();
        let first = waiter(&c, &store, c.enqueue(e, put("a")).unwrap().unwrap());
        entered.recv().unwrap();
        let second = waiter(&c, &store, c.enqueue(e, put("b")).unwrap().unwrap());
        release.send(false).unwrap();
        let err = first.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("no quorum"), "{err}");
        let err = second.join().unwrap().unwrap_err();
        assert!(
            matches!(err, StoreError::Unavailable { .. }),
            "built on the failed one: {err}"
        );
        // A writer that read the state before the failure cannot queue.
        let err = c.enqueue(e, put("c")).err().expect("refused");
        assert!(err.to_string().contains("earlier commit failed"), "{err}");
        // One that read it after does, and commits.
        let third = waiter(&c, &store, c.enqueue(c.epoch(), put("c")).unwrap().unwrap());
        entered.recv().unwrap();
        release.send(true).unwrap();
        third.join().unwrap().unwrap();
        assert_eq!(*store.commits.lock().unwrap(), vec![1]);
        let nodes = &store.load().unwrap().records[&Kind::Node];
        assert_eq!(nodes.keys().collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn wait_idle_commits_what_is_queued_and_its_writer_learns_it() {
        let (store, entered, release) = gated();
        let c = Arc::new(Commits::default());
        let t = c.enqueue(c.epoch(), put("a")).unwrap().unwrap();
        let idle = {
            let (c, store) = (c.clone(), store.clone());
            std::thread::spawn(move || c.wait_idle(store.as_ref(), |_| {}, |_| {}))
        };
        entered.recv().unwrap();
        release.send(true).unwrap();
        idle.join().unwrap();
        assert_eq!(store.load().unwrap().records[&Kind::Node].len(), 1);
        c.wait(t, store.as_ref(), |_| {}, |_| {}).unwrap();
    }

    #[test]
    fn fail_pending_fails_the_queued_batches_only() {
        let (store, _entered, _release) = gated();
        let c = Commits::default();
        let t = c.enqueue(c.epoch(), put("a")).unwrap().unwrap();
        c.fail_pending(StoreError::InUse("reloaded".into()));
        let err = c.wait(t, store.as_ref(), |_| {}, |_| {}).unwrap_err();
        assert!(matches!(err, StoreError::InUse(_)), "{err}");
        assert!(store.commits.lock().unwrap().is_empty());
    }

    #[test]
    fn a_change_that_changed_nothing_waits_only_for_what_it_may_have_read() {
        let (store, entered, release) = gated();
        let c = Arc::new(Commits::default());
        let e = c.epoch();
        assert!(c.enqueue(e, Batch::default()).unwrap().is_none(), "alone");
        let first = waiter(&c, &store, c.enqueue(e, put("a")).unwrap().unwrap());
        entered.recv().unwrap();
        // Queued behind a commit under way: it waits for it, and no store
        // call is made for it.
        let empty = c.enqueue(e, Batch::default()).unwrap().expect("queued");
        let empty = waiter(&c, &store, empty);
        release.send(true).unwrap();
        first.join().unwrap().unwrap();
        empty.join().unwrap().unwrap();
        assert_eq!(*store.commits.lock().unwrap(), vec![1]);
    }

    #[test]
    fn merged_batches_keep_each_records_last_change() {
        let mut a = put("x");
        a.put(Kind::Node, "y", &1);
        a.delete(Kind::Node, "y");
        let mut b = Batch::default();
        b.delete(Kind::Node, "x");
        b.put(Kind::Node, "z", &2);
        let mut c = put("x");
        c.soft = true;
        let m = merge([a, b, c]);
        let puts: Vec<&str> = m.puts.iter().map(|(_, k, _)| k.as_str()).collect();
        let deletes: Vec<&str> = m.deletes.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(puts, ["x", "z"]);
        assert_eq!(deletes, ["y"]);
        assert!(!m.soft, "durable when any batch is");
        let mut soft = put("s");
        soft.soft = true;
        assert!(merge([soft]).soft);
    }
}
