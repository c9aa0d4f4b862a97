//! Secrets at rest: each secret's data is sealed with AES-256-GCM (ring)
//! under a 32-byte key kept apart from the state: by default
//! `STATE_DIR/secrets.key`, made on first use with mode 0600, so a copy of
//! the state (a backup, `state export`, the etcd keyspace) holds only
//! ciphertext; over etcd every gateway is given the same key file
//! (`secrets_key_file`), which it never makes. The secret's name is the
//! seal's associated data: a sealed value moved to another name does not
//! open.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

/// What went wrong with the key or a sealed value (never shows a value).
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secrets key {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secrets key {0}: not 32 bytes")]
    BadKey(PathBuf),
    #[error("secrets key {0} must not be readable by others (chmod 600)")]
    Exposed(PathBuf),
    #[error(
        "secrets key {0} does not exist: over etcd every gateway needs the same key (secrets_key_file)"
    )]
    NotGiven(PathBuf),
    #[error("secret {0}: its sealed value does not open with this gateway's key")]
    Open(String),
    #[error("no randomness for a nonce")]
    Random,
}

/// A secret's data: key → bytes. Its `Debug` shows the keys only.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretData(pub BTreeMap<String, Vec<u8>>);

impl std::fmt::Debug for SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretData")
            .field("keys", &self.0.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The key, loaded.
pub struct SecretBox {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<key>)")
    }
}

impl SecretBox {
    /// Reads the key at `path`; makes one there if it does not exist and
    /// `may_make` (the embedded store's default).
    pub fn load(path: &Path, may_make: bool) -> Result<Self, SecretsError> {
        let io = |source| SecretsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let rng = SystemRandom::new();
        let bytes = match std::fs::read(path) {
            Ok(b) => {
                let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(SecretsError::Exposed(path.to_path_buf()));
                }
                b
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_make => {
                let mut key = vec![0u8; 32];
                rng.fill(&mut key).map_err(|_| SecretsError::Random)?;
                skiff_proto::config::write_private(path, &key).map_err(io)?;
                key
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SecretsError::NotGiven(path.to_path_buf()));
            }
            Err(e) => return Err(io(e)),
        };
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| SecretsError::BadKey(path.to_path_buf()))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            rng,
        })
    }

    /// `data` sealed for secret `name`: base64 of nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, name: &str, data: &SecretData) -> Result<String, SecretsError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SecretsError::Random)?;
        let mut buf = serde_json::to_vec(&encode(data)).expect("a map of strings");
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SecretsError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// What [`SecretBox::seal`] sealed for `name`.
    pub fn open(&self, name: &str, sealed: &str) -> Result<SecretData, SecretsError> {
        let bad = || SecretsError::Open(name.to_string());
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| bad())?;
        if raw.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut buf)
            .map_err(|_| bad())?;
        let map: BTreeMap<String, String> = serde_json::from_slice(plain).map_err(|_| bad())?;
        decode(&map).ok_or_else(bad)
    }
}

fn encode(d: &SecretData) -> BTreeMap<&str, String> {
    d.0.iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                base64::engine::general_purpose::STANDARD.encode(v),
            )
        })
        .collect()
}

fn decode(m: &BTreeMap<String, String>) -> Option<SecretData> {
    m.iter()
        .map(|(k, v)| {
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .ok()
                .map(|v| (k.clone(), v))
        })
        .collect::<Option<_>>()
        .map(SecretData)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> SecretData {
        SecretData(BTreeMap::from([(
            "password".to_string(),
            b"hunter2".to_vec(),
        )]))
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_name_and_never_shows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let b = SecretBox::load(&path, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = b.seal("db", &data()).unwrap();
        assert!(!sealed.contains("hunter2"));
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&sealed)
            .unwrap();
        assert!(!raw.windows(7).any(|w| w == b"hunter2"));
        // Sealed twice: different bytes (a fresh nonce), the same value.
        assert_ne!(b.seal("db", &data()).unwrap(), sealed);
        assert_eq!(b.open("db", &sealed).unwrap(), data());
        // The same key again (a restart) opens it; another name does not.
        let again = SecretBox::load(&path, false).unwrap();
        assert_eq!(again.open("db", &sealed).unwrap(), data());
        assert!(matches!(
            again.open("other", &sealed),
            Err(SecretsError::Open(_))
        ));
        // Another key does not.
        let other = SecretBox::load(&dir.path().join("other.key"), true).unwrap();
        assert!(other.open("db", &sealed).is_err());
        assert!(!format!("{:?} {:?}", data(), b).contains("hunter2"));
    }

    #[test]
    fn a_key_is_made_only_where_allowed_and_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("given.key");
        assert!(matches!(
            SecretBox::load(&path, false),
            Err(SecretsError::NotGiven(_))
        ));
        std::fs::write(&path, [7u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SecretBox::load(&path, false),
            Err(SecretsError::Exposed(_))
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        SecretBox::load(&path, false).unwrap();
        std::fs::write(&path, [7u8; 16]).unwrap();
        assert!(matches!(
            SecretBox::load(&path, false),
            Err(SecretsError::BadKey(_))
        ));
    }
}
