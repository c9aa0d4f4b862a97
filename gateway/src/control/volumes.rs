//! Local volumes as the gateway keeps them: one record per volume and
//! replica slot (`WORKLOAD.VOLUME.N`), naming the node whose agent holds
//! its data. A replica of slot N is pinned to that node (see
//! `reconcile/volumes.rs`); removing a workload keeps its records unless
//! asked; `DELETE /v1/volumes/{id}` marks one for removal, the node's
//! desired state asks its agent to delete the data, and the record goes
//! once the agent no longer reports it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Control, ControlError, State};
use crate::store::{Batch, Kind};

/// A local volume and the node that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeRecord {
    /// `WORKLOAD.VOLUME.N`: also its directory's name on the node.
    pub id: String,
    pub workload: String,
    /// Its name in the workload's `volumes`.
    pub volume: String,
    /// The replica slot it belongs to.
    pub instance: u32,
    pub node: String,
    pub site: String,
    pub created_ms: i64,
    /// Asked to be removed: the node's agent deletes the data, then the
    /// record goes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removing: bool,
}

/// The id of a workload's local volume for replica slot `instance`.
pub fn volume_id(workload: &str, volume: &str, instance: u32) -> String {
    format!("{workload}.{volume}.{instance}")
}

/// The ids of the volumes `node`'s agent is to delete: those being
/// removed, and its stale copies of volumes recreated elsewhere.
pub(crate) fn to_remove(s: &State, node: &str) -> Vec<String> {
    let stale = s.nodes.get(node).map(|n| n.stale_volumes.as_slice());
    s.volumes
        .values()
        .filter(|v| v.removing && v.node == node)
        .map(|v| v.id.clone())
        .chain(stale.unwrap_or_default().iter().cloned())
        .collect()
}

/// A node reported the local volumes it holds: those whose record names
/// another node (their slot was recreated there while this one was down)
/// are stale here, and its agent is told to delete them. A volume with no
/// record at all is left alone: the gateway may have lost it (a restored
/// backup), and data is not deleted on a guess. Whether the node changed.
pub(crate) fn note_stale(s: &mut State, b: &mut Batch, node: &str, held: &[String]) -> bool {
    let stale: Vec<String> = held
        .iter()
        .filter(|id| s.volumes.get(id.as_str()).is_some_and(|v| v.node != node))
        .cloned()
        .collect();
    let Some(n) = s.nodes.get_mut(node) else {
        return false;
    };
    if n.stale_volumes == stale {
        return false;
    }
    n.stale_volumes = stale;
    n.generation += 1;
    b.put(Kind::Node, node, n);
    true
}

/// A node reported the local volumes it holds: records being removed
/// that it no longer holds go. Whether any went.
pub(crate) fn forget_removed(s: &mut State, b: &mut Batch, node: &str, held: &[String]) -> bool {
    let held: BTreeSet<&str> = held.iter().map(String::as_str).collect();
    let gone: Vec<String> = s
        .volumes
        .values()
        .filter(|v| v.removing && v.node == node && !held.contains(v.id.as_str()))
        .map(|v| v.id.clone())
        .collect();
    for id in &gone {
        s.volumes.remove(id);
        b.delete(Kind::Volume, id);
    }
    !gone.is_empty()
}

/// Marks volume `id` for removal (or forgets it at once when its node is
/// gone); the node to tell, if any.
fn mark_removing(s: &mut State, b: &mut Batch, id: &str) -> Option<String> {
    let v = s.volumes.get_mut(id)?;
    if !s.nodes.contains_key(&v.node) {
        s.volumes.remove(id);
        b.delete(Kind::Volume, id);
        return None;
    }
    v.removing = true;
    b.put(Kind::Volume, id, v);
    let node = v.node.clone();
    let n = s.nodes.get_mut(&node).expect("checked");
    n.generation += 1;
    b.put(Kind::Node, &node, n);
    Some(node)
}

/// A local volume as `GET /v1/volumes` shows it: the record, with its
/// size limit from the workload's spec and whether its node enforces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeView {
    /// The record, its `workload` by name (its namespace beside it).
    #[serde(flatten)]
    pub record: VolumeRecord,
    pub namespace: String,
    /// The spec's `local.size`, in bytes (none: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Why its node does not hold it to that size (the node's filesystem
    /// has no project quotas); absent when it does, or there is no size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_not_enforced: Option<String>,
}

pub(crate) fn view(s: &State, r: &VolumeRecord) -> VolumeView {
    let size_bytes = s.workloads.get(&r.workload).and_then(|w| {
        w.spec
            .volumes
            .iter()
            .find(|v| v.name == r.volume)
            .and_then(|v| v.local?.size)
            .map(|b| b.bytes())
    });
    let size_not_enforced = size_bytes
        .and_then(|_| s.nodes.get(&r.node))
        .and_then(|n| n.volume_quota_missing.clone());
    let (namespace, workload) = skiff_proto::namespace::split(&r.workload);
    VolumeView {
        record: VolumeRecord {
            workload: workload.to_string(),
            ..r.clone()
        },
        namespace: namespace.to_string(),
        size_bytes,
        size_not_enforced,
    }
}

impl Control {
    /// Every local volume, by id, with its size limit.
    pub fn volumes(&self) -> Vec<VolumeView> {
        self.read(|s| s.volumes.values().map(|r| view(s, r)).collect())
    }

    /// Removes a local volume and its data, unless a running replica
    /// mounts it.
    pub fn remove_volume(&self, id: &str) -> Result<(), ControlError> {
        let node = self.write(|s, b| {
            let v = s
                .volumes
                .get(id)
                .ok_or_else(|| ControlError::NotFound(format!("no volume {id}")))?;
            if let Some(a) = s.allocations.values().find(|a| {
                a.is_live()
                    && a.node.is_some()
                    && a.workload == v.workload
                    && a.instance == Some(v.instance)
            }) {
                return Err(ControlError::Conflict(format!(
                    "volume {id} is in use by allocation {} (scale {} down or remove it first)",
                    a.id, v.workload
                )));
            }
            Ok(mark_removing(s, b, id))
        })?;
        self.event("volume", id, "removing");
        self.push(&node.into_iter().collect());
        self.wake();
        Ok(())
    }
}

/// Marks every local volume of `workload` for removal (a workload
/// deleted with its volumes): its agents delete them once its
/// replicas are stopped.
pub(crate) fn remove_workload_volumes(
    s: &mut State,
    b: &mut Batch,
    workload: &str,
) -> BTreeSet<String> {
    let ids: Vec<String> = s
        .volumes
        .values()
        .filter(|v| v.workload == workload && !v.removing)
        .map(|v| v.id.clone())
        .collect();
    ids.iter()
        .filter_map(|id| mark_removing(s, b, id))
        .collect()
}
