//! Agent configuration: a TOML file, then `SKIFF_AGENT_*` environment
//! variables, then command-line flags (clap reads the last two). Validated
//! before anything is bound or created; a bad value is one line naming the
//! key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::images::ImagesConfig;
use crate::net::NetworkConfig;
use crate::runtime::RuntimeConfig;
use crate::volumes::HostVolume;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/skiff";
/// Default local API socket.
pub const DEFAULT_SOCKET: &str = "/run/skiff/agent.sock";
/// Config file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/skiff/agent.toml";

pub use skiff_proto::config::{ConfigError, SecretString};

fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(key, reason)
}

/// The config file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub gateway: Option<String>,
    pub join_token: Option<SecretString>,
    pub ca_hash: Option<String>,
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub images: ImagesConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub reserve: Reserve,
    /// Host directories published to workloads by name.
    #[serde(default)]
    pub volumes: BTreeMap<String, HostVolume>,
    /// `[notices]`: watch the cloud's spot and eviction notices.
    #[serde(default)]
    pub notices: crate::notices::NoticesConfig,
}

/// What the node keeps for itself: the gateway places work only in the
/// rest (allocatable = capacity - reserve).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reserve {
    pub cpu: skiff_proto::Cpu,
    pub memory: skiff_proto::ByteSize,
    /// Of the state directory's filesystem (images, containers' layers,
    /// volumes, logs).
    pub disk: skiff_proto::ByteSize,
}

impl Default for Reserve {
    fn default() -> Self {
        Self {
            cpu: skiff_proto::Cpu::from_millis(100),
            memory: skiff_proto::ByteSize::from_bytes(256 << 20),
            disk: skiff_proto::ByteSize::from_bytes(1 << 30),
        }
    }
}

/// What flags and the environment set (clap fills it).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub name: Option<String>,
    pub labels: Vec<String>,
    pub gateway: Option<String>,
    pub join_token: Option<SecretString>,
    pub ca_hash: Option<String>,
    pub metrics_listen: Option<SocketAddr>,
}

/// How to reach the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayLink {
    /// The fleet's gateways, in the order tried (`gateway` is one URL, or
    /// several comma-separated); never empty, each `https://`.
    pub urls: Vec<String>,
    pub join_token: Option<SecretString>,
    pub ca_hash: String,
}

/// The agent's validated configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub gateway: Option<GatewayLink>,
    pub metrics_listen: Option<SocketAddr>,
    pub images: ImagesConfig,
    pub runtime: RuntimeConfig,
    pub network: NetworkConfig,
    pub reserve: Reserve,
    /// Host volumes, by name (`[volumes.NAME] path = "/srv/data"`).
    pub volumes: BTreeMap<String, HostVolume>,
    /// The cloud's notices that it takes this VM back (spot).
    pub notices: crate::notices::NoticesConfig,
}

impl AgentConfig {
    /// Reads the file (if any), applies the overrides, and validates.
    pub fn load(o: &Overrides) -> Result<Self, ConfigError> {
        let (path, explicit) = match &o.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let file = if explicit || path.exists() {
            read_file(&path)?
        } else {
            FileConfig::default()
        };
        Self::resolve(file, o)
    }

    fn resolve(file: FileConfig, o: &Overrides) -> Result<Self, ConfigError> {
        let mut labels = file.labels;
        for l in &o.labels {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| bad("label", format!("{l:?} is not KEY=VALUE")))?;
            labels.insert(k.to_string(), v.to_string());
        }
        for (k, v) in &labels {
            let ok = |s: &str| {
                !s.is_empty()
                    && s.len() <= 253
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
            };
            if !ok(k) || !(v.is_empty() || ok(v)) {
                return Err(bad(
                    &format!("labels.{k}"),
                    format!("{k:?}={v:?} is not a valid label"),
                ));
            }
        }
        let name = match o.name.clone().or(file.name) {
            Some(n) => n,
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "node".into())
                .to_ascii_lowercase(),
        };
        if !skiff_proto::is_valid_name(&name) {
            return Err(bad(
                "name",
                format!(
                    "{name:?} is not a valid node name (lowercase letters, digits and '-', at most 63 characters)"
                ),
            ));
        }
        let gateway = match o.gateway.clone().or(file.gateway) {
            None => None,
            Some(url) => {
                let urls: Vec<String> = url
                    .split(',')
                    .map(|u| u.trim().to_string())
                    .filter(|u| !u.is_empty())
                    .collect();
                if urls.is_empty() {
                    return Err(bad("gateway", "names no gateway"));
                }
                if let Some(u) = urls.iter().find(|u| !u.starts_with("https://")) {
                    return Err(bad("gateway", format!("{u:?} must be an https:// URL")));
                }
                let ca_hash = o.ca_hash.clone().or(file.ca_hash).ok_or_else(|| {
                    bad(
                        "ca_hash",
                        "required with gateway (sha256:HEX from the join token)",
                    )
                })?;
                let hex = ca_hash.strip_prefix("sha256:").unwrap_or("");
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("ca_hash", "must be sha256: followed by 64 hex digits"));
                }
                Some(GatewayLink {
                    urls,
                    join_token: o.join_token.clone().or(file.join_token),
                    ca_hash,
                })
            }
        };
        let runtime = file.runtime;
        if let Err(e) = runtime.userns_range() {
            return Err(bad("runtime.userns_remap_range", e));
        }
        let parent_ok = !runtime.cgroup_parent.is_empty()
            && runtime.cgroup_parent.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            });
        if !parent_ok {
            return Err(bad(
                "runtime.cgroup_parent",
                format!(
                    "{:?}: names of letters, digits, '-', '_', '.', joined by '/'",
                    runtime.cgroup_parent
                ),
            ));
        }
        if runtime.warm_shims > 64 {
            return Err(bad("runtime.warm_shims", "must be at most 64"));
        }
        let network = file.network;
        network
            .validate()
            .map_err(|(key, reason)| bad(&key, reason))?;
        crate::volumes::validate(&file.volumes).map_err(|(key, reason)| bad(&key, reason))?;
        file.notices
            .validate()
            .map_err(|(key, reason)| bad(&key, reason))?;
        let images = file.images;
        if images.concurrent_downloads == 0 || images.concurrent_downloads > 64 {
            return Err(bad(
                "images.concurrent_downloads",
                "must be between 1 and 64",
            ));
        }
        for (host, auth) in &images.auth {
            if auth.token.is_none() && (auth.username.is_none() || auth.password.is_none()) {
                return Err(bad(
                    &format!("images.auth.{host:?}"),
                    "needs username and password, or token",
                ));
            }
        }
        Ok(Self {
            state_dir: o
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            socket: o
                .socket
                .clone()
                .or(file.socket)
                .unwrap_or_else(|| DEFAULT_SOCKET.into()),
            name,
            labels,
            gateway,
            metrics_listen: o.metrics_listen.or(file.metrics_listen),
            images,
            runtime,
            network,
            reserve: file.reserve,
            volumes: file.volumes,
            notices: file.notices,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let key = "file";
    let text =
        std::fs::read_to_string(path).map_err(|e| bad(key, format!("{}: {e}", path.display())))?;
    let file_key = path.display().to_string();
    let table = skiff_proto::config::toml_table(&text, &file_key)?;
    // A bad value is named by its key (`network.subnet`).
    let file: FileConfig = skiff_proto::config::from_toml(table, &file_key)?;
    let has_secrets = file.join_token.is_some() || !file.images.auth.is_empty();
    if has_secrets {
        let mode = std::fs::metadata(path)
            .map_err(|e| bad(key, format!("{}: {e}", path.display())))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(bad(
                key,
                format!(
                    "{} holds secrets and must not be readable by others (chmod 600; it is {:o})",
                    path.display(),
                    mode & 0o777
                ),
            ));
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, text: &str, mode: u32) -> PathBuf {
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn load(path: PathBuf, o: Overrides) -> Result<AgentConfig, String> {
        AgentConfig::load(&Overrides {
            config: Some(path),
            ..o
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            "state_dir = \"/srv/skiff\"\nname = \"n1\"\nlabels = { disk = \"ssd\" }\n[images]\nconcurrent_downloads = 8\n",
            0o644,
        );
        let c = load(p.clone(), Overrides::default()).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/srv/skiff"));
        assert_eq!(c.images.concurrent_downloads, 8);
        let c = load(
            p,
            Overrides {
                name: Some("n2".into()),
                labels: vec!["zone=a".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.name, "n2");
        assert_eq!(c.labels.get("disk").map(String::as_str), Some("ssd"));
        assert_eq!(c.labels.get("zone").map(String::as_str), Some("a"));
    }

    #[test]
    fn bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("nmae = \"x\"\n", "unknown field `nmae`"),
            (
                "[images]\nconcurrent_downloads = 0\n",
                "config images.concurrent_downloads: must be between 1 and 64",
            ),
            (
                "name = \"Bad_Name\"\n",
                "config name: \"Bad_Name\" is not a valid node name",
            ),
            (
                "gateway = \"http://x:7071\"\n",
                "config gateway: \"http://x:7071\" must be an https:// URL",
            ),
            (
                "gateway = \"https://x:7071, http://y:7071\"\n",
                "config gateway: \"http://y:7071\" must be an https:// URL",
            ),
            ("gateway = \" , \"\n", "config gateway: names no gateway"),
            (
                "gateway = \"https://x:7071\"\n",
                "config ca_hash: required with gateway",
            ),
            (
                "[images]\nmax_layer_bytes = \"12Zb\"\n",
                "\"12Zb\" is not a size in bytes",
            ),
            (
                "[network]\nsubnet = \"10.1.0.0/31\"\n",
                "config network.subnet: 10.1.0.0/31 is too small for containers",
            ),
            (
                "[network]\nbridge = \"a-bridge-name-too-long\"\n",
                "config network.bridge: \"a-bridge-name-too-long\" is not an interface name",
            ),
            (
                "[network]\nsubnet = \"10.1.0.0\"\n",
                "config network.subnet: invalid IP address syntax",
            ),
            (
                "[volumes.data]\npath = \"/nonexistent/skiff-data\"\n",
                "config volumes.data.path: /nonexistent/skiff-data is not a directory",
            ),
            ("[volumes.data]\npaht = \"/srv\"\n", "unknown field `paht`"),
        ];
        for (text, want) in cases {
            let e = load(write(&dir, text, 0o600), Overrides::default()).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn secrets_need_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[images.auth.\"r.example.com\"]\nusername = \"u\"\npassword = \"hunter2\"\n";
        let e = load(write(&dir, text, 0o644), Overrides::default()).unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let c = load(write(&dir, text, 0o600), Overrides::default()).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn no_config_type_prints_the_join_token() {
        let dir = tempfile::tempdir().unwrap();
        let token = "skiff-join-0123456789abcdef";
        let text = format!(
            "gateway = \"https://gw:7071\"\njoin_token = \"{token}\"\nca_hash = \"sha256:{}\"\n",
            "ab".repeat(32)
        );
        let path = write(&dir, &text, 0o600);
        let file: FileConfig = skiff_proto::config::from_toml(
            skiff_proto::config::toml_table(&text, "agent.toml").unwrap(),
            "agent.toml",
        )
        .unwrap();
        let overrides = Overrides {
            join_token: Some(SecretString::new(token)),
            ..Overrides::default()
        };
        let config = load(path, overrides.clone()).unwrap();
        let link = config.gateway.clone().expect("a gateway");
        assert_eq!(
            link.join_token.as_ref().map(SecretString::expose),
            Some(token)
        );
        for printed in [
            format!("{file:?}"),
            format!("{overrides:?}"),
            format!("{config:?}"),
            format!("{link:?}"),
        ] {
            assert!(!printed.contains(token), "{printed}");
            assert!(printed.contains("<redacted>"), "{printed}");
        }
    }
}
