//! The Skiff node agent.
//!
//! Built so far: the image store ([`images`]). The runtime and networking
//! arrive with their issues; see `ARCHITECTURE.md`.

pub mod images;

/// Version reported to the gateway at registration.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
