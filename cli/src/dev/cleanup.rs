//! Everything a dev fleet makes on the host, and how it is all removed:
//! at Ctrl-C, and at the next start after a `kill -9` (the same code, so
//! both leave the same nothing). A dev fleet's things have names of their
//! own ([`Names`]), so nothing of a real agent on the same host is touched:
//! its agents' processes (recorded by pid), its VMs (the local provider's
//! records under `STATE/vms`), its containers and their supervisors (their
//! `state.json`), every process in its cgroup subtree, its bridges and
//! nftables table, mounts under its state directory, and the directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// The names of what a dev fleet makes.
#[derive(Debug, Clone)]
pub struct Names {
    /// The local agent's bridge.
    pub bridge: &'static str,
    /// The burst VMs' bridge.
    pub vm_bridge: &'static str,
    /// The VMs' subnet (`.1` is the host on `vm_bridge`).
    pub vm_subnet: &'static str,
    /// The local agent's nftables table (family ip).
    pub nft_table: &'static str,
    /// The cgroup every dev agent puts its containers under.
    pub cgroup: &'static str,
    /// The pool of the nodes' container subnets (the local agent's bridge
    /// is on the host, so it must not be another agent's).
    pub node_subnets: &'static str,
}

pub const NAMES: Names = Names {
    bridge: "skdev0",
    vm_bridge: "skdevvm0",
    vm_subnet: "10.249.0.0/24",
    nft_table: "skiff_dev",
    cgroup: "skiff-dev",
    node_subnets: "10.248.0.0/16",
};

/// What a running dev fleet writes about itself (`STATE/dev.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Running {
    pub pid: u32,
    #[serde(default)]
    pub agent_pid: Option<u32>,
}

pub fn running_file(state: &Path) -> PathBuf {
    state.join("dev.json")
}

/// Whether `pid` is a live process whose command line mentions `needle`
/// (so a reused pid is never killed by mistake).
fn is_ours(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}

/// The pid of a `skiff dev` still running with this state directory.
pub fn still_running(state: &Path) -> Option<u32> {
    let r: Running = serde_json::from_slice(&std::fs::read(running_file(state)).ok()?).ok()?;
    let me = std::process::id();
    (r.pid != me
        && std::fs::read(format!("/proc/{}/cmdline", r.pid))
            .map(|c| String::from_utf8_lossy(&c).contains("dev"))
            .unwrap_or(false))
    .then_some(r.pid)
}

/// Every cgroup hierarchy's root: `/sys/fs/cgroup` itself on cgroup v2,
/// each controller (and `unified`) on v1 and hybrid hosts.
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.procs").exists() {
        return vec![base.to_path_buf()];
    }
    std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}

/// Directories of the tree under `dir`, deepest first.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
        out.push(d);
    }
    out.reverse();
    out
}

/// Kills every process in the dev cgroup subtree and removes it.
fn clean_cgroups(name: &str) -> Vec<String> {
    let mut left = Vec::new();
    for root in cgroup_roots() {
        let top = root.join(name);
        if !top.exists() {
            continue;
        }
        for _ in 0..100 {
            let dirs = subtree(&top);
            for d in &dirs {
                for pid in std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            for d in &dirs {
                let _ = std::fs::remove_dir(d);
            }
            if !top.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if top.exists() {
            left.push(top.display().to_string());
        }
    }
    left
}

/// Kills the containers (and their supervisors) an agent's state directory
/// records.
fn kill_containers(agent_state: &Path) {
    for e in std::fs::read_dir(agent_state.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(b) = std::fs::read(e.path().join("state.json")) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) else {
            continue;
        };
        for key in ["pid", "shim_pid"] {
            if let Some(pid) = v[key].as_i64() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let prefix = dir.display().to_string();
    let mut out: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .map(PathBuf::from)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    out
}

fn quiet(cmd: &mut std::process::Command) {
    let _ = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// The burst site's provider, to find and terminate its VMs.
pub fn local_cloud(state: &Path, names: &Names) -> skiff_cloud::local::LocalCloud {
    skiff_cloud::local::LocalCloud::new(skiff_cloud::local::LocalConfig {
        root: state.join("vms"),
        agent_bin: state.join("bin/skiff-agent"),
        bridge: names.vm_bridge.to_string(),
        subnet: names.vm_subnet.parse().expect("a valid subnet"),
        types: Vec::new(),
    })
}

/// Removes everything a dev fleet with this state directory made, running
/// or left by a killed one; returns what could not be removed.
pub async fn clean(state: &Path, names: &Names) -> Vec<String> {
    use skiff_cloud::CloudProvider;
    let needle = state.display().to_string();
    if let Ok(b) = std::fs::read(running_file(state))
        && let Ok(r) = serde_json::from_slice::<Running>(&b)
        && let Some(agent) = r.agent_pid
        && is_ours(agent, &needle)
    {
        let _ = kill(Pid::from_raw(-(agent as i32)), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(agent as i32), Signal::SIGKILL);
    }
    // The VMs: their agents, containers, namespaces and links.
    let cloud = local_cloud(state, names);
    if let Ok(vms) = cloud.describe(skiff_cloud::TAG_SITE, "burst").await {
        let ids: Vec<String> = vms.into_iter().map(|v| v.id).collect();
        if !ids.is_empty() {
            let _ = cloud.terminate(&ids).await;
        }
    }
    kill_containers(&state.join("agent"));
    let mut left = clean_cgroups(names.cgroup);
    quiet(std::process::Command::new("ip").args(["link", "del", names.bridge]));
    quiet(std::process::Command::new("ip").args(["link", "del", names.vm_bridge]));
    quiet(std::process::Command::new("nft").args(["delete", "table", "ip", names.nft_table]));
    for m in mounts_under(state) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    if state.exists()
        && let Err(e) = std::fs::remove_dir_all(state)
    {
        left.push(format!("{}: {e}", state.display()));
    }
    left
}
