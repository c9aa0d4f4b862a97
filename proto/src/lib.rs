//! Skiff's contract, shared by every other crate.
//!
//! * The **spec model**: [`WorkloadSpec`] and its parts, parsed from YAML or
//!   JSON ([`parse_workloads`]), validated with errors that name the field
//!   path ([`FieldError`]), and described by a JSON Schema ([`schema`]).
//! * Exact value types: CPU and byte quantities ([`Cpu`], [`ByteSize`]),
//!   durations ([`Duration`]), image references ([`ImageRef`]) and placement
//!   constraints ([`Constraint`]).
//! * The **cluster model**: sites, nodes and allocations ([`cluster`]).
//! * The **wire contract** between agent and gateway ([`wire`]), generated at
//!   build time from `proto/skiff/agent/v1/agent.proto`, with conversions to
//!   and from the spec types.
//!
//! This crate does no I/O.

pub mod cluster;
pub mod config;
mod constraint;
mod duration;
mod error;
mod image;
pub mod namespace;
mod parse;
mod quantity;
pub mod schema;
pub mod wire;
mod workload;

pub use constraint::{Attribute, Constraint, ConstraintOp};
pub use duration::Duration;
pub use error::{FieldError, SpecErrors, error_chain};
pub use image::{ImageRef, is_tag};
pub use parse::{Format, integral_json, parse_workloads};
pub use quantity::{ByteSize, Cpu, QuantityError};
pub use workload::{
    BatchSpec, ContainerSpec, ExecProbe, HealthSpec, HttpProbe, LocalVolume, MAX_BACKOFF, MAX_DISK,
    MAX_REPLICAS, MountPathError, MountSpec, NetworkMode, OnNodeLoss, Placement, PortSpec,
    Protocol, Resources, RestartPolicy, SecretRef, SecuritySpec, Spread, TcpProbe, TmpfsVolume,
    VolumeSpec, WorkloadKind, WorkloadSpec, check_mount_path, is_capability_name, is_secret_key,
    is_valid_name,
};
