//! Durable state. The gateway keeps its whole state in memory and writes
//! every change through a [`Store`] before it answers: a batch of puts and
//! deletes, committed atomically and durably. [`RedbStore`] (an embedded,
//! crash-safe database file) is the default; `EtcdStore` (feature `etcd`)
//! keeps it on an etcd cluster that several gateways share; [`MemStore`]
//! is for unit tests.

use std::collections::BTreeMap;

mod mem;
mod redb;

#[cfg(feature = "etcd")]
pub mod etcd;

pub use self::mem::MemStore;
pub use self::redb::RedbStore;

/// The kinds of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Workload,
    Allocation,
    Node,
    JoinToken,
    ApiToken,
    /// The store's own bookkeeping, not the fleet's state (over etcd, the
    /// mark a new leader commits to know its watch caught up): not
    /// exported.
    Meta,
    /// Cloud VMs launched and not joined yet.
    Vm,
    /// Local volumes and the nodes that hold them.
    Volume,
    /// Secrets, their data sealed.
    Secret,
    /// Namespaces, with their quotas and policies.
    Namespace,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Workload,
        Kind::Allocation,
        Kind::Node,
        Kind::JoinToken,
        Kind::ApiToken,
        Kind::Meta,
        Kind::Vm,
        Kind::Volume,
        Kind::Secret,
        Kind::Namespace,
    ];

    /// Its name in a store (a redb table, an etcd key segment, an export).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Workload => "workloads",
            Kind::Allocation => "allocations",
            Kind::Node => "nodes",
            Kind::JoinToken => "join_tokens",
            Kind::ApiToken => "api_tokens",
            Kind::Meta => "meta",
            Kind::Vm => "vms",
            Kind::Volume => "volumes",
            Kind::Secret => "secrets",
            Kind::Namespace => "namespaces",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Changes committed together.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub puts: Vec<(Kind, String, Vec<u8>)>,
    pub deletes: Vec<(Kind, String)>,
    /// Soft state (what an agent re-sends on reconnect): committed
    /// atomically but not waited onto disk; it becomes durable with the
    /// next durable commit.
    pub soft: bool,
}

impl Batch {
    pub fn put<T: serde::Serialize>(&mut self, kind: Kind, key: &str, value: &T) {
        let bytes = serde_json::to_vec(value).expect("records serialize");
        self.puts.push((kind, key.to_string(), bytes));
    }

    pub fn delete(&mut self, kind: Kind, key: &str) {
        self.deletes.push((kind, key.to_string()));
    }

    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.puts.len() + self.deletes.len()
    }
}

type Source = Box<dyn std::error::Error + Send + Sync>;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached, or has no quorum: nothing is known to
    /// be written. Writes are answered `503 state store unavailable`.
    #[error("state store unavailable: {what}: {source}")]
    Unavailable { what: String, source: Source },
    /// This gateway does not lead the fleet (or no longer does): the
    /// commit was refused by the store, nothing was written.
    #[error("this gateway does not lead the fleet: nothing was written")]
    NotLeader,
    /// Someone else holds what this needs (a one-off import while a
    /// gateway runs).
    #[error("state store in use: {0}")]
    InUse(String),
    /// The embedded database failed.
    #[error("state store {what}: {source}")]
    Backend { what: String, source: Source },
    /// A record that does not decode.
    #[error("state store record {kind:?} {key}: {source}")]
    Corrupt {
        kind: Kind,
        key: String,
        source: serde_json::Error,
    },
}

impl StoreError {
    pub(crate) fn backend(what: impl Into<String>, source: impl Into<Source>) -> Self {
        StoreError::Backend {
            what: what.into(),
            source: source.into(),
        }
    }

    /// The same failure, for each of several callers that wait on one
    /// call (the writers of a failed group commit, the writers waiting on
    /// a failed reload): the source is kept as its message.
    pub(crate) fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Unavailable { what, source } => StoreError::Unavailable {
                what: what.clone(),
                source: source.to_string().into(),
            },
            StoreError::NotLeader => StoreError::NotLeader,
            StoreError::InUse(s) => StoreError::InUse(s.clone()),
            StoreError::Backend { what, source } => StoreError::Backend {
                what: what.clone(),
                source: source.to_string().into(),
            },
            StoreError::Corrupt { kind, key, source } => StoreError::Backend {
                what: format!("record {kind:?} {key}"),
                source: source.to_string().into(),
            },
        }
    }
}

/// Every record, by kind and key.
pub type Snapshot = BTreeMap<Kind, BTreeMap<String, Vec<u8>>>;

/// A store's revision: it grows with every commit (etcd's revision; a
/// counter elsewhere). Followers apply changes after the one they loaded.
pub type Revision = i64;

/// Everything, as of one revision.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Snapshot,
    pub revision: Revision,
}

/// Durable state behind the gateway.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Everything, at start (and when a follower resynchronizes).
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Applies the batch atomically; durable when it returns. Its
    /// revision.
    fn commit(&self, batch: &Batch) -> Result<Revision, StoreError>;
    /// How many operations one commit takes in one transaction: the
    /// group commit merges batches up to it.
    fn max_batch_ops(&self) -> usize {
        usize::MAX
    }
}

#[cfg(test)]
pub(crate) mod contract {
    //! What every store must do, run against each.
    use super::*;

    pub fn keeps_batches(s: &dyn Store) {
        let mut b = Batch::default();
        b.put(Kind::Workload, "web", &serde_json::json!({"replicas": 3}));
        b.put(Kind::Node, "n1", &"x");
        let r1 = s.commit(&b).unwrap();
        let mut b = Batch::default();
        b.delete(Kind::Node, "n1");
        let r2 = s.commit(&b).unwrap();
        assert!(r2 > r1, "revisions grow: {r1} then {r2}");
        let all = s.load().unwrap();
        assert!(all.revision >= r2);
        assert_eq!(all.records[&Kind::Workload].len(), 1);
        assert!(all.records.get(&Kind::Node).is_none_or(|m| m.is_empty()));
        let v: serde_json::Value =
            serde_json::from_slice(&all.records[&Kind::Workload]["web"]).unwrap();
        assert_eq!(v["replicas"], 3);
    }
}
