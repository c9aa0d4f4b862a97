//! Container log files: one JSON object per line,
//! `{"time":"2026-11-28T05:00:00.123456789Z","stream":"stdout","log":"hi\n"}`,
//! rotated by size (`container.log` → `container.log.1`). The supervisor
//! (agent/shim/main.rs) writes them; the agent reads them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One captured line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub time: String,
    pub stream: String,
    pub log: String,
}

/// The path of the previous log file.
pub fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}
