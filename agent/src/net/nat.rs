//! Skiff's nftables rules: a table of its own (`ip skiff`), so they never
//! touch the host's firewall, built with the `nftables` crate (nft's JSON
//! API). For now: egress, the node subnet masqueraded behind the host's
//! address on the way out of the bridge. Published ports come next.

use std::borrow::Cow;

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{Chain, NfListObject, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainType, NfFamily, NfHook};

/// The table's name.
pub const TABLE: &str = "skiff";

/// An nftables failure, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("nftables ({what}): {source}")]
pub struct NatError {
    pub what: &'static str,
    #[source]
    pub source: nftables::helper::NftablesError,
}

/// The node's NAT rules.
#[derive(Debug, Clone)]
pub struct Nat {
    pub bridge: String,
    pub subnet: Ipv4Net,
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: TABLE.into(),
        handle: None,
    }
}

impl Nat {
    /// Creates (or re-creates, after an agent restart) the table with its
    /// rules, and turns on IPv4 forwarding.
    pub fn ensure(&self) -> Result<(), NatError> {
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        let mut batch = Batch::new();
        // Add-then-delete makes the delete valid on a first run; the table
        // is rebuilt whole, in one transaction.
        batch.add(NfListObject::Table(table()));
        batch.delete(NfListObject::Table(table()));
        batch.add(NfListObject::Table(table()));
        batch.add(NfListObject::Chain(Chain {
            family: NfFamily::IP,
            table: TABLE.into(),
            name: "postrouting".into(),
            _type: Some(NfChainType::NAT),
            hook: Some(NfHook::Postrouting),
            prio: Some(100),
            ..Chain::default()
        }));
        // ip saddr SUBNET oifname != BRIDGE masquerade
        let egress = [
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                    PayloadField {
                        protocol: "ip".into(),
                        field: "saddr".into(),
                    },
                ))),
                right: Expression::Named(NamedExpression::Prefix(Prefix {
                    addr: Box::new(Expression::String(self.subnet.network().to_string().into())),
                    len: u32::from(self.subnet.prefix_len()),
                })),
                op: Operator::EQ,
            }),
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Meta(Meta {
                    key: MetaKey::Oifname,
                })),
                right: Expression::String(self.bridge.clone().into()),
                op: Operator::NEQ,
            }),
            Statement::Masquerade(None),
        ];
        batch.add(NfListObject::Rule(Rule {
            family: NfFamily::IP,
            table: TABLE.into(),
            chain: "postrouting".into(),
            expr: Cow::Owned(egress.to_vec()),
            comment: Some("skiff: egress".into()),
            ..Rule::default()
        }));
        nftables::helper::apply_ruleset(&batch.to_nftables()).map_err(|source| NatError {
            what: "set up the skiff table",
            source,
        })
    }

    /// Removes the table and everything in it.
    pub fn remove() -> Result<(), NatError> {
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(table()));
        batch.delete(NfListObject::Table(table()));
        nftables::helper::apply_ruleset(&batch.to_nftables()).map_err(|source| NatError {
            what: "remove the skiff table",
            source,
        })
    }
}
