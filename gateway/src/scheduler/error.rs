//! Why the placement engine refuses a snapshot: it is inconsistent (the
//! gateway builds snapshots from its state, so this is a bug there, or a
//! workload naming a site the gateway does not have).

/// An inconsistent snapshot or request, naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("site {0}: listed twice")]
    SiteTwice(String),
    #[error("node {0}: listed twice")]
    NodeTwice(String),
    #[error("node {node}: unknown site {site}")]
    NodeSite { node: String, site: String },
    #[error("allocation {allocation}: unknown node {node}")]
    AllocationNode { allocation: String, node: String },
    #[error("workload {workload}: {field}: unknown site {site}")]
    WorkloadSite {
        workload: String,
        field: &'static str,
        site: String,
    },
    #[error("launching VM {vm}: unknown site {site}")]
    VmSite { vm: String, site: String },
    #[error("launching VM {vm}: site {site} has no instance type {instance_type}")]
    VmType {
        vm: String,
        site: String,
        instance_type: String,
    },
    #[error("{what} {id}: no group {group}")]
    NoGroup {
        what: &'static str,
        id: String,
        group: usize,
    },
}
