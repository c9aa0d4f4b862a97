//! The Skiff gateway.
//!
//! Built so far: nothing beyond the contract (`skiff-proto`); the placement
//! engine, sessions, store and API arrive with their issues.

/// Version reported in the API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
