//! Three etcd members on loopback (Debian's `etcd-server`), each its own
//! process and data directory, started and stopped by the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_test_support::procs::ChildGuard;

/// What etcd logs when a port it was given is taken.
const TAKEN: &str = "address already in use";

#[derive(Debug)]
pub struct Etcd {
    dir: PathBuf,
    client: Vec<u16>,
    peer: Vec<u16>,
    members: Vec<Option<ChildGuard>>,
}

impl Etcd {
    /// Three members, up and with a leader. A port picked free that
    /// something took before a member bound it: on other ports, afresh.
    pub fn start(dir: &Path) -> Etcd {
        for attempt in 0.. {
            std::fs::create_dir_all(dir).unwrap();
            let n = 3;
            let mut e = Etcd {
                dir: dir.to_path_buf(),
                client: (0..n).map(|_| super::free_port()).collect(),
                peer: (0..n).map(|_| super::free_port()).collect(),
                members: (0..n).map(|_| None).collect(),
            };
            for i in 0..n {
                e.start_member(i);
            }
            match e.healthy() {
                Ok(()) => return e,
                Err(log) if attempt < 3 && log.contains(TAKEN) => {
                    drop(e);
                    std::fs::remove_dir_all(dir).unwrap();
                }
                Err(log) => panic!("etcd never became healthy:\n{log}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// The client URLs, as `[etcd] endpoints` takes them (TOML).
    pub fn endpoints_toml(&self) -> String {
        let urls: Vec<String> = self
            .client
            .iter()
            .map(|p| format!("\"http://127.0.0.1:{p}\""))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    pub fn start_member(&mut self, i: usize) {
        let cluster: Vec<String> = self
            .peer
            .iter()
            .enumerate()
            .map(|(j, p)| format!("m{j}=http://127.0.0.1:{p}"))
            .collect();
        let data = self.dir.join(format!("m{i}"));
        let fresh = !data.exists();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("m{i}.log")))
            .unwrap();
        let client = format!("http://127.0.0.1:{}", self.client[i]);
        let peer = format!("http://127.0.0.1:{}", self.peer[i]);
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-token", "skiff-test"])
            .args([
                "--initial-cluster-state",
                if fresh { "new" } else { "existing" },
            ])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.members[i] = Some(ChildGuard::spawn("etcd", &mut cmd).unwrap());
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut m) = self.members[i].take() {
            m.kill9();
        }
    }

    /// Every member healthy within 30 s; else their logs.
    fn healthy(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.client.iter().all(|p| {
                Command::new("curl")
                    .args(["-sf", "-m", "2", &format!("http://127.0.0.1:{p}/health")])
                    .output()
                    .is_ok_and(|o| {
                        String::from_utf8_lossy(&o.stdout).contains("\"health\":\"true\"")
                    })
            });
            if ok {
                return Ok(());
            }
            let log = self.log();
            if Instant::now() >= deadline || log.contains(TAKEN) {
                return Err(log);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        (0..self.members.len())
            .map(|i| {
                std::fs::read_to_string(self.dir.join(format!("m{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
