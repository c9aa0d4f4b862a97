//! `skiff-gateway`: the gateway binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use skiff_gateway::config::{GatewayConfig, Overrides};

/// The Skiff gateway: federates agents from every site, keeps the fleet's
/// state, and places workloads.
#[derive(Debug, Parser)]
#[command(name = "skiff-gateway", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway: REST API on --listen, agent sessions (mutual TLS
    /// gRPC) on --agent-listen. On first start it creates its CA and an
    /// admin API token in STATE_DIR/admin.token.
    Serve {
        /// TOML config file (sites, timings, subnets; see docs/gateway.md).
        #[arg(long, env = "SKIFF_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
        /// Where the gateway keeps its state [default: /var/lib/skiff-gateway].
        #[arg(long, env = "SKIFF_GATEWAY_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// REST API address [default: 127.0.0.1:7070].
        #[arg(long, env = "SKIFF_GATEWAY_LISTEN")]
        listen: Option<SocketAddr>,
        /// Agent port [default: 0.0.0.0:7071].
        #[arg(long, env = "SKIFF_GATEWAY_AGENT_LISTEN")]
        agent_listen: Option<SocketAddr>,
    },
    /// Print the OpenAPI document of the REST API.
    Openapi,
    /// Export or import the fleet's records (NDJSON): to move a fleet
    /// between the embedded store and etcd, and for backups.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Write every record to --out (or stdout): from the store the config
    /// names (etcd, or STATE_DIR/state.redb of a stopped gateway), or with
    /// --api from a running gateway.
    Export {
        /// TOML config file naming the store.
        #[arg(long, env = "SKIFF_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
        /// The gateway's state directory [default: /var/lib/skiff-gateway].
        #[arg(long, env = "SKIFF_GATEWAY_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// A running gateway's REST API to take it from (`GET /v1/state`,
        /// admin).
        #[arg(long)]
        api: Option<String>,
        /// The admin token for --api [default: STATE_DIR/admin.token].
        #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Where to write it [default: stdout].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the records of an export into the store the config names,
    /// which must be empty (stop every gateway of the fleet first); every
    /// record is checked before any is written.
    Import {
        /// TOML config file naming the store.
        #[arg(long, env = "SKIFF_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
        /// The gateway's state directory [default: /var/lib/skiff-gateway].
        #[arg(long, env = "SKIFF_GATEWAY_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// The export to read.
        #[arg(long = "in")]
        input: PathBuf,
    },
}

fn state(command: StateCommand) -> ExitCode {
    let load = |config, state_dir| {
        GatewayConfig::load(&Overrides {
            config,
            state_dir,
            ..Overrides::default()
        })
    };
    let r = match command {
        StateCommand::Export {
            config,
            state_dir,
            api,
            token,
            out,
        } => load(config, state_dir)
            .map_err(anyhow::Error::from)
            .and_then(|c| {
                let token = match (&api, token) {
                    (Some(_), None) => {
                        std::fs::read_to_string(skiff_gateway::pki::admin_token_path(&c.state_dir))
                            .map(|t| t.trim().to_string())
                            .map_err(|e| anyhow::anyhow!("--token, or the admin token file: {e}"))?
                    }
                    (_, t) => t.unwrap_or_default(),
                };
                let text = skiff_gateway::state_cmd::export(
                    &c,
                    api.as_deref().map(|a| (a, token.as_str())),
                )?;
                match out {
                    Some(p) => std::fs::write(&p, &text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display())),
                    None => {
                        print!("{text}");
                        Ok(())
                    }
                }
            }),
        StateCommand::Import {
            config,
            state_dir,
            input,
        } => load(config, state_dir)
            .map_err(anyhow::Error::from)
            .and_then(|c| skiff_gateway::state_cmd::import(&c, &input))
            .map(|n| eprintln!("imported {n} records")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::State { command } => state(command),
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&skiff_gateway::api::openapi()).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Serve {
            config,
            state_dir,
            listen,
            agent_listen,
        } => {
            let o = Overrides {
                config,
                state_dir,
                listen,
                agent_listen,
            };
            let config = match GatewayConfig::load(&o) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("skiff-gateway: {e}");
                    return ExitCode::from(2);
                }
            };
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("skiff-gateway: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(skiff_gateway::daemon::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("skiff-gateway: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
