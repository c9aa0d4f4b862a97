//! A `skiff-agent serve` on a temporary socket and state dir, for tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use skiff_test_support::net::NetSlot;
use skiff_test_support::procs::ChildGuard;

pub const BIN: &str = env!("CARGO_BIN_EXE_skiff-agent");

pub struct Agent {
    pub state: PathBuf,
    pub socket: PathBuf,
    pub process: Option<ChildGuard>,
    /// The agent's bridge, subnet and nftables table (dropped after the
    /// agent, which removes them).
    pub net: NetSlot,
}

impl Agent {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, "")
    }

    /// With more keys for the `[network]` section of its config.
    pub fn start_with(dir: &Path, network: &str) -> Self {
        Self::start_configured(dir, "", network)
    }

    /// With more keys for the `[images]` and `[network]` sections.
    pub fn start_configured(dir: &Path, images: &str, network: &str) -> Self {
        let net = NetSlot::take().unwrap();
        std::fs::write(
            dir.join("state.toml"),
            format!(
                "[images]\nconcurrent_downloads = 2\n{images}{}{network}",
                net.agent_config()
            ),
        )
        .unwrap();
        let mut a = Agent {
            state: dir.join("state"),
            socket: dir.join("agent.sock"),
            process: None,
            net,
        };
        a.restart();
        a
    }

    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.with_extension("log"))
            .unwrap();
        let child = ChildGuard::spawn(
            "skiff-agent",
            Command::new(BIN)
                .args(["serve", "--name", "test-node", "--state-dir"])
                .arg(&self.state)
                .arg("--socket")
                .arg(&self.socket)
                .arg("--config")
                .arg(self.state.with_extension("toml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .unwrap();
        self.process = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "agent did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.with_extension("log")).unwrap_or_default()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "skiff-agent {args:?} failed: {}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Agent {
    /// Containers outlive their agent: a test that failed half-way must not
    /// leave its containers running.
    fn drop(&mut self) {
        if self.process.is_none() {
            return;
        }
        let ids = self.cli(&["ps", "-a", "-q"]);
        let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = self.cli(&args);
        }
    }
}

impl Agent {
    /// Builds the busybox test image and imports it; returns its name.
    /// `SKIFF_TEST_BUSYBOX_LAYOUT` names a ready-made layout to import
    /// instead (the cgroup v2 VM has no umoci; scripts/vm-test sets it).
    pub fn busybox(&self, work: &Path) -> String {
        let layout = match std::env::var_os("SKIFF_TEST_BUSYBOX_LAYOUT") {
            Some(layout) => PathBuf::from(layout),
            None => {
                skiff_test_support::images::OciImage::busybox(work, "test", &[])
                    .unwrap()
                    .layout
            }
        };
        self.ok(&[
            "import",
            layout.to_str().unwrap(),
            "--name",
            "skiff/busybox:test",
        ]);
        "skiff/busybox:test".to_string()
    }

    /// `inspect` as JSON.
    pub fn inspect(&self, container: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["inspect", container])).unwrap()
    }

    /// Polls `inspect` until `f` holds (or fails the test after 20 s).
    pub fn until(
        &self,
        container: &str,
        what: &str,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.inspect(container);
            if f(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{container}: never {what}: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// An agent (as root) with the busybox test image imported: the temporary
/// directory that holds it, the agent, and the image's name.
pub fn setup() -> (tempfile::TempDir, Agent, String) {
    skiff_test_support::tools::require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let image = agent.busybox(&work);
    (dir, agent, image)
}

/// Output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
