//! What agents change, as typed operations: a join, a session's
//! registration, a renewed certificate, their cloud's notice. The agent port calls them on the
//! leader, and a follower hands them to the leader (`crate::cluster`).

use skiff_proto::cluster::NodeStatus;
use skiff_proto::wire::v1::{self, JoinRequest, JoinResponse};

use super::{Control, ControlError, NodeRecord};
use crate::pki::{Pki, sha256_hex};
use crate::store::Kind;

impl Control {
    /// A node joins with a single-use token: a name, a subnet and a
    /// certificate from the CSR.
    pub fn join(&self, r: &JoinRequest, pki: &Pki) -> Result<JoinResponse, ControlError> {
        let token_hash = sha256_hex(r.token.as_bytes());
        let c = self;
        let lifetime = c.config.cert_lifetime;
        let out = c.write(|s, b| {
            let now = self.clock.now_ms();
            let t = s
                .join_tokens
                .get_mut(&token_hash)
                .ok_or_else(|| ControlError::Unauthenticated("join token is not valid".into()))?;
            if t.used {
                return Err(ControlError::Unauthenticated(
                    "join token was already used".into(),
                ));
            }
            if t.expires_ms <= now {
                return Err(ControlError::Unauthenticated(
                    "join token has expired".into(),
                ));
            }
            t.used = true;
            let site = t.site.clone();
            b.put(Kind::JoinToken, &token_hash, t);
            let base = if skiff_proto::is_valid_name(&r.requested_name) {
                r.requested_name.clone()
            } else {
                "node".to_string()
            };
            let mut id = base.clone();
            while s.nodes.contains_key(&id) {
                id = format!(
                    "{}-{}",
                    &base[..base.len().min(54)],
                    crate::pki::random_hex(4)
                );
            }
            let subnet = c.next_subnet(s)?;
            let (cert, not_after) = pki
                .issue_node(&r.csr_der, &id, lifetime)
                .map_err(|e| ControlError::Invalid(e.to_string()))?;
            let node = NodeRecord {
                id: id.clone(),
                site: site.clone(),
                status: NodeStatus::Down,
                unschedulable: false,
                draining: false,
                drain_system: false,
                subnet,
                cert_hash: sha256_hex(&cert),
                cert_not_after_ms: not_after,
                labels: Default::default(),
                host_volumes: Vec::new(),
                volume_quota_missing: None,
                stale_volumes: Vec::new(),
                capacity: Default::default(),
                allocatable: Default::default(),
                max_allocations: None,
                os: String::new(),
                arch: String::new(),
                agent_version: String::new(),
                hostname: String::new(),
                joined_ms: now,
                generation: 1,
                instance_id: None,
                instance_type: None,
                idle_since_ms: None,
                scale_in: None,
                vacating: None,
            };
            b.put(Kind::Node, &id, &node);
            s.nodes.insert(id.clone(), node);
            Ok(JoinResponse {
                node_id: id,
                site,
                certificate_der: cert,
                ca_certificate_der: pki.ca_der().to_vec(),
                not_after_unix_ms: not_after,
                container_subnet: subnet.to_string(),
            })
        })?;
        self.event("node", &out.node_id, format!("joined site {}", out.site));
        Ok(out)
    }

    /// A session opened: the node is ready, with what it registered.
    pub fn register(&self, node: &str, reg: &v1::Register) -> Result<v1::Registered, ControlError> {
        let c = self;
        // It spoke to a gateway just now: a full grace period from here
        // (over etcd, before the first liveness batch of a follower that
        // holds its session arrives).
        self.seen(node);
        // Soft: the agent sends all of it again on its next connect.
        let ((was_down, changed), registered) = c.write_soft(|s, b| {
            let n = s
                .nodes
                .get_mut(node)
                .ok_or_else(|| ControlError::Unauthenticated(format!("node {node} was removed")))?;
            let was_down = n.status == NodeStatus::Down;
            let mut r = n.clone();
            r.status = NodeStatus::Ready;
            r.capacity = reg.capacity.unwrap_or_default().into();
            r.allocatable = reg.allocatable.unwrap_or_default().into();
            r.max_allocations = Some(reg.max_allocations).filter(|&m| m > 0);
            r.labels = reg.labels.clone().into_iter().collect();
            r.host_volumes = reg.host_volumes.clone();
            r.host_volumes.sort();
            r.host_volumes.dedup();
            r.volume_quota_missing =
                Some(reg.volume_quota_missing.clone()).filter(|w| !w.is_empty());
            if let Some(p) = &reg.platform {
                r.os = p.os.clone();
                r.arch = p.architecture.clone();
            }
            r.agent_version = reg.agent_version.clone();
            r.hostname = reg.hostname.clone();
            // A session that only moved (another gateway, a restart)
            // changes nothing: nothing is written, nothing woken.
            let changed = r != *n;
            if changed {
                *n = r;
                b.put(Kind::Node, node, n);
            }
            Ok((
                (was_down, changed),
                v1::Registered {
                    node_id: n.id.clone(),
                    site: n.site.clone(),
                    container_subnet: n.subnet.to_string(),
                    heartbeat_interval_ms: c.config.heartbeat_interval.as_millis() as u32,
                },
            ))
        })?;
        if was_down {
            self.event("node", node, "ready");
        }
        if changed {
            self.wake();
        }
        Ok(registered)
    }

    /// A node's certificate was renewed: it is its identity from now on.
    pub fn renewed(&self, node: &str, cert_hash: &str, not_after: i64) -> Result<(), ControlError> {
        self.write(|s, b| {
            let n = s
                .nodes
                .get_mut(node)
                .ok_or_else(|| ControlError::NotFound(node.to_string()))?;
            n.cert_hash = cert_hash.to_string();
            n.cert_not_after_ms = not_after;
            b.put(Kind::Node, node, n);
            Ok(())
        })?;
        self.event("node", node, "certificate renewed");
        Ok(())
    }

    /// The node's cloud takes it back soon (a spot interruption, an
    /// eviction): it is emptied at once, every replica started elsewhere
    /// before it stops (a launch if need be), whatever consolidation was
    /// doing with it. The same notice again changes nothing.
    pub fn notice(&self, node: &str, n: &v1::Notice) -> Result<(), ControlError> {
        let deadline = match n.deadline_unix_ms {
            0 => String::new(),
            ms => format!(" (in {} s)", ((ms - self.clock.now_ms()) / 1000).max(0)),
        };
        let message = format!("{}{deadline}", n.message);
        let fresh = self.write(|s, b| {
            let now = self.clock.now_ms();
            let rec = s
                .nodes
                .get_mut(node)
                .ok_or_else(|| ControlError::NotFound(node.to_string()))?;
            if rec
                .vacating
                .as_ref()
                .is_some_and(|v| v.cause == super::MoveCause::Notice)
            {
                return Ok(false);
            }
            rec.vacating = Some(super::Vacate {
                cause: super::MoveCause::Notice,
                since_ms: now,
                saving_micros_per_hour: 0,
                max_moving: u32::MAX,
                notice: message.clone(),
            });
            b.put(Kind::Node, node, rec);
            Ok(true)
        })?;
        if fresh {
            self.event(
                "node",
                node,
                format!("notice from its cloud: {message}; its work starts elsewhere now"),
            );
            self.wake();
        }
        Ok(())
    }
}
