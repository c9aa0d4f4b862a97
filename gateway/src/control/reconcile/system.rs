//! System workloads' rules: one copy on every eligible node, as nodes
//! join and leave (a Kubernetes DaemonSet's, a Nomad system job's).

use std::collections::BTreeMap;

use skiff_proto::cluster::{AllocationState, NodeStatus};
use skiff_proto::{Attribute, WorkloadSpec};

use super::Replica;
use crate::control::{NodeRecord, State, WorkloadRecord};

/// Whether node `n` is to run a copy of `spec`: it is not down, its site
/// is allowed, and every constraint holds on it.
pub(super) fn eligible(spec: &WorkloadSpec, n: &NodeRecord) -> bool {
    n.status != NodeStatus::Down
        && (spec.placement.sites.is_empty() || spec.placement.sites.contains(&n.site))
        && spec.placement.constraints.iter().all(|c| {
            c.matches(|a| match a {
                Attribute::Label(k) => n.labels.get(k).map(String::as_str),
                Attribute::Site => Some(n.site.as_str()),
                Attribute::Arch => Some(n.arch.as_str()),
                Attribute::Os => Some(n.os.as_str()),
                Attribute::Name => Some(n.id.as_str()),
            })
        })
}

/// What a system workload's copies need: the copies to stop (on a node
/// that is gone or no longer eligible, a second one on a node, an outdated
/// one being replaced) and the nodes that get a new copy, pinned to them.
/// An update replaces one copy at a time, once every current one runs.
pub(super) fn copies(
    s: &State,
    w: &WorkloadRecord,
    live: &[Replica],
) -> (Vec<(String, &'static str)>, Vec<String>) {
    let mut stop = Vec::new();
    let mut by_node: BTreeMap<&str, Vec<&Replica>> = BTreeMap::new();
    for r in live {
        match r.node.as_deref().or(r.pinned_to.as_deref()) {
            Some(n) => by_node.entry(n).or_default().push(r),
            // Not for any node (made before it was a system workload).
            None => stop.push((r.id.clone(), "not for a node")),
        }
    }
    let mut kept: BTreeMap<&str, &Replica> = BTreeMap::new();
    for (node, mut copies) in by_node {
        if !s.nodes.get(node).is_some_and(|n| eligible(&w.spec, n)) {
            stop.extend(copies.iter().map(|r| (r.id.clone(), "node not eligible")));
            continue;
        }
        // The newest version, running and placed, is kept.
        copies.sort_by_key(|r| {
            (
                std::cmp::Reverse(r.version),
                r.state != AllocationState::Running,
                !r.placed,
            )
        });
        kept.insert(node, copies[0]);
        stop.extend(
            copies[1..]
                .iter()
                .map(|r| (r.id.clone(), "a second copy on its node")),
        );
    }
    let settling = kept
        .values()
        .any(|r| r.version == w.version && r.state != AllocationState::Running);
    if !settling && let Some((&node, old)) = kept.iter().find(|(_, r)| r.version < w.version) {
        stop.push((old.id.clone(), "replaced or scaled down"));
        kept.remove(node);
    }
    // A copy stays on a node that is drained or cordoned (as a
    // DaemonSet's does); a new one goes only to a node taking work.
    let new = s
        .nodes
        .values()
        .filter(|n| n.status == NodeStatus::Ready && !n.draining && !n.unschedulable)
        .filter(|n| eligible(&w.spec, n) && !kept.contains_key(n.id.as_str()))
        .map(|n| n.id.clone())
        .collect();
    (stop, new)
}
