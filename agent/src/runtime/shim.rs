//! The per-container shim (`skiff-agent __shim DIR SUPERVISOR`).
//!
//! The agent starts one shim per container start. The shim clones the
//! container's first process into new namespaces, puts it in its cgroup,
//! and reports its pid (or why it failed) to the agent. Then it `exec`s
//! the supervisor, `skiff-shim` (agent/shim/main.rs, embedded in the agent
//! and installed by [`install_supervisor`]): the same process, still the
//! container's parent, now a 0.7 MB static program that writes the
//! container's output to the log, reaps it and records how it ended in
//! `exit.json`. As the container's parent is not the agent, containers
//! keep running — and their exit codes are kept — while the agent is
//! stopped, killed or upgraded.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::wait::waitpid;
use serde::{Deserialize, Serialize};

use super::cgroup::ContainerCgroup;
use super::init::{self, InitArgs};
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
    /// Set by the agent from the cgroup's OOM-kill count (the supervisor
    /// does not read cgroups).
    #[serde(default)]
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
    /// The cgroup's OOM-kill count when it started: more at exit means the
    /// kernel's OOM killer struck.
    #[serde(default)]
    pub oom_kills_before: u64,
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

/// The supervisor program, built by `agent/build.rs`.
const SUPERVISOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/skiff-shim"));

/// Installs the supervisor as `dir/skiff-shim-<digest>` (once per agent
/// version; an upgrade leaves the old one for the shims still running it)
/// and returns its path.
pub fn install_supervisor(dir: &Path) -> std::io::Result<PathBuf> {
    use sha2::Digest;
    use std::os::unix::fs::PermissionsExt;
    let digest = hex::encode(sha2::Sha256::digest(SUPERVISOR));
    let path = dir.join(format!("skiff-shim-{}", &digest[..16]));
    if std::fs::read(&path).is_ok_and(|b| b == SUPERVISOR) {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".skiff-shim-{}.tmp", std::process::id()));
    std::fs::write(&tmp, SUPERVISOR)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Entry point of `skiff-agent __shim DIR SUPERVISOR`; returns the process
/// exit code (when it does not become the supervisor).
pub fn main(dir: &Path, supervisor: &Path) -> i32 {
    match run(dir, supervisor) {
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

fn run(dir: &Path, supervisor: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let spec: ContainerSpec =
        read_json(dir, CONFIG).ok_or_else(|| format!("{}: cannot read {CONFIG}", dir.display()))?;
    nix::unistd::access(supervisor, nix::unistd::AccessFlags::X_OK)
        .map_err(|e| format!("supervisor {}: {e}", supervisor.display()))?;
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
    // Blocked from here on (the supervisor reads it from a signalfd), so
    // an early exit of the container is not missed.
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&chld), None)
        .map_err(|e| format!("block SIGCHLD: {e}"))?;

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
    // Remapped: a user namespace owning all the others, and a socket to
    // hand the child its idmapped layers.
    let (layers_tx, layers_rx) = if spec.userns.is_some() {
        flags |= CloneFlags::CLONE_NEWUSER;
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| format!("socketpair: {e}"))?;
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let mut stack = vec![0u8; 256 * 1024];
    let mut child_fds = Some((ready_r, out_w, err_w, fail_w, layers_rx));
    let spec_ref = &spec;
    let filters_ref = &filters;
    let cb = Box::new(move || -> isize {
        let Some((ready, stdout, stderr, fail, layers)) = child_fds.take() else {
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
            layers,
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

    // Into the cgroup (and, remapped, its id maps and layers) before it
    // may run anything, then let it go on.
    let prepared = match (spec.userns, &layers_tx) {
        (Some(range), Some(tx)) => remap(pid.as_raw(), range, &spec.layers, tx),
        _ => Ok(()),
    }
    .and_then(|()| cgroup.add(pid.as_raw()));
    if let Err(e) = prepared {
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
            oom_kills_before: oom_before,
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
    // Become the supervisor: same process, so still the container's parent.
    // The output pipes stay open across exec; SIGCHLD stays blocked.
    let mut argv = vec![
        std::ffi::CString::new(supervisor.as_os_str().as_bytes()),
        std::ffi::CString::new("__shim"),
        std::ffi::CString::new(dir.as_os_str().as_bytes()),
        std::ffi::CString::new(pid.as_raw().to_string()),
    ];
    for fd in [&out_r, &err_r] {
        let flags = nix::fcntl::FdFlag::empty();
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(flags))
            .map_err(|e| format!("pipe flags: {e}"))?;
        argv.push(std::ffi::CString::new(fd.as_raw_fd().to_string()));
    }
    argv.push(std::ffi::CString::new(spec.log_max_bytes.to_string()));
    let argv: Vec<std::ffi::CString> = argv
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| format!("supervisor arguments: {e}"))?;
    let e = nix::unistd::execv(&argv[0], &argv).unwrap_err();
    // Not reached unless exec failed: do not leave a container nobody
    // supervises.
    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    let _ = waitpid(pid, None);
    Err(format!("exec supervisor {}: {e}", supervisor.display()))
}

/// Writes the child's id maps and sends it an idmapped mount of each layer.
fn remap(
    pid: i32,
    range: super::spec::IdRange,
    layers: &[PathBuf],
    tx: &std::os::fd::OwnedFd,
) -> Result<(), String> {
    use super::userns;
    userns::write_maps(pid, range).map_err(|e| format!("user namespace id maps: {e}"))?;
    let ns: std::os::fd::OwnedFd = std::fs::File::open(format!("/proc/{pid}/ns/user"))
        .map_err(|e| format!("user namespace: {e}"))?
        .into();
    let trees = layers
        .iter()
        .map(|l| userns::idmapped_tree(l, &ns))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("user namespace layers: {e}"))?;
    userns::send_fds(tx, &trees).map_err(|e| format!("user namespace layers: {e}"))
}

/// The shim's path in the container directory layout.
pub fn container_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}
