//! `skiff dev`: a whole hybrid fleet on this machine, in one command, with
//! no internet and no registry of its own to set up:
//!
//! * a gateway with embedded state, in this process ([`skiff_gateway`]);
//! * site `local`: one agent (this binary, run as `skiff-agent` through a
//!   link in `STATE/bin`) on the host, its capacity held to 1 CPU and 1 GiB
//!   so a demo is larger than it;
//! * site `burst` (`kind = "local"`): VMs as network namespaces on a bridge
//!   of their own, launched by the gateway's autoscaler when work does not
//!   fit, joining with single-use tokens like cloud VMs, scaled in when idle;
//! * a read-only registry ([`registry`]) on the VMs' bridge serving the demo
//!   image built into this binary ([`demo`]) and any `--image`, which every
//!   agent pulls from as real nodes do.
//!
//! It writes a `dev` context to the CLI's config file, prints where the API
//! and its token are, and runs until Ctrl-C or SIGTERM; then, and at the
//! next start after a `kill -9`, [`cleanup`] removes everything it made.

pub mod cleanup;
pub mod demo;
pub mod registry;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_proto::cluster::AllocationState;

use crate::args::DevArgs;
use crate::client::Client;
use crate::commands::CliError;
use crate::context::{ConfigFile, Context, Target, Token, Trust, config_path};
use cleanup::{NAMES, Running};

fn fail(what: impl std::fmt::Display) -> CliError {
    CliError::Dev(what.to_string())
}

/// A tool the dev fleet runs, or the one line that says how to get it.
fn need(tool: &str, package: &str) -> Result<(), CliError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|d| d.join(tool).is_file());
    if found {
        Ok(())
    } else {
        Err(fail(format!(
            "skiff dev needs `{tool}`: install it with `apt-get install {package}` (Debian, Ubuntu)"
        )))
    }
}

/// The `[reserve]` that leaves an agent on this host 1 CPU and 1 GiB.
fn reserve() -> String {
    let host = skiff_agent::link::host_capacity(Path::new("/"));
    let (cpu, mem) = (host.cpu_millis, host.memory_bytes);
    format!(
        "[reserve]\ncpu = \"{}m\"\nmemory = \"{}\"\n",
        cpu.saturating_sub(1000),
        mem.saturating_sub(1 << 30)
    )
}

/// A loopback-or-bridge port that was free a moment ago.
fn free_port(ip: Ipv4Addr) -> Result<u16, CliError> {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| fail(format!("no free port on {ip}: {e}")))
}

fn write_private(path: &Path, text: &str) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail(format!("{}: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(|e| fail(format!("{}: {e}", path.display())))
}

/// What a running dev fleet holds, to stop it.
struct Fleet {
    state: PathBuf,
    agent: Option<std::process::Child>,
    gateway: tokio::task::JoinHandle<anyhow::Result<()>>,
    registry: tokio::task::JoinHandle<()>,
}

impl Fleet {
    /// Stops everything and removes what it made; what could not be
    /// removed is returned.
    async fn stop(mut self) -> Vec<String> {
        if let Some(agent) = &mut self.agent {
            let pid = nix::unistd::Pid::from_raw(agent.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..50 {
                if agent.try_wait().ok().flatten().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = agent.kill();
            let _ = agent.wait();
        }
        self.gateway.abort();
        self.registry.abort();
        let _ = (&mut self.gateway).await;
        cleanup::clean(&self.state, &NAMES).await
    }
}

/// Runs the dev fleet until Ctrl-C or SIGTERM.
pub async fn run(args: &DevArgs) -> Result<ExitCode, CliError> {
    let started = Instant::now();
    if !nix::unistd::geteuid().is_root() {
        return Err(fail(
            "skiff dev needs root (it runs containers and network namespaces): run it with sudo",
        ));
    }
    need("ip", "iproute2")?;
    need("nft", "nftables")?;
    let state =
        std::path::absolute(&args.state_dir).map_err(|e| fail(format!("--state-dir: {e}")))?;
    if let Some(pid) = cleanup::still_running(&state) {
        return Err(fail(format!(
            "another skiff dev (pid {pid}) runs with {}: stop it first (Ctrl-C there, or kill {pid})",
            state.display()
        )));
    }
    let had_state = state.exists();
    let left = cleanup::clean(&state, &NAMES).await;
    if had_state {
        println!(
            "cleaned up what an earlier skiff dev left in {}",
            state.display()
        );
    }
    if !left.is_empty() {
        return Err(fail(format!(
            "an earlier skiff dev left what cannot be removed: {}",
            left.join(", ")
        )));
    }
    let fleet = start(args, &state, started).await;
    let mut fleet = match fleet {
        Ok(f) => f,
        Err(e) => {
            let _ = cleanup::clean(&state, &NAMES).await;
            return Err(e);
        }
    };
    // Until a signal, or until the gateway stops by itself.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| fail(format!("signal handler: {e}")))?;
    let ended = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
        r = &mut fleet.gateway => Some(r),
    };
    if let Some(r) = ended {
        let why = match r {
            Ok(Ok(())) => "the gateway stopped".to_string(),
            Ok(Err(e)) => format!("the gateway failed: {e:#}"),
            Err(e) => format!("the gateway failed: {e}"),
        };
        fleet.gateway = tokio::spawn(async { Ok(()) });
        let _ = fleet.stop().await;
        return Err(fail(why));
    }
    println!("stopping the dev fleet...");
    let left = fleet.stop().await;
    if left.is_empty() {
        println!("stopped; nothing is left behind");
        Ok(ExitCode::SUCCESS)
    } else {
        Err(fail(format!(
            "stopped, but could not remove: {}",
            left.join(", ")
        )))
    }
}

async fn start(args: &DevArgs, state: &Path, started: Instant) -> Result<Fleet, CliError> {
    for d in ["gateway", "agent", "vms", "registry", "bin"] {
        std::fs::create_dir_all(state.join(d))
            .map_err(|e| fail(format!("{}: {e}", state.join(d).display())))?;
    }
    let write_running = |agent_pid: Option<u32>| -> Result<(), CliError> {
        let r = Running {
            pid: std::process::id(),
            agent_pid,
        };
        std::fs::write(
            cleanup::running_file(state),
            serde_json::to_vec(&r).unwrap_or_default(),
        )
        .map_err(|e| fail(format!("{}: {e}", cleanup::running_file(state).display())))
    };
    write_running(None)?;
    // This binary is the dev fleet's agent too.
    let exe = std::env::current_exe().map_err(|e| fail(format!("this program's path: {e}")))?;
    let agent_bin = state.join("bin/skiff-agent");
    std::os::unix::fs::symlink(&exe, &agent_bin)
        .map_err(|e| fail(format!("{}: {e}", agent_bin.display())))?;

    // The VMs' bridge: the registry and the agent port listen on it.
    let host = cleanup::local_cloud(state, &NAMES)
        .ensure_bridge()
        .map_err(|e| fail(format!("the burst site's bridge {}: {e}", NAMES.vm_bridge)))?;

    // The registry, with the demo image and the operator's.
    let mut images = registry::Images::new(&state.join("registry")).map_err(fail)?;
    let demo_archive = state.join("demo.oci.tar");
    std::fs::write(&demo_archive, demo::ARCHIVE)
        .map_err(|e| fail(format!("{}: {e}", demo_archive.display())))?;
    images.add(&demo_archive, "skiff/demo").map_err(fail)?;
    let mut extra = Vec::new();
    for f in &args.image {
        let stem = f
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('.').next())
            .unwrap_or("image")
            .to_ascii_lowercase();
        extra.extend(images.add(f, &format!("dev/{stem}")).map_err(fail)?);
    }
    let reg_listener = tokio::net::TcpListener::bind((host, 0))
        .await
        .map_err(|e| fail(format!("the registry's port on {host}: {e}")))?;
    let reg_addr = reg_listener.local_addr().map_err(|e| fail(e.to_string()))?;
    let reg_app = registry::router(Arc::new(images));
    let registry = tokio::spawn(async move {
        let _ = axum::serve(reg_listener, reg_app).await;
    });

    // The gateway, in this process, logging to a file.
    let agent_port = free_port(host)?;
    let agent_url = format!("https://{host}:{agent_port}");
    let agent_common = format!(
        "[images]\ninsecure_registries = [\"{reg_addr}\"]\n[runtime]\nwarm_shims = 0\ncgroup_parent = \"{}\"\n{}",
        NAMES.cgroup,
        reserve()
    );
    let gateway_toml = format!(
        "advertise = [\"{host}\"]\n\
         node_subnets = \"{pool}\"\n\
         heartbeat_interval = \"1s\"\n\
         down_after = \"5s\"\n\
         [[sites]]\nname = \"local\"\nkind = \"static\"\ncost_rank = 0\n\
         [[sites]]\nname = \"burst\"\nkind = \"local\"\ncost_rank = 10\nmax_nodes = {max}\n\
         gateway_url = \"{agent_url}\"\njoin_timeout = \"60s\"\nscale_in_after = \"30s\"\n\
         agent_config = {agent_config}\n\
         [[sites.instance_types]]\nname = \"local.small\"\ncpu = \"1\"\nmemory = \"1Gi\"\nprice_per_hour = \"0.01\"\n\
         [sites.local]\nroot = \"{vms}\"\nagent_bin = \"{agent_bin}\"\nbridge = \"{bridge}\"\nsubnet = \"{subnet}\"\n",
        max = args.max_vms,
        pool = NAMES.node_subnets,
        agent_config = toml::Value::String(agent_common.clone()),
        vms = state.join("vms").display(),
        agent_bin = agent_bin.display(),
        bridge = NAMES.vm_bridge,
        subnet = NAMES.vm_subnet,
    );
    let gateway_config_path = state.join("gateway.toml");
    std::fs::write(&gateway_config_path, &gateway_toml).map_err(|e| fail(e.to_string()))?;
    let config = skiff_gateway::config::GatewayConfig::load(&skiff_gateway::config::Overrides {
        config: Some(gateway_config_path),
        state_dir: Some(state.join("gateway")),
        listen: Some(args.listen),
        agent_listen: Some(SocketAddr::from((host, agent_port))),
    })
    .map_err(|e| fail(format!("the dev gateway's config: {e}")))?;
    let log = std::fs::File::create(state.join("gateway.log")).map_err(|e| fail(e.to_string()))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log))
        .try_init();
    // The signals are this command's: it stops the gateway itself, after
    // its own clean-up.
    let mut gateway = tokio::spawn(skiff_gateway::daemon::run_until(
        config,
        std::future::pending(),
    ));

    let token_file = state.join("gateway/admin.token");
    let address = format!("http://{}", args.listen);
    let client = wait_for_gateway(&address, &token_file, &mut gateway).await?;

    // The local site's agent.
    let join = client
        .create_join_token("local", Duration::from_secs(600))
        .await
        .map_err(|e| fail(format!("a join token for the local agent: {e}")))?;
    let agent_toml = state.join("agent.toml");
    write_private(
        &agent_toml,
        &format!(
            "name = \"local\"\njoin_token = \"{}\"\n{agent_common}[network]\nbridge = \"{}\"\nnft_table = \"{}\"\n",
            join.token, NAMES.bridge, NAMES.nft_table
        ),
    )?;
    let log = std::fs::File::create(state.join("agent.log")).map_err(|e| fail(e.to_string()))?;
    let agent = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(&agent_bin)
            .arg("serve")
            .arg("--state-dir")
            .arg(state.join("agent"))
            .arg("--config")
            .arg(&agent_toml)
            .args(["--gateway", &agent_url, "--ca-hash", &join.ca_hash])
            .env("SKIFF_AGENT_SOCKET", state.join("agent.sock"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| fail(e.to_string()))?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| fail(format!("start the local agent: {e}")))?
    };
    write_running(Some(agent.id()))?;
    let mut fleet = Fleet {
        state: state.to_path_buf(),
        agent: Some(agent),
        gateway,
        registry,
    };
    if let Err(e) = wait_for_node(&client, "local", &mut fleet, state).await {
        let _ = fleet.stop().await;
        return Err(e);
    }

    if !args.no_context {
        let path = config_path();
        let mut file = ConfigFile::load(&path)?;
        file.contexts.insert(
            "dev".into(),
            Context {
                address: address.clone(),
                token_file: Some(token_file.clone()),
                ..Context::default()
            },
        );
        file.current_context = Some("dev".into());
        file.save(&path)?;
    }
    let demo_image = format!("{reg_addr}/{}", demo::IMAGE);
    println!(
        "skiff dev: a fleet on this machine is up ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  API          {address}   (token in {})",
        token_file.display()
    );
    println!(
        "  sites        local (this host, 1 CPU, 1 GiB), burst (up to {} VMs of 1 CPU)",
        args.max_vms
    );
    println!("  registry     {reg_addr}   serving {demo_image}");
    for e in &extra {
        println!("               and {reg_addr}/{e}");
    }
    if !args.no_context {
        println!(
            "  context      dev (current) in {}",
            config_path().display()
        );
    }
    println!("  logs         {}/gateway.log, agent.log", state.display());
    println!("try, in another terminal:");
    if !args.demo {
        println!(
            "  printf 'name: demo\\nimage: {demo_image}\\nreplicas: 6\\nresources: {{cpu: 400m}}\\n' | skiff run -f -"
        );
    }
    println!("  skiff ps; skiff status demo; skiff sites; skiff nodes; skiff logs -f demo");
    println!("  skiff exec demo -- /web --whoami; skiff explain demo; skiff events -f");
    println!("Ctrl-C stops the fleet and removes everything it made.");
    if args.demo
        && let Err(e) = run_demo(&client, &demo_image, started).await
    {
        let _ = fleet.stop().await;
        return Err(e);
    }
    Ok(fleet)
}

/// Waits until the gateway answers (or fails to start).
async fn wait_for_gateway(
    address: &str,
    token_file: &Path,
    gateway: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
) -> Result<Client, CliError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if gateway.is_finished() {
            return Err(match gateway.await {
                Ok(Err(e)) => fail(format!("the dev gateway did not start: {e:#}")),
                _ => fail("the dev gateway stopped at start"),
            });
        }
        if let Ok(token) = std::fs::read_to_string(token_file) {
            let client = Client::new(&Target {
                context: None,
                address: address.to_string(),
                token: Some(Token(token.trim().to_string())),
                trust: Trust::System,
            })?;
            if client.version().await.is_ok() {
                return Ok(client);
            }
        }
        if Instant::now() > deadline {
            return Err(fail(format!(
                "the dev gateway did not answer on {address} in 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until node `name` is ready (or its agent exits).
async fn wait_for_node(
    client: &Client,
    name: &str,
    fleet: &mut Fleet,
    state: &Path,
) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(agent) = &mut fleet.agent
            && let Ok(Some(status)) = agent.try_wait()
        {
            let log = std::fs::read_to_string(state.join("agent.log")).unwrap_or_default();
            let last = log.lines().last().unwrap_or_default().to_string();
            return Err(fail(format!("the local agent stopped ({status}): {last}")));
        }
        if let Ok(nodes) = client.nodes().await
            && nodes
                .iter()
                .any(|n| n.id == name && n.status == skiff_proto::cluster::NodeStatus::Ready)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(fail(format!(
                "the local agent did not join in 30 s (see {}/agent.log)",
                state.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Submits the demo workload and reports how it spreads: placed on
/// `local`, VMs launched in `burst`, replicas running there.
async fn run_demo(client: &Client, image: &str, started: Instant) -> Result<(), CliError> {
    // Larger than the local node: 2 replicas of 400m fit in its 1 CPU.
    let spec = demo::spec(image, 6, "400m");
    client.create_workload(&spec).await?;
    println!("demo: submitted 6 replicas of 400m CPU; the local node holds 2");
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut said_local = false;
    let mut vms_said: Vec<String> = Vec::new();
    let mut first_burst: Option<Duration> = None;
    loop {
        let v = client.workload("demo").await?;
        let live: Vec<_> = v.allocations.iter().filter(|a| a.is_live()).collect();
        let running_in = |site: &str| {
            live.iter()
                .filter(|a| a.site.as_deref() == Some(site) && a.state == AllocationState::Running)
                .count()
        };
        let local = running_in("local");
        if local > 0 && !said_local {
            println!(
                "demo: {local} replica(s) running on local ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
            said_local = true;
        }
        let nodes = client.nodes().await?;
        for n in nodes.iter().filter(|n| n.site == "burst") {
            if !vms_said.contains(&n.id) {
                println!(
                    "demo: VM {} joined site burst ({:.1} s)",
                    n.id,
                    started.elapsed().as_secs_f64()
                );
                vms_said.push(n.id.clone());
            }
        }
        let burst = running_in("burst");
        if burst > 0 && first_burst.is_none() {
            first_burst = Some(started.elapsed());
        }
        if local + burst == v.spec.replicas as usize {
            println!(
                "demo: all {} replicas running: {local} on local, {burst} on burst ({} VM(s))",
                v.spec.replicas,
                vms_said.len()
            );
            if let Some(t) = first_burst {
                println!(
                    "demo: first burst replica running {:.1} s after the command started",
                    t.as_secs_f64()
                );
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            let waiting: Vec<String> = live
                .iter()
                .filter(|a| a.state != AllocationState::Running)
                .take(3)
                .map(|a| format!("{} {}: {}", a.id, a.state, a.message))
                .collect();
            return Err(fail(format!(
                "the demo did not converge in 240 s: {local} on local, {burst} on burst; {}",
                waiting.join("; ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
