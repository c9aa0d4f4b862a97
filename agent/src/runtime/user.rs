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

fn passwd(layers: &[PathBuf]) -> Vec<Vec<String>> {
    read_from_layers(layers, "etc/passwd")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(':').map(str::to_string).collect())
        .filter(|f: &Vec<String>| f.len() >= 7)
        .collect()
}

fn groups(layers: &[PathBuf]) -> Vec<Vec<String>> {
    read_from_layers(layers, "etc/group")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(':').map(str::to_string).collect())
        .filter(|f: &Vec<String>| f.len() >= 3)
        .collect()
}

/// (uid, gid, supplementary gids) for a user spec; `""` is root.
pub fn resolve(layers: &[PathBuf], spec: &str) -> Result<(u32, u32, Vec<u32>), String> {
    if spec.is_empty() {
        return Ok((0, 0, Vec::new()));
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let users = passwd(layers);
    let (uid, default_gid, name) = match user.parse::<u32>() {
        Ok(uid) => {
            let entry = users.iter().find(|f| f[2] == user);
            (
                uid,
                entry.and_then(|f| f[3].parse().ok()).unwrap_or(uid),
                entry.map(|f| f[0].clone()),
            )
        }
        Err(_) => {
            let f = users
                .iter()
                .find(|f| f[0] == user)
                .ok_or_else(|| format!("no user {user:?} in the image's /etc/passwd"))?;
            let uid = f[2]
                .parse()
                .map_err(|_| format!("bad uid for {user:?} in /etc/passwd"))?;
            let gid = f[3]
                .parse()
                .map_err(|_| format!("bad gid for {user:?} in /etc/passwd"))?;
            (uid, gid, Some(user.to_string()))
        }
    };
    let all_groups = groups(layers);
    let gid = match group {
        None => default_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => all_groups
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("no group {g:?} in the image's /etc/group"))?,
        },
    };
    let supplementary = match &name {
        Some(n) => all_groups
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
pub fn home(layers: &[PathBuf], uid: u32) -> Option<String> {
    passwd(layers)
        .into_iter()
        .find(|f| f[2] == uid.to_string())
        .map(|f| f[5].clone())
        .filter(|h| !h.is_empty())
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
        let layers = vec![top, base];
        assert_eq!(resolve(&layers, "").unwrap(), (0, 0, vec![]));
        assert_eq!(resolve(&layers, "app").unwrap(), (1000, 1000, vec![10]));
        assert_eq!(resolve(&layers, "app:wheel").unwrap(), (1000, 10, vec![]));
        assert_eq!(resolve(&layers, "1000:5").unwrap(), (1000, 5, vec![10]));
        assert_eq!(resolve(&layers, "4242").unwrap(), (4242, 4242, vec![]));
        assert_eq!(
            resolve(&layers, "nobody").unwrap_err(),
            "no user \"nobody\" in the image's /etc/passwd"
        );
        assert_eq!(home(&layers, 1000).as_deref(), Some("/home/app"));
    }
}
