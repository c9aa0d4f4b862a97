//! Node networking of real containers, as root, through the agent: the
//! bridge, published ports, egress, and clean-up. Network namespaces on
//! point-to-point links stand in for other hosts.

mod common;

use std::net::{TcpListener, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, text};
use skiff_test_support::images::{OciImage, udp_echo_layer};
use skiff_test_support::netns::{
    self, HostLink, Netns, caller, curl, curl_until_up, nft_table, unmapped,
};
use skiff_test_support::tools::require_root;

/// A shell command that serves `/cgi-bin/ip` (the caller's address) on
/// port 80 with busybox httpd.
const CALLER_HTTPD: &str = "mkdir -p /srv/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /srv/cgi-bin/ip && chmod +x /srv/cgi-bin/ip && exec httpd -f -p 80 -h /srv";

/// An agent with the busybox image (and a UDP echo server in it), and
/// another host on a link of its own: `PREFIX.1` is the node's address
/// there, `PREFIX.2` the other host's.
struct Fixture {
    dir: tempfile::TempDir,
    agent: Agent,
    image: String,
    outside: Netns,
    _uplink: HostLink,
    prefix: String,
}

impl Fixture {
    fn new() -> Fixture {
        Self::with_network("")
    }

    fn with_network(network: &str) -> Fixture {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::start_with(dir.path(), network);
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let layer = udp_echo_layer(&work).unwrap();
        let image = OciImage::busybox(&work, "net", &[layer]).unwrap();
        agent.ok(&[
            "import",
            image.layout.to_str().unwrap(),
            "--name",
            "skiff/busybox:net",
        ]);
        let n = agent.net.n;
        let prefix = agent.net.outside_prefix();
        let (outside, uplink) =
            netns::outside_host(&format!("sktn{n}"), &format!("sktu{n}"), &prefix).unwrap();
        Fixture {
            dir,
            agent,
            image: "skiff/busybox:net".into(),
            outside,
            _uplink: uplink,
            prefix,
        }
    }

    /// The node's address as the other host sees it.
    fn node_ip(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// `10.251.N` of the node's `10.251.N.0/24`.
    fn subnet_prefix(&self) -> String {
        let subnet = self.agent.net.subnet();
        subnet.trim_end_matches(".0/24").to_string()
    }

    fn gateway(&self) -> String {
        format!("{}.1", self.subnet_prefix())
    }

    /// `skiff-agent run -d` with these arguments; returns the container's
    /// `inspect` once it runs.
    fn run_detached(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        let id = self.agent.ok(&all).trim().to_string();
        self.agent
            .until(&id, "running", |v| v["state"] == "running")
    }

    /// Runs a command in a new container on the bridge; its output.
    fn run_once(&self, script: &str) -> String {
        let out = self
            .agent
            .cli(&["run", "--rm", &self.image, "sh", "-c", script]);
        assert!(out.status.success(), "{script}: {}", text(&out.stderr));
        text(&out.stdout)
    }
}

/// A loopback-free port for TCP (and one for UDP) that nothing holds.
fn free_ports() -> (u16, u16) {
    let t = TcpListener::bind("0.0.0.0:0").unwrap();
    let u = UdpSocket::bind("0.0.0.0:0").unwrap();
    (
        t.local_addr().unwrap().port(),
        u.local_addr().unwrap().port(),
    )
}

/// Host links named for the container `id` (its veth pair's host end).
fn links_of(id: &str) -> Vec<String> {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let host_if = format!("sk{}", &id[..12]);
    text(&out.stdout)
        .lines()
        .filter(|l| l.contains(&host_if))
        .map(str::to_string)
        .collect()
}

/// Waits until the container's veth pair is gone (the kernel removes it
/// with the container's network namespace, just after the last process).
fn assert_links_go(id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !links_of(id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "links of {id} left behind: {:?}",
            links_of(id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The DNAT rules in the agent's table.
fn dnat_rules(agent: &Agent) -> Vec<String> {
    let out = nft_table(&agent.net.table());
    assert!(out.status.success(), "{}", netns::text(&out));
    text(&out.stdout)
        .lines()
        .filter(|l| l.contains("dnat to"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// Sends datagrams from the other host to `addr:port` until one comes
/// back; returns the answer.
fn udp_roundtrip(from: &Netns, addr: &str, port: u16) -> String {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(0.3)\nfor i in range(30):\n s.sendto(b'ping',('{addr}',{port}))\n try:\n  print(s.recv(100).decode()); break\n except OSError: pass"
    );
    let out = from.run(&["python3", "-c", &script]);
    text(&out.stdout).trim().to_string()
}

/// The MTU of the interface of the host's default route.
fn uplink_mtu() -> String {
    let route = Command::new("ip")
        .args(["-o", "route", "show", "default"])
        .output()
        .unwrap();
    let route = text(&route.stdout);
    let dev = route
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .expect("a default route");
    std::fs::read_to_string(format!("/sys/class/net/{dev}/mtu"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn published_ports_answer_from_the_host_other_hosts_and_containers() {
    let f = Fixture::new();
    let (tcp, udp) = free_ports();
    let web = f.run_detached(&[
        "--name",
        "web",
        "-p",
        &format!("{tcp}:80"),
        "-p",
        &format!("{udp}:9000/udp"),
        &f.image,
        "sh",
        "-c",
        &format!("udp-echo 9000 & {CALLER_HTTPD}"),
    ]);
    let web_ip = web["address"].as_str().expect("an address").to_string();
    assert!(
        web_ip.starts_with(&format!("{}.", f.subnet_prefix())),
        "{web}"
    );
    assert_eq!(web["gateway"], f.gateway());
    assert_eq!(web["network"], "bridge");
    assert_eq!(web["ports"][0]["host_port"], tcp);
    let ps = f.agent.ok(&["ps"]);
    assert!(ps.contains(&web_ip), "{ps}");
    assert!(ps.contains(&format!("0.0.0.0:{tcp}->80/tcp")), "{ps}");
    assert!(ps.contains(&format!("0.0.0.0:{udp}->9000/udp")), "{ps}");

    // Inside: eth0 with the address, the uplink's MTU, the default route
    // via the bridge.
    let inside = f.agent.ok(&[
        "exec",
        "web",
        "sh",
        "-c",
        "ip -4 -o addr show eth0; cat /sys/class/net/eth0/mtu; ip route",
    ]);
    assert!(inside.contains(&format!("inet {web_ip}/24")), "{inside}");
    assert!(
        inside.lines().any(|l| l.trim() == uplink_mtu()),
        "MTU {}: {inside}",
        uplink_mtu()
    );
    assert!(
        inside.contains(&format!("default via {} dev eth0", f.gateway())),
        "{inside}"
    );

    // From another host: the container sees that host's address.
    let url = format!("http://{}:{tcp}/cgi-bin/ip", f.node_ip());
    let from_outside = curl_until_up(Some(&f.outside), &url);
    assert_eq!(caller(&from_outside), format!("{}.2", f.prefix));
    // From the host itself, on its address and on loopback.
    let from_host = curl(None, &url);
    assert!(from_host.status.success(), "{}", netns::text(&from_host));
    let local = curl(None, &format!("http://127.0.0.1:{tcp}/cgi-bin/ip"));
    assert!(local.status.success(), "{}", netns::text(&local));

    // From a second container, through the node's published port
    // (hairpin), and directly on the bridge.
    let hairpin = f.run_once(&format!("wget -qO- {url}"));
    assert_eq!(
        unmapped(&hairpin),
        f.gateway(),
        "hairpin answered via the bridge"
    );
    let direct = f.run_once(&format!(
        "ip -4 -o addr show eth0; wget -qO- http://{web_ip}/cgi-bin/ip"
    ));
    let (me, seen) = direct.trim().rsplit_once('\n').unwrap();
    assert!(
        me.contains(&format!("inet {}/", unmapped(seen))),
        "the server saw the client's own address: {direct}"
    );
    // The server reaching itself through its own published port.
    let own = f.agent.ok(&["exec", "web", "wget", "-qO-", &url]);
    assert_eq!(unmapped(&own), f.gateway());

    // UDP, from the other host.
    assert_eq!(udp_roundtrip(&f.outside, &f.node_ip(), udp), "PING");

    // Removed: no link, no rule, the address back in the pool.
    let id = web["id"].as_str().unwrap().to_string();
    f.agent.ok(&["rm", "-f", "web"]);
    assert_links_go(&id);
    assert_eq!(dnat_rules(&f.agent), Vec::<String>::new());
    let next = f.run_detached(&[&f.image, "sleep", "30"]);
    assert_eq!(next["address"], web_ip, "the address was released");
    f.agent.ok(&["rm", "-f", next["id"].as_str().unwrap()]);
}

#[test]
fn egress_reaches_an_outside_host_through_snat_and_dns_comes_from_the_host() {
    let f = Fixture::new();
    let _server = netns::caller_server(&f.outside, f.dir.path(), 8080).unwrap();
    let url = format!("http://{}.2:8080/cgi-bin/ip", f.prefix);
    curl_until_up(None, &url);
    // The other host has no route to the container subnet: it answers
    // because it saw the node's address.
    let seen = f.run_once(&format!("wget -qO- {url}"));
    assert_eq!(unmapped(&seen), f.node_ip());

    // The host's resolvers, minus loopback ones (they would not answer
    // inside the container).
    let resolv = f.run_once("cat /etc/resolv.conf");
    assert!(!resolv.contains("nameserver 127."), "{resolv}");
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for line in host.lines().filter(|l| l.starts_with("nameserver")) {
        if !line.contains(" 127.") && !line.contains("::1") {
            assert!(resolv.contains(line), "{line} missing from {resolv}");
        }
    }
    // The hosts file names the container by its address.
    let hosts = f.run_once("cat /etc/hosts; hostname; ip -4 -o addr show eth0");
    let ip = hosts
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|a| a.split('/').next())
        .unwrap()
        .to_string();
    assert!(hosts.contains(&format!("{ip}\t")), "{hosts}");
}

#[test]
fn dns_servers_from_the_config_replace_the_hosts() {
    let f = Fixture::with_network("dns = [\"192.0.2.53\", \"192.0.2.54\"]\n");
    let resolv = f.run_once("cat /etc/resolv.conf");
    let servers: Vec<&str> = resolv
        .lines()
        .filter(|l| l.starts_with("nameserver"))
        .collect();
    assert_eq!(
        servers,
        ["nameserver 192.0.2.53", "nameserver 192.0.2.54"],
        "{resolv}"
    );
    // Host networking keeps the host's own file.
    let out = f.agent.cli(&[
        "run",
        "--rm",
        "--network",
        "host",
        &f.image,
        "cat",
        "/etc/resolv.conf",
    ]);
    assert_eq!(
        text(&out.stdout),
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    );
}

#[test]
fn ports_in_use_and_failed_starts_are_refused_and_leave_nothing() {
    let f = Fixture::new();
    let held = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = held.local_addr().unwrap().port();
    // A host process holds the port.
    let out = f.agent.cli(&[
        "run",
        "-d",
        "--name",
        "clash",
        "-p",
        &format!("{port}:80"),
        &f.image,
        "sleep",
        "30",
    ]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert_eq!(
        e.trim(),
        format!("skiff-agent: host port {port}/tcp is in use by a process on the host")
    );
    drop(held);

    // Another container publishes it.
    let (tcp, _) = free_ports();
    let first = f.run_detached(&[
        "--name",
        "first",
        "-p",
        &format!("{tcp}:80"),
        &f.image,
        "sleep",
        "30",
    ]);
    let out = f.agent.cli(&[
        "run",
        "-d",
        "-p",
        &format!("127.0.0.1:{tcp}:8080"),
        &f.image,
        "sleep",
        "30",
    ]);
    assert_eq!(
        text(&out.stderr).trim(),
        format!(
            "skiff-agent: host port 127.0.0.1:{tcp}/tcp is already published by container first"
        )
    );
    // Publishing needs the bridge.
    let out = f.agent.cli(&[
        "run",
        "-d",
        "--network",
        "host",
        "-p",
        "8080:80",
        &f.image,
        "true",
    ]);
    assert!(
        text(&out.stderr)
            .contains("ports: publishing needs the bridge network (this container's is host)"),
        "{}",
        text(&out.stderr)
    );
    // A start that fails after the network was set up.
    let (other, _) = free_ports();
    let out = f.agent.cli(&[
        "run",
        "-p",
        &format!("{other}:80"),
        &f.image,
        "/no/such/program",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/no/such/program"),
        "{}",
        text(&out.stderr)
    );

    // Only `first` exists, with its one rule; nothing else was left.
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&f.agent.ok(&["ps", "-a", "-o", "json"])).unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    let rules = dnat_rules(&f.agent);
    assert_eq!(rules.len(), 2, "prerouting and output: {rules:?}");
    assert!(
        rules.iter().all(|r| r.contains(&format!("dport {tcp} "))),
        "{rules:?}"
    );
    // The failed container's pair goes with its namespace.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let links = Command::new("ip")
            .args(["-o", "link", "show", "master", &f.agent.net.bridge()])
            .output()
            .unwrap();
        let links = text(&links.stdout);
        if links.lines().count() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "left on the bridge: {links}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The next container gets the address after `first`'s: none leaked.
    let next = f.run_detached(&[&f.image, "sleep", "30"]);
    let addr = |v: &serde_json::Value| -> u8 {
        v["address"]
            .as_str()
            .unwrap()
            .rsplit('.')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(addr(&next), addr(&first) + 1);
    f.agent
        .ok(&["rm", "-f", "first", next["id"].as_str().unwrap()]);
}

/// Kills the container's first process from outside the agent.
fn kill_container(v: &serde_json::Value) {
    let pid = v["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[test]
fn networking_survives_kill_9_of_the_agent_and_leaves_nothing_after() {
    let mut f = Fixture::new();
    let (web_port, gone_port) = (free_ports().0, free_ports().0);
    let web = f.run_detached(&[
        "--name",
        "web",
        "-p",
        &format!("{web_port}:80"),
        &f.image,
        "sh",
        "-c",
        CALLER_HTTPD,
    ]);
    let gone = f.run_detached(&[
        "--name",
        "gone",
        "-p",
        &format!("{gone_port}:80"),
        &f.image,
        "sleep",
        "300",
    ]);
    let url = format!("http://{}:{web_port}/cgi-bin/ip", f.node_ip());
    curl_until_up(Some(&f.outside), &url);

    f.agent.process.as_mut().unwrap().kill9();
    // While the agent is away, `gone` ends, and a veth pair is left on the
    // bridge under the name of a container that is not running (as a
    // shim killed mid-start would leave it).
    kill_container(&gone);
    let gone_id = gone["id"].as_str().unwrap().to_string();
    let stray = format!("sk{}", &gone_id[..12]);
    assert_links_go(&gone_id);
    for cmd in [
        format!("ip link add {stray} type veth peer name {stray}p"),
        format!("ip link set {stray} master {}", f.agent.net.bridge()),
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        assert!(
            Command::new(args[0])
                .args(&args[1..])
                .status()
                .unwrap()
                .success(),
            "{cmd}"
        );
    }
    // The published port keeps answering without the agent.
    assert!(curl(Some(&f.outside), &url).status.success());
    f.agent.restart();

    let after = f
        .agent
        .until("web", "re-adopted", |v| v["state"] == "running");
    assert_eq!(after["pid"], web["pid"]);
    assert_eq!(after["address"], web["address"]);
    f.agent.until("gone", "exited", |v| v["state"] == "exited");
    assert!(curl(Some(&f.outside), &url).status.success());
    // Only web's rules are left; the stray pair is gone.
    let rules = dnat_rules(&f.agent);
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(
        rules
            .iter()
            .all(|r| r.contains(&format!("dport {web_port} "))),
        "{rules:?}"
    );
    assert!(links_of(&gone_id).is_empty(), "{:?}", links_of(&gone_id));
    // `gone` starts again with its address and port.
    f.agent.ok(&["start", "gone"]);
    let again = f
        .agent
        .until("gone", "running", |v| v["state"] == "running");
    assert_eq!(again["address"], gone["address"]);
    assert_eq!(dnat_rules(&f.agent).len(), 4);

    // Removed after all that: nothing of either is left.
    let web_id = web["id"].as_str().unwrap().to_string();
    f.agent.ok(&["rm", "-f", "web", "gone"]);
    assert_links_go(&web_id);
    assert_links_go(&gone_id);
    assert_eq!(dnat_rules(&f.agent), Vec::<String>::new());
    let rules = text(&nft_table(&f.agent.net.table()).stdout);
    assert_eq!(
        rules.matches("comment \"skiff:").count(),
        6,
        "egress, hairpin, loopback, and the node-local rules (replies, published ports, \
         nothing else from other hosts) only: {rules}"
    );
    let routes = Command::new("ip").args(["-4", "route"]).output().unwrap();
    let subnet = f.agent.net.subnet();
    assert_eq!(
        text(&routes.stdout)
            .lines()
            .filter(|l| l.starts_with(&subnet))
            .count(),
        1,
        "only the bridge's route: {}",
        text(&routes.stdout)
    );
    let next = f.run_detached(&[&f.image, "sleep", "30"]);
    assert_eq!(
        next["address"],
        format!("{}.2", f.subnet_prefix()),
        "every address came back"
    );
    f.agent.ok(&["rm", "-f", next["id"].as_str().unwrap()]);
}
