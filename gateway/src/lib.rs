//! The Skiff gateway.
//!
//! Built so far: the placement engine ([`scheduler`]), a pure library. The
//! sessions, store, REST API, reconciler and autoscaler arrive with their
//! issues.

pub mod scheduler;

/// Version reported in the API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
