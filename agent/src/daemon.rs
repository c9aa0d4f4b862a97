//! `skiff-agent serve`: opens the stores and serves the local API until
//! SIGTERM or SIGINT.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::api::server::{AppState, serve};
use crate::config::AgentConfig;
use crate::images::ImageStore;

/// Keeps the agent's memory small over time: glibc keeps an arena per
/// thread that ever allocated, and keeps what was freed. Two arenas are
/// plenty for a daemon that mostly waits, and what bursts of container
/// starts freed is handed back to the kernel every few seconds.
fn tame_the_allocator() {
    // SAFETY: mallopt and malloc_trim only tune glibc's allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    tokio::spawn(async {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            tick.tick().await;
            // SAFETY: as above.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    });
}

/// Runs the agent daemon.
pub async fn run(mut config: AgentConfig) -> anyhow::Result<()> {
    tame_the_allocator();
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("state_dir {}", config.state_dir.display()))?;
    let images = ImageStore::open(&config.state_dir.join("images"), config.images.clone())
        .with_context(|| format!("image store in {}", config.state_dir.display()))?;
    let images = Arc::new(images);
    // Joined before anything listens: a refused join stops the agent (an
    // unreachable gateway is waited for). The gateway gives the node its
    // container subnet (unless the config sets one).
    let joined = crate::link::identity(&config).await?;
    if let Some((_, id)) = &joined
        && config.network.subnet.is_none()
    {
        config.network.subnet = id.subnet;
    }
    let runtime = crate::runtime::Runtime::open(
        &config.state_dir,
        Arc::clone(&images),
        &config.runtime,
        &config.network,
    )
    .await
    .with_context(|| format!("container runtime in {}", config.state_dir.display()))?;
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics_listen {addr}"))?;
        let rt = Arc::clone(&runtime);
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let rt = Arc::clone(&rt);
                async move {
                    rt.update_metrics();
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        crate::metrics::get().encode(),
                    )
                }
            }),
        );
        tracing::info!(%addr, "metrics listening");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics server ended");
            }
        });
    }
    let link = joined.map(|(urls, identity)| crate::link::Link {
        config: config.clone(),
        identity,
        urls,
        current: 0,
        runtime: Arc::clone(&runtime),
        images: Arc::clone(&images),
    });
    let state = AppState { images, runtime };
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        signals.cancel();
    });
    tracing::info!(node = %config.name, state_dir = %config.state_dir.display(), version = crate::VERSION, "agent starting");
    if let Some(link) = link {
        tokio::spawn(crate::link::run(link, shutdown.clone()));
    }
    serve(&config.socket, state, shutdown)
        .await
        .with_context(|| format!("socket {}", config.socket.display()))?;
    Ok(())
}
