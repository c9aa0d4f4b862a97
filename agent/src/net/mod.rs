//! Node networking (being built; not yet used by the runtime, whose
//! containers get the `none` or `host` network until it is wired in).
//!
//! * [`ipam`]: container addresses from the node's subnet, crash-safe.
//! * [`link`]: the node bridge and container veth pairs (rtnetlink).
//! * [`nat`]: Skiff's own nftables table (egress, published ports).
//! * [`ports`]: which host ports may be published.
//! * [`netns`]: work inside a container's network namespace.

pub mod ipam;
pub mod link;
pub mod nat;
pub mod netns;
pub mod ports;
