//! The container index in redb: one record per container.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

use skiff_proto::{NetworkMode, RestartPolicy};

use crate::net::nat::PortMapping;

const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Created,
    Running,
    Restarting,
    Exited,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Created => "created",
            State::Running => "running",
            State::Restarting => "restarting",
            State::Exited => "exited",
        })
    }
}

/// What `ps` and `inspect` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub image: String,
    pub created_ms: i64,
    pub state: State,
    pub pid: Option<i32>,
    pub shim_pid: Option<i32>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub exit_code: Option<i32>,
    /// `exited`, `killed`, `oom-killed`, `failed-to-start`, `lost`.
    pub reason: Option<String>,
    pub message: Option<String>,
    pub restarts: u32,
    pub restart: RestartPolicy,
    pub auto_remove: bool,
    /// `bridge`, `host` or `none`.
    #[serde(default = "default_network")]
    pub network: NetworkMode,
    /// The container's address on the node bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// Published ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn default_network() -> NetworkMode {
    NetworkMode::None
}

/// The database.
#[derive(Debug)]
pub struct Records {
    db: Database,
}

fn e(x: impl std::fmt::Display) -> String {
    format!("container records: {x}")
}

impl Records {
    pub fn open(path: &Path) -> Result<Self, String> {
        let db = crate::open_db(path).map_err(e)?;
        let tx = db.begin_write().map_err(e)?;
        tx.open_table(CONTAINERS).map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(Self { db })
    }

    /// Stores a record; `durable` waits for the disk (creation), other
    /// updates are re-derived from the container directory after a crash.
    pub fn put(&self, r: &ContainerRecord, durable: bool) -> Result<(), String> {
        let v = serde_json::to_vec(r).map_err(e)?;
        let mut tx = self.db.begin_write().map_err(e)?;
        if !durable {
            tx.set_durability(Durability::None).map_err(e)?;
        }
        tx.open_table(CONTAINERS)
            .map_err(e)?
            .insert(r.id.as_str(), v.as_slice())
            .map_err(e)?;
        tx.commit().map_err(e)
    }

    /// Forgets a record. Not waited for: after a crash a record whose
    /// directory is gone is dropped at adoption.
    pub fn remove(&self, id: &str) -> Result<(), String> {
        let mut tx = self.db.begin_write().map_err(e)?;
        tx.set_durability(Durability::None).map_err(e)?;
        tx.open_table(CONTAINERS)
            .map_err(e)?
            .remove(id)
            .map_err(e)?;
        tx.commit().map_err(e)
    }

    pub fn all(&self) -> Result<Vec<ContainerRecord>, String> {
        let tx = self.db.begin_read().map_err(e)?;
        let t = tx.open_table(CONTAINERS).map_err(e)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(e)? {
            let (_, v) = row.map_err(e)?;
            out.push(serde_json::from_slice(v.value()).map_err(e)?);
        }
        Ok(out)
    }
}
