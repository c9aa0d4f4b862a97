//! The client library of the gateway's REST API (`/v1/…`): what the CLI,
//! the end-to-end tests and `skiff dev` use. Answers are the gateway's own
//! types; an error is one [`ClientError`] whose text is one line, with the
//! gateway's message or the root cause of a failed connection (never a
//! stack of causes).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::pki_types::pem::PemObject as _;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use skiff_gateway::api::{
    ApiTokenResponse, ApiTokenView, ExecEntry, ExecRequest, JoinTokenResponse, JoinTokenView,
    LogEntry, NamespaceView, SiteView, VersionView, WorkloadView,
};
use skiff_gateway::control::secrets::SecretView;
use skiff_gateway::control::volumes::VolumeView;
use skiff_gateway::control::{AllocationRecord, Event, NodeRecord, Role};

use crate::context::{Target, Token, Trust};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered (connection refused, no route, TLS refused).
    #[error("cannot reach the gateway at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    /// The gateway answered with an error.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The answer was not what this client understands.
    #[error("the gateway at {address} answered in a way this skiff does not understand: {reason}")]
    Protocol { address: String, reason: String },
    /// The address or the trust settings cannot be used.
    #[error("{0}")]
    Setup(String),
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The innermost cause of an error, which is what an operator can act on
/// (`Connection refused`, `invalid peer certificate: …`).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A connection to a gateway: one of the addresses the target lists
/// (`https://a:7070,https://b:7070`), the one that last answered first.
#[derive(Debug, Clone)]
pub struct Client {
    addresses: Vec<String>,
    /// Which of `addresses` answered last.
    current: Arc<AtomicUsize>,
    token: Option<Token>,
    http: reqwest::Client,
    /// The namespace of namespaced requests (`*` on lists: every one the
    /// token sees); none: the gateway's default for the token.
    namespace: Option<String>,
}

/// What a streamed answer yields: items until the end, or an error.
pub type Items<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T, ClientError>> + Send>>;

impl Client {
    /// A client for `target`: plain HTTP for `http://` (loopback), TLS
    /// trusting what the target says for `https://`.
    /// Several gateways of one fleet are written comma-separated; a
    /// request goes to the next when one cannot be reached.
    pub fn new(target: &Target) -> Result<Self, ClientError> {
        let addresses: Vec<String> = target
            .address
            .split(',')
            .map(|a| a.trim().trim_end_matches('/').to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if addresses.is_empty() {
            return Err(ClientError::Setup(format!(
                "address {:?}: names no gateway",
                target.address
            )));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .no_proxy();
        for address in &addresses {
            if !address.starts_with("https://") && !address.starts_with("http://") {
                return Err(ClientError::Setup(format!(
                    "address {address:?}: must start with http:// or https://"
                )));
            }
        }
        // The system's roots are reqwest's own (a certificate the operator
        // gave the gateway); a pinned CA is ours (one CA for the fleet).
        if addresses.iter().any(|a| a.starts_with("https://")) && target.trust != Trust::System {
            builder = builder.tls_backend_preconfigured(tls_config(&target.trust)?);
        }
        let http = builder.build().map_err(|e| {
            ClientError::Setup(format!("address {}: {}", target.address, root_cause(&e)))
        })?;
        Ok(Self {
            addresses,
            current: Arc::new(AtomicUsize::new(0)),
            token: target.token.clone(),
            http,
            namespace: None,
        })
    }

    /// The same client, for namespace `ns` (`*`: every namespace, on lists).
    pub fn in_namespace(&self, ns: Option<&str>) -> Client {
        Client {
            namespace: ns.map(str::to_string),
            ..self.clone()
        }
    }

    /// Whether lists show every namespace (`-A`).
    pub fn all_namespaces(&self) -> bool {
        self.namespace.as_deref() == Some("*")
    }

    /// The gateway answering now.
    pub fn address(&self) -> &str {
        &self.addresses[self.current.load(Ordering::Relaxed) % self.addresses.len()]
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.address()));
        if let Some(Token(t)) = &self.token {
            r = r.bearer_auth(t);
        }
        let namespaced = [
            "/v1/workloads",
            "/v1/allocations",
            "/v1/secrets",
            "/v1/volumes",
            "/v1/events",
        ]
        .iter()
        .any(|p| path.starts_with(p));
        if let (true, Some(ns)) = (namespaced, &self.namespace) {
            r = r.query(&[("namespace", ns)]);
        }
        r
    }

    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            address: self.address().to_string(),
            reason: root_cause(e),
        }
    }

    fn protocol(&self, reason: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol {
            address: self.address().to_string(),
            reason: reason.to_string(),
        }
    }

    /// Sends to the gateway that answered last, and on to the next when it
    /// cannot be connected to (the request was not sent, so this is safe
    /// for any method). When none can: one error naming them all.
    async fn send_anywhere(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let request = req.build().map_err(|e| self.unreachable(&e))?;
        let n = self.addresses.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        // What follows the address in the URL (`/v1/workloads?x=y`).
        let full = request.url().to_string();
        let tail = match full.strip_prefix(self.addresses[first].as_str()) {
            Some(t) => t.to_string(),
            None => {
                let u = request.url();
                match u.query() {
                    Some(q) => format!("{}?{q}", u.path()),
                    None => u.path().to_string(),
                }
            }
        };
        let mut tries = Vec::new();
        let mut request = Some(request);
        for i in 0..n {
            let at = (first + i) % n;
            let Some(mut attempt) = request.take() else {
                break;
            };
            // A copy for the next address, when the body can be copied.
            request = attempt.try_clone();
            *attempt.url_mut() = format!("{}{tail}", self.addresses[at])
                .parse()
                .map_err(|e| ClientError::Setup(format!("address {}: {e}", self.addresses[at])))?;
            match self.http.execute(attempt).await {
                Ok(resp) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) if e.is_connect() => tries.push((at, root_cause(&e))),
                Err(e) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Err(self.unreachable(&e));
                }
            }
        }
        let reason = tries.last().map(|(_, r)| r.clone()).unwrap_or_default();
        let tried: Vec<&str> = tries
            .iter()
            .map(|(at, _)| self.addresses[*at].as_str())
            .collect();
        Err(ClientError::Unreachable {
            address: tried.join(", "),
            reason,
        })
    }

    /// Sends; a non-2xx answer becomes [`ClientError::Api`].
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = self.send_anywhere(req).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        Err(
            match serde_json::from_slice::<skiff_gateway::api::ApiError>(&bytes) {
                Ok(e) => ClientError::Api {
                    status: status.as_u16(),
                    code: e.code,
                    message: e.message,
                },
                Err(_) => ClientError::Api {
                    status: status.as_u16(),
                    code: String::new(),
                    message: format!("{status}: {}", String::from_utf8_lossy(&bytes).trim()),
                },
            },
        )
    }

    async fn json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = self.send(req).await?;
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| self.protocol(e))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(self.request(reqwest::Method::GET, path)).await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        self.json(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    async fn empty(&self, method: reqwest::Method, path: &str) -> Result<(), ClientError> {
        self.send(self.request(method, path)).await.map(|_| ())
    }

    /// The gateway's version and CA hash.
    pub async fn version(&self) -> Result<VersionView, ClientError> {
        self.get("/v1/version").await
    }

    pub async fn workloads(&self) -> Result<Vec<WorkloadView>, ClientError> {
        self.get("/v1/workloads").await
    }

    pub async fn workload(&self, name: &str) -> Result<WorkloadView, ClientError> {
        self.get(&format!("/v1/workloads/{}", seg(name))).await
    }

    /// Creates a workload from its spec text (YAML or JSON).
    pub async fn create_workload(&self, spec: &str) -> Result<WorkloadView, ClientError> {
        self.json(
            self.request(reqwest::Method::POST, "/v1/workloads")
                .header("content-type", "application/yaml")
                .body(spec.to_string()),
        )
        .await
    }

    /// Replaces the spec of workload `name`.
    pub async fn update_workload(
        &self,
        name: &str,
        spec: &str,
    ) -> Result<WorkloadView, ClientError> {
        self.json(
            self.request(
                reqwest::Method::PUT,
                &format!("/v1/workloads/{}", seg(name)),
            )
            .header("content-type", "application/yaml")
            .body(spec.to_string()),
        )
        .await
    }

    pub async fn scale(&self, name: &str, replicas: u32) -> Result<WorkloadView, ClientError> {
        self.post(
            &format!("/v1/workloads/{}/scale", seg(name)),
            &serde_json::json!({ "replicas": replicas }),
        )
        .await
    }

    pub async fn restart(&self, name: &str) -> Result<WorkloadView, ClientError> {
        self.json(self.request(
            reqwest::Method::POST,
            &format!("/v1/workloads/{}/restart", seg(name)),
        ))
        .await
    }

    pub async fn delete_workload(&self, name: &str, volumes: bool) -> Result<(), ClientError> {
        let q = if volumes { "?volumes=true" } else { "" };
        self.empty(
            reqwest::Method::DELETE,
            &format!("/v1/workloads/{}{q}", seg(name)),
        )
        .await
    }

    /// Creates (`create`) or rotates a secret; `data` is key → value.
    pub async fn put_secret(
        &self,
        name: &str,
        data: &std::collections::BTreeMap<String, Vec<u8>>,
        create: bool,
    ) -> Result<SecretView, ClientError> {
        use base64::Engine as _;
        let data: std::collections::BTreeMap<&str, String> = data
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    base64::engine::general_purpose::STANDARD.encode(v),
                )
            })
            .collect();
        if create {
            let body = serde_json::json!({ "name": name, "data": data });
            self.post("/v1/secrets", &body).await
        } else {
            let body = serde_json::json!({ "data": data });
            let path = format!("/v1/secrets/{}", seg(name));
            self.json(self.request(reqwest::Method::PUT, &path).json(&body))
                .await
        }
    }

    pub async fn secrets(&self) -> Result<Vec<SecretView>, ClientError> {
        self.get("/v1/secrets").await
    }

    pub async fn delete_secret(&self, name: &str) -> Result<(), ClientError> {
        self.empty(
            reqwest::Method::DELETE,
            &format!("/v1/secrets/{}", seg(name)),
        )
        .await
    }

    pub async fn volumes(&self) -> Result<Vec<VolumeView>, ClientError> {
        self.get("/v1/volumes").await
    }

    pub async fn remove_volume(&self, id: &str) -> Result<(), ClientError> {
        self.empty(reqwest::Method::DELETE, &format!("/v1/volumes/{}", seg(id)))
            .await
    }

    pub async fn allocations(
        &self,
        workload: Option<&str>,
    ) -> Result<Vec<AllocationRecord>, ClientError> {
        match workload {
            Some(w) => {
                self.get(&format!("/v1/allocations?workload={}", seg(w)))
                    .await
            }
            None => self.get("/v1/allocations").await,
        }
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, ClientError> {
        self.get("/v1/nodes").await
    }

    /// `cordon`, `uncordon` or `drain`.
    pub async fn node_action(&self, id: &str, action: &str) -> Result<NodeRecord, ClientError> {
        self.json(self.request(
            reqwest::Method::POST,
            &format!("/v1/nodes/{}/{action}", seg(id)),
        ))
        .await
    }

    pub async fn remove_node(&self, id: &str) -> Result<(), ClientError> {
        self.empty(reqwest::Method::DELETE, &format!("/v1/nodes/{}", seg(id)))
            .await
    }

    pub async fn sites(&self) -> Result<Vec<SiteView>, ClientError> {
        self.get("/v1/sites").await
    }

    pub async fn create_join_token(
        &self,
        site: &str,
        ttl: Duration,
    ) -> Result<JoinTokenResponse, ClientError> {
        self.post(
            "/v1/join-tokens",
            &serde_json::json!({ "site": site, "ttl_seconds": ttl.as_secs() }),
        )
        .await
    }

    pub async fn join_tokens(&self) -> Result<Vec<JoinTokenView>, ClientError> {
        self.get("/v1/join-tokens").await
    }

    pub async fn revoke_join_token(&self, id: &str) -> Result<(), ClientError> {
        self.empty(
            reqwest::Method::DELETE,
            &format!("/v1/join-tokens/{}", seg(id)),
        )
        .await
    }

    /// An API token; bound to `namespaces` (none: a fleet token).
    pub async fn create_api_token(
        &self,
        name: &str,
        role: Role,
        namespaces: &[String],
    ) -> Result<ApiTokenResponse, ClientError> {
        self.post(
            "/v1/api-tokens",
            &serde_json::json!({ "name": name, "role": role, "namespaces": namespaces }),
        )
        .await
    }

    pub async fn namespaces(&self) -> Result<Vec<NamespaceView>, ClientError> {
        self.get("/v1/namespaces").await
    }

    pub async fn namespace(&self, name: &str) -> Result<NamespaceView, ClientError> {
        self.get(&format!("/v1/namespaces/{}", seg(name))).await
    }

    /// Makes namespace `name` with a quota and policy (JSON, as the API
    /// takes them).
    pub async fn create_namespace(
        &self,
        name: &str,
        quota: &serde_json::Value,
        policy: &serde_json::Value,
    ) -> Result<NamespaceView, ClientError> {
        self.post(
            "/v1/namespaces",
            &serde_json::json!({ "name": name, "quota": quota, "policy": policy }),
        )
        .await
    }

    /// Replaces what is given of a namespace's quota and policy.
    pub async fn update_namespace(
        &self,
        name: &str,
        quota: Option<&serde_json::Value>,
        policy: Option<&serde_json::Value>,
    ) -> Result<NamespaceView, ClientError> {
        let mut body = serde_json::Map::new();
        if let Some(q) = quota {
            body.insert("quota".into(), q.clone());
        }
        if let Some(p) = policy {
            body.insert("policy".into(), p.clone());
        }
        let path = format!("/v1/namespaces/{}", seg(name));
        self.json(self.request(reqwest::Method::PUT, &path).json(&body))
            .await
    }

    pub async fn delete_namespace(&self, name: &str) -> Result<(), ClientError> {
        self.empty(
            reqwest::Method::DELETE,
            &format!("/v1/namespaces/{}", seg(name)),
        )
        .await
    }

    pub async fn api_tokens(&self) -> Result<Vec<ApiTokenView>, ClientError> {
        self.get("/v1/api-tokens").await
    }

    pub async fn revoke_api_token(&self, id: &str) -> Result<(), ClientError> {
        self.empty(
            reqwest::Method::DELETE,
            &format!("/v1/api-tokens/{}", seg(id)),
        )
        .await
    }

    /// The logs of `workload`'s allocations, one [`LogEntry`] at a time.
    pub async fn logs(
        &self,
        workload: &str,
        q: &LogsQuery,
    ) -> Result<Items<LogEntry>, ClientError> {
        let mut path = format!("/v1/workloads/{}/logs?follow={}", seg(workload), q.follow);
        if let Some(n) = q.tail {
            path.push_str(&format!("&tail={n}"));
        }
        if let Some(t) = q.since_ms {
            path.push_str(&format!("&since_ms={t}"));
        }
        if let Some(a) = &q.allocation {
            path.push_str(&format!("&allocation={}", seg(a)));
        }
        let resp = self.send(self.request(reqwest::Method::GET, &path)).await?;
        Ok(self.ndjson(resp))
    }

    /// Runs a command in one of `workload`'s containers: its output, then
    /// its exit, one [`ExecEntry`] at a time.
    pub async fn exec(
        &self,
        workload: &str,
        req: &ExecRequest,
    ) -> Result<Items<ExecEntry>, ClientError> {
        let resp = self
            .send(
                self.request(
                    reqwest::Method::POST,
                    &format!("/v1/workloads/{}/exec", seg(workload)),
                )
                .json(req),
            )
            .await?;
        Ok(self.ndjson(resp))
    }

    /// Recent events, then (with `follow`) the new ones as they happen.
    pub async fn events(&self, follow: bool) -> Result<Items<Event>, ClientError> {
        let resp = self
            .send(self.request(reqwest::Method::GET, &format!("/v1/events?follow={follow}")))
            .await?;
        let me = self.clone();
        let lines = lines(resp, self.clone());
        // Server-sent events: `data:` lines, a blank line ends each.
        Ok(Box::pin(lines.filter_map(move |line| {
            let me = me.clone();
            async move {
                match line {
                    Err(e) => Some(Err(e)),
                    Ok(l) => l
                        .strip_prefix("data:")
                        .map(|d| serde_json::from_str(d.trim()).map_err(|e| me.protocol(e))),
                }
            }
        })))
    }

    fn ndjson<T: DeserializeOwned + Send + 'static>(&self, resp: reqwest::Response) -> Items<T> {
        let me = self.clone();
        Box::pin(lines(resp, self.clone()).filter_map(move |line| {
            let me = me.clone();
            async move {
                match line {
                    Err(e) => Some(Err(e)),
                    Ok(l) if l.trim().is_empty() => None,
                    Ok(l) => Some(serde_json::from_str(&l).map_err(|e| me.protocol(e))),
                }
            }
        }))
    }
}

/// What `logs` asks for.
#[derive(Debug, Clone, Default)]
pub struct LogsQuery {
    pub follow: bool,
    pub tail: Option<u32>,
    pub since_ms: Option<i64>,
    pub allocation: Option<String>,
}

/// The lines of a streamed body, as they arrive.
fn lines(resp: reqwest::Response, client: Client) -> Items<String> {
    struct Reading {
        body: std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
        buf: Vec<u8>,
        client: Client,
        done: bool,
    }
    let start = Reading {
        body: Box::pin(resp.bytes_stream()),
        buf: Vec::new(),
        client,
        done: false,
    };
    Box::pin(futures::stream::unfold(start, |mut r| async move {
        loop {
            if let Some(pos) = r.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = r.buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches(['\n', '\r'])
                    .to_string();
                return Some((Ok(text), r));
            }
            if r.done {
                if r.buf.is_empty() {
                    return None;
                }
                let text = String::from_utf8_lossy(&std::mem::take(&mut r.buf)).into_owned();
                return Some((Ok(text), r));
            }
            match r.body.next().await {
                Some(Ok(chunk)) => r.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    let err = r.client.unreachable(&e);
                    r.done = true;
                    r.buf.clear();
                    return Some((Err(err), r));
                }
                None => r.done = true,
            }
        }
    }))
}

/// A path segment, percent-encoded.
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The rustls configuration that trusts what `trust` says.
fn tls_config(trust: &Trust) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Setup(format!("TLS: {e}")))?;
    let config = match trust {
        Trust::CaHash(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(skiff_agent::link::join::PinnedCa::new(
                pin, provider,
            )))
            .with_no_client_auth(),
        Trust::CaPem(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClientError::Setup(format!("ca_file: {e}")))?;
            if certs.is_empty() {
                return Err(ClientError::Setup("ca_file: no certificate in it".into()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| ClientError::Setup(format!("ca_file: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::System => builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(super::seg("web-1"), "web-1");
        assert_eq!(super::seg("a/b c"), "a%2Fb%20c");
    }
}
