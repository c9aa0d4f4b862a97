//! The Skiff node agent.
//!
//! * [`images`]: the image store (pull, import, content store, safe unpack,
//!   garbage collection).
//! * [`runtime`]: the container runtime (namespaces, cgroups, shims).
//! * [`api`]: the local API on a unix socket, server and client.
//! * [`config`]: configuration (file, environment, flags).
//! * [`cli`], [`daemon`]: the `skiff-agent` command line and daemon.
//!
//! * [`net`]: node networking (bridge, addresses, egress, published ports).
//! * [`link`]: the link to the gateway (join, session, desired state).
//! * [`notices`]: the cloud's notice that it takes the VM back (spot).

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod entry;
pub mod images;
pub mod link;
pub mod metrics;
pub mod net;
pub mod notices;
pub mod quota;
pub mod runtime;
pub mod secrets;
pub mod volumes;

/// Version reported to the gateway at registration.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Page cache of each embedded database (redb).
pub const DB_CACHE_BYTES: usize = 1 << 20;

/// Opens (or creates) one of the agent's embedded databases. Its page
/// cache is small: the tables hold at most thousands of records, and
/// redb's default (1 GiB) would let the agent's memory grow.
pub fn open_db(path: &std::path::Path) -> Result<redb::Database, redb::DatabaseError> {
    redb::Builder::new()
        .set_cache_size(DB_CACHE_BYTES)
        .create(path)
}
