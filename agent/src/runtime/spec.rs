//! What one container runs, fully resolved: written to the container's
//! directory as `config.json` by the agent, read by its shim.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use skiff_proto::{NetworkMode, RestartPolicy};

/// The process a container runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in the container's PATH if it has no `/`.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// Resource limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Hard memory limit in bytes (swap is not allowed on top).
    pub memory: Option<u64>,
    /// CPU quota in millicores (1000 = one core).
    pub cpu_millis: Option<u64>,
    /// Most processes and threads.
    pub pids: Option<u64>,
}

/// How far a container is hardened; relaxed only by explicit options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// All capabilities, no seccomp, writable /proc/sys and /sys, host devices.
    #[serde(default)]
    pub privileged: bool,
    /// Capabilities added to the default set (`NET_ADMIN`, …).
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Capabilities removed from it (`ALL` removes every one).
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// Leave `no_new_privs` unset, so set-id binaries and file capabilities
    /// (`ping` with `cap_net_raw`, `su`) take effect, as Docker's default
    /// and Kubernetes' `allowPrivilegeEscalation: true` do. Off: Skiff sets
    /// `no_new_privs` for every process.
    #[serde(default)]
    pub allow_privilege_escalation: bool,
}

/// Ids `0..size` in the container are `host_id..host_id+size` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub host_id: u32,
    pub size: u32,
}

/// A container's complete configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub id: String,
    pub name: String,
    /// The image as named by the user, and its id.
    pub image: String,
    pub image_id: String,
    /// overlayfs lower dirs, top first.
    pub layers: Vec<PathBuf>,
    pub process: ProcessSpec,
    pub hostname: String,
    pub limits: Limits,
    pub security: Security,
    pub network: NetworkMode,
    /// The bridge attachment (bridge mode only).
    #[serde(default)]
    pub net: Option<crate::net::Attachment>,
    pub restart: RestartPolicy,
    /// Milliseconds between SIGTERM and SIGKILL on stop.
    pub stop_timeout_ms: u64,
    /// Rotate the log file past this size.
    pub log_max_bytes: u64,
    /// cgroup path relative to the hierarchy root, e.g. `skiff/<id>`.
    pub cgroup: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub health: Option<skiff_proto::HealthSpec>,
    /// User-namespace remapping, when asked for.
    #[serde(default)]
    pub userns: Option<IdRange>,
    /// Volumes mounted into the root filesystem, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

/// A volume in the container: what is mounted, where, and whether the
/// container may write to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub source: MountSource,
    /// An absolute path in the container (checked by
    /// [`skiff_proto::check_mount_path`]); made if the image lacks it, but
    /// never through a symbolic link.
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
    /// A local volume's directory: while it is empty it is given to the
    /// container's user, so that a non-root process can write its data.
    #[serde(default)]
    pub owned: bool,
    /// A secret's directory: it and its files are given to the
    /// container's user (0500, 0400), whatever they hold.
    #[serde(default)]
    pub secret: bool,
}

/// What a [`Mount`] mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountSource {
    /// A host directory (a published host volume, a local volume's).
    Bind(PathBuf),
    /// A memory-backed filesystem of at most `size` bytes, writable by
    /// everyone (mode 1777, as Docker's).
    Tmpfs { size: u64 },
}
