//! Fleet benchmark: `cargo bench -p skiff-gateway --bench fleet`.
//!
//! Twice, figures side by side at the end: one `skiff-gateway serve` on
//! its embedded store, then three over three etcd members on loopback
//! (`SKIFF_BENCH_GATEWAYS=1` or `3`: only that one). Each gateway its own
//! process, default timings (heartbeat every 1 s, down after 5 s, lease
//! TTL 2 s), and `SKIFF_BENCH_AGENTS` simulated agents
//! (default 10,000) in this process, each a real agent as far as the
//! gateway can tell: it joins with its own single-use token and CSR, then
//! keeps one mutual-TLS gRPC session, registers (1 CPU, 1 GiB), heartbeats
//! every second and reports its allocations running. A workload fills all
//! but 100 nodes with one replica each. Then 100 agents are killed at once.
//!
//! Prints: gateway CPU (cores, over 10 s of steady heartbeats) and peak
//! RSS; heartbeat delay (agent send to gateway handling, p50/p99 from the
//! gateway's histogram); for the killed nodes, from each one's last
//! heartbeat to `down` (p50/p99/max) and from `down` to its replacement
//! placed (p50/p99/max), from the gateway's event stream; over etcd also
//! the etcd write transactions per second in steady state and, the
//! leader killed, the time to the new leader's first placement (of a
//! workload submitted through a survivor right after). Asserts nothing.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use skiff_proto::wire::v1;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const BIN: &str = env!("CARGO_BIN_EXE_skiff-gateway");
const KILLED: usize = 100;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn call(
    http: &Http,
    api: &str,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> serde_json::Value {
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("{api}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let res = http.request(req).await.unwrap();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
}

/// CPU seconds (user + system) and peak RSS (KiB) of a process.
fn cpu_and_peak(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let peak = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0);
    (ticks / hz, peak)
}

/// A simulated agent: joins, then keeps its session until aborted.
async fn agent(
    i: usize,
    urls: Vec<String>,
    ca_pem: String,
    token: String,
    last_beat: Arc<AtomicI64>,
    joined: tokio::sync::mpsc::Sender<()>,
) {
    let name = format!("sim-{i:05}");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, &name);
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .domain_name("127.0.0.1");
    // Like a real agent given several gateways: the next one when one
    // does not answer.
    let turn = std::sync::atomic::AtomicUsize::new(i);
    let connect = |tls: ClientTlsConfig| {
        let url = urls[turn.fetch_add(1, Ordering::Relaxed) % urls.len()].clone();
        let urls = urls.clone();
        let turn = &turn;
        async move {
            let mut url = url;
            loop {
                let ep = Endpoint::from_shared(url.clone())
                    .unwrap()
                    .tls_config(tls.clone())
                    .unwrap()
                    .connect_timeout(Duration::from_secs(20));
                match ep.connect().await {
                    Ok(c) => return c,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        url = urls[turn.fetch_add(1, Ordering::Relaxed) % urls.len()].clone();
                    }
                }
            }
        }
    };
    // As a real agent does: a join the gateway could not take (busy, an
    // election) is tried again, on the next gateway; a refused token is
    // final.
    let resp = loop {
        let ch: Channel = connect(tls.clone()).await;
        match v1::join_client::JoinClient::new(ch)
            .join(v1::JoinRequest {
                token: token.clone(),
                csr_der: csr.clone(),
                requested_name: name.clone(),
                instance_id: String::new(),
            })
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(e) if e.code() == tonic::Code::Unavailable => {
                JOIN_RETRIES.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                eprintln!("{name}: join refused: {}", e.message());
                let _ = joined.send(()).await;
                return;
            }
        }
    };
    let cert = pem::encode(&pem::Pem::new("CERTIFICATE", resp.certificate_der));
    let tls = tls.identity(Identity::from_pem(cert, key.serialize_pem()));
    let mut joined = Some(joined);
    // Like a real agent: a broken session is opened again, on the next
    // gateway when there are several.
    // With the agent's back-off and spread.
    let mut first = true;
    let mut attempt = 0;
    loop {
        if !first {
            RECONNECTS.fetch_add(1, Ordering::Relaxed);
            let spread = rand::Rng::random_range(&mut rand::rng(), 0.0..=1.0);
            tokio::time::sleep(skiff_proto::wire::reconnect_backoff(attempt, spread)).await;
            attempt += 1;
        }
        first = false;
        let ch = connect(tls.clone()).await;
        let mut client = v1::session_client::SessionClient::new(ch);
        let started = Instant::now();
        if session(i, &mut client, &last_beat, &mut joined).await {
            return;
        }
        if started.elapsed() > Duration::from_secs(30) {
            attempt = 0;
        }
    }
}

static RECONNECTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static JOIN_RETRIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One session; `true` when it ended because the agent was stopped.
async fn session(
    i: usize,
    client: &mut v1::session_client::SessionClient<Channel>,
    last_beat: &AtomicI64,
    joined: &mut Option<tokio::sync::mpsc::Sender<()>>,
) -> bool {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let register = v1::AgentMessage {
        kind: Some(v1::agent_message::Kind::Register(v1::Register {
            agent_version: "bench".into(),
            platform: Some(v1::Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                ..Default::default()
            }),
            capacity: Some(v1::Resources {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                disk_bytes: 0,
            }),
            allocatable: Some(v1::Resources {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                disk_bytes: 0,
            }),
            ..Default::default()
        })),
    };
    if tx.send(register).await.is_err() {
        return false;
    }
    let Ok(inbound) = client
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    else {
        return false;
    };
    let mut inbound = inbound.into_inner();
    if let Some(j) = joined.take() {
        let _ = j.send(()).await;
    }
    // Spread the heartbeats over the second.
    tokio::time::sleep(Duration::from_millis((i as u64 * 7919) % 1000)).await;
    let mut beat = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = beat.tick() => {
                let sent = now_ms();
                let hb = v1::AgentMessage { kind: Some(v1::agent_message::Kind::Heartbeat(v1::Heartbeat { sent_unix_ms: sent, applied_generation: 0 })) };
                if tx.send(hb).await.is_err() { return false; }
                last_beat.store(sent, Ordering::Relaxed);
            }
            msg = inbound.message() => {
                let Ok(Some(msg)) = msg else { return false };
                if let Some(v1::gateway_message::Kind::DesiredState(d)) = msg.kind {
                    let report = v1::AllocationStatusReport {
                        allocations: d.allocations.iter().map(|a| v1::AllocationStatus {
                            allocation_id: a.id.clone(),
                            state: v1::AllocationState::Running as i32,
                            ..Default::default()
                        }).collect(),
                        volumes: Vec::new(),
                    };
                    let _ = tx.send(v1::AgentMessage { kind: Some(v1::agent_message::Kind::Allocations(report)) }).await;
                }
            }
        }
    }
}

/// The cumulative buckets of a histogram in OpenMetrics text.
fn buckets(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(&format!("{name}_bucket{{le=\"")) else {
            continue;
        };
        let Some((le, count)) = rest.split_once("\"} ") else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(0.0)
        };
        buckets.push((le, count.trim().parse().unwrap_or(0.0)));
    }
    buckets
}

/// p50 and p99 (upper bucket bounds) of what a histogram counted between
/// two scrapes.
fn quantiles_between(before: &str, after: &str, name: &str) -> (f64, f64) {
    let (a, b) = (buckets(before, name), buckets(after, name));
    let buckets: Vec<(f64, f64)> = b
        .iter()
        .zip(a.iter().chain(std::iter::repeat(&(0.0, 0.0))))
        .map(|((le, n), (_, m))| (*le, n - m))
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    let q = |p: f64| {
        buckets
            .iter()
            .find(|(_, c)| *c >= total * p)
            .map_or(f64::NAN, |b| b.0)
    };
    (q(0.5), q(0.99))
}

/// A `skiff-gateway serve` of the benchmark.
struct Gw {
    child: std::process::Child,
    pid: u32,
    api: String,
    agent_url: String,
    name: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts gateway `name` in `dir`; over `etcd` (client URLs) when given,
/// sharing `seed`'s CA and admin token.
fn start_gateway(
    dir: &std::path::Path,
    name: &str,
    etcd: Option<&[String]>,
    seed: Option<&std::path::Path>,
) -> Gw {
    let gdir = dir.join(name);
    let state = gdir.join("state");
    std::fs::create_dir_all(state.join("pki")).unwrap();
    if let Some(seed) = seed {
        for f in ["pki/ca.key", "pki/ca.crt", "admin.token"] {
            std::fs::copy(seed.join(f), state.join(f)).unwrap();
        }
    }
    let mut config = format!("name = \"{name}\"\n");
    if let Some(urls) = etcd {
        let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
        config.push_str(&format!("[etcd]\nendpoints = [{}]\n", urls.join(", ")));
    }
    std::fs::write(gdir.join("gateway.toml"), config).unwrap();
    let (api_port, agent_port) = (free_port(), free_port());
    let log = std::fs::File::create(gdir.join("gateway.log")).unwrap();
    let child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(gdir.join("gateway.toml"))
        .arg("--state-dir")
        .arg(&state)
        .args(["--listen", &format!("127.0.0.1:{api_port}")])
        .args(["--agent-listen", &format!("127.0.0.1:{agent_port}")])
        .env(
            "RUST_LOG",
            std::env::var("SKIFF_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", api_port)).is_err() {
        assert!(Instant::now() < deadline, "gateway {name} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Gw {
        pid: child.id(),
        child,
        api: format!("http://127.0.0.1:{api_port}"),
        agent_url: format!("https://127.0.0.1:{agent_port}"),
        name: name.to_string(),
    }
}

/// Three etcd members on loopback, killed on drop.
struct Etcd {
    members: Vec<std::process::Child>,
    urls: Vec<String>,
}

impl Etcd {
    fn start(dir: &std::path::Path) -> Etcd {
        let (client, peer): (Vec<u16>, Vec<u16>) =
            (0..3).map(|_| (free_port(), free_port())).unzip();
        let cluster: Vec<String> = peer
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://127.0.0.1:{p}"))
            .collect();
        let urls: Vec<String> = client
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let members = (0..3)
            .map(|i| {
                let log = std::fs::File::create(dir.join(format!("etcd{i}.log"))).unwrap();
                let peer_url = format!("http://127.0.0.1:{}", peer[i]);
                Command::new("etcd")
                    .args(["--name", &format!("m{i}")])
                    .arg("--data-dir")
                    .arg(dir.join(format!("etcd{i}")))
                    .args([
                        "--listen-client-urls",
                        &urls[i],
                        "--advertise-client-urls",
                        &urls[i],
                    ])
                    .args([
                        "--listen-peer-urls",
                        &peer_url,
                        "--initial-advertise-peer-urls",
                        &peer_url,
                    ])
                    .args(["--initial-cluster", &cluster.join(",")])
                    .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .stdin(Stdio::null())
                    .spawn()
                    .expect("etcd (Debian's etcd-server)")
            })
            .collect();
        Etcd { members, urls }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

/// The store revision an etcd member is at (one per write transaction).
async fn etcd_revision(http: &Http, url: &str) -> i64 {
    let req = hyper::Request::post(format!("{url}/v3/kv/range"))
        .body(Full::new(Bytes::from_static(b"{\"key\": \"AA==\"}")))
        .unwrap();
    let Ok(res) = http.request(req).await else {
        return 0;
    };
    let bytes = res
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    v["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// What one run measured.
#[derive(Default)]
struct Figures {
    cores: f64,
    heartbeat_p99_ms: f64,
    detect_p99_s: f64,
    replace_p99_s: f64,
    etcd_writes_per_s: Option<f64>,
    failover_s: Option<f64>,
}

async fn scrape(http: &Http, api: &str) -> String {
    let req = hyper::Request::get(format!("{api}/metrics"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    match http.request(req).await {
        Ok(res) => String::from_utf8_lossy(
            &res.into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default(),
        )
        .into_owned(),
        Err(_) => String::new(),
    }
}

/// One fleet of `agents` over `gws` (all of one fleet); `etcd` when they
/// share it.
async fn scenario(
    label: &str,
    gws: &mut [Gw],
    etcd: Option<&Etcd>,
    admin: &str,
    ca_pem: &str,
    agents: usize,
) -> Figures {
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let api = gws[0].api.clone();
    if gws.len() > 1 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = call(&http, &api, admin, "GET", "/v1/gateways", "").await;
            let all = v.as_array().map_or(0, Vec::len);
            let led = v
                .as_array()
                .is_some_and(|a| a.iter().any(|g| g["role"] == "leader"));
            if all == gws.len() && led {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no leader among the gateways: {v}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let t0 = Instant::now();
    let mut tokens = Vec::with_capacity(agents);
    for _ in 0..agents {
        let v = call(
            &http,
            &api,
            admin,
            "POST",
            "/v1/join-tokens",
            "{\"site\": \"default\", \"ttl_seconds\": 3600}",
        )
        .await;
        tokens.push(
            v["token"]
                .as_str()
                .unwrap_or_else(|| panic!("join token: {v}"))
                .to_string(),
        );
    }
    println!(
        "{label}: fleet of {agents} simulated agents over {} gateway(s):",
        gws.len()
    );
    println!(
        "  {agents} join tokens in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    let (joined_tx, mut joined_rx) = tokio::sync::mpsc::channel(agents);
    let mut handles = Vec::with_capacity(agents);
    let mut beats = Vec::with_capacity(agents);
    let urls: Vec<String> = gws.iter().map(|g| g.agent_url.clone()).collect();
    for (i, token) in tokens.into_iter().enumerate() {
        if i >= 500 {
            joined_rx.recv().await;
        }
        let last = Arc::new(AtomicI64::new(0));
        beats.push(Arc::clone(&last));
        handles.push(tokio::spawn(agent(
            i,
            urls.clone(),
            ca_pem.to_string(),
            token,
            last,
            joined_tx.clone(),
        )));
    }
    for _ in 0..agents.min(500) {
        joined_rx.recv().await;
    }
    println!(
        "  joined and registered in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // One replica per node on all but KILLED nodes (900m of each node's
    // 1 CPU: room is left for the failover probe).
    let t0 = Instant::now();
    let spec = format!(
        "{{\"name\": \"bench\", \"image\": \"busybox\", \"replicas\": {}, \"resources\": {{\"cpu\": \"900m\", \"memory\": \"512Mi\"}}}}",
        agents - KILLED
    );
    let v = call(&http, &api, admin, "POST", "/v1/workloads", &spec).await;
    assert!(v["spec"].is_object(), "the bench workload was refused: {v}");
    loop {
        let v = call(&http, &api, admin, "GET", "/v1/workloads/bench", "").await;
        if v["running"].as_u64() == Some((agents - KILLED) as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "  {} replicas placed and reported running in {:.1} s",
        agents - KILLED,
        t0.elapsed().as_secs_f64()
    );

    // Steady state over 10 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut m0 = Vec::new();
    for g in gws.iter() {
        m0.push(scrape(&http, &g.api).await);
    }
    let c0: Vec<f64> = gws.iter().map(|g| cpu_and_peak(g.pid).0).collect();
    let r0 = match etcd {
        Some(e) => etcd_revision(&http, &e.urls[0]).await,
        None => 0,
    };
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let secs = w0.elapsed().as_secs_f64();
    let r1 = match etcd {
        Some(e) => etcd_revision(&http, &e.urls[0]).await,
        None => 0,
    };
    let mut cores = 0.0;
    let mut p99 = 0.0f64;
    for (i, g) in gws.iter().enumerate() {
        let (c1, peak) = cpu_and_peak(g.pid);
        let c = (c1 - c0[i]) / secs;
        cores += c;
        let m1 = scrape(&http, &g.api).await;
        let (p50, q99) = quantiles_between(&m0[i], &m1, "skiff_gateway_heartbeat_delay_seconds");
        p99 = p99.max(q99);
        println!(
            "  {}: CPU {c:.2} cores, peak RSS {:.0} MiB, heartbeat delay p50 <= {:.1} ms p99 <= {:.1} ms",
            g.name,
            peak as f64 / 1024.0,
            p50 * 1000.0,
            q99 * 1000.0
        );
    }
    let etcd_writes_per_s = etcd.map(|_| (r1 - r0) as f64 / secs);
    if let Some(w) = etcd_writes_per_s {
        println!(
            "  etcd writes in steady state: {w:.1}/s ({} write transactions in {secs:.0} s)",
            r1 - r0
        );
    }

    // Kill 100 agents at once; follow the events.
    let events_req = hyper::Request::get(format!("{api}/v1/events"))
        .header("authorization", format!("Bearer {admin}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut events = http.request(events_req).await.unwrap().into_body();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let victims: Vec<usize> = (0..KILLED).map(|k| k * (agents / KILLED)).collect();
    let mut last_beat: HashMap<String, i64> = HashMap::new();
    for &v in &victims {
        handles[v].abort();
        last_beat.insert(format!("sim-{v:05}"), beats[v].load(Ordering::Relaxed));
    }
    let mut down: HashMap<String, i64> = HashMap::new();
    let mut lost_on: HashMap<String, String> = HashMap::new();
    let mut placed: Vec<(String, i64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = String::new();
    let mut all_down_at: Option<Instant> = None;
    loop {
        if down.len() == KILLED && all_down_at.is_none() {
            all_down_at = Some(Instant::now());
        }
        let settled = all_down_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2));
        if (settled && placed.len() >= lost_on.len()) || Instant::now() > deadline {
            break;
        }
        let frame = tokio::time::timeout(Duration::from_secs(1), events.frame()).await;
        let Ok(Some(Ok(frame))) = frame else { continue };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.push_str(&String::from_utf8_lossy(&data));
        while let Some(i) = buf.find("\n\n") {
            let block: String = buf.drain(..i + 2).collect();
            let Some(json) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let Ok(e) = serde_json::from_str::<serde_json::Value>(json) else {
                continue;
            };
            let (id, msg, t) = (
                e["id"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or(""),
                e["time_ms"].as_i64().unwrap_or(0),
            );
            if e["kind"] == "node" && msg.starts_with("down") && last_beat.contains_key(id) {
                down.insert(id.to_string(), t);
            } else if e["kind"] == "allocation" && msg.starts_with("lost") {
                lost_on.insert(id.to_string(), String::new());
            } else if e["kind"] == "allocation" && msg.starts_with("placed on") {
                placed.push((id.to_string(), t));
            }
        }
    }
    let mut detect: Vec<f64> = down
        .iter()
        .map(|(n, t)| (*t - last_beat[n]) as f64 / 1000.0)
        .collect();
    let first_down = down.values().copied().min().unwrap_or(0);
    let mut downs: Vec<i64> = down.values().copied().collect();
    downs.sort();
    let mut replace: Vec<f64> = placed
        .iter()
        .filter(|(_, t)| *t >= first_down)
        .map(|(_, t)| {
            let d = downs
                .iter()
                .rev()
                .find(|d| *d <= t)
                .copied()
                .unwrap_or(first_down);
            (*t - d) as f64 / 1000.0
        })
        .collect();
    println!(
        "  killed {KILLED} agents at once: marked down {}/{KILLED}; allocations lost {}; replacements placed {}",
        down.len(),
        lost_on.len(),
        replace.len()
    );
    let detect_p99 = percentile(&mut detect, 0.99);
    let replace_p99 = percentile(&mut replace, 0.99);
    println!(
        "  last heartbeat -> down      p50 {:5.2} s  p99 {detect_p99:5.2} s  max {:5.2} s   (target p99 <= 6 s)",
        percentile(&mut detect, 0.5),
        percentile(&mut detect, 1.0)
    );
    println!(
        "  down -> replacement placed  p50 {:5.3} s  p99 {replace_p99:5.3} s  max {:5.3} s   (target <= 1 s)",
        percentile(&mut replace, 0.5),
        percentile(&mut replace, 1.0)
    );

    // The leader killed: from the kill to the new leader's first
    // placement (of a workload submitted through a survivor right after).
    let mut failover_s = None;
    if gws.len() > 1 {
        let v = call(&http, &api, admin, "GET", "/v1/gateways", "").await;
        let leader = v
            .as_array()
            .and_then(|a| a.iter().find(|g| g["role"] == "leader"))
            .and_then(|g| g["name"].as_str())
            .unwrap_or_default()
            .to_string();
        let i = gws.iter().position(|g| g.name == leader).expect("a leader");
        let survivor = gws[(i + 1) % gws.len()].api.clone();
        let t0 = Instant::now();
        let _ = gws[i].child.kill();
        let _ = gws[i].child.wait();
        call(&http, &survivor, admin, "POST", "/v1/workloads", "{\"name\": \"failover\", \"image\": \"busybox\", \"resources\": {\"cpu\": \"10m\", \"memory\": \"8Mi\"}}").await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let a = call(
                &http,
                &survivor,
                admin,
                "GET",
                "/v1/allocations?workload=failover",
                "",
            )
            .await;
            if a.as_array()
                .is_some_and(|a| a.iter().any(|x| x["node"].is_string()))
            {
                failover_s = Some(t0.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "  leader {leader} killed: the new leader's first placement {:.2} s later   (target <= 5 s)",
            failover_s.unwrap_or(f64::NAN)
        );
    }
    println!(
        "  simulated sessions that broke and were opened again: {}",
        RECONNECTS.swap(0, Ordering::Relaxed)
    );
    for h in handles {
        h.abort();
    }
    Figures {
        cores,
        heartbeat_p99_ms: p99 * 1000.0,
        detect_p99_s: detect_p99,
        replace_p99_s: replace_p99,
        etcd_writes_per_s,
        failover_s,
    }
}

fn main() {
    raise_nofile();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let agents: usize = std::env::var("SKIFF_BENCH_AGENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    // `1`: one gateway on its embedded store only; `3`: three over etcd
    // only; default both, one after the other, figures side by side.
    let modes: Vec<usize> = match std::env::var("SKIFF_BENCH_GATEWAYS").ok().as_deref() {
        Some("1") => vec![1],
        Some("3") => vec![3],
        _ => vec![1, 3],
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut results = Vec::new();
    for n in modes {
        let dir = tempfile::tempdir().unwrap();
        let etcd = (n > 1).then(|| Etcd::start(dir.path()));
        if let Some(e) = &etcd {
            let deadline = Instant::now() + Duration::from_secs(30);
            rt.block_on(async {
                let http: Http = Client::builder(TokioExecutor::new()).build_http();
                while etcd_revision(&http, &e.urls[0]).await == 0 {
                    assert!(Instant::now() < deadline, "etcd did not start");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
        let urls = etcd.as_ref().map(|e| e.urls.clone());
        let mut gws = vec![start_gateway(dir.path(), "gw1", urls.as_deref(), None)];
        let seed = dir.path().join("gw1/state");
        for k in 2..=n {
            gws.push(start_gateway(
                dir.path(),
                &format!("gw{k}"),
                urls.as_deref(),
                Some(&seed),
            ));
        }
        let admin = std::fs::read_to_string(seed.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        let ca_pem = std::fs::read_to_string(seed.join("pki/ca.crt")).unwrap();
        let label = if n == 1 {
            "one gateway, embedded store".to_string()
        } else {
            format!("{n} gateways over etcd")
        };
        let f = rt.block_on(scenario(
            &label,
            &mut gws,
            etcd.as_ref(),
            &admin,
            &ca_pem,
            agents,
        ));
        results.push((label, f));
        for g in &mut gws {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(g.pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = g.child.wait();
        }
        // The gateways' logs, kept when asked for with SKIFF_BENCH_LOG.
        if std::env::var_os("SKIFF_BENCH_LOG").is_some() {
            let keep = std::env::temp_dir().join(format!("skiff-bench-logs/{n}"));
            std::fs::create_dir_all(&keep).unwrap();
            for g in &gws {
                let log = dir.path().join(&g.name).join("gateway.log");
                std::fs::copy(&log, keep.join(format!("{}.log", g.name)))
                    .unwrap_or_else(|e| panic!("keep {}: {e}", log.display()));
            }
            println!("  gateway logs in {}", keep.display());
        }
    }
    println!("\nsummary ({agents} nodes; same run)");
    println!(
        "  {:<32} {:>10} {:>14} {:>14} {:>16} {:>12} {:>12}",
        "",
        "CPU cores",
        "heartbeat p99",
        "down p99 (s)",
        "replace p99 (s)",
        "etcd w/s",
        "failover (s)"
    );
    for (label, f) in &results {
        let opt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}"));
        println!(
            "  {label:<32} {:>10.2} {:>11.1} ms {:>14.2} {:>16.3} {:>12} {:>12}",
            f.cores,
            f.heartbeat_p99_ms,
            f.detect_p99_s,
            f.replace_p99_s,
            opt(f.etcd_writes_per_s),
            opt(f.failover_s)
        );
    }
}
