//! Skiff's nftables rules: a table of its own (`ip skiff`), so they never
//! touch the host's firewall, built with the `nftables` crate (nft's JSON
//! API) and replaced whole in one transaction on every change:
//!
//! * egress: the node subnet masqueraded behind the host's address on the
//!   way out of the bridge;
//! * published ports: DNAT of `[host ip:]port` to a container, for traffic
//!   arriving at the host (`prerouting`) and sent by the host itself,
//!   loopback included (`output`);
//! * hairpin and loopback: a container reaching a published port of the
//!   node, and `127.0.0.1:port`, are masqueraded so the answer comes back
//!   the way it went;
//! * node-local addresses: in the `forward` hook, a new connection routed
//!   to a container from beyond the node (another host, another node's
//!   bridge) is dropped unless it came through a published port, even
//!   where the operator routes the node subnets (as Docker 28 does by
//!   default): the address of a container is not a way in from other
//!   hosts, so no other node's container, of any namespace, reaches it;
//! * namespace isolation: in the same hook (bridged traffic passes it
//!   through `br_netfilter`), a new connection from a container of one
//!   namespace to one of another on the node is dropped unless the
//!   destination's namespace lets the source's in. Replies of allowed
//!   connections and published ports (DNAT) pass.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{
    CT, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix, SetItem,
};
use nftables::schema::{Chain, NfListObject, Rule, Table};
use nftables::stmt::{Match, NAT, NATFamily, Operator, Statement};
use nftables::types::{NfChainType, NfFamily, NfHook};
use serde::{Deserialize, Serialize};

/// The table's name on a node.
pub const TABLE: &str = "skiff";

/// Where bridged IPv4 traffic is handed to netfilter's hooks.
const BRIDGE_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// A failure of Skiff's rules, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("nftables ({what}): {source}")]
    Nft {
        what: &'static str,
        #[source]
        source: nftables::helper::NftablesError,
    },
    /// Namespace isolation cannot hold: bridged traffic would bypass it.
    #[error(
        "namespace isolation needs bridged traffic in netfilter (modprobe br_netfilter): {BRIDGE_NF}: {source}"
    )]
    BridgeNetfilter {
        #[source]
        source: std::io::Error,
    },
}

/// The node's NAT rules.
#[derive(Debug, Clone)]
pub struct Nat {
    /// The nftables table ([`TABLE`]; tests use their own).
    pub table: String,
    pub bridge: String,
    pub subnet: Ipv4Net,
}

fn table(name: &str) -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: name.to_string().into(),
        handle: None,
    }
}

/// Who is in which namespace on this node, and who may reach whom.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Isolation {
    /// Running containers' addresses, by namespace.
    pub members: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// Per namespace, the other namespaces whose containers may open
    /// connections to its own.
    pub allow_from: BTreeMap<String, Vec<String>>,
}

impl Isolation {
    /// Per namespace with containers here: its addresses, and the
    /// addresses of other namespaces' containers here that it keeps out
    /// (none: no rule).
    pub fn rules(&self) -> Vec<(&str, &BTreeSet<Ipv4Addr>, BTreeSet<Ipv4Addr>)> {
        let mut out = Vec::new();
        for (ns, own) in &self.members {
            let allowed = self.allow_from.get(ns);
            let denied: BTreeSet<Ipv4Addr> = self
                .members
                .iter()
                .filter(|(other, _)| *other != ns)
                .filter(|(other, _)| allowed.is_none_or(|a| !a.contains(other)))
                .flat_map(|(_, addrs)| addrs.iter().copied())
                .collect();
            if !denied.is_empty() {
                out.push((ns.as_str(), own, denied));
            }
        }
        out
    }
}

fn addr_set(addrs: &BTreeSet<Ipv4Addr>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        addrs
            .iter()
            .map(|a| SetItem::Element(Expression::String(a.to_string().into())))
            .collect(),
    ))
}

/// `tcp` or `udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A published port: `[host_ip:]host_port/proto` → `container_ip:container_port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Only traffic to this host address (all of the host's by default).
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub proto: Proto,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
}

/// Docker's notation: `0.0.0.0:8080->80/tcp`.
impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}->{}/{}",
            self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            self.host_port,
            self.container_port,
            self.proto.name()
        )
    }
}

fn matches<'a>(left: Expression<'a>, right: Expression<'a>, op: Operator) -> Statement<'a> {
    Statement::Match(Match { left, right, op })
}

fn field<'a>(protocol: &'a str, name: &'a str) -> Expression<'a> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: name.into(),
        },
    )))
}

fn prefix(net: Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(net.network().to_string().into())),
        len: u32::from(net.prefix_len()),
    }))
}

fn oifname() -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta {
        key: MetaKey::Oifname,
    }))
}

fn iifname() -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta {
        key: MetaKey::Iifname,
    }))
}

fn nat_chain(table: &str, name: &'static str, hook: NfHook, prio: i32) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::IP,
        table: table.to_string().into(),
        name: name.into(),
        _type: Some(NfChainType::NAT),
        hook: Some(hook),
        prio: Some(prio),
        ..Chain::default()
    })
}

fn rule(
    table: &str,
    chain: &'static str,
    expr: Vec<Statement<'static>>,
    comment: String,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: table.to_string().into(),
        chain: chain.into(),
        expr: Cow::Owned(expr),
        comment: Some(comment.into()),
        ..Rule::default()
    })
}

impl Nat {
    /// Creates (or re-creates, after an agent restart) the table with the
    /// egress and node-local rules only, and turns on IPv4 forwarding.
    pub fn ensure(&self) -> Result<(), NatError> {
        self.apply(&[], &Isolation::default())
    }

    /// Replaces the table with the egress and node-local rules, `ports`
    /// and the namespace isolation rules, in one transaction; turns on IPv4
    /// forwarding (and, on the bridge, routing of loopback-sourced
    /// packets, for `127.0.0.1:port`, and the netfilter hooks of bridged
    /// traffic, for isolation).
    pub fn apply(&self, ports: &[PortMapping], isolation: &Isolation) -> Result<(), NatError> {
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{}/route_localnet", self.bridge),
            "1",
        );
        let mut batch = Batch::new();
        // Add-then-delete makes the delete valid on a first run.
        let t = self.table.as_str();
        batch.add(NfListObject::Table(table(t)));
        batch.delete(NfListObject::Table(table(t)));
        batch.add(NfListObject::Table(table(t)));
        batch.add(nat_chain(t, "prerouting", NfHook::Prerouting, -100));
        batch.add(nat_chain(t, "output", NfHook::Output, -100));
        batch.add(nat_chain(t, "postrouting", NfHook::Postrouting, 100));
        let bridge = || Expression::String(self.bridge.clone().into());
        // Egress.
        batch.add(rule(
            t,
            "postrouting",
            vec![
                matches(field("ip", "saddr"), prefix(self.subnet), Operator::EQ),
                matches(oifname(), bridge(), Operator::NEQ),
                Statement::Masquerade(None),
            ],
            "skiff: egress".into(),
        ));
        // Hairpin: containers to a published port of the node.
        batch.add(rule(
            t,
            "postrouting",
            vec![
                matches(
                    Expression::Named(NamedExpression::CT(CT {
                        key: "status".into(),
                        family: None,
                        dir: None,
                    })),
                    Expression::String("dnat".into()),
                    Operator::IN,
                ),
                matches(field("ip", "saddr"), prefix(self.subnet), Operator::EQ),
                matches(oifname(), bridge(), Operator::EQ),
                Statement::Masquerade(None),
            ],
            "skiff: hairpin".into(),
        ));
        // Loopback: 127.0.0.1:port from the host.
        batch.add(rule(
            t,
            "postrouting",
            vec![
                matches(
                    field("ip", "saddr"),
                    prefix(Ipv4Net::new(Ipv4Addr::LOCALHOST, 8).expect("valid")),
                    Operator::EQ,
                ),
                matches(oifname(), bridge(), Operator::EQ),
                Statement::Masquerade(None),
            ],
            "skiff: loopback".into(),
        ));
        for p in ports {
            for chain in ["prerouting", "output"] {
                let mut expr = vec![matches(
                    Expression::Named(NamedExpression::Fib(Fib {
                        result: FibResult::Type,
                        flags: HashSet::from([FibFlag::Daddr]),
                    })),
                    Expression::String("local".into()),
                    Operator::EQ,
                )];
                if let Some(ip) = p.host_ip {
                    expr.push(matches(
                        field("ip", "daddr"),
                        Expression::String(ip.to_string().into()),
                        Operator::EQ,
                    ));
                }
                expr.push(matches(
                    field(p.proto.name(), "dport"),
                    Expression::Number(u32::from(p.host_port)),
                    Operator::EQ,
                ));
                expr.push(Statement::DNAT(Some(NAT {
                    addr: Some(Expression::String(p.container_ip.to_string().into())),
                    family: Some(NATFamily::IP),
                    port: Some(Expression::Number(u32::from(p.container_port))),
                    flags: None,
                })));
                batch.add(rule(
                    t,
                    chain,
                    expr,
                    format!(
                        "skiff: {}:{}/{} to {}:{}",
                        p.host_ip.map_or("*".to_string(), |i| i.to_string()),
                        p.host_port,
                        p.proto.name(),
                        p.container_ip,
                        p.container_port
                    ),
                ));
            }
        }
        let rules = isolation.rules();
        if !rules.is_empty() {
            // Docker needs the same: bridged IPv4 through iptables' hooks.
            // Without it the rules would not see traffic between containers
            // of the node: fail rather than leave namespaces open.
            std::fs::write(BRIDGE_NF, "1")
                .map_err(|source| NatError::BridgeNetfilter { source })?;
        }
        batch.add(NfListObject::Chain(Chain {
            family: NfFamily::IP,
            table: t.to_string().into(),
            name: "isolate".into(),
            _type: Some(NfChainType::Filter),
            hook: Some(NfHook::Forward),
            prio: Some(0),
            ..Chain::default()
        }));
        let ct = |key: &'static str| {
            Expression::Named(NamedExpression::CT(CT {
                key: key.into(),
                family: None,
                dir: None,
            }))
        };
        batch.add(rule(
            t,
            "isolate",
            vec![
                matches(
                    ct("state"),
                    Expression::List(vec![
                        Expression::String("established".into()),
                        Expression::String("related".into()),
                    ]),
                    Operator::IN,
                ),
                Statement::Accept(None),
            ],
            "skiff: replies".into(),
        ));
        batch.add(rule(
            t,
            "isolate",
            vec![
                matches(
                    ct("status"),
                    Expression::String("dnat".into()),
                    Operator::IN,
                ),
                Statement::Accept(None),
            ],
            "skiff: published ports".into(),
        ));
        // Routed in from beyond the node (bridged traffic between the
        // node's own containers comes in on the bridge itself).
        batch.add(rule(
            t,
            "isolate",
            vec![
                matches(oifname(), bridge(), Operator::EQ),
                matches(iifname(), bridge(), Operator::NEQ),
                matches(field("ip", "daddr"), prefix(self.subnet), Operator::EQ),
                Statement::Drop(None),
            ],
            "skiff: containers are reached from other hosts only through published ports".into(),
        ));
        for (ns, own, denied) in rules {
            batch.add(rule(
                t,
                "isolate",
                vec![
                    matches(field("ip", "daddr"), addr_set(own), Operator::EQ),
                    matches(field("ip", "saddr"), addr_set(&denied), Operator::EQ),
                    Statement::Drop(None),
                ],
                format!("skiff: namespace {ns} keeps others out"),
            ));
        }
        nftables::helper::apply_ruleset(&batch.to_nftables()).map_err(|source| NatError::Nft {
            what: "set up the skiff table",
            source,
        })
    }

    /// Removes the table and everything in it.
    pub fn remove(&self) -> Result<(), NatError> {
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(table(&self.table)));
        batch.delete(NfListObject::Table(table(&self.table)));
        nftables::helper::apply_ruleset(&batch.to_nftables()).map_err(|source| NatError::Nft {
            what: "remove the skiff table",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 88, 0, last)
    }

    #[test]
    fn each_namespace_keeps_the_others_out_unless_it_lets_one_in() {
        let mut iso = Isolation::default();
        iso.members.insert("a".into(), [ip(2), ip(3)].into());
        iso.members.insert("b".into(), [ip(4)].into());
        iso.members.insert("c".into(), [ip(5)].into());
        iso.allow_from.insert("b".into(), vec!["a".into()]);
        let rules = iso.rules();
        let of = |ns: &str| {
            rules
                .iter()
                .find(|(n, ..)| *n == ns)
                .map(|(_, own, denied)| ((*own).clone(), denied.clone()))
        };
        assert_eq!(
            of("a"),
            Some(([ip(2), ip(3)].into(), [ip(4), ip(5)].into()))
        );
        // b lets a in: only c is kept out.
        assert_eq!(of("b"), Some(([ip(4)].into(), [ip(5)].into())));
        assert_eq!(
            of("c"),
            Some(([ip(5)].into(), [ip(2), ip(3), ip(4)].into()))
        );
        // One namespace alone on a node needs no rule.
        let mut alone = Isolation::default();
        alone.members.insert("a".into(), [ip(2)].into());
        assert!(alone.rules().is_empty());
    }
}
