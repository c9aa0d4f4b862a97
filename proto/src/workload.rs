//! The workload spec: what an operator writes in `web.yaml`.
//!
//! Every struct denies unknown fields, so a typo (`replica: 3`) is an error,
//! never silently ignored. [`WorkloadSpec::validate`] checks what the types
//! cannot (ranges, names, cross-field rules) and reports every problem with
//! its field path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Collector, SpecErrors};
use crate::{ByteSize, Constraint, Cpu, Duration, ImageRef};

/// Most replicas one workload may ask for.
pub const MAX_REPLICAS: u32 = 100_000;
/// Smallest memory limit a container can start with.
pub const MIN_MEMORY: ByteSize = ByteSize::mib(4);
/// Most CPU one replica may ask for: more than any machine has.
pub const MAX_CPU: Cpu = Cpu::from_cores(10_000);
/// Most memory one replica may ask for: more than any machine has.
pub const MAX_MEMORY: ByteSize = ByteSize::from_bytes(1 << 50);
/// Most scratch disk one replica may ask for.
pub const MAX_DISK: ByteSize = ByteSize::from_bytes(1 << 60);

/// A workload: `replicas` copies of one container, placed by the gateway
/// (a service), or runs of one that end (a batch job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = crate::schema::spec::workload_rules)]
pub struct WorkloadSpec {
    /// Unique name: lowercase letters, digits and '-', at most 63 characters.
    #[schemars(schema_with = "crate::schema::spec::name")]
    pub name: String,
    /// The namespace it belongs to (`default` unless given; the API's
    /// `?namespace=` and the CLI's `-n` set it when the spec does not).
    #[serde(
        default = "default_namespace",
        skip_serializing_if = "is_default_namespace"
    )]
    #[schemars(schema_with = "crate::schema::spec::namespace")]
    pub namespace: String,
    /// `service` (the default): replicas kept running; `batch`: runs to
    /// completion (see `batch`); `system`: one copy on every eligible node.
    #[serde(default, skip_serializing_if = "WorkloadKind::is_service")]
    pub kind: WorkloadKind,
    /// How many copies to run (a service's; a batch job has `batch`).
    #[serde(default = "one")]
    #[schemars(range(max = 100_000))]
    pub replicas: u32,
    /// The image to run.
    pub image: ImageRef,
    /// Replaces the image's ENTRYPOINT (as in Kubernetes); the image CMD is
    /// dropped unless `args` is given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::spec::command")]
    pub command: Vec<String>,
    /// Replaces the image's CMD.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::spec::args")]
    pub args: Vec<String>,
    /// Environment variables, added to the image's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::schema::spec::env")]
    pub env: BTreeMap<String, String>,
    /// What one replica reserves, and its limits.
    #[serde(default)]
    pub resources: Resources,
    /// Container ports, optionally published on the node. A container
    /// port, and a host port, appear once per protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// When the agent restarts the container after it exits: a service's
    /// by default `always`; a batch run's `never` (a failed run is retried
    /// as a new one, up to `batch.backoff_limit`) or `on-failure` (in
    /// place, within the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    /// How a batch job runs to completion (`kind: batch` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
    /// Storage its containers mount (see `mounts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeSpec>,
    /// Where each container mounts which volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    /// Secrets its containers read, as files and environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRef>,
    /// A probe that tells whether a replica is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    /// Where replicas may and should run.
    #[serde(default)]
    pub placement: Placement,
    /// 1 (lowest) to 100; higher may preempt lower when the fleet is full.
    #[serde(default = "default_priority")]
    #[schemars(range(min = 1, max = 100))]
    pub priority: u32,
    /// Network mode of each replica.
    #[serde(default)]
    pub network: NetworkMode,
    /// How long `stop` waits after SIGTERM before SIGKILL.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: Duration,
    /// What its containers may do beyond Skiff's hardened default.
    #[serde(default, skip_serializing_if = "SecuritySpec::is_default")]
    pub security: SecuritySpec,
}

/// Privileges beyond the default (Docker's default capabilities, a
/// seccomp filter, no new privileges).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecuritySpec {
    /// Every capability, no seccomp filter, the host's devices (as
    /// `docker run --privileged`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Capabilities added to the default set (`NET_ADMIN`, `SYS_TIME`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::spec::capabilities")]
    pub cap_add: Vec<String>,
    /// Run in a user namespace: root in the container is an unprivileged
    /// user on the host (the node's `runtime.userns_remap_range`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub user_namespace: bool,
}

impl SecuritySpec {
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// Whether `name` is written as a capability (`NET_ADMIN`, `CAP_NET_ADMIN`).
pub fn is_capability_name(name: &str) -> bool {
    let n = name.strip_prefix("CAP_").unwrap_or(name);
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
}

fn one() -> u32 {
    1
}
fn default_namespace() -> String {
    crate::namespace::DEFAULT.to_string()
}
fn is_default_namespace(ns: &str) -> bool {
    ns == crate::namespace::DEFAULT
}
fn default_backoff_limit() -> u32 {
    6
}
fn default_backoff() -> Duration {
    Duration::from_secs(10)
}

/// What kind of work a workload is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// Long-running replicas, kept at `replicas`.
    #[default]
    Service,
    /// Runs that end: `batch.completions` of them must succeed (exit 0),
    /// `batch.parallelism` at a time.
    Batch,
    /// One copy on every node that `placement.sites` and
    /// `placement.constraints` allow, as nodes join and leave (a log
    /// shipper, a monitoring agent), as a Kubernetes DaemonSet.
    System,
}

impl WorkloadKind {
    pub fn is_service(&self) -> bool {
        *self == WorkloadKind::Service
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkloadKind::Service => "service",
            WorkloadKind::Batch => "batch",
            WorkloadKind::System => "system",
        })
    }
}

/// How a batch job runs to completion, as a Kubernetes Job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Successful runs (exit code 0) that complete the job. Default 1.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100_000))]
    pub completions: u32,
    /// Runs at a time, at most. Default 1.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100_000))]
    pub parallelism: u32,
    /// Failed runs (a non-zero exit, or a run that could not start) after
    /// which the job fails and its other runs stop. A run lost with its
    /// node is run again without counting. Default 6.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(max = 100_000))]
    pub backoff_limit: u32,
    /// How long the run after the first failure waits; each later failure
    /// doubles it, up to 6 minutes. Default 10s.
    #[serde(default = "default_backoff")]
    pub backoff: Duration,
    /// The job fails, and its runs stop, this long after it was created
    /// (default: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::spec::optional_nonzero_duration")]
    pub deadline: Option<Duration>,
}

impl Default for BatchSpec {
    fn default() -> Self {
        Self {
            completions: 1,
            parallelism: 1,
            backoff_limit: default_backoff_limit(),
            backoff: default_backoff(),
            deadline: None,
        }
    }
}

/// A workload's volume: exactly one of `host`, `local` or `tmpfs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = crate::schema::spec::one_volume_kind)]
pub struct VolumeSpec {
    /// What `mounts` call it: lowercase letters, digits and '-'.
    #[schemars(schema_with = "crate::schema::spec::name")]
    pub name: String,
    /// A directory the node publishes under this name (its agent config's
    /// `[volumes.NAME] path = ...`); only nodes that publish it take the
    /// workload. Never a path: the spec cannot reach anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::spec::name_or_null")]
    pub host: Option<String>,
    /// A directory the agent makes and keeps under its state directory,
    /// the workload's own on that node: its data survives restarts of the
    /// container and the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalVolume>,
    /// Memory-backed, gone with the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<TmpfsVolume>,
}

/// A local volume: each replica has its own (`WORKLOAD.VOLUME.N` for
/// replica slot N), on the node it was first placed on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalVolume {
    /// At most this much data, held by a project quota where the node's
    /// filesystem has them (XFS, or ext4 with the `project` and `quota`
    /// features, mounted with `prjquota`); counted against the node's disk
    /// in placement either way. None: no limit, nothing counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::spec::local_size")]
    pub size: Option<ByteSize>,
    /// When the node that holds it is down: `wait` (the default) keeps the
    /// replica pending until the node is back, so it never starts empty
    /// elsewhere; `recreate` starts it elsewhere with a new, empty volume.
    #[serde(default, skip_serializing_if = "OnNodeLoss::is_wait")]
    pub on_node_loss: OnNodeLoss,
}

/// What a replica whose local volume's node is down does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnNodeLoss {
    #[default]
    Wait,
    Recreate,
}

impl OnNodeLoss {
    fn is_wait(&self) -> bool {
        *self == OnNodeLoss::Wait
    }
}

/// A tmpfs volume and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TmpfsVolume {
    /// At most this much (memory, counted against the container's limit).
    #[schemars(schema_with = "crate::schema::spec::tmpfs_size")]
    pub size: ByteSize,
}

/// A volume mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// One of `volumes`, by name.
    pub volume: String,
    /// Where, in the container: an absolute path, not `/` and not under
    /// `/proc`, `/sys` or `/dev`.
    #[schemars(schema_with = "crate::schema::spec::mount_path")]
    pub path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// A secret (made with `skiff secret create NAME`) in the container: a
/// directory with one file per key, and/or environment variables from its
/// keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = crate::schema::spec::secret_used)]
pub struct SecretRef {
    /// The secret, by name.
    #[schemars(schema_with = "crate::schema::spec::name")]
    pub name: String,
    /// A directory in the container holding one read-only file per key,
    /// the container's user's; a rotated secret's files change in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::spec::mount_path_or_null")]
    pub path: Option<String>,
    /// Environment variables set from its keys: `VARIABLE: key` (read
    /// when the container starts).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::schema::spec::secret_env")]
    pub env: BTreeMap<String, String>,
}

/// Whether `key` can name a secret's key (and its file): letters, digits,
/// `.`, `_` and `-`, not `.` or `..`, at most 253 characters.
pub fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Longest wait between a batch job's runs after failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(360);

impl BatchSpec {
    /// How long the next run waits after `failed` failures (0 after none).
    pub fn backoff_after(&self, failed: u32) -> Duration {
        if failed == 0 {
            return Duration::from_secs(0);
        }
        let factor = 1u64 << (failed - 1).min(20);
        let ms = self.backoff.as_millis().saturating_mul(factor);
        Duration::from_millis(ms.min(MAX_BACKOFF.as_millis()))
    }
}
fn default_priority() -> u32 {
    50
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(10)
}

/// CPU and memory (and, optionally, scratch disk) for one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Reserved for placement and enforced as a CPU quota: more than 0, at
    /// most 10000 cores. Default 100m.
    #[serde(default = "default_cpu")]
    #[schemars(schema_with = "crate::schema::spec::cpu")]
    pub cpu: Cpu,
    /// Reserved for placement and enforced as a hard limit: at least 4Mi,
    /// at most 1Pi. Default 128Mi.
    #[serde(default = "default_memory")]
    #[schemars(schema_with = "crate::schema::spec::memory")]
    pub memory: ByteSize,
    /// Scratch disk reserved for placement, at most 1Ei. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::spec::disk")]
    pub disk: Option<ByteSize>,
}

fn default_cpu() -> Cpu {
    Cpu::from_millis(100)
}
fn default_memory() -> ByteSize {
    ByteSize::mib(128)
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu: default_cpu(),
            memory: default_memory(),
            disk: None,
        }
    }
}

/// A container port, published on the node when `host` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = crate::schema::spec::port_rules)]
pub struct PortSpec {
    #[schemars(range(min = 1, max = 65535))]
    pub container: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub host: Option<u32>,
    #[serde(default)]
    pub protocol: Protocol,
    /// Node address to publish on; all addresses when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::spec::host_ip")]
    pub host_ip: Option<IpAddr>,
}

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl std::str::FromStr for PortSpec {
    type Err = String;

    /// Docker's `-p` syntax: `HOST:CONTAINER`, `IP:HOST:CONTAINER`, each
    /// with an optional `/tcp` or `/udp`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("-p {s:?}: {why} (expected [IP:]HOST:CONTAINER[/tcp|/udp])");
        let (ports, protocol) = match s.rsplit_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some((_, other)) => return Err(bad(&format!("unknown protocol {other:?}"))),
            None => (s, Protocol::Tcp),
        };
        let parts: Vec<&str> = ports.rsplitn(3, ':').collect();
        let port = |p: &str| -> Result<u32, String> {
            match p.parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => Ok(n),
                _ => Err(bad(&format!("{p:?} is not a port"))),
            }
        };
        let (container, host, host_ip) = match parts.as_slice() {
            [c, h] => (port(c)?, port(h)?, None),
            [c, h, ip] => {
                let ip = ip
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .map_err(|_| bad(&format!("{ip:?} is not an IP address")))?;
                (port(c)?, port(h)?, Some(ip))
            }
            _ => return Err(bad("no host port")),
        };
        Ok(PortSpec {
            container,
            host: Some(host),
            protocol,
            host_ip,
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Never,
    OnFailure,
    #[default]
    Always,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Bridge,
    Host,
    None,
}

/// Exactly one of `http`, `tcp` or `exec`, with timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = crate::schema::spec::one_probe)]
pub struct HealthSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    #[serde(default = "default_interval")]
    #[schemars(schema_with = "crate::schema::spec::nonzero_duration")]
    pub interval: Duration,
    #[serde(default = "default_timeout")]
    #[schemars(schema_with = "crate::schema::spec::nonzero_duration")]
    pub timeout: Duration,
    /// Consecutive failures before the replica is unhealthy.
    #[serde(default = "default_retries")]
    #[schemars(range(min = 1, max = 4_294_967_295_u32))]
    pub retries: u32,
    /// Failures during this time after start do not count.
    #[serde(default)]
    pub start_period: Duration,
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_retries() -> u32 {
    3
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    #[schemars(regex(pattern = "^/"))]
    pub path: String,
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecProbe {
    #[schemars(schema_with = "crate::schema::spec::probe_command")]
    pub command: Vec<String>,
}

/// Where replicas may run and where they should go first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = crate::schema::spec::skew_needs_spread)]
pub struct Placement {
    /// Sites allowed; empty allows every site.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::spec::sites")]
    pub sites: Vec<String>,
    /// Sites to fill first, in order (e.g. the cheapest); each must be
    /// one of `sites` when `sites` is given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::spec::sites")]
    pub prefer: Vec<String>,
    /// Spread replicas evenly over sites or nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
    /// With `spread`: the largest allowed difference in replica count
    /// between any two sites (or nodes). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4_294_967_295_u32))]
    pub max_skew: Option<u32>,
    /// Every constraint must hold on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// Never run two replicas on one node (implied by published host ports).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub distinct_nodes: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Spread {
    Site,
    Node,
}

/// What one replica runs: the part of a workload an agent needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub image: ImageRef,
    pub volumes: Vec<VolumeSpec>,
    pub mounts: Vec<MountSpec>,
    pub secrets: Vec<SecretRef>,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub ports: Vec<PortSpec>,
    pub restart: RestartPolicy,
    pub health: Option<HealthSpec>,
    pub network: NetworkMode,
    pub stop_timeout: Duration,
    pub security: SecuritySpec,
}

/// Whether `name` is a valid workload, site or node name (an RFC 1123 label).
pub fn is_valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

const NAME_RULE: &str = "lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters";

/// Paths a volume may not be mounted at (or under).
const KERNEL_PATHS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Why a path cannot be a mount point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountPathError {
    #[error("{0:?} is not an absolute path")]
    Relative(String),
    #[error("a volume cannot be mounted at /")]
    Root,
    #[error("{0:?} is not a normal path (no //, . or ..)")]
    NotNormal(String),
    #[error("{0:?} is under {1}, which the runtime owns")]
    Kernel(String, &'static str),
}

/// A mount path: absolute, normal (no `.`, `..` or empty components, no
/// NUL), not `/`, not under the kernel's filesystems.
pub fn check_mount_path(p: &str) -> Result<(), MountPathError> {
    if !p.starts_with('/') {
        return Err(MountPathError::Relative(p.into()));
    }
    let t = p.strip_suffix('/').unwrap_or(p);
    if t.is_empty() {
        return Err(MountPathError::Root);
    }
    if p.contains('\0')
        || t[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(MountPathError::NotNormal(p.into()));
    }
    if let Some(k) = KERNEL_PATHS
        .iter()
        .find(|k| t == **k || t.starts_with(&format!("{k}/")))
    {
        return Err(MountPathError::Kernel(p.into(), k));
    }
    Ok(())
}

fn check_port(errs: &mut Collector, path: String, port: u32) {
    if !(1..=65535).contains(&port) {
        errs.push(path, format!("{port} is not a port"));
    }
}

impl WorkloadSpec {
    /// Its key in the fleet's state ([`crate::namespace::qualify`]).
    pub fn key(&self) -> String {
        crate::namespace::qualify(&self.namespace, &self.name)
    }

    /// Checks everything the types cannot; `root` prefixes every path (`spec`).
    pub fn validate(&self, root: &str) -> Result<(), SpecErrors> {
        let mut errs = Collector::default();
        let p = |field: &str| format!("{root}.{field}");

        if !is_valid_name(&self.name) {
            errs.push(
                p("name"),
                format!("{:?} is not a valid name ({NAME_RULE})", self.name),
            );
        }
        for (i, c) in self.security.cap_add.iter().enumerate() {
            if !is_capability_name(c) {
                errs.push(
                    format!("{root}.security.cap_add[{i}]"),
                    format!("{c:?} is not a capability name (e.g. NET_ADMIN)"),
                );
            }
        }
        if !is_valid_name(&self.namespace) {
            errs.push(
                p("namespace"),
                format!("{:?} is not a valid name ({NAME_RULE})", self.namespace),
            );
        }
        if self.replicas > MAX_REPLICAS {
            errs.push(
                p("replicas"),
                format!(
                    "{} is more than the maximum of {MAX_REPLICAS}",
                    self.replicas
                ),
            );
        }
        for (i, arg) in self.command.iter().chain(&self.args).enumerate() {
            if arg.contains('\0') {
                let (field, idx) = if i < self.command.len() {
                    ("command", i)
                } else {
                    ("args", i - self.command.len())
                };
                errs.push(format!("{root}.{field}[{idx}]"), "contains a NUL byte");
            }
        }
        if self.command.first().is_some_and(String::is_empty) {
            errs.push(p("command[0]"), "the program must not be empty");
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                errs.push(
                    p(&format!("env.{k}")),
                    format!("{k:?} is not a valid variable name"),
                );
            } else if v.contains('\0') {
                errs.push(p(&format!("env.{k}")), "value contains a NUL byte");
            }
        }
        if self.resources.cpu.millis() == 0 {
            errs.push(p("resources.cpu"), "must be more than 0");
        } else if self.resources.cpu > MAX_CPU {
            errs.push(
                p("resources.cpu"),
                format!(
                    "{} is more than the maximum of {MAX_CPU}",
                    self.resources.cpu
                ),
            );
        }
        if self.resources.memory > MAX_MEMORY {
            errs.push(
                p("resources.memory"),
                format!(
                    "{} is more than the maximum of {MAX_MEMORY}",
                    self.resources.memory
                ),
            );
        }
        if let Some(disk) = self.resources.disk.filter(|d| *d > MAX_DISK) {
            errs.push(
                p("resources.disk"),
                format!("{disk} is more than the maximum of {MAX_DISK}"),
            );
        }
        if self.resources.memory < MIN_MEMORY {
            errs.push(
                p("resources.memory"),
                format!(
                    "{} is less than the minimum of {MIN_MEMORY}",
                    self.resources.memory
                ),
            );
        }
        self.validate_ports(root, &mut errs);
        self.validate_kind(root, &mut errs);
        self.validate_volumes(root, &mut errs);
        if let Some(h) = &self.health {
            h.validate(&p("health"), &mut errs);
        }
        self.placement.validate(&p("placement"), &mut errs);
        if !(1..=100).contains(&self.priority) {
            errs.push(
                p("priority"),
                format!("{} is not between 1 and 100", self.priority),
            );
        }
        if self.network != NetworkMode::Bridge && self.ports.iter().any(|pt| pt.host.is_some()) {
            errs.push(p("network"), "published ports need the bridge network");
        }
        errs.finish()
    }

    fn validate_ports(&self, root: &str, errs: &mut Collector) {
        let mut container = BTreeSet::new();
        let mut host = BTreeSet::new();
        for (i, port) in self.ports.iter().enumerate() {
            let path = format!("{root}.ports[{i}]");
            check_port(errs, format!("{path}.container"), port.container);
            if !container.insert((port.container, port.protocol)) {
                errs.push(
                    format!("{path}.container"),
                    format!("{} is listed twice", port.container),
                );
            }
            if let Some(h) = port.host {
                check_port(errs, format!("{path}.host"), h);
                if !host.insert((h, port.protocol)) {
                    errs.push(format!("{path}.host"), format!("{h} is published twice"));
                }
            } else if port.host_ip.is_some() {
                errs.push(format!("{path}.host_ip"), "needs a host port");
            }
        }
    }

    /// When the agent restarts the container: as given, or the kind's
    /// default (`always` for a service, `never` for a batch run).
    pub fn restart_policy(&self) -> RestartPolicy {
        self.restart.unwrap_or(match self.kind {
            WorkloadKind::Service | WorkloadKind::System => RestartPolicy::Always,
            WorkloadKind::Batch => RestartPolicy::Never,
        })
    }

    /// How many of its containers run at once, at most, as
    /// `max_fleet_replicas` counts them: a service's replicas, a batch
    /// job's parallelism (never more than its completions); a system
    /// workload's copies are one per node, bounded by the fleet itself,
    /// and not counted.
    pub fn live_at_most(&self) -> u32 {
        match self.kind {
            WorkloadKind::Service => self.replicas,
            WorkloadKind::Batch => self
                .batch_rules()
                .map_or(1, |b| b.parallelism.min(b.completions)),
            WorkloadKind::System => 0,
        }
    }

    /// A batch job's rules (the defaults when `batch` is not given);
    /// `None` for a service.
    pub fn batch_rules(&self) -> Option<BatchSpec> {
        (self.kind == WorkloadKind::Batch).then(|| self.batch.unwrap_or_default())
    }

    fn validate_secrets<'a>(
        &'a self,
        root: &str,
        errs: &mut Collector,
        paths: &mut BTreeSet<&'a str>,
    ) {
        let mut names = BTreeSet::new();
        for (i, s) in self.secrets.iter().enumerate() {
            let path = format!("{root}.secrets[{i}]");
            if !is_valid_name(&s.name) {
                errs.push(
                    format!("{path}.name"),
                    format!("{:?} is not a valid secret name ({NAME_RULE})", s.name),
                );
            } else if !names.insert(s.name.as_str()) {
                errs.push(format!("{path}.name"), format!("{} appears twice", s.name));
            }
            if s.path.is_none() && s.env.is_empty() {
                errs.push(path.clone(), "needs path, env or both");
            }
            if let Some(p) = &s.path {
                if let Err(why) = check_mount_path(p) {
                    errs.push(format!("{path}.path"), why.to_string());
                } else if !paths.insert(p.strip_suffix('/').unwrap_or(p)) {
                    errs.push(format!("{path}.path"), format!("{p} is mounted twice"));
                }
            }
            for (var, key) in &s.env {
                if var.is_empty() || var.contains('=') || var.contains('\0') {
                    errs.push(
                        format!("{path}.env.{var}"),
                        format!("{var:?} is not a valid variable name"),
                    );
                } else if self.env.contains_key(var) {
                    errs.push(
                        format!("{path}.env.{var}"),
                        format!("{var} is also set in env"),
                    );
                }
                if !is_secret_key(key) {
                    errs.push(
                        format!("{path}.env.{var}"),
                        format!("{key:?} is not a secret key (letters, digits, '.', '_', '-')"),
                    );
                }
            }
        }
    }

    fn validate_volumes(&self, root: &str, errs: &mut Collector) {
        let mut names = BTreeSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let path = format!("{root}.volumes[{i}]");
            if !is_valid_name(&v.name) {
                errs.push(
                    format!("{path}.name"),
                    format!("{:?} is not a valid name ({NAME_RULE})", v.name),
                );
            } else if !names.insert(v.name.as_str()) {
                errs.push(format!("{path}.name"), format!("{} appears twice", v.name));
            }
            let kinds = [v.host.is_some(), v.local.is_some(), v.tmpfs.is_some()];
            if kinds.iter().filter(|k| **k).count() != 1 {
                errs.push(path.clone(), "exactly one of host, local or tmpfs");
            }
            if let Some(h) = v.host.as_ref().filter(|h| !is_valid_name(h)) {
                errs.push(
                    format!("{path}.host"),
                    format!("{h:?} is not a volume name the node publishes ({NAME_RULE})"),
                );
            }
            if let Some(size) = v
                .local
                .and_then(|l| l.size)
                .filter(|s| s.bytes() == 0 || *s > MAX_DISK)
            {
                errs.push(
                    format!("{path}.local.size"),
                    format!("{size} is not between 1 byte and {MAX_DISK}"),
                );
            }
            if v.local.is_some() && self.kind != WorkloadKind::Service {
                errs.push(
                    format!("{path}.local"),
                    format!("local volumes are for services; a {} workload can mount host or tmpfs volumes", self.kind),
                );
            }
            if let Some(t) = v
                .tmpfs
                .filter(|t| t.size.bytes() == 0 || t.size > MAX_MEMORY)
            {
                errs.push(
                    format!("{path}.tmpfs.size"),
                    format!("{} is not between 1 byte and {MAX_MEMORY}", t.size),
                );
            }
        }
        let mut paths = BTreeSet::new();
        self.validate_secrets(root, errs, &mut paths);
        for (i, m) in self.mounts.iter().enumerate() {
            let path = format!("{root}.mounts[{i}]");
            if !names.contains(m.volume.as_str()) {
                errs.push(
                    format!("{path}.volume"),
                    format!("no volume {:?} in volumes", m.volume),
                );
            }
            if let Err(why) = check_mount_path(&m.path) {
                errs.push(format!("{path}.path"), why.to_string());
            } else if !paths.insert(m.path.strip_suffix('/').unwrap_or(&m.path)) {
                errs.push(
                    format!("{path}.path"),
                    format!("{} is mounted twice", m.path),
                );
            }
        }
    }

    fn validate_kind(&self, root: &str, errs: &mut Collector) {
        let p = |field: &str| format!("{root}.{field}");
        if self.kind != WorkloadKind::Batch && self.batch.is_some() {
            errs.push(p("batch"), "only for kind: batch");
        }
        match self.kind {
            WorkloadKind::Service => {}
            WorkloadKind::System => {
                if self.replicas != 1 {
                    errs.push(
                        p("replicas"),
                        "a system workload runs one copy on every eligible node",
                    );
                }
            }
            WorkloadKind::Batch => {
                if self.replicas != 1 {
                    errs.push(
                        p("replicas"),
                        "a batch job runs batch.completions runs, batch.parallelism at a time",
                    );
                }
                if self.restart == Some(RestartPolicy::Always) {
                    errs.push(
                        p("restart"),
                        "a batch run ends: never (the default) or on-failure",
                    );
                }
                let b = self.batch.unwrap_or_default();
                for (field, v) in [
                    ("completions", b.completions),
                    ("parallelism", b.parallelism),
                ] {
                    if !(1..=MAX_REPLICAS).contains(&v) {
                        errs.push(
                            p(&format!("batch.{field}")),
                            format!("{v} is not between 1 and {MAX_REPLICAS}"),
                        );
                    }
                }
                if b.backoff_limit > MAX_REPLICAS {
                    errs.push(
                        p("batch.backoff_limit"),
                        format!(
                            "{} is more than the maximum of {MAX_REPLICAS}",
                            b.backoff_limit
                        ),
                    );
                }
                if b.deadline.is_some_and(Duration::is_zero) {
                    errs.push(p("batch.deadline"), "must be more than 0s");
                }
            }
        }
    }

    /// The part of the spec one replica runs.
    pub fn container_spec(&self) -> ContainerSpec {
        ContainerSpec {
            image: self.image.clone(),
            volumes: self.volumes.clone(),
            mounts: self.mounts.clone(),
            secrets: self.secrets.clone(),
            command: self.command.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            resources: self.resources,
            ports: self.ports.clone(),
            restart: self.restart_policy(),
            health: self.health.clone(),
            network: self.network,
            stop_timeout: self.stop_timeout,
            security: self.security.clone(),
        }
    }
}

impl HealthSpec {
    /// Checks a health check given on its own (the agent's `run` flags);
    /// errors are named under `path`.
    pub fn check(&self, path: &str) -> Result<(), SpecErrors> {
        let mut errs = Collector::default();
        self.validate(path, &mut errs);
        errs.finish()
    }

    fn validate(&self, path: &str, errs: &mut Collector) {
        let probes = [self.http.is_some(), self.tcp.is_some(), self.exec.is_some()];
        match probes.iter().filter(|p| **p).count() {
            1 => {}
            0 => errs.push(path, "needs one probe: http, tcp or exec"),
            _ => errs.push(
                path,
                "has more than one probe; choose one of http, tcp or exec",
            ),
        }
        if let Some(http) = &self.http {
            check_port(errs, format!("{path}.http.port"), http.port);
            if !http.path.starts_with('/') {
                errs.push(
                    format!("{path}.http.path"),
                    format!("{:?} must start with '/'", http.path),
                );
            }
        }
        if let Some(tcp) = &self.tcp {
            check_port(errs, format!("{path}.tcp.port"), tcp.port);
        }
        if let Some(exec) = &self.exec
            && exec.command.first().is_none_or(String::is_empty)
        {
            errs.push(format!("{path}.exec.command"), "must name a program");
        }
        if self.interval.is_zero() {
            errs.push(format!("{path}.interval"), "must be more than 0s");
        }
        if self.timeout.is_zero() {
            errs.push(format!("{path}.timeout"), "must be more than 0s");
        }
        if self.retries == 0 {
            errs.push(format!("{path}.retries"), "must be at least 1");
        }
    }
}

impl Placement {
    fn validate(&self, path: &str, errs: &mut Collector) {
        let mut seen = BTreeSet::new();
        for (i, s) in self.sites.iter().enumerate() {
            if !is_valid_name(s) {
                errs.push(
                    format!("{path}.sites[{i}]"),
                    format!("{s:?} is not a valid site name ({NAME_RULE})"),
                );
            } else if !seen.insert(s) {
                errs.push(
                    format!("{path}.sites[{i}]"),
                    format!("{s:?} is listed twice"),
                );
            }
        }
        let mut preferred = BTreeSet::new();
        for (i, s) in self.prefer.iter().enumerate() {
            let field = format!("{path}.prefer[{i}]");
            if !is_valid_name(s) {
                errs.push(
                    field,
                    format!("{s:?} is not a valid site name ({NAME_RULE})"),
                );
            } else if !self.sites.is_empty() && !self.sites.contains(s) {
                errs.push(field, format!("{s:?} is not one of the allowed sites"));
            } else if !preferred.insert(s) {
                errs.push(field, format!("{s:?} is listed twice"));
            }
        }
        match (self.spread, self.max_skew) {
            (None, Some(_)) => errs.push(format!("{path}.max_skew"), "needs spread"),
            (_, Some(0)) => errs.push(format!("{path}.max_skew"), "must be at least 1"),
            _ => {}
        }
    }

    /// The largest allowed replica-count difference under `spread`.
    pub fn max_skew(&self) -> u32 {
        self.max_skew.unwrap_or(1)
    }
}

#[cfg(test)]
mod publish_tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn docker_publish_syntax() {
        let p: PortSpec = "8080:80".parse().unwrap();
        assert_eq!(
            (p.host, p.container, p.protocol, p.host_ip),
            (Some(8080), 80, Protocol::Tcp, None)
        );
        let p: PortSpec = "127.0.0.1:5353:53/udp".parse().unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            (p.host, p.container, p.protocol),
            (Some(5353), 53, Protocol::Udp)
        );
        let p: PortSpec = "[::1]:8443:443/tcp".parse().unwrap();
        assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
        for (bad, why) in [
            ("80", "no host port"),
            ("0:80", "\"0\" is not a port"),
            ("8080:70000", "\"70000\" is not a port"),
            ("8080:80/sctp", "unknown protocol \"sctp\""),
            ("host:8080:80", "\"host\" is not an IP address"),
            ("", "no host port"),
        ] {
            let e = bad.parse::<PortSpec>().unwrap_err();
            assert!(
                e.contains(why) && e.starts_with(&format!("-p {bad:?}")),
                "{bad}: {e}"
            );
        }
    }

    proptest! {
        #[test]
        fn publish_round_trips(host in 1u32..=65535, container in 1u32..=65535, udp: bool, ip in proptest::option::of(any::<[u8; 4]>())) {
            let mut s = String::new();
            if let Some(ip) = ip {
                s.push_str(&format!("{}.{}.{}.{}:", ip[0], ip[1], ip[2], ip[3]));
            }
            s.push_str(&format!("{host}:{container}"));
            if udp {
                s.push_str("/udp");
            }
            let p: PortSpec = s.parse().unwrap();
            prop_assert_eq!(p.host, Some(host));
            prop_assert_eq!(p.container, container);
            prop_assert_eq!(p.protocol, if udp { Protocol::Udp } else { Protocol::Tcp });
            prop_assert_eq!(p.host_ip, ip.map(IpAddr::from));
        }

        #[test]
        fn publish_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<PortSpec>();
        }
    }
}
