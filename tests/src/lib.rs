//! A fleet on one machine for end-to-end tests: a real `skiff-gateway` and
//! real `skiff-agent`s (as root, each with its own bridge, subnet and
//! nftables table), talking over loopback; the REST API driven with curl.
//! Every process is stopped by its pid when its guard drops, and an
//! agent's containers are removed with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_test_support::net::NetSlot;
use skiff_test_support::procs::ChildGuard;

pub mod azure;
pub mod cloud;
pub mod etcd;
pub mod hosts;

/// A registry holding the busybox test image (built under `dir`); the
/// registry (stopped when dropped) and the image's reference.
pub fn busybox_registry(dir: &Path) -> (skiff_test_support::registry::Registry, String) {
    let registry = skiff_test_support::registry::Registry::start().expect("a registry");
    let reference = skiff_test_support::images::OciImage::busybox(&dir.join("image"), "test", &[])
        .and_then(|i| i.push(&registry, "skiff/busybox"))
        .expect("the busybox image in the registry");
    (registry, reference)
}

/// A binary of this workspace, next to the test executable's directory
/// (`target/<profile>/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace; scripts/test does)",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 50 ms until it holds; fails the test after `timeout`
/// with `why()`.
fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{}", why());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` until it holds; fails the test after `secs` with `why()`
/// (evaluated then, so it can show the latest logs).
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{}", why());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `skiff-gateway serve` on free loopback ports.
#[derive(Debug)]
pub struct Gateway {
    pub dir: PathBuf,
    pub api: String,
    pub agent_url: String,
    config: PathBuf,
    listen: String,
    agent_listen: String,
    /// Extra environment of the process (e.g. cloud credentials).
    env: Vec<(String, String)>,
    pub process: Option<ChildGuard>,
}

impl Gateway {
    /// Starts a gateway with `config` (TOML) in `dir`.
    pub fn start(dir: &Path, config: &str) -> Gateway {
        Self::start_on(dir, config, "127.0.0.1")
    }

    /// With its agent port on `agent_host` (an address of this host, e.g.
    /// a test bridge's) instead of loopback. `{{agent_url}}` in the config
    /// becomes the agent port's URL, `{{agent_port}}` its port.
    pub fn start_on(dir: &Path, config: &str, agent_host: &str) -> Gateway {
        Self::start_env(dir, config, agent_host, Vec::new())
    }

    /// [`Gateway::start_on`] with extra environment variables.
    pub fn start_env(
        dir: &Path,
        config: &str,
        agent_host: &str,
        env: Vec<(String, String)>,
    ) -> Gateway {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("gateway.toml");
        let (api, agent) = (free_port(), free_port());
        let config = config
            .replace("{{agent_url}}", &format!("https://{agent_host}:{agent}"))
            .replace("{{agent_port}}", &agent.to_string());
        std::fs::write(&path, config).unwrap();
        let mut g = Gateway {
            dir: dir.to_path_buf(),
            api: format!("http://127.0.0.1:{api}"),
            agent_url: format!("https://{agent_host}:{agent}"),
            config: path,
            listen: format!("127.0.0.1:{api}"),
            agent_listen: format!("{agent_host}:{agent}"),
            env,
            process: None,
        };
        g.restart();
        g
    }

    /// Starts it (again) on the same ports and state.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("gateway.log"))
            .unwrap();
        let child = ChildGuard::spawn(
            "skiff-gateway",
            Command::new(bin("skiff-gateway"))
                .arg("serve")
                .arg("--state-dir")
                .arg(self.dir.join("state"))
                .args([
                    "--listen",
                    &self.listen,
                    "--agent-listen",
                    &self.agent_listen,
                ])
                .arg("--config")
                .arg(&self.config)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .unwrap();
        self.process = Some(child);
        let addr: std::net::SocketAddr = self.listen.parse().unwrap();
        wait_for(
            Duration::from_secs(10),
            || std::net::TcpStream::connect(addr).is_ok(),
            || format!("timed out waiting for the gateway's API:\n{}", self.log()),
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    /// Kills it with SIGKILL, as a crash: nothing in flight is finished or
    /// handed over.
    pub fn kill9(&mut self) {
        if let Some(p) = self.process.as_mut() {
            p.kill9();
        }
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("state/admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// A REST call with `token`: (status, body as JSON or a string).
    pub fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> (u16, Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-m", "10", "-X", method, "-w", "\n%{http_code}"]);
        if let Some(t) = token {
            cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        if body.is_some() {
            cmd.args(["--data-binary", "@-"]);
        }
        cmd.arg(format!("{}{path}", self.api));
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("curl");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            if let Some(b) = body {
                stdin.write_all(b).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        let value = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
        (code.trim().parse().unwrap_or(0), value)
    }

    /// A REST call as admin.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.call_as(
            Some(&self.admin_token()),
            method,
            path,
            body.map(str::as_bytes),
        )
    }

    /// A new join token for `site`: (token, CA hash).
    pub fn join_token(&self, site: &str, ttl: &str) -> (String, String) {
        let (code, v) = self.call(
            "POST",
            "/v1/join-tokens",
            Some(&format!(
                "{{\"site\": \"{site}\", \"ttl_seconds\": {}}}",
                ttl.parse::<skiff_proto::Duration>()
                    .unwrap()
                    .std()
                    .as_secs()
            )),
        );
        assert_eq!(code, 201, "{v}");
        (
            v["token"].as_str().unwrap().to_string(),
            v["ca_hash"].as_str().unwrap().to_string(),
        )
    }

    /// Polls `GET path` until `f` holds (or fails the test after `secs`).
    pub fn until(&self, path: &str, what: &str, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (code, v) = self.call("GET", path, None);
            if code == 200 && f(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: never {what}: {v}\ngateway log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `POST /v1/workloads` to `api`: the status, 0 when nothing answered.
pub fn post_workload(api: &str, token: &str, body: &str) -> u16 {
    use std::io::Write;
    let mut child = std::process::Command::new("curl")
        .args([
            "-sS",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
        ])
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .args(["--data-binary", "@-"])
        .arg(format!("{api}/v1/workloads"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// A `skiff-agent serve` linked to a gateway.
#[derive(Debug)]
pub struct Agent {
    pub name: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The `--gateway` it is started with.
    pub url: String,
    ca_hash: String,
    pub process: Option<ChildGuard>,
    pub net: NetSlot,
    /// The host it runs on ([`hosts::Host`]), if not this machine.
    netns: Option<String>,
}

impl Agent {
    /// An agent named `name` that joined `gateway` (a fresh token) and is
    /// ready there.
    pub fn joined(dir: &Path, name: &str, gateway: &Gateway) -> Agent {
        let (token, hash) = gateway.join_token("default", "10m");
        let a = Agent::spawn(dir, name, gateway, &token, &hash);
        a.wait_up();
        gateway.until(&format!("/v1/nodes/{name}"), "ready", 15, |v| {
            v["status"] == "ready"
        });
        a
    }

    /// [`Agent::joined`] to `site` on `host` (it has the host's network),
    /// with the node subnet the gateway gives it and `extra` config (TOML
    /// tables).
    pub fn joined_on(
        dir: &Path,
        (name, site): (&str, &str),
        gateway: &Gateway,
        host: &hosts::Host,
        extra: &str,
    ) -> Agent {
        let (token, hash) = gateway.join_token(site, "10m");
        let a = Self::spawn_at(
            dir,
            name,
            &gateway.agent_url,
            (&token, &hash),
            (false, Some(&host.name)),
            extra,
        );
        a.wait_up();
        gateway.until(&format!("/v1/nodes/{name}"), "ready", 15, |v| {
            v["status"] == "ready"
        });
        a
    }

    /// Starts an agent named `name` that joins `gateway` with `token`; does
    /// not wait (a refused join ends the process).
    pub fn spawn(dir: &Path, name: &str, gateway: &Gateway, token: &str, ca_hash: &str) -> Agent {
        Self::spawn_with(dir, name, gateway, token, ca_hash, true)
    }

    /// [`Agent::spawn`] with more of the agent's config (TOML tables).
    pub fn spawn_configured(
        dir: &Path,
        name: &str,
        gateway: &Gateway,
        token: &str,
        ca_hash: &str,
        extra: &str,
    ) -> Agent {
        Self::spawn_full(dir, name, gateway, (token, ca_hash), true, extra)
    }

    /// With `own_subnet` false, the agent's containers take the subnet the
    /// gateway gives the node.
    pub fn spawn_with(
        dir: &Path,
        name: &str,
        gateway: &Gateway,
        token: &str,
        ca_hash: &str,
        own_subnet: bool,
    ) -> Agent {
        Self::spawn_full(dir, name, gateway, (token, ca_hash), own_subnet, "")
    }

    fn spawn_full(
        dir: &Path,
        name: &str,
        gateway: &Gateway,
        auth: (&str, &str),
        own_subnet: bool,
        extra: &str,
    ) -> Agent {
        Self::spawn_at(
            dir,
            name,
            &gateway.agent_url,
            auth,
            (own_subnet, None),
            extra,
        )
    }

    fn spawn_at(
        dir: &Path,
        name: &str,
        url: &str,
        (token, ca_hash): (&str, &str),
        (own_subnet, netns): (bool, Option<&str>),
        extra: &str,
    ) -> Agent {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let net = NetSlot::take().unwrap();
        let config = if own_subnet {
            net.agent_config()
        } else {
            net.agent_config_no_subnet()
        };
        std::fs::write(dir.join("agent.toml"), format!("{config}{extra}")).unwrap();
        let mut a = Agent {
            name: name.to_string(),
            socket: dir.join("agent.sock"),
            dir,
            url: url.to_string(),
            ca_hash: ca_hash.to_string(),
            process: None,
            net,
            netns: netns.map(String::from),
        };
        a.launch(Some(token));
        a
    }

    fn launch(&mut self, token: Option<&str>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let mut cmd = self.serve().expect("the agent's host");
        cmd.args(["--gateway", &self.url, "--ca-hash", &self.ca_hash])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(t) = token {
            cmd.args(["--join-token", t]);
        }
        self.process = Some(ChildGuard::spawn("skiff-agent", &mut cmd).unwrap());
    }

    /// [`Agent::spawn`] with `--gateway` set to `urls` (several of one
    /// fleet, comma-separated).
    pub fn spawn_via(dir: &Path, name: &str, urls: &str, token: &str, ca_hash: &str) -> Agent {
        Self::spawn_at(dir, name, urls, (token, ca_hash), (true, None), "")
    }

    /// Starts it again after a kill (it has joined: no token).
    pub fn restart(&mut self) {
        self.launch(None);
        self.wait_up();
    }

    /// Waits until its local API answers.
    pub fn wait_up(&self) {
        wait_for(
            Duration::from_secs(15),
            || std::os::unix::net::UnixStream::connect(&self.socket).is_ok(),
            || {
                format!(
                    "timed out waiting for agent {} to listen:\n{}",
                    self.name,
                    self.log()
                )
            },
        );
    }

    /// Waits for the process to end (a refused join); its exit and log.
    pub fn wait_exit(&mut self) -> (Option<i32>, String) {
        let p = self.process.as_mut().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while p.is_running() {
            assert!(Instant::now() < deadline, "agent {} still runs", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
        let code = p.stop(Duration::ZERO).and_then(|s| s.code());
        (code, self.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("skiff-agent"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Its containers (`ps -a` as JSON).
    pub fn containers(&self) -> Vec<Value> {
        let out = self.cli(&["ps", "-a", "-o", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Running containers' names.
    pub fn running(&self) -> Vec<String> {
        self.containers()
            .iter()
            .filter(|c| c["state"] == "running")
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The node's certificate and key, as it keeps them.
    pub fn identity(&self) -> (String, String, String) {
        let pki = self.dir.join("state/pki");
        let read = |f: &str| std::fs::read_to_string(pki.join(f)).unwrap();
        (read("ca.crt"), read("node.crt"), read("node.key"))
    }

    /// `skiff-agent serve` with its name, state, socket and config, on its
    /// host.
    fn serve(&self) -> std::io::Result<Command> {
        let mut cmd = Command::new(bin("skiff-agent"));
        cmd.args(["serve", "--name", &self.name, "--state-dir"])
            .arg(self.dir.join("state"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--config")
            .arg(self.dir.join("agent.toml"));
        if let Some(ns) = &self.netns {
            // Into the host's network only (`ip netns exec` would also
            // remount /sys, hiding the cgroup hierarchies).
            let netns = std::fs::File::open(format!("/run/netns/{ns}"))?;
            use std::os::unix::process::CommandExt;
            // SAFETY: setns is async-signal-safe; nothing else runs in the
            // child between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                });
            }
        }
        Ok(cmd)
    }

    /// Stops it as its service manager would for an upgrade (SIGTERM, 10 s
    /// grace): its containers keep running.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Kills it with SIGKILL (its containers keep running).
    pub fn kill9(&mut self) {
        if let Some(p) = self.process.as_mut() {
            p.kill9();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Containers outlive their agent: remove them with it, through an
        // agent without the gateway (which would start them again).
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(5));
        }
        if self.dir.join("state/containers").is_dir() {
            let log = std::fs::File::create(self.dir.join("cleanup.log")).unwrap();
            // (A host already gone took the containers' network with it:
            // they are still removed, by an agent on this machine's.)
            let mut cmd = self.serve().unwrap_or_else(|_| {
                self.netns = None;
                self.serve().expect("no host")
            });
            if let Ok(g) = ChildGuard::spawn(
                "skiff-agent",
                cmd.stdout(log.try_clone().unwrap()).stderr(log),
            ) {
                self.process = Some(g);
                let deadline = Instant::now() + Duration::from_secs(10);
                while std::os::unix::net::UnixStream::connect(&self.socket).is_err()
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        let ids: Vec<String> = self
            .containers()
            .iter()
            .filter_map(|c| c["id"].as_str().map(String::from))
            .collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = self.cli(&args);
        }
        // What the agent keeps mounted past its own end (its secrets
        // tmpfs, as a host keeps /run) goes with the test's directory.
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(5));
        }
        if let Err(e) = unmount_under(&self.dir) {
            eprintln!("agent {}: {e}", self.name);
        }
    }
}

/// Unmounts (lazily) every mount under `dir`, the innermost first.
pub fn unmount_under(dir: &Path) -> Result<(), String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let mut under: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    under.reverse();
    for m in under {
        nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| format!("unmount {m}: {e}"))?;
    }
    Ok(())
}
