//! Container cgroups through cgroups-rs, on cgroup v1 (each controller its
//! own hierarchy, as on this project's hybrid hosts) and cgroup v2 (one
//! unified hierarchy, as on most cloud images).

use std::path::PathBuf;

use cgroups_rs::fs::cgroup_builder::CgroupBuilder;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Cgroup, Controller, hierarchies};
use serde::{Deserialize, Serialize};

use super::spec::Limits;

/// CFS period used for CPU quotas (100 ms, as Docker).
const CPU_PERIOD_US: u64 = 100_000;

/// Resource usage of a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub cpu_nanos: u64,
    pub memory_bytes: u64,
    pub pids: u64,
}

/// A container's cgroup.
#[derive(Debug)]
pub struct ContainerCgroup {
    cg: Cgroup,
}

fn err(what: &str, path: &str, e: impl std::fmt::Display) -> String {
    format!("cgroup {path}: {what}: {e}")
}

/// Whether the cgroup at `path` exists (checked in the pids hierarchy on
/// cgroup v1, which every container cgroup has, or the unified one).
pub fn exists(path: &str) -> bool {
    let root = if is_v2() {
        hierarchies::UNIFIED_MOUNTPOINT.to_string()
    } else {
        format!("{}/pids", hierarchies::UNIFIED_MOUNTPOINT)
    };
    std::path::Path::new(&root).join(path).exists()
}

/// Whether the host runs the unified (v2) hierarchy.
pub fn is_v2() -> bool {
    hierarchies::is_cgroup2_unified_mode()
}

impl ContainerCgroup {
    /// Creates the cgroup at `path` (relative to the hierarchy roots) with
    /// the limits.
    pub fn create(path: &str, limits: &Limits) -> Result<Self, String> {
        let mut b = CgroupBuilder::new(path);
        if let Some(m) = limits.memory {
            let m = i64::try_from(m).map_err(|_| err("memory limit", path, "too large"))?;
            b = b.memory().memory_hard_limit(m).done();
        }
        if let Some(c) = limits.cpu_millis {
            let quota = (c * CPU_PERIOD_US / 1000).max(1000) as i64;
            b = b.cpu().period(CPU_PERIOD_US).quota(quota).done();
        }
        if let Some(p) = limits.pids {
            b = b
                .pid()
                .maximum_number_of_processes(cgroups_rs::fs::MaxValue::Value(p as i64))
                .done();
        }
        let cg = b
            .build(hierarchies::auto())
            .map_err(|e| err("create", path, e))?;
        let this = Self { cg };
        if limits.memory.is_some() {
            this.forbid_swap(limits.memory.unwrap_or(0));
        }
        Ok(this)
    }

    /// The cgroup at `path`, created earlier.
    pub fn load(path: &str) -> Self {
        Self {
            cg: Cgroup::load(hierarchies::auto(), path),
        }
    }

    fn memory_dir(&self) -> Option<PathBuf> {
        self.cg
            .controller_of::<MemController>()
            .map(|m| m.path().to_path_buf())
    }

    /// No swap on top of the memory limit (where the kernel accounts swap).
    fn forbid_swap(&self, limit: u64) {
        if let Some(dir) = self.memory_dir() {
            let (file, value) = if self.cg.v2() {
                ("memory.swap.max", "0".to_string())
            } else {
                ("memory.memsw.limit_in_bytes", limit.to_string())
            };
            let path = dir.join(file);
            if path.exists() {
                let _ = std::fs::write(path, value);
            }
        }
    }

    /// The cgroup's directory on a cgroup v2 host (for `CLONE_INTO_CGROUP`).
    pub fn v2_dir(&self) -> Option<PathBuf> {
        self.cg
            .v2()
            .then(|| PathBuf::from(hierarchies::UNIFIED_MOUNTPOINT).join(self.cg.path()))
    }

    /// Moves a process (and its future children) in.
    pub fn add(&self, pid: i32) -> Result<(), String> {
        self.cg
            .add_task_by_tgid(cgroups_rs::CgroupPid::from(pid as u64))
            .map_err(|e| err("add process", self.cg.path(), e))
    }

    /// How many times the kernel's OOM killer has killed in it.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = self.memory_dir() else {
            return 0;
        };
        let (file, key) = if self.cg.v2() {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// CPU time, memory and process count right now.
    pub fn usage(&self) -> Usage {
        let memory_bytes = self
            .cg
            .controller_of::<MemController>()
            .map_or(0, |m| m.memory_stat().usage_in_bytes);
        let pids = self
            .cg
            .controller_of::<PidController>()
            .and_then(|p| p.get_pid_current().ok())
            .unwrap_or(0);
        let cpu_nanos = if self.cg.v2() {
            self.cg
                .controller_of::<cgroups_rs::fs::cpu::CpuController>()
                .and_then(|c| std::fs::read_to_string(c.path().join("cpu.stat")).ok())
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse::<u64>().ok())
                })
                .map_or(0, |us| us * 1000)
        } else {
            self.cg
                .controller_of::<cgroups_rs::fs::cpuacct::CpuAcctController>()
                .map_or(0, |c| c.cpuacct().usage)
        };
        Usage {
            cpu_nanos,
            memory_bytes,
            pids,
        }
    }

    /// Kills every process in it.
    pub fn kill_all(&self) {
        for pid in self.cg.procs() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Whether processes remain.
    pub fn is_empty(&self) -> bool {
        self.cg.procs().is_empty()
    }

    /// Removes it (it must be empty).
    pub fn delete(&self) -> Result<(), String> {
        if !self.cg.exists() {
            return Ok(());
        }
        self.cg
            .delete()
            .map_err(|e| err("delete", self.cg.path(), e))
    }
}
