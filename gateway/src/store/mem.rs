//! A store in memory, for unit tests: the same contract, nothing on disk.

use std::sync::Mutex;

use super::{Batch, Loaded, Revision, Snapshot, Store, StoreError};

#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<(Snapshot, Revision)>,
}

impl Store for MemStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let g = self.inner.lock().expect("lock");
        Ok(Loaded {
            records: g.0.clone(),
            revision: g.1,
        })
    }

    fn commit(&self, batch: &Batch) -> Result<Revision, StoreError> {
        let mut g = self.inner.lock().expect("lock");
        for (k, key, v) in &batch.puts {
            g.0.entry(*k).or_default().insert(key.clone(), v.clone());
        }
        for (k, key) in &batch.deletes {
            if let Some(m) = g.0.get_mut(k) {
                m.remove(key);
            }
        }
        g.1 += 1;
        Ok(g.1)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_batches() {
        super::super::contract::keeps_batches(&super::MemStore::default());
    }
}
