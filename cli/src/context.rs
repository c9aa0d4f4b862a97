//! Where the CLI finds its gateway: named contexts in
//! `~/.config/skiff/config.toml` (`$XDG_CONFIG_HOME`, or `SKIFF_CONFIG` for
//! another file), one of them current, each an address, a token (or the
//! file holding it) and, for `https://`, the gateway's CA (a file or its
//! hash). `SKIFF_ADDR`, `SKIFF_TOKEN` and `SKIFF_CONTEXT` (and the flags of
//! the same names) override what the file says.
//!
//! ```toml
//! current_context = "dev"
//!
//! [contexts.dev]
//! address = "http://127.0.0.1:7070"
//! token_file = "/var/lib/skiff-dev/gateway/admin.token"
//!
//! [contexts.prod]
//! address = "https://gw.example.com:7070"
//! token_file = "/home/ops/.config/skiff/prod.token"
//! ca_hash = "sha256:5f1d…"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The address used when nothing names one.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:7070";

/// Why the contexts could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("no context {0:?} (skiff context ls lists them)")]
    Unknown(String),
}

/// One gateway, as the file names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// `http://127.0.0.1:7070` (plain HTTP is for loopback only) or
    /// `https://HOST:7070`; several gateways of one fleet comma-separated
    /// (`https://gw1:7070,https://gw2:7070`), tried in turn.
    pub address: String,
    /// A file holding the API token (what `skiff dev` writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The token itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The gateway's CA certificate (PEM), for `https://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Or the SHA-256 of the gateway's CA (`sha256:HEX`, what `skiff
    /// version` and `skiff token create` print), pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_hash: Option<String>,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// A token, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// How to trust an `https://` gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The system's roots (a certificate the operator gave the gateway).
    System,
    /// Only this CA (PEM).
    CaPem(String),
    /// Only a CA with this SHA-256 (`sha256:HEX`), found in the chain.
    CaHash(String),
}

/// What a command talks to, everything resolved.
#[derive(Debug, Clone)]
pub struct Target {
    /// The context it came from, if any.
    pub context: Option<String>,
    pub address: String,
    pub token: Option<Token>,
    pub trust: Trust,
}

/// What overrides the file (flags and environment).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub context: Option<String>,
    pub address: Option<String>,
    pub token: Option<String>,
}

/// The config file's path: `SKIFF_CONFIG`, else
/// `$XDG_CONFIG_HOME/skiff/config.toml`, else `~/.config/skiff/config.toml`.
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SKIFF_CONFIG") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/root/.config"));
    base.join("skiff/config.toml")
}

impl ConfigFile {
    /// Reads `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, ContextError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ContextError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        toml::from_str(&text).map_err(|e| ContextError::Invalid {
            path: path.display().to_string(),
            reason: e.message().to_string(),
        })
    }

    /// Writes `path` (0600: it may hold a token), through a temporary file.
    pub fn save(&self, path: &Path) -> Result<(), ContextError> {
        let io = |source| ContextError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = toml::to_string(self).map_err(|e| ContextError::Invalid {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        skiff_proto::config::write_private(path, text.as_bytes()).map_err(io)
    }

    /// Resolves what a command talks to.
    pub fn target(&self, o: &Overrides) -> Result<Target, ContextError> {
        let name = o.context.clone().or_else(|| self.current_context.clone());
        let ctx = match &name {
            Some(n) => Some(
                self.contexts
                    .get(n)
                    .ok_or_else(|| ContextError::Unknown(n.clone()))?,
            ),
            None => None,
        };
        let address = o
            .address
            .clone()
            .or_else(|| ctx.map(|c| c.address.clone()))
            .unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
        let token = match (&o.token, ctx) {
            (Some(t), _) => Some(Token(t.trim().to_string())),
            (None, Some(c)) => match (&c.token, &c.token_file) {
                (Some(t), _) => Some(Token(t.trim().to_string())),
                (None, Some(f)) => Some(Token(
                    std::fs::read_to_string(f)
                        .map_err(|source| ContextError::Io {
                            path: f.display().to_string(),
                            source,
                        })?
                        .trim()
                        .to_string(),
                )),
                (None, None) => None,
            },
            (None, None) => None,
        };
        let trust = match ctx {
            Some(Context {
                ca_file: Some(f), ..
            }) => Trust::CaPem(
                std::fs::read_to_string(f).map_err(|source| ContextError::Io {
                    path: f.display().to_string(),
                    source,
                })?,
            ),
            Some(Context {
                ca_hash: Some(h), ..
            }) => Trust::CaHash(h.clone()),
            _ => Trust::System,
        };
        Ok(Target {
            context: name,
            address,
            token,
            trust,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_environment_win_over_the_current_context() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("t");
        std::fs::write(&token_file, "from-file\n").unwrap();
        let mut c = ConfigFile::default();
        c.contexts.insert(
            "dev".into(),
            Context {
                address: "http://127.0.0.1:7999".into(),
                token_file: Some(token_file),
                ..Context::default()
            },
        );
        c.current_context = Some("dev".into());
        let path = dir.path().join("skiff/config.toml");
        c.save(&path).unwrap();
        let c = ConfigFile::load(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let t = c.target(&Overrides::default()).unwrap();
        assert_eq!(t.address, "http://127.0.0.1:7999");
        assert_eq!(t.token, Some(Token("from-file".into())));
        assert_eq!(format!("{:?}", t.token), "Some(Token(<redacted>))");

        let o = Overrides {
            address: Some("http://127.0.0.1:1".into()),
            token: Some("flag".into()),
            ..Overrides::default()
        };
        let t = c.target(&o).unwrap();
        assert_eq!(
            (t.address.as_str(), t.token),
            ("http://127.0.0.1:1", Some(Token("flag".into())))
        );

        let e = c
            .target(&Overrides {
                context: Some("prod".into()),
                ..Overrides::default()
            })
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "no context \"prod\" (skiff context ls lists them)"
        );
        // Nothing configured: the default address, no token.
        let t = ConfigFile::default().target(&Overrides::default()).unwrap();
        assert_eq!((t.address.as_str(), t.token), (DEFAULT_ADDRESS, None));
    }

    #[test]
    fn a_bad_file_is_one_line_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[contexts.x]\naddres = \"y\"\n").unwrap();
        let e = ConfigFile::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: unknown field `addres`", path.display())),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}
