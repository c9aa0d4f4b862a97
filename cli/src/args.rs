//! The command line, as clap parses it (and as `docs/cli.md`, generated
//! from these definitions, documents it).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

/// Operate a Skiff fleet: workloads, nodes and sites through a gateway, or
/// a whole fleet on this machine with `skiff dev`.
///
/// The gateway and its token come from --addr/--token, SKIFF_ADDR and
/// SKIFF_TOKEN, else the current context of ~/.config/skiff/config.toml
/// (`skiff context`; `skiff dev` writes one). Exit codes: 0 done, 1 failed
/// (the error in one line), 2 bad usage or a bad file, 3 `run`/`restart`
/// did not converge within --timeout; `exec` exits with the command's.
#[derive(Debug, Parser)]
#[command(name = "skiff", version, about, long_about, propagate_version = true)]
pub struct Cli {
    /// The gateway's address, e.g. http://127.0.0.1:7070 or https://gw:7070;
    /// several gateways of one fleet comma-separated (the next is tried
    /// when one cannot be reached).
    #[arg(long, global = true, env = "SKIFF_ADDR", value_name = "URL")]
    pub addr: Option<String>,
    /// The API token (else the context's).
    #[arg(long, global = true, env = "SKIFF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Use this context of the config file instead of the current one.
    #[arg(long, global = true, env = "SKIFF_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace of workloads, secrets, volumes and events [default:
    /// `default`, or for a token bound to namespaces, its first].
    #[arg(
        short,
        long,
        global = true,
        env = "SKIFF_NAMESPACE",
        value_name = "NAME"
    )]
    pub namespace: Option<String>,
    /// On lists (ps, secret ls, volume ls, events): every namespace the
    /// token may see, with a NAMESPACE column.
    #[arg(short = 'A', long, global = true, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole fleet on this machine: a gateway, a local agent (site
    /// `local`) and a burst site of network-namespace VMs. Needs root.
    Dev(DevArgs),
    /// Create a workload from a spec file, or update it if it exists, and
    /// wait until its replicas run (unless --detach).
    ///
    /// While waiting it shows each replica: pending (with the reason the
    /// placement engine gives), placed, pulling, running. Exits 0 once
    /// every replica of the current version runs, 3 if that takes longer
    /// than --timeout, 1 on an error.
    Run(RunArgs),
    /// List workloads: desired, running and pending replicas, sites.
    Ps(OutputArgs),
    /// Show one workload's allocations: node, site, state, restarts, age,
    /// address and ports.
    Status {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show the logs of a workload's replicas, interleaved, each line
    /// prefixed with its allocation when there are several.
    Logs(LogsArgs),
    /// Run a command in one of a workload's running containers (not
    /// interactive); exits with the command's exit code.
    Exec(ExecArgs),
    /// Set the number of replicas.
    Scale {
        name: String,
        replicas: u32,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Replace every replica, one at a time, and wait until they run.
    Restart {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete workloads (their replicas are stopped). Their local volumes
    /// are kept, for a workload of the same name, unless --volumes.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        /// Also remove their local volumes and the data in them.
        #[arg(long)]
        volumes: bool,
    },
    /// Explain why a workload's pending replicas wait: the filters that
    /// excluded nodes, each site's reason for launching nothing, the VM
    /// they wait for.
    Explain {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List nodes: site, status, capacity and use, labels, age.
    Nodes(OutputArgs),
    /// Take a node out of service: no new work, its replicas replaced
    /// elsewhere.
    Drain {
        node: String,
        /// Also stop its system workloads' copies (they stay by default).
        #[arg(long)]
        system: bool,
    },
    /// Stop placing new work on a node (what runs there stays).
    Cordon { node: String },
    /// Place work on a node again.
    Uncordon { node: String },
    /// Show each site's capacity and use, and the VMs planned for it.
    Sites(OutputArgs),
    /// Show recent events; -f keeps following new ones.
    Events {
        /// Keep following new events.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Join tokens (for nodes) and API tokens (for people and tools).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Local volumes: the data a service's replicas keep on their nodes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Secrets: encrypted at rest in the gateway, given only to the
    /// containers whose spec names them (`secrets:`), never shown again.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Namespaces: tenants' spaces, each with a quota, a policy (where
    /// and what it may run, who may reach it) and its use. Fleet admins
    /// make and change them.
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Named gateways in the config file.
    #[command(subcommand)]
    Context(ContextCommand),
    /// Check workload spec files offline, without a gateway.
    ///
    /// Exits 0 when every file is valid. Otherwise prints one line per
    /// problem, `FILE: PATH: REASON` (e.g. `web.yaml: spec.ports[1].container:
    /// 70000 is not a port`), and exits 1. Use `-` to read standard input.
    Validate {
        /// Spec files (YAML or JSON).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Print the JSON Schema of a workload spec (for editors and CI checks).
    Schema,
    /// Print this skiff's version and the gateway's (and its CA hash).
    Version(OutputArgs),
    /// Print a shell completion script: `skiff completion bash >
    /// /etc/bash_completion.d/skiff`.
    Completion { shell: clap_complete::Shell },
}

/// `-o`.
#[derive(Debug, Clone, Copy, Args)]
pub struct OutputArgs {
    /// Output format: table, or the gateway's objects as json or yaml.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// How long `run` and `restart` wait.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Do not wait for the replicas.
    #[arg(short, long)]
    pub detach: bool,
    /// Give up waiting after this long (exit 3): 90s, 5m.
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub timeout: skiff_proto::Duration,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The spec file (YAML or JSON; `-` for standard input).
    #[arg(short, long, value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub name: String,
    /// Keep following new lines (also across the containers' restarts;
    /// without --alloc, replicas placed later join in, as in `docker
    /// compose logs -f`).
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines of each replica.
    #[arg(long, value_name = "N")]
    pub tail: Option<u32>,
    /// Only lines since a time: a duration ago (10m, 1h) or an RFC 3339
    /// time (2026-12-01T10:00:00Z).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only this allocation's.
    #[arg(long, value_name = "ID")]
    pub alloc: Option<String>,
    /// Print each line's time.
    #[arg(short, long)]
    pub timestamps: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub name: String,
    /// The allocation to run in [default: the first running one].
    #[arg(long, value_name = "ID")]
    pub alloc: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// User (name or uid[:gid]) [default: the container's].
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory [default: the container's].
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create a secret from files and literals.
    Create(SecretArgs),
    /// Replace a secret's data (a rotation): running containers see the
    /// new files; variables change when a container is replaced.
    Update(SecretArgs),
    /// List secrets: keys, version, age (never values).
    Ls(OutputArgs),
    /// Delete secrets no workload uses.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("data").required(true).multiple(true).args(["from_file", "from_literal"])))]
pub struct SecretArgs {
    pub name: String,
    /// A key from a file: `PATH` (the key is the file's name) or
    /// `KEY=PATH`. Repeatable.
    #[arg(long, value_name = "[KEY=]PATH")]
    pub from_file: Vec<String>,
    /// A key from the command line: `KEY=VALUE` (it shows in the shell's
    /// history and in ps; prefer --from-file). Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub from_literal: Vec<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// Make a namespace. Without flags: no quota, every site and
    /// registry, nothing from the host (no host network, host volumes,
    /// privileged containers or added capabilities).
    Create(NamespaceArgs),
    /// Change what the flags give of a namespace's quota and policy
    /// (`default`'s too); the rest stays.
    Set(NamespaceArgs),
    /// List namespaces: quota and use.
    Ls(OutputArgs),
    /// Show one namespace: quota, use, policy.
    Show {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete empty namespaces (no workloads, secrets or volumes left);
    /// tokens bound only to one are revoked.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct NamespaceArgs {
    pub name: String,
    /// Quota: most CPU its workloads reserve together (`10`, `2500m`).
    #[arg(long, value_name = "CPU")]
    pub cpu: Option<skiff_proto::Cpu>,
    /// Quota: most memory (`64Gi`).
    #[arg(long, value_name = "BYTES")]
    pub memory: Option<skiff_proto::ByteSize>,
    /// Quota: most disk, scratch and local volumes (`500Gi`).
    #[arg(long, value_name = "BYTES")]
    pub disk: Option<skiff_proto::ByteSize>,
    /// Quota: most replicas.
    #[arg(long, value_name = "N")]
    pub allocations: Option<u32>,
    /// Quota: most its bursts may spend on cloud VMs per hour (`2.50`).
    #[arg(long, value_name = "PRICE")]
    pub cloud_spend: Option<String>,
    /// Policy: the only sites it may run in (repeatable, or comma-separated).
    #[arg(long = "site", value_delimiter = ',', value_name = "SITE")]
    pub sites: Vec<String>,
    /// Policy: a label its nodes must have, KEY=VALUE (repeatable).
    #[arg(long = "node-label", value_name = "KEY=VALUE")]
    pub node_labels: Vec<String>,
    /// Policy: an image prefix it may run (repeatable).
    #[arg(long = "registry", value_name = "PREFIX")]
    pub registries: Vec<String>,
    /// Policy: allow `network: host`.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub allow_host_network: Option<bool>,
    /// Policy: allow host volumes.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub allow_host_volumes: Option<bool>,
    /// Policy: require `security.user_namespace: true`.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub require_user_namespace: Option<bool>,
    /// Policy: allow `security.privileged`.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub allow_privileged: Option<bool>,
    /// Policy: a capability `security.cap_add` may name (repeatable; ALL: any).
    #[arg(long = "allow-cap", value_name = "CAP")]
    pub allow_capabilities: Vec<String>,
    /// Policy: the highest priority its workloads may have.
    #[arg(long, value_name = "N")]
    pub max_priority: Option<u32>,
    /// Policy: another namespace whose containers may connect to this
    /// one's (repeatable).
    #[arg(long = "allow-from", value_name = "NAMESPACE")]
    pub allow_from: Vec<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// List local volumes: workload, replica slot, the node that holds
    /// the data, state, age.
    Ls(OutputArgs),
    /// Remove local volumes and their data, by id (WORKLOAD.VOLUME.N);
    /// refused while a placed replica mounts one.
    Rm {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a join token for a site (--site) and print the `skiff-agent
    /// serve` command that joins a node with it, or an API token with a
    /// role (--role).
    Create(TokenCreateArgs),
    /// List join tokens and API tokens (never their secrets).
    Ls(OutputArgs),
    /// Revoke tokens by id (or a prefix of 4 or more of its digits).
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["site", "role"])))]
pub struct TokenCreateArgs {
    /// A join token for this site.
    #[arg(long)]
    pub site: Option<String>,
    /// How long the join token is valid (at most 7 days).
    #[arg(long, default_value = "1h", requires = "site", value_name = "DURATION")]
    pub ttl: skiff_proto::Duration,
    /// An API token with this role.
    #[arg(long, value_parser = ["read-only", "operator", "admin"])]
    pub role: Option<String>,
    /// The API token's name.
    #[arg(long, requires = "role", default_value = "cli")]
    pub name: String,
    /// Bind the API token to these namespaces (comma-separated): it sees
    /// nothing else. Without it, a fleet token (only a fleet admin makes
    /// one).
    #[arg(long, requires = "role", value_delimiter = ',', value_name = "NS,...")]
    pub namespaces: Vec<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// List contexts; the current one is marked `*`.
    Ls,
    /// Make a context the current one.
    Use { name: String },
    /// Add or change a context.
    Set {
        name: String,
        /// The gateway's address (several of one fleet comma-separated).
        #[arg(long)]
        address: String,
        /// A file holding the API token.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// The gateway's CA certificate (PEM), for https://.
        #[arg(long, conflicts_with = "ca_hash")]
        ca_file: Option<PathBuf>,
        /// Or the SHA-256 of the gateway's CA (sha256:HEX), pinned.
        #[arg(long)]
        ca_hash: Option<String>,
    },
    /// Remove a context.
    Rm { name: String },
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Also run a sample workload larger than the local site, so it bursts.
    #[arg(long)]
    pub demo: bool,
    /// Also serve this image (an oci-archive, a docker-archive as `docker
    /// save` writes, or an OCI layout) to the fleet (repeatable).
    #[arg(long, value_name = "FILE")]
    pub image: Vec<PathBuf>,
    /// Where the dev fleet keeps its state (wiped at start).
    #[arg(long, default_value = "/var/lib/skiff-dev", value_name = "DIR")]
    pub state_dir: PathBuf,
    /// The gateway's REST address.
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Most VMs the burst site launches.
    #[arg(long, default_value_t = 3)]
    pub max_vms: u32,
    /// Do not write the `dev` context to the config file.
    #[arg(long)]
    pub no_context: bool,
}
