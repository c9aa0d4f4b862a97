//! The `skiff-agent` command line: `serve`, and client commands that talk
//! to a running agent over its socket.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hyper::Method;

use crate::api::client::{Client, query_value};
use crate::api::{ImportRequest, PullLine, PullRequest};
use crate::config::{AgentConfig, DEFAULT_SOCKET, Overrides};
use crate::images::{DiskUsage, ImageRecord, ImageSummary, PruneReport, PullEvent};

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
    /// Disk used by images.
    Df {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
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
    /// Gateway URL, https://HOST:7071.
    #[arg(long, env = "SKIFF_AGENT_GATEWAY")]
    gateway: Option<String>,
    /// Single-use join token from the gateway.
    #[arg(long, env = "SKIFF_AGENT_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// The gateway CA's hash, sha256:HEX.
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
        Command::Pull { reference } => pull(&client, &reference).await,
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

/// Pulls with a progress bar per layer on a terminal, plain lines otherwise.
async fn pull(client: &Client, reference: &str) -> anyhow::Result<ExitCode> {
    let mut lines = client
        .stream(
            "/v1/images/pull",
            &PullRequest {
                reference: reference.into(),
            },
        )
        .await?;
    let tty = std::io::stdout().is_terminal();
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
                    println!("{reference}: resolved {digest}, {} layers", layers.len());
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
                    None if !tty => println!("layer {}: {what}", short(layer)),
                    None => {}
                }
            }
            PullLine::Done { done } => {
                println!("pulled {} ({})", done.reference, done.digest);
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
