//! Applies the node's desired state: every allocation in it runs as a
//! container named after the allocation (labelled `skiff.allocation`);
//! managed containers not in it are stopped and removed. Containers
//! started by hand (no label) are left alone. Runs on every new desired
//! state and every few seconds; reports the allocations' states when they
//! change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use skiff_proto::wire::v1;
use tokio::sync::{mpsc, watch};

use crate::images::ImageStore;
use crate::runtime::records::{ContainerRecord, State};
use crate::runtime::{RunOptions, Runtime, RuntimeError};
use crate::secrets::NodeSecrets;
use crate::volumes::{NodeVolumes, VolumeError};

/// The label naming a container's allocation.
pub const ALLOCATION_LABEL: &str = "skiff.allocation";
const WORKLOAD_LABEL: &str = "skiff.workload";
/// Its workload's fleet namespace.
const NAMESPACE_LABEL: &str = "skiff.namespace";

/// The namespace the gateway names (empty from an older gateway: `default`).
fn namespace_of(ns: &str) -> String {
    if ns.is_empty() {
        skiff_proto::namespace::DEFAULT.to_string()
    } else {
        ns.to_string()
    }
}

#[derive(Debug)]
pub struct Reconciler {
    runtime: Arc<Runtime>,
    images: Arc<ImageStore>,
    volumes: NodeVolumes,
    secrets: NodeSecrets,
    /// This node's id and site, given to every container as `SKIFF_NODE`
    /// and `SKIFF_SITE` (with `SKIFF_ALLOCATION` and `SKIFF_WORKLOAD`).
    node: String,
    site: String,
    /// Why an allocation could not start (pull or create failed), and
    /// when it is tried again.
    failures: BTreeMap<String, (String, std::time::Instant)>,
}

/// Why an allocation could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("the allocation has no container spec")]
    NoSpec,
    #[error("{0}")]
    Spec(#[from] skiff_proto::wire::WireError),
    #[error("pull {image}: {source}")]
    Pull {
        image: String,
        /// One pull's error, for every allocation that waited for it.
        #[source]
        source: Arc<crate::images::ImageError>,
    },
    #[error("{0}")]
    Volume(#[from] VolumeError),
    #[error("{0}")]
    Secret(#[from] crate::secrets::SecretError),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
}

/// Time before an allocation that could not start is tried again.
const RETRY: Duration = Duration::from_secs(10);

/// Managed containers, by allocation id.
fn managed(runtime: &Runtime) -> BTreeMap<String, ContainerRecord> {
    runtime
        .list(true)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| {
            let id = r.labels.get(ALLOCATION_LABEL)?.clone();
            Some((id, r))
        })
        .collect()
}

fn status_of(id: &str, r: &ContainerRecord) -> v1::AllocationStatus {
    use v1::AllocationState as S;
    let state = match r.state {
        State::Created => S::Starting,
        State::Running | State::Restarting => S::Running,
        State::Exited if r.reason.as_deref() == Some("failed-to-start") => S::Failed,
        State::Exited => S::Exited,
    };
    v1::AllocationStatus {
        allocation_id: id.to_string(),
        generation: 0,
        state: state as i32,
        exit_code: r.exit_code,
        reason: r.reason.clone().unwrap_or_default(),
        message: r.message.clone().unwrap_or_default(),
        health: v1::HealthState::None as i32,
        restarts: r.restarts,
        container_id: r.id.clone(),
        started_unix_ms: r.started_ms.unwrap_or(0),
        finished_unix_ms: r.finished_ms.unwrap_or(0),
        address: r.address.map(|a| a.to_string()).unwrap_or_default(),
    }
}

/// What runs now, as allocation statuses.
pub fn statuses(runtime: &Runtime) -> Vec<v1::AllocationStatus> {
    managed(runtime)
        .iter()
        .map(|(id, r)| status_of(id, r))
        .collect()
}

impl Reconciler {
    pub fn new(
        runtime: Arc<Runtime>,
        images: Arc<ImageStore>,
        volumes: NodeVolumes,
        node: &str,
        site: &str,
    ) -> Self {
        Self {
            runtime,
            images,
            secrets: NodeSecrets::new(&volumes.state_dir()),
            volumes,
            node: node.to_string(),
            site: site.to_string(),
            failures: BTreeMap::new(),
        }
    }

    /// Applies each new desired state (and re-checks every 2 s); sends a
    /// report whenever the statuses change.
    pub async fn run(
        mut self,
        mut desired: watch::Receiver<Option<v1::DesiredState>>,
        reports: mpsc::Sender<v1::AllocationStatusReport>,
    ) {
        let mut last = v1::AllocationStatusReport::default();
        loop {
            let want = desired.borrow_and_update().clone();
            if let Some(want) = want {
                self.apply(&want).await;
            }
            let mut now = statuses(&self.runtime);
            for (id, (why, _)) in &self.failures {
                if !now.iter().any(|s| &s.allocation_id == id) {
                    now.push(v1::AllocationStatus {
                        allocation_id: id.clone(),
                        state: v1::AllocationState::Failed as i32,
                        message: why.clone(),
                        ..Default::default()
                    });
                }
            }
            let report = v1::AllocationStatusReport {
                allocations: now,
                volumes: self.volumes.held(),
            };
            if report != last && reports.try_send(report.clone()).is_ok() {
                last = report;
            }
            // A new desired state, a container that started or exited
            // (reported as it happens), or a look every 500 ms (health,
            // restarts with back-off).
            tokio::select! {
                r = desired.changed() => if r.is_err() { return },
                () = self.runtime.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn apply(&mut self, want: &v1::DesiredState) {
        let allow_from = want
            .network_policies
            .iter()
            .map(|p| (namespace_of(&p.namespace), p.allow_from.clone()))
            .collect();
        if let Err(e) = self.runtime.set_allow_from(allow_from).await {
            tracing::warn!(error = %e, "namespace network rules");
        }
        let have = managed(&self.runtime);
        let wanted: BTreeSet<&str> = want.allocations.iter().map(|a| a.id.as_str()).collect();
        self.failures.retain(|id, _| wanted.contains(id.as_str()));
        // Stopped gracefully (each with its own stop timeout), all at once.
        let stale: Vec<_> = have
            .iter()
            .filter(|(id, _)| !wanted.contains(id.as_str()))
            .map(|(id, r)| {
                let rt = Arc::clone(&self.runtime);
                let (id, container) = (id.clone(), r.id.clone());
                async move {
                    tracing::info!(allocation = %id, "not desired any more: stopping");
                    let _ = rt.stop(&container, None).await;
                    if let Err(e) = rt.remove(&container, true).await {
                        tracing::warn!(allocation = %id, error = %e, "remove");
                    }
                    id
                }
            })
            .collect();
        for id in futures::future::join_all(stale).await {
            self.secrets.remove(&id);
        }
        self.remove_volumes(want);
        let now = std::time::Instant::now();
        // What to start, made ready one by one (volumes, secrets, options);
        // then the images missing, each pulled once, all at once; then the
        // containers, STARTS_AT_ONCE at a time.
        let mut ready = Vec::new();
        let mut failed: Vec<(String, StartError)> = Vec::new();
        for a in &want.allocations {
            let waiting = self.failures.get(&a.id).is_some_and(|(_, at)| *at > now);
            if have.contains_key(&a.id) {
                self.rotate(a);
                continue;
            }
            if waiting {
                continue;
            }
            match self.prepare(a) {
                Ok(r) => ready.push(r),
                Err(e) => failed.push((a.id.clone(), e)),
            }
        }
        let missing: BTreeMap<String, skiff_proto::ImageRef> = ready
            .iter()
            .filter(|r| self.images.get(&r.opts.image).is_err())
            .map(|r| (r.opts.image.clone(), r.image.clone()))
            .collect();
        let pulls = missing.into_iter().map(|(name, image)| {
            let images = Arc::clone(&self.images);
            async move {
                tracing::info!(%name, "pulling");
                let (tx, _rx) = mpsc::unbounded_channel();
                let r = images.pull(&image, tx).await.map_err(Arc::new);
                (name, r)
            }
        });
        let pulled: BTreeMap<String, Result<_, Arc<crate::images::ImageError>>> =
            futures::future::join_all(pulls).await.into_iter().collect();
        let mut run = Vec::new();
        for r in ready {
            match pulled.get(&r.opts.image) {
                Some(Err(e)) => failed.push((
                    r.id,
                    StartError::Pull {
                        image: r.opts.image.clone(),
                        source: Arc::clone(e),
                    },
                )),
                _ => run.push(r),
            }
        }
        let started: Vec<(String, Result<(), StartError>)> = futures::stream::iter(run)
            .map(|r| {
                let rt = Arc::clone(&self.runtime);
                async move { (r.id.clone(), launch(&rt, r).await) }
            })
            .buffer_unordered(STARTS_AT_ONCE)
            .collect()
            .await;
        for (id, r) in started {
            match r {
                Ok(()) => {
                    self.failures.remove(&id);
                }
                Err(e) => failed.push((id, e)),
            }
        }
        for (id, e) in failed {
            tracing::warn!(allocation = %id, error = %e, "could not start; trying again in 10 s");
            // Given again at the next try; gone if it is not wanted then.
            self.secrets.remove(&id);
            self.failures.insert(id, (e.to_string(), now + RETRY));
        }
    }

    /// Deletes the local volumes the gateway asked to, unless a wanted
    /// allocation still mounts one.
    fn remove_volumes(&self, want: &v1::DesiredState) {
        for id in &want.remove_volumes {
            let used = want
                .allocations
                .iter()
                .any(|a| a.local_volumes.values().any(|v| v == id));
            if used {
                continue;
            }
            match self.volumes.remove_local(id) {
                Ok(()) => tracing::debug!(volume = %id, "local volume removed"),
                Err(e) => tracing::warn!(volume = %id, error = %e, "remove local volume"),
            }
        }
    }

    /// A running allocation's rotated secrets, into its files.
    fn rotate(&mut self, a: &v1::Allocation) {
        let Some(spec) = a
            .spec
            .as_ref()
            .and_then(|s| skiff_proto::ContainerSpec::try_from(s).ok())
        else {
            return;
        };
        match self.secrets.rotate(a, &spec) {
            Ok(true) => tracing::info!(allocation = %a.id, "secrets rotated"),
            Ok(false) => {}
            Err(e) => tracing::warn!(allocation = %a.id, error = %e, "rotate secrets"),
        }
    }

    /// An allocation made ready to start: its volumes made, its secrets
    /// given, its options (the image may still have to be pulled).
    fn prepare(&mut self, a: &v1::Allocation) -> Result<Ready, StartError> {
        let spec = a.spec.as_ref().ok_or(StartError::NoSpec)?;
        let spec = skiff_proto::ContainerSpec::try_from(spec)?;
        let local: BTreeMap<String, String> = a
            .local_volumes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Before the pull: a volume the node cannot give fails at once.
        let mounts = self.volumes.mounts(&spec, &local)?;
        let image = spec.image.to_string();
        self.volumes.make_local(&spec, &local)?;
        let mut mounts = mounts;
        let secrets = self.secrets.give(a, &spec)?;
        mounts.extend(secrets.mounts);
        let mut labels = BTreeMap::new();
        labels.insert(ALLOCATION_LABEL.to_string(), a.id.clone());
        labels.insert(WORKLOAD_LABEL.to_string(), a.workload.clone());
        labels.insert(NAMESPACE_LABEL.to_string(), namespace_of(&a.namespace));
        let opts = RunOptions {
            image,
            name: Some(a.id.clone()),
            cmd: spec.args.clone(),
            entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: spec
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .chain([
                    format!("SKIFF_NODE={}", self.node),
                    format!("SKIFF_SITE={}", self.site),
                    format!("SKIFF_ALLOCATION={}", a.id),
                    format!("SKIFF_WORKLOAD={}", a.workload),
                    format!("SKIFF_NAMESPACE={}", namespace_of(&a.namespace)),
                ])
                .chain(secrets.env)
                .collect(),
            memory: Some(spec.resources.memory),
            cpus: Some(spec.resources.cpu),
            restart: Some(spec.restart),
            stop_timeout_ms: Some(spec.stop_timeout.std().as_millis() as u64),
            network: Some(spec.network),
            ports: spec.ports.clone(),
            labels,
            health: spec.health.clone(),
            mounts,
            privileged: spec.security.privileged,
            cap_add: spec.security.cap_add.clone(),
            userns_remap: spec.security.user_namespace,
            namespace: Some(namespace_of(&a.namespace)),
            ..RunOptions::default()
        };
        Ok(Ready {
            id: a.id.clone(),
            workload: a.workload.clone(),
            image: spec.image.clone(),
            opts,
        })
    }
}

/// At most this many containers are being created and started at once
/// (the runtime benchmark's throughput is at 8 in flight).
const STARTS_AT_ONCE: usize = 8;

/// What [`Reconciler::prepare`] made ready.
struct Ready {
    id: String,
    workload: String,
    image: skiff_proto::ImageRef,
    opts: RunOptions,
}

/// Creates and starts a ready container (removed again if it cannot start).
async fn launch(runtime: &Arc<Runtime>, r: Ready) -> Result<(), StartError> {
    let record = runtime.create(&r.opts).await?;
    if let Err(e) = runtime.start(&record.id).await {
        // The start's error is the one to report; a container left here
        // is not desired and goes at the next pass.
        if let Err(removal) = runtime.remove(&record.id, true).await {
            tracing::warn!(allocation = %r.id, error = %removal, "remove a container that did not start");
        }
        return Err(e.into());
    }
    tracing::info!(allocation = %r.id, workload = %r.workload, "started");
    Ok(())
}
