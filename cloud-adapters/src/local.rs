//! The local provider (`kind = "local"`): a "VM" is a network namespace on
//! the gateway's host, on a bridge of its own, booted from the same
//! cloud-init user data a cloud VM gets. The boot is a small cloud-init:
//! the `write_files` entries are written under the VM's own directory
//! (a VM has its own filesystem; these share the host's), and the agent
//! is started in the namespace with the settings the bootstrap wrote
//! (`/etc/skiff/agent.env`), its state and socket in the VM's directory.
//! It makes `skiff dev` burst on a laptop and lets tests run the whole
//! path without a cloud.
//!
//! Needs root and `ip` (iproute2).

use base64::Engine as _;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::{CloudError, CloudProvider, Instance, InstanceState, InstanceType, LaunchRequest};

/// How the local provider is set up.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Where VMs keep their files (`<root>/<id>/`).
    pub root: PathBuf,
    /// The agent binary the VMs run.
    pub agent_bin: PathBuf,
    /// The bridge the VMs hang on; the host is its first address, which
    /// the bootstrap's gateway URL should name.
    pub bridge: String,
    /// /16 or smaller: `.1` the host, VMs from `.2` on.
    pub subnet: ipnet::Ipv4Net,
    pub types: Vec<InstanceType>,
}

/// What is kept of a VM (`<root>/<id>/vm.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VmRecord {
    id: String,
    site: String,
    instance_type: String,
    tags: BTreeMap<String, String>,
    address: Ipv4Addr,
    agent_pid: u32,
    terminated: bool,
}

/// The provider.
#[derive(Debug)]
pub struct LocalCloud {
    config: LocalConfig,
    lock: Mutex<()>,
}

fn other(e: impl std::fmt::Display) -> CloudError {
    CloudError::Other(e.to_string())
}

fn ip(args: &[&str]) -> Result<(), CloudError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| other(format!("ip: {e}")))?;
    if !out.status.success() {
        return Err(other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The files a cloud-config writes (its `write_files`): (path, content,
/// mode). Paths are absolute and never climb (`..`).
fn write_files(user_data: &str) -> Result<Vec<(String, String, u32)>, CloudError> {
    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        write_files: Vec<File>,
    }
    #[derive(Deserialize)]
    struct File {
        path: String,
        #[serde(default)]
        content: String,
        #[serde(default)]
        permissions: Option<String>,
        #[serde(default)]
        encoding: Option<String>,
    }
    let doc: Doc = serde_yaml_ng::from_str(user_data)
        .map_err(|e| CloudError::Invalid(format!("user data: {e}")))?;
    doc.write_files
        .into_iter()
        .map(|f| {
            if f.path.split('/').any(|c| c == "..") || !f.path.starts_with('/') {
                return Err(CloudError::Invalid(format!("user data: path {:?}", f.path)));
            }
            let mode = match f.permissions {
                Some(p) => u32::from_str_radix(p.trim_start_matches('0'), 8)
                    .map_err(|_| CloudError::Invalid(format!("user data: permissions {p:?}")))?,
                None => 0o644,
            };
            let content = match f.encoding.as_deref() {
                None | Some("text/plain") => f.content,
                Some("b64") | Some("base64") => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(f.content.trim())
                        .map_err(|e| {
                            CloudError::Invalid(format!("user data: {}: base64: {e}", f.path))
                        })?;
                    String::from_utf8(bytes).map_err(|_| {
                        CloudError::Invalid(format!("user data: {}: not UTF-8", f.path))
                    })?
                }
                Some(other) => {
                    return Err(CloudError::Invalid(format!(
                        "user data: {}: encoding {other:?}",
                        f.path
                    )));
                }
            };
            Ok((f.path, content, mode))
        })
        .collect()
}

/// Writes a cloud-config's `write_files` under `root`, as cloud-init
/// writes them at first boot.
pub fn write_files_under(user_data: &str, root: &Path) -> Result<(), CloudError> {
    use std::os::unix::fs::PermissionsExt;
    for (path, content, mode) in write_files(user_data)? {
        let target = root.join(path.trim_start_matches('/'));
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p).map_err(other)?;
        }
        std::fs::write(&target, content).map_err(other)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).map_err(other)?;
    }
    Ok(())
}

/// `KEY=VALUE` lines.
fn env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

impl LocalCloud {
    pub fn new(config: LocalConfig) -> Self {
        Self {
            config,
            lock: Mutex::new(()),
        }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.config.root.join(id)
    }

    fn records(&self) -> Vec<VmRecord> {
        let Ok(entries) = std::fs::read_dir(&self.config.root) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("vm.json")).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    fn save(&self, r: &VmRecord) -> Result<(), CloudError> {
        let dir = self.dir(&r.id);
        let tmp = dir.join(".vm.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(r).map_err(other)?).map_err(other)?;
        std::fs::rename(&tmp, dir.join("vm.json")).map_err(other)
    }

    /// The host side: the bridge with the first address, up.
    pub fn ensure_bridge(&self) -> Result<Ipv4Addr, CloudError> {
        let host = self
            .config
            .subnet
            .hosts()
            .next()
            .ok_or_else(|| CloudError::Invalid("local subnet too small".into()))?;
        let b = self.config.bridge.as_str();
        if !Path::new("/sys/class/net").join(b).exists() {
            ip(&["link", "add", b, "type", "bridge"])?;
            ip(&[
                "addr",
                "add",
                &format!("{host}/{}", self.config.subnet.prefix_len()),
                "dev",
                b,
            ])?;
        }
        ip(&["link", "set", b, "up"])?;
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        Ok(host)
    }

    fn boot(
        &self,
        id: &str,
        req: &LaunchRequest,
        address: Ipv4Addr,
        host: Ipv4Addr,
    ) -> Result<VmRecord, CloudError> {
        let dir = self.dir(id);
        let fs = dir.join("rootfs");
        write_files_under(&req.user_data.0, &fs)?;
        let env = std::fs::read_to_string(fs.join("etc/skiff/agent.env"))
            .map_err(|_| CloudError::Invalid("user data writes no /etc/skiff/agent.env".into()))?;
        // The network: a namespace on the bridge, the host as its gateway.
        let ns = format!("skvm-{}", &id[id.len() - 8..]);
        let host_if = format!("skv{}", &id[id.len() - 8..]);
        ip(&["netns", "add", &ns])?;
        let setup = (|| {
            ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &host_if, "master", &self.config.bridge, "up"])?;
            let prefix = self.config.subnet.prefix_len();
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{address}/{prefix}"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &host.to_string(),
            ])
        })();
        if let Err(e) = setup {
            let _ = ip(&["netns", "del", &ns]);
            let _ = ip(&["link", "del", &host_if]);
            return Err(e);
        }
        // The agent, as systemd would start it from the unit.
        let log = std::fs::File::create(dir.join("agent.log")).map_err(other)?;
        // Into the namespace's network only (not `ip netns exec`, which
        // also remounts /sys and so hides the host's cgroup hierarchies).
        let netns = std::fs::File::open(format!("/run/netns/{ns}"))
            .map_err(|e| other(format!("/run/netns/{ns}: {e}")))?;
        let mut cmd = Command::new(&self.config.agent_bin);
        cmd.arg("serve")
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("SKIFF_AGENT_STATE_DIR", dir.join("state"))
            .env("SKIFF_AGENT_SOCKET", dir.join("agent.sock"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(other)?)
            .stderr(log);
        let toml = fs.join("etc/skiff/agent.toml");
        if toml.exists() {
            cmd.env("SKIFF_AGENT_CONFIG", &toml);
        }
        for (k, v) in env_file(&env) {
            if k.starts_with("SKIFF_AGENT_") {
                cmd.env(k, v);
            }
        }
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        // SAFETY: setns is async-signal-safe; nothing else runs in the
        // child between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| other(format!("start the agent: {e}")))?;
        Ok(VmRecord {
            id: id.to_string(),
            site: req.site.clone(),
            instance_type: req.instance_type.clone(),
            tags: req.tags.clone(),
            address,
            agent_pid: child.id(),
            terminated: false,
        })
    }

    /// Boots an instance another cloud launched (its id, type, tags and
    /// user data as that cloud has them) as a local VM: the test
    /// support's VM simulator runs what moto or the fake ARM server were
    /// asked to launch this way. Terminate it with [`CloudProvider::terminate`].
    pub fn boot_launched(&self, id: &str, req: &LaunchRequest) -> Result<(), CloudError> {
        let _one = self.lock.lock().expect("lock");
        self.start(id, req).map(drop)
    }

    /// Gives the VM `id` an address on the bridge and boots it from the
    /// request's user data (the caller holds the lock).
    fn start(&self, id: &str, req: &LaunchRequest) -> Result<VmRecord, CloudError> {
        if id.len() < 8 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(CloudError::Invalid(format!("instance id {id:?}")));
        }
        let host = self.ensure_bridge()?;
        let used: Vec<Ipv4Addr> = self
            .records()
            .into_iter()
            .filter(|r| !r.terminated)
            .map(|r| r.address)
            .collect();
        let address = self
            .config
            .subnet
            .hosts()
            .skip(1)
            .find(|a| !used.contains(a))
            .ok_or_else(|| CloudError::Capacity("local subnet is full".into()))?;
        std::fs::create_dir_all(self.dir(id)).map_err(other)?;
        let r = self.boot(id, req, address, host)?;
        self.save(&r)?;
        Ok(r)
    }

    /// Powers the VM off: everything it ran is killed, as a real VM's
    /// termination would; and since these VMs share the host's kernel,
    /// what its containers left there (cgroups) is removed.
    fn stop(&self, r: &VmRecord) {
        let kill = |pid: i32| {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        };
        // Containers and their supervisors (in namespaces of their own).
        let containers = self.dir(&r.id).join("state/containers");
        let mut ids = Vec::new();
        for e in std::fs::read_dir(&containers)
            .into_iter()
            .flatten()
            .flatten()
        {
            ids.push(e.file_name().to_string_lossy().into_owned());
            if let Ok(b) = std::fs::read(e.path().join("state.json"))
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b)
            {
                for key in ["pid", "shim_pid"] {
                    if let Some(pid) = v[key].as_i64() {
                        kill(pid as i32);
                    }
                }
            }
        }
        let ns = format!("skvm-{}", &r.id[r.id.len() - 8..]);
        // Everything in the namespace: the agent, its shims, containers.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-(r.agent_pid as i32)),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = ip(&["netns", "del", &ns]);
        let _ = ip(&["link", "del", &format!("skv{}", &r.id[r.id.len() - 8..])]);
        // Their cgroups, once empty: the containers' and the agent's warm
        // ones, in every hierarchy.
        let warm = format!("warm-{}-", r.agent_pid);
        for _ in 0..50 {
            let mut left = 0;
            for root in cgroup_roots() {
                let Ok(entries) = std::fs::read_dir(root.join("skiff")) else {
                    continue;
                };
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if (ids.contains(&name) || name.starts_with(&warm))
                        && std::fs::remove_dir(e.path()).is_err()
                    {
                        left += 1;
                    }
                }
            }
            if left == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[async_trait::async_trait]
impl CloudProvider for LocalCloud {
    async fn instance_types(&self) -> Result<Vec<InstanceType>, CloudError> {
        Ok(self.config.types.clone())
    }

    async fn launch(&self, req: &LaunchRequest) -> Result<Vec<Instance>, CloudError> {
        if !self
            .config
            .types
            .iter()
            .any(|t| t.name == req.instance_type)
        {
            return Err(CloudError::Invalid(format!(
                "unknown instance type {}",
                req.instance_type
            )));
        }
        let _one = self.lock.lock().expect("lock");
        let mut out = Vec::new();
        for _ in 0..req.count {
            let id = format!("local-{}", hex_id());
            let r = self.start(&id, req)?;
            out.push(Instance {
                id,
                site: r.site,
                instance_type: r.instance_type,
                state: InstanceState::Running,
                tags: r.tags,
            });
        }
        Ok(out)
    }

    async fn describe(&self, tag: &str, value: &str) -> Result<Vec<Instance>, CloudError> {
        Ok(self
            .records()
            .into_iter()
            .filter(|r| r.tags.get(tag).map(String::as_str) == Some(value))
            .map(|r| Instance {
                state: if r.terminated {
                    InstanceState::Terminated
                } else {
                    InstanceState::Running
                },
                id: r.id,
                site: r.site,
                instance_type: r.instance_type,
                tags: r.tags,
            })
            .collect())
    }

    async fn terminate(&self, ids: &[String]) -> Result<(), CloudError> {
        let _one = self.lock.lock().expect("lock");
        let records = self.records();
        for id in ids {
            let mut r = records
                .iter()
                .find(|r| &r.id == id)
                .cloned()
                .ok_or_else(|| CloudError::Invalid(format!("no instance {id}")))?;
            self.stop(&r);
            r.terminated = true;
            self.save(&r)?;
        }
        Ok(())
    }
}

/// Every cgroup hierarchy's root (v1 controllers, v2 unified).
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let mut roots = vec![base.to_path_buf()];
    for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
        if e.path().is_dir() && !e.path().join("cgroup.procs").exists() {
            continue;
        }
        if e.path().is_dir() {
            roots.push(e.path());
        }
    }
    roots
}

fn hex_id() -> String {
    let mut b = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_config_files_are_read_and_hostile_paths_refused() {
        let ok = "#cloud-config\nwrite_files:\n  - path: /etc/skiff/agent.env\n    permissions: \"0600\"\n    content: |\n      SKIFF_AGENT_NAME=vm1\n";
        let files = write_files(ok).unwrap();
        assert_eq!(files[0].0, "/etc/skiff/agent.env");
        assert_eq!(files[0].2, 0o600);
        assert_eq!(
            env_file(&files[0].1),
            [("SKIFF_AGENT_NAME".to_string(), "vm1".to_string())]
        );
        let bad = "#cloud-config\nwrite_files:\n  - path: /etc/../../root/x\n    content: x\n";
        assert!(write_files(bad).is_err());
        // Base64 content (a site's agent config) is decoded.
        let b64 = "#cloud-config\nwrite_files:\n  - path: /etc/skiff/agent.toml\n    encoding: b64\n    content: \"W3Jlc2VydmVdCg==\"\n";
        assert_eq!(write_files(b64).unwrap()[0].1, "[reserve]\n");
        let odd = "#cloud-config\nwrite_files:\n  - path: /x\n    encoding: gzip\n    content: x\n";
        assert!(
            write_files(odd)
                .unwrap_err()
                .to_string()
                .contains("encoding \"gzip\"")
        );
    }
}
