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
        let address = self.ipam.allocate(host_if).unwrap();
        link::attach(
            &self.handle,
            self.index,
            host_if,
            &ns.fd(),
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

/// The caller's address as busybox httpd's CGI saw it (it writes IPv4
/// callers as `[::ffff:a.b.c.d]`).
fn caller(o: &std::process::Output) -> String {
    let s = String::from_utf8_lossy(&o.stdout);
    let s = s.trim();
    s.strip_prefix("[::ffff:")
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s)
        .to_string()
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
    let node = Node::new(tag, 200 + tag % 50).await;
    let (ipam, handle, subnet) = (&node.ipam, &node.handle, node.subnet);
    // Idempotent: a restarted agent finds it as it left it.
    assert_eq!(
        link::ensure_bridge(handle, &node.name, ipam.gateway(), subnet, 1500)
            .await
            .unwrap(),
        node.index
    );

    let a = Netns::new(&format!("skta{tag}"));
    let b = Netns::new(&format!("sktb{tag}"));
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

#[tokio::test]
async fn egress_reaches_an_outside_host_through_snat() {
    require_root();
    let tag = std::process::id() % 100_000 + 2;
    let node = Node::new(tag, 150 + tag % 40).await;
    let ctr = Netns::new(&format!("sktd{tag}"));
    let host_if = format!("skd{tag}");
    node.attach(&ctr, &host_if).await;

    // "Outside": another host on a link of its own, which knows no route
    // to the container subnet, serving its caller's address.
    let outside = Netns::new(&format!("skto{tag}"));
    let (host_end, out_end) = (format!("sko{tag}"), format!("skp{tag}"));
    let _uplink = HostLink(host_end.clone());
    let net = format!("10.251.{}", tag % 250);
    for cmd in [
        format!("ip link add {host_end} type veth peer name {out_end}"),
        format!("ip link set {out_end} netns {}", outside.0),
        format!("ip addr add {net}.1/30 dev {host_end}"),
        format!("ip link set {host_end} up"),
        format!("ip -n {} addr add {net}.2/30 dev {out_end}", outside.0),
        format!("ip -n {} link set {out_end} up", outside.0),
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(o.status.success(), "{cmd}: {}", text(&o));
    }
    let www = node.dir.path().join("www");
    std::fs::create_dir_all(www.join("cgi-bin")).unwrap();
    let cgi = www.join("cgi-bin/ip");
    std::fs::write(
        &cgi,
        "#!/bin/busybox sh\necho 'Content-Type: text/plain'\necho\necho \"$REMOTE_ADDR\"\n",
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&cgi).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&cgi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let _server = skiff_test_support::procs::ChildGuard::spawn(
        "httpd",
        Command::new("ip")
            .args([
                "netns", "exec", &outside.0, "busybox", "httpd", "-f", "-p", "8080", "-h",
            ])
            .arg(&www),
    )
    .unwrap();
    let url = format!("http://{net}.2:8080/cgi-bin/ip");
    let fetch = || ctr.run(&["curl", "-sS", "-m", "2", &url]);
    // The server is up (from the host, which it can answer)...
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let o = Command::new("curl")
            .args(["-sS", "-m", "2", &url])
            .output()
            .unwrap();
        if o.status.success() {
            assert_eq!(caller(&o), format!("{net}.1"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "server: {}", text(&o));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // ...but without Skiff's rules it cannot answer the container.
    let before = fetch();
    assert!(!before.status.success(), "{}", text(&before));
    assert!(text(&before).contains("timed out"), "{}", text(&before));

    struct Table;
    impl Drop for Table {
        fn drop(&mut self) {
            let _ = skiff_agent::net::nat::Nat::remove();
        }
    }
    let _table = Table;
    let nat = skiff_agent::net::nat::Nat {
        bridge: node.name.clone(),
        subnet: node.subnet,
    };
    nat.ensure().unwrap();
    // Applied twice (an agent restart): still one table, same rules.
    nat.ensure().unwrap();
    let mut answer = fetch();
    for _ in 0..20 {
        if answer.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        answer = fetch();
    }
    // The outside host saw the node's address, not the container's.
    assert_eq!(
        caller(&answer),
        format!("{net}.1"),
        "{:?} {}",
        answer.status,
        text(&answer)
    );
    let rules = Command::new("nft")
        .args(["list", "table", "ip", "skiff"])
        .output()
        .unwrap();
    assert_eq!(
        text(&rules).matches("masquerade").count(),
        1,
        "{}",
        text(&rules)
    );

    skiff_agent::net::nat::Nat::remove().unwrap();
    let gone = Command::new("nft")
        .args(["list", "table", "ip", "skiff"])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "{}", text(&gone));
    link::detach(&node.handle, &host_if).await.unwrap();
}
