//! `skiff-gateway serve`: the REST API, the agent port, the reconciler.

use std::sync::Arc;

use anyhow::Context;
use skiff_proto::wire::v1;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use std::collections::BTreeMap;

use skiff_cloud::CloudProvider;
use skiff_cloud::local::{LocalCloud, LocalConfig};

use crate::api::{self, AppState};
use crate::autoscale::Autoscaler;
use crate::config::{ApiTls, GatewayConfig};
use crate::control::Control;
use crate::grpc::AgentPort;
use crate::pki::Pki;
use crate::store::RedbStore;

/// Runs the gateway until SIGTERM or Ctrl-C.
pub async fn run(config: GatewayConfig) -> anyhow::Result<()> {
    run_until(config, shutdown()).await
}

/// Runs the gateway until `stop` resolves (a process that handles the
/// signals itself, such as `skiff dev`, passes its own).
pub async fn run_until(
    config: GatewayConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    raise_nofile();
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("state_dir {}", config.state_dir.display()))?;
    let pki = Arc::new(
        Pki::open(&config.state_dir, &config.advertise)
            .with_context(|| format!("PKI in {}", config.state_dir.display()))?,
    );
    let store = open_store(&config)?;
    // Cloud providers; a local site's bridge comes first, as the agent
    // port may listen on it.
    let mut providers: BTreeMap<String, Arc<dyn CloudProvider>> = BTreeMap::new();
    for site in &config.sites {
        let types: Vec<skiff_cloud::InstanceType> = site
            .instance_types
            .iter()
            .map(|t| skiff_cloud::InstanceType {
                name: t.name.clone(),
                cpu_millis: t.cpu.map_or(0, |c| c.millis()),
                memory_bytes: t.memory.map_or(0, |m| m.bytes()),
                price_micros_per_hour: crate::config::parse_price(&t.price_per_hour).unwrap_or(0),
                arch: t.arch.clone(),
            })
            .collect();
        if let Some(l) = &site.local {
            let cloud = LocalCloud::new(LocalConfig {
                root: l.root.clone(),
                agent_bin: l.agent_bin.clone(),
                bridge: l.bridge.clone(),
                subnet: l.subnet,
                types,
            });
            cloud
                .ensure_bridge()
                .with_context(|| format!("site {}: local bridge {}", site.name, l.bridge))?;
            providers.insert(site.name.clone(), Arc::new(cloud));
        } else if let Some(a) = &site.aws {
            #[cfg(feature = "aws")]
            {
                let cloud = skiff_cloud::aws::AwsCloud::new(&site.name, a.clone(), types).await;
                providers.insert(site.name.clone(), Arc::new(cloud));
            }
            #[cfg(not(feature = "aws"))]
            {
                let _ = (a, types);
                anyhow::bail!(
                    "site {}: this build has no AWS provider (it was built without the `aws` feature)",
                    site.name
                );
            }
        } else if let Some(a) = &site.azure {
            let credential = skiff_cloud::azure::Credential::from_env(a);
            tracing::info!(site = %site.name, ?credential, "azure credentials");
            let cloud =
                skiff_cloud::azure::AzureCloud::new(&site.name, a.clone(), credential, types)
                    .with_context(|| format!("site {}: azure client", site.name))?;
            providers.insert(site.name.clone(), Arc::new(cloud));
        } else if site.kind.can_launch() && !site.instance_types.is_empty() {
            tracing::warn!(
                site = %site.name,
                kind = ?site.kind,
                "no provider settings for this cloud site: its launch plan is shown, but no VM is launched"
            );
        }
    }
    // Every listed type is one its cloud offers, with its shape.
    let mut config = config;
    crate::instance_types::resolve(&mut config, &providers).await?;
    let api_listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen {}", config.listen))?;
    let agent_listener = tokio::net::TcpListener::bind(config.agent_listen)
        .await
        .with_context(|| format!("agent_listen {}", config.agent_listen))?;
    let control = Control::open(config.clone(), Arc::clone(&store.store))?;
    control.spawn_loops();
    control.wake();
    #[cfg(feature = "etcd")]
    let cluster = match &store.etcd {
        Some(etcd) => Some(crate::cluster::Cluster::start(
            Arc::clone(&control),
            Arc::clone(etcd),
            Arc::clone(&pki),
        )?),
        None => None,
    };
    #[cfg(feature = "etcd")]
    let peers: Option<Arc<dyn crate::peers::Peers>> = cluster
        .as_ref()
        .map(|c| Arc::clone(c) as Arc<dyn crate::peers::Peers>);
    #[cfg(not(feature = "etcd"))]
    let peers: Option<Arc<dyn crate::peers::Peers>> = None;
    if !providers.is_empty() {
        // Over etcd every gateway of the fleet tags alike: the id comes
        // from the CA they share.
        let cluster = if config.etcd.is_some() {
            let hash = pki.ca_hash();
            let hex = hash.trim_start_matches("sha256:");
            format!("skiff-{}", &hex[..16.min(hex.len())])
        } else {
            cluster_id(&config.state_dir)?
        };
        Arc::new(Autoscaler::new(
            Arc::clone(&control),
            Arc::clone(&pki),
            providers,
            cluster,
        ))
        .spawn();
    }
    tracing::info!(
        listen = %api_listener.local_addr()?,
        agent_listen = %agent_listener.local_addr()?,
        ca_hash = %pki.ca_hash(),
        admin_token_file = %crate::pki::admin_token_path(&config.state_dir).display(),
        "gateway started"
    );

    let app = api::router(AppState {
        control: Arc::clone(&control),
        pki: Arc::clone(&pki),
        peers: peers.clone(),
        started_ms: crate::control::now_ms(),
    });
    #[cfg(feature = "etcd")]
    let app = match &cluster {
        Some(cl) => app.merge(crate::cluster::internal_router(Arc::clone(cl))),
        None => app,
    };
    // Asked to stop: everything stops together.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    let api = match &config.api_tls {
        ApiTls::Plain => {
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move {
                axum::serve(api_listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            })
        }
        tls => {
            let (cert, key) = match tls {
                ApiTls::Files { cert, key } => (
                    std::fs::read_to_string(cert)
                        .with_context(|| format!("api_cert_file {}", cert.display()))?,
                    std::fs::read_to_string(key)
                        .with_context(|| format!("api_key_file {}", key.display()))?,
                ),
                _ => (pki.server_cert_pem.clone(), pki.server_key_pem.clone()),
            };
            let listener =
                api::tls::TlsListener::new(api_listener, api::tls::server_config(&cert, &key)?)?;
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            })
        }
    };

    let port = AgentPort {
        control: Arc::clone(&control),
        pki: Arc::clone(&pki),
        peers,
    };
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            &pki.server_cert_pem,
            &pki.server_key_pem,
        ))
        .client_ca_root(Certificate::from_pem(pki.ca_pem()))
        // Joining agents have no certificate yet; Session checks for one.
        .client_auth_optional(true);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(agent_listener);
    let grpc = Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
        .add_service(v1::join_server::JoinServer::new(port.clone()))
        .add_service(v1::session_server::SessionServer::new(port))
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
    tokio::pin!(grpc);
    let mut api = api;
    tokio::select! {
        r = &mut grpc => r.context("agent port")?,
        r = &mut api => r.context("REST API")?.context("REST API")?,
        () = stopped(stop_rx) => {
            // Leave the fleet: the lead to another gateway at once (not
            // after the lease), every session ended (agents re-attach to
            // another gateway), what is in flight finished.
            tracing::info!("stopping");
            #[cfg(feature = "etcd")]
            if let Some(cl) = &cluster {
                cl.resign().await;
            }
            control.end_all_sessions();
            control.read(|_| ());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                let _ = (&mut grpc).await;
                let _ = (&mut api).await;
            })
            .await;
        }
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// Resolves once the gateway is asked to stop.
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The store the config asks for.
struct Opened {
    store: Arc<dyn crate::store::Store>,
    #[cfg(feature = "etcd")]
    etcd: Option<Arc<crate::store::etcd::EtcdStore>>,
}

fn open_store(config: &GatewayConfig) -> anyhow::Result<Opened> {
    match &config.etcd {
        None => Ok(Opened {
            store: Arc::new(RedbStore::open(&config.state_dir.join("state.redb"))?),
            #[cfg(feature = "etcd")]
            etcd: None,
        }),
        #[cfg(feature = "etcd")]
        Some(e) => {
            let etcd = Arc::new(crate::store::etcd::EtcdStore::connect(e)?);
            Ok(Opened {
                store: Arc::clone(&etcd) as Arc<dyn crate::store::Store>,
                etcd: Some(etcd),
            })
        }
        #[cfg(not(feature = "etcd"))]
        Some(_) => anyhow::bail!(
            "etcd: this build has no etcd store (it was built without the `etcd` feature)"
        ),
    }
}

/// This gateway's id (`STATE/cluster.id`, made on first use): the
/// `skiff:cluster` tag of every instance it launches.
fn cluster_id(state_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = state_dir.join("cluster.id");
    if let Ok(id) = std::fs::read_to_string(&path)
        && !id.trim().is_empty()
    {
        return Ok(id.trim().to_string());
    }
    let id = format!("skiff-{}", crate::pki::random_hex(8));
    std::fs::write(&path, format!("{id}\n")).with_context(|| path.display().to_string())?;
    Ok(id)
}

/// One connection per agent: allow as many open files as the hard limit.
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
