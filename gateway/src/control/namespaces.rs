//! Namespaces: each with a quota (what its workloads may reserve, and the
//! cloud money its pending work may launch VMs for) and a policy (where
//! it may run, what it may run, who may reach it). The rules are pure:
//! [`check_spec`] is called under the state lock by every change that
//! adds demand (create, update, scale), and refuses with the rule named.
//!
//! `default` always exists: it has no quota and allows everything, as the
//! fleet did before namespaces, unless an admin stores a record for it.
//! A namespace made with `POST /v1/namespaces` denies host networking,
//! host volumes and privileged containers unless its policy allows them.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use skiff_proto::namespace::DEFAULT;
use skiff_proto::{ByteSize, Cpu, NetworkMode, WorkloadSpec, is_valid_name};

use super::{ControlError, State};
use crate::config::parse_price;

/// A namespace as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NamespaceRecord {
    pub name: String,
    #[serde(default)]
    pub quota: Quota,
    #[serde(default)]
    pub policy: Policy,
    pub created_ms: i64,
}

/// Most a namespace's workloads may reserve together (absent: no limit).
/// CPU, memory and disk count each workload's replicas (a batch job's
/// parallelism) times what one reserves; `allocations` counts replicas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "10")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "64Gi")]
    pub memory: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "500Gi")]
    pub disk: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>, minimum = 0, maximum = 4_294_967_295_u64)]
    pub allocations: Option<u32>,
    /// The cloud VMs launched for this namespace's pending work may cost
    /// this much per hour together (e.g. `"2.50"`); at the limit its work
    /// stays pending, with the reason, instead of launching more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_spend_per_hour: Option<String>,
}

/// What a namespace's workloads may do. Absent lists allow everything;
/// the `allow_*` switches are off for a new namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The only sites its replicas may run in (and burst to).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<String>,
    /// Labels a node must have to take its replicas (its own node pool).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_labels: BTreeMap<String, String>,
    /// Image prefixes it may run, matched against the fully qualified
    /// reference at a path boundary (`registry.example.com/team-a`,
    /// `docker.io/library`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<String>,
    /// `security.privileged`.
    #[serde(default)]
    pub allow_privileged: bool,
    /// Capabilities `security.cap_add` may name (`ALL`: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_capabilities: Vec<String>,
    /// `network: host`.
    #[serde(default)]
    pub allow_host_network: bool,
    /// Its workloads must run in user namespaces
    /// (`security.user_namespace: true`).
    #[serde(default)]
    pub require_user_namespace: bool,
    /// Volumes of kind `host` (a node's directories).
    #[serde(default)]
    pub allow_host_volumes: bool,
    /// The highest `priority` its workloads may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>, minimum = 0, maximum = 4_294_967_295_u64)]
    pub max_priority: Option<u32>,
    /// Other namespaces whose containers may open connections to this
    /// one's (its own always may; published ports stay reachable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
}

impl Default for Policy {
    /// A new namespace's: nothing from the host.
    fn default() -> Self {
        Self {
            sites: Vec::new(),
            node_labels: BTreeMap::new(),
            registries: Vec::new(),
            allow_privileged: false,
            allow_capabilities: Vec::new(),
            allow_host_network: false,
            require_user_namespace: false,
            allow_host_volumes: false,
            max_priority: None,
            allow_from: Vec::new(),
        }
    }
}

impl Policy {
    /// The `default` namespace's until an admin changes it: everything.
    pub fn permissive() -> Self {
        Self {
            allow_privileged: true,
            allow_capabilities: vec!["ALL".into()],
            allow_host_network: true,
            allow_host_volumes: true,
            ..Self::default()
        }
    }
}

impl NamespaceRecord {
    /// `default` as it is before anyone stores it.
    pub fn builtin_default() -> Self {
        Self {
            name: DEFAULT.to_string(),
            quota: Quota::default(),
            policy: Policy::permissive(),
            created_ms: 0,
        }
    }
}

/// What a namespace reserves (declared: every workload's replicas) or
/// uses (its live allocations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub allocations: u64,
}

impl Usage {
    fn add(&mut self, spec: &WorkloadSpec, copies: u64) {
        let r = &spec.resources;
        let disk = r.disk.map_or(0, |d| d.bytes()) + crate::scheduler::local_volume_bytes(spec);
        self.cpu_millis += r.cpu.millis() * copies;
        self.memory_bytes += r.memory.bytes() * copies;
        self.disk_bytes += disk * copies;
        self.allocations += copies;
    }
}

/// A namespace's record (`default`'s built-in one when not stored).
pub fn get<'a>(s: &'a State, name: &str) -> Option<std::borrow::Cow<'a, NamespaceRecord>> {
    match s.namespaces.get(name) {
        Some(r) => Some(std::borrow::Cow::Borrowed(r)),
        None if name == DEFAULT => {
            Some(std::borrow::Cow::Owned(NamespaceRecord::builtin_default()))
        }
        None => None,
    }
}

/// The workloads of namespace `ns`, by key: a range of the sorted keys
/// (`ns.` up to `ns/`), or the keys without a `.` for `default`.
pub fn workloads_in<'a>(
    s: &'a State,
    ns: &'a str,
) -> Box<dyn Iterator<Item = (&'a String, &'a super::WorkloadRecord)> + 'a> {
    if ns == DEFAULT {
        Box::new(s.workloads.iter().filter(|(k, _)| !k.contains('.')))
    } else {
        Box::new(
            s.workloads
                .range(format!("{ns}.")..format!("{ns}/"))
                .filter(move |(k, _)| skiff_proto::namespace::split(k).0 == ns),
        )
    }
}

/// What namespace `ns`'s workloads declare, without `except` (a key).
pub fn declared(s: &State, ns: &str, except: Option<&str>) -> Usage {
    let mut u = Usage::default();
    for (k, w) in workloads_in(s, ns) {
        if Some(k.as_str()) != except {
            u.add(&w.spec, u64::from(w.spec.live_at_most()));
        }
    }
    u
}

/// What each namespace's live allocations reserve now, in one pass over
/// the allocations (a namespace with none has no entry).
pub fn in_use_by_namespace(s: &State) -> HashMap<String, Usage> {
    let mut by: HashMap<String, Usage> = HashMap::new();
    for a in s.allocations.values().filter(|a| a.is_live()) {
        if let Some(w) = s.workloads.get(&a.workload) {
            by.entry(skiff_proto::namespace::of_allocation(&a.id).to_string())
                .or_default()
                .add(&w.spec, 1);
        }
    }
    by
}

fn forbidden(m: String) -> ControlError {
    ControlError::Forbidden(m)
}

/// Refuses `spec` (replacing the workload of the same key, if any) when
/// its namespace does not exist, its policy forbids it (the rule named),
/// or it would take the namespace over its quota.
pub fn check_spec(s: &State, spec: &WorkloadSpec) -> Result<(), ControlError> {
    let ns = spec.namespace.as_str();
    let Some(rec) = get(s, ns) else {
        return Err(ControlError::NotFound(format!("no namespace {ns}")));
    };
    check_policy(&rec, spec)?;
    if rec.quota == Quota::default() {
        return Ok(());
    }
    let key = spec.key();
    let mut after = declared(s, ns, Some(&key));
    after.add(spec, u64::from(spec.live_at_most()));
    check_quota(&rec, &after)
}

/// The policy's rules, in the order a reader meets the spec's fields.
pub fn check_policy(rec: &NamespaceRecord, spec: &WorkloadSpec) -> Result<(), ControlError> {
    let ns = &rec.name;
    let p = &rec.policy;
    let image = spec.image.canonical();
    if !p.registries.is_empty() && !p.registries.iter().any(|r| from_prefix(&image, r)) {
        return Err(forbidden(format!(
            "policy: image {image} is not from a registry namespace {ns} allows ({})",
            p.registries.join(", ")
        )));
    }
    if spec.security.privileged && !p.allow_privileged {
        return Err(forbidden(format!(
            "policy: namespace {ns} does not allow privileged containers (policy.allow_privileged)"
        )));
    }
    let bare = |c: &str| c.strip_prefix("CAP_").unwrap_or(c).to_string();
    let any = p.allow_capabilities.iter().any(|c| c == "ALL");
    if let Some(c) = spec
        .security
        .cap_add
        .iter()
        .find(|c| !any && !p.allow_capabilities.iter().any(|a| bare(a) == bare(c)))
    {
        return Err(forbidden(format!(
            "policy: namespace {ns} does not allow adding capability {c} (policy.allow_capabilities)"
        )));
    }
    if p.require_user_namespace && !spec.security.user_namespace {
        return Err(forbidden(format!(
            "policy: namespace {ns} requires user namespaces: set security.user_namespace: true (policy.require_user_namespace)"
        )));
    }
    if spec.network == NetworkMode::Host && !p.allow_host_network {
        return Err(forbidden(format!(
            "policy: namespace {ns} does not allow network: host (policy.allow_host_network)"
        )));
    }
    if let Some(v) = spec.volumes.iter().find(|v| v.host.is_some())
        && !p.allow_host_volumes
    {
        return Err(forbidden(format!(
            "policy: namespace {ns} does not allow host volumes (volume {}; policy.allow_host_volumes)",
            v.name
        )));
    }
    if let Some(max) = p.max_priority.filter(|m| spec.priority > *m) {
        return Err(forbidden(format!(
            "policy: priority {} is above namespace {ns}'s ceiling of {max} (policy.max_priority)",
            spec.priority
        )));
    }
    if !p.sites.is_empty()
        && let Some(site) = spec
            .placement
            .sites
            .iter()
            .chain(&spec.placement.prefer)
            .find(|site| !p.sites.contains(site))
    {
        return Err(forbidden(format!(
            "policy: namespace {ns} may not use site {site} (policy.sites: {})",
            p.sites.join(", ")
        )));
    }
    Ok(())
}

/// Whether a fully qualified image reference is under `prefix` (a
/// registry, or a registry and a path): at a boundary, so that
/// `registry.example.com/team-a` does not take `…/team-ab/x`.
fn from_prefix(image: &str, prefix: &str) -> bool {
    match image.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', ':', '@']),
        None => false,
    }
}

/// The quota against what the namespace would reserve.
pub fn check_quota(rec: &NamespaceRecord, after: &Usage) -> Result<(), ControlError> {
    let ns = &rec.name;
    let q = &rec.quota;
    let over = |what: &str, would: String, limit: String| {
        forbidden(format!(
            "quota exceeded: namespace {ns} would use {would} of {limit} {what}"
        ))
    };
    if let Some(cpu) = q.cpu.filter(|c| after.cpu_millis > c.millis()) {
        return Err(over(
            "cpu",
            Cpu::from_millis(after.cpu_millis).to_string(),
            cpu.to_string(),
        ));
    }
    if let Some(m) = q.memory.filter(|m| after.memory_bytes > m.bytes()) {
        return Err(over(
            "memory",
            ByteSize::from_bytes(after.memory_bytes).to_string(),
            m.to_string(),
        ));
    }
    if let Some(d) = q.disk.filter(|d| after.disk_bytes > d.bytes()) {
        return Err(over(
            "disk",
            ByteSize::from_bytes(after.disk_bytes).to_string(),
            d.to_string(),
        ));
    }
    if let Some(n) = q.allocations.filter(|n| after.allocations > u64::from(*n)) {
        return Err(over(
            "allocations",
            after.allocations.to_string(),
            n.to_string(),
        ));
    }
    Ok(())
}

/// A namespace record an admin sends, checked: the name, the sites the
/// fleet has, the quota's bounds. (`allow_from` may name a namespace
/// made later.)
pub fn check_record(rec: &NamespaceRecord, sites: &[String]) -> Result<(), ControlError> {
    if !is_valid_name(&rec.name) {
        return Err(ControlError::Invalid(format!(
            "name: {:?} is not a valid namespace name (lowercase letters, digits and '-', at most 63 characters)",
            rec.name
        )));
    }
    if let Some(s) = rec.policy.sites.iter().find(|s| !sites.contains(s)) {
        return Err(ControlError::Invalid(format!(
            "policy.sites: no site {s} in the gateway's config"
        )));
    }
    let q = &rec.quota;
    if let Some(p) = &q.cloud_spend_per_hour {
        let whole = p.split('.').next().unwrap_or_default();
        if whole.len() > 12 {
            return Err(ControlError::Invalid(format!(
                "quota.cloud_spend_per_hour: {p:?} has more than 12 digits before the point"
            )));
        }
        parse_price(p)
            .map_err(|e| ControlError::Invalid(format!("quota.cloud_spend_per_hour: {e}")))?;
    }
    let max_cpu = skiff_proto::schema::spec::MAX_QUOTA_CPU;
    if let Some(c) = q.cpu.filter(|c| *c > max_cpu) {
        return Err(ControlError::Invalid(format!(
            "quota.cpu: {c} is more than {max_cpu}"
        )));
    }
    for (field, v) in [("memory", q.memory), ("disk", q.disk)] {
        if let Some(b) = v.filter(|b| *b > skiff_proto::MAX_DISK) {
            return Err(ControlError::Invalid(format!(
                "quota.{field}: {b} is more than {}",
                skiff_proto::MAX_DISK
            )));
        }
    }
    Ok(())
}

/// Price per hour (millionths) of each site's instance types, as the
/// placement engine was given them: the one table that the scheduler's
/// node prices, the namespaces' spend limits and the reported spend read.
#[derive(Debug)]
pub struct Prices(HashMap<String, HashMap<String, u64>>);

impl Prices {
    pub fn of(sites: &[crate::scheduler::SiteInfo]) -> Prices {
        Prices(
            sites
                .iter()
                .map(|site| {
                    let types = site
                        .instance_types
                        .iter()
                        .map(|t| (t.name.clone(), t.price))
                        .collect();
                    (site.name.clone(), types)
                })
                .collect(),
        )
    }

    /// What `ty` costs at `site` (`None`: not a type of the site).
    pub fn get(&self, site: &str, ty: &str) -> Option<u64> {
        self.0.get(site)?.get(ty).copied()
    }

    /// What node `n` costs: its instance type's price (0 for a node that
    /// was not launched, or of a type no longer configured).
    pub fn of_node(&self, s: &State, n: &super::NodeRecord) -> u64 {
        s.instance_type_of(n)
            .and_then(|ty| self.get(&n.site, ty))
            .unwrap_or(0)
    }
}

/// What every namespace spends on cloud VMs, in millionths per hour: of
/// each cloud node, its price times the larger of the shares of its CPU
/// and memory the namespace's live allocations hold; of each VM still
/// launching, its price times the share of the allocations it was
/// launched for that are the namespace's.
pub fn spend_by_namespace(s: &State, prices: &Prices) -> HashMap<String, u64> {
    let mut out: HashMap<String, u64> = HashMap::new();
    let mut held: HashMap<(&str, &str), (u64, u64)> = HashMap::new();
    for a in s.allocations.values().filter(|a| a.is_live()) {
        let (Some(node), Some(w)) = (a.node.as_deref(), s.workloads.get(&a.workload)) else {
            continue;
        };
        let e = held.entry((node, a.namespace())).or_default();
        e.0 += w.spec.resources.cpu.millis();
        e.1 += w.spec.resources.memory.bytes();
    }
    for ((node, ns), (cpu, mem)) in held {
        let Some(n) = s.nodes.get(node) else { continue };
        let price = prices.of_node(s, n);
        if price == 0 {
            continue;
        }
        let used = skiff_proto::cluster::Capacity::new(cpu, mem, 0);
        *out.entry(ns.to_string()).or_default() +=
            crate::scheduler::price_share(price, &used, &n.allocatable);
    }
    // (A VM whose node joined is counted as that node.)
    for vm in s.vms.values().filter(|v| !s.nodes.contains_key(&v.node)) {
        let Some(price) = prices.get(&vm.site, &vm.instance_type) else {
            continue;
        };
        if vm.allocations.is_empty() {
            continue;
        }
        let each = price / vm.allocations.len() as u64;
        for id in &vm.allocations {
            let ns = skiff_proto::namespace::of_allocation(id);
            *out.entry(ns.to_string()).or_default() += each;
        }
    }
    out
}

/// The price limit of a namespace's bursts, in millionths per hour.
pub fn spend_limit(rec: &NamespaceRecord) -> Option<u64> {
    rec.quota
        .cloud_spend_per_hour
        .as_deref()
        .and_then(|p| parse_price(p).ok())
}

/// A workload's placement rules narrowed to its namespace's policy: only
/// the policy's sites (a spec's own sites outside them leave none), and
/// the policy's node labels as constraints.
pub fn restrict(g: &mut crate::scheduler::Group, rec: &NamespaceRecord) {
    let p = &rec.policy;
    if !p.sites.is_empty() {
        let allowed: Vec<String> = if g.sites.is_empty() {
            p.sites.clone()
        } else {
            g.sites
                .iter()
                .filter(|s| p.sites.contains(s))
                .cloned()
                .collect()
        };
        g.sites = if allowed.is_empty() {
            // Empty would allow every site: name one no fleet has.
            vec![format!("(none of namespace {}'s policy.sites)", rec.name)]
        } else {
            allowed
        };
        g.prefer.retain(|s| p.sites.contains(s));
    }
    for (k, v) in &p.node_labels {
        g.constraints.push(skiff_proto::Constraint {
            attribute: skiff_proto::Attribute::Label(k.clone()),
            op: skiff_proto::ConstraintOp::Eq(v.clone()),
        });
    }
}

/// The spend limits of the namespaces that have one, with what each
/// spends now, at the prices of `sites`.
pub fn budgets(s: &State, prices: &Prices) -> Vec<crate::scheduler::SpendLimit> {
    let limited: Vec<(&String, u64)> = s
        .namespaces
        .iter()
        .filter_map(|(n, r)| Some((n, spend_limit(r)?)))
        .collect();
    if limited.is_empty() {
        return Vec::new();
    }
    let spend = spend_by_namespace(s, prices);
    limited
        .into_iter()
        .map(|(n, limit)| crate::scheduler::SpendLimit {
            namespace: n.clone(),
            limit,
            spend: spend.get(n).copied().unwrap_or(0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::WorkloadRecord;

    fn spec(text: &str) -> WorkloadSpec {
        skiff_proto::parse_workloads(text, skiff_proto::Format::Yaml)
            .unwrap()
            .remove(0)
    }

    fn tenant(quota: Quota, policy: Policy) -> State {
        let mut s = State::default();
        s.namespaces.insert(
            "team-a".into(),
            NamespaceRecord {
                name: "team-a".into(),
                quota,
                policy,
                created_ms: 1,
            },
        );
        s
    }

    fn put(s: &mut State, text: &str) {
        let spec = spec(text);
        s.workloads.insert(
            spec.key(),
            WorkloadRecord {
                spec,
                version: 1,
                created_ms: 0,
                updated_ms: 0,
                job: None,
            },
        );
    }

    fn refused(r: Result<(), ControlError>) -> String {
        match r {
            Err(ControlError::Forbidden(m)) => m,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_submission_over_quota_is_refused_naming_the_quota_and_one_within_it_passes() {
        let mut s = tenant(
            Quota {
                cpu: Some(Cpu::from_cores(10)),
                allocations: Some(20),
                ..Quota::default()
            },
            Policy::default(),
        );
        put(
            &mut s,
            "name: a\nnamespace: team-a\nimage: busybox\nreplicas: 4\nresources: {cpu: '2', memory: 64Mi}\n",
        );
        // Another namespace's use does not count.
        put(
            &mut s,
            "name: a\nimage: busybox\nreplicas: 50\nresources: {cpu: '2', memory: 64Mi}\n",
        );
        let fits = spec(
            "name: b\nnamespace: team-a\nimage: busybox\nreplicas: 1\nresources: {cpu: '2', memory: 64Mi}\n",
        );
        check_spec(&s, &fits).unwrap();
        let over = spec(
            "name: b\nnamespace: team-a\nimage: busybox\nreplicas: 2\nresources: {cpu: '2', memory: 64Mi}\n",
        );
        assert_eq!(
            refused(check_spec(&s, &over)),
            "quota exceeded: namespace team-a would use 12 of 10 cpu"
        );
        // Replacing a workload counts it once: scaling `a` to 5 fits.
        let scaled = spec(
            "name: a\nnamespace: team-a\nimage: busybox\nreplicas: 5\nresources: {cpu: '2', memory: 64Mi}\n",
        );
        check_spec(&s, &scaled).unwrap();
        let many = spec(
            "name: c\nnamespace: team-a\nimage: busybox\nreplicas: 17\nresources: {cpu: 10m, memory: 4Mi}\n",
        );
        assert_eq!(
            refused(check_spec(&s, &many)),
            "quota exceeded: namespace team-a would use 21 of 20 allocations"
        );
        let nowhere = spec("name: x\nnamespace: team-z\nimage: busybox\n");
        assert!(matches!(
            check_spec(&s, &nowhere),
            Err(ControlError::NotFound(m)) if m == "no namespace team-z"
        ));
    }

    #[test]
    fn a_new_namespace_refuses_what_reaches_into_the_host_with_the_rule_named() {
        let s = tenant(Quota::default(), Policy::default());
        let cases = [
            (
                "network: host\n",
                "policy: namespace team-a does not allow network: host (policy.allow_host_network)",
            ),
            (
                "security: {privileged: true}\n",
                "policy: namespace team-a does not allow privileged containers (policy.allow_privileged)",
            ),
            (
                "security: {cap_add: [NET_ADMIN]}\n",
                "policy: namespace team-a does not allow adding capability NET_ADMIN (policy.allow_capabilities)",
            ),
            (
                "volumes: [{name: logs, host: logs}]\nmounts: [{volume: logs, path: /logs}]\n",
                "policy: namespace team-a does not allow host volumes (volume logs; policy.allow_host_volumes)",
            ),
        ];
        for (extra, why) in cases {
            let sp = spec(&format!(
                "name: a\nnamespace: team-a\nimage: busybox\n{extra}"
            ));
            assert_eq!(refused(check_spec(&s, &sp)), why, "{extra}");
            // `default` allows it, as the fleet did before namespaces.
            let mut plain = sp.clone();
            plain.namespace = DEFAULT.into();
            check_spec(&s, &plain).unwrap();
        }
    }

    #[test]
    fn a_namespace_may_require_user_namespaces() {
        let s = tenant(
            Quota::default(),
            Policy {
                require_user_namespace: true,
                ..Policy::default()
            },
        );
        let sp = |extra: &str| {
            spec(&format!(
                "name: a\nnamespace: team-a\nimage: busybox\n{extra}"
            ))
        };
        assert_eq!(
            refused(check_spec(&s, &sp(""))),
            "policy: namespace team-a requires user namespaces: set security.user_namespace: true (policy.require_user_namespace)"
        );
        check_spec(&s, &sp("security: {user_namespace: true}\n")).unwrap();
    }

    #[test]
    fn a_policy_names_its_sites_registries_and_priority_ceiling() {
        let s = tenant(
            Quota::default(),
            Policy {
                sites: vec!["dc1".into()],
                registries: vec!["registry.example.com/team-a".into()],
                max_priority: Some(50),
                allow_capabilities: vec!["NET_BIND_SERVICE".into()],
                ..Policy::default()
            },
        );
        let sp = |extra: &str| {
            spec(&format!(
                "name: a\nnamespace: team-a\nimage: registry.example.com/team-a/web:1\n{extra}"
            ))
        };
        check_spec(&s, &sp("security: {cap_add: [CAP_NET_BIND_SERVICE]}\n")).unwrap();
        assert!(from_prefix(
            "registry.example.com/team-a/web:1",
            "registry.example.com/team-a"
        ));
        assert!(!from_prefix(
            "registry.example.com/team-ab/web:1",
            "registry.example.com/team-a"
        ));
        assert_eq!(
            refused(check_spec(
                &s,
                &spec("name: a\nnamespace: team-a\nimage: busybox\n")
            )),
            "policy: image docker.io/library/busybox:latest is not from a registry namespace team-a allows (registry.example.com/team-a)"
        );
        assert_eq!(
            refused(check_spec(&s, &sp("placement: {sites: [aws]}\n"))),
            "policy: namespace team-a may not use site aws (policy.sites: dc1)"
        );
        assert_eq!(
            refused(check_spec(&s, &sp("priority: 80\n"))),
            "policy: priority 80 is above namespace team-a's ceiling of 50 (policy.max_priority)"
        );
    }

    #[test]
    fn placement_is_narrowed_to_the_policy_sites_and_labels() {
        let rec = NamespaceRecord {
            name: "team-a".into(),
            quota: Quota::default(),
            policy: Policy {
                sites: vec!["dc1".into()],
                node_labels: BTreeMap::from([("pool".to_string(), "team-a".to_string())]),
                ..Policy::default()
            },
            created_ms: 0,
        };
        let mut g = crate::scheduler::Group::from_spec(&spec("name: a\nimage: busybox\n"));
        restrict(&mut g, &rec);
        assert_eq!(g.sites, ["dc1"]);
        assert_eq!(g.constraints.len(), 1);
        assert_eq!(g.constraints[0].to_string(), "node.labels.pool == team-a");
        // Sites of its own outside the policy leave none (never "any").
        let mut g = crate::scheduler::Group::from_spec(&spec(
            "name: a\nimage: busybox\nplacement: {sites: [aws]}\n",
        ));
        restrict(&mut g, &rec);
        assert_eq!(g.sites.len(), 1);
        assert_ne!(g.sites[0], "aws");
    }
}
