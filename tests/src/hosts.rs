//! Hosts of a fleet on one machine: each host is a network namespace with
//! its own address on a LAN bridge shared with this machine, which is the
//! LAN's first address (where the gateway and the registry listen). An
//! agent started on a host ([`crate::Agent::joined_on`]) has the host's
//! network and nothing else of it: its bridge, nftables table and
//! containers' links are the host's, as on a machine of its own.
//!
//! The LAN takes a test network slot ([`NetSlot`]): bridge `sktb<n>`,
//! `10.251.<n>.0/24`. Dropping a host deletes its link and namespace;
//! dropping the LAN gives back the slot, which deletes the bridge. [`Host::partition`] cuts
//! a host off (both ways) until [`Host::heal`].

use std::net::Ipv4Addr;
use std::process::Command;

use skiff_test_support::net::NetSlot;
use skiff_test_support::netns::{HostLink, Netns};

/// The shared LAN.
#[derive(Debug)]
pub struct Lan {
    slot: NetSlot,
}

/// One host on the LAN.
#[derive(Debug)]
pub struct Host {
    pub name: String,
    /// Its address on the LAN.
    pub address: Ipv4Addr,
    /// Its end of the LAN, on this machine.
    link: HostLink,
    // Dropped after the link (whose peer inside goes with it).
    pub netns: Netns,
}

fn run(cmd: &str) {
    let args: Vec<&str> = cmd.split(' ').collect();
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Lan {
    pub fn new() -> Lan {
        let slot = NetSlot::take().unwrap();
        let lan = Lan { slot };
        run(&format!("ip link add {} type bridge", lan.slot.bridge()));
        run(&format!(
            "ip addr add {}/24 dev {}",
            lan.address(),
            lan.slot.bridge()
        ));
        run(&format!("ip link set {} up", lan.slot.bridge()));
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
        lan
    }

    /// This machine's address on the LAN.
    pub fn address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 251, self.slot.n as u8, 1)
    }

    /// Host number `i` (from 0): namespace `skh<n>-<i>`, address
    /// `10.251.<n>.<i + 2>`, its default route through this machine.
    pub fn host(&self, i: u8) -> Host {
        let n = self.slot.n;
        let name = format!("skh{n}-{i}");
        let netns = Netns::new(&name).unwrap();
        let (outer, inner) = (format!("skh{n}v{i}"), format!("skh{n}i{i}"));
        let _ = Command::new("ip").args(["link", "del", &outer]).output();
        let link = HostLink(outer.clone());
        let address = Ipv4Addr::new(10, 251, n as u8, i + 2);
        for cmd in [
            format!("ip link add {outer} type veth peer name {inner}"),
            format!("ip link set {inner} netns {name}"),
            format!("ip link set {outer} master {} up", self.slot.bridge()),
            format!("ip -n {name} addr add {address}/24 dev {inner}"),
            format!("ip -n {name} link set {inner} up"),
            format!("ip -n {name} link set lo up"),
            format!("ip -n {name} route add default via {}", self.address()),
        ] {
            run(&cmd);
        }
        Host {
            name,
            address,
            link,
            netns,
        }
    }
}

impl Default for Lan {
    fn default() -> Self {
        Lan::new()
    }
}

impl Host {
    /// Routes `subnet` through `via` (another host of the LAN), as an
    /// operator routing the node subnets would.
    pub fn route(&self, subnet: &str, via: Ipv4Addr) {
        run(&format!(
            "ip -n {} route replace {subnet} via {via}",
            self.name
        ));
    }

    /// Cuts it off the LAN, both ways (its link down, as a cable pulled
    /// or a WAN link lost): what runs on it runs on, unreachable.
    pub fn partition(&self) {
        run(&format!("ip link set {} down", self.link.0));
    }

    /// Puts it back on the LAN.
    pub fn heal(&self) {
        run(&format!("ip link set {} up", self.link.0));
    }
}

/// A fleet on a LAN: a registry with the busybox test image and a gateway
/// on this machine's LAN address, and one agent joined on a host of its
/// own for each node name.
#[derive(Debug)]
pub struct Fleet {
    // In drop order: agents (and their containers) before their hosts'
    // namespaces, the hosts before the LAN.
    pub agents: Vec<crate::Agent>,
    pub gateway: crate::Gateway,
    pub hosts: Vec<Host>,
    /// The busybox image's reference.
    pub image: String,
    pub registry: skiff_test_support::registry::Registry,
    pub lan: Lan,
}

impl Fleet {
    /// With the gateway's `config` (TOML; its `advertise` is added), its
    /// state and the agents' under `dir`.
    pub fn start(dir: &std::path::Path, config: &str, nodes: &[&str]) -> Fleet {
        let lan = Lan::new();
        let registry = skiff_test_support::registry::Registry::start_on(lan.address()).unwrap();
        let image = skiff_test_support::images::OciImage::busybox(&dir.join("image"), "test", &[])
            .and_then(|i| i.push(&registry, "skiff/busybox"))
            .unwrap();
        let config = format!("{config}advertise = [\"{}\"]\n", lan.address());
        let gateway =
            crate::Gateway::start_on(&dir.join("gw"), &config, &lan.address().to_string());
        let images = format!(
            "[images]\ninsecure_registries = [\"{}\"]\n",
            registry.host()
        );
        let hosts: Vec<Host> = (0..nodes.len()).map(|i| lan.host(i as u8)).collect();
        let agents = nodes
            .iter()
            .zip(&hosts)
            .map(|(n, h)| crate::Agent::joined_on(dir, n, &gateway, h, &images))
            .collect();
        Fleet {
            agents,
            gateway,
            hosts,
            image,
            registry,
            lan,
        }
    }
}
