//! Node networking pieces as root: the bridge and veth pairs between real
//! network namespaces (standing in for containers), addressed from the
//! pool.

use std::net::Ipv4Addr;
use std::process::Command;

use skiff_agent::net::ipam::Ipam;
use skiff_agent::net::link::{self, Attachment};
use skiff_agent::net::nat::{Nat, PortMapping, Proto};
use skiff_test_support::netns::{
    self, HostLink, Netns, caller, curl, curl_until_up, nft_table, text,
};
use skiff_test_support::procs::ChildGuard;
use skiff_test_support::tools::require_root;

/// A node: an address pool and a bridge (removed on drop).
struct Node {
    dir: tempfile::TempDir,
    ipam: Ipam,
    subnet: ipnet::Ipv4Net,
    name: String,
    index: u32,
    handle: rtnetlink::Handle,
    _bridge: HostLink,
}

impl Node {
    async fn new(tag: u32, first: u32) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let subnet: ipnet::Ipv4Net = format!("10.{first}.{}.0/24", tag % 250).parse().unwrap();
        let ipam = Ipam::open(&dir.path().join("net.redb"), subnet).unwrap();
        let name = format!("skt{tag}");
        let bridge = HostLink(name.clone());
        let handle = link::connect().unwrap();
        let index = link::ensure_bridge(&handle, &name, ipam.gateway(), subnet, 1500)
            .await
            .unwrap();
        Node {
            dir,
            ipam,
            subnet,
            name,
            index,
            handle,
            _bridge: bridge,
        }
    }

    /// Attaches `ns` with the host end `host_if`; returns its address.
    async fn attach(&self, ns: &Netns, host_if: &str) -> Ipv4Addr {
        let address = self.ipam.allocate(host_if, true).unwrap();
        link::attach(
            &self.handle,
            self.index,
            host_if,
            &ns.fd().unwrap(),
            Attachment {
                address,
                prefix_len: self.subnet.prefix_len(),
                gateway: self.ipam.gateway(),
                mtu: 1500,
            },
        )
        .await
        .unwrap();
        address
    }
}

/// Another host on a link of its own (`10.F.T.1` here, `10.F.T.2`
/// there); returns it, the host's end of the link, and `10.F.T`.
fn outside_host(tag: u32, first: u32) -> (Netns, HostLink, String) {
    let net = format!("10.{first}.{}", tag % 250);
    let (ns, link) =
        netns::outside_host(&format!("skto{tag}"), &format!("sko{tag}"), &net).unwrap();
    (ns, link, net)
}

fn caller_server(ns: &Netns, dir: &std::path::Path, port: u16) -> ChildGuard {
    netns::caller_server(ns, dir, port).unwrap()
}

/// A test's own nftables table, removed on drop.
struct TableGuard(Nat);

impl Drop for TableGuard {
    fn drop(&mut self) {
        let _ = self.0.remove();
    }
}

impl Node {
    /// The node's NAT rules, in a table of this test's own.
    fn nat(&self, tag: u32) -> TableGuard {
        TableGuard(Nat {
            table: format!("skifft{tag}"),
            bridge: self.name.clone(),
            subnet: self.subnet,
        })
    }
}

#[tokio::test]
async fn containers_on_the_bridge_reach_the_gateway_and_each_other() {
    require_root();
    let tag = std::process::id() % 100_000;
    let node = Node::new(tag, 200 + tag % 50).await;
    let (ipam, handle, subnet) = (&node.ipam, &node.handle, node.subnet);
    // Idempotent: a restarted agent finds it as it left it.
    assert_eq!(
        link::ensure_bridge(handle, &node.name, ipam.gateway(), subnet, 1500)
            .await
            .unwrap(),
        node.index
    );

    let a = Netns::new(&format!("skta{tag}")).unwrap();
    let b = Netns::new(&format!("sktb{tag}")).unwrap();
    let addrs = [
        node.attach(&a, &format!("ska{tag}")).await,
        node.attach(&b, &format!("skb{tag}")).await,
    ];
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
    link::detach(handle, &format!("ska{tag}")).await.unwrap();
    assert!(
        link::find(handle, &format!("ska{tag}"))
            .await
            .unwrap()
            .is_none()
    );
    let gone = a.run(&["ip", "link", "show", "eth0"]);
    assert!(!gone.status.success(), "{}", text(&gone));
    // Detaching again is not an error.
    link::detach(handle, &format!("ska{tag}")).await.unwrap();
    ipam.release(&format!("ska{tag}")).unwrap();
    assert_eq!(ipam.allocate("next", true).unwrap(), addrs[0]);
    assert_ne!(addrs[0], Ipv4Addr::UNSPECIFIED);
}

#[tokio::test]
async fn a_failed_attach_leaves_no_veth_behind() {
    require_root();
    let tag = std::process::id() % 100_000 + 1;
    let handle = link::connect().unwrap();
    let ns = Netns::new(&format!("sktc{tag}")).unwrap();
    let fd = ns.fd().unwrap();
    let host_if = format!("skc{tag}");
    // An index no bridge has: the pair cannot be put on it.
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
    assert!(!text(&inside).contains("eth0"), "{}", text(&inside));
}

#[tokio::test]
async fn egress_reaches_an_outside_host_through_snat() {
    require_root();
    let tag = std::process::id() % 100_000 + 2;
    let node = Node::new(tag, 150 + tag % 40).await;
    let ctr = Netns::new(&format!("sktd{tag}")).unwrap();
    let host_if = format!("skd{tag}");
    node.attach(&ctr, &host_if).await;

    // "Outside": another host on a link of its own, which knows no route
    // to the container subnet, serving its caller's address.
    let (outside, _uplink, net) = outside_host(tag, 251);
    let _server = caller_server(&outside, node.dir.path(), 8080);
    let url = format!("http://{net}.2:8080/cgi-bin/ip");
    // The server is up (from the host, which it can answer)...
    assert_eq!(caller(&curl_until_up(None, &url)), format!("{net}.1"));
    // ...but without Skiff's rules it cannot answer the container.
    let before = curl(Some(&ctr), &url);
    assert!(text(&before).contains("timed out"), "{}", text(&before));

    let nat = node.nat(tag);
    nat.0.ensure().unwrap();
    // Applied twice (an agent restart): still one table, same rules.
    nat.0.ensure().unwrap();
    // The outside host saw the node's address, not the container's.
    assert_eq!(caller(&curl_until_up(Some(&ctr), &url)), format!("{net}.1"));
    let rules = text(&nft_table(&nat.0.table));
    assert_eq!(rules.matches("skiff: egress").count(), 1, "{rules}");

    nat.0.remove().unwrap();
    let gone = nft_table(&nat.0.table);
    assert!(!gone.status.success(), "{}", text(&gone));
    link::detach(&node.handle, &host_if).await.unwrap();
}

#[tokio::test]
async fn published_ports_reach_a_container_from_everywhere() {
    require_root();
    let tag = std::process::id() % 100_000 + 3;
    let node = Node::new(tag, 160 + tag % 40).await;
    let server = Netns::new(&format!("skte{tag}")).unwrap();
    let client = Netns::new(&format!("sktf{tag}")).unwrap();
    let server_ip = node.attach(&server, &format!("ske{tag}")).await;
    node.attach(&client, &format!("skf{tag}")).await;
    let (outside, _uplink, net) = outside_host(tag, 252);
    let _http = caller_server(&server, node.dir.path(), 8080);
    let (tcp_port, udp_port) = (
        20_000 + (tag % 20_000) as u16,
        40_000 + (tag % 20_000) as u16,
    );
    let nat = node.nat(tag);
    nat.0
        .apply(
            &[
                PortMapping {
                    host_ip: None,
                    host_port: tcp_port,
                    proto: Proto::Tcp,
                    container_ip: server_ip,
                    container_port: 8080,
                },
                PortMapping {
                    host_ip: None,
                    host_port: udp_port,
                    proto: Proto::Udp,
                    container_ip: server_ip,
                    container_port: 9000,
                },
            ],
            &Default::default(),
        )
        .unwrap();

    // From another host: the container sees that host's address.
    let url = format!("http://{net}.1:{tcp_port}/cgi-bin/ip");
    assert_eq!(
        caller(&curl_until_up(Some(&outside), &url)),
        format!("{net}.2")
    );
    // Its own address is no way in from another host, even one that
    // routes the node's subnet through the node.
    let route = outside.run(&[
        "ip",
        "route",
        "add",
        &node.subnet.to_string(),
        "via",
        &format!("{net}.1"),
    ]);
    assert!(route.status.success(), "{}", text(&route));
    let direct = curl(
        Some(&outside),
        &format!("http://{server_ip}:8080/cgi-bin/ip"),
    );
    assert!(!direct.status.success(), "{}", text(&direct));
    assert!(
        curl(Some(&outside), &url).status.success(),
        "the published port stopped answering"
    );
    // From the host itself, on its address and on loopback.
    assert!(curl(None, &url).status.success());
    let local = curl(None, &format!("http://127.0.0.1:{tcp_port}/cgi-bin/ip"));
    assert!(local.status.success(), "{}", text(&local));
    // From another container on the node, through the node's address
    // (hairpin): answered by way of the bridge's address.
    let hairpin = curl(Some(&client), &url);
    assert_eq!(
        caller(&hairpin),
        node.ipam.gateway().to_string(),
        "{}",
        text(&hairpin)
    );
    // And the server reaching itself through its own published port.
    let own = curl(Some(&server), &url);
    assert!(own.status.success(), "{}", text(&own));

    // UDP: an echo server in the container, a client on the other host.
    let _echo = ChildGuard::spawn(
        "udp echo",
        Command::new("ip").args([
            "netns",
            "exec",
            &server.0,
            "python3",
            "-c",
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',9000))\nwhile True:\n d,a=s.recvfrom(100)\n s.sendto(d.upper(),a)",
        ]),
    )
    .unwrap();
    let client_py = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(0.5)\nfor i in range(20):\n s.sendto(b'ping',('{net}.1',{udp_port}))\n try:\n  print(s.recv(100).decode()); break\n except OSError: pass"
    );
    let udp = outside.run(&["python3", "-c", &client_py]);
    assert_eq!(
        String::from_utf8_lossy(&udp.stdout).trim(),
        "PING",
        "{}",
        text(&udp)
    );

    let rules = text(&nft_table(&nat.0.table));
    assert_eq!(rules.matches("dnat to").count(), 4, "{rules}");
}
