//! External tools the tests drive, and how to run them with clear failures.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Path of `name` on `PATH`, or an error saying how to install it.
pub fn require(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{name} is not installed: run scripts/test, which installs the test tools")
        })
}

/// Runs a command to completion; the error carries its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the tests run as root (real containers and namespaces need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Fails the calling test unless it runs as root: such tests must not pass
/// by skipping, so a non-root run is an error, not a silent success.
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (CI runs scripts/test as root)"
    );
}
