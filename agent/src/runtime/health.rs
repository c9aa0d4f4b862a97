//! Health checks: exec, TCP and HTTP probes run every interval against a
//! running container, with Docker's rules: `starting` until the first
//! success, `healthy` after a success, `unhealthy` after `retries`
//! failures in a row; failures within the start period do not count.
//!
//! Probes run in the container's own view: `exec` joins it like
//! `skiff-agent exec`, and TCP and HTTP probes connect to
//! `127.0.0.1:PORT` from a socket opened inside the container's network
//! namespace (`net::netns`).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use skiff_proto::HealthSpec;

/// `starting`, `healthy` or `unhealthy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthStatus {
    Starting,
    Healthy,
    Unhealthy,
}

/// The health of a container, as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    /// Failed probes in a row (that counted).
    pub failing_streak: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<ProbeResult>,
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// RFC 3339 time of the probe.
    pub time: String,
    pub healthy: bool,
    /// What the probe printed or why it failed (at most 4 KiB).
    pub output: String,
}

/// Applies probe results to the health state.
#[derive(Debug, Clone)]
pub struct Tracker {
    retries: u32,
    start_period: Duration,
    started: Instant,
    pub health: Health,
}

impl Tracker {
    pub fn new(spec: &HealthSpec, started: Instant) -> Self {
        Self {
            retries: spec.retries.max(1),
            start_period: spec.start_period.std(),
            started,
            health: Health {
                status: HealthStatus::Starting,
                failing_streak: 0,
                last: None,
            },
        }
    }

    /// Records one probe made at `at`.
    pub fn record(&mut self, healthy: bool, output: String, at: Instant) {
        self.health.last = Some(ProbeResult {
            time: super::logfile::rfc3339(std::time::SystemTime::now()),
            healthy,
            output,
        });
        if healthy {
            self.health.status = HealthStatus::Healthy;
            self.health.failing_streak = 0;
            return;
        }
        if self.health.status == HealthStatus::Starting
            && at.duration_since(self.started) < self.start_period
        {
            return;
        }
        self.health.failing_streak += 1;
        if self.health.failing_streak >= self.retries {
            self.health.status = HealthStatus::Unhealthy;
        }
    }
}

/// Most output kept from a probe.
pub const MAX_OUTPUT: usize = 4096;

/// Cuts `s` to [`MAX_OUTPUT`] bytes at a character boundary.
pub fn truncate(mut s: String) -> String {
    if s.len() > MAX_OUTPUT {
        let mut end = MAX_OUTPUT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Opens a TCP connection to `127.0.0.1:port` inside the network namespace
/// of process `pid`.
pub async fn connect_in(
    pid: i32,
    port: u16,
    timeout: Duration,
) -> std::io::Result<std::net::TcpStream> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    crate::net::netns::run_in(ns.into(), move || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        std::net::TcpStream::connect_timeout(&addr, timeout)
    })
    .await
}

/// `GET path` over an open connection; healthy on 2xx and 3xx (as
/// Kubernetes). Returns the status line.
pub async fn http_get(
    stream: std::net::TcpStream,
    port: u16,
    path: &str,
) -> Result<String, String> {
    use http_body_util::{BodyExt, Empty};
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    let stream = tokio::net::TcpStream::from_std(stream).map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri(path)
        .header("host", format!("127.0.0.1:{port}"))
        .header(
            "user-agent",
            concat!("skiff-agent/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    conn.abort();
    let line = format!("HTTP {status}");
    if status.is_success() || status.is_redirection() {
        Ok(line)
    } else {
        Err(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(retries: u32, start_period_s: u64) -> HealthSpec {
        HealthSpec {
            http: None,
            tcp: Some(skiff_proto::TcpProbe { port: 80 }),
            exec: None,
            interval: skiff_proto::Duration::from_secs(1),
            timeout: skiff_proto::Duration::from_secs(1),
            retries,
            start_period: skiff_proto::Duration::from_secs(start_period_s),
        }
    }

    #[test]
    fn starting_then_healthy_then_unhealthy_after_retries() {
        let t0 = Instant::now();
        let mut t = Tracker::new(&spec(3, 0), t0);
        assert_eq!(t.health.status, HealthStatus::Starting);
        t.record(true, "ok".into(), t0);
        assert_eq!(t.health.status, HealthStatus::Healthy);
        t.record(false, "refused".into(), t0);
        t.record(false, "refused".into(), t0);
        assert_eq!(t.health.status, HealthStatus::Healthy);
        assert_eq!(t.health.failing_streak, 2);
        t.record(false, "refused".into(), t0);
        assert_eq!(t.health.status, HealthStatus::Unhealthy);
        assert_eq!(t.health.last.as_ref().unwrap().output, "refused");
        t.record(true, "ok".into(), t0);
        assert_eq!(t.health.status, HealthStatus::Healthy);
        assert_eq!(t.health.failing_streak, 0);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let t0 = Instant::now();
        let mut t = Tracker::new(&spec(1, 30), t0);
        t.record(false, "not yet".into(), t0 + Duration::from_secs(5));
        assert_eq!(t.health.status, HealthStatus::Starting);
        assert_eq!(t.health.failing_streak, 0);
        t.record(false, "late".into(), t0 + Duration::from_secs(31));
        assert_eq!(t.health.status, HealthStatus::Unhealthy);
    }

    #[test]
    fn output_is_cut_at_a_character_boundary() {
        let s = "é".repeat(MAX_OUTPUT);
        let t = truncate(s);
        assert!(t.len() <= MAX_OUTPUT && t.chars().all(|c| c == 'é'));
    }
}
