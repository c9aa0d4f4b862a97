//! Network namespaces as other hosts on this machine: a namespace on a
//! point-to-point veth link to the host, HTTP servers and clients in it.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

use crate::procs::ChildGuard;

/// A network namespace (`ip netns`), deleted on drop.
#[derive(Debug)]
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: &str) -> Result<Netns> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let o = Command::new("ip").args(["netns", "add", name]).output()?;
        if !o.status.success() {
            bail!("ip netns add {name}: {}", text(&o));
        }
        Ok(Netns(name.to_string()))
    }

    /// The namespace, for `setns`.
    pub fn fd(&self) -> Result<OwnedFd> {
        Ok(std::fs::File::open(format!("/run/netns/{}", self.0))?.into())
    }

    /// Runs a command inside.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {}: {e}", self.0))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A link on the host, deleted on drop.
#[derive(Debug)]
pub struct HostLink(pub String);

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// Another host: the namespace `name` on a point-to-point link to this one,
/// `PREFIX.1` here (on the host end `host_end`) and `PREFIX.2` there.
pub fn outside_host(name: &str, host_end: &str, prefix: &str) -> Result<(Netns, HostLink)> {
    let outside = Netns::new(name)?;
    let out_end = format!("{host_end}x");
    let _ = Command::new("ip").args(["link", "del", host_end]).output();
    let uplink = HostLink(host_end.to_string());
    for cmd in [
        format!("ip link add {host_end} type veth peer name {out_end}"),
        format!("ip link set {out_end} netns {name}"),
        format!("ip addr add {prefix}.1/30 dev {host_end}"),
        format!("ip link set {host_end} up"),
        format!("ip -n {name} addr add {prefix}.2/30 dev {out_end}"),
        format!("ip -n {name} link set {out_end} up"),
        format!("ip -n {name} link set lo up"),
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        let o = Command::new(args[0]).args(&args[1..]).output()?;
        if !o.status.success() {
            bail!("{cmd}: {}", text(&o));
        }
    }
    Ok((outside, uplink))
}

/// busybox `httpd` in `ns` on `port`, answering `/cgi-bin/ip` with the
/// caller's address; its files under `dir`.
pub fn caller_server(ns: &Netns, dir: &Path, port: u16) -> Result<ChildGuard> {
    let www = dir.join(format!("www-{}", ns.0));
    std::fs::create_dir_all(www.join("cgi-bin"))?;
    let cgi = www.join("cgi-bin/ip");
    std::fs::write(
        &cgi,
        "#!/bin/busybox sh\necho 'Content-Type: text/plain'\necho\necho \"$REMOTE_ADDR\"\n",
    )?;
    std::fs::set_permissions(&cgi, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    ChildGuard::spawn(
        "httpd",
        Command::new("ip")
            .args(["netns", "exec", &ns.0, "busybox", "httpd", "-f", "-p"])
            .arg(port.to_string())
            .arg("-h")
            .arg(&www),
    )
    .context("start httpd")
}

/// `curl` from `ns` (the host when `None`), 2 s at most.
pub fn curl(ns: Option<&Netns>, url: &str) -> Output {
    match ns {
        Some(ns) => ns.run(&["curl", "-sS", "-m", "2", url]),
        None => Command::new("curl")
            .args(["-sS", "-m", "2", url])
            .output()
            .unwrap_or_else(|e| panic!("curl: {e}")),
    }
}

/// Polls `curl` until it answers (or fails the test after 5 s).
pub fn curl_until_up(ns: Option<&Netns>, url: &str) -> Output {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let o = curl(ns, url);
        if o.status.success() {
            return o;
        }
        assert!(std::time::Instant::now() < deadline, "{url}: {}", text(&o));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The caller's address as busybox httpd's CGI saw it (it writes IPv4
/// callers as `[::ffff:a.b.c.d]`).
pub fn caller(o: &Output) -> String {
    unmapped(&String::from_utf8_lossy(&o.stdout))
}

/// `a.b.c.d` from busybox httpd's `[::ffff:a.b.c.d]` (trimmed).
pub fn unmapped(s: &str) -> String {
    let s = s.trim();
    s.strip_prefix("[::ffff:")
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s)
        .to_string()
}

/// `nft list table ip NAME`.
pub fn nft_table(name: &str) -> Output {
    Command::new("nft")
        .args(["list", "table", "ip", name])
        .output()
        .unwrap_or_else(|e| panic!("nft: {e}"))
}

/// stdout and stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
