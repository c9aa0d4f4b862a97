//! The Skiff node agent.
//!
//! Built so far: nothing beyond the contract it will speak (`skiff-proto`).
//! The image store, runtime and networking arrive with their issues; see
//! `ARCHITECTURE.md` for the planned module layout.

/// Version reported to the gateway at registration.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
