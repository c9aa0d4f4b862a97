//! The container runtime: creates containers from images in the store,
//! starts each under its own shim ([`shim`]), supervises them (restart
//! policies, stop timeouts), and re-adopts them after an agent restart.
//!
//! * `plan`: the rules of `create` (name, process, limits), without the
//!   kernel, unit-tested.
//! * [`spec`]: the resolved configuration of a container (`config.json`).
//! * [`init`]: namespaces, root filesystem, `pivot_root`, hardening, exec.
//! * [`caps`], [`seccomp`]: the default capability set and syscall filter.
//! * [`cgroup`]: limits and accounting on cgroup v1 and v2 (cgroups-rs).
//! * [`devices`]: the device allow-list (v1 controller, v2 eBPF filter).
//! * [`shim`]: the small per-container supervisor that outlives the agent.
//! * [`exec`]: more processes in a running container (`setns`).
//! * [`health`]: exec, TCP and HTTP health checks.
//! * [`userns`]: user-namespace remapping over idmapped layer mounts.
//! * [`warm`]: shims prepared ahead of time (cgroup v1 starts).
//! * [`logfile`]: JSON-lines log files with rotation.
//! * [`records`]: the container index in an embedded database.
//!
//! On disk, `STATE/containers/<id>/` holds `config.json` (written by the
//! agent at create), `state.json` (by the shim once running), `exit.json`
//! (by the shim when it ends), the log, and the overlay `upper`/`work`
//! dirs. Each file is written atomically, so after any crash the directory
//! says where the container is.

pub mod caps;
pub mod cgroup;
pub mod devices;
pub mod exec;
pub mod health;
pub mod init;
pub mod logfile;
pub mod logs;
mod plan;
pub mod records;
pub mod seccomp;
pub mod shim;
pub mod spec;
mod user;
pub mod userns;
pub mod warm;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skiff_proto::{ByteSize, Cpu, NetworkMode, RestartPolicy};
use tokio::sync::watch;

use crate::images::ImageStore;
use crate::net::{NetworkConfig, NodeNet};
use cgroup::{ContainerCgroup, Usage};
pub use exec::ExecOptions;
use records::{ContainerRecord, Records, State};
use shim::{EXIT, ExitRecord, RunState, STATE, StartReport, read_json, write_json};
use spec::{ContainerSpec, Limits, Security};

/// Everything that can go wrong in the runtime; each names the container,
/// image or field.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no such container: {0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("container {0} is running: stop it first or remove it with --force")]
    Running(String),
    #[error("container {name}: failed to start: {error}")]
    StartFailed { name: String, error: String },
    #[error(transparent)]
    Image(#[from] crate::images::ImageError),
    #[error(transparent)]
    Network(#[from] crate::net::NetError),
    #[error("{0}")]
    Internal(String),
}

fn internal(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Internal(e.to_string())
}

/// What `run` asks for (the CLI's flags, the API's body).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOptions {
    pub image: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Replaces the image's CMD (Docker's `IMAGE [CMD...]`).
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Replaces the image's ENTRYPOINT.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE`, added to the image's environment.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub memory: Option<ByteSize>,
    #[serde(default)]
    pub cpus: Option<Cpu>,
    #[serde(default)]
    pub pids: Option<u64>,
    #[serde(default)]
    pub restart: Option<RestartPolicy>,
    #[serde(default)]
    pub stop_timeout_ms: Option<u64>,
    #[serde(default)]
    pub network: Option<NetworkMode>,
    /// Published ports (bridge network only).
    #[serde(default)]
    pub ports: Vec<skiff_proto::PortSpec>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// See [`Security::allow_privilege_escalation`].
    #[serde(default)]
    pub allow_privilege_escalation: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The fleet namespace of its workload: containers of other namespaces
    /// on this node cannot open connections to it (see `net::nat`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Remove the container when it exits.
    #[serde(default)]
    pub auto_remove: bool,
    /// Rotate the log file past this size (default 10 MiB).
    #[serde(default)]
    pub log_max_bytes: Option<u64>,
    #[serde(default)]
    pub health: Option<skiff_proto::HealthSpec>,
    /// Run in a user namespace: root inside is an unprivileged user on the
    /// host.
    #[serde(default)]
    pub userns_remap: bool,
    /// Volumes to mount.
    #[serde(default)]
    pub mounts: Vec<spec::Mount>,
}

/// How a container ended, as `wait` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub exit_code: i32,
    /// `exited`, `killed`, `oom-killed`, `failed-to-start` or (a stop of
    /// a container that never ran) `never-started`.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `inspect`: the record, the limits and live usage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerInfo {
    #[serde(flatten)]
    pub record: ContainerRecord,
    /// The container's default gateway (bridge network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<std::net::Ipv4Addr>,
    pub limits: Limits,
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Present when the container has a health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<health::Health>,
}

const DEFAULT_LOG_MAX: u64 = 10 << 20;

struct Live {
    /// Latest record, shared with waiters.
    tx: watch::Sender<ContainerRecord>,
    /// Set by stop/kill/remove: the restart policy must not restart it.
    stopping: bool,
    /// A start is under way: a stop waits for it, then stops what it
    /// started (a created container without one has nothing to stop).
    starting: bool,
}

/// The runtime of one agent.
pub struct Runtime {
    root: PathBuf,
    images: Arc<ImageStore>,
    records: Records,
    live: Mutex<HashMap<String, Live>>,
    health: Mutex<HashMap<String, health::Health>>,
    shim_exe: PathBuf,
    supervisor: PathBuf,
    warm: Arc<warm::WarmPool>,
    userns_range: spec::IdRange,
    net: NodeNet,
    cgroup_parent: String,
    /// Told whenever a container's record changes (it starts, exits, is
    /// removed): [`Runtime::changed`].
    changed: tokio::sync::Notify,
}

/// The `[runtime]` section of the agent's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Shims kept ready so starts skip cgroup v1's slow process move
    /// (see [`warm`]); 0 turns them off. Ignored on cgroup v2.
    pub warm_shims: usize,
    /// Host ids for `--userns-remap` containers: `FIRST:COUNT`.
    pub userns_remap_range: String,
    /// The cgroup (in every hierarchy) under which containers get theirs
    /// (`PARENT/<id>`), warm shims included.
    pub cgroup_parent: String,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            warm_shims: 4,
            userns_remap_range: "100000:65536".into(),
            cgroup_parent: "skiff".into(),
        }
    }
}

impl RuntimeConfig {
    /// The remap range, or why it is not one.
    pub fn userns_range(&self) -> Result<spec::IdRange, String> {
        let bad = || {
            format!(
                "{:?}: expected FIRST:COUNT with FIRST > 0 and COUNT >= 65536",
                self.userns_remap_range
            )
        };
        let (a, b) = self.userns_remap_range.split_once(':').ok_or_else(bad)?;
        let (host_id, size): (u32, u32) =
            (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if host_id == 0 || size < 65_536 || host_id.checked_add(size).is_none() {
            return Err(bad());
        }
        Ok(spec::IdRange { host_id, size })
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("root", &self.root).finish()
    }
}

fn random_id() -> String {
    let mut b = [0u8; 32];
    if getrandom_fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b[..16].copy_from_slice(&t.to_le_bytes());
        b[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    hex::encode(b)
}

fn getrandom_fill(b: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(b)
}

impl Runtime {
    /// Opens the runtime under `state_dir` and re-adopts the containers the
    /// previous agent left.
    pub async fn open(
        state_dir: &Path,
        images: Arc<ImageStore>,
        config: &RuntimeConfig,
        network: &NetworkConfig,
    ) -> Result<Arc<Self>, RuntimeError> {
        let userns_range = config.userns_range().map_err(RuntimeError::Invalid)?;
        let net = NodeNet::open(state_dir, network)?;
        let root = state_dir.join("containers");
        std::fs::create_dir_all(&root).map_err(internal)?;
        let records = Records::open(&state_dir.join("containers.redb")).map_err(internal)?;
        let shim_exe = std::env::current_exe().map_err(internal)?;
        let supervisor = shim::install_supervisor(&state_dir.join("bin"))
            .map_err(|e| internal(format!("install skiff-shim: {e}")))?;
        let rt = Arc::new(Self {
            root,
            images,
            records,
            live: Mutex::new(HashMap::new()),
            health: Mutex::new(HashMap::new()),
            warm: warm::WarmPool::new(
                shim_exe.clone(),
                supervisor.clone(),
                state_dir,
                config.warm_shims,
            ),
            shim_exe,
            supervisor,
            userns_range,
            net,
            cgroup_parent: config.cgroup_parent.clone(),
            changed: tokio::sync::Notify::new(),
        });
        rt.adopt().await?;
        warm::WarmPool::remove_stale(&rt.cgroup_parent);
        rt.warm.refill(&rt.cgroup_parent);
        Ok(rt)
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Finds a container by id, unique id prefix, or name.
    pub fn resolve(&self, key: &str) -> Result<ContainerRecord, RuntimeError> {
        let all = self.records.all().map_err(internal)?;
        if let Some(r) = all.iter().find(|r| r.id == key || r.name == key) {
            return Ok(r.clone());
        }
        let hits: Vec<_> = all
            .iter()
            .filter(|r| key.len() >= 4 && r.id.starts_with(key))
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(RuntimeError::NotFound(key.to_string())),
            _ => Err(RuntimeError::Invalid(format!(
                "{key:?} matches several containers"
            ))),
        }
    }

    pub fn list(&self, all: bool) -> Result<Vec<ContainerRecord>, RuntimeError> {
        let mut v = self.records.all().map_err(internal)?;
        if !all {
            v.retain(|r| matches!(r.state, State::Running | State::Restarting));
        }
        v.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
        Ok(v)
    }

    pub fn inspect(&self, key: &str) -> Result<ContainerInfo, RuntimeError> {
        let record = self.resolve(key)?;
        let spec: ContainerSpec = read_json(&self.dir(&record.id), shim::CONFIG)
            .ok_or_else(|| internal(format!("container {}: config.json is missing", record.id)))?;
        let usage = matches!(record.state, State::Running)
            .then(|| ContainerCgroup::load(&spec.cgroup).usage());
        let health = self.health.lock().expect("lock").get(&record.id).cloned();
        Ok(ContainerInfo {
            record,
            gateway: spec.net.as_ref().map(|n| n.gateway),
            limits: spec.limits,
            command: spec.process.args,
            usage,
            health,
        })
    }

    /// Which other fleet namespaces may reach each namespace's containers.
    pub async fn set_allow_from(
        &self,
        allow_from: BTreeMap<String, Vec<String>>,
    ) -> Result<(), RuntimeError> {
        Ok(self.net.set_allow_from(allow_from).await?)
    }

    /// Creates a container (not started): resolves the image and user,
    /// prepares its directory and cgroup. Bad input leaves nothing behind.
    pub async fn create(&self, opts: &RunOptions) -> Result<ContainerRecord, RuntimeError> {
        let image = self.images.get(&opts.image)?;
        let id = random_id();
        let layers = self.images.lower_dirs(&image);
        let taken: Vec<String> = match &opts.name {
            Some(_) => self
                .records
                .all()
                .map_err(internal)?
                .into_iter()
                .map(|r| r.name)
                .collect(),
            None => Vec::new(),
        };
        let plan::Planned {
            name,
            hostname,
            process,
            limits,
            network,
        } = plan::plan(
            opts,
            &id,
            &image.config,
            &user::Accounts::of_layers(&layers),
            |n| taken.iter().any(|t| t == n),
        )?;
        let security = Security {
            privileged: opts.privileged,
            cap_add: opts.cap_add.clone(),
            cap_drop: opts.cap_drop.clone(),
            allow_privilege_escalation: opts.allow_privilege_escalation,
        };
        // Against what the agent itself holds.
        caps::effective_set(&security).map_err(|e| RuntimeError::Invalid(e.0))?;
        give_volumes(&opts.mounts, process.uid, process.gid)?;
        // Last, as the address is taken here (and given back on error).
        let net = match network {
            NetworkMode::Bridge => Some(
                self.net
                    .prepare(&id, &opts.ports, !opts.auto_remove, opts.namespace.clone())
                    .await?,
            ),
            _ => None,
        };
        let spec = ContainerSpec {
            id: id.clone(),
            name: name.clone(),
            image: opts.image.clone(),
            image_id: image.config_digest.to_string(),
            layers,
            process,
            hostname: hostname.clone(),
            limits,
            security,
            network,
            net,
            restart: opts.restart.unwrap_or(RestartPolicy::Never),
            stop_timeout_ms: opts.stop_timeout_ms.unwrap_or(10_000),
            log_max_bytes: opts.log_max_bytes.unwrap_or(DEFAULT_LOG_MAX),
            cgroup: format!("{}/{id}", self.cgroup_parent),
            labels: opts.labels.clone(),
            health: opts.health.clone(),
            userns: opts.userns_remap.then_some(self.userns_range),
            mounts: opts.mounts.clone(),
        };
        let dir = self.dir(&id);
        let result = (|| -> Result<ContainerRecord, RuntimeError> {
            for d in ["upper", "work", "rootfs"] {
                std::fs::create_dir_all(dir.join(d)).map_err(internal)?;
            }
            std::fs::write(dir.join("hostname"), format!("{hostname}\n")).map_err(internal)?;
            let own = spec
                .net
                .as_ref()
                .map_or_else(|| "127.0.1.1".to_string(), |n| n.address.to_string());
            std::fs::write(
                dir.join("hosts"),
                format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{hostname}\n"),
            )
            .map_err(internal)?;
            let resolv = match network {
                NetworkMode::Host => {
                    std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
                }
                _ => self.net.resolv_conf(),
            };
            std::fs::write(dir.join("resolv.conf"), resolv).map_err(internal)?;
            if let Some(range) = spec.userns {
                // What the container writes belongs to its root, and the
                // idmapped layers get mount points of their own.
                let root = Some(range.host_id);
                for f in ["upper", "work", "hosts", "hostname", "resolv.conf"] {
                    std::os::unix::fs::chown(dir.join(f), root, root).map_err(internal)?;
                }
                for i in 0..spec.layers.len() {
                    std::fs::create_dir_all(dir.join("lower").join(i.to_string()))
                        .map_err(internal)?;
                }
            }
            write_json(&dir, shim::CONFIG, &spec).map_err(internal)?;
            let record = ContainerRecord {
                id: id.clone(),
                name: name.clone(),
                image: opts.image.clone(),
                created_ms: shim::now_ms(),
                state: State::Created,
                pid: None,
                shim_pid: None,
                started_ms: None,
                finished_ms: None,
                exit_code: None,
                reason: None,
                message: None,
                restarts: 0,
                restart: spec.restart,
                auto_remove: opts.auto_remove,
                network,
                address: spec.net.as_ref().map(|n| n.address),
                ports: spec
                    .net
                    .as_ref()
                    .map(|n| n.ports.clone())
                    .unwrap_or_default(),
                labels: opts.labels.clone(),
            };
            // On disk before `create` answers, so a crash cannot lose it;
            // except `--rm` containers, which a crash should not keep.
            self.records
                .put(&record, !opts.auto_remove)
                .map_err(internal)?;
            Ok(record)
        })();
        if result.is_err() {
            let _ = ContainerCgroup::load(&spec.cgroup).delete();
            let _ = std::fs::remove_dir_all(&dir);
            if spec.net.is_some() {
                let _ = self.net.release(&id).await;
            }
        }
        let record = result?;
        let (tx, _) = watch::channel(record.clone());
        self.live.lock().expect("lock").insert(
            id,
            Live {
                tx,
                stopping: false,
                starting: false,
            },
        );
        tracing::info!(container = %record.name, id = %record.id, image = %record.image, "created");
        Ok(record)
    }

    fn update(&self, record: &ContainerRecord) {
        if let Err(e) = self.records.put(record, false) {
            // The live state stays right; the record on disk catches up
            // at the next change, or adoption reads the container's state.
            tracing::warn!(container = %record.name, error = %e, "write the container's record");
        }
        if let Some(l) = self.live.lock().expect("lock").get(&record.id) {
            l.tx.send_replace(record.clone());
        }
        self.changed.notify_one();
    }

    /// Returns once some container's record changed since the last call
    /// returned (at once if one did meanwhile): the node's reconciler
    /// waits on it to report an exit as it happens. One waiter.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Starts a created (or exited) container.
    ///
    /// Boxed because starting and exiting call each other (restarts).
    pub fn start(
        self: &Arc<Self>,
        key: &str,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<ContainerRecord, RuntimeError>>
                + Send
                + 'static,
        >,
    > {
        let rt = Arc::clone(self);
        let key = key.to_string();
        Box::pin(async move { rt.start_inner(&key).await })
    }

    async fn start_inner(self: &Arc<Self>, key: &str) -> Result<ContainerRecord, RuntimeError> {
        let _busy = self.warm.busy();
        let mut record = self.resolve(key)?;
        let _starting = Starting {
            rt: self,
            id: record.id.clone(),
        };
        if matches!(record.state, State::Running) {
            return Ok(record);
        }
        if let Some(l) = self.live.lock().expect("lock").get_mut(&record.id) {
            l.stopping = false;
            l.starting = true;
        }
        let dir = self.dir(&record.id);
        let _ = std::fs::remove_file(dir.join(EXIT));
        let _ = std::fs::remove_file(dir.join(STATE));
        let asked = std::time::Instant::now();
        let exe = self.shim_exe.clone();
        let supervisor = self.supervisor.clone();
        let shim_dir = dir.clone();
        let spec: ContainerSpec = read_json(&dir, shim::CONFIG)
            .ok_or_else(|| internal(format!("container {}: config.json is missing", record.id)))?;
        // Published before the process runs, so they answer as soon as it
        // listens.
        if let Some(a) = &spec.net {
            self.net.publish(&record.id, &record.name, a).await?;
        }
        // Warm when it can be (see `warm`), cold otherwise.
        let warm = (spec.userns.is_none() && spec.network != NetworkMode::Host)
            .then(|| self.warm.take())
            .flatten();
        let started = tokio::task::spawn_blocking(move || {
            if let Some(w) = warm {
                match w.start(&shim_dir, &spec) {
                    Ok((c, r)) => return Ok((c, r, true)),
                    Err(e) => tracing::warn!(error = %e, "warm start failed; starting cold"),
                }
            }
            // A fresh cgroup at each start (a warm start renames its own):
            // an earlier run's is empty by now, and its device filter must
            // not pile up with this one's.
            if cgroup::exists(&spec.cgroup) {
                ContainerCgroup::load(&spec.cgroup)
                    .delete()
                    .map_err(RuntimeError::Internal)?;
            }
            ContainerCgroup::create(&spec.cgroup, &spec.limits).map_err(RuntimeError::Internal)?;
            if !spec.security.privileged {
                devices::restrict(&spec.cgroup, devices::DEFAULT)
                    .map_err(RuntimeError::Internal)?;
            }
            spawn_shim(&exe, &supervisor, &shim_dir).map(|(c, r)| (c, r, false))
        })
        .await
        .map_err(internal)
        .and_then(|r| r);
        let unpublish = || async {
            if let Err(e) = self.net.unpublish(&record.id).await {
                tracing::warn!(container = %record.name, error = %e, "unpublish ports");
            }
        };
        let (child, report, warmed) = match started {
            Ok(x) => x,
            Err(e) => {
                unpublish().await;
                return Err(e);
            }
        };
        self.warm.refill_soon(&self.cgroup_parent);
        match report {
            StartReport::Started {
                pid,
                shim_pid,
                started_unix_ms,
            } => {
                let m = crate::metrics::get();
                m.starts.get_or_create(&crate::metrics::ok()).inc();
                if warmed {
                    m.warm_starts.inc();
                }
                m.start_seconds.observe(asked.elapsed().as_secs_f64());
                record.state = State::Running;
                record.pid = Some(pid);
                record.shim_pid = Some(shim_pid);
                // The shim's time, which adoption reads again (an older
                // shim does not say: now, then).
                record.started_ms = Some(if started_unix_ms > 0 {
                    started_unix_ms
                } else {
                    shim::now_ms()
                });
                record.finished_ms = None;
                record.exit_code = None;
                record.reason = None;
                record.message = None;
                self.update(&record);
                tracing::info!(container = %record.name, pid, "started");
                self.watch_health(&record.id, pid);
                let rt = Arc::clone(self);
                let id = record.id.clone();
                tokio::spawn(async move {
                    let _ = tokio::task::spawn_blocking(move || {
                        let mut child = child;
                        child.wait()
                    })
                    .await;
                    rt.on_exit(&id).await;
                });
                Ok(record)
            }
            StartReport::Failed { error } => {
                crate::metrics::get()
                    .starts
                    .get_or_create(&crate::metrics::failed())
                    .inc();
                let mut child = child;
                let _ = tokio::task::spawn_blocking(move || child.wait()).await;
                unpublish().await;
                record.state = State::Exited;
                record.exit_code = Some(127);
                record.reason = Some("failed-to-start".into());
                record.message = Some(error.clone());
                record.finished_ms = Some(shim::now_ms());
                self.update(&record);
                tracing::warn!(container = %record.name, error = %error, "failed to start");
                Err(RuntimeError::StartFailed {
                    name: record.name,
                    error,
                })
            }
        }
    }

    /// The shim of a container ended: record how, and restart if the
    /// policy says so.
    async fn on_exit(self: &Arc<Self>, id: &str) {
        let Ok(mut record) = self.resolve(id) else {
            return;
        };
        let dir = self.dir(id);
        match read_json::<ExitRecord>(&dir, EXIT) {
            Some(mut exit) => {
                let before = read_json::<RunState>(&dir, STATE).map_or(0, |s| s.oom_kills_before);
                if let Some(spec) = read_json::<ContainerSpec>(&dir, shim::CONFIG) {
                    exit.oom_killed |= ContainerCgroup::load(&spec.cgroup).oom_kills() > before;
                }
                record.exit_code = Some(exit.exit_code);
                record.reason = Some(exit.reason().to_string());
                record.finished_ms = Some(exit.finished_unix_ms);
            }
            None => {
                record.exit_code = Some(255);
                record.reason = Some("lost".into());
                record.message =
                    Some("the container's supervisor ended without recording an exit".into());
                record.finished_ms = Some(shim::now_ms());
            }
        }
        record.state = State::Exited;
        record.pid = None;
        record.shim_pid = None;
        if let Err(e) = self.net.unpublish(id).await {
            tracing::warn!(container = %record.name, error = %e, "unpublish ports");
        }
        tracing::info!(container = %record.name, exit_code = ?record.exit_code, reason = ?record.reason, "exited");
        if record.reason.as_deref() == Some("oom-killed") {
            crate::metrics::get().oom_kills.inc();
        }
        let stopping = self
            .live
            .lock()
            .expect("lock")
            .get(id)
            .is_none_or(|l| l.stopping);
        let restart = !stopping
            && match record.restart {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => record.exit_code != Some(0),
                RestartPolicy::Never => false,
            };
        if record.auto_remove && !restart {
            // Waiters (`run --rm`) hear of the exit once it is removed.
            let _ = self.records.put(&record, false);
            if let Err(e) = self.remove(id, true).await {
                tracing::warn!(container = %record.name, error = %e, "auto-remove failed");
                self.update(&record);
            }
            return;
        }
        if !restart {
            self.update(&record);
            return;
        }
        // Exponential back-off: 100 ms doubling to 10 s; a container that
        // ran for 10 s or more starts over at 100 ms.
        let ran_ms = record.finished_ms.unwrap_or(0) - record.started_ms.unwrap_or(0);
        let attempt = if ran_ms >= 10_000 {
            0
        } else {
            record.restarts.min(7)
        };
        let delay = Duration::from_millis((100u64 << attempt).min(10_000));
        record.state = State::Restarting;
        record.restarts += 1;
        crate::metrics::get().restarts.inc();
        self.update(&record);
        let rt = Arc::clone(self);
        let id = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // Marked starting with the check, so that a stop from here on
            // waits for this start and stops what it starts.
            let still = rt.live.lock().expect("lock").get_mut(&id).is_some_and(|l| {
                l.starting |= !l.stopping;
                !l.stopping
            });
            if still && let Err(e) = rt.start(&id).await {
                tracing::warn!(container = %id, error = %e, "restart failed");
            }
        });
    }

    /// Sets the containers-by-state gauge (at scrape time).
    pub fn update_metrics(&self) {
        let all = self.records.all().unwrap_or_default();
        let m = crate::metrics::get();
        for state in [
            State::Created,
            State::Running,
            State::Restarting,
            State::Exited,
        ] {
            let n = all.iter().filter(|r| r.state == state).count();
            m.containers
                .get_or_create(&crate::metrics::StateLabel {
                    state: state.to_string(),
                })
                .set(n as i64);
        }
    }

    /// Waits until the container is not running; returns how it ended.
    pub async fn wait(&self, key: &str) -> Result<ExitInfo, RuntimeError> {
        let rx = self.subscribe(key)?;
        Ok(Self::exit_of(rx).await)
    }

    /// The container's record as it changes; subscribe before starting it
    /// to hear of even the fastest exit (and an auto-remove right after).
    pub fn subscribe(&self, key: &str) -> Result<watch::Receiver<ContainerRecord>, RuntimeError> {
        let record = self.resolve(key)?;
        let live = self.live.lock().expect("lock");
        live.get(&record.id)
            .map(|l| l.tx.subscribe())
            .ok_or_else(|| RuntimeError::NotFound(key.into()))
    }

    /// Waits on a subscription until the container has exited.
    pub async fn exit_of(mut rx: watch::Receiver<ContainerRecord>) -> ExitInfo {
        let r = rx
            .wait_for(|r| {
                matches!(r.state, State::Exited | State::Created) && r.exit_code.is_some()
            })
            .await
            .map(|r| r.clone());
        let r = match r {
            Ok(r) => r,
            // The record was removed (auto-remove): its last value stands.
            Err(_) => rx.borrow().clone(),
        };
        ExitInfo {
            exit_code: r.exit_code.unwrap_or(255),
            reason: r.reason.unwrap_or_else(|| "exited".into()),
            message: r.message,
        }
    }

    /// Sends a signal to the container's first process.
    pub fn kill(&self, key: &str, signal: nix::sys::signal::Signal) -> Result<(), RuntimeError> {
        let record = self.resolve(key)?;
        let Some(pid) = record.pid.filter(|_| record.state == State::Running) else {
            return Err(RuntimeError::Invalid(format!(
                "container {} is not running",
                record.name
            )));
        };
        if let Some(l) = self.live.lock().expect("lock").get_mut(&record.id) {
            l.stopping = true;
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).map_err(internal)
    }

    /// SIGTERM, then SIGKILL to every process after `timeout`.
    pub async fn stop(
        &self,
        key: &str,
        timeout: Option<Duration>,
    ) -> Result<ExitInfo, RuntimeError> {
        // Not running and not about to be: created and never started, or
        // waiting out a restart's back-off.
        let idle = |r: &ContainerRecord| {
            (r.state == State::Created && r.exit_code.is_none()) || r.state == State::Restarting
        };
        let record = loop {
            let mut record = self.resolve(key)?;
            // Marked stopping (no restart from here) and, under the same
            // lock, whether a start is under way, heard of when it ends.
            let starting = {
                let mut live = self.live.lock().expect("lock");
                live.get_mut(&record.id).map(|l| {
                    l.stopping = true;
                    (l.starting, l.tx.subscribe())
                })
            };
            if !idle(&record) {
                break record;
            }
            match starting {
                // A start under way: what it starts is stopped.
                Some((true, mut rx)) => {
                    let _ = rx.changed().await;
                }
                // Between restarts: it stays down, with its last exit.
                _ if record.state == State::Restarting => {
                    record.state = State::Exited;
                    self.update(&record);
                    return Ok(ExitInfo {
                        exit_code: record.exit_code.unwrap_or(255),
                        reason: record.reason.unwrap_or_else(|| "exited".into()),
                        message: record.message,
                    });
                }
                // Never started (or its start failed before a process
                // ran): nothing to stop, and nothing will exit.
                _ => {
                    return Ok(ExitInfo {
                        exit_code: 0,
                        reason: "never-started".into(),
                        message: None,
                    });
                }
            }
        };
        if record.state == State::Running {
            let spec: Option<ContainerSpec> = read_json(&self.dir(&record.id), shim::CONFIG);
            let timeout = timeout.unwrap_or_else(|| {
                Duration::from_millis(spec.as_ref().map_or(10_000, |s| s.stop_timeout_ms))
            });
            if let Some(pid) = record.pid {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(timeout, self.wait(&record.id))
                .await
                .is_err()
                && let Some(spec) = spec
            {
                tracing::info!(container = %record.name, "stop timeout: killing");
                ContainerCgroup::load(&spec.cgroup).kill_all();
            }
        }
        self.wait(&record.id).await
    }

    /// Removes a container and everything it had on the host.
    pub async fn remove(&self, key: &str, force: bool) -> Result<(), RuntimeError> {
        let _busy = self.warm.busy();
        let record = self.resolve(key)?;
        if matches!(record.state, State::Running | State::Restarting) {
            if !force {
                return Err(RuntimeError::Running(record.name));
            }
            if let Some(l) = self.live.lock().expect("lock").get_mut(&record.id) {
                l.stopping = true;
            }
            if record.state == State::Running {
                self.stop(&record.id, Some(Duration::ZERO)).await?;
            }
        }
        let dir = self.dir(&record.id);
        let cgroup = read_json::<ContainerSpec>(&dir, shim::CONFIG).map(|s| s.cgroup);
        // The cgroup and the directory go at the same time.
        let gone = dir.clone();
        let files = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&gone) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        });
        if let Some(path) = cgroup {
            let cg = ContainerCgroup::load(&path);
            for _ in 0..100 {
                if cg.is_empty() {
                    break;
                }
                cg.kill_all();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::task::spawn_blocking(move || cg.delete())
                .await
                .map_err(internal)?
                .map_err(RuntimeError::Internal)?;
        }
        files.await.map_err(internal)?.map_err(internal)?;
        if record.network == NetworkMode::Bridge {
            self.net.release(&record.id).await?;
        }
        self.records.remove(&record.id).map_err(internal)?;
        // Waiters get the last state as the record goes.
        if let Some(l) = self.live.lock().expect("lock").remove(&record.id) {
            l.tx.send_replace(record.clone());
        }
        self.changed.notify_one();
        self.health.lock().expect("lock").remove(&record.id);
        tracing::info!(container = %record.name, "removed");
        Ok(())
    }

    /// Starts a command in a running container (see [`exec`]); its stdout
    /// and stderr are piped, and it exits with the command's status (126
    /// when it could not be run, 127 when the executable is missing).
    pub fn exec(
        &self,
        key: &str,
        opts: &ExecOptions,
    ) -> Result<tokio::process::Child, RuntimeError> {
        let record = self.resolve(key)?;
        let pid = record
            .pid
            .filter(|_| record.state == State::Running)
            .ok_or_else(|| {
                RuntimeError::Invalid(format!("container {} is not running", record.name))
            })?;
        if opts.cmd.is_empty() {
            return Err(RuntimeError::Invalid("exec: no command given".into()));
        }
        let dir = self.dir(&record.id);
        let spec: ContainerSpec = read_json(&dir, shim::CONFIG)
            .ok_or_else(|| internal(format!("container {}: config.json is missing", record.id)))?;
        let mut process = spec.process.clone();
        process.args = opts.cmd.clone();
        plan::merge_env(&mut process.env, &opts.env)?;
        if let Some(u) = &opts.user {
            let (uid, gid, additional_gids) = user::Accounts::of_layers(&spec.layers)
                .resolve(u)
                .map_err(|e| RuntimeError::Invalid(format!("user {u:?}: {e}")))?;
            process.uid = uid;
            process.gid = gid;
            process.additional_gids = additional_gids;
        }
        if let Some(w) = &opts.workdir {
            if !w.starts_with('/') {
                return Err(RuntimeError::Invalid(format!(
                    "workdir {w:?} must be absolute"
                )));
            }
            process.cwd = w.clone();
        }
        let input = serde_json::to_vec(&process).map_err(internal)?;
        let mut child = tokio::process::Command::new(&self.shim_exe)
            .arg("__exec")
            .arg(&dir)
            .arg(pid.to_string())
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| internal(format!("start exec helper: {e}")))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| internal("exec: no stdin"))?;
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&input).await;
        });
        // Debug: exec health probes run every few seconds.
        tracing::debug!(container = %record.name, command = ?opts.cmd.first(), "exec");
        Ok(child)
    }

    /// Probes a container every interval while this run of it (its first
    /// process `pid`) lasts, if it has a health check.
    fn watch_health(self: &Arc<Self>, id: &str, pid: i32) {
        let Some(spec) =
            read_json::<ContainerSpec>(&self.dir(id), shim::CONFIG).and_then(|s| s.health)
        else {
            return;
        };
        let rt = Arc::clone(self);
        let id = id.to_string();
        tokio::spawn(async move {
            let mut tracker = health::Tracker::new(&spec, std::time::Instant::now());
            rt.health
                .lock()
                .expect("lock")
                .insert(id.clone(), tracker.health.clone());
            loop {
                tokio::time::sleep(spec.interval.std()).await;
                let still = rt
                    .resolve(&id)
                    .is_ok_and(|r| r.state == State::Running && r.pid == Some(pid));
                if !still {
                    break;
                }
                let (ok, output) = rt.probe(&id, pid, &spec).await;
                let before = tracker.health.status;
                tracker.record(ok, health::truncate(output), std::time::Instant::now());
                if tracker.health.status != before {
                    tracing::info!(container = %id, status = ?tracker.health.status, "health");
                }
                rt.health
                    .lock()
                    .expect("lock")
                    .insert(id.clone(), tracker.health.clone());
            }
        });
    }

    /// Runs one probe within its timeout: whether it passed, and what it
    /// said.
    async fn probe(&self, id: &str, pid: i32, spec: &skiff_proto::HealthSpec) -> (bool, String) {
        let timeout = spec.timeout.std();
        let run = async {
            if let Some(e) = &spec.exec {
                let opts = ExecOptions {
                    cmd: e.command.clone(),
                    ..ExecOptions::default()
                };
                let child = self.exec(id, &opts).map_err(|e| e.to_string())?;
                let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                return if out.status.success() {
                    Ok(text)
                } else {
                    Err(format!("exit {}: {text}", out.status.code().unwrap_or(-1)))
                };
            }
            let (port, path) = match (&spec.tcp, &spec.http) {
                (Some(t), _) => (t.port, None),
                (None, Some(h)) => (h.port, Some(h.path.as_str())),
                (None, None) => return Err("no probe".to_string()),
            };
            let port = u16::try_from(port).map_err(|_| format!("port {port}"))?;
            let stream = health::connect_in(pid, port, timeout)
                .await
                .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
            match path {
                None => Ok(format!("connected to 127.0.0.1:{port}")),
                Some(path) => health::http_get(stream, port, path).await,
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(out)) => (true, out),
            Ok(Err(e)) => (false, e),
            Err(_) => (false, format!("timed out after {}", spec.timeout)),
        }
    }

    /// The most containers on the bridge network it can run at once (one
    /// address each from the node's subnet).
    pub fn container_addresses(&self) -> u32 {
        self.net.address_capacity()
    }

    /// The path of a container's log file.
    pub fn log_path(&self, key: &str) -> Result<(ContainerRecord, PathBuf), RuntimeError> {
        let record = self.resolve(key)?;
        let path = self.dir(&record.id).join(shim::LOG);
        Ok((record, path))
    }

    /// Layers (diff ids) that containers use, kept by image GC.
    pub fn layers_in_use(&self) -> Vec<PathBuf> {
        self.records
            .all()
            .unwrap_or_default()
            .iter()
            .filter_map(|r| read_json::<ContainerSpec>(&self.dir(&r.id), shim::CONFIG))
            .flat_map(|s| s.layers)
            .collect()
    }

    /// After an agent restart, the container directories say what happened:
    /// containers whose shim still runs are watched again; those that ended
    /// meanwhile get their recorded exit (and their restart policy).
    async fn adopt(self: &Arc<Self>) -> Result<(), RuntimeError> {
        let records = self.records.all().map_err(internal)?;
        // Networking first: addresses of containers that are gone come
        // back, stray links go, running containers' ports are published.
        let bridged: Vec<_> = records
            .iter()
            .filter_map(|r| {
                let dir = self.dir(&r.id);
                let a = read_json::<ContainerSpec>(&dir, shim::CONFIG)?.net?;
                let running = read_json::<RunState>(&dir, STATE)
                    .is_some_and(|s| shim_alive(s.shim_pid, &dir));
                Some((r.id.clone(), r.name.clone(), a, running))
            })
            .collect();
        self.net.adopt(&bridged).await?;
        for record in records {
            if !self.dir(&record.id).join(shim::CONFIG).exists() {
                // Removed just before a crash (removal is not waited for).
                let _ = self.records.remove(&record.id);
                continue;
            }
            let (tx, _) = watch::channel(record.clone());
            self.live.lock().expect("lock").insert(
                record.id.clone(),
                Live {
                    tx,
                    stopping: false,
                    starting: false,
                },
            );
            let dir = self.dir(&record.id);
            let state: Option<RunState> = read_json(&dir, STATE);
            let exit: Option<ExitRecord> = read_json(&dir, EXIT);
            let alive = state.as_ref().filter(|s| shim_alive(s.shim_pid, &dir));
            if let Some(s) = alive {
                tracing::info!(container = %record.name, pid = s.pid, "re-adopted");
                self.watch_health(&record.id, s.pid);
                let mut r = record.clone();
                r.state = State::Running;
                r.pid = Some(s.pid);
                r.shim_pid = Some(s.shim_pid);
                r.started_ms = Some(s.started_unix_ms);
                self.update(&r);
                let rt = Arc::clone(self);
                let id = record.id.clone();
                let shim_pid = s.shim_pid;
                tokio::spawn(async move {
                    wait_pid_exit(shim_pid).await;
                    rt.on_exit(&id).await;
                });
                continue;
            }
            let new_exit = exit
                .as_ref()
                .is_some_and(|e| record.finished_ms != Some(e.finished_unix_ms));
            // A start's record is not waited for: after a crash it may
            // still say `created`, but the state file, written by the shim
            // once the process runs, says it started.
            let was_up = matches!(record.state, State::Running | State::Restarting)
                || (record.state == State::Created && state.is_some());
            if new_exit || was_up {
                // Ended while the agent was away (or its supervisor was lost).
                if let Some(s) = &state {
                    let mut r = record.clone();
                    r.started_ms = Some(s.started_unix_ms);
                    self.update(&r);
                }
                self.on_exit(&record.id).await;
            }
        }
        Ok(())
    }
}

/// Gives secrets' directories and files, and each empty local volume
/// directory, to the container's user.
fn give_volumes(mounts: &[spec::Mount], uid: u32, gid: u32) -> Result<(), RuntimeError> {
    for m in mounts.iter().filter(|m| m.secret) {
        let spec::MountSource::Bind(dir) = &m.source else {
            continue;
        };
        let give = |p: &Path| std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(internal);
        for e in std::fs::read_dir(dir).map_err(internal)?.flatten() {
            give(&e.path())?;
        }
        give(dir)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500)).map_err(internal)?;
    }
    for m in mounts.iter().filter(|m| m.owned) {
        let spec::MountSource::Bind(dir) = &m.source else {
            continue;
        };
        let empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .map_err(|e| {
                RuntimeError::Invalid(format!("volume at {}: {}: {e}", m.target, dir.display()))
            })?;
        if empty {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(internal)?;
        }
    }
    Ok(())
}

/// Whether `pid` is still the shim of the container in `dir`.
fn shim_alive(pid: i32, dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let c = String::from_utf8_lossy(&c);
            c.contains("__shim") && c.contains(&*dir.to_string_lossy())
        })
        .unwrap_or(false)
}

/// Waits for a process that is not our child to exit (pidfd).
async fn wait_pid_exit(pid: i32) {
    // SAFETY: pidfd_open has no memory-safety preconditions.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: the kernel just returned this fd to us; we own it.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns the pidfd; nothing else closes or reuses it.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    };
    if let Ok(afd) = afd {
        let _ = afd.readable().await;
    }
}

/// Starts a shim and reads its start report (blocking).
fn spawn_shim(
    exe: &Path,
    supervisor: &Path,
    dir: &Path,
) -> Result<(std::process::Child, StartReport), RuntimeError> {
    use std::os::unix::process::CommandExt;
    let shim_log = std::fs::File::create(dir.join("shim.log")).map_err(internal)?;
    let mut cmd = Command::new(exe);
    cmd.arg("__shim")
        .arg(dir)
        .arg(supervisor)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(shim_log)
        .env_clear()
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| internal(format!("start the shim {}: {e}", exe.display())))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| internal("shim has no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(internal)?;
    let report = serde_json::from_str(&line).unwrap_or_else(|_| StartReport::Failed {
        error: format!(
            "the shim ended without a report: {}",
            std::fs::read_to_string(dir.join("shim.log"))
                .unwrap_or_default()
                .trim()
        ),
    });
    Ok((child, report))
}

/// Clears a container's `starting` mark however its start ends.
struct Starting<'a> {
    rt: &'a Runtime,
    id: String,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.rt.live.lock().expect("lock").get_mut(&self.id) {
            l.starting = false;
            // A stop waiting for this start looks again.
            l.tx.send_modify(|_| {});
        }
    }
}
