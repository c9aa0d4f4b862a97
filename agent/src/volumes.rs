//! The node's volumes: host directories the operator publishes by name
//! (`[volumes.NAME] path = "/srv/data"`) and local volumes the agent keeps
//! under `STATE/volumes/ID`, one directory each, named by the gateway
//! (`WORKLOAD.VOLUME.INSTANCE`). [`NodeVolumes::mounts`] turns a
//! workload's volumes and mounts into the runtime's mounts; it only reads
//! the configuration, so it is tested without root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use skiff_proto::{ContainerSpec, is_valid_name};

use crate::runtime::spec::{Mount, MountSource};

/// A host directory the node publishes to workloads under a name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostVolume {
    /// An absolute path to an existing directory.
    pub path: PathBuf,
    /// Mounted read-only whatever the workload asks.
    #[serde(default)]
    pub read_only: bool,
}

/// Why a workload's volumes cannot be mounted here.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("this node does not publish host volume {0:?} (its agent config has no [volumes.{0}])")]
    NotPublished(String),
    #[error("volume {volume}: no local volume id from the gateway")]
    NoId { volume: String },
    #[error("volume {volume}: {id:?} is not a local volume id (NAME.NAME.N)")]
    BadId { volume: String, id: String },
    #[error("mount of {0:?}: no such volume")]
    Unknown(String),
    #[error("local volume {id}: its size limit")]
    Quota {
        id: String,
        #[source]
        source: crate::quota::QuotaError,
    },
    #[error("local volume {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Checks `[volumes.NAME]` of the agent's config: valid names, absolute
/// paths to directories that exist.
pub fn validate(volumes: &BTreeMap<String, HostVolume>) -> Result<(), (String, String)> {
    for (name, v) in volumes {
        let key = format!("volumes.{name}");
        if !is_valid_name(name) {
            return Err((
                key,
                format!("{name:?} is not a volume name (lowercase letters, digits and '-')"),
            ));
        }
        if !v.path.is_absolute() {
            return Err((
                format!("{key}.path"),
                format!("{} is not an absolute path", v.path.display()),
            ));
        }
        if !v.path.is_dir() {
            return Err((
                format!("{key}.path"),
                format!("{} is not a directory", v.path.display()),
            ));
        }
    }
    Ok(())
}

/// Whether `id` names a local volume (`[NAMESPACE.]WORKLOAD.VOLUME.INSTANCE`):
/// never a path, so it cannot leave the volumes directory.
pub fn is_volume_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('.').collect();
    let (names, n) = match parts.as_slice() {
        [names @ .., n] if names.len() == 2 || names.len() == 3 => (names, n),
        _ => return false,
    };
    names.iter().all(|p| is_valid_name(p)) && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
}

/// What the node offers.
#[derive(Debug, Clone)]
pub struct NodeVolumes {
    pub host: BTreeMap<String, HostVolume>,
    /// `STATE/volumes`.
    pub local_root: PathBuf,
}

impl NodeVolumes {
    pub fn new(host: BTreeMap<String, HostVolume>, state_dir: &Path) -> Self {
        Self {
            host,
            local_root: state_dir.join("volumes"),
        }
    }

    /// The agent's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.local_root
            .parent()
            .map_or_else(|| self.local_root.clone(), Path::to_path_buf)
    }

    /// The directory of local volume `id`.
    pub fn local_dir(&self, id: &str) -> PathBuf {
        self.local_root.join(id)
    }

    /// The runtime mounts for a container of `spec`; `local` names each
    /// local volume's id (volume name → id, from the gateway). Local
    /// volumes' directories are made by [`NodeVolumes::make_local`].
    pub fn mounts(
        &self,
        spec: &ContainerSpec,
        local: &BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, VolumeError> {
        spec.mounts
            .iter()
            .map(|m| {
                let v = spec
                    .volumes
                    .iter()
                    .find(|v| v.name == m.volume)
                    .ok_or_else(|| VolumeError::Unknown(m.volume.clone()))?;
                let (source, read_only, owned) = if let Some(h) = &v.host {
                    let published = self
                        .host
                        .get(h)
                        .ok_or_else(|| VolumeError::NotPublished(h.clone()))?;
                    (
                        MountSource::Bind(published.path.clone()),
                        m.read_only || published.read_only,
                        false,
                    )
                } else if let Some(t) = v.tmpfs {
                    (
                        MountSource::Tmpfs {
                            size: t.size.bytes(),
                        },
                        m.read_only,
                        false,
                    )
                } else {
                    let id = local.get(&v.name).ok_or_else(|| VolumeError::NoId {
                        volume: v.name.clone(),
                    })?;
                    if !is_volume_id(id) {
                        return Err(VolumeError::BadId {
                            volume: v.name.clone(),
                            id: id.clone(),
                        });
                    }
                    (MountSource::Bind(self.local_dir(id)), m.read_only, true)
                };
                Ok(Mount {
                    source,
                    target: m.path.clone(),
                    read_only,
                    owned,
                    secret: false,
                })
            })
            .collect()
    }

    /// Makes the local volumes' directories that do not exist yet (mode
    /// 0755, root's until a container's user is given an empty one), and
    /// holds each to its `size` where the filesystem can ([`crate::quota`];
    /// where it cannot, [`NodeVolumes::quota_missing`] told the gateway).
    pub fn make_local(
        &self,
        spec: &ContainerSpec,
        local: &BTreeMap<String, String>,
    ) -> Result<(), VolumeError> {
        let mut quotas = None;
        for (name, id) in local.iter().filter(|(_, id)| is_volume_id(id)) {
            let path = self.local_dir(id);
            std::fs::create_dir_all(&path).map_err(|source| VolumeError::Io {
                path: path.clone(),
                source,
            })?;
            let size = spec
                .volumes
                .iter()
                .find(|v| &v.name == name)
                .and_then(|v| v.local?.size);
            let Some(size) = size else { continue };
            if *quotas.get_or_insert_with(|| self.quota_missing().is_none()) {
                crate::quota::limit(&path, size.bytes()).map_err(|source| VolumeError::Quota {
                    id: id.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Why local volumes cannot be held to a size on this node (their
    /// filesystem has no project quotas); none when they can.
    pub fn quota_missing(&self) -> Option<String> {
        if let Err(source) = std::fs::create_dir_all(&self.local_root) {
            return Some(format!("{}: {source}", self.local_root.display()));
        }
        crate::quota::probe(&self.local_root)
            .err()
            .map(|e| e.to_string())
    }

    /// The local volumes this node holds (their ids).
    pub fn held(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(&self.local_root) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|id| is_volume_id(id))
            .collect();
        ids.sort();
        ids
    }

    /// Removes local volume `id` and its data (nothing if it is not here).
    pub fn remove_local(&self, id: &str) -> Result<(), VolumeError> {
        if !is_volume_id(id) {
            return Ok(());
        }
        let path = self.local_dir(id);
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(VolumeError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::{ByteSize, LocalVolume, MountSpec, TmpfsVolume, VolumeSpec, WorkloadSpec};

    fn spec(volumes: Vec<VolumeSpec>, mounts: Vec<MountSpec>) -> ContainerSpec {
        let mut w: WorkloadSpec =
            skiff_proto::parse_workloads("name: db\nimage: busybox\n", skiff_proto::Format::Yaml)
                .unwrap()
                .remove(0);
        w.volumes = volumes;
        w.mounts = mounts;
        w.container_spec()
    }

    fn vol(name: &str) -> VolumeSpec {
        VolumeSpec {
            name: name.into(),
            host: None,
            local: None,
            tmpfs: None,
        }
    }

    fn mount(volume: &str, path: &str, read_only: bool) -> MountSpec {
        MountSpec {
            volume: volume.into(),
            path: path.into(),
            read_only,
        }
    }

    fn node() -> NodeVolumes {
        let mut host = BTreeMap::new();
        host.insert(
            "data".to_string(),
            HostVolume {
                path: "/srv/data".into(),
                read_only: false,
            },
        );
        host.insert(
            "certs".to_string(),
            HostVolume {
                path: "/etc/ssl/certs".into(),
                read_only: true,
            },
        );
        NodeVolumes::new(host, Path::new("/var/lib/skiff"))
    }

    #[test]
    fn each_kind_becomes_its_mount() {
        let s = spec(
            vec![
                VolumeSpec {
                    host: Some("data".into()),
                    ..vol("d")
                },
                VolumeSpec {
                    host: Some("certs".into()),
                    ..vol("c")
                },
                VolumeSpec {
                    local: Some(LocalVolume::default()),
                    ..vol("pg")
                },
                VolumeSpec {
                    tmpfs: Some(TmpfsVolume {
                        size: ByteSize::from_bytes(1 << 20),
                    }),
                    ..vol("scratch")
                },
            ],
            vec![
                mount("d", "/data", true),
                mount("c", "/certs", false),
                mount("pg", "/var/lib/postgresql", false),
                mount("scratch", "/tmp", false),
            ],
        );
        let local = BTreeMap::from([("pg".to_string(), "db.pg.0".to_string())]);
        let m = node().mounts(&s, &local).unwrap();
        assert_eq!(m[0].source, MountSource::Bind("/srv/data".into()));
        assert!(m[0].read_only && !m[0].owned);
        // The node's read_only wins over the workload's read-write.
        assert!(m[1].read_only);
        assert_eq!(
            m[2].source,
            MountSource::Bind("/var/lib/skiff/volumes/db.pg.0".into())
        );
        assert!(m[2].owned && !m[2].read_only);
        assert_eq!(m[2].target, "/var/lib/postgresql");
        assert_eq!(m[3].source, MountSource::Tmpfs { size: 1 << 20 });
    }

    #[test]
    fn a_host_volume_the_node_does_not_publish_is_refused_by_name() {
        let s = spec(
            vec![VolumeSpec {
                host: Some("logs".into()),
                ..vol("l")
            }],
            vec![mount("l", "/logs", false)],
        );
        let e = node().mounts(&s, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "this node does not publish host volume \"logs\" (its agent config has no [volumes.logs])"
        );
    }

    #[test]
    fn a_local_volume_id_is_never_a_path() {
        let s = spec(
            vec![VolumeSpec {
                local: Some(LocalVolume::default()),
                ..vol("pg")
            }],
            vec![mount("pg", "/data", false)],
        );
        for bad in [
            "../../etc",
            "db.pg",
            "db/pg/0",
            "db.pg.0/..",
            ".",
            "db.PG.0",
        ] {
            let local = BTreeMap::from([("pg".to_string(), bad.to_string())]);
            let e = node().mounts(&s, &local).unwrap_err();
            assert!(matches!(e, VolumeError::BadId { .. }), "{bad}: {e}");
        }
        assert!(matches!(
            node().mounts(&s, &BTreeMap::new()).unwrap_err(),
            VolumeError::NoId { .. }
        ));
        assert!(is_volume_id("db.pg.12"));
        assert!(is_volume_id("team-a.db.pg.0"));
        for bad in ["../x.y.0", "a.b.c.d.0", "db.pg", "db..pg.0", "db.pg.x"] {
            assert!(!is_volume_id(bad), "{bad}");
        }
    }

    #[test]
    fn local_volumes_are_made_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let n = NodeVolumes::new(BTreeMap::new(), dir.path());
        assert!(n.held().is_empty());
        let local = BTreeMap::from([
            ("a".to_string(), "db.a.0".to_string()),
            ("b".to_string(), "db.b.0".to_string()),
        ]);
        // A size is held where the filesystem can, and is no error where
        // it cannot (the gateway was told).
        let s = spec(
            vec![
                VolumeSpec {
                    local: Some(LocalVolume {
                        size: Some(skiff_proto::ByteSize::from_bytes(1 << 20)),
                        ..LocalVolume::default()
                    }),
                    ..vol("a")
                },
                VolumeSpec {
                    local: Some(LocalVolume::default()),
                    ..vol("b")
                },
            ],
            vec![],
        );
        n.make_local(&s, &local).unwrap();
        std::fs::write(n.local_dir("db.a.0").join("f"), "x").unwrap();
        // Made again: the data stays.
        n.make_local(&s, &local).unwrap();
        assert!(n.local_dir("db.a.0").join("f").exists());
        assert_eq!(n.held(), vec!["db.a.0", "db.b.0"]);
        n.remove_local("db.a.0").unwrap();
        n.remove_local("db.a.0").unwrap();
        n.remove_local("../x").unwrap();
        assert_eq!(n.held(), vec!["db.b.0"]);
    }

    #[test]
    fn published_volumes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ok = BTreeMap::from([(
            "data".to_string(),
            HostVolume {
                path: dir.path().into(),
                read_only: false,
            },
        )]);
        validate(&ok).unwrap();
        let cases = [
            ("Data", dir.path().to_path_buf(), "volumes.Data"),
            ("data", PathBuf::from("srv"), "volumes.data.path"),
            ("data", dir.path().join("missing"), "volumes.data.path"),
        ];
        for (name, path, key) in cases {
            let v = BTreeMap::from([(
                name.to_string(),
                HostVolume {
                    path,
                    read_only: false,
                },
            )]);
            assert_eq!(validate(&v).unwrap_err().0, key);
        }
    }
}
