//! Real containers as root: isolation, limits, hardening, supervision and
//! cleanup, driven through the `skiff-agent` CLI. Limits and accounting,
//! which also run on cgroup v2 in a VM, are in `limits.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{setup, text};

#[test]
fn exit_codes_and_output() {
    let (_d, agent, img) = setup();
    let out = agent.cli(&[
        "run",
        "--rm",
        &img,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    let out = agent.cli(&["run", "--rm", &img, "true"]);
    assert_eq!(out.status.code(), Some(0));
    // --rm left nothing behind.
    assert_eq!(agent.ok(&["ps", "-a", "-o", "json"]).trim(), "[]");
}

#[test]
fn a_process_ignoring_sigterm_is_killed_after_the_stop_timeout() {
    let (_d, agent, img) = setup();
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        &img,
        "sh",
        "-c",
        "trap '' TERM; while true; do sleep 1; done",
    ]);
    agent.until("stubborn", "running", |v| v["state"] == "running");
    let t = Instant::now();
    agent.ok(&["stop", "-t", "1", "stubborn"]);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "stopped before the timeout"
    );
    let v = agent.inspect("stubborn");
    assert_eq!(v["state"], "exited");
    assert_eq!(v["reason"], "killed", "{v}");
    assert_eq!(v["exit_code"], 137);
    agent.ok(&["rm", "stubborn"]);
}

#[test]
fn isolation_and_hardening_are_in_force() {
    let (_d, agent, img) = setup();
    // Only the container's own processes are visible.
    let out = agent.ok(&["run", "--rm", &img, "ps", "-o", "pid,comm"]);
    let pids: Vec<&str> = out.lines().skip(1).map(str::trim).collect();
    assert_eq!(pids, vec!["1 ps"], "{out}");
    // The default capability set, no_new_privs and seccomp filtering.
    let status = agent.ok(&["run", "--rm", &img, "cat", "/proc/self/status"]);
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .map(|l| l[k.len()..].trim().to_string())
            .unwrap()
    };
    assert_eq!(field("CapEff:"), "00000000a80425fb");
    assert_eq!(field("CapBnd:"), "00000000a80425fb");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");
    // Mounting and changing kernel settings are refused...
    let mount = agent.cli(&["run", "--rm", &img, "mount", "-t", "tmpfs", "none", "/tmp"]);
    assert_ne!(mount.status.code(), Some(0));
    let sysctl = agent.cli(&[
        "run",
        "--rm",
        &img,
        "sh",
        "-c",
        "echo 1 > /proc/sys/kernel/sysrq",
    ]);
    assert_ne!(sysctl.status.code(), Some(0));
    let masked = agent.ok(&[
        "run",
        "--rm",
        &img,
        "sh",
        "-c",
        "wc -c < /proc/timer_list; ls /proc/scsi | wc -l",
    ]);
    assert_eq!(masked, "0\n0\n", "masked paths are empty");
    // ...unless explicitly allowed.
    let privileged = agent.cli(&[
        "run",
        "--rm",
        "--privileged",
        &img,
        "mount",
        "-t",
        "tmpfs",
        "none",
        "/tmp",
    ]);
    assert_eq!(
        privileged.status.code(),
        Some(0),
        "{}",
        text(&privileged.stderr)
    );
    let added = agent.ok(&[
        "run",
        "--rm",
        "--cap-add",
        "SYS_ADMIN",
        &img,
        "grep",
        "CapEff",
        "/proc/self/status",
    ]);
    assert!(added.contains("00000000a82425fb"), "{added}");
}

#[test]
fn user_workdir_env_and_hostname() {
    let (_d, agent, img) = setup();
    let out = agent.ok(&[
        "run",
        "--rm",
        "--user",
        "app",
        "--workdir",
        "/tmp",
        "-e",
        "GREETING=hi",
        "--hostname",
        "box",
        &img,
        "sh",
        "-c",
        "id -u; id -g; pwd; echo $GREETING; hostname; cat /etc/hostname",
    ]);
    assert_eq!(out, "1000\n1000\n/tmp\nhi\nbox\nbox\n");
    let nobody = agent.cli(&["run", "--rm", "--user", "ghost", &img, "true"]);
    assert_eq!(nobody.status.code(), Some(1));
    assert!(
        text(&nobody.stderr)
            .contains("user \"ghost\": no user \"ghost\" in the image's /etc/passwd"),
        "{}",
        text(&nobody.stderr)
    );
}

#[test]
fn bad_input_leaves_no_container_behind() {
    let (_d, agent, img) = setup();
    for (args, want) in [
        (
            vec!["run", "--rm", "--pull", "never", "no/such:image", "true"],
            "no such image: no/such:image",
        ),
        (
            vec!["run", "--rm", "--memory", "1k", img.as_str(), "true"],
            "memory 1Ki: the minimum is 4Mi",
        ),
        (
            vec!["run", "--rm", img.as_str(), "/no/such/program"],
            "failed to start: exec /no/such/program",
        ),
        (
            vec!["run", "--rm", img.as_str(), "nosuchcmd"],
            "executable file not found in $PATH: nosuchcmd",
        ),
    ] {
        let out = agent.cli(&args);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    assert_eq!(agent.ok(&["ps", "-a", "-o", "json"]).trim(), "[]");
    assert!(
        std::fs::read_dir(agent.state.join("containers"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn nothing_is_left_behind_after_rm() {
    let (_d, agent, img) = setup();
    let id = agent
        .ok(&[
            "run",
            "-d",
            "--memory",
            "32m",
            "--pids-limit",
            "50",
            &img,
            "sleep",
            "60",
        ])
        .trim()
        .to_string();
    agent.until(&id, "running", |v| v["state"] == "running");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&id),
        "the container's mounts are only in its own namespace"
    );
    agent.ok(&["rm", "-f", &id]);
    assert!(!agent.state.join("containers").join(&id).exists());
    for ctrl in ["memory", "pids", "cpu"] {
        let cg = std::path::Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join("skiff")
            .join(&id);
        let v2 = std::path::Path::new("/sys/fs/cgroup/skiff").join(&id);
        assert!(!cg.exists() && !v2.exists(), "cgroup {} left", cg.display());
    }
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&id)
    );
}

#[test]
fn containers_survive_kill_9_of_the_agent_and_are_re_adopted() {
    let (_d, mut agent, img) = setup();
    let counter = agent
        .ok(&[
            "run",
            "-d",
            "--name",
            "counter",
            &img,
            "sh",
            "-c",
            "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done",
        ])
        .trim()
        .to_string();
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "quitter",
        &img,
        "sh",
        "-c",
        "sleep 1; exit 7",
    ]);
    let before = agent.until("counter", "running", |v| v["state"] == "running");
    std::thread::sleep(Duration::from_millis(300));

    agent.process.as_mut().unwrap().kill9();
    std::thread::sleep(Duration::from_millis(1500));
    agent.restart();

    let after = agent.until("counter", "re-adopted", |v| v["state"] == "running");
    assert_eq!(
        after["pid"], before["pid"],
        "the same process, not a new copy"
    );
    let quitter = agent.until("quitter", "exited", |v| v["state"] == "exited");
    assert_eq!(
        quitter["exit_code"], 7,
        "the exit code from while the agent was away is kept"
    );
    assert_eq!(quitter["reason"], "exited");
    // Logs are continuous across the agent's absence.
    std::thread::sleep(Duration::from_millis(300));
    let logs = agent.ok(&["logs", &counter]);
    let numbers: Vec<u64> = logs.lines().map(|l| l.parse().unwrap()).collect();
    assert!(numbers.len() > 15, "{logs}");
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(*n, i as u64, "a gap or duplicate in the logs");
    }
    // Exactly one copy runs.
    let running: Vec<serde_json::Value> =
        serde_json::from_str(&agent.ok(&["ps", "-o", "json"])).unwrap();
    assert_eq!(running.len(), 1);
    agent.ok(&["rm", "-f", "counter", "quitter"]);
}

/// `kill -9` of the agent, then of the shim and the process of the
/// container `v` (its `inspect`), as a host losing power.
fn host_dies(agent: &mut common::Agent, v: &serde_json::Value) {
    agent.process.as_mut().unwrap().kill9();
    for pid in [&v["shim_pid"], &v["pid"]] {
        let pid = pid.as_i64().unwrap() as i32;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn a_container_killed_with_the_agent_as_a_reboot_would_is_reported_gone_and_stops_at_once() {
    let (_d, mut agent, img) = setup();
    agent.ok(&["run", "-d", "--name", "doomed", &img, "sleep", "3600"]);
    let v = agent.until("doomed", "running", |v| v["state"] == "running");
    // Everything of the host dies at once: the agent (its last record
    // updates, never waited for, with it), the shim, the process.
    host_dies(&mut agent, &v);
    agent.restart();
    let after = agent.until("doomed", "exited", |v| v["state"] == "exited");
    assert_eq!(after["reason"], "lost", "{after}");
    // A stop or a removal of what is gone returns, as for any exited one.
    agent.ok(&["stop", "doomed"]);
    agent.ok(&["rm", "doomed"]);
}

#[test]
fn a_container_created_but_never_started_stops_at_once() {
    let (_d, mut agent, img) = setup();
    agent.ok(&["run", "-d", "--name", "unborn", &img, "sleep", "3600"]);
    let v = agent.until("unborn", "running", |v| v["state"] == "running");
    // The host dies between the container's creation and its start: the
    // agent, the shim and the process at once, and no trace of a start.
    host_dies(&mut agent, &v);
    let id = v["id"].as_str().unwrap();
    let dir = agent.state.join("containers").join(id);
    std::fs::remove_file(dir.join("state.json")).unwrap();
    agent.restart();
    let after = agent.until("unborn", "created", |v| v["state"] == "created");
    assert!(after["exit_code"].is_null(), "{after}");
    // A stop has nothing to wait for: it returns (it used to wait for
    // an exit that could never come), and the container can go.
    stop_returns(&agent, "unborn");
    agent.ok(&["rm", "unborn"]);
}

/// `skiff-agent stop NAME`, which must succeed and not hang.
fn stop_returns(agent: &common::Agent, name: &str) {
    let (tx, rx) = std::sync::mpsc::channel();
    let socket = agent.socket.clone();
    let container = name.to_string();
    std::thread::spawn(move || {
        let out = std::process::Command::new(common::BIN)
            .arg("--socket")
            .arg(&socket)
            .args(["stop", &container])
            .output()
            .unwrap();
        let _ = tx.send(out);
    });
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("stop {name} hangs:\n{}", agent.log()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn restart_policies_restart_with_back_off() {
    let (_d, agent, img) = setup();
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure",
        &img,
        "sh",
        "-c",
        "exit 1",
    ]);
    let v = agent.until("flaky", "restarted twice", |v| {
        v["restarts"].as_u64().unwrap_or(0) >= 2
    });
    assert_eq!(v["restart"], "on-failure");
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "done",
        "--restart",
        "on-failure",
        &img,
        "true",
    ]);
    let v = agent.until("done", "exited", |v| v["state"] == "exited");
    assert_eq!(
        v["restarts"], 0,
        "a clean exit is not restarted under on-failure"
    );
    // Stopped while it waits out its back-off (seconds by now): the stop
    // returns, and it stays down with its last exit.
    agent.until("flaky", "backing off", |v| {
        v["state"] == "restarting" && v["restarts"].as_u64().unwrap_or(0) >= 5
    });
    stop_returns(&agent, "flaky");
    let v = agent.until("flaky", "exited", |v| v["state"] == "exited");
    assert_eq!(v["exit_code"], 1, "{v}");
    agent.ok(&["rm", "-f", "flaky", "done"]);
}

#[test]
fn logs_are_json_lines_rotated_by_size() {
    let (_d, agent, img) = setup();
    let out = agent.cli(&[
        "run",
        "--name",
        "chatty",
        "--log-max-size",
        "4k",
        &img,
        "sh",
        "-c",
        "i=1; while [ $i -le 300 ]; do echo \"line $i \\\"quoted\\\"\"; i=$((i+1)); done; printf 'no newline\\tend' >&2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = agent.inspect("chatty")["id"].as_str().unwrap().to_string();
    let dir = agent.state.join("containers").join(&id);
    let current = std::fs::read_to_string(dir.join("container.log")).unwrap();
    let old = std::fs::read_to_string(dir.join("container.log.1")).unwrap();
    assert!(current.len() <= 4096, "{} bytes", current.len());
    assert!(!old.is_empty() && old.len() <= 4096);
    // Every line is a JSON object with an RFC 3339 time and the stream.
    for line in old.lines().chain(current.lines()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let time = v["time"].as_str().unwrap();
        assert!(
            time.len() == 30 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{time}"
        );
        assert!(v["stream"] == "stdout" || v["stream"] == "stderr", "{v}");
    }
    // `logs` shows what rotation kept, in order, ending with the last
    // lines; older lines are gone.
    let logs = agent.cli(&["logs", "chatty"]);
    let stdout = text(&logs.stdout);
    assert!(stdout.ends_with("line 300 \"quoted\"\n"), "{stdout}");
    assert!(!stdout.contains("line 1 "));
    let numbers: Vec<u32> = stdout
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    assert_eq!(text(&logs.stderr), "no newline\tend");
    agent.ok(&["rm", "chatty"]);
}

#[test]
fn exec_runs_inside_the_container_with_its_hardening() {
    let (_d, agent, img) = setup();
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "box",
        "--hostname",
        "boxhost",
        &img,
        "sleep",
        "300",
    ]);
    agent.until("box", "running", |v| v["state"] == "running");
    // Same pid namespace (its pid 1 is the container's first process),
    // same hostname, same root, the container's environment plus -e.
    let out = agent.cli(&[
        "exec",
        "-e",
        "EXTRA=1",
        "box",
        "sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname; echo $EXTRA; ls /proc | grep -c '^[0-9]'",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines[0].trim(), "sleep 300");
    assert_eq!(lines[1], "boxhost");
    assert_eq!(lines[2], "1");
    // Only the container's processes: sleep, sh, ls, grep (and no host ones).
    let procs: u32 = lines[3].parse().unwrap();
    assert!(procs <= 5, "{procs} processes visible");
    // The exit code is the command's.
    assert_eq!(
        agent
            .cli(&["exec", "box", "sh", "-c", "exit 5"])
            .status
            .code(),
        Some(5)
    );
    // Hardened like the first process: default capabilities, no_new_privs,
    // seccomp filter mode; the user option resolves in the image.
    let status = text(
        &agent
            .cli(&["exec", "box", "cat", "/proc/self/status"])
            .stdout,
    );
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    assert_eq!(field("CapEff:"), "00000000a80425fb");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");
    let id = agent.cli(&[
        "exec",
        "-u",
        "nobody",
        "-w",
        "/tmp",
        "box",
        "sh",
        "-c",
        "id -u; pwd",
    ]);
    assert_eq!(text(&id.stdout), "65534\n/tmp\n");
    // The exec'd process is in the container's cgroup (its pids count).
    let v = agent.inspect("box");
    assert!(v["usage"]["pids"].as_u64().unwrap() >= 1, "{v}");

    // Bad input: a missing executable, a stopped container.
    let missing = agent.cli(&["exec", "box", "no-such-tool"]);
    assert_eq!(missing.status.code(), Some(127));
    assert!(
        text(&missing.stderr).contains("executable file not found in $PATH: no-such-tool"),
        "{}",
        text(&missing.stderr)
    );
    agent.ok(&["stop", "-t", "0", "box"]);
    let stopped = agent.cli(&["exec", "box", "true"]);
    assert_eq!(stopped.status.code(), Some(1));
    assert!(
        text(&stopped.stderr).contains("not running"),
        "{}",
        text(&stopped.stderr)
    );
    agent.ok(&["rm", "box"]);
}

#[test]
fn health_checks_exec_tcp_and_http() {
    let (_d, agent, img) = setup();
    let healthy = |v: &serde_json::Value| v["health"]["status"] == "healthy";
    let unhealthy = |v: &serde_json::Value| v["health"]["status"] == "unhealthy";
    // HTTP: busybox httpd serves /healthz until it is deleted.
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--health-http",
        "8080/healthz",
        "--health-interval",
        "200ms",
        "--health-retries",
        "2",
        &img,
        "sh",
        "-c",
        "mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p 8080 -h /www",
    ]);
    let v = agent.until("web", "healthy", healthy);
    assert_eq!(v["health"]["last"]["output"], "HTTP 200 OK", "{v}");
    agent.ok(&["exec", "web", "rm", "/www/healthz"]);
    let v = agent.until("web", "unhealthy", unhealthy);
    assert_eq!(v["health"]["last"]["output"], "HTTP 404 Not Found", "{v}");
    assert!(v["health"]["failing_streak"].as_u64().unwrap() >= 2, "{v}");
    assert_eq!(v["state"], "running");

    // TCP: nothing listens on 9999.
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "quiet",
        "--health-tcp",
        "9999",
        "--health-interval",
        "200ms",
        "--health-retries",
        "2",
        &img,
        "sleep",
        "300",
    ]);
    let v = agent.until("quiet", "unhealthy", unhealthy);
    let out = v["health"]["last"]["output"].as_str().unwrap();
    assert!(
        out.contains("127.0.0.1:9999") && out.contains("refused"),
        "{out}"
    );

    // Exec: unhealthy until the file appears, then healthy.
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "flag",
        "--health-cmd",
        "cat /tmp/ready",
        "--health-interval",
        "200ms",
        "--health-retries",
        "1",
        &img,
        "sleep",
        "300",
    ]);
    let v = agent.until("flag", "unhealthy", unhealthy);
    assert!(
        v["health"]["last"]["output"]
            .as_str()
            .unwrap()
            .starts_with("exit 1"),
        "{v}"
    );
    agent.ok(&["exec", "flag", "sh", "-c", "echo yes > /tmp/ready"]);
    let v = agent.until("flag", "healthy", healthy);
    assert_eq!(v["health"]["last"]["output"], "yes\n");

    // Bad input: two probes at once, a probe without a port.
    let bad = agent.cli(&[
        "run",
        "--health-tcp",
        "1",
        "--health-cmd",
        "true",
        &img,
        "true",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let bad = agent.cli(&["run", "--health-http", "0/x", &img, "true"]);
    assert!(
        text(&bad.stderr).contains("health.http.port"),
        "{}",
        text(&bad.stderr)
    );
    for c in ["web", "quiet", "flag"] {
        agent.ok(&["rm", "-f", c]);
    }
    assert_eq!(agent.ok(&["ps", "-a", "-o", "json"]).trim(), "[]");
}

#[test]
fn prometheus_metrics_count_containers_starts_ooms_and_restarts() {
    let (_d, mut agent, img) = setup();
    let port = skiff_test_support::net::free_port().unwrap();
    let config = agent.state.with_extension("toml");
    let old = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("metrics_listen = \"127.0.0.1:{port}\"\n{old}"),
    )
    .unwrap();
    agent.process.take();
    agent.restart();

    agent.ok(&["run", "-d", "--name", "up", &img, "sleep", "300"]);
    agent.cli(&[
        "run",
        "--name",
        "hog",
        "--memory",
        "16m",
        &img,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ]);
    agent.cli(&["run", "--rm", &img, "no-such-program"]);
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure",
        &img,
        "sh",
        "-c",
        "sleep 0.2; exit 1",
    ]);
    agent.until("flaky", "restarted", |v| {
        v["restarts"].as_u64().unwrap() >= 2
    });
    agent.ok(&["rm", "-f", "flaky"]);
    assert!(
        !agent
            .cli(&["pull", "127.0.0.1:1/nothing:here"])
            .status
            .success()
    );

    let body = http_get(port, "/metrics");
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{body}"))
    };
    assert_eq!(value("skiff_agent_containers{state=\"running\"}"), 1.0);
    assert_eq!(value("skiff_agent_containers{state=\"exited\"}"), 1.0);
    // up, hog, flaky twice or more (a restart is counted when it is
    // scheduled); the missing program failed.
    assert!(
        value("skiff_agent_container_starts_total{result=\"ok\"}") >= 4.0,
        "{body}"
    );
    assert_eq!(
        value("skiff_agent_container_starts_total{result=\"failed\"}"),
        1.0
    );
    assert_eq!(value("skiff_agent_container_oom_kills_total"), 1.0);
    assert!(value("skiff_agent_container_restarts_total") >= 2.0);
    assert!(value("skiff_agent_container_start_seconds_count") >= 4.0);
    // On this cgroup v1 host most starts use a warm shim.
    assert!(
        value("skiff_agent_container_warm_starts_total") >= 1.0,
        "{body}"
    );
    // A pull from a registry that is not there.
    assert_eq!(
        value("skiff_agent_image_pulls_total{result=\"failed\"}"),
        1.0
    );
    agent.ok(&["rm", "-f", "up", "hog"]);
}

/// A plain HTTP/1.0 GET on loopback; returns the body.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

#[test]
fn user_namespace_remapping_makes_container_root_unprivileged_on_the_host() {
    let (_d, agent, img) = setup();
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "remapped",
        "--userns-remap",
        &img,
        "sleep",
        "300",
    ]);
    let v = agent.until("remapped", "running", |v| v["state"] == "running");
    let pid = v["pid"].as_u64().unwrap();
    // On the host its root is uid 100000.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == "100000"),
        "{uid}"
    );
    // Inside: root, owning the image's files; what it writes is owned by
    // 100000 on the host; device nodes cannot be made.
    let out = agent.cli(&[
        "exec", "remapped", "sh", "-c",
        "id -u; cat /proc/self/uid_map; stat -c %u /bin/busybox; echo hi > /etc/new; stat -c %u /etc/new; mknod /tmp/null c 1 3 2>/dev/null || echo no-mknod",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        lines,
        ["0", "0 100000 65536", "0", "0", "no-mknod"],
        "{}",
        text(&out.stderr)
    );
    let id = v["id"].as_str().unwrap();
    let upper = agent
        .state
        .join("containers")
        .join(id)
        .join("upper/etc/new");
    let meta = std::fs::metadata(&upper).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 100000);
    // The shared layers were not touched: still root's on disk.
    let out = agent.cli(&["run", "--rm", &img, "stat", "-c", "%u", "/bin/busybox"]);
    assert_eq!(text(&out.stdout), "0\n");
    agent.ok(&["rm", "-f", "remapped"]);
    assert!(!agent.state.join("containers").join(id).exists());
}

/// cgroup v1 only (this host): warm shims wait in cgroups of their own and
/// become containers' cgroups, with the containers' limits.
#[test]
fn warm_shims_become_containers_with_their_limits() {
    let (_d, mut agent, img) = setup();
    let agent_pid = agent.process.as_ref().unwrap().pid();
    let warm_dir = "/sys/fs/cgroup/pids/skiff";
    let warm = || -> Vec<String> {
        std::fs::read_dir(warm_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("warm-{agent_pid}-")))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while warm().len() < 4 {
        assert!(Instant::now() < deadline, "warm shims: {:?}", warm());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Each holds one waiting process.
    for w in warm() {
        let procs = std::fs::read_to_string(format!("{warm_dir}/{w}/cgroup.procs")).unwrap();
        assert_eq!(procs.lines().count(), 1, "{w}: {procs}");
    }
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "w",
        "--memory",
        "32m",
        "--pids-limit",
        "50",
        &img,
        "sleep",
        "300",
    ]);
    let v = agent.until("w", "running", |v| v["state"] == "running");
    let id = v["id"].as_str().unwrap();
    let pid = v["pid"].as_u64().unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroups.contains(&format!(":pids:/skiff/{id}")), "{cgroups}");
    let read = |p: &str| std::fs::read_to_string(p).unwrap().trim().to_string();
    assert_eq!(
        read(&format!(
            "/sys/fs/cgroup/memory/skiff/{id}/memory.limit_in_bytes"
        )),
        (32u64 << 20).to_string()
    );
    assert_eq!(
        read(&format!("/sys/fs/cgroup/pids/skiff/{id}/pids.max")),
        "50"
    );
    assert!(read(&format!("/sys/fs/cgroup/devices/skiff/{id}/devices.list")).contains("c 1:3 rwm"));
    agent.ok(&["rm", "-f", "w"]);
    // The agent gone, its warm shims leave no cgroup behind.
    agent.process.as_mut().unwrap().kill9();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !warm().is_empty() {
        assert!(Instant::now() < deadline, "warm cgroups left: {:?}", warm());
        std::thread::sleep(Duration::from_millis(50));
    }
}
