//! The per-container supervisor (`skiff-agent __shim DIR`).
//!
//! The agent starts one shim per container start. The shim clones the
//! container's first process into new namespaces, puts it in its cgroup,
//! reports its pid (or why it failed) to the agent, writes its output to the
//! log file, reaps it and records how it ended in `exit.json`. It is the
//! container's parent, not the agent, so containers keep running — and
//! their exit codes are kept — while the agent is stopped, killed or
//! upgraded. It is single-threaded and allocates little.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::cgroup::ContainerCgroup;
use super::init::{self, InitArgs};
use super::logfile::LogWriter;
use super::spec::ContainerSpec;

/// What the shim tells the agent on its stdout once the container started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartReport {
    Started { pid: i32, shim_pid: i32 },
    Failed { error: String },
}

/// How a container ended (`exit.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_unix_ms: i64,
}

impl ExitRecord {
    /// `exited`, `killed` or `oom-killed`.
    pub fn reason(&self) -> &'static str {
        if self.oom_killed {
            "oom-killed"
        } else if self.signal.is_some() {
            "killed"
        } else {
            "exited"
        }
    }
}

/// Written when the container is up: how to find it after an agent restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    pub pid: i32,
    pub shim_pid: i32,
    pub started_unix_ms: i64,
}

pub const CONFIG: &str = "config.json";
pub const STATE: &str = "state.json";
pub const EXIT: &str = "exit.json";
pub const LOG: &str = "container.log";

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Writes `value` as JSON to `dir/name` atomically (temp file, rename).
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let data = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, dir.join(name))
}

pub fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> Option<T> {
    serde_json::from_slice(&std::fs::read(dir.join(name)).ok()?).ok()
}

/// Entry point of `skiff-agent __shim DIR`; returns the process exit code.
pub fn main(dir: &Path) -> i32 {
    match run(dir) {
        Ok(()) => 0,
        Err(e) => {
            // Before the report was sent this reaches the agent; after it,
            // the shim's stderr (shim.log).
            report(&StartReport::Failed { error: e });
            1
        }
    }
}

fn report(r: &StartReport) {
    let mut line = serde_json::to_vec(r).unwrap_or_default();
    line.push(b'\n');
    let _ = std::io::stdout().write_all(&line);
    let _ = std::io::stdout().flush();
}

fn run(dir: &Path) -> Result<(), String> {
    let spec: ContainerSpec =
        read_json(dir, CONFIG).ok_or_else(|| format!("{}: cannot read {CONFIG}", dir.display()))?;
    let _ = nix::sys::prctl::set_child_subreaper(true);
    // The shim ignores the terminal and its process group; the agent stops
    // containers by signalling them, never the shim.
    for sig in [
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe {
            let _ = nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn);
        }
    }
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&chld), None)
        .map_err(|e| format!("block SIGCHLD: {e}"))?;
    let sigfd = SignalFd::with_flags(&chld, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| format!("signalfd: {e}"))?;

    let cgroup = ContainerCgroup::load(&spec.cgroup);
    let oom_before = cgroup.oom_kills();
    let filters = if spec.security.privileged {
        Vec::new()
    } else {
        super::seccomp::programs().map_err(|e| format!("seccomp: {e}"))?
    };

    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let (out_r, out_w) = nix::unistd::pipe2(cloexec).map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = nix::unistd::pipe2(cloexec).map_err(|e| format!("pipe: {e}"))?;
    let (ready_r, ready_w) = nix::unistd::pipe2(cloexec).map_err(|e| format!("pipe: {e}"))?;
    let (fail_r, fail_w) = nix::unistd::pipe2(cloexec).map_err(|e| format!("pipe: {e}"))?;

    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID;
    if spec.network != skiff_proto::NetworkMode::Host {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let mut stack = vec![0u8; 256 * 1024];
    let mut child_fds = Some((ready_r, out_w, err_w, fail_w));
    let spec_ref = &spec;
    let filters_ref = &filters;
    let cb = Box::new(move || -> isize {
        let Some((ready, stdout, stderr, fail)) = child_fds.take() else {
            return 127;
        };
        // The workload starts with default signal handling and mask.
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
        for sig in [
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGTERM,
            Signal::SIGPIPE,
        ] {
            // SAFETY: restoring the default disposition installs no handler.
            unsafe {
                let _ = nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl);
            }
        }
        let e = init::run(InitArgs {
            spec: spec_ref,
            dir,
            ready,
            stdout,
            stderr,
            filters: filters_ref,
        });
        let _ = nix::unistd::write(&fail, e.0.as_bytes());
        127
    });
    // SAFETY: the shim is single-threaded, so the child (a copy of it, not
    // sharing memory) may run arbitrary code on the given stack until exec.
    // The callback owns the child's ends of the pipes; the parent's copies
    // close when `clone` drops it.
    let pid = unsafe { nix::sched::clone(cb, &mut stack, flags, Some(Signal::SIGCHLD as i32)) }
        .map_err(|e| format!("clone: {e}"))?;
    drop(stack);

    // Into the cgroup before it may run anything, then let it go on.
    if let Err(e) = cgroup.add(pid.as_raw()) {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(e);
    }
    let _ = nix::unistd::write(&ready_w, b"g");
    drop(ready_w);
    let mut why = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match nix::unistd::read(&fail_r, &mut buf) {
            Ok(0) => break,
            Ok(n) => why.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    if !why.is_empty() {
        let _ = waitpid(pid, None);
        return Err(String::from_utf8_lossy(&why).into_owned());
    }

    let shim_pid = std::process::id() as i32;
    let started = now_ms();
    write_json(
        dir,
        STATE,
        &RunState {
            pid: pid.as_raw(),
            shim_pid,
            started_unix_ms: started,
        },
    )
    .map_err(|e| format!("{STATE}: {e}"))?;
    report(&StartReport::Started {
        pid: pid.as_raw(),
        shim_pid,
    });
    // The agent has its answer; later messages go to shim.log.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(null.as_fd());
    }

    let mut log =
        LogWriter::open(&dir.join(LOG), spec.log_max_bytes).map_err(|e| format!("{LOG}: {e}"))?;
    let status = supervise(pid, &sigfd, [out_r, err_r], &mut log);
    let (exit_code, signal) = match status {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
        _ => (255, None),
    };
    let oom_killed = cgroup.oom_kills() > oom_before;
    write_json(
        dir,
        EXIT,
        &ExitRecord {
            exit_code,
            signal,
            oom_killed,
            finished_unix_ms: now_ms(),
        },
    )
    .map_err(|e| format!("{EXIT}: {e}"))?;
    Ok(())
}

/// Copies output to the log until the container's first process has exited
/// and its output is drained; returns how it ended.
fn supervise(pid: Pid, sigfd: &SignalFd, pipes: [OwnedFd; 2], log: &mut LogWriter) -> WaitStatus {
    let names = ["stdout", "stderr"];
    let mut open = [true, true];
    let mut partial: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut status = None;
    let mut buf = vec![0u8; 64 * 1024];
    while status.is_none() || open.iter().any(|o| *o) {
        let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        let mut which = Vec::new();
        for (i, p) in pipes.iter().enumerate() {
            if open[i] {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                which.push(i);
            }
        }
        // Once the first process is gone, its namespace is torn down and
        // the pipes close; a short timeout guards against anything else.
        let timeout = if status.is_some() {
            PollTimeout::from(2000u16)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(0) if status.is_some() => break,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        if ready[0] {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(s) => {
                        if s.pid() == Some(pid) {
                            status = Some(s);
                        }
                    }
                }
            }
        }
        for (k, &i) in which.iter().enumerate() {
            if !ready[k + 1] {
                continue;
            }
            match nix::unistd::read(&pipes[i], &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EBADF) => {
                    open[i] = false;
                    if !partial[i].is_empty() {
                        let _ = log.write(names[i], &partial[i]);
                        partial[i].clear();
                    }
                }
                Ok(n) => {
                    partial[i].extend_from_slice(&buf[..n]);
                    while let Some(pos) = partial[i].iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = partial[i].drain(..=pos).collect();
                        let _ = log.write(names[i], &line);
                    }
                    if partial[i].len() >= 16 * 1024 {
                        let _ = log.write(names[i], &partial[i]);
                        partial[i].clear();
                    }
                }
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(_) => open[i] = false,
            }
        }
    }
    status.unwrap_or(WaitStatus::Exited(pid, 255))
}

/// The shim's path in the container directory layout.
pub fn container_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}
