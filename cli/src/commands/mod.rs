//! The commands: each takes its arguments and a [`Client`], prints, and
//! returns the exit code; every failure is one [`CliError`] whose text is
//! one line.

mod contexts;
mod fleet;
mod namespaces;
mod secrets;
mod streams;
mod tokens;
mod volumes;
mod workloads;

use std::process::ExitCode;

use crate::args::{Cli, Command};
use crate::client::{Client, ClientError};
use crate::context::{ConfigFile, ContextError, Overrides, config_path};

/// Why a command failed; the exit code follows from it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Context(#[from] ContextError),
    /// A bad argument or file (exit 2).
    #[error("{0}")]
    Usage(String),
    /// `run`/`restart` did not converge in time (exit 3).
    #[error("{0}")]
    Timeout(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Dev(String),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Timeout(_) => ExitCode::from(3),
            _ => ExitCode::FAILURE,
        }
    }

    /// The line to print: the error, and for a refused token what to do.
    pub fn line(&self) -> String {
        match self {
            CliError::Client(ClientError::Api {
                status: 401,
                message,
                ..
            }) => format!(
                "{message} (the gateway refused the token: set SKIFF_TOKEN, --token or a context's token_file)"
            ),
            other => other.to_string(),
        }
    }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
    let what = what.into();
    move |source| CliError::Io { what, source }
}

/// The client the flags, environment and contexts name.
fn client(cli: &Cli) -> Result<Client, CliError> {
    let file = ConfigFile::load(&config_path())?;
    let target = file.target(&Overrides {
        context: cli.context.clone(),
        address: cli.addr.clone(),
        token: cli.token.clone(),
    })?;
    Ok(Client::new(&target)?)
}

/// Runs the command.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    use Command as C;
    match &cli.command {
        C::Validate { files } => return Ok(crate::spec::validate(files)),
        C::Schema => return Ok(crate::spec::schema()),
        C::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "skiff", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        C::Context(c) => return contexts::run(c),
        C::Dev(args) => return crate::dev::run(args).await,
        _ => {}
    }
    let ns = if cli.all_namespaces {
        Some("*")
    } else {
        cli.namespace.as_deref()
    };
    let client = client(&cli)?.in_namespace(ns);
    match cli.command {
        C::Run(a) => workloads::run(&client, &a).await,
        C::Ps(o) => workloads::ps(&client, o).await,
        C::Status { name, output } => workloads::status(&client, &name, output).await,
        C::Scale {
            name,
            replicas,
            output,
        } => workloads::scale(&client, &name, replicas, output).await,
        C::Restart { name, wait } => workloads::restart(&client, &name, &wait).await,
        C::Rm { names, volumes } => workloads::rm(&client, &names, volumes).await,
        C::Explain { name, output } => workloads::explain(&client, &name, output).await,
        C::Logs(a) => streams::logs(&client, &a).await,
        C::Exec(a) => streams::exec(&client, &a).await,
        C::Events { follow, output } => streams::events(&client, follow, output).await,
        C::Nodes(o) => fleet::nodes(&client, o).await,
        C::Drain { node, system } => {
            let action = if system { "drain?system=true" } else { "drain" };
            fleet::node_action(&client, &node, action).await
        }
        C::Cordon { node } => fleet::node_action(&client, &node, "cordon").await,
        C::Uncordon { node } => fleet::node_action(&client, &node, "uncordon").await,
        C::Sites(o) => fleet::sites(&client, o).await,
        C::Version(o) => fleet::version(&client, o).await,
        C::Token(t) => tokens::run(&client, &t).await,
        C::Volume(v) => volumes::run(&client, &v).await,
        C::Secret(c) => secrets::run(&client, &c).await,
        C::Namespace(c) => namespaces::run(&client, &c).await,
        C::Validate { .. } | C::Schema | C::Completion { .. } | C::Context(_) | C::Dev(_) => {
            unreachable!("handled above")
        }
    }
}
