//! Resource limits and accounting of real containers, as root, on whatever
//! cgroup layout the machine has: cgroup v1 (this project's hybrid hosts)
//! or cgroup v2 (`scripts/vm-test` runs this file inside a VM whose
//! unified hierarchy has every controller).
//!
//! Each test drives the `skiff-agent` CLI and checks what a user would:
//! the exit and `inspect`, and the cgroup files the kernel enforces, read
//! from the host side.

mod common;

use std::path::{Path, PathBuf};

use common::{Agent, text};

/// The cgroup parent the agent puts containers under (runtime/mod.rs).
const PARENT: &str = "skiff";
const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    V1,
    V2,
}

/// The machine's cgroup layout. `SKIFF_TEST_EXPECT_CGROUP=v1|v2` (set by
/// scripts/vm-test) makes a run on the wrong layout fail instead of
/// quietly testing the other code path.
fn mode() -> Mode {
    let mode = if Path::new(ROOT).join("cgroup.controllers").exists() {
        Mode::V2
    } else {
        Mode::V1
    };
    if let Ok(want) = std::env::var("SKIFF_TEST_EXPECT_CGROUP") {
        let want = match want.as_str() {
            "v1" => Mode::V1,
            "v2" => Mode::V2,
            other => panic!("SKIFF_TEST_EXPECT_CGROUP={other}: expected v1 or v2"),
        };
        assert_eq!(mode, want, "this machine's cgroup layout");
    }
    mode
}

/// The container's cgroup directory for controller `ctrl` (on v2 the one
/// unified directory, whatever `ctrl` is).
fn cgroup_dir(ctrl: &str, id: &str) -> PathBuf {
    match mode() {
        Mode::V2 => Path::new(ROOT).join(PARENT).join(id),
        Mode::V1 => Path::new(ROOT).join(ctrl).join(PARENT).join(id),
    }
}

/// Every directory the container's cgroup has (one per controller on v1).
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    match mode() {
        Mode::V2 => vec![cgroup_dir("", id)],
        Mode::V1 => ["memory", "cpu", "cpuacct", "pids"]
            .iter()
            .map(|c| cgroup_dir(c, id))
            .collect(),
    }
}

/// A cgroup file of the container, trimmed; fails the test if unreadable.
fn read_cg(ctrl: &str, id: &str, file: &str) -> String {
    let path = cgroup_dir(ctrl, id).join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .trim()
        .to_string()
}

/// A `key value` line of a flat-keyed cgroup file (`cpu.stat`, …).
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

fn setup() -> (tempfile::TempDir, Agent, String) {
    let mode = mode();
    eprintln!("cgroup layout: {mode:?}");
    common::setup()
}

/// Starts a detached container; returns its id (from `inspect`). These
/// tests are about limits and also run in the cgroup v2 VM, which has no
/// bridge networking: their containers have no network.
fn run_detached(agent: &Agent, args: &[&str]) -> String {
    let mut all = vec!["run", "-d", "--network", "none"];
    all.extend_from_slice(args);
    let out = agent.ok(&all);
    let key = out.trim();
    let v = agent.until(key, "running", |v| v["state"] == "running");
    let id = v["id"].as_str().expect("inspect has an id").to_string();
    assert!(!id.is_empty(), "{v}");
    id
}

/// Removes the container and checks that its cgroup went with it.
fn remove_and_check_cgroup_gone(agent: &Agent, key: &str, id: &str) {
    agent.ok(&["rm", "-f", key]);
    for dir in cgroup_dirs(id) {
        assert!(
            !dir.exists(),
            "cgroup {} is left after rm\nagent log:\n{}",
            dir.display(),
            agent.log()
        );
    }
    let out = agent.cli(&["inspect", key]);
    assert!(!out.status.success(), "{key} is still known after rm");
}

#[test]
fn a_memory_hog_is_oom_killed_and_reported() {
    let (_d, agent, img) = setup();
    let out = agent.cli(&[
        "run",
        "--network",
        "none",
        "--name",
        "hog",
        "--memory",
        "16m",
        &img,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=128M",
        "count=1",
    ]);
    assert_eq!(
        out.status.code(),
        Some(137),
        "stderr: {}\nagent log:\n{}",
        text(&out.stderr),
        agent.log()
    );
    let v = agent.inspect("hog");
    assert_eq!(v["state"], "exited", "{v}");
    assert_eq!(v["reason"], "oom-killed", "{v}");
    assert_eq!(v["exit_code"], 137, "{v}");
    assert_eq!(v["limits"]["memory"], 16 << 20, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    remove_and_check_cgroup_gone(&agent, "hog", &id);
}

#[test]
fn a_container_within_its_memory_limit_is_not_reported_oom_killed() {
    let (_d, agent, img) = setup();
    let out = agent.cli(&[
        "run",
        "--network",
        "none",
        "--name",
        "small",
        "--memory",
        "64m",
        &img,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=4M",
        "count=4",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v = agent.inspect("small");
    assert_eq!(v["reason"], "exited", "{v}");
    agent.ok(&["rm", "small"]);
}

#[test]
fn a_fork_bomb_is_held_by_the_pids_limit() {
    let (_d, agent, img) = setup();
    // A shell forks sleeps for ever; the first process only ever execs.
    let bomb = "sh -c 'while true; do sleep 1000 & done' & exec sleep 1000";
    let id = run_detached(
        &agent,
        &["--name", "bomb", "--pids", "20", &img, "sh", "-c", bomb],
    );
    assert_eq!(read_cg("pids", &id, "pids.max"), "20");
    // The bomb runs into the limit: the kernel refuses forks (and counts
    // them in pids.events), and the count never passes 20.
    let v = agent.until("bomb", "refused a fork", |v| {
        let pids = v["usage"]["pids"].as_u64().unwrap_or(0);
        assert!(pids <= 20, "{pids} processes under a limit of 20: {v}");
        stat_field(&read_cg("pids", &id, "pids.events"), "max").is_some_and(|n| n > 0)
    });
    assert_eq!(v["state"], "running", "{v}");
    let pids = v["usage"]["pids"].as_u64().unwrap();
    assert!((10..=20).contains(&pids), "{pids} processes: {v}");
    let current: u64 = read_cg("pids", &id, "pids.current").parse().unwrap();
    assert!(current <= 20, "pids.current {current}");
    // Still responsive: other containers start and exit, and the bomb
    // stops and goes away with everything it forked.
    let out = agent.cli(&["run", "--rm", "--network", "none", &img, "echo", "alive"]);
    assert_eq!(text(&out.stdout), "alive\n", "{}", text(&out.stderr));
    agent.ok(&["stop", "-t", "1", "bomb"]);
    let v = agent.inspect("bomb");
    assert_eq!(v["state"], "exited", "{v}");
    remove_and_check_cgroup_gone(&agent, "bomb", &id);
}

#[test]
fn cpu_and_memory_limits_are_written_to_the_cgroup() {
    let (_d, agent, img) = setup();
    let id = run_detached(
        &agent,
        &[
            "--name", "limited", "--cpus", "0.5", "--memory", "32m", "--pids", "50", &img, "sleep",
            "1000",
        ],
    );
    let v = agent.inspect("limited");
    assert_eq!(v["limits"]["cpu_millis"], 500, "{v}");
    assert_eq!(v["limits"]["memory"], 32 << 20, "{v}");
    assert_eq!(v["limits"]["pids"], 50, "{v}");
    let bytes = (32u64 << 20).to_string();
    match mode() {
        Mode::V2 => {
            assert_eq!(read_cg("cpu", &id, "cpu.max"), "50000 100000");
            assert_eq!(read_cg("memory", &id, "memory.max"), bytes);
            if cgroup_dir("memory", &id).join("memory.swap.max").exists() {
                assert_eq!(read_cg("memory", &id, "memory.swap.max"), "0", "swap");
            }
        }
        Mode::V1 => {
            assert_eq!(read_cg("cpu", &id, "cpu.cfs_quota_us"), "50000");
            assert_eq!(read_cg("cpu", &id, "cpu.cfs_period_us"), "100000");
            assert_eq!(read_cg("memory", &id, "memory.limit_in_bytes"), bytes);
            if cgroup_dir("memory", &id)
                .join("memory.memsw.limit_in_bytes")
                .exists()
            {
                assert_eq!(
                    read_cg("memory", &id, "memory.memsw.limit_in_bytes"),
                    bytes,
                    "memory+swap equals memory: no swap"
                );
            }
        }
    }
    assert_eq!(read_cg("pids", &id, "pids.max"), "50");
    // The container's process is in that cgroup.
    let pid = v["pid"].as_u64().expect("a running container has a pid");
    let procs = read_cg("memory", &id, "cgroup.procs");
    assert!(
        procs.lines().any(|l| l == pid.to_string()),
        "pid {pid} is not in the cgroup: {procs:?}"
    );
    remove_and_check_cgroup_gone(&agent, "limited", &id);
}

#[test]
fn a_busy_container_is_throttled_by_its_cpu_quota() {
    let (_d, agent, img) = setup();
    let id = run_detached(
        &agent,
        &[
            "--name",
            "spin",
            "--cpus",
            "0.5",
            &img,
            "sh",
            "-c",
            "while :; do :; done",
        ],
    );
    agent.until("spin", "throttled by the cpu quota", |_| {
        let stat = read_cg("cpu", &id, "cpu.stat");
        stat_field(&stat, "nr_throttled").is_some_and(|n| n > 0)
    });
    remove_and_check_cgroup_gone(&agent, "spin", &id);
}

#[test]
fn usage_of_a_busy_container_is_accounted() {
    let (_d, agent, img) = setup();
    // Spins (with a child) and holds some memory in a shell variable.
    let busy = "sleep 1000 & x=$(head -c 4000000 /dev/zero | tr '\\0' a); while :; do :; done";
    let id = run_detached(
        &agent,
        &["--name", "busy", "--cpus", "0.5", &img, "sh", "-c", busy],
    );
    let first = agent.until("busy", "using cpu, memory and pids", |v| {
        let u = &v["usage"];
        u["cpu_nanos"].as_u64().unwrap_or(0) > 0
            && u["memory_bytes"].as_u64().unwrap_or(0) > 0
            && u["pids"].as_u64().unwrap_or(0) >= 1
    });
    let cpu = first["usage"]["cpu_nanos"].as_u64().unwrap();
    agent.until("busy", "using more cpu", |v| {
        v["usage"]["cpu_nanos"].as_u64().unwrap_or(0) > cpu
    });
    // The figures are the cgroup's own.
    let current: u64 = match mode() {
        Mode::V2 => read_cg("memory", &id, "memory.current").parse().unwrap(),
        Mode::V1 => read_cg("memory", &id, "memory.usage_in_bytes")
            .parse()
            .unwrap(),
    };
    assert!(current > 0, "the cgroup's memory usage is 0");
    // A stopped container reports no usage.
    agent.ok(&["stop", "-t", "1", "busy"]);
    let v = agent.inspect("busy");
    assert_eq!(v["state"], "exited", "{v}");
    assert!(
        v.get("usage").is_none(),
        "usage of a stopped container: {v}"
    );
    remove_and_check_cgroup_gone(&agent, "busy", &id);
}

#[test]
fn devices_outside_the_allow_list_cannot_be_used() {
    let (_d, agent, img) = setup();
    // Creating device nodes is allowed, using them is not, except for the
    // minimal /dev (here /dev/null's numbers under another name). On v1 the
    // devices controller decides, on v2 the agent's eBPF device filter. A
    // loop device (block 7:0) has no permission check of its own, so only
    // the cgroup can refuse it (unlike /dev/kmsg or /dev/mem, which need
    // capabilities the container lacks anyway).
    let out = agent.cli(&[
        "run",
        "--rm",
        "--network",
        "none",
        &img,
        "sh",
        "-c",
        "mknod /tmp/null c 1 3 && mknod /tmp/loop b 7 0 && echo made; \
         echo x > /tmp/null && echo null ok; head -c 1 /tmp/loop; echo loop $?",
    ]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        stdout.starts_with("made\nnull ok\n"),
        "mknod or the allowed device failed: {stdout}\nstderr: {stderr}\nagent log:\n{}",
        agent.log()
    );
    assert_eq!(
        stdout,
        "made\nnull ok\nloop 1\n",
        "the container opened block device 7:0, outside its device allow-list \
         ({mode:?}): the device restriction is not in force\nstderr: {stderr}",
        mode = mode()
    );
    assert!(
        stderr.contains("/tmp/loop: Operation not permitted"),
        "{stderr}"
    );
}

/// A filesystem for local volumes: in the VM (`SKIFF_TEST_QUOTA_IMAGE`,
/// an ext4 image made with `-O project,quota` by scripts/vm-test) loop-
/// mounted with `prjquota`, unmounted on drop; elsewhere a directory on
/// the host's own filesystem, whatever it has.
struct VolumeFs {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl VolumeFs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mounted = match std::env::var("SKIFF_TEST_QUOTA_IMAGE") {
            Ok(image) => {
                let out = std::process::Command::new("mount")
                    .args(["-o", "loop,prjquota", &image])
                    .arg(dir.path())
                    .output()
                    .unwrap();
                assert!(out.status.success(), "mount {image}: {}", text(&out.stderr));
                true
            }
            Err(_) => false,
        };
        Self { dir, mounted }
    }
}

impl Drop for VolumeFs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[test]
fn a_local_volume_is_held_to_its_size_where_the_filesystem_has_project_quotas() {
    let (_d, agent, img) = setup();
    let fs = VolumeFs::new();
    let node = skiff_agent::volumes::NodeVolumes::new(Default::default(), fs.dir.path());
    let spec = skiff_proto::parse_workloads(
        "name: db\nimage: busybox\nvolumes: [{name: data, local: {size: 8Mi}}]\nmounts: [{volume: data, path: /data}]\n",
        skiff_proto::Format::Yaml,
    )
    .unwrap()
    .remove(0)
    .container_spec();
    let local = std::collections::BTreeMap::from([("data".to_string(), "db.data.0".to_string())]);
    node.make_local(&spec, &local).unwrap();
    let volume = node.local_dir("db.data.0");
    let bind = format!("{}:/data", volume.display());
    let write = |count: u32| {
        let out = agent.cli(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &bind,
            &img,
            "sh",
            "-c",
            &format!("mkdir -p /data/sub; dd if=/dev/zero of=/data/sub/f bs=1M count={count} 2>&1; echo dd=$?; rm /data/sub/f"),
        ]);
        text(&out.stdout)
    };
    let enforce = std::env::var("SKIFF_TEST_EXPECT_QUOTA").is_ok_and(|v| v == "1");
    match node.quota_missing() {
        None => {
            eprintln!("{}: project quotas", fs.dir.path().display());
            // Within the limit: written. Past it: the container's writes
            // fail with EDQUOT, also in a directory made in the volume.
            let within = write(4);
            assert!(within.contains("dd=0"), "{within}");
            let past = write(16);
            assert!(past.contains("Disk quota exceeded"), "{past}");
            assert!(past.contains("dd=1"), "{past}");
        }
        Some(why) => {
            // Said in one line (the agent registers it; `skiff volume ls`
            // shows the size as not enforced), and no error: the volume is
            // made and usable, unlimited.
            assert!(
                !enforce,
                "SKIFF_TEST_EXPECT_QUOTA=1 but {} has none: {why}",
                fs.dir.path().display()
            );
            eprintln!("no project quotas: {why}");
            assert!(why.contains("without project quotas"), "{why}");
            assert!(!why.contains('\n'), "{why}");
            let past = write(16);
            assert!(past.contains("dd=0"), "{past}");
        }
    }
}
