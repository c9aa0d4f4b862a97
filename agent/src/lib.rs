//! The Skiff node agent.
//!
//! * [`images`]: the image store (pull, import, content store, safe unpack,
//!   garbage collection).
//! * [`api`]: the local API on a unix socket, server and client.
//! * [`config`]: configuration (file, environment, flags).
//! * [`cli`], [`daemon`]: the `skiff-agent` command line and daemon.
//!
//! The container runtime and node networking arrive with their issues.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod images;

/// Version reported to the gateway at registration.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
