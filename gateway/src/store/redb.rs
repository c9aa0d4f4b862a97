//! The embedded default: one redb file, nothing else to run.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Batch, Kind, Loaded, Revision, Snapshot, Store, StoreError};

fn table(k: Kind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(k.name())
}

fn e(what: &str) -> impl FnOnce(redb::Error) -> StoreError + '_ {
    move |x| StoreError::backend(what, x)
}

#[derive(Debug)]
pub struct RedbStore {
    db: Database,
    /// Commits since it was opened (a revision for followers; there are
    /// none with this store).
    revision: AtomicI64,
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)
            .map_err(|x| StoreError::backend(format!("open {}", path.display()), x))?;
        let tx = db.begin_write().map_err(|x| e("begin")(x.into()))?;
        for k in Kind::ALL {
            tx.open_table(table(k))
                .map_err(|x| e("open table")(x.into()))?;
        }
        tx.commit().map_err(|x| e("commit")(x.into()))?;
        Ok(Self {
            db,
            revision: AtomicI64::new(0),
        })
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let tx = self.db.begin_read().map_err(|x| e("read")(x.into()))?;
        let mut out = Snapshot::new();
        for k in Kind::ALL {
            let t = tx
                .open_table(table(k))
                .map_err(|x| e("open table")(x.into()))?;
            let map = out.entry(k).or_default();
            for row in t.iter().map_err(|x| e("read")(x.into()))? {
                let (key, value) = row.map_err(|x| e("read")(x.into()))?;
                map.insert(key.value().to_string(), value.value().to_vec());
            }
        }
        Ok(Loaded {
            records: out,
            revision: self.revision.load(Ordering::SeqCst),
        })
    }

    fn commit(&self, batch: &Batch) -> Result<Revision, StoreError> {
        if batch.is_empty() {
            return Ok(self.revision.load(Ordering::SeqCst));
        }
        let mut tx = self.db.begin_write().map_err(|x| e("begin")(x.into()))?;
        if batch.soft {
            tx.set_durability(redb::Durability::None)
                .map_err(|x| StoreError::backend("durability", x))?;
        }
        {
            for (k, key, value) in &batch.puts {
                tx.open_table(table(*k))
                    .map_err(|x| e("open table")(x.into()))?
                    .insert(key.as_str(), value.as_slice())
                    .map_err(|x| e("insert")(x.into()))?;
            }
            for (k, key) in &batch.deletes {
                tx.open_table(table(*k))
                    .map_err(|x| e("open table")(x.into()))?
                    .remove(key.as_str())
                    .map_err(|x| e("remove")(x.into()))?;
            }
        }
        tx.commit().map_err(|x| e("commit")(x.into()))?;
        Ok(self.revision.fetch_add(1, Ordering::SeqCst) + 1)
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
            super::super::contract::keeps_batches(&s);
        }
        let s = RedbStore::open(&path).unwrap();
        let all = s.load().unwrap();
        assert_eq!(all.records[&Kind::Workload].len(), 1);
        assert!(all.records[&Kind::Node].is_empty());
    }
}
