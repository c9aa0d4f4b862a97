//! The cluster model: sites, nodes and allocations, as the gateway stores
//! them and the API returns them.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ByteSize, Cpu};

/// How a site gets its nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SiteKind {
    /// On-prem: nodes join by token, the gateway never launches any.
    Static,
    /// AWS EC2 region.
    Aws,
    /// Azure region.
    Azure,
    /// VMs simulated as network namespaces on the gateway's host.
    Local,
}

impl std::fmt::Display for SiteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SiteKind::Static => "static",
            SiteKind::Aws => "aws",
            SiteKind::Azure => "azure",
            SiteKind::Local => "local",
        })
    }
}

impl SiteKind {
    /// Whether the gateway can launch nodes here.
    pub fn can_launch(self) -> bool {
        !matches!(self, SiteKind::Static)
    }
}

/// Capacity of a node, or demand of an allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Capacity {
    pub cpu: Cpu,
    pub memory: ByteSize,
    #[serde(default)]
    pub disk: ByteSize,
}

impl Capacity {
    pub const fn new(cpu_millis: u64, memory_bytes: u64, disk_bytes: u64) -> Self {
        Self {
            cpu: Cpu::from_millis(cpu_millis),
            memory: ByteSize::from_bytes(memory_bytes),
            disk: ByteSize::from_bytes(disk_bytes),
        }
    }

    /// Whether `demand` fits in `self`.
    pub fn fits(&self, demand: &Capacity) -> bool {
        demand.cpu <= self.cpu && demand.memory <= self.memory && demand.disk <= self.disk
    }

    pub fn saturating_sub(&self, other: &Capacity) -> Capacity {
        Capacity::new(
            self.cpu.millis().saturating_sub(other.cpu.millis()),
            self.memory.bytes().saturating_sub(other.memory.bytes()),
            self.disk.bytes().saturating_sub(other.disk.bytes()),
        )
    }

    pub fn saturating_add(&self, other: &Capacity) -> Capacity {
        Capacity::new(
            self.cpu.millis().saturating_add(other.cpu.millis()),
            self.memory.bytes().saturating_add(other.memory.bytes()),
            self.disk.bytes().saturating_add(other.disk.bytes()),
        )
    }
}

/// Whether a node takes new work.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Heartbeating and schedulable.
    Ready,
    /// Its allocations are being moved away; takes no new work.
    Draining,
    /// Takes no new work; what runs there stays.
    Cordoned,
    /// Missed heartbeats past the grace; its allocations are replaced.
    Down,
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Draining => "draining",
            NodeStatus::Cordoned => "cordoned",
            NodeStatus::Down => "down",
        })
    }
}

/// A node as the gateway knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub site: String,
    pub status: NodeStatus,
    pub allocatable: Capacity,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub os: String,
    pub arch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
}

/// The life of one replica.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AllocationState {
    /// Not placed yet (waiting for capacity).
    Pending,
    /// Placed; the agent is pulling the image.
    Pulling,
    Starting,
    Running,
    Stopping,
    /// Ended by itself (see the exit code).
    Exited,
    /// Could not start, or failed beyond its restart policy.
    Failed,
    /// Stopped on purpose (scale down, update, delete, superseded).
    Stopped,
    /// Its node went down; a replacement was made.
    Lost,
}

impl AllocationState {
    /// Whether the allocation is over and will not run again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            AllocationState::Exited
                | AllocationState::Failed
                | AllocationState::Stopped
                | AllocationState::Lost
        )
    }
}

impl fmt::Display for AllocationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(|v| v.as_str()).unwrap_or("unknown"))
    }
}

/// One replica of a workload, placed (or waiting) somewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Allocation {
    pub id: String,
    pub workload: String,
    pub workload_version: u64,
    /// Which replica of the workload this is (0-based).
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    pub state: AllocationState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}
