//! The named state changes operators make (through the REST API) and the
//! autoscaler shares with them: each one function that writes its records
//! in one commit, emits its event and wakes the reconciler, so that no two
//! callers do "the same" change differently.

use std::time::Duration;

use skiff_proto::{WorkloadKind, WorkloadSpec};

use super::namespaces::NamespaceRecord;
use super::{
    ApiTokenRecord, Control, ControlError, JoinTokenRecord, NodeRecord, Role, WorkloadRecord,
};
use crate::pki::{random_hex, sha256_hex};
use crate::store::Kind;

/// Prefix of join tokens (so they are recognizable in a leak scan).
pub const JOIN_TOKEN_PREFIX: &str = "skiff-join-";
/// Prefix of API tokens.
pub const API_TOKEN_PREFIX: &str = "skiff-api-";
/// How many hex digits of a token's hash are its id.
const TOKEN_ID_LEN: usize = 12;

/// A token's id: the first hex digits of the SHA-256 of its secret (the
/// key it is stored under), safe to show and to revoke by.
pub fn token_id(hash: &str) -> &str {
    let hex = hash.strip_prefix("sha256:").unwrap_or(hash);
    &hex[..TOKEN_ID_LEN.min(hex.len())]
}

/// What `cordon`, `uncordon` and `drain` do to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAction {
    /// Takes no new work.
    Cordon,
    /// Takes work again (and stops draining).
    Uncordon,
    /// Takes no new work and its allocations are replaced elsewhere
    /// (its system workloads' copies stay).
    Drain,
    /// Drain, and stop its system workloads' copies too.
    DrainAll,
}

impl NodeAction {
    fn done(self) -> &'static str {
        match self {
            NodeAction::Cordon => "cordoned",
            NodeAction::Uncordon => "uncordoned",
            NodeAction::Drain => "drained",
            NodeAction::DrainAll => "drained, with its system workloads",
        }
    }
}

/// A secret made once and shown once: the gateway keeps only its hash.
#[derive(Debug, Clone)]
pub struct Issued<T> {
    pub secret: String,
    pub id: String,
    pub record: T,
}

/// A workload (by key) that is not there, named as its user knows it.
fn no_workload(key: &str) -> ControlError {
    match skiff_proto::namespace::split(key) {
        (skiff_proto::namespace::DEFAULT, name) => {
            ControlError::NotFound(format!("no workload {name}"))
        }
        (ns, name) => ControlError::NotFound(format!("no workload {name} in namespace {ns}")),
    }
}

impl Control {
    /// Replaces a workload's spec; a change of what runs (anything but the
    /// replica count) makes a new version, which rolls the replicas.
    pub fn update_workload(&self, spec: WorkloadSpec) -> Result<WorkloadRecord, ControlError> {
        let name = spec.key();
        let w = self.write(|st, b| {
            if !st.workloads.contains_key(&name) {
                return Err(no_workload(&name));
            }
            super::namespaces::check_spec(st, &spec)?;
            self.check_fleet_replicas(st, &name, spec.live_at_most())?;
            super::secrets::check_spec(st, &spec)?;
            let w = st
                .workloads
                .get_mut(&name)
                .ok_or_else(|| no_workload(&name))?;
            if w.spec.kind != spec.kind {
                return Err(ControlError::Invalid(format!(
                    "kind: workload {name} is a {}; a workload's kind does not change (delete it and create it again)",
                    w.spec.kind
                )));
            }
            let mut rolled = spec.clone();
            rolled.replicas = w.spec.replicas;
            if rolled != w.spec {
                w.version += 1;
            }
            w.spec = spec;
            w.updated_ms = self.clock.now_ms();
            b.put(Kind::Workload, &name, w);
            Ok(w.clone())
        })?;
        self.event(
            "workload",
            &name,
            format!("updated to version {}", w.version),
        );
        self.wake();
        Ok(w)
    }

    /// Sets the replica count.
    pub fn scale_workload(
        &self,
        name: &str,
        replicas: u32,
    ) -> Result<WorkloadRecord, ControlError> {
        if replicas > skiff_proto::MAX_REPLICAS {
            return Err(ControlError::Invalid(format!(
                "replicas: at most {}",
                skiff_proto::MAX_REPLICAS
            )));
        }
        let w = self.write(|st, b| {
            match st.workloads.get(name) {
                None => return Err(no_workload(name)),
                Some(w) if w.spec.kind == WorkloadKind::Batch => {
                    return Err(ControlError::Invalid(format!(
                        "replicas: {name} is a batch job; it runs batch.parallelism at a time (update its spec)"
                    )));
                }
                Some(w) if w.spec.kind == WorkloadKind::System => {
                    return Err(ControlError::Invalid(format!(
                        "replicas: {name} is a system workload; it runs one copy on every eligible node"
                    )));
                }
                Some(w) => {
                    let mut scaled = w.spec.clone();
                    scaled.replicas = replicas;
                    super::namespaces::check_spec(st, &scaled)?;
                }
            }
            self.check_fleet_replicas(st, name, replicas)?;
            let w = st
                .workloads
                .get_mut(name)
                .ok_or_else(|| no_workload(name))?;
            w.spec.replicas = replicas;
            w.updated_ms = self.clock.now_ms();
            b.put(Kind::Workload, name, w);
            Ok(w.clone())
        })?;
        self.event("workload", name, format!("scaled to {replicas}"));
        self.wake();
        Ok(w)
    }

    /// Replaces every replica, one at a time as an update does, with the
    /// spec unchanged (a new version).
    pub fn restart_workload(&self, name: &str) -> Result<WorkloadRecord, ControlError> {
        let w = self.write(|st, b| {
            let w = st
                .workloads
                .get_mut(name)
                .ok_or_else(|| no_workload(name))?;
            if w.spec.batch_rules().is_some() {
                return Err(ControlError::Invalid(format!(
                    "{name} is a batch job: its runs are not restarted (delete it and create it again to run it again)"
                )));
            }
            w.version += 1;
            w.updated_ms = self.clock.now_ms();
            b.put(Kind::Workload, name, w);
            Ok(w.clone())
        })?;
        self.event(
            "workload",
            name,
            format!("restart: rolling to version {}", w.version),
        );
        self.wake();
        Ok(w)
    }

    /// Forgets a workload; its allocations are stopped. Its local volumes
    /// are kept (a workload of the same name takes them again) unless
    /// `volumes`: then they are removed with their data.
    pub fn delete_workload(&self, name: &str, volumes: bool) -> Result<(), ControlError> {
        let nodes = self.write(|st, b| {
            st.workloads.remove(name).ok_or_else(|| no_workload(name))?;
            b.delete(Kind::Workload, name);
            Ok(if volumes {
                super::volumes::remove_workload_volumes(st, b, name)
            } else {
                Default::default()
            })
        })?;
        self.event(
            "workload",
            name,
            if volumes {
                "deleted with its volumes"
            } else {
                "deleted"
            },
        );
        self.push(&nodes);
        self.wake();
        Ok(())
    }

    /// Cordons, uncordons or drains a node.
    pub fn set_node(&self, id: &str, action: NodeAction) -> Result<NodeRecord, ControlError> {
        let n = self.write(|st, b| {
            let n = st
                .nodes
                .get_mut(id)
                .ok_or_else(|| ControlError::NotFound(format!("no node {id}")))?;
            match action {
                NodeAction::Cordon => n.unschedulable = true,
                NodeAction::Uncordon => {
                    n.unschedulable = false;
                    n.draining = false;
                    n.drain_system = false;
                }
                NodeAction::Drain | NodeAction::DrainAll => {
                    n.unschedulable = true;
                    n.draining = true;
                    n.drain_system = action == NodeAction::DrainAll;
                }
            }
            b.put(Kind::Node, id, n);
            Ok(n.clone())
        })?;
        self.event("node", id, action.done());
        self.wake();
        Ok(n)
    }

    /// Removes a node: its session ends and its certificate opens no new
    /// one. `why` goes into the event.
    pub fn remove_node(&self, id: &str, why: &str) -> Result<(), ControlError> {
        self.write(|st, b| {
            st.nodes
                .remove(id)
                .ok_or_else(|| ControlError::NotFound(format!("no node {id}")))?;
            b.delete(Kind::Node, id);
            Ok(())
        })?;
        self.end_session(id);
        self.event("node", id, why);
        self.wake();
        Ok(())
    }

    /// A single-use join token for `site`, valid for `ttl`.
    pub fn issue_join_token(
        &self,
        site: &str,
        ttl: Duration,
    ) -> Result<Issued<JoinTokenRecord>, ControlError> {
        if self.config.site(site).is_none() {
            return Err(ControlError::Invalid(format!(
                "site: {site:?} is not a configured site"
            )));
        }
        let secret = format!("{JOIN_TOKEN_PREFIX}{}", random_hex(24));
        let hash = sha256_hex(secret.as_bytes());
        let now = self.clock.now_ms();
        let record = JoinTokenRecord {
            site: site.to_string(),
            expires_ms: now + ttl.as_millis() as i64,
            used: false,
            created_ms: now,
        };
        self.write(|st, b| {
            b.put(Kind::JoinToken, &hash, &record);
            st.join_tokens.insert(hash.clone(), record.clone());
            Ok(())
        })?;
        let id = token_id(&hash).to_string();
        self.event("join-token", &id, format!("created for site {site}"));
        Ok(Issued { secret, id, record })
    }

    /// Revokes the join token whose id is `id` (or starts with it).
    pub fn revoke_join_token(&self, id: &str) -> Result<(), ControlError> {
        let hash = self.write(|st, b| {
            let hash = unique(st.join_tokens.keys(), id, "join token")?;
            st.join_tokens.remove(&hash);
            b.delete(Kind::JoinToken, &hash);
            Ok(hash)
        })?;
        self.event("join-token", token_id(&hash), "revoked");
        Ok(())
    }

    /// An API token named `name` with `role`, bound to `namespaces`
    /// (none: a fleet token).
    pub fn issue_api_token(
        &self,
        name: &str,
        role: Role,
        namespaces: Vec<String>,
    ) -> Result<Issued<ApiTokenRecord>, ControlError> {
        if !skiff_proto::is_valid_name(name) {
            return Err(ControlError::Invalid(format!(
                "name: {name:?} is not a valid name"
            )));
        }
        let mut namespaces = namespaces;
        namespaces.sort();
        namespaces.dedup();
        let secret = format!("{API_TOKEN_PREFIX}{}", random_hex(24));
        let hash = sha256_hex(secret.as_bytes());
        let record = ApiTokenRecord {
            name: name.to_string(),
            role,
            created_ms: self.clock.now_ms(),
            namespaces,
        };
        self.write(|st, b| {
            if let Some(ns) = record
                .namespaces
                .iter()
                .find(|n| super::namespaces::get(st, n).is_none())
            {
                return Err(ControlError::NotFound(format!(
                    "namespaces: no namespace {ns}"
                )));
            }
            b.put(Kind::ApiToken, &hash, &record);
            st.api_tokens.insert(hash.clone(), record.clone());
            Ok(())
        })?;
        let id = token_id(&hash).to_string();
        self.event("api-token", &id, format!("created: {name} ({role})"));
        Ok(Issued { secret, id, record })
    }

    /// Revokes the API token whose id is `id` (or starts with it): it
    /// authenticates nothing from now on. `within`: only one bound to
    /// these namespaces alone (a namespace admin's), others are not found.
    pub fn revoke_api_token(
        &self,
        id: &str,
        within: Option<&[String]>,
    ) -> Result<(), ControlError> {
        let hash = self.write(|st, b| {
            let hashes = st
                .api_tokens
                .iter()
                .filter(|(_, t)| within.is_none_or(|w| t.is_within(w)))
                .map(|(h, _)| h);
            let hash = unique(hashes, id, "API token")?;
            st.api_tokens.remove(&hash);
            b.delete(Kind::ApiToken, &hash);
            Ok(hash)
        })?;
        self.event("api-token", token_id(&hash), "revoked");
        Ok(())
    }

    /// Stores namespace `rec` (`create`: a new one; otherwise replaces the
    /// quota and policy of one that exists, or of `default`). A lower
    /// quota stops nothing that runs: it refuses what would add more.
    pub fn put_namespace(
        &self,
        mut rec: NamespaceRecord,
        create: bool,
    ) -> Result<NamespaceRecord, ControlError> {
        let sites: Vec<String> = self.config.sites.iter().map(|s| s.name.clone()).collect();
        let name = rec.name.clone();
        let (rec, nodes) = self.write(|st, b| {
            super::namespaces::check_record(&rec, &sites)?;
            let before = super::namespaces::get(st, &name).map(|r| r.into_owned());
            let old = before.as_ref().map(|r| r.created_ms);
            match (old, create) {
                (Some(_), true) => {
                    return Err(ControlError::Conflict(format!("namespace {name} exists")));
                }
                (None, false) => {
                    return Err(ControlError::NotFound(format!("no namespace {name}")));
                }
                _ => {}
            }
            rec.created_ms = match old {
                Some(t) if t > 0 => t,
                _ => self.clock.now_ms(),
            };
            b.put(Kind::Namespace, &name, &rec);
            st.namespaces.insert(name.clone(), rec.clone());
            // Who may reach its containers is in the desired state of the
            // nodes they run on: a new generation there (which every
            // gateway pushes, whichever holds the session).
            let mut nodes = std::collections::BTreeSet::new();
            if before.is_some_and(|b| b.policy.allow_from != rec.policy.allow_from) {
                nodes = st
                    .allocations
                    .values()
                    .filter(|a| a.is_live() && a.namespace() == name)
                    .filter_map(|a| a.node.clone())
                    .collect();
                for n in &nodes {
                    if let Some(node) = st.nodes.get_mut(n) {
                        node.generation += 1;
                        b.put(Kind::Node, n, node);
                    }
                }
            }
            Ok((rec, nodes))
        })?;
        self.event(
            "namespace",
            &name,
            if create { "created" } else { "updated" },
        );
        self.push(&nodes);
        // Placement follows the policy from the next pass.
        self.wake();
        Ok(rec)
    }

    /// Deletes an empty namespace (no workloads, secrets or volumes left:
    /// nothing is lost by accident). Tokens bound only to it are revoked;
    /// others lose it.
    pub fn delete_namespace(&self, name: &str) -> Result<(), ControlError> {
        use skiff_proto::namespace::{DEFAULT, of_volume, split};
        if name == DEFAULT {
            return Err(ControlError::Conflict(
                "namespace default cannot be deleted".into(),
            ));
        }
        self.write(|st, b| {
            if !st.namespaces.contains_key(name) {
                return Err(ControlError::NotFound(format!("no namespace {name}")));
            }
            let left = |what: &str, n: usize| {
                ControlError::Conflict(format!(
                    "namespace {name} still has {n} {what} (delete them first)"
                ))
            };
            let workloads = super::namespaces::workloads_in(st, name).count();
            if workloads > 0 {
                return Err(left("workloads", workloads));
            }
            let secrets = st.secrets.keys().filter(|k| split(k).0 == name).count();
            if secrets > 0 {
                return Err(left("secrets", secrets));
            }
            let volumes = st.volumes.keys().filter(|k| of_volume(k) == name).count();
            if volumes > 0 {
                return Err(left("volumes", volumes));
            }
            st.namespaces.remove(name);
            b.delete(Kind::Namespace, name);
            let bound: Vec<String> = st
                .api_tokens
                .iter()
                .filter(|(_, t)| t.namespaces.iter().any(|n| n == name))
                .map(|(h, _)| h.clone())
                .collect();
            for h in bound {
                let Some(t) = st.api_tokens.get_mut(&h) else {
                    continue;
                };
                t.namespaces.retain(|n| n != name);
                if t.namespaces.is_empty() {
                    // Never a fleet token by accident.
                    st.api_tokens.remove(&h);
                    b.delete(Kind::ApiToken, &h);
                } else {
                    b.put(Kind::ApiToken, &h, t);
                }
            }
            Ok(())
        })?;
        self.event("namespace", name, "deleted");
        Ok(())
    }
}

/// The one hash among `hashes` whose id starts with `id`.
fn unique<'a>(
    hashes: impl Iterator<Item = &'a String>,
    id: &str,
    what: &str,
) -> Result<String, ControlError> {
    let valid = id.len() >= 4 && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err(ControlError::NotFound(format!("no {what} {id}")));
    }
    let hits: Vec<&String> = hashes.filter(|h| token_id(h).starts_with(id)).collect();
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(ControlError::NotFound(format!("no {what} {id}"))),
        _ => Err(ControlError::Conflict(format!(
            "{id} names {} {what}s: give more of it",
            hits.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{control, site};
    use skiff_proto::cluster::SiteKind;

    #[test]
    fn tokens_are_issued_listed_by_id_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let c = control(dir.path(), vec![site("dc1", SiteKind::Static)]);
        let t = c.issue_join_token("dc1", Duration::from_secs(60)).unwrap();
        assert!(t.secret.starts_with(JOIN_TOKEN_PREFIX));
        assert_eq!(t.id.len(), TOKEN_ID_LEN);
        let e = c
            .issue_join_token("nowhere", Duration::from_secs(60))
            .unwrap_err();
        assert_eq!(e.to_string(), "site: \"nowhere\" is not a configured site");
        // By a prefix of its id.
        c.revoke_join_token(&t.id[..6]).unwrap();
        assert!(c.read(|s| s.join_tokens.is_empty()));
        let e = c.revoke_join_token(&t.id).unwrap_err();
        assert_eq!(e.to_string(), format!("no join token {}", t.id));

        let a = c.issue_api_token("ci", Role::ReadOnly, Vec::new()).unwrap();
        assert!(a.secret.starts_with(API_TOKEN_PREFIX));
        assert!(matches!(
            c.revoke_api_token("zz", None),
            Err(ControlError::NotFound(_))
        ));
        c.revoke_api_token(&a.id, None).unwrap();
        assert!(c.read(|s| s.api_tokens.is_empty()));
    }

    #[test]
    fn scaling_past_the_limit_and_unknown_workloads_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = control(dir.path(), vec![site("dc1", SiteKind::Static)]);
        let e = c.scale_workload("web", 3).unwrap_err();
        assert_eq!(e.to_string(), "no workload web");
        let e = c
            .scale_workload("web", skiff_proto::MAX_REPLICAS + 1)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("replicas: at most {}", skiff_proto::MAX_REPLICAS)
        );
        assert!(matches!(
            c.restart_workload("web"),
            Err(ControlError::NotFound(_))
        ));
    }

    #[test]
    fn the_fleet_holds_at_most_max_fleet_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let c = control(dir.path(), vec![site("default", SiteKind::Static)]);
        let limit = c.config.max_fleet_replicas;
        let spec = |name: &str, n: u32| {
            skiff_proto::parse_workloads(
                &format!("name: {name}\nimage: x\nreplicas: {n}\n"),
                skiff_proto::Format::Yaml,
            )
            .unwrap()
            .remove(0)
        };
        assert_eq!(limit, 200_000);
        c.create_workload(spec("a", 100_000)).unwrap();
        c.create_workload(spec("a2", 99_990)).unwrap();
        let e = c.create_workload(spec("b", 11)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the fleet would have {} replicas, over max_fleet_replicas ({limit})",
                limit + 1
            )
        );
        assert!(c.read(|s| !s.workloads.contains_key("b")));
        c.create_workload(spec("b", 10)).unwrap();
        assert!(matches!(
            c.scale_workload("b", 11),
            Err(ControlError::Conflict(_))
        ));
        // Scaling one down always works; its own count is not counted twice.
        c.scale_workload("a", 99_990).unwrap();
        c.scale_workload("b", 20).unwrap();
    }
}
