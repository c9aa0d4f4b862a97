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
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
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
