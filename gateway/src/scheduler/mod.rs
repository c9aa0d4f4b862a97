//! The placement engine: a pure function from a snapshot of the fleet and a
//! batch of requests to a plan.
//!
//! ```text
//! place(&Snapshot, &[Group], &[Request], Options) -> Plan
//! ```
//!
//! No I/O, no clock, no randomness but `Options::seed`: the same input gives
//! the same plan. One pass covers both real and potential capacity:
//!
//! 1. **Joined nodes.** Requests go in priority order, largest first. For
//!    each, the allowed sites are tried in the workload's `prefer` order,
//!    then by the site's cost rank (on-prem first), honouring site spread and
//!    its max skew. Within a site the filters are node status, constraints,
//!    host ports, distinct nodes and resources; among the nodes that pass,
//!    bin-pack takes the fullest (spread policy the emptiest), found with an
//!    ordered index rather than a scan. When nothing fits, a request may
//!    evict the fewest, lowest-priority allocations below its own priority.
//! 2. **Capacity not yet launched.** What is left is packed onto VMs that are
//!    launching, then onto new VMs: a site's cheapest-per-demand instance
//!    type, within its `max_nodes` and budget. The plan lists the launches.
//! 3. **Explanations.** Every request still unplaced gets an [`Explanation`]:
//!    how many nodes each filter excluded, and why each allowed site could not
//!    launch.

mod engine;
mod error;
mod explain;
mod fleet;
mod launch;
mod model;

pub use engine::Scheduler;
pub use error::PlanError;
pub use explain::{Explanation, NodeFilter};
pub use launch::money;
pub use model::{
    Eviction, ExistingAllocation, Group, InstanceType, Launch, LaunchingVm, MicrosPerHour,
    NODE_ADDRESSES, NodeInfo, Options, Placement, Plan, Policy, Request, SiteInfo, Snapshot,
    SpendLimit, Target, Unplaced,
};
pub use model::{local_volume_bytes, price_share};

/// Places `requests` (replicas of `groups`) on the fleet in `snapshot`.
///
/// Fails only on inconsistent input (an unknown site or node, a request
/// naming a group that does not exist), with a message naming it.
pub fn place(
    snapshot: &Snapshot,
    groups: &[Group],
    requests: &[Request],
    options: Options,
) -> Result<Plan, PlanError> {
    if let Some(r) = requests.iter().find(|r| r.group >= groups.len()) {
        return Err(PlanError::NoGroup {
            what: "request",
            id: r.id.clone(),
            group: r.group,
        });
    }
    let mut s = Scheduler::new(snapshot, groups, options)?;
    for r in s.order(requests) {
        s.place_on_nodes(requests, r);
    }
    Ok(s.finish(requests))
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
