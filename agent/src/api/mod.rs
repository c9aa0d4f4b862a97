//! The agent's local API: HTTP/1.1 with JSON bodies on a unix socket (like
//! Docker's), so `curl --unix-socket` works for operators. Long operations
//! (pull) stream newline-delimited JSON events.

pub mod client;
pub mod containers;
pub mod server;

use serde::{Deserialize, Serialize};

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable: `not_found`, `bad_request`, `refused`, `registry`, `internal`.
    pub code: String,
    /// One line, naming what was wrong.
    pub message: String,
}

/// `POST /v1/images/pull`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PullRequest {
    pub reference: String,
}

/// `POST /v1/images/import`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRequest {
    /// Absolute path, on the agent's host, of a layout directory or archive.
    pub path: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// One line of the pull stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PullLine {
    Event(crate::images::PullEvent),
    Done { done: crate::images::ImageSummary },
    Failed { error: ErrorBody },
}
