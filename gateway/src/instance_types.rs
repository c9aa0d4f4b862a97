//! Instance types as the clouds have them, checked at start: every type a
//! site lists must be one its region offers (a typo or a region without
//! it is an error now, not at the first launch), and a type listed by name
//! alone takes its shape from the cloud (what the agent can give
//! workloads: the shape less the agent's default reserve). Prices stay
//! the config's: EC2 and ARM do not tell them.

use std::collections::BTreeMap;
use std::sync::Arc;

use skiff_cloud::{CloudError, CloudProvider};

use crate::config::{GatewayConfig, SiteConfig};

/// What an agent keeps for its host unless its config says otherwise
/// (the agent's `[reserve]` defaults).
const AGENT_RESERVE_CPU_MILLIS: u64 = 100;
const AGENT_RESERVE_MEMORY_BYTES: u64 = 256 << 20;

/// Why a site's instance types are not usable.
#[derive(Debug, thiserror::Error)]
pub enum TypesError {
    /// The cloud answered that it does not offer a listed type (the
    /// source says which).
    #[error("site {site}")]
    NotOffered {
        site: String,
        #[source]
        source: CloudError,
    },
    /// A type listed by name alone, and the cloud could not be asked.
    #[error(
        "site {site}: instance type {name} gives no cpu and memory, and the cloud could not be asked for its shape"
    )]
    NoShape {
        site: String,
        name: String,
        #[source]
        source: CloudError,
    },
    /// The cloud's answer left a listed type out.
    #[error("site {site}: the cloud did not describe instance type {name}")]
    Missing { site: String, name: String },
}

/// Fills in `site`'s types from what its cloud offers (`offered`, the
/// provider's answer). A cloud that could not be asked (unreachable,
/// throttled) leaves types with their own shapes as they are: that is a
/// warning (returned), not a reason to keep on-prem work from the gateway.
pub fn merge(
    site: &mut SiteConfig,
    offered: Result<Vec<skiff_cloud::InstanceType>, CloudError>,
) -> Result<Option<String>, TypesError> {
    let offered = match offered {
        Ok(o) => o,
        Err(source @ CloudError::Invalid(_)) => {
            return Err(TypesError::NotOffered {
                site: site.name.clone(),
                source,
            });
        }
        Err(source) => {
            return match site
                .instance_types
                .iter()
                .find(|t| t.cpu.is_none() || t.memory.is_none())
            {
                Some(t) => Err(TypesError::NoShape {
                    site: site.name.clone(),
                    name: t.name.clone(),
                    source,
                }),
                None => Ok(Some(format!(
                    "site {}: the cloud could not be asked whether it offers its instance types ({source}); launches will tell",
                    site.name
                ))),
            };
        }
    };
    for t in &mut site.instance_types {
        let o = offered
            .iter()
            .find(|o| o.name == t.name)
            .ok_or_else(|| TypesError::Missing {
                site: site.name.clone(),
                name: t.name.clone(),
            })?;
        t.cpu.get_or_insert_with(|| {
            skiff_proto::Cpu::from_millis(o.cpu_millis.saturating_sub(AGENT_RESERVE_CPU_MILLIS))
        });
        t.memory.get_or_insert_with(|| {
            skiff_proto::ByteSize::from_bytes(
                o.memory_bytes.saturating_sub(AGENT_RESERVE_MEMORY_BYTES),
            )
        });
    }
    Ok(None)
}

/// Asks every cloud site's provider for its types and merges the answers
/// into `config` (before anything is planned with them).
pub async fn resolve(
    config: &mut GatewayConfig,
    providers: &BTreeMap<String, Arc<dyn CloudProvider>>,
) -> Result<(), TypesError> {
    for site in &mut config.sites {
        let Some(p) = providers.get(&site.name) else {
            continue;
        };
        if site.instance_types.is_empty()
            || !matches!(
                site.kind,
                skiff_proto::cluster::SiteKind::Aws | skiff_proto::cluster::SiteKind::Azure
            )
        {
            continue;
        }
        let offered = p.instance_types().await;
        if let Some(warning) = merge(site, offered)? {
            tracing::warn!("{warning}");
        }
        for t in &site.instance_types {
            tracing::info!(
                site = %site.name,
                instance_type = %t.name,
                cpu = %t.cpu.map_or(0, |c| c.millis()),
                memory = %t.memory.map_or(0, |m| m.bytes()),
                "instance type"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InstanceTypeConfig;

    fn site(types: &[(&str, Option<&str>)]) -> SiteConfig {
        SiteConfig {
            instance_types: types
                .iter()
                .map(|(name, cpu)| InstanceTypeConfig {
                    name: (*name).into(),
                    cpu: cpu.map(|c| c.parse().unwrap()),
                    memory: cpu.map(|_| "4Gi".parse().unwrap()),
                    disk: "20Gi".parse().unwrap(),
                    price_per_hour: "0.1".into(),
                    arch: "amd64".into(),
                    spot: false,
                })
                .collect(),
            ..crate::control::testing::site("aws", skiff_proto::cluster::SiteKind::Aws)
        }
    }

    fn offered(name: &str, cpus: u64, gib: u64) -> skiff_cloud::InstanceType {
        skiff_cloud::InstanceType {
            name: name.into(),
            cpu_millis: cpus * 1000,
            memory_bytes: gib << 30,
            price_micros_per_hour: 0,
            arch: "amd64".into(),
        }
    }

    #[test]
    fn a_type_named_alone_takes_its_shape_from_the_cloud_less_the_agents_reserve() {
        let mut s = site(&[("m5.large", None), ("c5.xlarge", Some("3500m"))]);
        let warning = merge(
            &mut s,
            Ok(vec![offered("m5.large", 2, 8), offered("c5.xlarge", 4, 8)]),
        )
        .unwrap();
        assert_eq!(warning, None);
        let t = &s.instance_types[0];
        assert_eq!(t.cpu.unwrap().millis(), 1900);
        assert_eq!(t.memory.unwrap().bytes(), (8 << 30) - (256 << 20));
        // A shape the config gives stays the config's.
        assert_eq!(s.instance_types[1].cpu.unwrap().millis(), 3500);
    }

    #[test]
    fn a_type_the_region_does_not_offer_is_an_error_naming_it() {
        let mut s = site(&[("m5.large", None)]);
        let e = merge(
            &mut s,
            Err(CloudError::Invalid(
                "instance type m9.huge is not offered in us-east-1".into(),
            )),
        )
        .unwrap_err();
        assert_eq!(
            format!("{:#}", anyhow::Error::from(e)),
            "site aws: invalid request: instance type m9.huge is not offered in us-east-1"
        );
        let e = merge(&mut s, Ok(vec![offered("t3.micro", 2, 1)])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "site aws: the cloud did not describe instance type m5.large"
        );
    }

    #[test]
    fn an_unreachable_cloud_is_a_warning_unless_a_shape_is_missing() {
        let down = || Err(CloudError::Other("connection refused".into()));
        let mut s = site(&[("c5.xlarge", Some("3500m"))]);
        let w = merge(&mut s, down()).unwrap().unwrap();
        assert!(w.contains("connection refused"), "{w}");
        let mut s = site(&[("m5.large", None)]);
        let e = merge(&mut s, down()).unwrap_err().to_string();
        assert!(
            e.starts_with("site aws: instance type m5.large gives no cpu and memory"),
            "{e}"
        );
    }
}
