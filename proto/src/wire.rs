//! The agent <-> gateway wire protocol (`skiff.agent.v1`), generated at build
//! time from `proto/skiff/agent/v1/agent.proto`, and conversions between the
//! wire messages and the spec types.
//!
//! Conversions from the wire are fallible: a message from a newer peer may
//! carry an enum value this build does not know, and a buggy peer may send a
//! bad image reference. Each error names the field.

use std::collections::BTreeMap;

use crate::cluster::{AllocationState, Capacity};
use crate::{
    ByteSize, ContainerSpec, Cpu, Duration, ExecProbe, HealthSpec, HttpProbe, LocalVolume,
    MountSpec, NetworkMode, PortSpec, Protocol, Resources, RestartPolicy, TcpProbe, TmpfsVolume,
    VolumeSpec,
};

/// Generated messages and services of `skiff.agent.v1`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("skiff.agent.v1");
}

/// How long an agent waits before it opens its `attempt`-th session again
/// (0 for the first after one broke): 200 ms doubling to 10 s, spread by
/// ±50% (`spread` is uniform in `0.0..=1.0`) so that the agents of a
/// gateway that went away do not all come back at once.
pub fn reconnect_backoff(attempt: u32, spread: f64) -> std::time::Duration {
    let base = (200u64 << attempt.min(6)).min(10_000) as f64;
    std::time::Duration::from_millis((base * (0.5 + spread.clamp(0.0, 1.0))) as u64)
}

/// A wire message that cannot become a spec value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct WireError {
    pub field: String,
    pub message: String,
}

fn wire_err(field: impl Into<String>, message: impl Into<String>) -> WireError {
    WireError {
        field: field.into(),
        message: message.into(),
    }
}

fn port(field: String, value: u32) -> Result<u32, WireError> {
    if (1..=65535).contains(&value) {
        Ok(value)
    } else {
        Err(wire_err(field, format!("{value} is not a port")))
    }
}

impl From<Capacity> for v1::Resources {
    fn from(c: Capacity) -> Self {
        Self {
            cpu_millis: c.cpu.millis(),
            memory_bytes: c.memory.bytes(),
            disk_bytes: c.disk.bytes(),
        }
    }
}

impl From<v1::Resources> for Capacity {
    fn from(r: v1::Resources) -> Self {
        Capacity::new(r.cpu_millis, r.memory_bytes, r.disk_bytes)
    }
}

impl From<&Resources> for v1::Resources {
    fn from(r: &Resources) -> Self {
        Self {
            cpu_millis: r.cpu.millis(),
            memory_bytes: r.memory.bytes(),
            disk_bytes: r.disk.map_or(0, ByteSize::bytes),
        }
    }
}

impl From<AllocationState> for v1::AllocationState {
    fn from(s: AllocationState) -> Self {
        match s {
            AllocationState::Pending => Self::Pending,
            AllocationState::Pulling => Self::Pulling,
            AllocationState::Starting => Self::Starting,
            AllocationState::Running => Self::Running,
            AllocationState::Stopping => Self::Stopping,
            AllocationState::Exited => Self::Exited,
            AllocationState::Failed => Self::Failed,
            AllocationState::Stopped => Self::Stopped,
            AllocationState::Lost => Self::Lost,
        }
    }
}

/// The state a wire value stands for; `None` for unspecified or unknown
/// values (a newer agent's state), which the receiver must tolerate.
pub fn allocation_state(value: i32) -> Option<AllocationState> {
    Some(match v1::AllocationState::try_from(value).ok()? {
        v1::AllocationState::Unspecified => return None,
        v1::AllocationState::Pending => AllocationState::Pending,
        v1::AllocationState::Pulling => AllocationState::Pulling,
        v1::AllocationState::Starting => AllocationState::Starting,
        v1::AllocationState::Running => AllocationState::Running,
        v1::AllocationState::Stopping => AllocationState::Stopping,
        v1::AllocationState::Exited => AllocationState::Exited,
        v1::AllocationState::Failed => AllocationState::Failed,
        v1::AllocationState::Stopped => AllocationState::Stopped,
        v1::AllocationState::Lost => AllocationState::Lost,
    })
}

impl From<&ContainerSpec> for v1::ContainerSpec {
    fn from(c: &ContainerSpec) -> Self {
        let restart = match c.restart {
            RestartPolicy::Never => v1::RestartPolicy::Never,
            RestartPolicy::OnFailure => v1::RestartPolicy::OnFailure,
            RestartPolicy::Always => v1::RestartPolicy::Always,
        };
        let network = match c.network {
            NetworkMode::Bridge => v1::NetworkMode::Bridge,
            NetworkMode::Host => v1::NetworkMode::Host,
            NetworkMode::None => v1::NetworkMode::None,
        };
        Self {
            security: (!c.security.is_default()).then(|| v1::Security {
                privileged: c.security.privileged,
                cap_add: c.security.cap_add.clone(),
                user_namespace: c.security.user_namespace,
            }),
            image: c.image.to_string(),
            command: c.command.clone(),
            args: c.args.clone(),
            env: c.env.clone().into_iter().collect(),
            resources: Some((&c.resources).into()),
            ports: c
                .ports
                .iter()
                .map(|p| v1::PortMapping {
                    container_port: p.container,
                    host_port: p.host.unwrap_or(0),
                    protocol: match p.protocol {
                        Protocol::Tcp => v1::Protocol::Tcp,
                        Protocol::Udp => v1::Protocol::Udp,
                    } as i32,
                    host_ip: p.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                })
                .collect(),
            restart: restart as i32,
            health: c.health.as_ref().map(health_to_wire),
            network: network as i32,
            stop_timeout_ms: c.stop_timeout.as_millis(),
            volumes: c
                .volumes
                .iter()
                .map(|v| {
                    use v1::volume::Kind;
                    v1::Volume {
                        name: v.name.clone(),
                        kind: if let Some(h) = &v.host {
                            Some(Kind::Host(h.clone()))
                        } else if let Some(t) = v.tmpfs {
                            Some(Kind::Tmpfs(v1::TmpfsVolume {
                                size_bytes: t.size.bytes(),
                            }))
                        } else {
                            v.local.map(|l| {
                                Kind::Local(v1::LocalVolume {
                                    recreate_on_node_loss: l.on_node_loss
                                        == crate::OnNodeLoss::Recreate,
                                    size_bytes: l.size.map_or(0, ByteSize::bytes),
                                })
                            })
                        },
                    }
                })
                .collect(),
            mounts: c
                .mounts
                .iter()
                .map(|m| v1::Mount {
                    volume: m.volume.clone(),
                    path: m.path.clone(),
                    read_only: m.read_only,
                })
                .collect(),
            secrets: c
                .secrets
                .iter()
                .map(|s| v1::SecretRef {
                    name: s.name.clone(),
                    path: s.path.clone().unwrap_or_default(),
                    env: s.env.clone().into_iter().collect(),
                })
                .collect(),
        }
    }
}

impl std::fmt::Debug for v1::SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretData")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn health_to_wire(h: &HealthSpec) -> v1::HealthCheck {
    use v1::health_check::Probe;
    let probe = if let Some(http) = &h.http {
        Some(Probe::Http(v1::HttpProbe {
            path: http.path.clone(),
            port: http.port,
        }))
    } else if let Some(tcp) = &h.tcp {
        Some(Probe::Tcp(v1::TcpProbe { port: tcp.port }))
    } else {
        h.exec.as_ref().map(|e| {
            Probe::Exec(v1::ExecProbe {
                command: e.command.clone(),
            })
        })
    };
    v1::HealthCheck {
        probe,
        interval_ms: h.interval.as_millis(),
        timeout_ms: h.timeout.as_millis(),
        retries: h.retries,
        start_period_ms: h.start_period.as_millis(),
    }
}

fn health_from_wire(h: &v1::HealthCheck) -> Result<HealthSpec, WireError> {
    use v1::health_check::Probe;
    let mut spec = HealthSpec {
        http: None,
        tcp: None,
        exec: None,
        interval: Duration::from_millis(h.interval_ms),
        timeout: Duration::from_millis(h.timeout_ms),
        retries: h.retries,
        start_period: Duration::from_millis(h.start_period_ms),
    };
    match &h.probe {
        Some(Probe::Http(p)) => {
            spec.http = Some(HttpProbe {
                path: p.path.clone(),
                port: port("health.http.port".into(), p.port)?,
            })
        }
        Some(Probe::Tcp(p)) => {
            spec.tcp = Some(TcpProbe {
                port: port("health.tcp.port".into(), p.port)?,
            })
        }
        Some(Probe::Exec(p)) => {
            spec.exec = Some(ExecProbe {
                command: p.command.clone(),
            })
        }
        None => return Err(wire_err("health.probe", "no probe this agent knows")),
    }
    Ok(spec)
}

impl TryFrom<&v1::ContainerSpec> for ContainerSpec {
    type Error = WireError;

    fn try_from(c: &v1::ContainerSpec) -> Result<Self, WireError> {
        let image = c
            .image
            .parse()
            .map_err(|e: crate::image::ImageRefError| wire_err("image", e.to_string()))?;
        let r = c
            .resources
            .ok_or_else(|| wire_err("resources", "missing"))?;
        let resources = Resources {
            cpu: Cpu::from_millis(r.cpu_millis),
            memory: ByteSize::from_bytes(r.memory_bytes),
            disk: (r.disk_bytes > 0).then(|| ByteSize::from_bytes(r.disk_bytes)),
        };
        let ports = c
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let protocol = match v1::Protocol::try_from(p.protocol) {
                    Ok(v1::Protocol::Tcp | v1::Protocol::Unspecified) => Protocol::Tcp,
                    Ok(v1::Protocol::Udp) => Protocol::Udp,
                    Err(_) => {
                        return Err(wire_err(
                            format!("ports[{i}].protocol"),
                            format!("unknown protocol {}", p.protocol),
                        ));
                    }
                };
                let host_ip = if p.host_ip.is_empty() {
                    None
                } else {
                    Some(p.host_ip.parse().map_err(|_| {
                        wire_err(
                            format!("ports[{i}].host_ip"),
                            format!("{:?} is not an IP address", p.host_ip),
                        )
                    })?)
                };
                Ok(PortSpec {
                    container: port(format!("ports[{i}].container_port"), p.container_port)?,
                    host: match p.host_port {
                        0 => None,
                        h => Some(port(format!("ports[{i}].host_port"), h)?),
                    },
                    protocol,
                    host_ip,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let restart = match v1::RestartPolicy::try_from(c.restart) {
            Ok(v1::RestartPolicy::Never) => RestartPolicy::Never,
            Ok(v1::RestartPolicy::OnFailure) => RestartPolicy::OnFailure,
            Ok(v1::RestartPolicy::Always | v1::RestartPolicy::Unspecified) => RestartPolicy::Always,
            Err(_) => {
                return Err(wire_err(
                    "restart",
                    format!("unknown restart policy {}", c.restart),
                ));
            }
        };
        let network = match v1::NetworkMode::try_from(c.network) {
            Ok(v1::NetworkMode::Bridge | v1::NetworkMode::Unspecified) => NetworkMode::Bridge,
            Ok(v1::NetworkMode::Host) => NetworkMode::Host,
            Ok(v1::NetworkMode::None) => NetworkMode::None,
            Err(_) => {
                return Err(wire_err(
                    "network",
                    format!("unknown network mode {}", c.network),
                ));
            }
        };
        let volumes = c
            .volumes
            .iter()
            .enumerate()
            .map(|(i, v)| {
                use v1::volume::Kind;
                let mut out = VolumeSpec {
                    name: v.name.clone(),
                    host: None,
                    local: None,
                    tmpfs: None,
                };
                match &v.kind {
                    Some(Kind::Host(h)) => out.host = Some(h.clone()),
                    Some(Kind::Local(l)) => {
                        out.local = Some(LocalVolume {
                            size: (l.size_bytes > 0).then(|| ByteSize::from_bytes(l.size_bytes)),
                            on_node_loss: if l.recreate_on_node_loss {
                                crate::OnNodeLoss::Recreate
                            } else {
                                crate::OnNodeLoss::Wait
                            },
                        });
                    }
                    Some(Kind::Tmpfs(t)) => {
                        out.tmpfs = Some(TmpfsVolume {
                            size: ByteSize::from_bytes(t.size_bytes),
                        });
                    }
                    None => {
                        return Err(wire_err(
                            format!("volumes[{i}]"),
                            "no kind (host, local or tmpfs)",
                        ));
                    }
                }
                Ok(out)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mounts = c
            .mounts
            .iter()
            .enumerate()
            .map(|(i, m)| {
                crate::check_mount_path(&m.path)
                    .map_err(|why| wire_err(format!("mounts[{i}].path"), why.to_string()))?;
                if !volumes.iter().any(|v| v.name == m.volume) {
                    return Err(wire_err(
                        format!("mounts[{i}].volume"),
                        format!("no volume {:?}", m.volume),
                    ));
                }
                Ok(MountSpec {
                    volume: m.volume.clone(),
                    path: m.path.clone(),
                    read_only: m.read_only,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let secrets = c
            .secrets
            .iter()
            .map(|s| crate::SecretRef {
                name: s.name.clone(),
                path: (!s.path.is_empty()).then(|| s.path.clone()),
                env: s.env.clone().into_iter().collect(),
            })
            .collect();
        Ok(ContainerSpec {
            image,
            volumes,
            mounts,
            secrets,
            command: c.command.clone(),
            args: c.args.clone(),
            env: c.env.clone().into_iter().collect::<BTreeMap<_, _>>(),
            resources,
            ports,
            restart,
            health: c.health.as_ref().map(health_from_wire).transpose()?,
            network,
            stop_timeout: Duration::from_millis(c.stop_timeout_ms),
            security: c
                .security
                .as_ref()
                .map(|s| crate::SecuritySpec {
                    privileged: s.privileged,
                    cap_add: s.cap_add.clone(),
                    user_namespace: s.user_namespace,
                })
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Format, parse_workloads};
    use prost::Message;

    #[test]
    fn reconnects_back_off_from_200ms_to_10s_spread_by_half() {
        let ms = |attempt, spread| reconnect_backoff(attempt, spread).as_millis();
        assert_eq!(ms(0, 0.5), 200);
        assert_eq!(ms(0, 0.0), 100);
        assert_eq!(ms(0, 1.0), 300);
        assert_eq!(ms(1, 0.5), 400);
        assert_eq!(ms(5, 0.5), 6400);
        assert_eq!(ms(6, 0.5), 10_000);
        assert_eq!(ms(40, 1.0), 15_000);
        // Out of range, clamped.
        assert_eq!(ms(0, 7.0), 300);
    }

    const SPEC: &str = r#"
name: web
replicas: 2
image: 127.0.0.1:5000/shop/web:1.4
command: [/bin/web]
args: ["--port", "8080"]
env: { A: "1", B: two }
resources: { cpu: 1.5, memory: 256Mi, disk: 1Gi }
ports: [{ container: 8080, host: 80 }, { container: 53, protocol: udp, host: 5353, host_ip: 127.0.0.1 }]
restart: on-failure
health: { exec: { command: [/bin/true] }, interval: 5s, timeout: 1s, retries: 2, start_period: 30s }
network: bridge
stop_timeout: 3s
"#;

    #[test]
    fn container_spec_survives_the_wire() {
        let w = &parse_workloads(SPEC, Format::Yaml).unwrap()[0];
        let spec = w.container_spec();
        let wire = v1::ContainerSpec::from(&spec);
        let bytes = wire.encode_to_vec();
        let decoded = v1::ContainerSpec::decode(bytes.as_slice()).unwrap();
        assert_eq!(ContainerSpec::try_from(&decoded).unwrap(), spec);
    }

    #[test]
    fn unknown_enum_values_are_named() {
        let w = &parse_workloads(SPEC, Format::Yaml).unwrap()[0];
        let mut wire = v1::ContainerSpec::from(&w.container_spec());
        wire.restart = 42;
        let e = ContainerSpec::try_from(&wire).unwrap_err();
        assert_eq!(e.to_string(), "restart: unknown restart policy 42");
        assert_eq!(allocation_state(99), None);
        assert_eq!(allocation_state(4), Some(AllocationState::Running));
    }

    #[test]
    fn bad_ports_from_the_wire_are_refused() {
        let w = &parse_workloads(SPEC, Format::Yaml).unwrap()[0];
        let mut wire = v1::ContainerSpec::from(&w.container_spec());
        wire.ports[1].container_port = 70000;
        let e = ContainerSpec::try_from(&wire).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ports[1].container_port: 70000 is not a port"
        );
    }

    #[test]
    fn every_state_maps_both_ways() {
        use AllocationState::*;
        for s in [
            Pending, Pulling, Starting, Running, Stopping, Exited, Failed, Stopped, Lost,
        ] {
            let w = v1::AllocationState::from(s) as i32;
            assert_eq!(allocation_state(w), Some(s));
        }
    }
}
