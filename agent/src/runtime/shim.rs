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
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::cgroup::ContainerCgroup;
use super::init::{self, InitArgs};
use super::spec::ContainerSpec;

/// What the shim tells the agent on its stdout once the container started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartReport {
    Started {
        pid: i32,
        shim_pid: i32,
        /// When it started, as the run state (`state.json`) says: the one
        /// time the record and a later adoption both give.
        #[serde(default)]
        started_unix_ms: i64,
    },
    Failed {
        error: String,
    },
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

/// How a shim was started.
#[derive(Debug, Clone, Copy)]
pub enum Mode<'a> {
    /// `__shim DIR SUPERVISOR`: start the container in `DIR` now.
    Cold { dir: &'a Path },
    /// `__shim --warm CGROUP SUPERVISOR STAGING`: prepare a first process in
    /// new namespaces and in the cgroup `CGROUP`, with its `/proc`, `/dev`
    /// and `/sys` mounted under `STAGING` (in its own mount namespace),
    /// report [`WarmReport`], then wait for a container directory on stdin
    /// (see `runtime::warm`).
    Warm { cgroup: &'a str, staging: &'a Path },
}

/// What a warm shim says once its first process is ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmReport {
    pub shim_pid: i32,
    pub pid: i32,
}

/// Entry point of `skiff-agent __shim`; returns the process exit code
/// (when it does not become the supervisor).
pub fn main(mode: Mode<'_>, supervisor: &Path) -> i32 {
    let r = match mode {
        Mode::Cold { dir } => run_cold(dir, supervisor),
        Mode::Warm { cgroup, staging } => run_warm(cgroup, supervisor, staging),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            // Before the report was sent this reaches the agent; after it,
            // the shim's stderr (shim.log).
            report(&StartReport::Failed { error: e });
            1
        }
    }
}

fn report<T: Serialize>(r: &T) {
    let mut line = serde_json::to_vec(r).unwrap_or_default();
    line.push(b'\n');
    let _ = std::io::stdout().write_all(&line);
    let _ = std::io::stdout().flush();
}

/// Signals of a shim: it ignores the terminal and its process group (the
/// agent stops containers by signalling them, never the shim), and blocks
/// SIGCHLD from here on (the supervisor reads it from a signalfd) so an
/// early exit of the container is not missed.
fn prepare_process(supervisor: &Path) -> Result<(), String> {
    nix::unistd::access(supervisor, nix::unistd::AccessFlags::X_OK)
        .map_err(|e| format!("supervisor {}: {e}", supervisor.display()))?;
    let _ = nix::sys::prctl::set_child_subreaper(true);
    for sig in SHIM_IGNORES {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe {
            let _ = nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn);
        }
    }
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&chld), None).map_err(|e| format!("block SIGCHLD: {e}"))
}

const SHIM_IGNORES: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGTERM,
    Signal::SIGPIPE,
];

/// The pipes between a shim and the container's first process.
struct Pipes {
    out_r: OwnedFd,
    err_r: OwnedFd,
    /// "Go on" (cold: one byte; warm: the container directory and `\n`).
    ready_w: OwnedFd,
    /// Why the child failed before `exec`; EOF when it exec'd.
    fail_r: OwnedFd,
}

/// The child's ends.
struct ChildEnds {
    stdout: OwnedFd,
    stderr: OwnedFd,
    ready: OwnedFd,
    fail: OwnedFd,
    layers: Option<OwnedFd>,
}

/// Clones the container's first process into new namespaces; it runs
/// `child` (which only returns on failure; the message goes to the fail
/// pipe).
fn clone_child(
    flags: CloneFlags,
    layers: Option<OwnedFd>,
    into_cgroup: Option<&OwnedFd>,
    child: impl FnOnce(ChildEnds) -> init::InitError,
) -> Result<(Pid, Pipes), String> {
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let pipe = || nix::unistd::pipe2(cloexec).map_err(|e| format!("pipe: {e}"));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let (fail_r, fail_w) = pipe()?;
    let mut stack = vec![0u8; 256 * 1024];
    let mut ends = Some(ChildEnds {
        stdout: out_w,
        stderr: err_w,
        ready: ready_r,
        fail: fail_w,
        layers,
    });
    let mut child = Some(child);
    // The shim's own ends, which the child gets copies of: closed first
    // thing in the child, or it would hold the "go on" pipe open itself and
    // never see the shim die.
    let parent_ends = [
        out_r.as_raw_fd(),
        err_r.as_raw_fd(),
        ready_w.as_raw_fd(),
        fail_r.as_raw_fd(),
    ];
    let cb = move || -> isize {
        for fd in parent_ends {
            // SAFETY: these descriptors are the child's copies of the
            // shim's pipe ends; nothing in the child uses them.
            unsafe {
                libc::close(fd);
            }
        }
        let (Some(ends), Some(child)) = (ends.take(), child.take()) else {
            return 127;
        };
        // The workload starts with default signal handling and mask.
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
        for sig in SHIM_IGNORES {
            // SAFETY: restoring the default disposition installs no handler.
            unsafe {
                let _ = nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl);
            }
        }
        let fail = ends.fail.try_clone();
        let e = child(ends);
        if let Ok(fail) = fail {
            let _ = nix::unistd::write(&fail, e.0.as_bytes());
        }
        127
    };
    // SAFETY: the shim is single-threaded, so the child (a copy of it, not
    // sharing memory) may run arbitrary code on the given stack until exec.
    // The callback owns the child's ends of the pipes; the parent's copies
    // close when `clone` drops it.
    let pid = match into_cgroup {
        // cgroup v2: born in its cgroup (clone3 with CLONE_INTO_CGROUP), so
        // it never has to be moved, which would wait for an RCU grace period.
        Some(cg) => clone_into_cgroup(flags, cg, cb)?,
        // SAFETY: as below.
        None => unsafe {
            nix::sched::clone(
                Box::new(cb),
                &mut stack,
                flags,
                Some(Signal::SIGCHLD as i32),
            )
        }
        .map_err(|e| format!("clone: {e}"))?,
    };
    Ok((
        pid,
        Pipes {
            out_r,
            err_r,
            ready_w,
            fail_r,
        },
    ))
}

/// `struct clone_args` (version 2, with `cgroup`).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `clone3` with `CLONE_INTO_CGROUP`, fork-like (no new stack): the child
/// runs `child` and exits with its value.
fn clone_into_cgroup(
    flags: CloneFlags,
    cgroup: &OwnedFd,
    child: impl FnOnce() -> isize,
) -> Result<Pid, String> {
    let args = CloneArgs {
        flags: flags.bits() as u64 | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: Signal::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup.as_raw_fd() as u64,
    };
    // SAFETY: the shim is single-threaded; without CLONE_VM the child gets
    // a copy of this process (as with fork) and leaves only via `_exit`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match r {
        0 => {
            let code = child();
            // SAFETY: ends the child without unwinding into the parent's
            // frames.
            unsafe { libc::_exit(code as i32) }
        }
        r if r > 0 => Ok(Pid::from_raw(r as i32)),
        _ => Err(format!("clone3: {}", std::io::Error::last_os_error())),
    }
}

fn namespaces(network: skiff_proto::NetworkMode) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID;
    if network != skiff_proto::NetworkMode::Host {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

fn kill_child(pid: Pid) {
    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    let _ = waitpid(pid, None);
}

fn run_cold(dir: &Path, supervisor: &Path) -> Result<(), String> {
    let spec: ContainerSpec =
        read_json(dir, CONFIG).ok_or_else(|| format!("{}: cannot read {CONFIG}", dir.display()))?;
    prepare_process(supervisor)?;
    let cgroup = ContainerCgroup::load(&spec.cgroup);
    let oom_before = cgroup.oom_kills();
    let filters = if spec.security.privileged {
        Vec::new()
    } else {
        super::seccomp::programs().map_err(|e| format!("seccomp: {e}"))?
    };
    let mut flags = namespaces(spec.network);
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
    let cgroup_dir = cgroup
        .v2_dir()
        .and_then(|d| std::fs::File::open(d).ok())
        .map(OwnedFd::from);
    let (pid, pipes) = clone_child(flags, layers_rx, cgroup_dir.as_ref(), |ends| {
        init::run(InitArgs {
            spec: &spec,
            dir,
            ready: init::Ready::First(ends.ready),
            stdout: ends.stdout,
            stderr: ends.stderr,
            filters: &filters,
            layers: ends.layers,
            staged: None,
        })
    })?;
    // Into the cgroup (and, remapped, its id maps and layers) before it
    // may run anything, then let it go on.
    let prepared = match (spec.userns, &layers_tx) {
        (Some(range), Some(tx)) => remap(pid.as_raw(), range, &spec.layers, tx),
        _ => Ok(()),
    }
    .and_then(|()| {
        if cgroup_dir.is_some() {
            Ok(())
        } else {
            cgroup.add(pid.as_raw())
        }
    })
    .and_then(|()| attach_network(&spec, pid));
    if let Err(e) = prepared {
        kill_child(pid);
        return Err(e);
    }
    let _ = nix::unistd::write(&pipes.ready_w, b"g");
    finish(dir, &spec, pid, pipes, oom_before, supervisor)
}

/// A bridged container's network namespace joins the node bridge before
/// its process runs (see `net::attach_container`).
fn attach_network(spec: &ContainerSpec, pid: Pid) -> Result<(), String> {
    match &spec.net {
        Some(a) if spec.network == skiff_proto::NetworkMode::Bridge => {
            crate::net::attach_container(a, pid.as_raw())
        }
        _ => Ok(()),
    }
}

/// `setpriority` for a process (0: this one).
fn set_nice(pid: i32, nice: i32) {
    // SAFETY: no memory is passed.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, nice);
    }
}

fn run_warm(cgroup_path: &str, supervisor: &Path, staging: &Path) -> Result<(), String> {
    prepare_process(supervisor)?;
    // Preparing yields to containers starting meanwhile; a container gets
    // the normal priority back when it is assigned.
    set_nice(0, 10);
    let cgroup = ContainerCgroup::create(cgroup_path, &super::spec::Limits::default())?;
    let flags = namespaces(skiff_proto::NetworkMode::None);
    // The default filter is the same for every container: compiled ahead.
    let default_filters = super::seccomp::programs().map_err(|e| format!("seccomp: {e}"))?;
    let (pid, pipes) = clone_child(flags, None, None, |ends| {
        // Mount what every container has, ahead (falling back to mounting
        // it at start if that fails).
        let staged = stage_system(staging).is_ok();
        // Wait for a container; none (EOF) ends quietly.
        let Some(dir) = read_line(&ends.ready) else {
            return init::InitError(String::new());
        };
        let dir = PathBuf::from(dir);
        let Some(spec) = read_json::<ContainerSpec>(&dir, CONFIG) else {
            return init::InitError(format!("{}: cannot read {CONFIG}", dir.display()));
        };
        let filters = if spec.security.privileged {
            Vec::new()
        } else {
            default_filters
        };
        init::run(InitArgs {
            spec: &spec,
            dir: &dir,
            ready: init::Ready::BeforeExec(ends.ready),
            stdout: ends.stdout,
            stderr: ends.stderr,
            filters: &filters,
            layers: None,
            staged: (staged && !spec.security.privileged).then_some(staging),
        })
    })?;
    // The slow part on cgroup v1 (the kernel waits for an RCU grace
    // period to move a process), done before any container needs it.
    if let Err(e) = cgroup.add(pid.as_raw()) {
        kill_child(pid);
        let _ = cgroup.delete();
        return Err(e);
    }
    report(&WarmReport {
        shim_pid: std::process::id() as i32,
        pid: pid.as_raw(),
    });
    let mut line = String::new();
    let assigned = std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0);
    let dir = PathBuf::from(line.trim_end_matches('\n'));
    let spec = assigned
        .then(|| read_json::<ContainerSpec>(&dir, CONFIG))
        .flatten();
    let Some(spec) = spec else {
        // The agent went away (or sent nothing usable): leave no trace.
        kill_child(pid);
        let _ = cgroup.delete();
        return if assigned {
            Err(format!("{}: cannot read {CONFIG}", dir.display()))
        } else {
            Ok(())
        };
    };
    // The first process builds the root filesystem while the agent makes
    // our cgroup the container's; it goes on to exec when that is done.
    set_nice(0, 0);
    set_nice(pid.as_raw(), 0);
    let mut msg = dir.as_os_str().as_bytes().to_vec();
    msg.push(b'\n');
    let _ = nix::unistd::write(&pipes.ready_w, &msg);
    // While the first process builds the root filesystem and the agent
    // takes over the cgroup.
    let network = attach_network(&spec, pid);
    let mut go = String::new();
    if !std::io::stdin().read_line(&mut go).is_ok_and(|n| n > 0) {
        kill_child(pid);
        let _ = ContainerCgroup::load(&spec.cgroup).delete();
        let _ = cgroup.delete();
        return Ok(());
    }
    if let Err(e) = network {
        kill_child(pid);
        return Err(e);
    }
    let oom_before = ContainerCgroup::load(&spec.cgroup).oom_kills();
    let _ = nix::unistd::write(&pipes.ready_w, b"g");
    finish(&dir, &spec, pid, pipes, oom_before, supervisor)
}

/// In a warm process's own mount namespace: a tmpfs on `staging` holding
/// a container's `/proc`, `/dev` and `/sys`, hardened.
fn stage_system(staging: &Path) -> Result<(), init::InitError> {
    use nix::mount::{MsFlags, mount};
    let e = |what: &str, err: &dyn std::fmt::Display| init::InitError(format!("{what}: {err}"));
    init::make_root_private()?;
    mount(
        Some("tmpfs"),
        staging,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=700,size=64k"),
    )
    .map_err(|x| e("staging tmpfs", &x))?;
    for name in init::SYSTEM_MOUNTS {
        std::fs::create_dir(staging.join(name)).map_err(|x| e("staging", &x))?;
    }
    init::mount_system(staging, false, false)
}

/// Reads bytes up to a newline (or EOF, then `None` if nothing came).
fn read_line(fd: &OwnedFd) -> Option<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(fd, &mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => out.push(b[0]),
            Err(nix::errno::Errno::EINTR) => {}
            _ => break,
        }
    }
    (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
}

/// Waits until the first process exec'd (or says why not), records it,
/// reports to the agent, and becomes the supervisor.
fn finish(
    dir: &Path,
    spec: &ContainerSpec,
    pid: Pid,
    pipes: Pipes,
    oom_before: u64,
    supervisor: &Path,
) -> Result<(), String> {
    drop(pipes.ready_w);
    let mut why = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match nix::unistd::read(&pipes.fail_r, &mut buf) {
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
    let started_unix_ms = now_ms();
    write_json(
        dir,
        STATE,
        &RunState {
            pid: pid.as_raw(),
            shim_pid,
            started_unix_ms,
            oom_kills_before: oom_before,
        },
    )
    .map_err(|e| format!("{STATE}: {e}"))?;
    report(&StartReport::Started {
        pid: pid.as_raw(),
        shim_pid,
        started_unix_ms,
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
    for fd in [&pipes.out_r, &pipes.err_r] {
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
    kill_child(pid);
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
