//! Why a request could not be placed, in numbers an operator can act on.

use std::collections::BTreeMap;
use std::fmt;

/// Why one node was passed over.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeFilter {
    /// Not ready: down, draining or cordoned.
    Status(String),
    SiteNotAllowed,
    /// The constraint, as written.
    Constraint(String),
    /// The host volume, by name, that it does not publish.
    NoHostVolume(String),
    InsufficientCpu,
    InsufficientMemory,
    InsufficientDisk,
    /// Every container address of its subnet is taken.
    NoFreeAddress,
    /// The host port and protocol, e.g. `80/tcp`.
    PortInUse(String),
    /// A replica of the workload is already there.
    DistinctNodes,
    /// Placing here would exceed the spread's max skew.
    SpreadSkew,
    /// A priced (cloud) node whose share would take the workload's
    /// namespace over its cloud spend limit.
    SpendLimit,
}

impl fmt::Display for NodeFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeFilter::Status(s) => write!(f, "node {s}"),
            NodeFilter::SiteNotAllowed => f.write_str("site not allowed"),
            NodeFilter::Constraint(c) => write!(f, "fails {c}"),
            NodeFilter::NoHostVolume(v) => write!(f, "do not publish host volume {v}"),
            NodeFilter::InsufficientCpu => f.write_str("insufficient cpu"),
            NodeFilter::InsufficientMemory => f.write_str("insufficient memory"),
            NodeFilter::InsufficientDisk => f.write_str("insufficient disk"),
            NodeFilter::NoFreeAddress => f.write_str("no free container address"),
            NodeFilter::PortInUse(p) => write!(f, "host port {p} in use"),
            NodeFilter::DistinctNodes => f.write_str("already runs a replica"),
            NodeFilter::SpendLimit => f.write_str("over the namespace's cloud spend limit"),
            NodeFilter::SpreadSkew => f.write_str("spread skew"),
        }
    }
}

/// The structured reason a request is unplaced (`skiff explain` shows it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Explanation {
    /// Joined nodes looked at.
    pub nodes: usize,
    /// How many nodes each filter excluded (a node counts once, under the
    /// first filter that excluded it, in the order of [`NodeFilter`]).
    pub excluded: BTreeMap<NodeFilter, usize>,
    /// For each allowed site, why no VM could be launched there.
    pub sites: BTreeMap<String, String>,
    /// Why preemption did not help, when it was tried.
    pub preemption: Option<String>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0/{} nodes fit", self.nodes)?;
        let mut by_count: Vec<_> = self.excluded.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (i, (filter, n)) in by_count.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { ", " })?;
            write!(f, "{n} {filter}")?;
        }
        for (site, why) in &self.sites {
            write!(f, "; {site}: {why}")?;
        }
        if let Some(p) = &self.preemption {
            write!(f, "; preemption: {p}")?;
        }
        Ok(())
    }
}
