//! Joining the gateway: the agent pins the gateway's CA by its hash, proves
//! a single-use join token, and gets a node certificate for a key it made
//! itself (the key never leaves the node). Kept under `STATE/pki/`:
//! `node.key` (0600), `node.crt`, `ca.crt`, `node.json`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use skiff_proto::wire::v1;

/// What a joined node keeps.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node_id: String,
    pub site: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// When the certificate was issued and when it expires (unix ms).
    pub issued_ms: i64,
    pub not_after_ms: i64,
    /// The node's container subnet, from the gateway.
    pub subnet: Option<ipnet::Ipv4Net>,
}

impl Identity {
    /// When to renew: two thirds into the certificate's life.
    pub fn renew_at_ms(&self) -> i64 {
        self.issued_ms + (self.not_after_ms - self.issued_ms) * 2 / 3
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct NodeFile {
    node_id: String,
    site: String,
    gateway: String,
    #[serde(default)]
    issued_ms: i64,
    #[serde(default)]
    not_after_ms: i64,
    #[serde(default)]
    subnet: Option<ipnet::Ipv4Net>,
}

fn pki_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("pki")
}

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// The identity kept from an earlier join, if any.
pub fn load(state_dir: &Path) -> Option<Identity> {
    let dir = pki_dir(state_dir);
    let node: NodeFile =
        serde_json::from_slice(&std::fs::read(dir.join("node.json")).ok()?).ok()?;
    Some(Identity {
        node_id: node.node_id,
        site: node.site,
        ca_pem: std::fs::read_to_string(dir.join("ca.crt")).ok()?,
        cert_pem: std::fs::read_to_string(dir.join("node.crt")).ok()?,
        key_pem: std::fs::read_to_string(dir.join("node.key")).ok()?,
        issued_ms: node.issued_ms,
        not_after_ms: node.not_after_ms,
        subnet: node.subnet,
    })
}

/// Accepts the server only if its chain holds the CA with the pinned hash
/// and the server certificate verifies against that CA; keeps the CA.
/// Shared with the `skiff` CLI, which pins the gateway's CA the same way.
#[derive(Debug)]
pub struct PinnedCa {
    pin: String,
    found: Mutex<Option<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinnedCa {
    /// A verifier for the CA whose SHA-256 is `pin` (`sha256:HEX`).
    pub fn new(pin: &str, provider: Arc<rustls::crypto::CryptoProvider>) -> Self {
        Self {
            pin: pin.to_string(),
            found: Mutex::new(None),
            provider,
        }
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| format!("sha256:{}", hex::encode(Sha256::digest(c.as_ref()))) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the gateway's CA does not match the pinned {}",
                    self.pin
                ))
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let r = verifier.verify_server_cert(end_entity, &[], server_name, ocsp, now)?;
        *self.found.lock().expect("lock") = Some(ca.to_vec());
        Ok(r)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `host`, `port` of an `https://HOST:PORT` URL.
pub fn host_port(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("gateway {url:?}: must be an https:// URL"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse::<u16>()
                .map_err(|_| format!("gateway {url:?}: bad port {p:?}"))?,
        ),
        _ => (authority.to_string(), 7071),
    };
    Ok((host, port))
}

/// Why a join failed. Only [`JoinError::Unreachable`] is worth trying
/// again: the others are answers that do not change on their own.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// Nothing answered at the URL, or the connection broke (a gateway
    /// not up yet, restarting, or a network on its way back).
    #[error("gateway {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: BoxError,
    },
    /// The gateway answered no: a token used, expired or forged, a CA
    /// that does not match the pin, a URL that is not one.
    #[error("gateway {url}: {source}")]
    Refused {
        url: String,
        #[source]
        source: BoxError,
    },
    /// This node could not make its key or keep its identity.
    #[error("{0}")]
    Local(String),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl JoinError {
    /// Whether trying the same join again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, JoinError::Unreachable { .. })
    }

    fn unreachable(url: &str, e: impl Into<BoxError>) -> Self {
        JoinError::Unreachable {
            url: url.to_string(),
            source: e.into(),
        }
    }

    fn refused(url: &str, e: impl Into<BoxError>) -> Self {
        JoinError::Refused {
            url: url.to_string(),
            source: e.into(),
        }
    }
}

/// A refused join call, by its gRPC status: a transport failure or a
/// gateway that is going away is unreachable, any other answer a refusal.
fn from_status(url: &str, status: tonic::Status) -> JoinError {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            JoinError::unreachable(url, status.message().to_string())
        }
        _ => JoinError::refused(url, format!("refused the join: {}", status.message())),
    }
}

/// Fetches the gateway's CA over TLS, accepted only if it has the pinned
/// hash (and the gateway's certificate is signed by it).
async fn fetch_ca(url: &str, pin: &str) -> Result<Vec<u8>, JoinError> {
    let (host, port) = host_port(url).map_err(|e| JoinError::refused(url, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCa::new(pin, Arc::clone(&provider)));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| JoinError::Local(format!("TLS client: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| JoinError::unreachable(url, "connect timed out"))?
    .map_err(|e| JoinError::unreachable(url, e))?;
    let name = ServerName::try_from(host.clone()).map_err(|e| JoinError::refused(url, e))?;
    connector.connect(name, tcp).await.map_err(|e| {
        // A certificate refused (the pin) is an answer; a connection cut
        // during the handshake is not.
        let tls = e
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        if tls {
            JoinError::refused(url, e)
        } else {
            JoinError::unreachable(url, e)
        }
    })?;
    verifier
        .found
        .lock()
        .expect("lock")
        .clone()
        .ok_or_else(|| JoinError::refused(url, "no CA in its chain"))
}

/// Joins the gateway at `url` with `token`, pinning the CA `ca_hash`;
/// keeps and returns the identity.
pub async fn join(
    state_dir: &Path,
    url: &str,
    token: &str,
    ca_hash: &str,
    name: &str,
) -> Result<Identity, JoinError> {
    let ca_der = fetch_ca(url, ca_hash).await?;
    let ca_pem = pem("CERTIFICATE", &ca_der);
    let (key, csr) = new_key(name).map_err(JoinError::Local)?;
    let channel = super::channel(url, &ca_pem, None).await.map_err(|e| {
        let e = e.strip_prefix(&format!("gateway {url}: ")).unwrap_or(&e);
        JoinError::unreachable(url, e.to_string())
    })?;
    let resp = v1::join_client::JoinClient::new(channel)
        .join(v1::JoinRequest {
            token: token.to_string(),
            csr_der: csr,
            requested_name: name.to_string(),
            instance_id: String::new(),
        })
        .await
        .map_err(|s| from_status(url, s))?
        .into_inner();
    let id = Identity {
        node_id: resp.node_id.clone(),
        site: resp.site.clone(),
        ca_pem: pem("CERTIFICATE", &resp.ca_certificate_der),
        cert_pem: pem("CERTIFICATE", &resp.certificate_der),
        key_pem: key.serialize_pem(),
        issued_ms: crate::runtime::shim::now_ms(),
        not_after_ms: resp.not_after_unix_ms,
        subnet: resp.container_subnet.parse().ok(),
    };
    save(state_dir, url, &id).map_err(JoinError::Local)?;
    Ok(id)
}

/// A new key and a certificate request for it.
fn new_key(name: &str) -> Result<(rcgen::KeyPair, Vec<u8>), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("node key: {e}"))?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("certificate request: {e}"))?;
    Ok((key, csr.der().to_vec()))
}

/// A new key and certificate for a joined node, over its current session
/// channel; kept, and returned.
pub async fn renew(
    state_dir: &Path,
    url: &str,
    channel: tonic::transport::Channel,
    id: &Identity,
) -> Result<Identity, String> {
    let (key, csr) = new_key(&id.node_id)?;
    let resp = v1::session_client::SessionClient::new(channel)
        .renew(v1::RenewRequest { csr_der: csr })
        .await
        .map_err(|s| format!("renew the node certificate: {}", s.message()))?
        .into_inner();
    let new = Identity {
        cert_pem: pem("CERTIFICATE", &resp.certificate_der),
        key_pem: key.serialize_pem(),
        issued_ms: crate::runtime::shim::now_ms(),
        not_after_ms: resp.not_after_unix_ms,
        ..id.clone()
    };
    save(state_dir, url, &new)?;
    Ok(new)
}

/// Writes the identity under `STATE/pki/` (the key first, 0600).
fn save(state_dir: &Path, url: &str, id: &Identity) -> Result<(), String> {
    let dir = pki_dir(state_dir);
    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
    std::fs::create_dir_all(&dir).map_err(io)?;
    skiff_proto::config::write_private(&dir.join("node.key"), id.key_pem.as_bytes()).map_err(io)?;
    std::fs::write(dir.join("node.crt"), &id.cert_pem).map_err(io)?;
    std::fs::write(dir.join("ca.crt"), &id.ca_pem).map_err(io)?;
    let node = NodeFile {
        node_id: id.node_id.clone(),
        site: id.site.clone(),
        gateway: url.to_string(),
        issued_ms: id.issued_ms,
        not_after_ms: id.not_after_ms,
        subnet: id.subnet,
    };
    std::fs::write(
        dir.join("node.json"),
        serde_json::to_vec(&node).map_err(|e| e.to_string())?,
    )
    .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_gateway_that_did_not_answer_is_tried_again() {
        let url = "https://10.0.0.1:7071";
        let gone = from_status(url, tonic::Status::unavailable("connection refused"));
        assert!(gone.is_transient(), "{gone}");
        for refused in [
            tonic::Status::unauthenticated("join token was already used"),
            tonic::Status::invalid_argument("bad certificate request"),
        ] {
            let e = from_status(url, refused);
            assert!(!e.is_transient(), "{e}");
            assert!(
                e.to_string()
                    .starts_with("gateway https://10.0.0.1:7071: refused the join: "),
                "{e}"
            );
        }
    }

    #[test]
    fn gateway_urls() {
        assert_eq!(
            host_port("https://127.0.0.1:7071").unwrap(),
            ("127.0.0.1".into(), 7071)
        );
        assert_eq!(
            host_port("https://gw.example.com").unwrap(),
            ("gw.example.com".into(), 7071)
        );
        assert!(host_port("http://x:1").is_err());
    }
}
