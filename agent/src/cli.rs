//! The `skiff-agent` command line: `serve`, and client commands that talk
//! to a running agent over its socket.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hyper::Method;

use crate::api::client::{Client, query_value};
use crate::api::containers::{OutputLine, RunRequest};
use crate::api::{ImportRequest, PullLine, PullRequest};
use crate::config::{AgentConfig, DEFAULT_SOCKET, Overrides};
use crate::images::{DiskUsage, ImageRecord, ImageSummary, PruneReport, PullEvent};
use crate::runtime::records::ContainerRecord;
use crate::runtime::{ExitInfo, RunOptions};

/// Skiff node agent: runs containers on this host.
#[derive(Debug, Parser)]
#[command(name = "skiff-agent", version, about, long_about = None)]
pub struct Cli {
    /// The agent's local API socket.
    #[arg(long, global = true, env = "SKIFF_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent daemon.
    Serve(ServeArgs),
    /// Pull an image from a registry.
    Pull {
        /// Image reference, e.g. busybox:1.36 or registry:5000/app@sha256:…
        reference: String,
    },
    /// Import an image from an OCI layout directory, an oci-archive or a
    /// docker-archive (what `docker save` writes).
    Import {
        /// Path of the directory or archive.
        file: PathBuf,
        /// Store the image under this name instead of the archive's.
        #[arg(long)]
        name: Option<String>,
    },
    /// List images.
    Images {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show one image as JSON.
    ImageInspect { name: String },
    /// Remove images (and the layers nothing else uses).
    Rmi {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove blobs and layers that no image or container uses.
    Prune,
    /// Create and start a container from an image (attached by default:
    /// streams its output and exits with its exit code).
    Run(RunArgs),
    /// List containers (running ones; -a for all).
    Ps {
        /// Show all containers, not only running ones.
        #[arg(short, long)]
        all: bool,
        /// Print only the ids.
        #[arg(short, long)]
        quiet: bool,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show a container's output.
    Logs {
        container: String,
        /// Keep following until the container exits.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(short = 'n', long)]
        tail: Option<usize>,
        /// Only lines since this RFC 3339 UTC time (2026-12-01T10:00:00Z).
        #[arg(long)]
        since: Option<String>,
    },
    /// Start a stopped container.
    Start { container: String },
    /// Stop containers: SIGTERM, then SIGKILL after the stop timeout.
    Stop {
        #[arg(required = true)]
        containers: Vec<String>,
        /// Seconds to wait before SIGKILL [default: the container's stop timeout].
        #[arg(short = 't', long = "time")]
        time: Option<u64>,
    },
    /// Send a signal to containers (default KILL).
    Kill {
        #[arg(required = true)]
        containers: Vec<String>,
        #[arg(short, long, default_value = "KILL")]
        signal: String,
    },
    /// Run a command in a running container; exits with its exit code
    /// (126: it could not be run; 127: executable not found).
    Exec {
        #[command(flatten)]
        process: ProcessFlags,
        container: String,
        /// Command and arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Remove containers.
    Rm {
        #[arg(required = true)]
        containers: Vec<String>,
        /// Stop running containers first.
        #[arg(short, long)]
        force: bool,
    },
    /// Wait for a container to exit; prints its exit code.
    Wait { container: String },
    /// Show a container as JSON: state, exit, limits, usage.
    Inspect { container: String },
    /// Disk used by images.
    Df {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// The process flags `run` and `exec` share.
#[derive(Debug, Args)]
pub struct ProcessFlags {
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// User (name or uid, optionally :group), resolved in the image's
    /// /etc/passwd [default: the image's; for exec, the container's].
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory inside the container [default: the image's; for
    /// exec, the container's].
    #[arg(short, long)]
    workdir: Option<String>,
}

/// `run --pull`, as docker's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PullPolicy {
    Missing,
    Always,
    Never,
}

/// Flags of `run`, shaped like `docker run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run in the background and print the container id.
    #[arg(short, long)]
    detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Name (letters, digits, '_', '.', '-'; unique) [default: the id's
    /// first 12 characters].
    #[arg(long)]
    name: Option<String>,
    /// Memory limit: 256m, 1g (Docker units) or 256Mi, 1Gi.
    #[arg(short, long, value_parser = parse_memory)]
    memory: Option<skiff_proto::ByteSize>,
    /// CPU limit in cores: 0.5, 2, or 500m.
    #[arg(long)]
    cpus: Option<skiff_proto::Cpu>,
    /// Most processes and threads.
    #[arg(long = "pids-limit", alias = "pids")]
    pids: Option<u64>,
    #[command(flatten)]
    process: ProcessFlags,
    /// Restart policy: never (default), on-failure, always.
    #[arg(long, value_parser = parse_restart)]
    restart: Option<skiff_proto::RestartPolicy>,
    /// Seconds between SIGTERM and SIGKILL on stop [default: 10].
    #[arg(long)]
    stop_timeout: Option<u64>,
    /// Network: bridge (default: an address on the node bridge, egress
    /// through NAT), host (the host's own), or none (loopback only).
    #[arg(long, value_parser = parse_network)]
    network: Option<skiff_proto::NetworkMode>,
    /// Publish a container port on the host: [IP:]HOST:CONTAINER[/tcp|/udp],
    /// e.g. 8080:80, 127.0.0.1:5353:53/udp (repeatable; bridge network).
    #[arg(short = 'p', long = "publish")]
    publish: Vec<skiff_proto::PortSpec>,
    /// Mount a host directory: HOST_DIR:CONTAINER_PATH[:ro], e.g.
    /// /srv/data:/data:ro (repeatable; both paths absolute).
    #[arg(short = 'v', long = "volume", value_parser = parse_bind)]
    volume: Vec<crate::runtime::spec::Mount>,
    /// Mount a tmpfs: CONTAINER_PATH[:SIZE], e.g. /tmp:64Mi (repeatable)
    /// [default size: 64Mi].
    #[arg(long, value_parser = parse_tmpfs)]
    tmpfs: Vec<crate::runtime::spec::Mount>,
    /// Hostname inside the container [default: the id's first 12
    /// characters].
    #[arg(long)]
    hostname: Option<String>,
    /// Replace the image's ENTRYPOINT.
    #[arg(long)]
    entrypoint: Option<String>,
    /// All capabilities, no seccomp, writable /sys: for trusted workloads only.
    #[arg(long)]
    privileged: bool,
    /// Add a capability (NET_ADMIN, …).
    #[arg(long)]
    cap_add: Vec<String>,
    /// Drop a capability (or ALL).
    #[arg(long)]
    cap_drop: Vec<String>,
    /// Security options, as docker's: no-new-privileges=false lets set-id
    /// binaries and file capabilities take effect (Skiff sets
    /// no_new_privs by default; docker does not).
    #[arg(long = "security-opt", value_parser = parse_security_opt)]
    security_opt: Vec<SecurityOpt>,
    /// Run in a user namespace: root in the container is an unprivileged
    /// user on the host (ids 0-65535 map to 100000-165535 unless the
    /// agent's runtime.userns_remap_range says otherwise).
    #[arg(long)]
    userns_remap: bool,
    /// Rotate the container's log file past this size (like Docker's
    /// `--log-opt max-size`): 10m, 512k [default: 10m].
    #[arg(long, value_parser = parse_memory)]
    log_max_size: Option<skiff_proto::ByteSize>,
    /// Health check: a shell command run in the container (exit 0 is healthy).
    #[arg(long, conflicts_with_all = ["health_tcp", "health_http"])]
    health_cmd: Option<String>,
    /// Health check: a TCP connection to this port of the container.
    #[arg(long, conflicts_with = "health_http")]
    health_tcp: Option<u32>,
    /// Health check: an HTTP GET to PORT[/PATH] of the container (2xx, 3xx
    /// is healthy), e.g. 8080/healthz.
    #[arg(long, value_parser = parse_http_probe)]
    health_http: Option<skiff_proto::HttpProbe>,
    /// Time between health checks (30s, 1m) [default: 10s].
    #[arg(long)]
    health_interval: Option<skiff_proto::Duration>,
    /// Time a health check may take [default: 2s].
    #[arg(long)]
    health_timeout: Option<skiff_proto::Duration>,
    /// Failures in a row before the container is unhealthy [default: 3].
    #[arg(long)]
    health_retries: Option<u32>,
    /// Failures during this time after start do not count [default: 0s].
    #[arg(long)]
    health_start_period: Option<skiff_proto::Duration>,
    /// When to pull the image: missing (when it is not in the store),
    /// always (first, even if it is), never (fail if it is missing).
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pull: PullPolicy,
    /// The image.
    image: String,
    /// Command and arguments (replace the image's CMD).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

/// One `--security-opt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecurityOpt {
    NoNewPrivileges(bool),
}

fn parse_security_opt(s: &str) -> Result<SecurityOpt, String> {
    let (key, value) = match s.split_once(['=', ':']) {
        Some((k, v)) => (k, Some(v)),
        None => (s, None),
    };
    match (key, value) {
        ("no-new-privileges", None | Some("true")) => Ok(SecurityOpt::NoNewPrivileges(true)),
        ("no-new-privileges", Some("false")) => Ok(SecurityOpt::NoNewPrivileges(false)),
        ("no-new-privileges", Some(v)) => {
            Err(format!("no-new-privileges: {v:?} is not true or false"))
        }
        _ => Err(format!(
            "{s:?} is not a supported security option (supported: no-new-privileges[=true|false])"
        )),
    }
}

fn parse_memory(s: &str) -> Result<skiff_proto::ByteSize, String> {
    let lower = s.to_ascii_lowercase();
    let docker = lower
        .strip_suffix('b')
        .map(|x| (x, 0))
        .or_else(|| lower.strip_suffix('k').map(|x| (x, 10)))
        .or_else(|| lower.strip_suffix('m').map(|x| (x, 20)))
        .or_else(|| lower.strip_suffix('g').map(|x| (x, 30)));
    if let Some((n, shift)) = docker
        && let Ok(n) = n.parse::<u64>()
    {
        return n
            .checked_mul(1 << shift)
            .map(skiff_proto::ByteSize::from_bytes)
            .ok_or_else(|| format!("{s:?} is too large"));
    }
    s.parse::<skiff_proto::ByteSize>()
        .map_err(|e| e.to_string())
}

fn parse_http_probe(s: &str) -> Result<skiff_proto::HttpProbe, String> {
    let (port, path) = match s.split_once('/') {
        Some((p, rest)) => (p, format!("/{rest}")),
        None => (s, "/".to_string()),
    };
    let port = port
        .parse()
        .map_err(|_| format!("{s:?}: expected PORT[/PATH], e.g. 8080/healthz"))?;
    Ok(skiff_proto::HttpProbe { path, port })
}

impl RunArgs {
    /// The health check the flags describe, if any.
    fn health(&self) -> anyhow::Result<Option<skiff_proto::HealthSpec>> {
        let probe =
            self.health_cmd.is_some() || self.health_tcp.is_some() || self.health_http.is_some();
        if !probe {
            if self.health_interval.is_some()
                || self.health_timeout.is_some()
                || self.health_retries.is_some()
                || self.health_start_period.is_some()
            {
                anyhow::bail!(
                    "--health-interval/-timeout/-retries/-start-period need --health-cmd, --health-tcp or --health-http"
                );
            }
            return Ok(None);
        }
        Ok(Some(skiff_proto::HealthSpec {
            exec: self.health_cmd.as_ref().map(|c| skiff_proto::ExecProbe {
                command: vec!["sh".into(), "-c".into(), c.clone()],
            }),
            tcp: self.health_tcp.map(|port| skiff_proto::TcpProbe { port }),
            http: self.health_http.clone(),
            interval: self
                .health_interval
                .unwrap_or(skiff_proto::Duration::from_secs(10)),
            timeout: self
                .health_timeout
                .unwrap_or(skiff_proto::Duration::from_secs(2)),
            retries: self.health_retries.unwrap_or(3),
            start_period: self.health_start_period.unwrap_or_default(),
        }))
    }
}

fn parse_restart(s: &str) -> Result<skiff_proto::RestartPolicy, String> {
    match s {
        "never" | "no" => Ok(skiff_proto::RestartPolicy::Never),
        "on-failure" => Ok(skiff_proto::RestartPolicy::OnFailure),
        "always" => Ok(skiff_proto::RestartPolicy::Always),
        _ => Err(format!(
            "{s:?} is not a restart policy (never, on-failure, always)"
        )),
    }
}

/// `HOST_DIR:CONTAINER_PATH[:ro|:rw]`.
fn parse_bind(s: &str) -> Result<crate::runtime::spec::Mount, String> {
    let mut parts = s.split(':');
    let (Some(host), Some(target)) = (parts.next(), parts.next()) else {
        return Err(format!("{s:?} is not HOST_DIR:CONTAINER_PATH[:ro]"));
    };
    let read_only = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(o) => return Err(format!("{o:?} is not ro or rw")),
    };
    if parts.next().is_some() {
        return Err(format!("{s:?} is not HOST_DIR:CONTAINER_PATH[:ro]"));
    }
    if !host.starts_with('/') {
        return Err(format!(
            "{host:?}: the host directory must be an absolute path"
        ));
    }
    skiff_proto::check_mount_path(target).map_err(|e| e.to_string())?;
    Ok(crate::runtime::spec::Mount {
        source: crate::runtime::spec::MountSource::Bind(host.into()),
        target: target.to_string(),
        read_only,
        owned: false,
        secret: false,
    })
}

/// `CONTAINER_PATH[:SIZE]`.
fn parse_tmpfs(s: &str) -> Result<crate::runtime::spec::Mount, String> {
    let (target, size) = match s.split_once(':') {
        Some((t, size)) => (t, parse_memory(size)?.bytes()),
        None => (s, 64 << 20),
    };
    skiff_proto::check_mount_path(target).map_err(|e| e.to_string())?;
    if size == 0 {
        return Err("a tmpfs needs a size of more than 0".into());
    }
    Ok(crate::runtime::spec::Mount {
        source: crate::runtime::spec::MountSource::Tmpfs { size },
        target: target.to_string(),
        read_only: false,
        owned: false,
        secret: false,
    })
}

fn parse_network(s: &str) -> Result<skiff_proto::NetworkMode, String> {
    match s {
        "none" => Ok(skiff_proto::NetworkMode::None),
        "host" => Ok(skiff_proto::NetworkMode::Host),
        "bridge" => Ok(skiff_proto::NetworkMode::Bridge),
        _ => Err(format!("{s:?} is not a network mode (bridge, host, none)")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// Flags of `serve`; each also comes from `SKIFF_AGENT_*` and the file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file [default: /etc/skiff/agent.toml if present].
    #[arg(long, env = "SKIFF_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Where the agent keeps its state [default: /var/lib/skiff].
    #[arg(long, env = "SKIFF_AGENT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Node name [default: the host name].
    #[arg(long, env = "SKIFF_AGENT_NAME")]
    name: Option<String>,
    /// Node label KEY=VALUE (repeatable).
    #[arg(long = "label", env = "SKIFF_AGENT_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// Gateway URL, https://HOST:7071: the agent joins it (first start)
    /// and keeps a session to it, running what the gateway places here.
    /// Several gateways of one fleet comma-separated: when a session ends,
    /// the agent re-attaches to the next (its containers keep running).
    #[arg(long, env = "SKIFF_AGENT_GATEWAY")]
    gateway: Option<String>,
    /// Single-use join token (POST /v1/join-tokens on the gateway); needed
    /// on the first start only, the node keeps its certificate after.
    /// Prefer the environment variable: flags show in `ps`.
    #[arg(long, env = "SKIFF_AGENT_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<crate::config::SecretString>,
    /// The gateway CA's hash, sha256:HEX (printed with the join token):
    /// the agent trusts a gateway only if its CA has this hash.
    #[arg(long, env = "SKIFF_AGENT_CA_HASH")]
    ca_hash: Option<String>,
    /// Address for Prometheus metrics.
    #[arg(long, env = "SKIFF_AGENT_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon runs on all cores; a client command is one request.
    let mut builder = if matches!(cli.command, Command::Serve(_)) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skiff-agent: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let socket = cli.socket.clone();
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args, socket).await,
            other => client_command(other, Client::new(&socket)).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skiff-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs, socket: PathBuf) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        config: args.config,
        state_dir: args.state_dir,
        socket: Some(socket),
        name: args.name,
        labels: args.labels,
        gateway: args.gateway,
        join_token: args.join_token,
        ca_hash: args.ca_hash,
        metrics_listen: args.metrics_listen,
    };
    let config = AgentConfig::load(&overrides)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    crate::daemon::run(config).await?;
    Ok(ExitCode::SUCCESS)
}

async fn client_command(cmd: Command, client: Client) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Serve(_) => unreachable!("handled by main"),
        Command::Pull { reference } => pull(&client, &reference, false).await,
        Command::Import { file, name } => {
            let path = std::path::absolute(&file)?;
            let req = ImportRequest {
                path: path.to_string_lossy().into_owned(),
                name,
            };
            let images: Vec<ImageSummary> = client
                .call(Method::POST, "/v1/images/import", Some(&req))
                .await?;
            for i in images {
                println!("imported {} ({})", i.reference, short(&i.id));
                print_warnings(&i);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Images { output } => {
            let images: Vec<ImageSummary> =
                client.call(Method::GET, "/v1/images", None::<&()>).await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else {
                println!(
                    "{:<60} {:<12} {:<12} {:>6} {:>10}",
                    "REFERENCE", "ID", "PLATFORM", "LAYERS", "SIZE"
                );
                for i in images {
                    println!(
                        "{:<60} {:<12} {:<12} {:>6} {:>10}",
                        i.reference,
                        short(&i.id),
                        i.platform,
                        i.layers,
                        human(i.size)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::ImageInspect { name } => {
            let rec: ImageRecord = client
                .call(
                    Method::GET,
                    &format!("/v1/images/inspect?name={}", query_value(&name)),
                    None::<&()>,
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&rec)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Rmi { names } => {
            let mut code = ExitCode::SUCCESS;
            for name in names {
                let r: Result<PruneReport, _> = client
                    .call(
                        Method::DELETE,
                        &format!("/v1/images?name={}", query_value(&name)),
                        None::<&()>,
                    )
                    .await;
                match r {
                    Ok(r) => println!("removed {name} (freed {})", human(r.bytes_freed)),
                    Err(e) => {
                        eprintln!("skiff-agent: {e}");
                        code = ExitCode::FAILURE;
                    }
                }
            }
            Ok(code)
        }
        Command::Prune => {
            let r: PruneReport = client
                .call(Method::POST, "/v1/images/prune", None::<&()>)
                .await?;
            println!(
                "removed {} blobs and {} layers, freed {}",
                r.blobs_removed,
                r.layers_removed,
                human(r.bytes_freed)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run(&client, args).await,
        Command::Ps { all, quiet, output } => {
            let list: Vec<ContainerRecord> = client
                .call(
                    Method::GET,
                    &format!("/v1/containers?all={all}"),
                    None::<&()>,
                )
                .await?;
            if quiet {
                for c in list {
                    println!("{}", c.id);
                }
            } else if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<12} {:<20} {:<28} {:<10} {:>8} {:<15} {:<24} STATUS",
                    "ID", "NAME", "IMAGE", "STATE", "PID", "ADDRESS", "PORTS"
                );
                for c in list {
                    let status = match (&c.reason, c.exit_code) {
                        (Some(r), Some(code)) => format!("{r} ({code})"),
                        _ => String::new(),
                    };
                    let address = match (c.address, c.network) {
                        (Some(ip), _) => ip.to_string(),
                        (None, skiff_proto::NetworkMode::Host) => "host".into(),
                        (None, _) => "-".into(),
                    };
                    let ports: Vec<String> = c.ports.iter().map(|p| p.to_string()).collect();
                    println!(
                        "{:<12} {:<20} {:<28} {:<10} {:>8} {:<15} {:<24} {}",
                        &c.id[..12],
                        c.name,
                        c.image,
                        c.state,
                        c.pid.map(|p| p.to_string()).unwrap_or_default(),
                        address,
                        ports.join(","),
                        status
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            process,
            container,
            cmd,
        } => {
            let opts = crate::runtime::ExecOptions {
                cmd,
                env: process.env,
                user: process.user,
                workdir: process.workdir,
            };
            let path = format!("/v1/containers/exec?id={}", query_value(&container));
            let lines = client.stream(&path, &opts).await?;
            print_output(lines).await
        }
        Command::Logs {
            container,
            follow,
            tail,
            since,
        } => {
            let mut path = format!(
                "/v1/containers/logs?id={}&follow={follow}",
                query_value(&container)
            );
            if let Some(n) = tail {
                path.push_str(&format!("&tail={n}"));
            }
            if let Some(t) = since {
                path.push_str(&format!("&since={}", query_value(&t)));
            }
            let lines = client.get_stream(&path).await?;
            print_output(lines).await
        }
        Command::Start { container } => {
            let r: ContainerRecord = client
                .call(
                    Method::POST,
                    &format!("/v1/containers/start?id={}", query_value(&container)),
                    None::<&()>,
                )
                .await?;
            println!("{}", r.name);
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop { containers, time } => {
            for_each(&containers, |c| {
                let mut path = format!("/v1/containers/stop?id={}", query_value(c));
                if let Some(t) = time {
                    path.push_str(&format!("&timeout_ms={}", t * 1000));
                }
                let client = client.clone();
                async move {
                    client
                        .call::<ExitInfo>(Method::POST, &path, None::<&()>)
                        .await
                        .map(|_| ())
                }
            })
            .await
        }
        Command::Kill { containers, signal } => {
            for_each(&containers, |c| {
                let path = format!(
                    "/v1/containers/kill?id={}&signal={}",
                    query_value(c),
                    query_value(&signal)
                );
                let client = client.clone();
                async move { client.call_empty(Method::POST, &path).await }
            })
            .await
        }
        Command::Rm { containers, force } => {
            for_each(&containers, |c| {
                let path = format!("/v1/containers?id={}&force={force}", query_value(c));
                let client = client.clone();
                async move { client.call_empty(Method::DELETE, &path).await }
            })
            .await
        }
        Command::Wait { container } => {
            let e: ExitInfo = client
                .call(
                    Method::POST,
                    &format!("/v1/containers/wait?id={}", query_value(&container)),
                    None::<&()>,
                )
                .await?;
            println!("{}", e.exit_code);
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { container } => {
            let v: serde_json::Value = client
                .call(
                    Method::GET,
                    &format!("/v1/containers/inspect?id={}", query_value(&container)),
                    None::<&()>,
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Df { output } => {
            let d: DiskUsage = client
                .call(Method::GET, "/v1/system/df", None::<&()>)
                .await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                println!(
                    "images {}  blobs {} ({})  layers {} ({})",
                    d.images,
                    d.blobs,
                    human(d.blob_bytes),
                    d.layers,
                    human(d.layer_bytes)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `f` for every name, printing each name that worked (as Docker
/// does) and one line per failure; exit 1 if any failed.
async fn for_each<F, Fut>(names: &[String], f: F) -> anyhow::Result<ExitCode>
where
    F: Fn(&String) -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::api::client::ClientError>>,
{
    let mut code = ExitCode::SUCCESS;
    for n in names {
        match f(n).await {
            Ok(()) => println!("{n}"),
            Err(e) => {
                eprintln!("skiff-agent: {e}");
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

/// Prints a container's output stream; returns its exit code at the end.
async fn print_output(mut lines: crate::api::client::Lines) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    while let Some(line) = lines.next::<OutputLine>().await? {
        match line {
            OutputLine::Log { log } => {
                let out: &mut dyn Write = if log.stream == "stderr" {
                    &mut stderr
                } else {
                    &mut stdout
                };
                let _ = out.write_all(log.log.as_bytes());
                let _ = out.flush();
            }
            OutputLine::Exit { exit } => {
                if exit.reason == "failed-to-start" {
                    eprintln!("skiff-agent: {}", exit.message.unwrap_or_default());
                }
                return Ok(ExitCode::from(exit.exit_code.clamp(0, 255) as u8));
            }
            OutputLine::Failed { error } => {
                eprintln!("skiff-agent: {}", error.message);
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(client: &Client, a: RunArgs) -> anyhow::Result<ExitCode> {
    let health = a.health()?;
    let pull_first = match a.pull {
        PullPolicy::Always => true,
        PullPolicy::Never => false,
        PullPolicy::Missing => {
            let path = format!("/v1/images/inspect?name={}", query_value(&a.image));
            match client
                .call::<ImageRecord>(Method::GET, &path, None::<&()>)
                .await
            {
                Ok(_) => false,
                Err(crate::api::client::ClientError::Api { status: 404, .. }) => true,
                Err(e) => return Err(e.into()),
            }
        }
    };
    if pull_first {
        if a.pull == PullPolicy::Missing {
            eprintln!("skiff-agent: image {} is not here, pulling it", a.image);
        }
        let code = pull(client, &a.image, true).await?;
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
    }
    let options = RunOptions {
        image: a.image,
        name: a.name,
        cmd: a.cmd,
        entrypoint: a.entrypoint.map(|e| vec![e]),
        env: a.process.env,
        user: a.process.user,
        workdir: a.process.workdir,
        memory: a.memory,
        cpus: a.cpus,
        pids: a.pids,
        restart: a.restart,
        stop_timeout_ms: a.stop_timeout.map(|s| s * 1000),
        network: a.network,
        ports: a.publish,
        hostname: a.hostname,
        privileged: a.privileged,
        cap_add: a.cap_add,
        cap_drop: a.cap_drop,
        allow_privilege_escalation: a
            .security_opt
            .iter()
            .rev()
            .map(|SecurityOpt::NoNewPrivileges(on)| !on)
            .next()
            .unwrap_or(false),
        labels: Default::default(),
        namespace: None,
        auto_remove: a.rm,
        log_max_bytes: a.log_max_size.map(|b| b.bytes()),
        health,
        userns_remap: a.userns_remap,
        mounts: a.volume.into_iter().chain(a.tmpfs).collect(),
    };
    let req = RunRequest {
        options,
        attach: !a.detach,
    };
    if a.detach {
        let r: ContainerRecord = client
            .call(Method::POST, "/v1/containers/run", Some(&req))
            .await?;
        println!("{}", r.id);
        return Ok(ExitCode::SUCCESS);
    }
    let lines = client.stream("/v1/containers/run", &req).await?;
    print_output(lines).await
}

/// What unpacking an image left out, one line each on stderr.
fn print_warnings(image: &ImageSummary) {
    for w in &image.warnings {
        eprintln!("skiff-agent: warning: {}: {w}", image.reference);
    }
}

/// Pulls with a progress bar per layer on a terminal, plain lines otherwise.
/// Progress goes to stderr when `run` pulls, so a container's output stays
/// alone on stdout.
async fn pull(client: &Client, reference: &str, for_run: bool) -> anyhow::Result<ExitCode> {
    let say = |line: String| {
        if for_run {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let mut lines = client
        .stream(
            "/v1/images/pull",
            &PullRequest {
                reference: reference.into(),
            },
        )
        .await?;
    let tty = if for_run {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    let bars = indicatif::MultiProgress::new();
    let mut by_layer = std::collections::HashMap::new();
    let style =
        indicatif::ProgressStyle::with_template("{prefix} {bar:30} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    while let Some(line) = lines.next::<PullLine>().await? {
        match line {
            PullLine::Event(PullEvent::Resolved { digest, layers }) => {
                if tty {
                    for (layer, size) in layers {
                        let bar = bars.add(indicatif::ProgressBar::new(size));
                        bar.set_style(style.clone());
                        bar.set_prefix(short(&layer).to_string());
                        by_layer.insert(layer, bar);
                    }
                } else {
                    say(format!(
                        "{reference}: resolved {digest}, {} layers",
                        layers.len()
                    ));
                }
            }
            PullLine::Event(PullEvent::Downloading { layer, current, .. }) => {
                if let Some(b) = by_layer.get(&layer) {
                    b.set_position(current);
                }
            }
            PullLine::Event(ev) => {
                let (layer, what) = match &ev {
                    PullEvent::LayerExists { layer } => (layer, "already present"),
                    PullEvent::Downloaded { layer } => (layer, "downloaded"),
                    PullEvent::Unpacked { layer } => (layer, "unpacked"),
                    _ => continue,
                };
                match by_layer.get(layer) {
                    Some(b) => {
                        if what != "downloaded" {
                            b.finish_with_message(what);
                        } else {
                            b.set_message(what);
                        }
                    }
                    None if !tty => say(format!("layer {}: {what}", short(layer))),
                    None => {}
                }
            }
            PullLine::Done { done } => {
                say(format!("pulled {} ({})", done.reference, done.digest));
                print_warnings(&done);
                return Ok(ExitCode::SUCCESS);
            }
            PullLine::Failed { error } => {
                eprintln!("skiff-agent: {}", error.message);
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    eprintln!("skiff-agent: the agent closed the pull without a result");
    Ok(ExitCode::FAILURE)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn the_serve_flags_never_print_the_join_token() {
        let token = "skiff-join-0123456789abcdef";
        let cli =
            super::Cli::try_parse_from(["skiff-agent", "serve", "--join-token", token]).unwrap();
        let printed = format!("{cli:?}");
        assert!(!printed.contains(token), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
    }
}
