//! Config files: TOML read into typed settings, with errors that name the
//! key (`config network.subnet: invalid IP address syntax`). Shared by the
//! agent and the gateway; parsing only, no I/O.

use serde::de::DeserializeOwned;

/// A configuration problem: the key (or the file) and why, on one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config {key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: &str, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

fn first_line(m: &str) -> String {
    m.lines().next().unwrap_or("invalid TOML").to_string()
}

/// TOML text as a table; `source` (the file) names syntax errors.
pub fn toml_table(text: &str, source: &str) -> Result<toml::Table, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::new(source, first_line(e.message())))
}

/// The settings in `table`; a bad value is named by its key path,
/// anything else by `source`.
pub fn from_toml<T: DeserializeOwned>(table: toml::Table, source: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let msg = first_line(e.inner().message());
        if key == "." || key.is_empty() {
            ConfigError::new(source, msg)
        } else {
            ConfigError::new(&key, msg)
        }
    })
}

/// Writes `data` to `path` as a private file (mode 0600), atomically: a
/// new file, flushed, renamed over the old one. Keys, tokens, contexts.
pub fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A credential read from a file, a flag or the environment (a join
/// token): its value is there to use, never to print. `Debug` and
/// `Display` show `<redacted>`, so a config or flags struct that derives
/// `Debug` can be logged whole.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, to send where it is needed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for SecretString {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_secret_string_never_prints_its_value() {
        let s = super::SecretString::new("skiff-join-abc123");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "skiff-join-abc123");
        let parsed: super::SecretString = "skiff-join-x".parse().unwrap();
        assert_eq!(parsed.expose(), "skiff-join-x");
    }

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Settings {
        inner: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        port: u16,
    }

    #[test]
    fn errors_name_the_key_or_the_file() {
        let parse = |t: &str| {
            toml_table(t, "a.toml")
                .and_then(|tb| from_toml::<Settings>(tb, "a.toml"))
                .unwrap_err()
                .to_string()
        };
        assert!(parse("[inner]\nport = 70000\n").starts_with("config inner.port: invalid value"));
        assert!(parse("[inner\n").starts_with("config a.toml: "));
        assert!(parse("").starts_with("config a.toml: missing field `inner`"));
    }
}
