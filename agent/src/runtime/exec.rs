//! `exec`: another process in a running container.
//!
//! The agent starts `skiff-agent __exec DIR PID` and writes the resolved
//! [`ProcessSpec`] to its stdin. That helper joins the container's cgroup
//! and namespaces (`setns` on `/proc/PID/ns/*`, the mount namespace last),
//! forks so the child is inside the container's pid namespace, and the
//! child takes the container's hardening (capabilities, user, no_new_privs,
//! seccomp) before `execve`, exactly as the first process did. The helper
//! waits and exits with the child's status, so the agent sees the exec'd
//! command's exit code; stdout and stderr pass straight through.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::ForkResult;
use serde::{Deserialize, Serialize};

use super::cgroup::ContainerCgroup;
use super::init;
use super::shim::{CONFIG, read_json};
use super::spec::{ContainerSpec, ProcessSpec};

/// What `exec` asks for (the CLI's flags, the API's body).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecOptions {
    /// The command and its arguments.
    pub cmd: Vec<String>,
    /// `KEY=VALUE`, added to the container's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// User (name or uid, optionally `:group`); the container's by default.
    #[serde(default)]
    pub user: Option<String>,
    /// Working directory; the container's by default.
    #[serde(default)]
    pub workdir: Option<String>,
}

/// Exit code of the helper when the command could not be run (Docker's).
pub const EXEC_FAILED: i32 = 126;
/// Exit code when the executable is not found (Docker's).
pub const NOT_FOUND: i32 = 127;

/// The namespaces an exec joins, in order (the mount namespace last: it
/// changes the root, and `/proc/PID/ns` is opened before).
const NAMESPACES: &[(&str, CloneFlags)] = &[
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Entry point of `skiff-agent __exec DIR PID`; returns the exit code.
pub fn main(dir: &Path, pid: i32) -> i32 {
    match run(dir, pid) {
        Ok(code) => code,
        Err((code, e)) => {
            eprintln!("skiff-agent exec: {e}");
            code
        }
    }
}

fn fail(e: impl std::fmt::Display) -> (i32, String) {
    (EXEC_FAILED, e.to_string())
}

fn run(dir: &Path, pid: i32) -> Result<i32, (i32, String)> {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).map_err(fail)?;
    let process: ProcessSpec = serde_json::from_slice(&input).map_err(fail)?;
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(null.as_fd());
    }
    let spec: ContainerSpec = read_json(dir, CONFIG)
        .ok_or_else(|| fail(format!("{}: cannot read {CONFIG}", dir.display())))?;
    let filters = if spec.security.privileged {
        Vec::new()
    } else {
        super::seccomp::programs().map_err(fail)?
    };
    let mut fds: Vec<(OwnedFd, CloneFlags)> = Vec::new();
    // A remapped container's user namespace comes first: it owns the others.
    let user = format!("/proc/{pid}/ns/user");
    let ino = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    if ino(&user).map_err(|e| fail(format!("{user}: {e}")))?
        != ino("/proc/self/ns/user").map_err(fail)?
    {
        let f = std::fs::File::open(&user).map_err(|e| fail(format!("{user}: {e}")))?;
        fds.push((f.into(), CloneFlags::CLONE_NEWUSER));
    }
    for (name, flag) in NAMESPACES {
        let path = format!("/proc/{pid}/ns/{name}");
        match std::fs::File::open(&path) {
            Ok(f) => fds.push((f.into(), *flag)),
            // Host networking: the container shares ours.
            Err(_) if *flag == CloneFlags::CLONE_NEWNET => {}
            Err(e) => return Err(fail(format!("{path}: {e} (is the container running?)"))),
        }
    }
    ContainerCgroup::load(&spec.cgroup)
        .add(std::process::id() as i32)
        .map_err(fail)?;
    for (fd, flag) in &fds {
        nix::sched::setns(fd, *flag).map_err(|e| fail(format!("join namespace {flag:?}: {e}")))?;
    }
    drop(fds);

    // SAFETY: this helper is single-threaded (no runtime, no threads).
    match unsafe { nix::unistd::fork() }.map_err(fail)? {
        ForkResult::Child => {
            let e = match init::exec_process(&process, &spec.security, &filters) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            eprintln!("skiff-agent exec: {}", e.0);
            let code = if e.0.contains("not found") {
                NOT_FOUND
            } else {
                EXEC_FAILED
            };
            // SAFETY: leaving the forked child without running the
            // parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(fail(format!("wait: {e}"))),
            }
        },
    }
}
