//! Node networking pieces as root: the bridge and veth pairs between real
//! network namespaces (standing in for containers), addressed from the
//! pool.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::process::Command;

use skiff_agent::net::ipam::Ipam;
use skiff_agent::net::link::{self, Attachment};
use skiff_test_support::tools::require_root;

/// A network namespace (`ip netns`), deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        Netns(name.to_string())
    }
    fn fd(&self) -> OwnedFd {
        std::fs::File::open(format!("/run/netns/{}", self.0))
            .unwrap()
            .into()
    }
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A link on the host, deleted on drop.
struct HostLink(String);

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn containers_on_the_bridge_reach_the_gateway_and_each_other() {
    require_root();
    let tag = std::process::id() % 100_000;
    let dir = tempfile::tempdir().unwrap();
    let subnet = format!("10.{}.{}.0/24", 200 + tag % 50, tag % 250)
        .parse()
        .unwrap();
    let ipam = Ipam::open(&dir.path().join("net.redb"), subnet).unwrap();
    let bridge_name = format!("skt{tag}");
    let _bridge = HostLink(bridge_name.clone());
    let handle = link::connect().unwrap();
    let bridge = link::ensure_bridge(&handle, &bridge_name, ipam.gateway(), subnet, 1500)
        .await
        .unwrap();
    // Idempotent: a restarted agent finds it as it left it.
    assert_eq!(
        link::ensure_bridge(&handle, &bridge_name, ipam.gateway(), subnet, 1500)
            .await
            .unwrap(),
        bridge
    );

    let a = Netns::new(&format!("skta{tag}"));
    let b = Netns::new(&format!("sktb{tag}"));
    let mut addrs = Vec::new();
    for (ns, host_if) in [(&a, format!("ska{tag}")), (&b, format!("skb{tag}"))] {
        let address = ipam.allocate(&host_if).unwrap();
        addrs.push(address);
        link::attach(
            &handle,
            bridge,
            &host_if,
            &ns.fd(),
            Attachment {
                address,
                prefix_len: subnet.prefix_len(),
                gateway: ipam.gateway(),
                mtu: 1500,
            },
        )
        .await
        .unwrap();
    }
    // Inside: eth0 with the address and the MTU, a default route.
    let show = a.run(&["ip", "-4", "addr", "show", "eth0"]);
    assert!(
        text(&show).contains(&format!("inet {}/24", addrs[0])),
        "{}",
        text(&show)
    );
    assert!(text(&show).contains("mtu 1500"), "{}", text(&show));
    let route = a.run(&["ip", "route", "show", "default"]);
    assert!(
        text(&route).contains(&format!("default via {} dev eth0", ipam.gateway())),
        "{}",
        text(&route)
    );
    // The gateway and the other container answer.
    for target in [ipam.gateway(), addrs[1]] {
        let ping = a.run(&["busybox", "ping", "-c", "1", "-W", "2", &target.to_string()]);
        assert!(ping.status.success(), "ping {target}: {}", text(&ping));
    }

    // Detached: both ends gone, the address can go back to the pool.
    link::detach(&handle, &format!("ska{tag}")).await.unwrap();
    assert!(
        link::find(&handle, &format!("ska{tag}"))
            .await
            .unwrap()
            .is_none()
    );
    let gone = a.run(&["ip", "link", "show", "eth0"]);
    assert!(!gone.status.success(), "{}", text(&gone));
    // Detaching again is not an error.
    link::detach(&handle, &format!("ska{tag}")).await.unwrap();
    ipam.release(&format!("ska{tag}")).unwrap();
    assert_eq!(ipam.allocate("next").unwrap(), addrs[0]);
    assert_ne!(addrs[0], Ipv4Addr::UNSPECIFIED);
}

#[tokio::test]
async fn a_failed_attach_leaves_no_veth_behind() {
    require_root();
    let tag = std::process::id() % 100_000 + 1;
    let handle = link::connect().unwrap();
    let ns = Netns::new(&format!("sktc{tag}"));
    let fd = ns.fd();
    let host_if = format!("skc{tag}");
    // An index no bridge has: setting the controller fails after the move.
    let e = link::attach(
        &handle,
        u32::MAX - 7,
        &host_if,
        &fd,
        Attachment {
            address: Ipv4Addr::new(10, 255, 0, 2),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 255, 0, 1),
            mtu: 1500,
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains(&format!("veth {host_if}")), "{e}");
    assert!(link::find(&handle, &host_if).await.unwrap().is_none());
    let inside = ns.run(&["ip", "-o", "link"]);
    assert!(
        !text(&inside).contains(&format!("{host_if}p")),
        "{}",
        text(&inside)
    );
}
