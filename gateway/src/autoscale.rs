//! The autoscaler: it carries out the placement engine's launch plan and
//! hands idle VMs back.
//!
//! * Launch: 100 ms after a pass plans VMs (and every second) it launches
//!   what the plan asks for: sites and types in parallel, within one a
//!   first VM alone and then the rest together; each VM with its own
//!   single-use join token in its cloud-init user data, recorded with the
//!   allocations it is for (the scheduler counts it as capacity holding
//!   them, so the same demand never launches twice).
//! * Settle: a VM whose node has registered is done; one that has not
//!   joined within the site's `join_timeout` is terminated (only ever the
//!   gateway's own instances) and its type set aside.
//! * Failures: after `with_retry`'s back-off, a failed launch sets that
//!   site's type aside (60 s quota/capacity, 30 s throttling or transient,
//!   5 min auth/invalid); the next plan, made at once, goes elsewhere.
//! * Scale-in: a launched node idle for `scale_in_after` is cordoned, then
//!   terminated and removed, each phase recorded on the node first (one
//!   emptied by consolidation or for a notice at once: it was emptied to go).
//! * Consolidation: every `consolidation.interval` a launched node whose
//!   work fits on capacity already paid for is emptied, one at a time
//!   (see [`crate::control::reconcile::consolidate`]); a move whose
//!   replacement finds no room within an interval is called off.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use skiff_cloud::bootstrap::Bootstrap;
use skiff_cloud::{
    Backoff, CloudProvider, LaunchRequest, Secret, TAG_CLUSTER, TAG_NODE, TAG_SITE,
    terminate_owned, with_retry,
};

use crate::control::reconcile::consolidate;
use crate::control::vms::ScaleIn;
use crate::control::{Control, ControlError, MoveCause, PlannedLaunch, Vacate, VmRecord};
use crate::pki::{Pki, random_hex};
use crate::scheduler::money;
use futures::StreamExt;

/// Launches and retires VMs for the sites that have a provider.
#[derive(Debug)]
pub struct Autoscaler {
    pub control: Arc<Control>,
    pub pki: Arc<Pki>,
    /// By site name.
    pub providers: BTreeMap<String, Arc<dyn CloudProvider>>,
    /// This gateway's id, in every instance's `skiff:cluster` tag.
    pub cluster: String,
    /// When the clouds were last searched for instances of this cluster
    /// that nothing records ([`Autoscaler::sweep`]).
    swept: std::sync::Mutex<Option<std::time::Instant>>,
    /// When the fleet was last looked at for consolidation (ms).
    consolidated: std::sync::Mutex<Option<i64>>,
}

/// How often the clouds are searched for unrecorded instances (and at a
/// gateway's first pass as leader).
const SWEEP_EVERY: Duration = Duration::from_secs(300);

/// Nodes consolidation tries per interval (each costs a placement).
const CONSOLIDATION_CANDIDATES: usize = 16;

/// Most launch calls in flight for one site and type.
const LAUNCH_CONCURRENCY: usize = 16;

/// How long demand is gathered after a plan first asks for VMs.
const BATCH_WINDOW: Duration = Duration::from_millis(100);

/// Why a VM was not launched, or not kept: the cloud refused or failed,
/// or the gateway could not record it (a store failure is never the
/// cloud's fault: nothing is set aside for it).
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Cloud(#[from] skiff_cloud::CloudError),
    #[error("record the launch: {0}")]
    Record(#[source] ControlError),
}

/// How long a type is set aside after a launch failed with `e` (after the
/// retries [`with_retry`] made): capacity and quota may come back within
/// minutes; a refused request or credentials need an operator.
fn hold_after(e: &skiff_cloud::CloudError) -> Duration {
    if e.wants_fallback() {
        Duration::from_secs(60)
    } else if e.is_retryable() {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(300)
    }
}

impl Autoscaler {
    pub fn new(
        control: Arc<Control>,
        pki: Arc<Pki>,
        providers: BTreeMap<String, Arc<dyn CloudProvider>>,
        cluster: String,
    ) -> Self {
        Self {
            control,
            pki,
            providers,
            cluster,
            swept: std::sync::Mutex::new(None),
            consolidated: std::sync::Mutex::new(None),
        }
    }

    /// Runs a pass every second, and soon after a plan asks for VMs (after
    /// a short window that batches the demand arriving with it), until
    /// the process ends.
    pub fn spawn(self: Arc<Self>) {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = self.control.plan_wanted() => {
                        tokio::time::sleep(BATCH_WINDOW).await;
                    }
                }
                self.tick().await;
            }
        });
    }

    /// One pass: joined VMs done, late ones terminated, idle nodes scaled
    /// in, the plan launched.
    pub async fn tick(&self) {
        // Only the leader launches and retires VMs.
        if !self.control.is_leader() {
            return;
        }
        self.sweep().await;
        self.settle().await;
        self.scale_in().await;
        self.consolidate();
        let Some(planned) = self.control.take_fresh_plan() else {
            return;
        };
        // Sites and types in parallel; within one, a first VM alone (a
        // quota or capacity refusal stops there), then the rest together.
        let launches = planned.into_iter().filter_map(|p| {
            let provider = Arc::clone(self.providers.get(&p.site)?);
            (!self.control.is_held(&p.site, &p.instance_type))
                .then(|| self.launch_planned(provider, p))
        });
        futures::future::join_all(launches).await;
        self.control.wake();
    }

    async fn launch_planned(&self, provider: Arc<dyn CloudProvider>, mut p: PlannedLaunch) {
        let mut vms = std::mem::take(&mut p.vms);
        vms.resize(p.count as usize, Vec::new());
        let mut vms = vms.into_iter();
        let Some(first) = vms.next() else {
            return;
        };
        let r = self
            .launch_one(provider.as_ref(), &p.site, &p.instance_type, first)
            .await;
        if !self.outcome(&p, r) {
            return;
        }
        let rest: Vec<_> = futures::stream::iter(vms.map(|allocations| {
            self.launch_one(provider.as_ref(), &p.site, &p.instance_type, allocations)
        }))
        .buffer_unordered(LAUNCH_CONCURRENCY)
        .collect()
        .await;
        for r in rest {
            self.outcome(&p, r);
        }
    }

    /// Reports a launch; a failure sets the type aside (never the same
    /// failing call again and again: the demand is planned elsewhere).
    /// Whether it succeeded.
    fn outcome(&self, p: &PlannedLaunch, r: Result<VmRecord, LaunchError>) -> bool {
        match r {
            Ok(vm) => {
                self.control.event(
                    "site",
                    &p.site,
                    format!(
                        "launched {} ({}) for pending work; it joins as {}",
                        vm.id, vm.instance_type, vm.node
                    ),
                );
                true
            }
            Err(LaunchError::Record(e)) => {
                // The next plan asks again; no type is to blame.
                self.control.event(
                    "site",
                    &p.site,
                    format!("did not launch {}: {e}", p.instance_type),
                );
                false
            }
            Err(LaunchError::Cloud(e)) => {
                self.control.event(
                    "site",
                    &p.site,
                    format!("could not launch {}: {e}", p.instance_type),
                );
                self.control.hold_instance_type(
                    &p.site,
                    &p.instance_type,
                    hold_after(&e),
                    e.class(),
                );
                false
            }
        }
    }

    async fn launch_one(
        &self,
        provider: &dyn CloudProvider,
        site: &str,
        instance_type: &str,
        allocations: Vec<String>,
    ) -> Result<VmRecord, LaunchError> {
        let invalid = |m: String| skiff_cloud::CloudError::Invalid(m);
        let cfg = self
            .control
            .config
            .site(site)
            .ok_or_else(|| invalid(format!("no site {site}")))?;
        let gateway_url = cfg
            .gateway_url
            .clone()
            .ok_or_else(|| invalid(format!("site {site}: gateway_url is not set")))?;
        let node = format!("{site}-{}", random_hex(3));
        // A token for this VM alone, valid as long as it may take to join.
        let token = self
            .control
            .issue_join_token(site, join_timeout(cfg))
            .map_err(LaunchError::Record)?;
        let user_data = Bootstrap {
            gateway_url,
            ca_hash: self.pki.ca_hash(),
            join_token: Secret(token.secret),
            node_name: node.clone(),
            labels: BTreeMap::from([("skiff/site".to_string(), site.to_string())]),
            agent_url: None,
            agent_sha256: None,
            agent_config: cfg.vm_agent_config(instance_type),
        }
        .render()
        .map_err(|e| invalid(e.to_string()))?;
        let req = LaunchRequest {
            site: site.to_string(),
            instance_type: instance_type.to_string(),
            count: 1,
            user_data,
            tags: BTreeMap::from([
                (TAG_CLUSTER.to_string(), self.cluster.clone()),
                (TAG_SITE.to_string(), site.to_string()),
                (TAG_NODE.to_string(), node.clone()),
            ]),
            spot: cfg.is_spot(instance_type),
        };
        let launched = with_retry(Backoff::default(), || provider.launch(&req)).await?;
        let instance = launched
            .into_iter()
            .next()
            .ok_or_else(|| skiff_cloud::CloudError::Other("launch returned nothing".into()))?;
        let vm = VmRecord {
            id: instance.id,
            site: site.to_string(),
            instance_type: instance_type.to_string(),
            node,
            launched_ms: self.control.clock.now_ms(),
            allocations,
        };
        if let Err(e) = self.control.record_vm(&vm) {
            // Not recorded: not ours to keep. If even that fails, the
            // instance carries this gateway's cluster tag for an operator
            // (and its join token expires unused).
            if let Err(t) =
                terminate_owned(provider, &self.cluster, std::slice::from_ref(&vm.id)).await
            {
                tracing::error!(vm = %vm.id, error = %t, "terminate a VM that could not be recorded");
            }
            return Err(LaunchError::Record(e));
        }
        Ok(vm)
    }

    /// Instances tagged with this cluster that no VM record and no node
    /// knows are terminated: a gateway that stopped between a cloud's
    /// launch answer and its record of the VM (a crash, a lost lease) left
    /// them, and nothing else would ever retire them. Runs at the first
    /// pass as leader and every [`SWEEP_EVERY`]; no launch of this
    /// gateway is in flight meanwhile (a pass launches after it), and a
    /// former leader's launch could not be recorded (its writes are
    /// fenced), so an unknown instance is never one about to be known.
    /// One whose node joined all the same (its agent was quicker than
    /// the sweep) is adopted: the node's instance, scaled in as any.
    async fn sweep(&self) {
        let now = self.control.clock.now();
        let now_ms = self.control.clock.now_ms();
        {
            let mut last = self.swept.lock().expect("lock");
            if last.is_some_and(|t| now.duration_since(t) < SWEEP_EVERY) {
                return;
            }
            *last = Some(now);
        }
        for (site, provider) in &self.providers {
            let found = match provider.describe(TAG_CLUSTER, &self.cluster).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(%site, error = %e, "list this cluster's instances (tried again later)");
                    continue;
                }
            };
            let up = |i: &&skiff_cloud::Instance| {
                !matches!(
                    i.state,
                    skiff_cloud::InstanceState::Terminated | skiff_cloud::InstanceState::Stopping
                )
            };
            // Unrecorded, but its node joined (its agent was quicker than
            // this pass): the node's instance from now on, so that it
            // scales in like any launched node.
            let adopted: Vec<VmRecord> = self.control.read(|s| {
                found
                    .iter()
                    .filter(up)
                    .filter(|i| !s.vms.contains_key(&i.id))
                    .filter_map(|i| {
                        let node = s.nodes.get(i.tags.get(TAG_NODE)?)?;
                        (node.instance_id.is_none()
                            && !s
                                .nodes
                                .values()
                                .any(|n| n.instance_id.as_deref() == Some(i.id.as_str())))
                        .then(|| VmRecord {
                            id: i.id.clone(),
                            site: site.clone(),
                            instance_type: i.instance_type.clone(),
                            node: node.id.clone(),
                            launched_ms: now_ms,
                            allocations: Vec::new(),
                        })
                    })
                    .collect()
            });
            for vm in &adopted {
                match self.control.vm_joined(vm) {
                    Ok(()) => self.control.event(
                        "site",
                        site,
                        format!(
                            "adopted {}: never recorded, but its node {} joined",
                            vm.id, vm.node
                        ),
                    ),
                    Err(e) => {
                        tracing::warn!(vm = %vm.id, node = %vm.node, error = %e, "adopt an unrecorded instance (tried again later)")
                    }
                }
            }
            let orphans: Vec<String> = self.control.read(|s| {
                found
                    .iter()
                    .filter(up)
                    .filter(|i| {
                        let node = i.tags.get(TAG_NODE);
                        !s.vms.contains_key(&i.id)
                            && !node.is_some_and(|n| s.nodes.contains_key(n))
                            && !s
                                .nodes
                                .values()
                                .any(|n| n.instance_id.as_deref() == Some(i.id.as_str()))
                    })
                    .map(|i| i.id.clone())
                    .collect()
            });
            match provider.sweep(&self.cluster).await {
                Ok(left) => {
                    for what in left {
                        self.control.event(
                            "site",
                            site,
                            format!("deleted {what}: made for a VM of this cluster that was never created"),
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(%site, error = %e, "delete what half-made launches left (tried again later)")
                }
            }
            if orphans.is_empty() {
                continue;
            }
            match terminate_owned(provider.as_ref(), &self.cluster, &orphans).await {
                Ok(_) => {
                    for id in &orphans {
                        self.control.event(
                            "site",
                            site,
                            format!("terminated {id}: tagged for this cluster but never recorded (a gateway stopped between its launch and its record)"),
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(%site, error = %e, "terminate unrecorded instances (tried again later)")
                }
            }
        }
    }

    /// VMs whose node joined are done; those past their join timeout are
    /// terminated.
    async fn settle(&self) {
        let now = self.control.clock.now_ms();
        let (joined, late): (Vec<VmRecord>, Vec<VmRecord>) = self.control.read(|s| {
            let joined = s
                .vms
                .values()
                .filter(|v| registered(s, v))
                .cloned()
                .collect();
            let late = s
                .vms
                .values()
                .filter(|v| !registered(s, v))
                .filter(|v| {
                    let t = self
                        .control
                        .config
                        .site(&v.site)
                        .map_or(Duration::from_secs(300), join_timeout);
                    now - v.launched_ms > t.as_millis() as i64
                })
                .cloned()
                .collect();
            (joined, late)
        });
        for vm in &late {
            if let Some(p) = self.providers.get(&vm.site) {
                match terminate_owned(p.as_ref(), &self.cluster, std::slice::from_ref(&vm.id)).await
                {
                    Ok(_) => {
                        self.control.event(
                            "site",
                            &vm.site,
                            format!("terminated {}: it did not join in time", vm.id),
                        );
                        // Its demand goes to another type or site.
                        self.control.hold_instance_type(
                            &vm.site,
                            &vm.instance_type,
                            Duration::from_secs(60),
                            "a VM of it did not join",
                        );
                    }
                    Err(e) => {
                        self.control
                            .event("site", &vm.site, format!("terminate {}: {e}", vm.id));
                        continue;
                    }
                }
            }
            self.forget(vm);
        }
        for vm in &joined {
            if let Err(e) = self.control.vm_joined(vm) {
                // The VM stays recorded: the next pass tries again.
                tracing::warn!(vm = %vm.id, node = %vm.node, error = %e, "record the instance of a joined node");
            }
        }
    }

    /// Launched nodes without work for the site's `scale_in_after` are
    /// cordoned, then (still without work) terminated and removed. Each
    /// step is recorded on the node before it is taken, so a gateway
    /// killed half-way goes on from there; a node that has work is never
    /// terminated (work that lands on it while cordoned is drained away
    /// first).
    async fn scale_in(&self) {
        let now = self.control.clock.now_ms();
        struct Step {
            node: String,
            site: String,
            instance: String,
            work: usize,
            idle_since: Option<i64>,
            phase: Option<String>,
            /// Emptied (by consolidation, or for its cloud's notice): it
            /// goes once empty.
            vacated: bool,
        }
        let steps: Vec<Step> = self.control.read(|s| {
            s.nodes
                .values()
                .filter(|n| self.providers.contains_key(&n.site))
                .filter_map(|n| {
                    Some(Step {
                        node: n.id.clone(),
                        site: n.site.clone(),
                        instance: n.instance_id.clone()?,
                        // A system workload's copy is on every node: it
                        // keeps none from being idle.
                        work: s
                            .allocations
                            .values()
                            .filter(|a| a.node.as_deref() == Some(n.id.as_str()) && a.is_live())
                            .filter(|a| {
                                s.workloads.get(&a.workload).is_none_or(|w| {
                                    w.spec.kind != skiff_proto::WorkloadKind::System
                                })
                            })
                            .count(),
                        idle_since: n.idle_since_ms,
                        phase: n.scale_in.clone(),
                        vacated: n.vacating.is_some(),
                    })
                })
                .collect()
        });
        for st in steps {
            let after = self
                .control
                .config
                .site(&st.site)
                .and_then(|c| c.scale_in_after)
                .map_or(Duration::from_secs(600), |d| d.std());
            let after = if st.vacated { Duration::ZERO } else { after };
            let set = |step| self.control.scale_in_step(&st.node, step);
            match (st.phase.as_deref(), st.work) {
                (None, 0) => match st.idle_since {
                    None => {
                        if let Err(e) = set(ScaleIn::Idle { since_ms: now }) {
                            tracing::warn!(node = %st.node, error = %e, "scale-in: note the node idle (tried again next pass)");
                        }
                    }
                    Some(t) if now - t >= after.as_millis() as i64 => match set(ScaleIn::Cordon) {
                        Ok(()) => {
                            self.control
                                .event("node", &st.node, "scale-in: idle, cordoned");
                        }
                        Err(e) => {
                            tracing::warn!(node = %st.node, error = %e, "scale-in: cordon (tried again next pass)");
                        }
                    },
                    Some(_) => {}
                },
                (None, _) => {
                    if st.idle_since.is_some()
                        && let Err(e) = set(ScaleIn::Busy)
                    {
                        tracing::warn!(node = %st.node, error = %e, "scale-in: note the node busy (tried again next pass)");
                    }
                }
                (Some("cordoned"), 0) | (Some("terminating"), 0) => {
                    if let Err(e) = set(ScaleIn::Terminate) {
                        // Never terminated before it is recorded.
                        tracing::warn!(node = %st.node, error = %e, "scale-in: record the termination (tried again next pass)");
                        continue;
                    }
                    let Some(p) = self.providers.get(&st.site) else {
                        continue;
                    };
                    match terminate_owned(
                        p.as_ref(),
                        &self.cluster,
                        std::slice::from_ref(&st.instance),
                    )
                    .await
                    {
                        Ok(_) => {
                            let why = format!(
                                "scale-in: terminated {} and removed the node",
                                st.instance
                            );
                            if let Err(e) = self.control.remove_node(&st.node, &why) {
                                tracing::warn!(node = %st.node, error = %e, "scale-in: remove the node");
                            }
                        }
                        Err(e) => self.control.event(
                            "node",
                            &st.node,
                            format!("scale-in: terminate {}: {e}", st.instance),
                        ),
                    }
                }
                (Some(_), _) => {
                    // Work arrived before the cordon took: move it first.
                    if let Err(e) = set(ScaleIn::Drain) {
                        tracing::warn!(node = %st.node, error = %e, "scale-in: drain (tried again next pass)");
                    }
                }
            }
        }
    }

    /// Every `consolidation.interval`: calls off a move whose replacement
    /// found no room, then empties the node consolidation picks (an event
    /// with the saving it expects).
    fn consolidate(&self) {
        let c = &self.control.config.consolidation;
        let now = self.control.clock.now_ms();
        {
            let mut last = self.consolidated.lock().expect("lock");
            if !c.enabled || last.is_some_and(|t| now - t < c.interval.as_millis() as i64) {
                return;
            }
            *last = Some(now);
        }
        let interval = c.interval.as_millis() as i64;
        let stuck: Vec<(String, String)> = self.control.read(|s| {
            s.nodes
                .values()
                .filter_map(|n| {
                    let v = n.vacating.as_ref()?;
                    if v.cause != MoveCause::Consolidation || now - v.since_ms < interval {
                        return None;
                    }
                    let unplaced = s.allocations.values().find(|a| {
                        a.is_live()
                            && a.node.is_none()
                            && a.moved.as_ref().is_some_and(|m| m.from_node == n.id)
                    })?;
                    Some((n.id.clone(), unplaced.message.clone()))
                })
                .collect()
        });
        for (node, why) in stuck {
            match self.control.stop_vacating(&node) {
                Ok(()) => self.control.event(
                    "node",
                    &node,
                    format!(
                        "consolidation: called off emptying it: a replica found no room ({why})"
                    ),
                ),
                Err(e) => {
                    tracing::warn!(%node, error = %e, "consolidation: call off a move (tried again next pass)");
                }
            }
        }
        let rules = consolidate::Rules {
            min_saving: c.min_saving,
            cool_down_ms: c.cool_down.as_millis() as i64,
            max_moves_per_site_hour: c.max_moves_per_site_per_hour,
            max_candidates: CONSOLIDATION_CANDIDATES,
        };
        let sites = self.control.site_infos();
        let d = match self
            .control
            .read(|s| consolidate::plan(s, now, &sites, &rules))
        {
            Ok(Some(d)) => d,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "consolidation: plan");
                return;
            }
        };
        let v = Vacate {
            cause: MoveCause::Consolidation,
            since_ms: now,
            saving_micros_per_hour: d.saving,
            max_moving: c.max_moving_per_workload,
            notice: String::new(),
        };
        match self.control.vacate(&d.node, v) {
            Ok(true) => {
                let onto: Vec<&str> = d.onto.iter().map(String::as_str).collect();
                self.control.event(
                    "node",
                    &d.node,
                    format!(
                        "consolidation: emptying it ({} replica(s) fit on {}); saves {}/h once it scales in",
                        d.replicas,
                        onto.join(", "),
                        money(d.saving)
                    ),
                );
                self.control.wake();
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(node = %d.node, error = %e, "consolidation: start emptying a node (tried again next interval)");
            }
        }
    }

    /// Drops a VM's record (it joined, or it is gone); a failed write
    /// leaves it for the next pass, which does it again.
    fn forget(&self, vm: &VmRecord) {
        if let Err(e) = self.control.forget_vm(&vm.id) {
            tracing::warn!(vm = %vm.id, error = %e, "forget a VM record (tried again next pass)");
        }
    }
}

/// Whether the VM's node has joined and registered (until then it is
/// launching capacity; a joined node takes work only once registered).
fn registered(s: &crate::control::State, vm: &VmRecord) -> bool {
    s.nodes
        .get(&vm.node)
        .is_some_and(|n| n.status != skiff_proto::cluster::NodeStatus::Down)
}

fn join_timeout(site: &crate::config::SiteConfig) -> Duration {
    site.join_timeout
        .map_or(Duration::from_secs(300), |d| d.std())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::control::testing::aws_site;
    use crate::store::Kind;
    use skiff_cloud::fake::{FakeCloud, Op};

    fn fake(name: &str, price: u64) -> Arc<FakeCloud> {
        Arc::new(FakeCloud::new(vec![skiff_cloud::InstanceType {
            name: name.into(),
            cpu_millis: 2000,
            memory_bytes: 8 << 30,
            price_micros_per_hour: price,
            arch: "amd64".into(),
        }]))
    }

    fn setup(dir: &std::path::Path, join_timeout: &str) -> (Arc<Autoscaler>, Arc<FakeCloud>) {
        let (a, mut clouds) = setup_sites(dir, join_timeout, false);
        (a, clouds.remove(0))
    }

    /// [`setup`] on a clock the test moves.
    fn setup_on(
        dir: &std::path::Path,
        join_timeout: &str,
        clock: Arc<ManualClock>,
    ) -> (Arc<Autoscaler>, Arc<FakeCloud>) {
        let (a, mut clouds) = setup_sites_on(dir, join_timeout, false, clock);
        (a, clouds.remove(0))
    }

    fn setup_sites(
        dir: &std::path::Path,
        join_timeout: &str,
        azure: bool,
    ) -> (Arc<Autoscaler>, Vec<Arc<FakeCloud>>) {
        setup_sites_on(dir, join_timeout, azure, Arc::default())
    }

    /// `aws-us-east-1` (m.large), and with `azure` a dearer second site
    /// `azure-westeurope` (D2s), each with its own fake cloud.
    fn setup_sites_on(
        dir: &std::path::Path,
        join_timeout: &str,
        azure: bool,
        clock: Arc<ManualClock>,
    ) -> (Arc<Autoscaler>, Vec<Arc<FakeCloud>>) {
        let gateway_url = Some("https://gw.example.com:7071".to_string());
        let mut sites = vec![crate::config::SiteConfig {
            gateway_url: gateway_url.clone(),
            join_timeout: Some(join_timeout.parse().unwrap()),
            ..aws_site()
        }];
        let mut clouds = vec![("aws-us-east-1", fake("m.large", 96_000))];
        if azure {
            let mut az = crate::control::testing::site(
                "azure-westeurope",
                skiff_proto::cluster::SiteKind::Azure,
            );
            az.cost_rank = 3;
            az.gateway_url = gateway_url;
            az.instance_types = vec![crate::config::InstanceTypeConfig {
                name: "D2s".into(),
                cpu: Some("2".parse().unwrap()),
                memory: Some("8Gi".parse().unwrap()),
                disk: "20Gi".parse().unwrap(),
                price_per_hour: "0.12".into(),
                arch: "amd64".into(),
                spot: false,
            }];
            sites.push(az);
            clouds.push(("azure-westeurope", fake("D2s", 120_000)));
        }
        let control = crate::control::testing::control_on(dir, sites, clock);
        let pki = Arc::new(Pki::open(dir, &[]).unwrap());
        let providers: BTreeMap<String, Arc<dyn CloudProvider>> = clouds
            .iter()
            .map(|(site, c)| (site.to_string(), c.clone() as Arc<dyn CloudProvider>))
            .collect();
        let a = Arc::new(Autoscaler::new(control, pki, providers, "cluster-1".into()));
        (a, clouds.into_iter().map(|(_, c)| c).collect())
    }

    fn launches(c: &FakeCloud) -> usize {
        c.calls().iter().filter(|c| c.0 == Op::Launch).count()
    }

    #[tokio::test]
    async fn capacity_errors_fall_back_to_the_next_site() {
        let dir = tempfile::tempdir().unwrap();
        let (a, clouds) = setup_sites(dir.path(), "5m", true);
        let (aws, azure) = (&clouds[0], &clouds[1]);
        let mut rx = a.control.events.subscribe();
        workload(&a.control, 1);
        a.control.reconcile().unwrap();
        assert_eq!(a.control.planned_launches()[0].site, "aws-us-east-1");
        aws.fail(
            Op::Launch,
            [skiff_cloud::CloudError::Capacity(
                "InsufficientInstanceCapacity".into(),
            )],
        );
        a.tick().await;
        assert!(aws.instances().is_empty());
        // The next plan goes around the type that failed.
        a.control.reconcile().unwrap();
        assert_eq!(a.control.planned_launches()[0].site, "azure-westeurope");
        a.tick().await;
        assert_eq!(azure.instances().len(), 1, "launched in the next site");
        assert_eq!(launches(aws), 1, "no second try at the failed type");
        let events: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| e.message)
            .collect();
        assert!(
            events
                .iter()
                .any(|e| e.contains("m.large set aside") && e.contains("insufficient capacity")),
            "{events:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_backs_off_then_falls_back_without_a_failure_loop() {
        let dir = tempfile::tempdir().unwrap();
        let (a, clouds) = setup_sites(dir.path(), "5m", true);
        let (aws, azure) = (&clouds[0], &clouds[1]);
        workload(&a.control, 1);
        // Throttled once, with Retry-After: the retry launches.
        aws.fail(
            Op::Launch,
            [skiff_cloud::CloudError::Throttled {
                message: "RequestLimitExceeded".into(),
                retry_after: Some(Duration::from_secs(2)),
            }],
        );
        a.control.reconcile().unwrap();
        let t = tokio::time::Instant::now();
        a.tick().await;
        assert!(
            t.elapsed() >= Duration::from_secs(2),
            "Retry-After honoured"
        );
        assert_eq!(aws.instances().len(), 1);
        assert_eq!(launches(aws), 2);
        // Throttled on every call: the retries end, the type is set aside,
        // the demand goes to the other site; passes after that do not call
        // the throttled API again.
        workload_named(&a.control, "api", 2);
        a.control.reconcile().unwrap();
        aws.fail(
            Op::Launch,
            (0..100).map(|_| skiff_cloud::CloudError::Throttled {
                message: "RequestLimitExceeded".into(),
                retry_after: None,
            }),
        );
        a.tick().await;
        let calls = launches(aws);
        assert_eq!(calls, 2 + Backoff::default().attempts as usize);
        for _ in 0..5 {
            a.control.reconcile().unwrap();
            a.tick().await;
        }
        assert_eq!(launches(aws), calls, "held: not called again");
        assert_eq!(azure.instances().len(), 1, "2 CPUs of demand: one D2s");
    }

    fn workload_named(c: &Control, name: &str, cpus: u32) {
        crate::control::testing::workload(
            c,
            &format!("name: {name}\nimage: busybox\nresources: {{cpu: '{cpus}', memory: 1Gi}}\n"),
        );
    }

    fn workload(c: &Control, replicas: u32) {
        crate::control::testing::workload(
            c,
            &format!(
                "name: web\nimage: busybox\nreplicas: {replicas}\nresources: {{cpu: '1', memory: 1Gi}}\n"
            ),
        );
    }

    #[tokio::test]
    async fn pending_work_launches_vms_once_with_their_own_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let (a, cloud) = setup(dir.path(), "5m");
        workload(&a.control, 3);
        a.control.reconcile().unwrap();
        a.tick().await;
        let launched = cloud.instances();
        assert_eq!(launched.len(), 2, "3 replicas of 1 CPU on 2-CPU VMs");
        for vm in &launched {
            assert_eq!(vm.tags[TAG_CLUSTER], "cluster-1");
            assert!(vm.tags[TAG_NODE].starts_with("aws-us-east-1-"));
        }
        // The launching VMs are capacity: the next passes launch nothing.
        a.control.reconcile().unwrap();
        a.tick().await;
        a.control.reconcile().unwrap();
        a.tick().await;
        assert_eq!(cloud.instances().len(), 2);
        let msgs: Vec<String> = a
            .control
            .read(|s| s.allocations.values().map(|x| x.message.clone()).collect());
        assert!(
            msgs.iter().all(|m| m.starts_with("waiting for VM i-")),
            "{msgs:?}"
        );
        // Each has its own unused join token, valid for the join timeout.
        let tokens = a
            .control
            .read(|s| s.join_tokens.values().filter(|t| !t.used).count());
        assert_eq!(tokens, 2);
        // A VM's node joining ends its launch.
        let node = launched[0].tags[TAG_NODE].clone();
        a.control
            .write(|s, _| {
                let mut n: crate::control::NodeRecord = serde_json::from_value(serde_json::json!({
                    "id": node, "site": "aws-us-east-1", "status": "ready", "subnet": "10.128.0.0/24",
                    "cert_hash": "x", "cert_not_after_ms": 0, "capacity": {"cpu": "2", "memory": "8Gi"},
                    "allocatable": {"cpu": "2", "memory": "8Gi"}, "joined_ms": 0, "generation": 1
                }))
                .unwrap();
                n.os = "linux".into();
                n.arch = "amd64".into();
                s.nodes.insert(n.id.clone(), n);
                Ok(())
            })
            .unwrap();
        a.tick().await;
        assert_eq!(a.control.read(|s| s.vms.len()), 1);
    }

    #[tokio::test]
    async fn quota_errors_hold_the_type_and_late_vms_are_terminated() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::default());
        let (a, cloud) = setup_on(dir.path(), "5m", clock.clone());
        // Five replicas of 1 CPU: three 2-CPU VMs.
        workload(&a.control, 5);
        a.control.reconcile().unwrap();
        assert_eq!(a.control.planned_launches()[0].count, 3);
        cloud.fail(
            Op::Launch,
            [skiff_cloud::CloudError::Quota("vCPU limit".into())],
        );
        a.tick().await;
        assert!(cloud.instances().is_empty());
        a.control.reconcile().unwrap();
        a.tick().await;
        assert!(
            cloud.instances().is_empty(),
            "held for a minute after a quota error"
        );
        assert_eq!(
            cloud.calls().iter().filter(|c| c.0 == Op::Launch).count(),
            1,
            "the first refusal stops the other two"
        );
        // A minute later, the hold is over: all three launched
        // (together); they never join: five minutes on, terminated (and
        // the demand planned for again).
        clock.advance(Duration::from_secs(61));
        a.control.reconcile().unwrap();
        a.tick().await;
        assert_eq!(cloud.instances().len(), 3);
        assert_eq!(a.control.read(|s| s.vms.len()), 3);
        clock.advance(Duration::from_secs(299));
        a.tick().await;
        assert_eq!(a.control.read(|s| s.vms.len()), 3, "not yet late");
        clock.advance(Duration::from_secs(2));
        a.tick().await;
        assert!(
            cloud
                .instances()
                .iter()
                .all(|i| i.state == skiff_cloud::InstanceState::Terminated)
        );
        assert_eq!(a.control.read(|s| s.vms.len()), 0);
    }

    fn state_of(cloud: &FakeCloud, id: &str) -> skiff_cloud::InstanceState {
        let found = cloud.instances().into_iter().find(|i| i.id == id);
        found.expect("an instance of the fake cloud").state
    }

    fn cloud_node(c: &Control, id: &str, instance: &str, phase: Option<&str>) {
        c.write(|s, b| {
            let n: crate::control::NodeRecord = serde_json::from_value(serde_json::json!({
                "id": id, "site": "aws-us-east-1", "status": "ready", "subnet": "10.128.9.0/24",
                "cert_hash": "x", "cert_not_after_ms": 0, "capacity": {"cpu": "2", "memory": "8Gi"},
                "allocatable": {"cpu": "2", "memory": "8Gi"}, "joined_ms": 0, "generation": 1,
                "instance_id": instance, "scale_in": phase
            }))
            .unwrap();
            b.put(Kind::Node, id, &n);
            s.nodes.insert(id.into(), n);
            Ok(())
        })
        .unwrap();
    }

    #[tokio::test]
    async fn a_scale_in_cut_short_resumes_and_never_takes_a_busy_node() {
        let dir = tempfile::tempdir().unwrap();
        let (a, cloud) = setup(dir.path(), "5m");
        let mut req_tags = BTreeMap::new();
        req_tags.insert(TAG_CLUSTER.to_string(), "cluster-1".to_string());
        let launch = |n: u32| LaunchRequest {
            site: "aws-us-east-1".into(),
            instance_type: "m.large".into(),
            count: n,
            user_data: Secret(String::new()),
            tags: req_tags.clone(),
            spot: false,
        };
        let vms = cloud.launch(&launch(2)).await.unwrap();
        // One node was half-way through termination when the gateway died;
        // the other was cordoned but got work meanwhile.
        cloud_node(&a.control, "idle", &vms[0].id, Some("terminating"));
        cloud_node(&a.control, "busy", &vms[1].id, Some("cordoned"));
        workload(&a.control, 1);
        a.control.reconcile().unwrap();
        a.control
            .write(|s, b| {
                let al = s.allocations.values_mut().next().unwrap();
                al.node = Some("busy".into());
                al.state = skiff_proto::cluster::AllocationState::Running;
                b.put(Kind::Allocation, &al.id.clone(), al);
                Ok(())
            })
            .unwrap();
        // A new autoscaler, as after a restart, picks up from the records.
        let again = Autoscaler::new(
            Arc::clone(&a.control),
            Arc::clone(&a.pki),
            a.providers.clone(),
            "cluster-1".into(),
        );
        again.tick().await;
        let state = |id: &str| state_of(&cloud, id);
        assert_eq!(state(&vms[0].id), skiff_cloud::InstanceState::Terminated);
        assert!(a.control.read(|s| !s.nodes.contains_key("idle")));
        assert_eq!(
            state(&vms[1].id),
            skiff_cloud::InstanceState::Pending,
            "busy: not terminated"
        );
        assert!(
            a.control.read(|s| s.nodes["busy"].draining),
            "its work is moved first"
        );
    }

    #[tokio::test]
    async fn an_instance_launched_but_never_recorded_is_terminated_and_known_ones_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (a, cloud) = setup(dir.path(), "5m");
        let launch = |cluster: &str| LaunchRequest {
            site: "aws-us-east-1".into(),
            instance_type: "m.large".into(),
            count: 1,
            user_data: Secret(String::new()),
            tags: BTreeMap::from([(TAG_CLUSTER.to_string(), cluster.to_string())]),
            spot: false,
        };
        // A gateway died between the launch answer and the record; another
        // instance is a joined node's; a third belongs to another cluster.
        let orphan = cloud.launch(&launch("cluster-1")).await.unwrap().remove(0);
        let joined = cloud.launch(&launch("cluster-1")).await.unwrap().remove(0);
        let foreign = cloud.launch(&launch("cluster-2")).await.unwrap().remove(0);
        cloud_node(&a.control, "joined", &joined.id, None);
        let mut rx = a.control.events.subscribe();
        a.tick().await;
        let state = |id: &str| state_of(&cloud, id);
        assert_eq!(state(&orphan.id), skiff_cloud::InstanceState::Terminated);
        assert_eq!(state(&joined.id), skiff_cloud::InstanceState::Pending);
        assert_eq!(state(&foreign.id), skiff_cloud::InstanceState::Pending);
        let events: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| e.message)
            .collect();
        let said = format!(
            "terminated {}: tagged for this cluster but never recorded",
            orphan.id
        );
        assert!(events.iter().any(|e| e.contains(&said)), "{events:?}");
    }
}
