//! Resolving `--user` (`name`, `uid`, `uid:gid`, `name:group`) in the
//! image's own `/etc/passwd` and `/etc/group`, read from its layers.

use std::path::PathBuf;

/// The file at `rel` as the merged image sees it: the topmost layer that
/// has it, unless a whiteout hides it.
fn read_from_layers(layers: &[PathBuf], rel: &str) -> Option<String> {
    for layer in layers {
        let p = layer.join(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => return std::fs::read_to_string(p).ok(),
            // A whiteout (char device 0/0) or anything else hides lower copies.
            Ok(_) => return None,
            Err(_) => {}
        }
    }
    None
}

/// The image's accounts: its `/etc/passwd` and `/etc/group` as its merged
/// layers show them, parsed.
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    users: Vec<Vec<String>>,
    groups: Vec<Vec<String>>,
}

/// A user spec the image cannot resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("no user {0:?} in the image's /etc/passwd")]
    NoUser(String),
    #[error("bad {what} for {user:?} in /etc/passwd")]
    BadId { what: &'static str, user: String },
    #[error("no group {0:?} in the image's /etc/group")]
    NoGroup(String),
}

impl Accounts {
    /// Reads them from the layers (topmost first).
    pub fn of_layers(layers: &[PathBuf]) -> Self {
        Self::parse(
            &read_from_layers(layers, "etc/passwd").unwrap_or_default(),
            &read_from_layers(layers, "etc/group").unwrap_or_default(),
        )
    }

    /// From the two files' text.
    pub fn parse(passwd: &str, group: &str) -> Self {
        let fields = |text: &str, min: usize| -> Vec<Vec<String>> {
            text.lines()
                .map(|l| l.split(':').map(str::to_string).collect())
                .filter(|f: &Vec<String>| f.len() >= min)
                .collect()
        };
        Self {
            users: fields(passwd, 7),
            groups: fields(group, 3),
        }
    }

    /// (uid, gid, supplementary gids) for a user spec (`name`, `uid`,
    /// `uid:gid`, `name:group`); `""` is root.
    pub fn resolve(&self, spec: &str) -> Result<(u32, u32, Vec<u32>), UserError> {
        if spec.is_empty() {
            return Ok((0, 0, Vec::new()));
        }
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let (uid, default_gid, name) = match user.parse::<u32>() {
            Ok(uid) => {
                let entry = self.users.iter().find(|f| f[2] == user);
                (
                    uid,
                    entry.and_then(|f| f[3].parse().ok()).unwrap_or(uid),
                    entry.map(|f| f[0].clone()),
                )
            }
            Err(_) => {
                let f = self
                    .users
                    .iter()
                    .find(|f| f[0] == user)
                    .ok_or_else(|| UserError::NoUser(user.to_string()))?;
                let bad = |what| UserError::BadId {
                    what,
                    user: user.to_string(),
                };
                let uid = f[2].parse().map_err(|_| bad("uid"))?;
                let gid = f[3].parse().map_err(|_| bad("gid"))?;
                (uid, gid, Some(user.to_string()))
            }
        };
        let gid = match group {
            None => default_gid,
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => self
                    .groups
                    .iter()
                    .find(|f| f[0] == g)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| UserError::NoGroup(g.to_string()))?,
            },
        };
        let supplementary = match &name {
            Some(n) => self
                .groups
                .iter()
                .filter(|f| f.get(3).is_some_and(|m| m.split(',').any(|x| x == n)))
                .filter_map(|f| f[2].parse().ok())
                .filter(|g| *g != gid)
                .collect(),
            None => Vec::new(),
        };
        Ok((uid, gid, supplementary))
    }

    /// The user's home directory, if the image names one.
    pub fn home(&self, uid: u32) -> Option<String> {
        self.users
            .iter()
            .find(|f| f[2] == uid.to_string())
            .map(|f| f[5].clone())
            .filter(|h| !h.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ids_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        let base = dir.path().join("base");
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::write(
            base.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            top.join("etc/group"),
            "root:x:0:\napp:x:1000:\nwheel:x:10:app\n",
        )
        .unwrap();
        let a = Accounts::of_layers(&[top, base]);
        assert_eq!(a.resolve("").unwrap(), (0, 0, vec![]));
        assert_eq!(a.resolve("app").unwrap(), (1000, 1000, vec![10]));
        assert_eq!(a.resolve("app:wheel").unwrap(), (1000, 10, vec![]));
        assert_eq!(a.resolve("1000:5").unwrap(), (1000, 5, vec![10]));
        assert_eq!(a.resolve("4242").unwrap(), (4242, 4242, vec![]));
        assert_eq!(
            a.resolve("nobody").unwrap_err().to_string(),
            "no user \"nobody\" in the image's /etc/passwd"
        );
        assert_eq!(
            a.resolve("app:staff").unwrap_err().to_string(),
            "no group \"staff\" in the image's /etc/group"
        );
        assert_eq!(a.home(1000).as_deref(), Some("/home/app"));
    }
}
