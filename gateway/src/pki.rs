//! The gateway's certificate authority and API tokens.
//!
//! On first start the gateway creates, under `STATE/pki/` (mode 0700):
//! `ca.key` and `ca.crt` (ECDSA P-256, ten years), and `STATE/admin.token`
//! (mode 0600). Its server certificate for the agent port is issued again
//! at every start for the configured names. Agents pin the CA by the
//! SHA-256 of its DER (`sha256:HEX`, printed with every join token); their
//! node certificates are issued from a CSR, with the node id as the common
//! name, and the node's identity on a session is its certificate alone.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};

/// A PKI failure, naming the file or the step.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PkiError(pub String);

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> PkiError {
    PkiError(format!("{what}: {e}"))
}

/// The gateway's CA and the server identity for the agent port.
pub struct Pki {
    ca_key: KeyPair,
    ca_cert_pem: String,
    ca_der: Vec<u8>,
    /// Server certificate chain (leaf, then the CA) and key, PEM.
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub admin_token: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("ca_hash", &self.ca_hash())
            .finish_non_exhaustive()
    }
}

/// `sha256:HEX` of some bytes.
pub fn sha256_hex(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A random secret, hex-encoded (`bytes` of entropy).
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn write_private(path: &Path, data: &str) -> Result<(), PkiError> {
    skiff_proto::config::write_private(path, data.as_bytes()).map_err(|e| err(path.display(), e))
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn serial() -> SerialNumber {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}

impl Pki {
    /// Loads the CA and admin token from `state_dir`, creating them on the
    /// first start, and issues the server certificate for `names`.
    pub fn open(state_dir: &Path, names: &[String]) -> Result<Self, PkiError> {
        let dir = state_dir.join("pki");
        std::fs::create_dir_all(&dir).map_err(|e| err(dir.display(), e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err(dir.display(), e))?;
        let (key_path, cert_path) = (dir.join("ca.key"), dir.join("ca.crt"));
        let (ca_key, ca_cert_pem) = if key_path.exists() && cert_path.exists() {
            let key_pem =
                std::fs::read_to_string(&key_path).map_err(|e| err(key_path.display(), e))?;
            let cert_pem =
                std::fs::read_to_string(&cert_path).map_err(|e| err(cert_path.display(), e))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| err(key_path.display(), e))?;
            (key, cert_pem)
        } else {
            let key = KeyPair::generate().map_err(|e| err("CA key", e))?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "skiff-gateway CA");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = now() - time::Duration::hours(1);
            params.not_after = now() + time::Duration::days(3650);
            params.serial_number = Some(serial());
            let cert = params.self_signed(&key).map_err(|e| err("CA", e))?;
            write_private(&key_path, &key.serialize_pem())?;
            std::fs::write(&cert_path, cert.pem()).map_err(|e| err(cert_path.display(), e))?;
            (key, cert.pem())
        };
        let ca_der = pem_der(&ca_cert_pem).ok_or_else(|| err(cert_path.display(), "not PEM"))?;
        let token_path = state_dir.join("admin.token");
        // Made on the first start only: one that is there but cannot be
        // read (or is empty) is an error, never silently replaced, which
        // would lock out every client that holds the old one.
        let admin_token = match std::fs::read_to_string(&token_path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            Ok(_) => {
                return Err(err(
                    token_path.display(),
                    "empty (remove it to have a new admin token made)",
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let t = format!("skiff-admin-{}", random_hex(24));
                write_private(&token_path, &format!("{t}\n"))?;
                t
            }
            Err(e) => return Err(err(token_path.display(), e)),
        };
        let mut pki = Self {
            ca_key,
            ca_cert_pem,
            ca_der,
            server_cert_pem: String::new(),
            server_key_pem: String::new(),
            admin_token,
        };
        pki.issue_server(names)?;
        Ok(pki)
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_pem(&self.ca_cert_pem, &self.ca_key).map_err(|e| err("CA", e))
    }

    fn issue_server(&mut self, names: &[String]) -> Result<(), PkiError> {
        let key = KeyPair::generate().map_err(|e| err("server key", e))?;
        let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            sans.push(h.trim().to_string());
        }
        sans.extend(names.iter().cloned());
        sans.dedup();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "skiff-gateway");
        params.distinguished_name = dn;
        params.subject_alt_names = sans
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| match s.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => s
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| err(format!("advertise {s:?}"), e)),
            })
            .collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = now() - time::Duration::hours(1);
        params.not_after = now() + time::Duration::days(365);
        params.serial_number = Some(serial());
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(|e| err("server certificate", e))?;
        self.server_cert_pem = format!("{}{}", cert.pem(), self.ca_cert_pem);
        self.server_key_pem = key.serialize_pem();
        Ok(())
    }

    /// `sha256:HEX` of the CA certificate (DER): what agents pin.
    pub fn ca_hash(&self) -> String {
        sha256_hex(&self.ca_der)
    }

    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// A node certificate for `node_id` from the agent's CSR (only its key
    /// is taken), valid for `lifetime`: DER and its expiry (unix ms).
    pub fn issue_node(
        &self,
        csr_der: &[u8],
        node_id: &str,
        lifetime: Duration,
    ) -> Result<(Vec<u8>, i64), PkiError> {
        let der = rustls::pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
        let mut csr = CertificateSigningRequestParams::from_der(&der).map_err(|e| err("CSR", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = now() - time::Duration::minutes(5);
        let not_after =
            now() + time::Duration::try_from(lifetime).map_err(|e| err("lifetime", e))?;
        params.not_after = not_after;
        params.serial_number = Some(serial());
        csr.params = params;
        let cert = csr
            .signed_by(&self.issuer()?)
            .map_err(|e| err("node certificate", e))?;
        Ok((
            cert.der().to_vec(),
            (not_after.unix_timestamp_nanos() / 1_000_000) as i64,
        ))
    }
}

/// The DER of the first PEM block in `pem`.
pub fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

/// Where the admin token is written.
pub fn admin_token_path(state_dir: &Path) -> PathBuf {
    state_dir.join("admin.token")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(dir: &Path) -> String {
        match Pki::open(dir, &[]) {
            Ok(_) => panic!("opened"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn an_admin_token_that_cannot_be_read_is_an_error_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = admin_token_path(dir.path());
        // Unreadable (a directory where the file should be; root reads
        // any file mode).
        std::fs::create_dir_all(&path).unwrap();
        let e = refused(dir.path());
        assert!(e.starts_with(&format!("{}: ", path.display())), "{e}");
        assert!(path.is_dir(), "left as it was");
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, "\n").unwrap();
        let e = refused(dir.path());
        assert!(e.contains("empty"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "\n");
    }

    #[test]
    fn the_ca_survives_a_restart_and_signs_node_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::open(dir.path(), &[]).unwrap();
        let b = Pki::open(dir.path(), &["gw.example.com".into()]).unwrap();
        assert_eq!(a.ca_hash(), b.ca_hash());
        assert_eq!(a.admin_token, b.admin_token);
        assert!(a.ca_hash().starts_with("sha256:") && a.ca_hash().len() == 71);
        let mode = std::fs::metadata(dir.path().join("pki/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(admin_token_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "i-want-to-be-someone-else");
        let csr = params.serialize_request(&key).unwrap();
        let (der, not_after) = b
            .issue_node(csr.der(), "node-1", Duration::from_secs(3600))
            .unwrap();
        assert!(not_after > 0);
        // The gateway's name, not the requested one.
        let text = String::from_utf8_lossy(&der);
        assert!(text.contains("node-1"));
        assert!(!text.contains("someone-else"));
        assert!(
            b.issue_node(b"garbage", "node-2", Duration::from_secs(60))
                .is_err()
        );
    }
}
