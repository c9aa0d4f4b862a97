//! Secrets on the node: the values the gateway sends with an allocation
//! are written to a tmpfs the agent mounts at `STATE/secrets` (mode 0700,
//! never on disk), one directory per allocation and secret, one file per
//! key (mode 0400, given to the container's user), bind-mounted read-only
//! where the spec says. A rotation rewrites the files in place (a new
//! file renamed over the old one), so a running container reads the new
//! value; variables are set when a container is created.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use skiff_proto::wire::v1;
use skiff_proto::{ContainerSpec, is_secret_key};

use crate::runtime::spec::{Mount, MountSource};

/// Why a container's secrets could not be given (never shows a value).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "secret {0}: the gateway sent no value (does it exist, and does the gateway have its key?)"
    )]
    Missing(String),
    #[error("secret {secret}: no key {key}")]
    NoKey { secret: String, key: String },
    #[error("secret {secret}: key {key} is not UTF-8 text, so it cannot be a variable")]
    NotText { secret: String, key: String },
    #[error("secret {secret}: {key:?} is not a key")]
    BadKey { secret: String, key: String },
    #[error("secrets at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secrets at {path}: mount a tmpfs")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SecretError + '_ {
    move |source| SecretError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the node keeps secrets, and which versions it wrote.
#[derive(Debug)]
pub struct NodeSecrets {
    root: PathBuf,
    /// (allocation, secret) → version written.
    written: BTreeMap<(String, String), u64>,
}

/// What a container gets of its secrets.
#[derive(Debug, Default)]
pub struct Given {
    pub mounts: Vec<Mount>,
    /// `VAR=value` (never logged).
    pub env: Vec<String>,
}

/// Secret values, by name, from an allocation.
fn by_name(a: &v1::Allocation) -> BTreeMap<&str, &v1::SecretData> {
    a.secrets.iter().map(|s| (s.name.as_str(), s)).collect()
}

impl NodeSecrets {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            root: state_dir.join("secrets"),
            written: BTreeMap::new(),
        }
    }

    /// Makes `STATE/secrets` a tmpfs (once; an existing tmpfs is kept).
    fn ensure_tmpfs(&self) -> Result<(), SecretError> {
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&self.root))?;
        let is_tmpfs = nix::sys::statfs::statfs(&self.root)
            .is_ok_and(|s| s.filesystem_type().0 == TMPFS_MAGIC);
        if !is_tmpfs {
            nix::mount::mount(
                Some("tmpfs"),
                &self.root,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID
                    | nix::mount::MsFlags::MS_NODEV
                    | nix::mount::MsFlags::MS_NOEXEC,
                Some("mode=0700,size=64m"),
            )
            .map_err(|source| SecretError::Mount {
                path: self.root.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn dir(&self, allocation: &str, secret: &str) -> PathBuf {
        self.root.join(allocation).join(secret)
    }

    /// Writes `data`'s files under its directory (each new file renamed
    /// over the old one; keys no longer there removed).
    fn write(&self, allocation: &str, data: &v1::SecretData) -> Result<PathBuf, SecretError> {
        let dir = self.dir(allocation, &data.name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        // The files are the directory's owner's: the container's user
        // once it was given (a rotation), root before.
        let owner = std::fs::metadata(&dir).map_err(io(&dir))?;
        for (key, value) in &data.data {
            if !is_secret_key(key) {
                return Err(SecretError::BadKey {
                    secret: data.name.clone(),
                    key: key.clone(),
                });
            }
            let tmp = dir.join(format!(".{key}.new"));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o400)
                .open(&tmp)
                .map_err(io(&tmp))?;
            f.write_all(value).map_err(io(&tmp))?;
            std::os::unix::fs::fchown(&f, Some(owner.uid()), Some(owner.gid()))
                .map_err(io(&tmp))?;
            std::fs::rename(&tmp, dir.join(key)).map_err(io(&tmp))?;
        }
        let entries = std::fs::read_dir(&dir).map_err(io(&dir))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !data.data.contains_key(&name) && !name.starts_with('.') {
                std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
            }
        }
        Ok(dir)
    }

    /// Writes an allocation's secrets and says what its container gets:
    /// a read-only mount per `path`, a variable per `env` entry.
    pub fn give(&mut self, a: &v1::Allocation, spec: &ContainerSpec) -> Result<Given, SecretError> {
        let mut given = Given::default();
        if spec.secrets.iter().any(|r| r.path.is_some()) {
            self.ensure_tmpfs()?;
        }
        let values = by_name(a);
        for r in &spec.secrets {
            let data = values
                .get(r.name.as_str())
                .ok_or_else(|| SecretError::Missing(r.name.clone()))?;
            for (var, key) in &r.env {
                let v = data.data.get(key).ok_or_else(|| SecretError::NoKey {
                    secret: r.name.clone(),
                    key: key.clone(),
                })?;
                let v = std::str::from_utf8(v).map_err(|_| SecretError::NotText {
                    secret: r.name.clone(),
                    key: key.clone(),
                })?;
                given.env.push(format!("{var}={v}"));
            }
            if let Some(path) = &r.path {
                let dir = self.write(&a.id, data)?;
                self.written
                    .insert((a.id.clone(), r.name.clone()), data.version);
                given.mounts.push(Mount {
                    source: MountSource::Bind(dir),
                    target: path.clone(),
                    read_only: true,
                    owned: false,
                    secret: true,
                });
            }
        }
        Ok(given)
    }

    /// Rewrites the files of a running allocation's secrets whose version
    /// changed (a rotation). Whether any did.
    pub fn rotate(
        &mut self,
        a: &v1::Allocation,
        spec: &ContainerSpec,
    ) -> Result<bool, SecretError> {
        let values = by_name(a);
        let mut rotated = false;
        for r in spec.secrets.iter().filter(|r| r.path.is_some()) {
            let Some(data) = values.get(r.name.as_str()) else {
                continue;
            };
            let k = (a.id.clone(), r.name.clone());
            if self.written.get(&k) == Some(&data.version) {
                continue;
            }
            // Only into a directory a container was given (its mount).
            if !self.dir(&a.id, &r.name).is_dir() {
                continue;
            }
            self.write(&a.id, data)?;
            self.written.insert(k, data.version);
            rotated = true;
        }
        Ok(rotated)
    }

    /// Forgets an allocation's secrets (its container is gone).
    pub fn remove(&mut self, allocation: &str) {
        self.written.retain(|(a, _), _| a != allocation);
        let dir = self.root.join(allocation);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(allocation, error = %e, "remove secrets");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(secrets: &str) -> ContainerSpec {
        skiff_proto::parse_workloads(
            &format!("name: app\nimage: busybox\nsecrets: {secrets}\n"),
            skiff_proto::Format::Yaml,
        )
        .unwrap()
        .remove(0)
        .container_spec()
    }

    fn alloc(version: u64, password: &[u8]) -> v1::Allocation {
        v1::Allocation {
            id: "app-1".into(),
            secrets: vec![v1::SecretData {
                name: "db".into(),
                version,
                data: [("password".to_string(), password.to_vec())].into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn variables_come_from_keys_and_what_is_missing_is_named_without_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = NodeSecrets::new(dir.path());
        let s = spec("[{name: db, env: {PGPASSWORD: password}}]");
        let g = n.give(&alloc(1, b"hunter2"), &s).unwrap();
        assert_eq!(g.env, ["PGPASSWORD=hunter2"]);
        assert!(g.mounts.is_empty());
        let e = n
            .give(&v1::Allocation::default(), &s)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("secret db: the gateway sent no value"), "{e}");
        let s = spec("[{name: db, env: {X: user}}]");
        let e = n.give(&alloc(1, b"hunter2"), &s).unwrap_err().to_string();
        assert_eq!(e, "secret db: no key user");
        let s = spec("[{name: db, env: {X: password}}]");
        let e = n
            .give(&alloc(1, &[0xff, 0xfe]), &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not UTF-8") && !e.contains("255"), "{e}");
    }
}
