//! Consolidation's rule: which launched node to empty, because its work
//! fits on capacity the fleet already pays for (on-prem nodes, other VMs)
//! and handing it back saves enough. A pure function of the state; the
//! autoscaler carries the decision out (it marks the node
//! [`Vacate`](crate::control::Vacate), the reconciler moves its replicas
//! one by one, each started before the old one stops, and the emptied VM
//! scales in).
//!
//! A node is a candidate only when nothing else is being emptied (one
//! move at a time), all its work runs and can move
//! (services without local volumes; batch runs finish where they are),
//! no workload on it moved within the cool-down, and its site's moves in
//! the last hour leave room for its replicas. Candidates are tried, the
//! dearest first, with the placement engine itself: the node's replicas,
//! on the rest of the fleet as it is, with no launch and no eviction,
//! after what waits to be placed: that must place as much, and launch no
//! more, as without the move (a VM that joined holds the room of the work
//! it was launched for).

use std::cmp::Reverse;
use std::collections::BTreeSet;

use skiff_proto::cluster::{AllocationState, NodeStatus};

use super::{Draft, FleetView, ReconcileError, fleet_view};
use crate::control::{MoveCause, State};
use crate::scheduler::{self, MicrosPerHour};

/// Consolidation's knobs (`[consolidation]` in the gateway config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Emptying a node must save at least this much per hour.
    pub min_saving: MicrosPerHour,
    /// A workload moved is not moved again for this long.
    pub cool_down_ms: i64,
    /// Most replicas moved off one site's nodes in an hour.
    pub max_moves_per_site_hour: u32,
    /// Candidates tried per pass (each costs a placement).
    pub max_candidates: usize,
}

/// A node to empty, and what it saves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub node: String,
    pub site: String,
    /// Its price per hour: nothing replaces it.
    pub saving: MicrosPerHour,
    /// The replicas that move.
    pub replicas: usize,
    /// Where the placement engine put them (the moves themselves are
    /// placed again when they start).
    pub onto: BTreeSet<String>,
}

const HOUR_MS: i64 = 3_600_000;

/// The node to empty now, if any.
pub fn plan(
    s: &State,
    now: i64,
    sites: &[scheduler::SiteInfo],
    rules: &Rules,
) -> Result<Option<Decision>, ReconcileError> {
    let settled = !s.nodes.values().any(|n| {
        n.vacating
            .as_ref()
            .is_some_and(|v| v.cause == MoveCause::Consolidation)
    });
    if !settled {
        return Ok(None);
    }
    let moved_lately: BTreeSet<&str> = s
        .allocations
        .values()
        .filter(|a| a.moved.is_some() && a.created_ms > now - rules.cool_down_ms)
        .map(|a| a.workload.as_str())
        .collect();
    let moves_from = |site: &str| {
        s.allocations
            .values()
            .filter(|a| a.created_ms > now - HOUR_MS)
            .filter(|a| {
                a.moved
                    .as_ref()
                    .is_some_and(|m| m.from_site == site && m.cause == MoveCause::Consolidation)
            })
            .count()
    };
    let prices = crate::control::namespaces::Prices::of(sites);
    let mut candidates: Vec<(MicrosPerHour, Vec<&str>, &str, &str)> = Vec::new();
    for n in s.nodes.values() {
        if n.instance_id.is_none()
            || n.status != NodeStatus::Ready
            || n.draining
            || n.unschedulable
            || n.scale_in.is_some()
            || n.vacating.is_some()
        {
            continue;
        }
        let work: Vec<_> = s
            .allocations
            .values()
            .filter(|a| a.is_live() && a.node.as_deref() == Some(n.id.as_str()))
            .filter(|a| {
                s.workloads
                    .get(&a.workload)
                    .is_some_and(|w| w.spec.kind != skiff_proto::WorkloadKind::System)
            })
            .collect();
        let movable = work.iter().all(|a| {
            let w = &s.workloads[&a.workload];
            w.spec.batch_rules().is_none()
                && a.state == AllocationState::Running
                && a.pinned_to.is_none()
                && a.instance.is_none()
                && !moved_lately.contains(a.workload.as_str())
        });
        if work.is_empty() || !movable {
            continue;
        }
        if moves_from(&n.site) + work.len() > rules.max_moves_per_site_hour as usize {
            continue;
        }
        let price = prices.of_node(s, n);
        if price < rules.min_saving || price == 0 {
            continue;
        }
        candidates.push((
            price,
            work.iter().map(|a| a.id.as_str()).collect(),
            n.id.as_str(),
            n.site.as_str(),
        ));
    }
    // The dearest first; of those, the one with least to move.
    candidates.sort_by_key(|(price, work, id, _)| (Reverse(*price), work.len(), *id));
    if candidates.is_empty() {
        return Ok(None);
    }
    let FleetView {
        snapshot,
        groups,
        group_of,
    } = fleet_view(s, &Draft::default(), sites);
    // What waits to be placed keeps its chances: a move may not take room
    // it would get, nor make it launch more.
    let pending: Vec<scheduler::Request> = s
        .allocations
        .values()
        .filter(|a| a.state == AllocationState::Pending && a.node.is_none())
        .filter_map(|a| {
            Some(scheduler::Request {
                id: a.id.clone(),
                group: *group_of.get(a.workload.as_str())?,
                node: a.pinned_to.clone(),
                existing_only: a.moved.is_some(),
            })
        })
        .collect();
    let options = scheduler::Options {
        seed: now as u64,
        preemption: false,
        ..scheduler::Options::default()
    };
    let on_nodes = |plan: &scheduler::Plan, from: usize| {
        plan.placements
            .iter()
            .filter(|p| p.request >= from && matches!(p.target, scheduler::Target::Node(_)))
            .count()
    };
    let before = if pending.is_empty() {
        None
    } else {
        let plan = scheduler::place(&snapshot, &groups, &pending, options)?;
        Some((on_nodes(&plan, 0), plan.launches.len()))
    };
    for (price, work, node, site) in candidates.into_iter().take(rules.max_candidates) {
        let mut snap = snapshot.clone();
        for n in snap.nodes.iter_mut().filter(|n| n.id == node) {
            n.status = NodeStatus::Draining;
        }
        snap.allocations.retain(|a| a.node != node);
        let mut requests = pending.clone();
        requests.extend(work.iter().filter_map(|id| {
            Some(scheduler::Request {
                id: (*id).to_string(),
                group: *group_of.get(s.allocations[*id].workload.as_str())?,
                node: None,
                existing_only: true,
            })
        }));
        if requests.len() != pending.len() + work.len() {
            continue;
        }
        let placed = scheduler::place(&snap, &groups, &requests, options)?;
        let moved_all = on_nodes(&placed, pending.len()) == work.len();
        let pending_kept = before.is_none_or(|(placed_before, launches)| {
            on_nodes(&placed, 0) - on_nodes(&placed, pending.len()) >= placed_before
                && placed.launches.len() <= launches
        });
        if moved_all && pending_kept {
            let onto = placed
                .placements
                .iter()
                .filter(|p| p.request >= pending.len())
                .filter_map(|p| match &p.target {
                    scheduler::Target::Node(n) => Some(n.clone()),
                    _ => None,
                })
                .collect();
            return Ok(Some(Decision {
                node: node.to_string(),
                site: site.to_string(),
                saving: price,
                replicas: work.len(),
                onto,
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
