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
//! a host off (both ways) until [`Host::heal`]; [`Fleet::reboot`] reboots
//! one (everything of it killed, its network made afresh, its agent
//! started again); [`Fleet::cut_registry`] makes the registry unreachable
//! from every host until the guard it gives is dropped.

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
    /// Its number on the LAN.
    index: u8,
    /// Its address on the LAN.
    pub address: Ipv4Addr,
    /// Its end of the LAN, on this machine.
    link: HostLink,
    // Dropped after the link (whose peer inside goes with it).
    pub netns: Netns,
}

/// Runs `cmd` with `sh -c`; it must succeed.
fn sh(cmd: &str) {
    let o = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
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
        let link = HostLink(format!("skh{n}v{i}"));
        let address = self.wire(&name, i);
        Host {
            name,
            index: i,
            address,
            link,
            netns,
        }
    }

    /// Host `host` rebooted, as far as its network goes: its namespace
    /// made afresh (the bridge, nftables table and container links of the
    /// old one gone with it), with the same name, link and address.
    pub fn reboot(&self, host: &Host) {
        run(&format!("ip netns del {}", host.name));
        run(&format!("ip netns add {}", host.name));
        self.wire(&host.name, host.index);
    }

    /// Links namespace `name` to the LAN as host `i`: its address.
    fn wire(&self, name: &str, i: u8) -> Ipv4Addr {
        let n = self.slot.n;
        let (outer, inner) = (format!("skh{n}v{i}"), format!("skh{n}i{i}"));
        let _ = Command::new("ip").args(["link", "del", &outer]).output();
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
        address
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
    /// The directory it made for itself ([`Fleet::start_temp`]): last.
    dir: Option<tempfile::TempDir>,
}

impl Fleet {
    /// With the gateway's `config` (TOML; its `advertise` is added), its
    /// state and the agents' under `dir`, every node in site `default`.
    pub fn start(dir: &std::path::Path, config: &str, nodes: &[&str]) -> Fleet {
        let nodes: Vec<(&str, &str)> = nodes.iter().map(|n| (*n, "default")).collect();
        Fleet::start_in_sites(dir, config, &nodes)
    }

    /// [`Fleet::start`] with each node (name, site) joined to its site.
    pub fn start_in_sites(dir: &std::path::Path, config: &str, nodes: &[(&str, &str)]) -> Fleet {
        let lan = Lan::new();
        let registry = skiff_test_support::registry::Registry::start_on(lan.address()).unwrap();
        let image = skiff_test_support::images::OciImage::busybox(&dir.join("image"), "test", &[])
            .and_then(|i| i.push(&registry, "skiff/busybox"))
            .unwrap();
        // First: `config` may end in a table.
        let config = format!("advertise = [\"{}\"]\n{config}", lan.address());
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
            .map(|(n, h)| crate::Agent::joined_on(dir, *n, &gateway, h, &images))
            .collect();
        Fleet {
            agents,
            gateway,
            hosts,
            image,
            registry,
            lan,
            dir: None,
        }
    }

    /// [`Fleet::start`] in a temporary directory of its own, removed
    /// after everything else of it.
    pub fn start_temp(config: &str, nodes: &[&str]) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fleet::start(dir.path(), config, nodes);
        f.dir = Some(dir);
        f
    }
}

impl Fleet {
    /// Reboots host `i`: its agent killed (`kill -9`) and every container
    /// of it with its shim, their mounts and cgroups gone, its network
    /// made afresh; then its agent is started again on the same state
    /// directory, as a host's service manager would at boot.
    pub fn reboot(&mut self, i: usize) {
        let agent = &mut self.agents[i];
        let containers = agent.containers();
        agent.kill9();
        let pids: Vec<i32> = containers
            .iter()
            .flat_map(|c| [&c["pid"], &c["shim_pid"]])
            .filter_map(|p| p.as_i64())
            .map(|p| p as i32)
            .collect();
        for &pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        crate::wait_for(
            std::time::Duration::from_secs(10),
            || {
                pids.iter()
                    .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            },
            || format!("{pids:?} outlived the reboot"),
        );
        // What a reboot takes with it: every mount under the agent's
        // directory (root filesystems, the secrets tmpfs) and the
        // containers' cgroups.
        if let Err(e) = crate::unmount_under(&agent.dir) {
            panic!("{e}");
        }
        for c in &containers {
            let Some(id) = c["id"].as_str() else { continue };
            for controller in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
                let _ = std::fs::remove_dir(controller.path().join("skiff").join(id));
            }
        }
        // And every process left in the host's network (its agent's
        // warm shims, anything else of it).
        kill_in_netns(&self.hosts[i].name);
        self.lan.reboot(&self.hosts[i]);
        agent.restart();
    }

    /// Makes the registry unreachable from every host (its packets
    /// dropped, as a lost route or firewall would) until the guard is
    /// dropped.
    pub fn cut_registry(&self) -> RegistryCut {
        let table = format!("skiff-fault-{}", self.lan.slot.n);
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &table])
            .output();
        let addr = self.registry.addr();
        let rules = format!(
            "table inet {table} {{\n chain input {{\n  type filter hook input priority -10; policy accept;\n  \
             ip daddr {} tcp dport {} drop\n }}\n}}\n",
            addr.ip(),
            addr.port()
        );
        let mut nft = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft");
        {
            use std::io::Write;
            nft.stdin
                .take()
                .unwrap()
                .write_all(rules.as_bytes())
                .unwrap();
        }
        assert!(nft.wait().unwrap().success(), "nft: {rules}");
        RegistryCut(table)
    }
}

/// Kills every process in network namespace `name` (`/run/netns/NAME`).
fn kill_in_netns(name: &str) {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(format!("/run/netns/{name}"))
        .unwrap()
        .ino();
    let theirs = std::ffi::OsString::from(format!("net:[{ino}]"));
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_link(p.path().join("ns/net")).is_ok_and(|l| l.as_os_str() == theirs) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The registry cut off ([`Fleet::cut_registry`]) while it lives.
#[derive(Debug)]
pub struct RegistryCut(String);

impl Drop for RegistryCut {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.0])
            .output();
    }
}

/// A small filesystem of its own (ext4 in a loop-mounted file, no blocks
/// reserved for root) mounted on a directory: a host's disk that fills.
/// Most of it can be taken by a ballast file, freed later as an operator
/// clearing space would (ext4 cannot be grown online in every sandbox).
/// Unmounted (lazily) and its file removed when dropped.
#[derive(Debug)]
pub struct LoopDisk {
    pub mount: std::path::PathBuf,
    image: std::path::PathBuf,
}

impl LoopDisk {
    /// `size_mib` MiB mounted on `mount` (made if missing), of which all
    /// but `free_mib` MiB are taken by a ballast file.
    pub fn mount(mount: &std::path::Path, size_mib: u64, free_mib: u64) -> LoopDisk {
        std::fs::create_dir_all(mount).unwrap();
        let image = mount.with_extension("ext4");
        let disk = LoopDisk {
            mount: mount.to_path_buf(),
            image,
        };
        sh(&format!(
            "truncate -s {size_mib}M {0} && mkfs.ext4 -q -m 0 {0} && mount -o loop {0} {1}",
            disk.image.display(),
            mount.display()
        ));
        let ballast = disk.available().saturating_sub(free_mib << 20);
        if ballast > 0 {
            sh(&format!(
                "fallocate -l {ballast} {}",
                disk.ballast().display()
            ));
        }
        disk
    }

    fn ballast(&self) -> std::path::PathBuf {
        self.mount.join("ballast")
    }

    /// Bytes free on it.
    pub fn available(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.mount).unwrap();
        s.blocks_available() as u64 * s.fragment_size() as u64
    }

    /// Removes the ballast: the space it took is free again.
    pub fn free_ballast(&self) {
        std::fs::remove_file(self.ballast()).unwrap();
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.image);
    }
}
