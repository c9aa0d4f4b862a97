//! The Skiff gateway.
//!
//! * [`scheduler`]: the placement engine, a pure function of a snapshot.
//! * [`config`]: the config file and its overrides.
//! * [`store`]: durable state (redb by default, etcd to share it, behind a
//!   trait).
//! * [`pki`]: the CA, node certificates, API and join token secrets.
//! * [`control`]: the in-memory state, liveness and the reconciler.
//! * [`grpc`]: the agent port (`Join`, `Session`).
//! * [`streams`]: operator requests for an agent's data (logs, exec),
//!   brokered between the REST API and the node's `Stream` call.
//! * [`api`]: the REST API and its OpenAPI document.
//! * [`autoscale`]: launching VMs for the placement engine's launch plan.
//! * [`peers`]: the other gateways of a fleet (what a follower hands to
//!   the leader); `cluster` (feature `etcd`): election, watch, forwarding.
//! * [`metrics`]: Prometheus metrics.
//! * [`daemon`]: `skiff-gateway serve`.

pub mod api;
pub mod autoscale;
pub mod clock;
#[cfg(feature = "etcd")]
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod grpc;
pub mod instance_types;
pub mod metrics;
pub mod peers;
pub mod pki;
pub mod scheduler;
pub mod secrets;
pub mod state_cmd;
pub mod state_io;
pub mod store;
pub mod streams;

/// Version reported in the API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
