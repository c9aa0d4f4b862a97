//! `skiff`, the operator CLI, as a library: the client of the gateway's
//! REST API (used by the CLI, the end-to-end tests and `skiff dev`), the
//! contexts file, output formatting, and the commands.
//!
//! * [`client`]: typed calls and streams of the REST API.
//! * [`context`]: named gateways in `~/.config/skiff/config.toml`.
//! * [`output`]: tables, `-o json|yaml`, colour.
//! * [`spec`]: `skiff validate` and `skiff schema` (offline).

pub mod client;
pub mod context;
pub mod output;
pub mod spec;
