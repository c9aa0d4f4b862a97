//! Node networking: bridged containers, their addresses, egress and
//! published ports.
//!
//! * [`ipam`]: container addresses from the node's subnet, crash-safe.
//! * [`link`]: the node bridge and container veth pairs (rtnetlink).
//! * [`nat`]: Skiff's own nftables table (egress, published ports).
//! * [`ports`]: which host ports may be published.
//! * [`netns`]: work inside a container's network namespace.
//!
//! [`NodeNet`] ties them together for the runtime. A bridged container
//! gets its address at create (kept until it is removed, so a restart
//! keeps it) and written into its `config.json` ([`Attachment`]); its
//! shim connects the new network namespace to the bridge before the
//! container's process runs ([`attach_container`]). When the container's
//! last process ends, the kernel removes its namespace and with it both
//! ends of the veth pair. Published ports are DNAT rules that the agent
//! rewrites whole whenever the set of running publishers changes.

pub mod ipam;
pub mod link;
pub mod nat;
pub mod netns;
pub mod ports;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Mutex;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use nat::{Nat, PortMapping};

/// The `[network]` section of the agent's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// The node bridge.
    pub bridge: String,
    /// Container addresses come from here; the first is the bridge's.
    /// Unset: the subnet the gateway gave the node, or `10.88.0.0/16`.
    pub subnet: Option<Ipv4Net>,
    /// MTU of the bridge and container interfaces; 0 takes the uplink's
    /// (the interface of the default route).
    pub mtu: u32,
    /// Name servers for containers; empty takes the host's (minus
    /// loopback ones, which do not answer inside a container).
    pub dns: Vec<IpAddr>,
    /// Skiff's nftables table (family `ip`).
    pub nft_table: String,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            bridge: "skiff0".into(),
            subnet: None,
            mtu: 0,
            dns: Vec::new(),
            nft_table: nat::TABLE.into(),
        }
    }
}

impl NetworkConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 15
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !name_ok(&self.bridge) {
            return Err((
                "network.bridge".into(),
                format!(
                    "{:?} is not an interface name (1-15 letters, digits, '-', '_', '.')",
                    self.bridge
                ),
            ));
        }
        if let Some(subnet) = self.subnet
            && subnet.prefix_len() > 30
        {
            return Err((
                "network.subnet".into(),
                format!("{subnet} is too small for containers (at least /30)"),
            ));
        }
        if self.mtu != 0 && !(576..=65_535).contains(&self.mtu) {
            return Err((
                "network.mtu".into(),
                format!("{} is not between 576 and 65535", self.mtu),
            ));
        }
        if !name_ok(&self.nft_table) {
            return Err((
                "network.nft_table".into(),
                format!("{:?} is not a table name", self.nft_table),
            ));
        }
        Ok(())
    }
}

/// The node subnet when neither the config nor the gateway gives one.
pub const DEFAULT_SUBNET: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(10, 88, 0, 0), 16) {
    Ok(n) => n,
    Err(_) => panic!("valid"),
};

/// What a bridged container's shim sets up, decided at create and kept in
/// its `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub bridge: String,
    /// The host end of the veth pair.
    pub host_if: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// The fleet namespace of its workload (none: a container run on the
    /// node by hand, in no namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The host end of a container's veth pair: `sk` and the id's first 12
/// characters (interface names have at most 15; the peer adds a `p`).
pub fn host_if(id: &str) -> String {
    format!("sk{}", &id[..id.len().min(12)])
}

/// A node networking failure, naming what was being set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Ipam(#[from] ipam::IpamError),
    #[error(transparent)]
    Port(#[from] ports::PortError),
    #[error("network bridge {bridge}: {error}")]
    Bridge { bridge: String, error: String },
    #[error(transparent)]
    Nat(#[from] nat::NatError),
    #[error("{0}")]
    Invalid(String),
}

/// The node's networking, as the runtime uses it.
#[derive(Debug)]
pub struct NodeNet {
    config: NetworkConfig,
    ipam: ipam::Ipam,
    nat: Nat,
    /// The MTU in use, once the bridge is up.
    ready: tokio::sync::Mutex<Option<u32>>,
    /// Published ports of running (and starting) containers, by id, with
    /// the container's name.
    published: Mutex<BTreeMap<String, (String, Vec<PortMapping>)>>,
    /// Held while the table is rewritten, so the last rewrite always has
    /// the latest ports.
    applying: tokio::sync::Mutex<()>,
    /// Running containers in a namespace, and who may reach whom.
    isolation: Mutex<nat::Isolation>,
    /// Running containers' (namespace, address), by id.
    members: Mutex<BTreeMap<String, (String, std::net::Ipv4Addr)>>,
}

impl NodeNet {
    /// Opens the address pool under `state_dir` (the bridge and rules come
    /// with the first bridged container, see [`NodeNet::ensure`]).
    pub fn open(state_dir: &Path, config: &NetworkConfig) -> Result<Self, NetError> {
        let subnet = config.subnet.unwrap_or(DEFAULT_SUBNET);
        let ipam = ipam::Ipam::open(&state_dir.join("network.redb"), subnet)?;
        Ok(Self {
            nat: Nat {
                table: config.nft_table.clone(),
                bridge: config.bridge.clone(),
                subnet: ipam.subnet(),
            },
            config: config.clone(),
            ipam,
            ready: tokio::sync::Mutex::new(None),
            published: Mutex::new(BTreeMap::new()),
            applying: tokio::sync::Mutex::new(()),
            isolation: Mutex::new(nat::Isolation::default()),
            members: Mutex::new(BTreeMap::new()),
        })
    }

    /// Makes sure the bridge is up with the gateway address and Skiff's
    /// table holds the egress rules; returns the MTU.
    pub async fn ensure(&self) -> Result<u32, NetError> {
        let mut ready = self.ready.lock().await;
        if let Some(mtu) = *ready {
            return Ok(mtu);
        }
        let bridge_err = |e: &dyn std::fmt::Display| NetError::Bridge {
            bridge: self.config.bridge.clone(),
            error: e.to_string(),
        };
        let handle = link::connect().map_err(|e| bridge_err(&e))?;
        let mtu = match self.config.mtu {
            0 => link::uplink_mtu(&handle)
                .await
                .map_err(|e| bridge_err(&e))?
                .unwrap_or(1500),
            m => m,
        };
        link::ensure_bridge(
            &handle,
            &self.config.bridge,
            self.ipam.gateway(),
            self.ipam.subnet(),
            mtu,
        )
        .await
        .map_err(|e| bridge_err(&e))?;
        {
            let _one_at_a_time = self.applying.lock().await;
            let ports = self.all_published();
            let isolation = self.isolation();
            let nat = self.nat.clone();
            tokio::task::spawn_blocking(move || nat.apply(&ports, &isolation))
                .await
                .map_err(|e| NetError::Invalid(e.to_string()))??;
        }
        *ready = Some(mtu);
        Ok(mtu)
    }

    /// An address for container `id` with `ports` published (not yet
    /// active): refuses ports that another container publishes or a host
    /// process holds. `durable`: committed to disk before it returns.
    pub async fn prepare(
        &self,
        id: &str,
        ports: &[skiff_proto::PortSpec],
        durable: bool,
        namespace: Option<String>,
    ) -> Result<Attachment, NetError> {
        let mtu = self.ensure().await?;
        let address = self.ipam.allocate(id, durable)?;
        let mut mappings = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            let bad = |why: &str| NetError::Invalid(format!("ports[{i}]: {why}"));
            let Some(host_port) = p.host else {
                continue;
            };
            let host_ip = match p.host_ip {
                None => None,
                Some(IpAddr::V4(ip)) => Some(ip),
                Some(IpAddr::V6(ip)) => {
                    return Err(bad(&format!("{ip}: IPv6 host addresses are not supported")));
                }
            };
            let port = |n: u32| u16::try_from(n).ok().filter(|n| *n > 0);
            let (Some(host_port), Some(container_port)) = (port(host_port), port(p.container))
            else {
                return Err(bad("not a port"));
            };
            mappings.push(PortMapping {
                host_ip,
                host_port,
                proto: match p.protocol {
                    skiff_proto::Protocol::Tcp => nat::Proto::Tcp,
                    skiff_proto::Protocol::Udp => nat::Proto::Udp,
                },
                container_ip: address,
                container_port,
            });
        }
        let checked = self.check_ports(id, &mappings);
        if let Err(e) = checked {
            let _ = self.ipam.release(id);
            return Err(e);
        }
        Ok(Attachment {
            bridge: self.config.bridge.clone(),
            host_if: host_if(id),
            address,
            prefix_len: self.ipam.subnet().prefix_len(),
            gateway: self.ipam.gateway(),
            mtu,
            ports: mappings,
            namespace,
        })
    }

    /// Refuses a port published by another running container, or held by
    /// a process on the host.
    pub fn check_ports(&self, id: &str, mappings: &[PortMapping]) -> Result<(), NetError> {
        let published = self.published.lock().expect("lock");
        check_against(&published, id, mappings)
    }

    fn all_published(&self) -> Vec<PortMapping> {
        self.published
            .lock()
            .expect("lock")
            .values()
            .flat_map(|(_, ps)| ps.iter().cloned())
            .collect()
    }

    /// The isolation rules' input now.
    fn isolation(&self) -> nat::Isolation {
        let mut iso = self.isolation.lock().expect("lock").clone();
        iso.members.clear();
        for (ns, addr) in self.members.lock().expect("lock").values() {
            iso.members.entry(ns.clone()).or_default().insert(*addr);
        }
        iso
    }

    async fn apply(&self) -> Result<(), NetError> {
        self.ensure().await?;
        let _one_at_a_time = self.applying.lock().await;
        let ports = self.all_published();
        let isolation = self.isolation();
        let nat = self.nat.clone();
        tokio::task::spawn_blocking(move || nat.apply(&ports, &isolation))
            .await
            .map_err(|e| NetError::Invalid(e.to_string()))??;
        Ok(())
    }

    /// Which other namespaces may reach each namespace's containers (from
    /// the gateway's desired state); the rules are rewritten if it changed.
    pub async fn set_allow_from(
        &self,
        allow_from: BTreeMap<String, Vec<String>>,
    ) -> Result<(), NetError> {
        let changed = {
            let mut iso = self.isolation.lock().expect("lock");
            let changed = iso.allow_from != allow_from;
            iso.allow_from = allow_from;
            changed
        };
        let any = !self.members.lock().expect("lock").is_empty();
        if changed && any {
            self.apply().await
        } else {
            Ok(())
        }
    }

    /// Sets (`Some`) or ends the membership of container `id`; whether
    /// the isolation rules change with it (with a single namespace on the
    /// node they never do: nothing is kept out, and no rewrite is needed).
    fn set_member(&self, id: &str, a: Option<&Attachment>) -> bool {
        let before = self.isolation();
        {
            let mut members = self.members.lock().expect("lock");
            match a.and_then(|a| Some((a.namespace.clone()?, a.address))) {
                Some(m) => {
                    members.insert(id.to_string(), m);
                }
                None => {
                    members.remove(id);
                }
            }
        }
        before.rules() != self.isolation().rules()
    }

    /// Makes the container's published ports live (before it starts, so
    /// they answer as soon as it listens). Checks them again: the host may
    /// have changed since create.
    pub async fn publish(&self, id: &str, name: &str, a: &Attachment) -> Result<(), NetError> {
        let joined = self.set_member(id, Some(a));
        if a.ports.is_empty() {
            return if joined { self.apply().await } else { Ok(()) };
        }
        {
            let published = self.published.lock().expect("lock");
            if !joined && published.get(id).is_some_and(|(_, p)| p == &a.ports) {
                return Ok(());
            }
        }
        {
            // Checked and taken at once: two starts cannot both get a port.
            let mut published = self.published.lock().expect("lock");
            check_against(&published, id, &a.ports)?;
            published.insert(id.to_string(), (name.to_string(), a.ports.clone()));
        }
        let r = self.apply().await;
        if r.is_err() {
            self.published.lock().expect("lock").remove(id);
        }
        r
    }

    /// Takes the container's published ports down (it stopped).
    pub async fn unpublish(&self, id: &str) -> Result<(), NetError> {
        let had = self.published.lock().expect("lock").remove(id).is_some();
        let left = self.set_member(id, None);
        if had || left {
            self.apply().await
        } else {
            Ok(())
        }
    }

    /// Everything of a removed container: its ports and its address. Its
    /// veth pair went with its network namespace (the kernel removes both
    /// ends when the namespace's last process has gone; deleting it here
    /// would wait for that, 10-20 ms).
    pub async fn release(&self, id: &str) -> Result<(), NetError> {
        self.unpublish(id).await?;
        self.ipam.release(id)?;
        Ok(())
    }

    /// After an agent restart: `containers` are those that exist (with
    /// whether they run). Addresses of the others are freed, stray veth
    /// pairs removed, and the running ones' ports published again.
    pub async fn adopt(
        &self,
        containers: &[(String, String, Attachment, bool)],
    ) -> Result<(), NetError> {
        let live: HashSet<String> = containers.iter().map(|(id, ..)| id.clone()).collect();
        for (id, _, a, _) in containers {
            self.ipam.claim(id, a.address)?;
        }
        let freed = self.ipam.reclaim(&live)?;
        if freed > 0 {
            tracing::info!(freed, "reclaimed addresses of containers that are gone");
        }
        {
            let mut published = self.published.lock().expect("lock");
            published.clear();
            for (id, name, a, running) in containers {
                if *running && !a.ports.is_empty() {
                    published.insert(id.clone(), (name.clone(), a.ports.clone()));
                }
            }
            let mut members = self.members.lock().expect("lock");
            members.clear();
            for (id, _, a, running) in containers {
                if let (true, Some(ns)) = (*running, &a.namespace) {
                    members.insert(id.clone(), (ns.clone(), a.address));
                }
            }
        }
        if let Err(e) = self.ensure().await {
            if containers.is_empty() {
                // Containers on the host or no network still work; a
                // bridged one will say what is wrong.
                tracing::warn!(error = %e, "bridge networking is not available");
                return Ok(());
            }
            return Err(e);
        }
        // Links on the bridge of containers that do not run, and pairs a
        // shim killed mid-start left outside the bridge.
        let running: HashSet<String> = containers
            .iter()
            .filter(|c| c.3)
            .map(|c| c.2.host_if.clone())
            .collect();
        let handle = link::connect().map_err(|e| NetError::Bridge {
            bridge: self.config.bridge.clone(),
            error: e.to_string(),
        })?;
        let mut stray = link::veths_on(&handle, &self.config.bridge)
            .await
            .unwrap_or_default();
        for (_, _, a, is_running) in containers {
            if !is_running {
                stray.extend([a.host_if.clone(), format!("{}p", a.host_if)]);
            }
        }
        for name in stray.iter().filter(|n| !running.contains(*n)) {
            if link::find(&handle, name).await.ok().flatten().is_some() {
                tracing::info!(link = %name, "removing a stray container link");
                let _ = link::detach(&handle, name).await;
            }
        }
        self.apply().await
    }

    /// How many containers can hold an address at once.
    pub fn address_capacity(&self) -> u32 {
        self.ipam.capacity()
    }

    /// The resolver configuration for containers of this node.
    pub fn resolv_conf(&self) -> String {
        if self.config.dns.is_empty() {
            return host_resolv_conf();
        }
        let mut out = String::new();
        for ip in &self.config.dns {
            out.push_str(&format!("nameserver {ip}\n"));
        }
        // Keep the host's search domains and options.
        for line in std::fs::read_to_string("/etc/resolv.conf")
            .unwrap_or_default()
            .lines()
        {
            if line.starts_with("search") || line.starts_with("options") {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// Refuses `mappings` of container `id` that overlap another container's
/// in `published` or a port a host process holds.
fn check_against(
    published: &BTreeMap<String, (String, Vec<PortMapping>)>,
    id: &str,
    mappings: &[PortMapping],
) -> Result<(), NetError> {
    let others: Vec<(String, PortMapping)> = published
        .iter()
        .filter(|(other, _)| other.as_str() != id)
        .flat_map(|(_, (name, ps))| ps.iter().map(|p| (name.clone(), p.clone())))
        .collect();
    for m in mappings {
        ports::check(m, &others)?;
    }
    Ok(())
}

/// The host's resolver configuration, minus loopback name servers that do
/// not work inside a container's own network namespace. When only
/// loopback ones are left and systemd-resolved runs, its upstream list is
/// used (as Docker does); without any, Google's public resolvers.
pub fn host_resolv_conf() -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let (out, servers) = without_loopback(&host);
    if servers > 0 {
        return out;
    }
    if let Ok(upstream) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf") {
        let (up, n) = without_loopback(&upstream);
        if n > 0 {
            return up;
        }
    }
    format!("{out}nameserver 8.8.8.8\nnameserver 8.8.4.4\n")
}

/// A resolver configuration without its loopback name servers, and how
/// many servers are left.
fn without_loopback(text: &str) -> (String, usize) {
    let mut out = String::new();
    let mut servers = 0;
    for line in text.lines() {
        let server = line
            .strip_prefix("nameserver")
            .map(str::trim)
            .map(|ip| ip.parse::<IpAddr>());
        match server {
            Some(Ok(ip)) if ip.is_loopback() => continue,
            Some(_) => servers += 1,
            None => {}
        }
        out.push_str(line);
        out.push('\n');
    }
    (out, servers)
}

/// In the shim, between the clone of a bridged container's first process
/// (`pid`) and its exec: its network namespace joins the bridge. A veth
/// pair of an earlier run still being torn down is removed first.
pub fn attach_container(a: &Attachment, pid: i32) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("network: {e}"))?;
    rt.block_on(async {
        let handle = link::connect().map_err(|e| e.to_string())?;
        let bridge = link::find(&handle, &a.bridge)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("network bridge {} is missing", a.bridge))?;
        link::detach(&handle, &a.host_if)
            .await
            .map_err(|e| e.to_string())?;
        let netns: std::os::fd::OwnedFd = std::fs::File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|e| format!("network namespace of {pid}: {e}"))?
            .into();
        link::attach(
            &handle,
            bridge.header.index,
            &a.host_if,
            &netns,
            link::Attachment {
                address: a.address,
                prefix_len: a.prefix_len,
                gateway: a.gateway,
                mtu: a.mtu,
            },
        )
        .await
        .map_err(|e| format!("network: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolvers_are_dropped_and_the_rest_kept() {
        let host = "# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\nsearch corp.example\noptions edns0\n";
        let (out, n) = without_loopback(host);
        assert_eq!(
            out,
            "# generated\nnameserver 10.0.0.2\nsearch corp.example\noptions edns0\n"
        );
        assert_eq!(n, 1);
        assert_eq!(without_loopback("nameserver 127.0.0.53\n").1, 0);
    }

    #[test]
    fn bad_network_config_names_the_key() {
        let mut c = NetworkConfig::default();
        assert_eq!(c.validate(), Ok(()));
        c.mtu = 100;
        assert_eq!(c.validate().unwrap_err().0, "network.mtu");
        c = NetworkConfig {
            nft_table: "no spaces".into(),
            ..NetworkConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "network.nft_table");
    }

    #[test]
    fn host_ends_fit_an_interface_name() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(host_if(id), "sk0123456789ab");
        assert!(host_if(id).len() <= 15);
    }
}
