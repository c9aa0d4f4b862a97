//! `skiff`, the operator CLI, as a library: the client of the gateway's
//! REST API (used by the CLI, the end-to-end tests and `skiff dev`), the
//! contexts file, output formatting, the commands and `skiff dev`.
//!
//! * [`args`]: the command line (clap); `docs/cli.md` is generated from it.
//! * [`client`]: typed calls and streams of the REST API.
//! * [`context`]: named gateways in `~/.config/skiff/config.toml`.
//! * [`output`]: tables, `-o json|yaml`, colour.
//! * [`commands`]: one function per command, and [`commands::CliError`].
//! * [`dev`]: a whole fleet on one machine.
//! * [`spec`]: `skiff validate` and `skiff schema` (offline).

pub mod args;
pub mod client;
pub mod commands;
pub mod context;
pub mod dev;
pub mod output;
pub mod spec;
