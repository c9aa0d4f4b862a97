//! `skiff dev --demo` driven as a new user would (the README's command),
//! and every `skiff` command against the fleet it runs — a real gateway,
//! a real agent and real burst VMs — with its errors and its `-o json`;
//! then Ctrl-C, after which nothing of the fleet is left on the host. As
//! root. A dev fleet has fixed names (its bridges, table and cgroup), so
//! the tests that start one hold a lock and never overlap.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_e2e::{bin, eventually};
use skiff_test_support::net::free_port;
use skiff_test_support::procs::ChildGuard;
use skiff_test_support::tools::require_root;

/// Held while a test runs a dev fleet.
fn dev_lock() -> nix::fcntl::Flock<std::fs::File> {
    std::fs::create_dir_all("/run/skiff-test").unwrap();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/skiff-test/dev.lock")
        .unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock /run/skiff-test/dev.lock")
}

/// A `skiff dev` run: its process, its output file, its state and config.
struct Dev {
    process: Option<ChildGuard>,
    out: PathBuf,
    state: PathBuf,
    config: PathBuf,
    listen: String,
}

impl Dev {
    fn start(dir: &Path, args: &[&str]) -> Dev {
        let listen = format!("127.0.0.1:{}", free_port().unwrap());
        let state = dir.join("dev");
        let config = dir.join("config/skiff.toml");
        let out = dir.join(format!("dev-{}.out", free_port().unwrap()));
        let log = std::fs::File::create(&out).unwrap();
        let process = ChildGuard::spawn(
            "skiff dev",
            Command::new(bin("skiff"))
                .arg("dev")
                .args(args)
                .arg("--state-dir")
                .arg(&state)
                .args(["--listen", &listen])
                .env("SKIFF_CONFIG", &config)
                .env_remove("SKIFF_ADDR")
                .env_remove("SKIFF_TOKEN")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .unwrap();
        Dev {
            process: Some(process),
            out,
            state,
            config,
            listen,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits until the output says `what`.
    fn until(&self, what: &str, secs: u64) {
        eventually(
            secs,
            || self.output().contains(what),
            || format!("skiff dev never said {what:?}:\n{}", self.output()),
        );
    }

    /// `skiff ARGS` as a user in another terminal: only the config file
    /// `skiff dev` wrote tells it where the gateway is.
    fn skiff(&self, args: &[&str]) -> Output {
        Command::new(bin("skiff"))
            .args(args)
            .env("SKIFF_CONFIG", &self.config)
            .env_remove("SKIFF_ADDR")
            .env_remove("SKIFF_TOKEN")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.skiff(args);
        assert!(
            out.status.success(),
            "skiff {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap_or_else(|e| panic!("skiff {args:?} -o json: {e}"))
    }

    /// Ctrl-C, as a user would; the exit status.
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let mut p = self.process.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(p.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = p.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "skiff dev did not stop: {}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill_9(&mut self) {
        self.process.take().expect("running").kill9();
    }
}

impl Drop for Dev {
    /// A test that failed half-way stops its fleet as a user would, so the
    /// fleet removes what it made.
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let pid = nix::unistd::Pid::from_raw(p.pid() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && matches!(p.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whatever a dev fleet could have left on the host, listed; `vms` are
/// the instance ids of its VMs (other tests run local VMs of their own).
fn leftovers(state: &Path, vms: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    let run = |args: &[&str]| {
        text(
            &Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap()
                .stdout,
        )
    };
    let tails: Vec<&str> = vms
        .iter()
        .map(|id| &id[id.len().saturating_sub(8)..])
        .collect();
    for ns in run(&["ip", "netns", "list"]).lines() {
        if tails.iter().any(|t| ns.starts_with(&format!("skvm-{t}"))) {
            left.push(format!("netns {ns}"));
        }
    }
    for link in run(&["ip", "-o", "link"]).lines() {
        let name = link.split(": ").nth(1).unwrap_or_default();
        if name.starts_with("skdev") || tails.iter().any(|t| name.starts_with(&format!("skv{t}"))) {
            left.push(format!("link {name}"));
        }
    }
    if run(&["nft", "list", "tables"]).contains("skiff_dev") {
        left.push("nft table skiff_dev".into());
    }
    for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for p in [
            e.path().join("skiff-dev"),
            Path::new("/sys/fs/cgroup/skiff-dev").to_path_buf(),
        ] {
            if p.exists() {
                left.push(format!("cgroup {}", p.display()));
            }
        }
    }
    let prefix = state.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for m in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
        if m.starts_with(&prefix) {
            left.push(format!("mount {m}"));
        }
    }
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd).contains(&prefix)
        {
            left.push(format!(
                "process {pid}: {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    if state.exists() {
        left.push(format!("directory {}", state.display()));
    }
    left
}

/// One GET to `addr` (a container's `ip:port`).
fn http_get(addr: &str, path: &str) -> String {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
            .unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn lines_with(text: &str, what: &str) -> usize {
    text.lines().filter(|l| l.contains(what)).count()
}

#[test]
fn skiff_dev_demo_bursts_every_command_shows_it_and_ctrl_c_leaves_nothing() {
    require_root();
    let _lock = dev_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Dev::start(dir.path(), &["--demo"]);
    dev.until("demo: all 6 replicas running", 240);
    let out = dev.output();
    assert!(out.contains("2 on local, 4 on burst"), "{out}");
    assert!(out.contains("first burst replica running"), "{out}");
    assert!(
        out.contains(&format!("API          http://{}", dev.listen)),
        "{out}"
    );

    // ps: the workload, its counts and sites (table and JSON).
    let ps = dev.ok(&["ps"]);
    assert!(ps.starts_with("NAME"), "{ps}");
    assert_eq!(lines_with(&ps, "demo"), 1, "{ps}");
    let v = dev.json(&["ps"]);
    assert_eq!(v[0]["spec"]["name"], "demo");
    assert_eq!(v[0]["running"], 6);
    assert_eq!(v[0]["pending"], 0);
    assert_eq!(v[0]["sites"], serde_json::json!(["burst", "local"]));

    // status: each allocation, where it runs.
    let status = dev.ok(&["status", "demo"]);
    assert_eq!(lines_with(&status, " local "), 2, "{status}");
    assert_eq!(lines_with(&status, " burst "), 4, "{status}");
    let st = dev.json(&["status", "demo"]);
    let allocs = st["allocations"].as_array().unwrap();
    let local = allocs
        .iter()
        .find(|a| a["site"] == "local" && a["state"] == "running")
        .unwrap();
    let local_id = local["id"].as_str().unwrap().to_string();
    let local_addr = format!("{}:8080", local["address"].as_str().unwrap());

    // nodes and sites.
    let nodes = dev.json(&["nodes"]);
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(nodes.iter().all(|n| n["status"] == "ready"));
    assert_eq!(nodes.iter().filter(|n| n["site"] == "burst").count(), 2);
    let table = dev.ok(&["nodes"]);
    assert!(table.contains("800m/1"), "{table}");
    let sites = dev.json(&["sites"]);
    let burst = sites
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "burst")
        .unwrap();
    assert_eq!(
        (burst["kind"].as_str(), burst["nodes"].as_u64()),
        (Some("local"), Some(2))
    );
    assert!(dev.ok(&["sites"]).contains("1600m/2"));

    // The demo answers with where it runs; logs show it, interleaved and
    // prefixed; -f follows a new line and the container's restart.
    let logs = dev.ok(&["logs", "demo", "--tail", "1"]);
    assert_eq!(lines_with(&logs, "web: listening on :8080"), 6, "{logs}");
    assert!(
        logs.lines()
            .all(|l| l.starts_with("demo-") && l.contains(" | ")),
        "{logs}"
    );
    assert!(
        http_get(&local_addr, "/")
            .contains(&format!("node local site local allocation {local_id}"))
    );
    let follow_out = dir.path().join("follow.out");
    let mut follow = ChildGuard::spawn(
        "skiff logs -f",
        Command::new(bin("skiff"))
            .args(["logs", "-f", "demo", "--alloc", &local_id, "--since", "10m"])
            .env("SKIFF_CONFIG", &dev.config)
            .stdout(std::fs::File::create(&follow_out).unwrap())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let followed = || std::fs::read_to_string(&follow_out).unwrap_or_default();
    eventually(30, || followed().contains("web: listening"), followed);
    http_get(&local_addr, "/exit");
    eventually(
        60,
        || lines_with(&followed(), "web: listening") == 2,
        || format!("the restart never showed in logs -f: {}", followed()),
    );
    assert!(
        followed().contains("web: GET /exit HTTP/1.1"),
        "{}",
        followed()
    );
    assert!(
        follow.try_wait().unwrap().is_none(),
        "logs -f ended at the restart"
    );
    drop(follow);

    // exec: output and the exit code, through the gateway.
    let out = dev.skiff(&[
        "exec", "demo", "--alloc", &local_id, "--", "/web", "--whoami",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("hello from skiff: node local site local allocation {local_id}\n")
    );
    let out = dev.skiff(&["exec", "demo", "--", "/web", "--exit", "7"]);
    assert_eq!(out.status.code(), Some(7));

    // events: what happened, and its JSON.
    let events = dev.ok(&["events"]);
    assert!(events.contains("placed on burst-"), "{events}");
    assert!(events.contains("launched"), "{events}");
    let ev = dev.json(&["events"]);
    assert!(
        ev.as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "node" && e["message"] == "ready")
    );

    // explain: past what the burst site may launch, replicas wait, and
    // explain says why.
    dev.ok(&["scale", "demo", "12"]);
    eventually(
        60,
        || {
            dev.json(&["explain", "demo"]).as_array().is_some_and(|w| {
                w.len() == 4
                    && w.iter()
                        .all(|x| x["explanation"]["sites"]["burst"].is_string())
            })
        },
        || dev.ok(&["explain", "demo"]),
    );
    let why = dev.ok(&["explain", "demo"]);
    assert!(why.starts_with("demo: 4 replica(s) pending"), "{why}");
    assert!(why.contains("site burst: "), "{why}");
    assert!(why.contains("insufficient cpu"), "{why}");
    dev.ok(&["scale", "demo", "6"]);
    assert!(dev.ok(&["explain", "demo"]).contains("nothing is pending"));

    // run -f: a new workload, waited for; one that cannot fit times out
    // with exit 3; a bad file is exit 2 naming the field.
    let image = v[0]["spec"]["image"].as_str().unwrap().to_string();
    let web = dir.path().join("web.yaml");
    std::fs::write(
        &web,
        format!("name: web\nimage: {image}\nreplicas: 1\nresources: {{ cpu: 100m }}\n"),
    )
    .unwrap();
    let out = dev.ok(&["run", "-f", web.to_str().unwrap()]);
    assert!(
        out.contains("web: created (version 1)") && out.contains("web: 1 of 1 replicas running"),
        "{out}"
    );
    std::fs::write(
        &web,
        format!(
            "name: web\nimage: {image}\nreplicas: 1\nresources: {{ cpu: 100m }}\nenv: {{ A: b }}\n"
        ),
    )
    .unwrap();
    let out = dev.ok(&["run", "-f", web.to_str().unwrap()]);
    assert!(out.contains("web: updated (version 2)"), "{out}");
    let huge = dir.path().join("huge.yaml");
    std::fs::write(
        &huge,
        format!("name: huge\nimage: {image}\nresources: {{ cpu: 64 }}\n"),
    )
    .unwrap();
    let out = dev.skiff(&["run", "-f", huge.to_str().unwrap(), "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with("skiff: not converged after 2s: huge: 0 of 1 running"),
        "{}",
        text(&out.stderr)
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: bad\nimage: x\nports: [{ container: 70000 }]\n").unwrap();
    let out = dev.skiff(&["run", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr).trim(),
        format!(
            "skiff: {}: spec.ports[0].container: 70000 is not a port",
            bad.display()
        )
    );
    // restart rolls and waits, and `logs -f` of the workload follows the
    // new replica too; rm deletes.
    let web_out = dir.path().join("web-follow.out");
    let web_follow = ChildGuard::spawn(
        "skiff logs -f web",
        Command::new(bin("skiff"))
            .args(["logs", "-f", "web"])
            .env("SKIFF_CONFIG", &dev.config)
            .env("NO_COLOR", "1")
            .stdout(std::fs::File::create(&web_out).unwrap())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let web_followed = || std::fs::read_to_string(&web_out).unwrap_or_default();
    eventually(
        30,
        || web_followed().contains("web: listening"),
        web_followed,
    );
    let out = dev.ok(&["restart", "web"]);
    assert!(
        out.contains("web: restarting (version 3)")
            && out.contains("1 of 1 replicas running (version 3)"),
        "{out}"
    );
    let web_now = dev.json(&["status", "web"]);
    let new_id = web_now["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["state"] == "running")
        .map(|a| a["id"].as_str().unwrap().to_string())
        .unwrap();
    eventually(
        60,
        || web_followed().contains(&format!("{new_id} | web: listening")),
        || format!("logs -f web never showed {new_id}: {}", web_followed()),
    );
    drop(web_follow);
    assert_eq!(
        dev.ok(&["rm", "web", "huge"]),
        "web: deleted\nhuge: deleted\n"
    );

    // Nodes: cordon, uncordon, drain show in nodes.
    let node = nodes.iter().find(|n| n["site"] == "burst").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(dev.ok(&["cordon", &node]), format!("{node}: cordoned\n"));
    assert!(
        dev.ok(&["nodes"])
            .lines()
            .any(|l| l.starts_with(&node) && l.contains("cordoned"))
    );
    assert_eq!(dev.ok(&["uncordon", &node]), format!("{node}: ready\n"));
    // Drain: no work, and what it ran goes elsewhere.
    assert_eq!(dev.ok(&["drain", &node]), format!("{node}: draining\n"));
    let drained = dev.json(&["nodes"]);
    let n = drained
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == node.as_str())
        .unwrap();
    assert_eq!(
        (n["draining"].as_bool(), n["unschedulable"].as_bool()),
        (Some(true), Some(true))
    );
    eventually(
        60,
        || {
            let st = dev.json(&["status", "demo"]);
            st["allocations"].as_array().unwrap().iter().all(|a| {
                a["node"] != node.as_str()
                    || !matches!(
                        a["state"].as_str(),
                        Some("running" | "starting" | "pulling")
                    )
            })
        },
        || dev.ok(&["status", "demo"]),
    );

    // Tokens: a join token prints the command that joins a node; an API
    // token's role holds; both are revoked.
    let t = dev.ok(&["token", "create", "--site", "local", "--ttl", "10m"]);
    let command = t
        .lines()
        .find(|l| l.contains("skiff-agent serve"))
        .unwrap()
        .trim();
    assert!(
        command.starts_with("SKIFF_AGENT_JOIN_TOKEN=skiff-join-"),
        "{t}"
    );
    assert!(
        command.contains(" skiff-agent serve --gateway https://10.249.0.1:"),
        "{t}"
    );
    assert!(command.contains(" --ca-hash sha256:"), "{t}");
    let ro = dev.json(&["token", "create", "--role", "read-only", "--name", "viewer"]);
    let ro_token = ro["token"].as_str().unwrap().to_string();
    let ls = dev.json(&["token", "ls"]);
    assert!(
        ls["api_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "viewer")
    );
    let viewer = |args: &[&str]| {
        let mut a = vec!["--token", ro_token.as_str()];
        a.extend(args);
        dev.skiff(&a)
    };
    assert!(viewer(&["ps"]).status.success());
    let out = viewer(&["scale", "demo", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        "skiff: this needs the operator role"
    );
    assert_eq!(
        dev.ok(&["token", "rm", ro["id"].as_str().unwrap()]),
        format!("{}: revoked\n", ro["id"].as_str().unwrap())
    );
    let out = viewer(&["ps"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("skiff: unknown token (the gateway refused the token"),
        "{}",
        text(&out.stderr)
    );

    // Errors are one line: an unknown workload, an unreachable gateway.
    let out = dev.skiff(&["status", "nothere"]);
    assert_eq!(
        (out.status.code(), text(&out.stderr)),
        (Some(1), "skiff: no workload nothere\n".to_string())
    );
    let out = dev.skiff(&["--addr", "http://127.0.0.1:1", "ps"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "skiff: cannot reach the gateway at http://127.0.0.1:1: Connection refused (os error 111)\n"
    );

    // Ctrl-C: everything goes, the VMs it launched included.
    let vms: Vec<String> = dev
        .json(&["nodes"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["instance_id"].as_str().map(str::to_string))
        .collect();
    assert!(vms.len() >= 2, "{vms:?}");
    let status = dev.interrupt();
    assert!(status.success(), "{}", dev.output());
    assert!(
        dev.output().contains("stopped; nothing is left behind"),
        "{}",
        dev.output()
    );
    let left = leftovers(&dev.state, &vms);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[test]
fn a_second_skiff_dev_after_kill_9_cleans_up_and_starts() {
    require_root();
    let _lock = dev_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut first = Dev::start(dir.path(), &[]);
    first.until("Ctrl-C stops the fleet", 60);
    // Something running, so there is a container to leave behind.
    let spec = dir.path().join("one.yaml");
    let image = first
        .output()
        .lines()
        .find_map(|l| l.split("serving ").nth(1).map(|i| i.trim().to_string()))
        .unwrap();
    std::fs::write(&spec, format!("name: one\nimage: {image}\n")).unwrap();
    first.ok(&["run", "-f", spec.to_str().unwrap()]);
    first.kill_9();
    assert!(
        !leftovers(&first.state, &[]).is_empty(),
        "a killed dev fleet leaves its agent and container"
    );

    // The second serves a local image too, as `docker save` writes one.
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let busybox = skiff_test_support::images::OciImage::busybox(&work, "latest", &[]).unwrap();
    let saved = dir.path().join("saved.tar");
    let skopeo = Command::new(skiff_test_support::tools::require("skopeo").unwrap())
        .args(["copy", "--quiet", &busybox.transport()])
        .arg(format!("docker-archive:{}:saved/bb:1.0", saved.display()))
        .output()
        .unwrap();
    assert!(skopeo.status.success(), "{}", text(&skopeo.stderr));
    let mut second = Dev::start(dir.path(), &["--image", saved.to_str().unwrap()]);
    second.until("Ctrl-C stops the fleet", 60);
    assert!(
        second
            .output()
            .contains("cleaned up what an earlier skiff dev left"),
        "{}",
        second.output()
    );
    let ps = second.json(&["ps"]);
    assert_eq!(ps, serde_json::json!([]), "a fresh fleet");
    let saved_image = second
        .output()
        .lines()
        .find_map(|l| l.trim().strip_prefix("and ").map(str::to_string))
        .unwrap_or_else(|| panic!("no --image served: {}", second.output()));
    assert!(saved_image.ends_with("/saved/bb:1.0"), "{saved_image}");
    std::fs::write(
        &spec,
        format!("name: saved\nimage: {saved_image}\ncommand: [sleep, \"3600\"]\n"),
    )
    .unwrap();
    second.ok(&["run", "-f", spec.to_str().unwrap()]);
    let status = second.json(&["status", "saved"]);
    assert_eq!(status["running"], 1, "{status}");
    second.ok(&["rm", "saved"]);
    assert!(second.interrupt().success());
    let left = leftovers(&second.state, &[]);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[test]
fn without_a_gateway_commands_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let port = free_port().unwrap();
    let skiff = |args: &[&str]| {
        Command::new(bin("skiff"))
            .args(args)
            .env("SKIFF_CONFIG", &config)
            .env("SKIFF_ADDR", format!("http://127.0.0.1:{port}"))
            .env_remove("SKIFF_TOKEN")
            .output()
            .unwrap()
    };
    for args in [
        &["ps"][..],
        &["nodes"],
        &["logs", "x"],
        &["events"],
        &["token", "ls"],
    ] {
        let out = skiff(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            text(&out.stderr),
            format!(
                "skiff: cannot reach the gateway at http://127.0.0.1:{port}: Connection refused (os error 111)\n"
            ),
            "{args:?}"
        );
    }
    // Several addresses, none up: one line naming them all.
    let other = free_port().unwrap();
    let out = Command::new(bin("skiff"))
        .args(["ps"])
        .env("SKIFF_CONFIG", &config)
        .env(
            "SKIFF_ADDR",
            format!("http://127.0.0.1:{port}, http://127.0.0.1:{other}"),
        )
        .env_remove("SKIFF_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "skiff: cannot reach the gateway at http://127.0.0.1:{port}, http://127.0.0.1:{other}: Connection refused (os error 111)\n"
        )
    );
    // Usage errors are exit 2.
    assert_eq!(skiff(&["scale", "x"]).status.code(), Some(2));
    assert_eq!(skiff(&["token", "create"]).status.code(), Some(2));
    // A bad context file names the file and the key.
    std::fs::write(&config, "[contexts.x]\naddres = \"y\"\n").unwrap();
    let out = Command::new(bin("skiff"))
        .args(["ps"])
        .env("SKIFF_CONFIG", &config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with(&format!(
        "skiff: {}: unknown field `addres`",
        config.display()
    )));
    // Contexts.
    std::fs::remove_file(&config).unwrap();
    let ctx = |args: &[&str]| {
        let out = Command::new(bin("skiff"))
            .args(args)
            .env("SKIFF_CONFIG", &config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    ctx(&["context", "set", "a", "--address", "http://127.0.0.1:1"]);
    ctx(&[
        "context",
        "set",
        "b",
        "--address",
        "https://gw.example:7070",
        "--ca-hash",
        "sha256:00",
    ]);
    assert_eq!(
        ctx(&["context", "ls"]),
        "* a  http://127.0.0.1:1\n  b  https://gw.example:7070\n"
    );
    ctx(&["context", "use", "b"]);
    assert!(ctx(&["context", "ls"]).contains("* b"));
    // Completion scripts.
    for shell in ["bash", "zsh", "fish"] {
        assert!(ctx(&["completion", shell]).contains("skiff"), "{shell}");
    }
}

/// SHA-256 (`sha256:HEX`) of the DER of the first certificate in `pem`.
fn ca_hash(pem: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(der)))
}

#[test]
fn the_api_beyond_loopback_is_tls_and_the_cli_pins_the_gateways_ca() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let slot = skiff_test_support::net::NetSlot::take().unwrap();
    let prefix = slot.outside_prefix();
    let (_ns, _link) = skiff_test_support::netns::outside_host(
        &format!("skto{}", slot.n),
        &format!("sko{}", slot.n),
        &prefix,
    )
    .unwrap();
    let ip = format!("{prefix}.1");
    let listen = format!("{ip}:{}", free_port().unwrap());
    let state = dir.path().join("state");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, format!("advertise = [\"{ip}\"]\n")).unwrap();
    let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
    let _gateway = ChildGuard::spawn(
        "skiff-gateway",
        Command::new(bin("skiff-gateway"))
            .arg("serve")
            .arg("--state-dir")
            .arg(&state)
            .arg("--config")
            .arg(&config)
            .args([
                "--listen",
                &listen,
                "--agent-listen",
                &format!("127.0.0.1:{}", free_port().unwrap()),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
    .unwrap();
    skiff_test_support::net::wait_for_listener(listen.parse().unwrap(), Duration::from_secs(20))
        .unwrap();
    let ca_file = state.join("pki/ca.crt");
    let hash = ca_hash(&std::fs::read_to_string(&ca_file).unwrap());
    let cli_config = dir.path().join("skiff.toml");
    let skiff = |args: &[&str]| {
        Command::new(bin("skiff"))
            .args(args)
            .env("SKIFF_CONFIG", &cli_config)
            .env_remove("SKIFF_ADDR")
            .env_remove("SKIFF_TOKEN")
            .output()
            .unwrap()
    };
    let token = state.join("admin.token");
    let set = |extra: &[&str]| {
        let mut a = vec!["context", "set", "gw", "--address"];
        let addr = format!("https://{listen}");
        a.push(&addr);
        a.extend(["--token-file", token.to_str().unwrap()]);
        a.extend(extra);
        let out = skiff(&a);
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    // Pinned by file and by hash: the same gateway.
    set(&["--ca-file", ca_file.to_str().unwrap()]);
    let v: Value = serde_json::from_slice(&skiff(&["version", "-o", "json"]).stdout).unwrap();
    assert_eq!(v["gateway"]["ca_hash"], hash.as_str());
    set(&["--ca-hash", &hash]);
    let out = skiff(&["ps"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Another CA's hash: refused, saying why.
    set(&["--ca-hash", &format!("sha256:{}", "0".repeat(64))]);
    let out = skiff(&["ps"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("does not match the pinned sha256:0000"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // Plain HTTP to it gets nothing.
    let out = skiff(&["--addr", &format!("http://{listen}"), "ps"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    // Several gateways of a fleet, comma-separated: one that cannot be
    // reached is passed over, and `version` names the one that answered.
    set(&["--ca-hash", &hash]);
    let dead = format!("https://{ip}:{}", free_port().unwrap());
    let both = format!("{dead},https://{listen}");
    let out = skiff(&["--addr", &both, "version", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["address"], format!("https://{listen}"), "{v}");
    let out = skiff(&["--addr", &both, "ps"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
