//! Helper processes that cannot outlive their test.
//!
//! A [`ChildGuard`] owns a child started in its own process group. Dropping
//! it (at the end of a test, or while a failing test unwinds) sends SIGTERM
//! to the group, waits a short grace, sends SIGKILL, and reaps the child, so
//! no helper process or zombie is left behind.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A running helper process, stopped by pid when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    /// Starts `cmd` in a new process group.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether it still runs (not exited, or exited and not yet reaped).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Its exit status, if it has exited (reaped then).
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c.try_wait(),
            None => Ok(None),
        }
    }

    /// Stops it now: SIGTERM to its group, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pgid = child.id() as libc::pid_t;
        signal_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                signal_group(pgid, libc::SIGKILL);
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        signal_group(pgid, libc::SIGKILL);
        child.wait().ok()
    }

    /// Kills it at once with SIGKILL (a crash, as `kill -9` does).
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        signal_group(child.id() as libc::pid_t, libc::SIGKILL);
        child.wait().ok()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

fn signal_group(pgid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals the process group we made;
    // an error (ESRCH: already gone) is harmless.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// Whether any process with this pid exists (zombies included).
pub fn pid_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
