//! The container's first process, between `clone` and `execve`: it runs in
//! the new namespaces, builds the root filesystem (overlayfs over the image
//! layers, `/proc`, a minimal `/dev`, read-only `/sys`, masked paths),
//! enters it with `pivot_root`, drops privileges (capabilities,
//! `no_new_privs`, seccomp) and executes the workload.
//!
//! Everything is mounted inside the container's own mount namespace, so the
//! kernel removes every mount when the container's last process exits:
//! nothing is left to clean up on the host.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::unistd::{Gid, Uid, chdir, pivot_root, sethostname};

use super::caps;
use super::spec::{ContainerSpec, ProcessSpec, Security};

/// Paths hidden from the container (`/dev/null` over files, an empty
/// read-only tmpfs over directories), as Docker and runc do.
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only: no write access to host kernel settings.
const READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Character devices of the minimal `/dev`: name, major, minor.
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Why the container could not start: the step and the error.
#[derive(Debug)]
pub struct InitError(pub String);

fn step<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, InitError> {
    r.map_err(|e| InitError(format!("{what}: {e}")))
}

/// Everything the child needs, prepared by the shim before `clone`.
#[derive(Debug)]
pub struct InitArgs<'a> {
    pub spec: &'a ContainerSpec,
    /// The container's directory (upper, work, rootfs, etc files).
    pub dir: &'a Path,
    /// The "you are in your cgroup" signal, and when to wait for it.
    pub ready: Ready,
    /// Pipe ends that become stdout and stderr.
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Seccomp filters to install last (empty when privileged).
    pub filters: &'a [seccompiler::BpfProgram],
    /// Remapped containers: where the idmapped layers arrive.
    pub layers: Option<OwnedFd>,
    /// `/proc`, `/dev` and `/sys` already mounted here (warm shims).
    pub staged: Option<&'a Path>,
}

/// Read end of the "you are in your cgroup" pipe. Nothing of the
/// container's runs, and the cgroup namespace is not made, before it.
#[derive(Debug)]
pub enum Ready {
    /// Waited for before anything else (cold starts: the user namespace's
    /// id maps come with it).
    First(OwnedFd),
    /// Waited for after the root filesystem is built (warm starts: built
    /// while the agent hands the cgroup over). EOF calls the start off.
    BeforeExec(OwnedFd),
}

fn wait_ready(fd: &OwnedFd) -> Result<(), InitError> {
    let mut byte = [0u8; 1];
    if !matches!(nix::unistd::read(fd, &mut byte), Ok(1)) {
        return Err(InitError(String::new()));
    }
    step(
        "cgroup namespace",
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP),
    )
    .map(|_| ())
}

/// Runs in the child; only returns on failure (the message goes to the shim).
pub fn run(a: InitArgs<'_>) -> InitError {
    match setup_and_exec(a) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// A value that cannot exist: `exec` does not return on success.
#[derive(Debug)]
pub enum Never {}

fn setup_and_exec(a: InitArgs<'_>) -> Result<Never, InitError> {
    // In our cgroup, take a cgroup namespace rooted there.
    if let Ready::First(fd) = &a.ready {
        wait_ready(fd)?;
    }
    step("new session", nix::unistd::setsid())?;

    let spec = a.spec;
    let rootfs = a.dir.join("rootfs");
    let lower = match (&a.layers, spec.userns) {
        (Some(sock), Some(_)) => {
            // Root of the new user namespace, now that it has id maps.
            step(
                "setgid 0",
                nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)),
            )?;
            step(
                "setuid 0",
                nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)),
            )?;
            let trees = step(
                "receive the layers",
                super::userns::recv_fds(sock, spec.layers.len()),
            )?;
            if trees.len() != spec.layers.len() {
                return Err(InitError(format!(
                    "received {} of {} layers",
                    trees.len(),
                    spec.layers.len()
                )));
            }
            let mut dirs = Vec::new();
            for (i, tree) in trees.iter().enumerate() {
                let target = a.dir.join("lower").join(i.to_string());
                step("attach a layer", super::userns::attach(tree, &target))?;
                dirs.push(target);
            }
            dirs
        }
        _ => spec.layers.clone(),
    };
    drop(a.layers);
    mount_rootfs(spec, a.dir, &rootfs, &lower, a.staged)?;
    step("hostname", sethostname(&spec.hostname))?;
    if spec.network != skiff_proto::NetworkMode::Host {
        step("bring up lo", loopback_up())?;
    }
    enter_rootfs(&rootfs)?;

    if let Ready::BeforeExec(fd) = &a.ready {
        wait_ready(fd)?;
    }

    // stdin from /dev/null, stdout and stderr to the shim's pipes.
    let null = step(
        "open /dev/null",
        nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDWR, Mode::empty()),
    )?;
    step("stdin", nix::unistd::dup2_stdin(&null))?;
    step("stdout", nix::unistd::dup2_stdout(&a.stdout))?;
    step("stderr", nix::unistd::dup2_stderr(&a.stderr))?;
    drop((null, a.stdout, a.stderr));

    exec_process(&spec.process, &spec.security, a.filters)
}

/// The last steps of every container process, the first one's and those
/// of `exec`: working directory, capabilities, user and groups,
/// `no_new_privs`, seccomp, `execve`. Only returns on failure.
pub fn exec_process(
    p: &ProcessSpec,
    security: &Security,
    filters: &[seccompiler::BpfProgram],
) -> Result<Never, InitError> {
    let program = resolve_program(&p.args[0], &p.env)?;
    let cwd = Path::new(if p.cwd.is_empty() { "/" } else { &p.cwd });
    if let Err(e) = chdir(cwd) {
        return Err(InitError(format!(
            "working directory {}: {e}",
            cwd.display()
        )));
    }
    let caps = caps::effective_set(security)?;
    if security.allow_privilege_escalation {
        // Without no_new_privs the kernel takes a seccomp filter only from a
        // process with CAP_SYS_ADMIN, so it goes in now, while the process
        // still has every capability; what follows (prctl, setgroups,
        // setres[ug]id, capset, execve) is in the allow-list.
        for f in filters {
            step(
                "seccomp",
                crate::runtime::seccomp::load_keeping_privileges(f),
            )?;
        }
    }
    caps::drop_bounding(&caps)?;
    let gids: Vec<Gid> = p
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    step("setgroups", nix::unistd::setgroups(&gids))?;
    step(
        "setgid",
        nix::unistd::setresgid(
            Gid::from_raw(p.gid),
            Gid::from_raw(p.gid),
            Gid::from_raw(p.gid),
        ),
    )?;
    caps::keep_caps_across_setuid()?;
    step(
        "setuid",
        nix::unistd::setresuid(
            Uid::from_raw(p.uid),
            Uid::from_raw(p.uid),
            Uid::from_raw(p.uid),
        ),
    )?;
    caps::apply(&caps, p.uid)?;
    if !security.allow_privilege_escalation {
        step("no_new_privs", nix::sys::prctl::set_no_new_privs())?;
    }

    let argv: Vec<CString> = p
        .args
        .iter()
        .map(|s| CString::new(s.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| InitError("argument contains a NUL byte".into()))?;
    let envp: Vec<CString> = p
        .env
        .iter()
        .map(|s| CString::new(s.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| InitError("environment contains a NUL byte".into()))?;
    let path = CString::new(program.as_os_str().as_bytes())
        .map_err(|_| InitError("program path contains a NUL byte".into()))?;
    // Last: from here on only the allowed system calls work.
    if !security.allow_privilege_escalation {
        for f in filters {
            step("seccomp", seccompiler::apply_filter(f))?;
        }
    }
    let e = nix::unistd::execve(&path, &argv, &envp).unwrap_err();
    Err(InitError(format!("exec {}: {e}", program.display())))
}

fn mount_rootfs(
    spec: &ContainerSpec,
    dir: &Path,
    rootfs: &Path,
    layers: &[PathBuf],
    staged: Option<&Path>,
) -> Result<(), InitError> {
    make_root_private()?;
    let lower = layers
        .iter()
        .map(|l| l.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let opts = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        dir.join("upper").display(),
        dir.join("work").display()
    );
    step(
        "mount the overlay root filesystem",
        mount(
            Some("overlay"),
            rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        ),
    )?;
    let at = |p: &str| rootfs.join(p.trim_start_matches('/'));
    match staged {
        // Made ahead by a warm process: moved into place.
        Some(base) => {
            for name in SYSTEM_MOUNTS {
                mkdir_in_root(rootfs, name)?;
                step(
                    &format!("move /{name}"),
                    mount(
                        Some(&base.join(name)),
                        &at(name),
                        None::<&str>,
                        MsFlags::MS_MOVE,
                        None::<&str>,
                    ),
                )?;
            }
        }
        None => {
            for name in SYSTEM_MOUNTS {
                mkdir_in_root(rootfs, name)?;
            }
            mount_system(rootfs, spec.security.privileged, spec.userns.is_some())?;
        }
    }

    // /etc/hosts, /etc/hostname and /etc/resolv.conf from the container dir.
    mkdir_in_root(rootfs, "etc")?;
    for f in ["hosts", "hostname", "resolv.conf"] {
        let target = at("/etc").join(f);
        if std::fs::symlink_metadata(&target).is_err() {
            step(&format!("/etc/{f}"), std::fs::File::create(&target))?;
        }
        step(
            &format!("/etc/{f}"),
            mount(
                Some(&dir.join(f)),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            ),
        )?;
    }
    mount_volumes(rootfs, &spec.mounts)
}

/// The container's volumes, each at its target in the root filesystem
/// (made as directories when missing, never through a symbolic link the
/// image put there).
fn mount_volumes(rootfs: &Path, mounts: &[super::spec::Mount]) -> Result<(), InitError> {
    use super::spec::MountSource;
    for m in mounts {
        let what = format!("volume at {}", m.target);
        skiff_proto::check_mount_path(&m.target).map_err(|e| InitError(format!("{what}: {e}")))?;
        let target = mkdir_p_in_root(rootfs, &m.target)?;
        match &m.source {
            MountSource::Bind(src) => {
                step(
                    &what,
                    mount(
                        Some(src),
                        &target,
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None::<&str>,
                    ),
                )?;
                if m.read_only {
                    step(
                        &format!("{what}: read-only"),
                        mount(
                            None::<&str>,
                            &target,
                            None::<&str>,
                            MsFlags::MS_BIND
                                | MsFlags::MS_REMOUNT
                                | MsFlags::MS_RDONLY
                                | MsFlags::MS_REC,
                            None::<&str>,
                        ),
                    )?;
                }
            }
            MountSource::Tmpfs { size } => {
                let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
                if m.read_only {
                    flags |= MsFlags::MS_RDONLY;
                }
                let opts = format!("size={size},mode=1777");
                step(
                    &what,
                    mount(
                        Some("tmpfs"),
                        &target,
                        Some("tmpfs"),
                        flags,
                        Some(opts.as_str()),
                    ),
                )?;
            }
        }
    }
    Ok(())
}

/// `path` (absolute, normal) made as directories under `rootfs`; each
/// component that exists must be a directory, not a symbolic link.
fn mkdir_p_in_root(rootfs: &Path, path: &str) -> Result<PathBuf, InitError> {
    let mut at = rootfs.to_path_buf();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(InitError(format!(
                    "volume at {path}: {} in the image is a symbolic link",
                    at.strip_prefix(rootfs)
                        .map_or(at.as_path(), |p| p)
                        .display()
                )));
            }
            Ok(_) => {
                return Err(InitError(format!(
                    "volume at {path}: /{} in the image is not a directory",
                    at.strip_prefix(rootfs)
                        .map_or(at.as_path(), |p| p)
                        .display()
                )));
            }
            Err(_) => step(
                &format!("volume at {path}: mkdir"),
                std::fs::create_dir(&at),
            )?,
        }
    }
    Ok(at)
}

/// Nothing mounted from here on may propagate back to the host.
pub fn make_root_private() -> Result<(), InitError> {
    step(
        "make / private",
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
    )
}

/// What [`mount_system`] mounts, each a directory under the root.
pub const SYSTEM_MOUNTS: [&str; 3] = ["proc", "dev", "sys"];

/// The container's `/proc`, `/dev` and `/sys` under `base` (its root, or a
/// staging directory a warm process prepares ahead), hardened unless
/// privileged. `base/{proc,dev,sys}` must exist. Runs in the container's
/// namespaces (proc shows its pid namespace, sysfs its network).
pub fn mount_system(base: &Path, privileged: bool, userns: bool) -> Result<(), InitError> {
    let at = |p: &str| base.join(p.trim_start_matches('/'));
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;

    step(
        "mount /proc",
        mount(
            Some("proc"),
            &at("/proc"),
            Some("proc"),
            nosuid,
            None::<&str>,
        ),
    )?;

    step(
        "mount /dev",
        mount(
            Some("tmpfs"),
            &at("/dev"),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        ),
    )?;
    for (name, major, minor) in DEVICES {
        if userns {
            // No device nodes in a user namespace: bind the host's.
            let target = at("/dev").join(name);
            step(&format!("/dev/{name}"), std::fs::File::create(&target))?;
            step(
                &format!("/dev/{name}"),
                mount(
                    Some(&Path::new("/dev").join(name)),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                ),
            )?;
            continue;
        }
        step(
            &format!("/dev/{name}"),
            mknod(
                &at("/dev").join(name),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(*major, *minor),
            ),
        )?;
        // mknod honours the umask; make the mode exact.
        step(
            &format!("/dev/{name}"),
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                &at("/dev").join(name),
                Mode::from_bits_truncate(0o666),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            ),
        )?;
    }
    for dir in ["pts", "shm", "mqueue"] {
        step("mkdir /dev", std::fs::create_dir(at("/dev").join(dir)))?;
    }
    step(
        "mount /dev/pts",
        mount(
            Some("devpts"),
            &at("/dev/pts"),
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
    )?;
    step(
        "mount /dev/shm",
        mount(
            Some("shm"),
            &at("/dev/shm"),
            Some("tmpfs"),
            nosuid,
            Some("mode=1777,size=65536k"),
        ),
    )?;
    step(
        "mount /dev/mqueue",
        mount(
            Some("mqueue"),
            &at("/dev/mqueue"),
            Some("mqueue"),
            nosuid,
            None::<&str>,
        ),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        step(
            "/dev links",
            std::os::unix::fs::symlink(target, at("/dev").join(link)),
        )?;
    }
    // The console: /dev/null until terminals are supported, so programs that
    // open it do not fail.
    step("/dev/console", std::fs::File::create(at("/dev/console")))?;
    step(
        "/dev/console",
        mount(
            Some(&at("/dev/null")),
            &at("/dev/console"),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ),
    )?;

    let sys_flags = if privileged {
        nosuid
    } else {
        nosuid | MsFlags::MS_RDONLY
    };
    step(
        "mount /sys",
        mount(
            Some("sysfs"),
            &at("/sys"),
            Some("sysfs"),
            sys_flags,
            None::<&str>,
        ),
    )?;

    if !privileged {
        harden_paths(base)?;
    }
    Ok(())
}

/// Creates `name` directly under the root unless it exists (as a directory).
fn mkdir_in_root(rootfs: &Path, name: &str) -> Result<(), InitError> {
    let p = rootfs.join(name);
    match std::fs::symlink_metadata(&p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(InitError(format!(
            "/{name} in the image is not a directory"
        ))),
        Err(_) => step(&format!("mkdir /{name}"), std::fs::create_dir(&p)),
    }
}

fn enter_rootfs(rootfs: &Path) -> Result<(), InitError> {
    step("chdir rootfs", chdir(rootfs))?;
    step("pivot_root", pivot_root(".", "."))?;
    // The old root is stacked under the new one: detach it.
    step("detach the host root", umount2(".", MntFlags::MNT_DETACH))?;
    step("chdir /", chdir("/"))?;
    Ok(())
}

fn harden_paths(base: &Path) -> Result<(), InitError> {
    let null = base.join("dev/null");
    for p in MASKED {
        let path = &base.join(p.trim_start_matches('/'));
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => step(
                &format!("mask {p}"),
                mount(
                    Some("tmpfs"),
                    path,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    None::<&str>,
                ),
            )?,
            Ok(_) => step(
                &format!("mask {p}"),
                mount(
                    Some(&null),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                ),
            )?,
            Err(_) => {}
        }
    }
    for p in READ_ONLY {
        let path = &base.join(p.trim_start_matches('/'));
        if path.exists() {
            step(
                &format!("read-only {p}"),
                mount(
                    Some(path),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                ),
            )?;
            step(
                &format!("read-only {p}"),
                mount(
                    Some(path),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
                    None::<&str>,
                ),
            )?;
        }
    }
    Ok(())
}

/// Brings up `lo` in the container's new network namespace (it starts
/// down), so services can talk to themselves and probes can reach them.
/// Two ioctls on a throwaway socket: the smallest way from this
/// single-threaded child, where the agent's async netlink client cannot run.
fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, which lives
    // across both calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Finds the program in the container's PATH (after pivot_root).
fn resolve_program(arg0: &str, env: &[String]) -> Result<PathBuf, InitError> {
    if arg0.contains('/') {
        return Ok(PathBuf::from(arg0));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(arg0);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            && candidate.is_file()
        {
            return Ok(candidate);
        }
    }
    Err(InitError(format!(
        "executable file not found in $PATH: {arg0}"
    )))
}
