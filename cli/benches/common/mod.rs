//! What the CLI's benchmarks share: a `skiff dev` fleet run as a user runs
//! it, and medians. Each benchmark uses a part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

/// A `skiff dev` fleet with its state, output and CLI config in a
/// directory of its own; stopped with Ctrl-C as a user stops it.
pub struct Dev {
    child: Child,
    out: PathBuf,
    config: PathBuf,
    pub state: PathBuf,
}

impl Dev {
    pub fn start(dir: &Path, demo: bool, extra: &[&OsStr]) -> Dev {
        let out = dir.join("dev.out");
        let config = dir.join("skiff.toml");
        let state = dir.join("state");
        let log = std::fs::File::create(&out).unwrap();
        let mut cmd = Command::new(SKIFF);
        cmd.arg("dev");
        if demo {
            cmd.arg("--demo");
        }
        let child = cmd
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen", "127.0.0.1:7079"])
            .args(extra)
            .env("SKIFF_CONFIG", &config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Dev {
            child,
            out,
            config,
            state,
        }
    }

    /// Everything `skiff dev` printed, once it has printed `what`.
    pub fn wait_for(&self, what: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            if text.contains(what) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "skiff dev never said {what:?}: {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The CLI, talking to this fleet through its `dev` context.
    pub fn skiff(&self) -> Command {
        let mut c = Command::new(SKIFF);
        c.env("SKIFF_CONFIG", &self.config).env("NO_COLOR", "1");
        c
    }

    /// `skiff run --detach -f -` of `spec`; panics unless it is accepted.
    pub fn submit(&self, spec: &str) {
        use std::io::Write;
        let mut p = self
            .skiff()
            .args(["run", "--detach", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        p.stdin.take().unwrap().write_all(spec.as_bytes()).unwrap();
        assert!(p.wait().unwrap().success(), "skiff run -f -: {spec}");
    }

    /// Ctrl-C, and waits for `skiff dev` to clean up.
    pub fn stop(self) {
        drop(self);
    }
}

/// A benchmark that panics half-way leaves no fleet behind either.
impl Drop for Dev {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
    }
}
