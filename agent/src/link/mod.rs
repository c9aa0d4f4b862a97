//! The agent's link to the gateway.
//!
//! * [`join`]: the first contact: CA pinned by hash, join token, node
//!   certificate.
//! * The session ([`run`]): one long-lived gRPC stream over mutual TLS,
//!   opened by the agent (nodes behind NAT dial out). The agent registers
//!   (capacity, labels, platform, what it runs), heartbeats, and reports
//!   its allocations; the gateway sends the node's desired state (a
//!   generation and the full set of allocations), which [`reconcile`]
//!   applies. When the gateway cannot be reached the agent keeps running
//!   what it runs and reconnects with back-off and jitter, to the next of
//!   the fleet's gateways when `gateway` names several.

pub mod join;
pub mod reconcile;
pub mod streams;

use std::sync::Arc;
use std::time::Duration;

use skiff_proto::wire::v1::{self, AgentMessage, agent_message, gateway_message};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::AgentConfig;
use crate::images::ImageStore;
use crate::runtime::Runtime;

/// A gRPC channel to the gateway at `url`, trusting only `ca_pem`, with
/// the node's identity when it has one.
pub async fn channel(
    url: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, String> {
    let (host, _) = join::host_port(url)?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(host);
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("gateway {url}: {e}"))?
        .tls_config(tls)
        .map_err(|e| format!("gateway {url}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("gateway {url}: {e}"))
}

/// What the link needs from the rest of the agent.
#[derive(Debug, Clone)]
pub struct Link {
    pub config: AgentConfig,
    pub identity: join::Identity,
    /// The fleet's gateways; a session that ends moves on to the next.
    pub urls: Vec<String>,
    /// Which of `urls` the session is (or was last) with.
    pub current: usize,
    pub runtime: Arc<Runtime>,
    pub images: Arc<ImageStore>,
}

/// How long to wait before the `attempt`th try again (with jitter).
fn backoff(attempt: u32) -> Duration {
    use rand::Rng;
    skiff_proto::wire::reconnect_backoff(attempt, rand::rng().random_range(0.0..=1.0))
}

/// Why the first join failed: what each gateway answered.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("join_token: required for the first start with a gateway")]
    NoToken,
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Failed(Vec<join::JoinError>),
}

/// Joins if needed (before anything else starts: a refused join stops
/// the agent with the reason) and returns the identity.
/// With several gateways, the join goes to each in turn until one takes
/// it; while none answers at all (a gateway not up yet or restarting, a
/// VM booted before its gateway is back) the agent tries again with
/// back-off, as it reconnects a session; an answer that refuses (a token
/// used, expired or forged, a CA that does not match the pin) stops it,
/// with what each gateway answered.
pub async fn identity(
    config: &AgentConfig,
) -> Result<Option<(Vec<String>, join::Identity)>, IdentityError> {
    let Some(gw) = &config.gateway else {
        return Ok(None);
    };
    let urls = gw.urls.clone();
    if let Some(id) = join::load(&config.state_dir) {
        return Ok(Some((urls, id)));
    }
    let token = gw
        .join_token
        .as_ref()
        .map(crate::config::SecretString::expose)
        .ok_or(IdentityError::NoToken)?;
    let mut attempt = 0u32;
    loop {
        let mut errors = Vec::new();
        for url in &urls {
            match join::join(&config.state_dir, url, token, &gw.ca_hash, &config.name).await {
                Ok(id) => {
                    tracing::info!(node = %id.node_id, site = %id.site, gateway = %url, "joined the gateway");
                    return Ok(Some((urls, id)));
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.iter().all(join::JoinError::is_transient) {
            return Err(IdentityError::Failed(errors));
        }
        let wait = backoff(attempt);
        let errors = IdentityError::Failed(errors);
        tracing::warn!(error = %errors, retry_in = ?wait, "no gateway answered the join; trying again");
        tokio::time::sleep(wait).await;
        attempt = attempt.saturating_add(1);
    }
}

/// Keeps a session open until `stop`; reconnects with back-off.
pub async fn run(mut link: Link, stop: CancellationToken) {
    let (desired_tx, desired_rx) = watch::channel::<Option<v1::DesiredState>>(None);
    let (report_tx, mut report_rx) = mpsc::channel::<v1::AllocationStatusReport>(4);
    // One reconciler, fed the latest desired state; it reports what runs.
    let rec = reconcile::Reconciler::new(
        Arc::clone(&link.runtime),
        Arc::clone(&link.images),
        crate::volumes::NodeVolumes::new(link.config.volumes.clone(), &link.config.state_dir),
        &link.identity.node_id,
        &link.identity.site,
    );
    tokio::spawn(rec.run(desired_rx, report_tx));
    // The cloud's notice that it takes this VM back, as it stands.
    let (notice_tx, mut notice_rx) = watch::channel::<Option<v1::Notice>>(None);
    let vm = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    tokio::spawn(crate::notices::watch(
        link.config.notices.clone(),
        vm,
        notice_tx,
        stop.clone(),
    ));
    let mut attempt: u32 = 0;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let started = std::time::Instant::now();
        match session(
            &mut link,
            &desired_tx,
            &mut report_rx,
            &mut notice_rx,
            &stop,
        )
        .await
        {
            Ok(()) => return,
            Err(e) => {
                // The next gateway of the fleet, if it has several.
                link.current = (link.current + 1) % link.urls.len().max(1);
                tracing::warn!(error = %e, next = %link.urls.get(link.current).map_or("", String::as_str),
                    "gateway session ended; the containers keep running")
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            attempt = 0;
        }
        let wait = backoff(attempt);
        attempt += 1;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Host CPU (millicores) and memory (bytes), and the size of the
/// filesystem that holds `state_dir` (images, layers, logs: what
/// `resources.disk` reserves); 0 when it cannot be read.
pub fn host_capacity(state_dir: &std::path::Path) -> v1::Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let disk = nix::sys::statvfs::statvfs(state_dir)
        .map(|v| v.blocks().saturating_mul(v.fragment_size()))
        .unwrap_or(0);
    v1::Resources {
        cpu_millis: cpus * 1000,
        memory_bytes: mem,
        disk_bytes: disk,
    }
}

/// One session: register, then heartbeats and reports up, desired states
/// down, until it breaks (an error) or the agent stops (`Ok`).
async fn session(
    link: &mut Link,
    desired: &watch::Sender<Option<v1::DesiredState>>,
    reports: &mut mpsc::Receiver<v1::AllocationStatusReport>,
    notices: &mut watch::Receiver<Option<v1::Notice>>,
    stop: &CancellationToken,
) -> Result<(), String> {
    let id = link.identity.clone();
    let url = link
        .urls
        .get(link.current)
        .cloned()
        .ok_or("no gateway URL")?;
    let channel = channel(&url, &id.ca_pem, Some((&id.cert_pem, &id.key_pem))).await?;
    let mut client = v1::session_client::SessionClient::new(channel.clone());
    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    let capacity = host_capacity(&link.config.state_dir);
    let reserve = &link.config.reserve;
    let allocatable = v1::Resources {
        cpu_millis: capacity.cpu_millis.saturating_sub(reserve.cpu.millis()),
        memory_bytes: capacity.memory_bytes.saturating_sub(reserve.memory.bytes()),
        disk_bytes: capacity.disk_bytes.saturating_sub(reserve.disk.bytes()),
    };
    let node_volumes = crate::volumes::NodeVolumes::new(Default::default(), &link.config.state_dir);
    let register = v1::Register {
        agent_version: crate::VERSION.to_string(),
        platform: Some(v1::Platform {
            os: "linux".into(),
            architecture: match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            }
            .into(),
            variant: String::new(),
            kernel_version: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            cgroup_version: if crate::runtime::cgroup::is_v2() {
                v1::CgroupVersion::V2 as i32
            } else {
                v1::CgroupVersion::V1 as i32
            },
        }),
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        labels: link.config.labels.clone().into_iter().collect(),
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        applied_generation: desired.borrow().as_ref().map_or(0, |d| d.generation),
        allocations: reconcile::statuses(&link.runtime),
        instance_id: String::new(),
        host_volumes: link.config.volumes.keys().cloned().collect(),
        volumes: node_volumes.held(),
        volume_quota_missing: node_volumes.quota_missing().unwrap_or_default(),
        max_allocations: link.runtime.container_addresses(),
    };
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Register(register)),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut inbound = client
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| {
            if s.code() == tonic::Code::Unauthenticated {
                format!(
                    "the gateway does not accept this node any more ({}); it keeps its containers; join again with a new token",
                    s.message()
                )
            } else {
                format!("attach: {}", s.message())
            }
        })?
        .into_inner();
    let first = inbound
        .message()
        .await
        .map_err(|s| format!("attach: {}", s.message()))?
        .ok_or("the gateway closed the session")?;
    let Some(gateway_message::Kind::Registered(reg)) = first.kind else {
        return Err("the gateway did not answer Register".into());
    };
    tracing::info!(node = %reg.node_id, site = %reg.site, subnet = %reg.container_subnet, "session open");
    let interval = Duration::from_millis(u64::from(reg.heartbeat_interval_ms.max(100)));
    let mut beat = tokio::time::interval(interval);
    let renew_in =
        Duration::from_millis((id.renew_at_ms() - crate::runtime::shim::now_ms()).max(0) as u64);
    let renew = tokio::time::sleep(renew_in);
    tokio::pin!(renew);
    // A notice that stands is told to every session.
    let standing = notices.borrow_and_update().clone();
    if let Some(n) = standing {
        tx.send(AgentMessage {
            kind: Some(agent_message::Kind::Notice(n)),
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = &mut renew, if id.not_after_ms > 0 => {
                let new = join::renew(&link.config.state_dir, &url, channel.clone(), &id).await?;
                tracing::info!(not_after_ms = new.not_after_ms, "node certificate renewed; reconnecting with it");
                link.identity = new;
                return Err("reconnecting with the renewed certificate".into());
            }
            _ = beat.tick() => {
                let hb = v1::Heartbeat {
                    sent_unix_ms: crate::runtime::shim::now_ms(),
                    applied_generation: desired.borrow().as_ref().map_or(0, |d| d.generation),
                };
                tx.send(AgentMessage { kind: Some(agent_message::Kind::Heartbeat(hb)) })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(()) = notices.changed() => {
                let n = notices.borrow_and_update().clone();
                if let Some(n) = n {
                    tx.send(AgentMessage { kind: Some(agent_message::Kind::Notice(n)) })
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            Some(report) = reports.recv() => {
                tx.send(AgentMessage { kind: Some(agent_message::Kind::Allocations(report)) })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            msg = inbound.message() => {
                let msg = msg.map_err(|s| format!("session: {}", s.message()))?
                    .ok_or("the gateway closed the session")?;
                match msg.kind {
                    Some(gateway_message::Kind::DesiredState(d)) => {
                        tracing::info!(generation = d.generation, allocations = d.allocations.len(), "desired state");
                        desired.send_replace(Some(d));
                    }
                    Some(gateway_message::Kind::StreamRequest(r)) => {
                        tracing::debug!(request = %r.request_id, allocation = %r.allocation_id, "stream request");
                        tokio::spawn(streams::serve(channel.clone(), Arc::clone(&link.runtime), r));
                    }
                    // Registered again, or a kind this agent does not know.
                    _ => {}
                }
            }
        }
    }
}
