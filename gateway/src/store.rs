//! Durable state. The gateway keeps its whole state in memory and writes
//! every change through a [`Store`] before it answers: a batch of puts and
//! deletes, committed atomically and durably. [`RedbStore`] (an embedded,
//! crash-safe database file) is the default; the trait is what a
//! distributed backend (etcd) implements.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// The kinds of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Workload,
    Allocation,
    Node,
    JoinToken,
    ApiToken,
    Meta,
    /// Cloud VMs launched and not joined yet.
    Vm,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Workload,
        Kind::Allocation,
        Kind::Node,
        Kind::JoinToken,
        Kind::ApiToken,
        Kind::Meta,
        Kind::Vm,
    ];

    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(match self {
            Kind::Workload => "workloads",
            Kind::Allocation => "allocations",
            Kind::Node => "nodes",
            Kind::JoinToken => "join_tokens",
            Kind::ApiToken => "api_tokens",
            Kind::Meta => "meta",
            Kind::Vm => "vms",
        })
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
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

fn e(x: impl std::fmt::Display) -> StoreError {
    StoreError(x.to_string())
}

/// Every record, by kind and key.
pub type Snapshot = BTreeMap<Kind, BTreeMap<String, Vec<u8>>>;

/// Durable state behind the gateway.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Everything, at start.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Applies the batch atomically; durable when it returns.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
}

/// The embedded default: one redb file.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|x| e(format!("{}: {x}", path.display())))?;
        let tx = db.begin_write().map_err(e)?;
        for k in Kind::ALL {
            tx.open_table(k.table()).map_err(e)?;
        }
        tx.commit().map_err(e)?;
        Ok(Self { db })
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let tx = self.db.begin_read().map_err(e)?;
        let mut out = Snapshot::new();
        for k in Kind::ALL {
            let t = tx.open_table(k.table()).map_err(e)?;
            let map = out.entry(k).or_default();
            for row in t.iter().map_err(e)? {
                let (key, value) = row.map_err(e)?;
                map.insert(key.value().to_string(), value.value().to_vec());
            }
        }
        Ok(out)
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().map_err(e)?;
        if batch.soft {
            tx.set_durability(redb::Durability::None).map_err(e)?;
        }
        {
            for (k, key, value) in &batch.puts {
                tx.open_table(k.table())
                    .map_err(e)?
                    .insert(key.as_str(), value.as_slice())
                    .map_err(e)?;
            }
            for (k, key) in &batch.deletes {
                tx.open_table(k.table())
                    .map_err(e)?
                    .remove(key.as_str())
                    .map_err(e)?;
            }
        }
        tx.commit().map_err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_kept_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            let mut b = Batch::default();
            b.put(Kind::Workload, "web", &serde_json::json!({"replicas": 3}));
            b.put(Kind::Node, "n1", &"x");
            s.commit(&b).unwrap();
            let mut b = Batch::default();
            b.delete(Kind::Node, "n1");
            s.commit(&b).unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        let all = s.load().unwrap();
        assert_eq!(all[&Kind::Workload].len(), 1);
        assert!(all[&Kind::Node].is_empty());
        let v: serde_json::Value = serde_json::from_slice(&all[&Kind::Workload]["web"]).unwrap();
        assert_eq!(v["replicas"], 3);
    }
}
