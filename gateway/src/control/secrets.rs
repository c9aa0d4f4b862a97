//! Secrets as the gateway keeps them: a record per secret with its keys,
//! its version and its data sealed (`crate::secrets`); never returned by a
//! read, never in an event or a log. A node's desired state carries the
//! values of the secrets its allocations' specs use, over its mutual-TLS
//! session; a rotation (a new version) pushes them again to those nodes,
//! whose agents rewrite the files in place.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use skiff_proto::namespace::{qualify, split};
use skiff_proto::wire::v1;
use skiff_proto::{WorkloadSpec, is_secret_key, is_valid_name};

use super::{Control, ControlError, State};
use crate::secrets::{SecretBox, SecretData};
use crate::store::Kind;

/// Most bytes of one secret's data.
pub const MAX_SECRET_BYTES: usize = 512 << 10;

/// A secret as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// Its key (`[NAMESPACE.]NAME`), also what its data is sealed to.
    pub name: String,
    pub version: u64,
    pub keys: Vec<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// The data, sealed with the gateway's secrets key.
    pub sealed: String,
}

/// What reads show of a secret: never its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretView {
    pub name: String,
    pub namespace: String,
    /// Bumped by every update (rotation).
    pub version: u64,
    pub keys: Vec<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl From<&SecretRecord> for SecretView {
    fn from(r: &SecretRecord) -> Self {
        let (namespace, name) = split(&r.name);
        Self {
            name: name.to_string(),
            namespace: namespace.to_string(),
            version: r.version,
            keys: r.keys.clone(),
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
        }
    }
}

/// A spec's secrets exist (else 404, naming it) and have the keys its
/// variables read (else 409).
pub(crate) fn check_spec(s: &State, spec: &WorkloadSpec) -> Result<(), ControlError> {
    for (i, r) in spec.secrets.iter().enumerate() {
        let secret = s
            .secrets
            .get(&qualify(&spec.namespace, &r.name))
            .ok_or_else(|| {
                ControlError::NotFound(format!(
                    "spec.secrets[{i}].name: no secret {} (skiff secret create {} ...)",
                    r.name, r.name
                ))
            })?;
        if let Some((var, key)) = r.env.iter().find(|(_, k)| !secret.keys.contains(k)) {
            return Err(ControlError::Conflict(format!(
                "spec.secrets[{i}].env.{var}: secret {} has no key {key}",
                r.name
            )));
        }
    }
    Ok(())
}

/// Whether `spec` reads the secret of key `key`.
fn uses(spec: &WorkloadSpec, key: &str) -> bool {
    let (ns, name) = split(key);
    spec.namespace == ns && spec.secrets.iter().any(|r| r.name == name)
}

/// The nodes running (or given) allocations of workloads that use secret
/// `key`.
fn nodes_using(s: &State, key: &str) -> BTreeSet<String> {
    s.allocations
        .values()
        .filter(|a| a.is_live())
        .filter(|a| {
            s.workloads
                .get(&a.workload)
                .is_some_and(|w| uses(&w.spec, key))
        })
        .filter_map(|a| a.node.clone())
        .collect()
}

/// The secrets `spec` uses, with their values, for a desired state. A
/// secret that does not open is left out (the agent then says which is
/// missing) and logged by name.
pub(crate) fn data_for(
    s: &State,
    keys: Option<&SecretBox>,
    spec: &WorkloadSpec,
) -> Vec<v1::SecretData> {
    spec.secrets
        .iter()
        .filter_map(|r| {
            let rec = s.secrets.get(&qualify(&spec.namespace, &r.name))?;
            let data = match keys.map(|k| k.open(&rec.name, &rec.sealed)) {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "secret not sent");
                    return None;
                }
                None => {
                    tracing::error!(secret = %rec.name, "secret not sent: no secrets key loaded");
                    return None;
                }
            };
            Some(v1::SecretData {
                // As the spec (and so the agent) names it.
                name: r.name.clone(),
                version: rec.version,
                data: data.0.into_iter().collect(),
            })
        })
        .collect()
}

fn check_data(key: &str, data: &SecretData) -> Result<(), ControlError> {
    let name = split(key).1;
    if !is_valid_name(name) {
        return Err(ControlError::Invalid(format!(
            "name: {name:?} is not a valid secret name (lowercase letters, digits and '-')"
        )));
    }
    if data.0.is_empty() {
        return Err(ControlError::Invalid(format!("secret {name}: no keys")));
    }
    if let Some(k) = data.0.keys().find(|k| !is_secret_key(k)) {
        return Err(ControlError::Invalid(format!(
            "data.{k}: not a key (letters, digits, '.', '_', '-', not . or ..)"
        )));
    }
    let size: usize = data.0.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_SECRET_BYTES {
        return Err(ControlError::Invalid(format!(
            "secret {name}: {size} bytes, more than {MAX_SECRET_BYTES}"
        )));
    }
    Ok(())
}

impl Control {
    /// The secrets key, loaded on first use (and made, with the embedded
    /// store's default path).
    pub(crate) fn secret_box(&self) -> Result<&SecretBox, ControlError> {
        if let Some(b) = self.secret_box.get() {
            return Ok(b);
        }
        let may_make = !self.config.secrets_key_given && self.config.etcd.is_none();
        let b = SecretBox::load(&self.config.secrets_key_file, may_make)
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        Ok(self.secret_box.get_or_init(|| b))
    }

    /// Every secret, without its data.
    pub fn secrets(&self) -> Vec<SecretView> {
        self.read(|s| s.secrets.values().map(SecretView::from).collect())
    }

    /// Creates secret `name` (a key: `[NAMESPACE.]NAME`; `create`), or replaces its data (a rotation:
    /// a new version, sent to the nodes that use it).
    pub fn put_secret(
        &self,
        name: &str,
        data: SecretData,
        create: bool,
    ) -> Result<SecretView, ControlError> {
        if !create && !self.read(|s| s.secrets.contains_key(name)) {
            return Err(ControlError::NotFound(format!(
                "no secret {}",
                split(name).1
            )));
        }
        check_data(name, &data)?;
        let sealed = self
            .secret_box()?
            .seal(name, &data)
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        let keys: Vec<String> = data.0.keys().cloned().collect();
        let now = self.clock.now_ms();
        let (view, nodes) = self.write(|s, b| {
            let old = s.secrets.get(name);
            match (old, create) {
                (Some(_), true) => {
                    return Err(ControlError::Conflict(format!(
                        "secret {} exists (update it with skiff secret update)",
                        split(name).1
                    )));
                }
                (None, false) => {
                    return Err(ControlError::NotFound(format!(
                        "no secret {}",
                        split(name).1
                    )));
                }
                _ => {}
            }
            // A key a workload's variable reads stays.
            let plain = split(name).1;
            for w in s.workloads.values().filter(|w| uses(&w.spec, name)) {
                for r in w.spec.secrets.iter().filter(|r| r.name == plain) {
                    if let Some(key) = r.env.values().find(|k| !keys.contains(k)) {
                        return Err(ControlError::Conflict(format!(
                            "workload {} reads key {key} of secret {plain}",
                            w.spec.name
                        )));
                    }
                }
            }
            let rec = SecretRecord {
                name: name.to_string(),
                version: old.map_or(1, |o| o.version + 1),
                keys: keys.clone(),
                created_ms: old.map_or(now, |o| o.created_ms),
                updated_ms: now,
                sealed: sealed.clone(),
            };
            b.put(Kind::Secret, name, &rec);
            let view = SecretView::from(&rec);
            s.secrets.insert(name.to_string(), rec);
            let nodes = nodes_using(s, name);
            for n in &nodes {
                if let Some(node) = s.nodes.get_mut(n) {
                    node.generation += 1;
                    b.put(Kind::Node, n, node);
                }
            }
            Ok((view, nodes))
        })?;
        let what = if create {
            "created".to_string()
        } else {
            format!("updated to version {}", view.version)
        };
        self.event("secret", name, what);
        self.push(&nodes);
        Ok(view)
    }

    /// Deletes a secret no workload uses.
    pub fn delete_secret(&self, name: &str) -> Result<(), ControlError> {
        self.write(|s, b| {
            if !s.secrets.contains_key(name) {
                return Err(ControlError::NotFound(format!(
                    "no secret {}",
                    split(name).1
                )));
            }
            if let Some(w) = s.workloads.values().find(|w| uses(&w.spec, name)) {
                return Err(ControlError::Conflict(format!(
                    "workload {} uses secret {}",
                    w.spec.name,
                    split(name).1
                )));
            }
            s.secrets.remove(name);
            b.delete(Kind::Secret, name);
            Ok(())
        })?;
        self.event("secret", name, "deleted");
        Ok(())
    }
}
