//! A service's local volumes keep its replicas where their data is.
//!
//! Each replica has a slot N (the lowest free one when it is made); slot
//! N's volumes are `WORKLOAD.VOLUME.N`, made on the node the first replica
//! of the slot was placed on. A later replica of the slot is pinned to
//! that node: it waits for it while it is down ("waiting for node X,
//! which holds volume Y"), and is never started empty elsewhere, unless
//! every one of its volumes says `on_node_loss: recreate` (then, while
//! the node is down or gone, it goes anywhere and gets new volumes).

use std::collections::{BTreeMap, BTreeSet};

use skiff_proto::OnNodeLoss;
use skiff_proto::cluster::{AllocationState, NodeStatus};

use super::Draft;
use crate::control::volumes::{VolumeRecord, volume_id};
use crate::control::{AllocationRecord, State, WorkloadRecord};

/// The names of a workload's local volumes, and whether all of them may
/// be recreated elsewhere when their node is lost.
fn local(w: &WorkloadRecord) -> (Vec<&str>, bool) {
    let locals: Vec<_> = w
        .spec
        .volumes
        .iter()
        .filter_map(|v| v.local.map(|l| (v.name.as_str(), l)))
        .collect();
    let recreate = locals
        .iter()
        .all(|(_, l)| l.on_node_loss == OnNodeLoss::Recreate);
    (locals.into_iter().map(|(n, _)| n).collect(), recreate)
}

/// Whether the workload's replicas have local volumes (and so slots).
pub(super) fn has_local(w: &WorkloadRecord) -> bool {
    w.spec.volumes.iter().any(|v| v.local.is_some())
}

/// The node holding slot `instance`'s volumes, if it has any (records
/// being removed do not count).
fn holder<'a>(s: &'a State, w: &WorkloadRecord, instance: u32) -> Option<&'a VolumeRecord> {
    let (names, _) = local(w);
    names.iter().find_map(|v| {
        s.volumes
            .get(&volume_id(&w.spec.key(), v, instance))
            .filter(|r| !r.removing)
    })
}

/// The node a replica of slot `instance` must run on: its volumes' node,
/// unless that node is lost and its volumes may be recreated.
pub(super) fn pin(s: &State, w: &WorkloadRecord, instance: u32) -> Option<String> {
    let r = holder(s, w, instance)?;
    let lost = s
        .nodes
        .get(&r.node)
        .is_none_or(|n| n.status == NodeStatus::Down);
    let (_, recreate) = local(w);
    (!(lost && recreate)).then(|| r.node.clone())
}

/// The lowest slot not in `taken`.
pub(super) fn free_slot(taken: &BTreeSet<u32>) -> u32 {
    (0..).find(|k| !taken.contains(k)).expect("a free slot")
}

/// Pending replicas whose pin changed (the volume's node was lost with
/// `recreate`, or the volume was removed) are pinned again.
pub(super) fn repin(s: &State, now: i64, draft: &mut Draft) {
    let moved: Vec<(String, Option<String>)> = draft
        .all(s)
        .filter(|a| a.state == AllocationState::Pending && a.node.is_none())
        .filter_map(|a| {
            let k = a.instance?;
            let w = s.workloads.get(&a.workload)?;
            let want = pin(s, w, k);
            (want != a.pinned_to).then(|| (a.id.clone(), want))
        })
        .collect();
    for (id, want) in moved {
        if let Some(a) = draft.edit(s, &id) {
            a.pinned_to = want;
            a.updated_ms = now;
        }
    }
}

/// What a pending replica pinned to its volumes' node waits for:
/// `node X, which holds volume Y`.
pub(super) fn waiting_on(s: &State, a: &AllocationRecord) -> Option<String> {
    let w = s.workloads.get(&a.workload)?;
    let r = holder(s, w, a.instance?)?;
    (a.pinned_to.as_deref() == Some(r.node.as_str()))
        .then(|| format!("node {}, which holds volume {}", r.node, r.id))
}

/// The volume records the pass's placements make: a replica placed where
/// its slot has no volumes yet (or had them on a lost node it may leave)
/// gets them there.
pub(super) fn made_by(s: &State, now: i64, draft: &Draft) -> BTreeMap<String, VolumeRecord> {
    let mut out = BTreeMap::new();
    for a in draft.changed.values().filter(|a| a.is_live()) {
        let (Some(node), Some(k)) = (&a.node, a.instance) else {
            continue;
        };
        let Some(w) = s.workloads.get(&a.workload) else {
            continue;
        };
        let (names, _) = local(w);
        for v in names {
            let id = volume_id(&a.workload, v, k);
            let current = s.volumes.get(&id).filter(|r| !r.removing);
            if current.is_some_and(|r| &r.node == node) {
                continue;
            }
            out.insert(
                id.clone(),
                VolumeRecord {
                    id,
                    workload: a.workload.clone(),
                    volume: v.to_string(),
                    instance: k,
                    node: node.clone(),
                    site: a.site.clone().unwrap_or_default(),
                    created_ms: now,
                    removing: false,
                },
            );
        }
    }
    out
}
