//! Warm shims: containers start without waiting for the kernel.
//!
//! On cgroup v1, moving a process into a cgroup takes the kernel's global
//! cgroup lock for writing, which waits for an RCU grace period: 7–15 ms
//! on the machines we measured, more than everything else a container
//! start does (runc pays it too). So the agent keeps a few shims ready
//! ([`RuntimeConfig::warm_shims`](super::RuntimeConfig)): each has already
//! cloned a first process into fresh namespaces and moved it into a
//! cgroup of its own, `skiff/warm-…`, and waits. Starting a container
//! takes one: the agent renames its cgroup to the container's
//! (`skiff/<id>`, a rename within the same parent, which cgroup v1
//! allows), applies the limits and the device list, and hands it the
//! container directory; the process builds the root filesystem and
//! `exec`s as a cold start would. The pool is refilled in the background.
//!
//! Containers that need something a warm process cannot have been given
//! in advance (a user namespace, the host network) start cold. cgroup v2
//! has no such lock on the start path (the kernel can clone straight into
//! a cgroup) and does not rename cgroups, so it runs no warm shims.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cgroups_rs::fs::{Cgroup, hierarchies};

use super::cgroup::ContainerCgroup;
use super::shim::{StartReport, WarmReport};
use super::spec::ContainerSpec;

/// One shim waiting for a container.
#[derive(Debug)]
pub struct WarmShim {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    cgroup: String,
    /// Its prepared first process.
    pid: i32,
}

/// The pool of warm shims.
#[derive(Debug)]
pub struct WarmPool {
    exe: PathBuf,
    supervisor: PathBuf,
    log: PathBuf,
    /// An empty directory each warm process mounts its staging tmpfs on,
    /// in its own mount namespace.
    staging: PathBuf,
    target: usize,
    ready: Mutex<Vec<WarmShim>>,
    filling: AtomicUsize,
    next: AtomicU64,
    /// A delayed refill is pending.
    scheduled: std::sync::atomic::AtomicBool,
    /// Container starts and removals in progress, and when the last ended.
    busy: AtomicUsize,
    last_busy: Mutex<std::time::Instant>,
}

/// Marks a container start or removal in progress (see
/// [`WarmPool::refill_soon`]).
#[derive(Debug)]
pub struct Busy<'a>(&'a WarmPool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        *self.0.last_busy.lock().expect("lock") = std::time::Instant::now();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Prefix of warm cgroups under the agent's parent cgroup.
const PREFIX: &str = "warm-";

impl WarmPool {
    /// A pool of `target` shims (none on cgroup v2).
    pub fn new(exe: PathBuf, supervisor: PathBuf, state_dir: &Path, target: usize) -> Arc<Self> {
        let target = if super::cgroup::is_v2() { 0 } else { target };
        Arc::new(Self {
            exe,
            supervisor,
            log: state_dir.join("warm-shims.log"),
            staging: state_dir.join("warm"),
            target,
            ready: Mutex::new(Vec::new()),
            filling: AtomicUsize::new(0),
            next: AtomicU64::new(0),
            scheduled: std::sync::atomic::AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            last_busy: Mutex::new(std::time::Instant::now()),
        })
    }

    /// Removes warm cgroups agents that are gone left (their shims end by
    /// themselves when the agent that started them goes away); those of
    /// agents still running (tests run several) are theirs.
    pub fn remove_stale(parent: &str) {
        let cg = Cgroup::load(hierarchies::auto(), parent);
        let mut names = std::collections::BTreeSet::new();
        for s in cg.subsystems() {
            if let Ok(entries) = std::fs::read_dir(s.to_controller().path()) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let owner = name
                        .strip_prefix(PREFIX)
                        .and_then(|r| r.split('-').next())
                        .and_then(|p| p.parse::<u32>().ok());
                    let alive = owner.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
                    if owner.is_some() && !alive {
                        names.insert(name);
                    }
                }
            }
        }
        for name in names {
            let warm = ContainerCgroup::load(&format!("{parent}/{name}"));
            warm.kill_all();
            let _ = warm.delete();
        }
    }

    /// A ready shim, if there is one.
    pub fn take(&self) -> Option<WarmShim> {
        self.ready.lock().expect("lock").pop()
    }

    /// Marks a container start or removal in progress until dropped.
    pub fn busy(&self) -> Busy<'_> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self)
    }

    /// After a start took a shim: refills at once if none is left, else
    /// once no container is starting or being removed for a moment.
    /// Preparing a shim moves a process into a cgroup, which holds the
    /// kernel's cgroup lock for an RCU grace period; cgroup renames and
    /// removals of containers starting and ending meanwhile would wait.
    pub fn refill_soon(self: &Arc<Self>, parent: &str) {
        if self.ready.lock().expect("lock").is_empty() {
            self.refill(parent);
            return;
        }
        if self.scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        let pool = Arc::clone(self);
        let parent = parent.to_string();
        tokio::spawn(async move {
            let quiet = std::time::Duration::from_millis(30);
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                let idle = pool.busy.load(Ordering::SeqCst) == 0
                    && pool.last_busy.lock().expect("lock").elapsed() >= quiet;
                if idle || pool.ready.lock().expect("lock").is_empty() {
                    break;
                }
            }
            pool.scheduled.store(false, Ordering::SeqCst);
            pool.refill(&parent);
        });
    }

    /// Starts shims in the background until the pool is full again.
    pub fn refill(self: &Arc<Self>, parent: &str) {
        loop {
            let have = self.ready.lock().expect("lock").len() + self.filling.load(Ordering::SeqCst);
            if have >= self.target {
                return;
            }
            self.filling.fetch_add(1, Ordering::SeqCst);
            let pool = Arc::clone(self);
            let parent = parent.to_string();
            tokio::task::spawn_blocking(move || {
                let r = pool.spawn_one(&parent);
                match r {
                    Ok(w) => pool.ready.lock().expect("lock").push(w),
                    Err(e) => {
                        tracing::warn!(error = %e, "warm shim failed; starting containers cold")
                    }
                }
                pool.filling.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }

    fn spawn_one(&self, parent: &str) -> Result<WarmShim, String> {
        use std::os::unix::process::CommandExt;
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        std::fs::create_dir_all(&self.staging)
            .map_err(|e| format!("{}: {e}", self.staging.display()))?;
        let cgroup = format!("{parent}/{PREFIX}{}-{n}", std::process::id());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let mut child = Command::new(&self.exe)
            .args(["__shim", "--warm", &cgroup])
            .arg(&self.supervisor)
            .arg(&self.staging)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .env_clear()
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start a warm shim: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("warm shim has no pipes".into());
        };
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let Ok(report) = serde_json::from_str::<WarmReport>(&line) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("warm shim: {}", line.trim()));
        };
        Ok(WarmShim {
            child,
            stdin,
            stdout,
            cgroup,
            pid: report.pid,
        })
    }
}

impl WarmShim {
    /// Makes this shim's cgroup the container's, with the container's
    /// limits and devices.
    fn take_over_cgroup(&self, spec: &ContainerSpec) -> Result<(), String> {
        // Left by an earlier run of this container (empty by now).
        if super::cgroup::exists(&spec.cgroup) {
            ContainerCgroup::load(&spec.cgroup).delete()?;
        }
        rename(&self.cgroup, &spec.cgroup)?;
        ContainerCgroup::create(&spec.cgroup, &spec.limits)?;
        if !spec.security.privileged {
            super::devices::restrict(&spec.cgroup, super::devices::DEFAULT)?;
        }
        Ok(())
    }

    /// Starts the container in `dir` with this shim; returns the shim and
    /// its start report, as a cold start does. On error nothing of the
    /// shim is left (no process, no cgroup, no mount holding the
    /// container's directories), so the container can start cold.
    pub fn start(
        mut self,
        dir: &Path,
        spec: &ContainerSpec,
    ) -> Result<(Child, StartReport), String> {
        // The shim's process builds the root filesystem meanwhile; it
        // waits for "go" before it runs anything of the container's.
        let mut line = dir.as_os_str().as_encoded_bytes().to_vec();
        line.push(b'\n');
        let handed = self
            .stdin
            .write_all(&line)
            .map_err(|e| format!("warm shim: {e}"))
            .and_then(|()| self.take_over_cgroup(spec))
            .and_then(|()| {
                self.stdin
                    .write_all(b"go\n")
                    .map_err(|e| format!("warm shim: {e}"))
            });
        if let Err(e) = handed {
            self.abandon(&spec.cgroup);
            return Err(e);
        }
        drop(self.stdin);
        let mut report = String::new();
        let _ = self.stdout.read_line(&mut report);
        let report = serde_json::from_str(&report).unwrap_or_else(|_| StartReport::Failed {
            error: format!("the shim ended without a report: {}", report.trim()),
        });
        Ok((self.child, report))
    }

    /// Ends the shim and its process, waits until the process's mount
    /// namespace (with the container's overlay, if it got that far) is
    /// gone, and removes the cgroup under either name.
    fn abandon(&mut self, container_cgroup: &str) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A process that has exited (a zombie included) has no namespaces.
        let ns = format!("/proc/{}/ns/mnt", self.pid);
        for _ in 0..200 {
            if std::fs::read_link(&ns).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for path in [self.cgroup.as_str(), container_cgroup] {
            let cg = ContainerCgroup::load(path);
            cg.kill_all();
            let _ = cg.delete();
        }
    }
}

/// Renames a cgroup within its parent in every v1 hierarchy.
fn rename(from: &str, to: &str) -> Result<(), String> {
    let name = Path::new(to)
        .file_name()
        .ok_or_else(|| format!("cgroup {to}: no name"))?;
    let cg = Cgroup::load(hierarchies::auto(), from);
    let mut done = std::collections::BTreeSet::new();
    for s in cg.subsystems() {
        let path = s.to_controller().path().to_path_buf();
        let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if !done.insert(key) || !path.exists() {
            continue;
        }
        let target = path.with_file_name(name);
        std::fs::rename(&path, &target).map_err(|e| {
            format!(
                "cgroup rename {} to {}: {e}",
                path.display(),
                target.display()
            )
        })?;
    }
    Ok(())
}
