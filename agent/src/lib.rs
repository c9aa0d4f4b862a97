//! The Skiff node agent.
//!
//! * [`images`]: the image store (pull, import, content store, safe unpack,
//!   garbage collection).
//! * [`runtime`]: the container runtime (namespaces, cgroups, shims).
//! * [`api`]: the local API on a unix socket, server and client.
//! * [`config`]: configuration (file, environment, flags).
//! * [`cli`], [`daemon`]: the `skiff-agent` command line and daemon.
//!
//! * [`net`]: node networking (address pool, bridge and veth pairs; being
//!   built).

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod images;
pub mod metrics;
pub mod net;
pub mod runtime;

/// Version reported to the gateway at registration.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Page cache of each embedded database (redb).
pub const DB_CACHE_BYTES: usize = 1 << 20;
