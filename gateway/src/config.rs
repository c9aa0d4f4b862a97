//! Gateway configuration: a TOML file, then `SKIFF_GATEWAY_*` environment
//! variables, then flags (clap reads the last two). Validated before any
//! port is bound; a bad value is one line naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Deserialize;
use skiff_proto::cluster::SiteKind;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/skiff-gateway";

pub use skiff_proto::config::ConfigError;

fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(key, reason)
}

/// A site, as declared in the config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub name: String,
    pub kind: SiteKind,
    /// Lower is cheaper; filled first after a workload's own preference.
    #[serde(default)]
    pub cost_rank: u32,
    /// Most nodes the site may have.
    #[serde(default)]
    pub max_nodes: Option<u32>,
    /// Most its cloud nodes may cost per hour, e.g. `"12.50"`.
    #[serde(default)]
    pub budget_per_hour: Option<String>,
    /// What a cloud site can launch (not for static sites).
    #[serde(default)]
    pub instance_types: Vec<InstanceTypeConfig>,
    /// The agent port as this site's VMs reach it (`https://HOST:7071`);
    /// needed to launch VMs.
    #[serde(default)]
    pub gateway_url: Option<String>,
    /// A VM that has not joined this long is terminated (default 5m).
    #[serde(default)]
    pub join_timeout: Option<skiff_proto::Duration>,
    /// A launched node without work this long is drained and terminated
    /// (default 10m).
    #[serde(default)]
    pub scale_in_after: Option<skiff_proto::Duration>,
    /// `kind = "local"`: where its "VMs" (network namespaces) live.
    #[serde(default)]
    pub local: Option<LocalSiteConfig>,
    /// The agent config (TOML) its VMs get as `/etc/skiff/agent.toml`.
    #[serde(default)]
    pub agent_config: Option<String>,
    /// `kind = "aws"`: region, image and network of its VMs.
    #[serde(default)]
    pub aws: Option<skiff_cloud::aws::AwsSettings>,
    /// `kind = "azure"`: subscription, resource group, subnet and image.
    #[serde(default)]
    pub azure: Option<skiff_cloud::azure::AzureSettings>,
}

/// The local provider's settings (see `skiff_cloud::local`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSiteConfig {
    /// VM directories.
    pub root: PathBuf,
    /// The agent binary the VMs run.
    pub agent_bin: PathBuf,
    /// The VMs' bridge; its first address is the host's (put it in
    /// `advertise` and `gateway_url`).
    pub bridge: String,
    pub subnet: Ipv4Net,
}

/// A VM shape a cloud site can launch.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceTypeConfig {
    pub name: String,
    /// What workloads can use on it (after the agent's reserve). On AWS
    /// and Azure both may be left out: the gateway asks the cloud for the
    /// type's shape at start (less the agent's default reserve).
    #[serde(default)]
    pub cpu: Option<skiff_proto::Cpu>,
    #[serde(default)]
    pub memory: Option<skiff_proto::ByteSize>,
    /// Disk workloads can use on it (`resources.disk`), e.g. `"20Gi"`;
    /// default 0: a workload asking for disk is never launched a VM of
    /// this type.
    #[serde(default = "no_disk")]
    pub disk: skiff_proto::ByteSize,
    /// Price per hour, e.g. `"0.096"`.
    pub price_per_hour: String,
    #[serde(default = "amd64")]
    pub arch: String,
    /// Launched as spot (AWS) or spot priority (Azure): cheaper, and the
    /// cloud may take it back with a notice, which its agent watches.
    #[serde(default)]
    pub spot: bool,
}

fn no_disk() -> skiff_proto::ByteSize {
    skiff_proto::ByteSize::from_bytes(0)
}

fn amd64() -> String {
    "amd64".into()
}

/// A price that is not a decimal number of at most six decimals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a price (e.g. \"0.096\")")]
pub struct BadPrice(pub String);

/// `"0.096"` → 96,000 millionths (exact; at most six decimals).
pub fn parse_price(s: &str) -> Result<u64, BadPrice> {
    let bad = || BadPrice(s.to_string());
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty()
        || frac.len() > 6
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let frac: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().map_err(|_| bad())?
    };
    whole
        .checked_mul(1_000_000)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(bad)
}

/// The config file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub state_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub agent_listen: Option<SocketAddr>,
    /// Names and addresses agents use to reach the gateway (in its server
    /// certificate, with `localhost`, `127.0.0.1` and the host name).
    pub advertise: Vec<String>,
    /// Time between agent heartbeats, e.g. `1s`.
    pub heartbeat_interval: skiff_proto::Duration,
    /// A node that has not been heard from this long is `down`.
    pub down_after: skiff_proto::Duration,
    /// Node container subnets are `/24`s cut from this pool.
    pub node_subnets: Ipv4Net,
    /// Largest request body the REST API takes.
    pub max_body: skiff_proto::ByteSize,
    /// Most replicas of all workloads together: a create, update or scale
    /// beyond it is refused (409), so a mistake cannot make the gateway
    /// hold more allocations than its memory does.
    pub max_fleet_replicas: u32,
    /// Node certificates are valid this long (renewed at two thirds).
    pub cert_lifetime: skiff_proto::Duration,
    /// The REST API's certificate chain (PEM), when it listens beyond
    /// loopback with a certificate the operator gives; without it the
    /// gateway's own CA makes one for the advertised names.
    pub api_cert_file: Option<PathBuf>,
    /// Its private key (PEM), with `api_cert_file`.
    pub api_key_file: Option<PathBuf>,
    /// This gateway's name among the gateways of its fleet (default: the
    /// host name).
    pub name: Option<String>,
    /// Where the other gateways reach this one's REST API (writes are
    /// forwarded to the leader there); default: `listen`'s address, over
    /// TLS when it is not loopback.
    pub peer_url: Option<String>,
    /// The 32-byte key secrets are encrypted with at rest (a file of mode
    /// 0600). Default: `STATE_DIR/secrets.key`, made on first use with the
    /// embedded store; over etcd every gateway must be given the same one.
    pub secrets_key_file: Option<PathBuf>,
    /// State on etcd, shared by several gateways (instead of the embedded
    /// database in `state_dir`).
    pub etcd: Option<EtcdConfig>,
    /// How cloud VMs are emptied onto capacity the fleet already pays for.
    pub consolidation: ConsolidationConfig,
    pub sites: Vec<SiteConfig>,
}

/// `[consolidation]`: emptying launched VMs whose work fits on capacity
/// the fleet already pays for (on-prem nodes, other VMs), so that they
/// scale in. Each replica moves by starting elsewhere first.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsolidationConfig {
    /// Off: VMs are handed back only once idle (`scale_in_after`).
    pub enabled: bool,
    /// How often the fleet is looked at (default 1m).
    pub interval: skiff_proto::Duration,
    /// Emptying a VM must save at least this much per hour (default
    /// `"0.01"`).
    pub min_saving_per_hour: String,
    /// A workload moved is not moved again for this long (default 10m).
    pub cool_down: skiff_proto::Duration,
    /// Most replicas of one workload starting elsewhere at once (default
    /// 1): the rest keep running meanwhile.
    pub max_moving_per_workload: u32,
    /// Most replicas moved off one site's VMs in an hour (default 100).
    pub max_moves_per_site_per_hour: u32,
}

impl Default for ConsolidationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: skiff_proto::Duration::from_secs(60),
            min_saving_per_hour: "0.01".into(),
            cool_down: skiff_proto::Duration::from_secs(600),
            max_moving_per_workload: 1,
            max_moves_per_site_per_hour: 100,
        }
    }
}

/// `[consolidation]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consolidation {
    pub enabled: bool,
    pub interval: Duration,
    /// Millionths per hour.
    pub min_saving: u64,
    pub cool_down: Duration,
    pub max_moving_per_workload: u32,
    pub max_moves_per_site_per_hour: u32,
}

impl Consolidation {
    fn check(c: &ConsolidationConfig) -> Result<Self, ConfigError> {
        let key = |k: &str| format!("consolidation.{k}");
        if c.interval.std() < Duration::from_secs(1) {
            return Err(bad(&key("interval"), "must be at least 1s"));
        }
        if c.max_moving_per_workload == 0 {
            return Err(bad(
                &key("max_moving_per_workload"),
                "must be at least 1 (nothing could move)",
            ));
        }
        let min_saving = parse_price(&c.min_saving_per_hour)
            .map_err(|e| bad(&key("min_saving_per_hour"), e.to_string()))?;
        Ok(Self {
            enabled: c.enabled,
            interval: c.interval.std(),
            min_saving,
            cool_down: c.cool_down.std(),
            max_moving_per_workload: c.max_moving_per_workload,
            max_moves_per_site_per_hour: c.max_moves_per_site_per_hour,
        })
    }
}

/// `[etcd]`: the etcd cluster several gateways keep the fleet's state in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the members, e.g. `["https://10.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// Every key of this fleet starts with it.
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// CA of the members' certificates (TLS to etcd when set).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, when the members ask for one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The name the members' certificates are checked for (default
    /// `localhost`).
    pub tls_server_name: Option<String>,
    /// etcd authentication: user, and a file holding the password.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The leader's lease: a leader not heard from this long is replaced
    /// (default 2s).
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: skiff_proto::Duration,
    /// Longest wait for one etcd call; past it the store is unavailable.
    #[serde(default = "default_etcd_timeout")]
    pub timeout: skiff_proto::Duration,
    /// The members' `--max-txn-ops` (larger batches are split).
    #[serde(default = "default_max_txn_ops")]
    pub max_txn_ops: usize,
}

fn default_etcd_prefix() -> String {
    "/skiff".into()
}
/// Two seconds: the shortest lease an etcd member with the default
/// election timeout (1 s) grants (it raises shorter ones to 1.5 times its
/// election timeout). A leader renews it every third of it, from a runtime
/// of its own, so a busy leader is not replaced for being busy.
fn default_lease_ttl() -> skiff_proto::Duration {
    skiff_proto::Duration::from_secs(2)
}
fn default_etcd_timeout() -> skiff_proto::Duration {
    skiff_proto::Duration::from_secs(5)
}
fn default_max_txn_ops() -> usize {
    128
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            state_dir: None,
            listen: None,
            agent_listen: None,
            advertise: Vec::new(),
            heartbeat_interval: skiff_proto::Duration::from_secs(1),
            down_after: skiff_proto::Duration::from_secs(5),
            node_subnets: Ipv4Net::new(std::net::Ipv4Addr::new(10, 128, 0, 0), 10).expect("valid"),
            max_body: skiff_proto::ByteSize::from_bytes(1 << 20),
            max_fleet_replicas: 200_000,
            cert_lifetime: skiff_proto::Duration::from_secs(30 * 24 * 3600),
            api_cert_file: None,
            api_key_file: None,
            name: None,
            peer_url: None,
            secrets_key_file: None,
            etcd: None,
            consolidation: ConsolidationConfig::default(),
            sites: vec![SiteConfig {
                name: "default".into(),
                kind: SiteKind::Static,
                cost_rank: 0,
                max_nodes: None,
                budget_per_hour: None,
                instance_types: Vec::new(),
                gateway_url: None,
                join_timeout: None,
                scale_in_after: None,
                local: None,
                aws: None,
                azure: None,
                agent_config: None,
            }],
        }
    }
}

/// What flags and the environment set.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub agent_listen: Option<SocketAddr>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub agent_listen: SocketAddr,
    pub advertise: Vec<String>,
    pub heartbeat_interval: Duration,
    pub down_after: Duration,
    pub node_subnets: Ipv4Net,
    pub max_body: usize,
    pub max_fleet_replicas: u32,
    pub cert_lifetime: Duration,
    /// How the REST API is served (see [`ApiTls`]).
    pub api_tls: ApiTls,
    /// This gateway's name in its fleet.
    pub name: String,
    /// Its REST API, as the other gateways reach it.
    pub peer_url: String,
    /// Where the secrets key is (see `FileConfig::secrets_key_file`), and
    /// whether it is the default one the gateway may make.
    pub secrets_key_file: PathBuf,
    pub secrets_key_given: bool,
    /// State on etcd; `None`: the embedded database.
    pub etcd: Option<EtcdConfig>,
    pub consolidation: Consolidation,
    pub sites: Vec<SiteConfig>,
}

/// How the REST API is served: plain HTTP on loopback only; beyond it over
/// TLS, with the operator's certificate or one from the gateway's CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiTls {
    /// `listen` is a loopback address.
    Plain,
    /// A certificate of the gateway's own CA (clients pin its hash).
    OwnCa,
    /// The operator's certificate chain and key.
    Files { cert: PathBuf, key: PathBuf },
}

impl GatewayConfig {
    /// Reads the file (when given), applies the overrides, validates.
    pub fn load(o: &Overrides) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        let file = read_file(o.config.as_deref(), &env)?;
        Self::resolve(file, o)
    }

    pub fn resolve(file: FileConfig, o: &Overrides) -> Result<Self, ConfigError> {
        let heartbeat_interval = file.heartbeat_interval.std();
        let down_after = file.down_after.std();
        if heartbeat_interval < Duration::from_millis(100) {
            return Err(bad("heartbeat_interval", "must be at least 100ms"));
        }
        if down_after < heartbeat_interval * 2 {
            return Err(bad(
                "down_after",
                "must be at least two heartbeat intervals",
            ));
        }
        if file.node_subnets.prefix_len() > 24 {
            return Err(bad(
                "node_subnets",
                format!("{} is smaller than one node's /24", file.node_subnets),
            ));
        }
        if file.sites.is_empty() {
            return Err(bad("sites", "at least one site is needed"));
        }
        for (i, s) in file.sites.iter().enumerate() {
            if !skiff_proto::is_valid_name(&s.name) {
                return Err(bad(
                    &format!("sites[{i}].name"),
                    format!("{:?} is not a valid site name", s.name),
                ));
            }
            if file.sites[..i].iter().any(|o| o.name == s.name) {
                return Err(bad(
                    &format!("sites[{i}].name"),
                    format!("{:?} is declared twice", s.name),
                ));
            }
            if s.kind == SiteKind::Static && !s.instance_types.is_empty() {
                return Err(bad(
                    &format!("sites[{i}].instance_types"),
                    "a static site launches nothing",
                ));
            }
            for (key, set, kind) in [
                ("local", s.local.is_some(), SiteKind::Local),
                ("aws", s.aws.is_some(), SiteKind::Aws),
                ("azure", s.azure.is_some(), SiteKind::Azure),
            ] {
                if set && s.kind != kind {
                    return Err(bad(
                        &format!("sites[{i}].{key}"),
                        format!("only for kind = \"{key}\""),
                    ));
                }
            }
            if let Some(a) = &s.azure {
                a.check()
                    .map_err(|(key, why)| bad(&format!("sites[{i}].azure.{key}"), why))?;
            }
            if let Some(b) = &s.budget_per_hour {
                parse_price(b)
                    .map_err(|e| bad(&format!("sites[{i}].budget_per_hour"), e.to_string()))?;
            }
            for (j, t) in s.instance_types.iter().enumerate() {
                let asks_cloud = matches!(s.kind, SiteKind::Aws | SiteKind::Azure);
                for (key, missing) in [("cpu", t.cpu.is_none()), ("memory", t.memory.is_none())] {
                    if missing && !asks_cloud {
                        return Err(bad(
                            &format!("sites[{i}].instance_types[{j}].{key}"),
                            format!(
                                "required for kind = \"{}\" (only AWS and Azure tell a type's shape)",
                                s.kind
                            ),
                        ));
                    }
                }
                parse_price(&t.price_per_hour).map_err(|e| {
                    bad(
                        &format!("sites[{i}].instance_types[{j}].price_per_hour"),
                        e.to_string(),
                    )
                })?;
            }
        }
        let consolidation = Consolidation::check(&file.consolidation)?;
        let max_body =
            usize::try_from(file.max_body.bytes()).map_err(|_| bad("max_body", "too large"))?;
        if max_body < 1024 {
            return Err(bad("max_body", "must be at least 1Ki"));
        }
        let listen = o
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:7070".parse().expect("valid"));
        let api_tls = match (file.api_cert_file, file.api_key_file) {
            (Some(cert), Some(key)) => ApiTls::Files { cert, key },
            (Some(_), None) => return Err(bad("api_key_file", "is needed with api_cert_file")),
            (None, Some(_)) => return Err(bad("api_cert_file", "is needed with api_key_file")),
            (None, None) if listen.ip().is_loopback() => ApiTls::Plain,
            (None, None) => ApiTls::OwnCa,
        };
        if let Some(e) = &file.etcd {
            if e.endpoints.is_empty() {
                return Err(bad("etcd.endpoints", "at least one member is needed"));
            }
            if !e.prefix.starts_with('/') || e.prefix.len() < 2 {
                return Err(bad(
                    "etcd.prefix",
                    format!("{:?} must start with / and name something", e.prefix),
                ));
            }
            if e.lease_ttl.std() < Duration::from_secs(1) {
                return Err(bad(
                    "etcd.lease_ttl",
                    "must be at least 1s (etcd counts whole seconds)",
                ));
            }
            if e.max_txn_ops < 8 {
                return Err(bad("etcd.max_txn_ops", "must be at least 8"));
            }
            if e.cert_file.is_some() != e.key_file.is_some() {
                return Err(bad("etcd.cert_file", "cert_file and key_file go together"));
            }
        }
        let name = match file.name {
            Some(n) if skiff_proto::is_valid_name(&n) => n,
            Some(n) => return Err(bad("name", format!("{n:?} is not a valid name"))),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| skiff_proto::is_valid_name(h))
                .unwrap_or_else(|| "gateway".into()),
        };
        let peer_url = match file.peer_url {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                u.trim_end_matches('/').to_string()
            }
            Some(u) => return Err(bad("peer_url", format!("{u:?} is not an http(s) URL"))),
            None if api_tls == ApiTls::Plain => format!("http://{listen}"),
            None => {
                let host = file
                    .advertise
                    .first()
                    .cloned()
                    .unwrap_or_else(|| listen.ip().to_string());
                format!("https://{host}:{}", listen.port())
            }
        };
        let state_dir: PathBuf = o
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        Ok(Self {
            api_tls,
            name,
            peer_url,
            etcd: file.etcd,
            secrets_key_given: file.secrets_key_file.is_some(),
            secrets_key_file: file
                .secrets_key_file
                .unwrap_or_else(|| state_dir.join("secrets.key")),
            state_dir,
            listen,
            agent_listen: o
                .agent_listen
                .or(file.agent_listen)
                .unwrap_or_else(|| "0.0.0.0:7071".parse().expect("valid")),
            advertise: file.advertise,
            heartbeat_interval,
            down_after,
            node_subnets: file.node_subnets.trunc(),
            max_body,
            max_fleet_replicas: file.max_fleet_replicas,
            cert_lifetime: file.cert_lifetime.std(),
            consolidation,
            sites: file.sites,
        })
    }

    pub fn site(&self, name: &str) -> Option<&SiteConfig> {
        self.sites.iter().find(|s| s.name == name)
    }
}

impl SiteConfig {
    /// Whether its VMs of `instance_type` are spot (the type's `spot`, or
    /// the cloud settings' for the whole site).
    pub fn is_spot(&self, instance_type: &str) -> bool {
        self.instance_types
            .iter()
            .any(|t| t.name == instance_type && t.spot)
            || self.aws.as_ref().is_some_and(|a| a.spot)
            || self.azure.as_ref().is_some_and(|a| a.spot)
    }

    /// The agent config its VMs of `instance_type` get: the site's
    /// `agent_config`, and for a spot VM of AWS or Azure `[notices]` for
    /// that cloud (unless the site's config has its own).
    pub fn vm_agent_config(&self, instance_type: &str) -> String {
        let mut config = self.agent_config.clone().unwrap_or_default();
        let cloud = match self.kind {
            SiteKind::Aws => "aws",
            SiteKind::Azure => "azure",
            _ => return config,
        };
        let has_own = config.lines().any(|l| l.trim() == "[notices]");
        if self.is_spot(instance_type) && !has_own {
            if !config.is_empty() && !config.ends_with('\n') {
                config.push('\n');
            }
            config.push_str(&format!("[notices]\ncloud = \"{cloud}\"\n"));
        }
        config
    }
}

/// Environment variables that set top-level keys of the file:
/// `SKIFF_GATEWAY_DOWN_AFTER=3s` sets `down_after`; `ADVERTISE` is a
/// comma-separated list. (Sites are declared in the file only.)
const ENV_PREFIX: &str = "SKIFF_GATEWAY_";
const ENV_KEYS: [&str; 15] = [
    "secrets_key_file",
    "name",
    "peer_url",
    "state_dir",
    "listen",
    "agent_listen",
    "advertise",
    "heartbeat_interval",
    "down_after",
    "node_subnets",
    "max_body",
    "max_fleet_replicas",
    "cert_lifetime",
    "api_cert_file",
    "api_key_file",
];

/// The file (if any) with the environment's values on top, checked.
fn read_file(path: Option<&Path>, env: &[(String, String)]) -> Result<FileConfig, ConfigError> {
    let file_key = path.map_or("file".into(), |p| p.display().to_string());
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| bad(&file_key, e.to_string()))?,
        None => String::new(),
    };
    let mut table = skiff_proto::config::toml_table(&text, &file_key)?;
    for (name, value) in env {
        let key = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        if key == "config" {
            continue;
        }
        if !ENV_KEYS.contains(&key.as_str()) {
            // Not an error: clients (the `skiff` CLI) may set variables of
            // their own with this prefix on the same host.
            eprintln!("skiff-gateway: {name} is not a setting of the gateway; ignored");
            continue;
        }
        let v = if key == "advertise" {
            toml::Value::Array(
                value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.trim().to_string()))
                    .collect(),
            )
        } else {
            toml::Value::String(value.clone())
        };
        table.insert(key, v);
    }
    skiff_proto::config::from_toml(table, &file_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<GatewayConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gateway.toml");
        std::fs::write(&p, text).unwrap();
        GatewayConfig::load(&Overrides {
            config: Some(p),
            ..Overrides::default()
        })
    }

    #[test]
    fn consolidation_is_on_by_default_and_bad_values_name_their_key() {
        let c = load("").unwrap().consolidation;
        assert!(c.enabled);
        assert_eq!(
            (c.interval, c.cool_down, c.min_saving),
            (Duration::from_secs(60), Duration::from_secs(600), 10_000)
        );
        let e = load("[consolidation]\nmax_moving_per_workload = 0\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("consolidation.max_moving_per_workload"),
            "{e}"
        );
        let e = load("[consolidation]\nmin_saving_per_hour = \"ten\"\n").unwrap_err();
        assert!(
            e.to_string().contains("consolidation.min_saving_per_hour"),
            "{e}"
        );
        let e = load("[consolidation]\ninterval = \"10ms\"\n").unwrap_err();
        assert!(e.to_string().contains("consolidation.interval"), "{e}");
    }

    #[test]
    fn spot_vms_of_a_cloud_site_watch_their_clouds_notices() {
        let c = load(
            "[[sites]]\nname = \"aws\"\nkind = \"aws\"\nagent_config = \"[reserve]\\ncpu = \\\"200m\\\"\"\n\
             [[sites.instance_types]]\nname = \"m.spot\"\ncpu = \"2\"\nmemory = \"8Gi\"\nprice_per_hour = \"0.03\"\nspot = true\n\
             [[sites.instance_types]]\nname = \"m.large\"\ncpu = \"2\"\nmemory = \"8Gi\"\nprice_per_hour = \"0.09\"\n",
        )
        .unwrap();
        let aws = &c.sites[0];
        assert!(aws.is_spot("m.spot") && !aws.is_spot("m.large"));
        assert_eq!(
            aws.vm_agent_config("m.spot"),
            "[reserve]\ncpu = \"200m\"\n[notices]\ncloud = \"aws\"\n"
        );
        assert_eq!(aws.vm_agent_config("m.large"), "[reserve]\ncpu = \"200m\"");
        // The site's own [notices] is kept as it is.
        let mut own = aws.clone();
        own.agent_config = Some("[notices]\ncloud = \"aws\"\npoll_interval = \"2s\"\n".into());
        assert_eq!(
            own.vm_agent_config("m.spot"),
            own.agent_config.clone().unwrap()
        );
    }

    #[test]
    fn defaults_and_sites() {
        let c = load("").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.agent_listen.to_string(), "0.0.0.0:7071");
        assert_eq!(c.down_after, Duration::from_secs(5));
        assert_eq!(c.sites[0].name, "default");
        let c = load(
            "down_after = \"3s\"\n[[sites]]\nname = \"onprem-dc1\"\nkind = \"static\"\n[[sites]]\nname = \"aws-us-east-1\"\nkind = \"aws\"\ncost_rank = 2\n",
        )
        .unwrap();
        assert_eq!(c.sites.len(), 2);
        assert_eq!(c.down_after, Duration::from_secs(3));
    }

    #[test]
    fn the_environment_sets_keys_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gateway.toml");
        std::fs::write(&p, "down_after = \"9s\"\nmax_body = \"2Mi\"\n").unwrap();
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let file = read_file(
            Some(&p),
            &env(&[
                ("SKIFF_GATEWAY_DOWN_AFTER", "3s"),
                ("SKIFF_GATEWAY_ADVERTISE", "gw.example.com,10.0.0.5"),
                ("SKIFF_GATEWAY_CONFIG", "ignored"),
            ]),
        )
        .unwrap();
        let c = GatewayConfig::resolve(file, &Overrides::default()).unwrap();
        assert_eq!(c.down_after, Duration::from_secs(3));
        assert_eq!(c.max_body, 2 << 20);
        assert_eq!(c.advertise, ["gw.example.com", "10.0.0.5"]);
        // A variable that is no setting is ignored (with a warning).
        let file = read_file(None, &env(&[("SKIFF_GATEWAY_DOWN_AFTR", "3s")])).unwrap();
        assert_eq!(file.down_after, FileConfig::default().down_after);
        let e = read_file(None, &env(&[("SKIFF_GATEWAY_DOWN_AFTER", "soon")])).unwrap_err();
        assert!(e.to_string().starts_with("config down_after:"), "{e}");
    }

    #[test]
    fn prices_are_exact() {
        assert_eq!(parse_price("0.096"), Ok(96_000));
        assert_eq!(parse_price("12"), Ok(12_000_000));
        assert_eq!(parse_price("1.000001"), Ok(1_000_001));
        for bad in ["", ".5", "1.0000001", "-1", "1e3", "0,5"] {
            assert!(parse_price(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, want) in [
            (
                "[[sites]]\nname = \"dc\"\nkind = \"static\"\n[[sites.instance_types]]\nname = \"m\"\ncpu = \"2\"\nmemory = \"8Gi\"\nprice_per_hour = \"0.1\"\n",
                "config sites[0].instance_types: a static site launches nothing",
            ),
            (
                "[[sites]]\nname = \"aws\"\nkind = \"aws\"\n[[sites.instance_types]]\nname = \"m\"\ncpu = \"2\"\nmemory = \"8Gi\"\nprice_per_hour = \"cheap\"\n",
                "config sites[0].instance_types[0].price_per_hour: \"cheap\" is not a price",
            ),
            (
                "down_after = \"1s\"\n",
                "config down_after: must be at least two heartbeat intervals",
            ),
            (
                "node_subnets = \"10.0.0.0/28\"\n",
                "config node_subnets: 10.0.0.0/28 is smaller than one node's /24",
            ),
            (
                "[[sites]]\nname = \"Bad\"\nkind = \"static\"\n",
                "config sites[0].name: \"Bad\" is not a valid site name",
            ),
            (
                "[[sites]]\nname = \"a\"\nkind = \"moon\"\n",
                "config sites[0].kind: unknown variant `moon`",
            ),
            ("lisen = \"x\"\n", "config lisen: unknown field `lisen`"),
            (
                "[[sites]]\nname = \"aws\"\nkind = \"static\"\n[sites.aws]\nregion = \"us-east-1\"\nimage_id = \"ami-1\"\n",
                "config sites[0].aws: only for kind = \"aws\"",
            ),
            (
                "[[sites]]\nname = \"aws\"\nkind = \"aws\"\n[sites.aws]\nregion = \"us-east-1\"\n",
                "config sites[0].aws: missing field `image_id`",
            ),
            (
                "[[sites]]\nname = \"az\"\nkind = \"azure\"\n[sites.azure]\nsubscription_id = \"s\"\nresource_group = \"rg\"\nlocation = \"westeurope\"\n\
                 subnet_id = \"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/n\"\n\
                 image = \"Canonical:ubuntu\"\nssh_public_key = \"ssh-ed25519 AAAA\"\n",
                "config sites[0].azure.image: \"Canonical:ubuntu\": expected publisher:offer:sku:version",
            ),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
