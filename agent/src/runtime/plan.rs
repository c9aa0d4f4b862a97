//! The rules of `create`, apart from the kernel: the run options and the
//! image's config become the container's name, process (argv, env, user,
//! working directory, as Docker merges them), hostname and limits, or a
//! one-line error naming the field. [`super::Runtime::create`] then makes
//! what this decided (directories, network, `config.json`).

use skiff_proto::NetworkMode;

use super::spec::{Limits, ProcessSpec};
use super::user::Accounts;
use super::{RunOptions, RuntimeError};
use crate::images::ImageConfig;

/// What `create` makes, decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Planned {
    pub name: String,
    pub hostname: String,
    pub process: ProcessSpec,
    pub limits: Limits,
    pub network: NetworkMode,
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Decides a container `id` of `opts` on an image with config `image` and
/// accounts `accounts`; `name_taken` tells whether another container
/// has a name already.
pub(super) fn plan(
    opts: &RunOptions,
    id: &str,
    image: &ImageConfig,
    accounts: &Accounts,
    name_taken: impl Fn(&str) -> bool,
) -> Result<Planned, RuntimeError> {
    let invalid = |m: String| RuntimeError::Invalid(m);
    let name = match &opts.name {
        Some(n) => {
            let ok = !n.is_empty()
                && n.len() <= 128
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return Err(invalid(format!(
                    "name {n:?}: letters, digits, '_', '.' and '-' only"
                )));
            }
            if name_taken(n) {
                return Err(invalid(format!("name {n:?} is already in use")));
            }
            n.clone()
        }
        None => id[..12].to_string(),
    };
    if let Some(m) = opts.memory
        && m.bytes() < 4 << 20
    {
        return Err(invalid(format!("memory {m}: the minimum is 4Mi")));
    }
    if let Some(c) = opts.cpus
        && c.millis() == 0
    {
        return Err(invalid("cpus: must be more than 0".into()));
    }
    if let Some(h) = &opts.health {
        h.check("health").map_err(|e| invalid(e.to_string()))?;
    }
    if opts.log_max_bytes.is_some_and(|b| b < 4096) {
        return Err(invalid("log max size: the minimum is 4k".into()));
    }
    if opts.pids == Some(0) {
        return Err(invalid("pids: must be at least 1".into()));
    }
    let network = opts.network.unwrap_or(NetworkMode::Bridge);
    if network != NetworkMode::Bridge && opts.ports.iter().any(|p| p.host.is_some()) {
        return Err(invalid(format!(
            "ports: publishing needs the bridge network (this container's is {})",
            match network {
                NetworkMode::Host => "host",
                _ => "none",
            }
        )));
    }

    // ENTRYPOINT and CMD as Docker merges them: an entrypoint given drops
    // the image's CMD unless a command is given too.
    let mut args: Vec<String> = opts
        .entrypoint
        .clone()
        .unwrap_or_else(|| image.entrypoint.clone());
    if !opts.cmd.is_empty() {
        args.extend(opts.cmd.iter().cloned());
    } else if opts.entrypoint.is_none() {
        args.extend(image.cmd.iter().cloned());
    }
    if args.is_empty() {
        return Err(invalid(format!(
            "image {}: no command given and the image has none",
            opts.image
        )));
    }
    let mut env: Vec<String> = image.env.clone();
    merge_env(&mut env, &opts.env)?;
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.into());
    }
    let hostname = opts
        .hostname
        .clone()
        .unwrap_or_else(|| id[..12].to_string());
    env.push(format!("HOSTNAME={hostname}"));
    let user_spec = opts.user.as_deref().unwrap_or(&image.user);
    let (uid, gid, additional_gids) = accounts
        .resolve(user_spec)
        .map_err(|e| invalid(format!("user {user_spec:?}: {e}")))?;
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!(
            "HOME={}",
            accounts.home(uid).unwrap_or_else(|| "/".into())
        ));
    }
    let cwd = opts.workdir.clone().unwrap_or_else(|| {
        if image.working_dir.is_empty() {
            "/".into()
        } else {
            image.working_dir.clone()
        }
    });
    if !cwd.starts_with('/') {
        return Err(invalid(format!("workdir {cwd:?} must be absolute")));
    }
    Ok(Planned {
        name,
        hostname,
        process: ProcessSpec {
            args,
            env,
            cwd,
            uid,
            gid,
            additional_gids,
        },
        limits: Limits {
            memory: opts.memory.map(|m| m.bytes()),
            cpu_millis: opts.cpus.map(|c| c.millis()),
            pids: opts.pids,
        },
        network,
    })
}

/// Adds `KEY=VALUE` entries to an environment, each replacing the entry
/// of its key.
pub(super) fn merge_env(env: &mut Vec<String>, extra: &[String]) -> Result<(), RuntimeError> {
    for e in extra {
        let Some((k, _)) = e.split_once('=') else {
            return Err(RuntimeError::Invalid(format!("env {e:?} is not KEY=VALUE")));
        };
        env.retain(|x| x.split_once('=').map(|(xk, _)| xk) != Some(k));
        env.push(e.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123";

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into(), "--port=80".into()],
            env: vec!["PATH=/app/bin".into(), "MODE=prod".into()],
            working_dir: "/app".into(),
            user: "app".into(),
            ..ImageConfig::default()
        }
    }

    fn accounts() -> Accounts {
        Accounts::parse(
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
            "root:x:0:\napp:x:1000:\nwheel:x:10:app\n",
        )
    }

    fn run(opts: RunOptions) -> Result<Planned, RuntimeError> {
        plan(&opts, ID, &image(), &accounts(), |n| n == "taken")
    }

    fn opts() -> RunOptions {
        RunOptions {
            image: "shop/web:1".into(),
            ..RunOptions::default()
        }
    }

    fn error(opts: RunOptions) -> String {
        run(opts).unwrap_err().to_string()
    }

    #[test]
    fn the_image_decides_what_the_options_leave_out() {
        let p = run(opts()).unwrap();
        assert_eq!(p.name, "0123456789ab");
        assert_eq!(p.hostname, "0123456789ab");
        assert_eq!(p.process.args, ["/entry", "serve", "--port=80"]);
        assert_eq!(
            p.process.env,
            [
                "PATH=/app/bin",
                "MODE=prod",
                "HOSTNAME=0123456789ab",
                "HOME=/home/app"
            ]
        );
        assert_eq!(p.process.cwd, "/app");
        assert_eq!(
            (p.process.uid, p.process.gid, p.process.additional_gids),
            (1000, 1000, vec![10])
        );
        assert_eq!(p.limits, Limits::default());
        assert_eq!(p.network, NetworkMode::Bridge);
    }

    #[test]
    fn entrypoint_cmd_and_env_merge_as_docker_merges_them() {
        // A command replaces CMD, keeps ENTRYPOINT.
        let p = run(RunOptions {
            cmd: vec!["migrate".into()],
            ..opts()
        })
        .unwrap();
        assert_eq!(p.process.args, ["/entry", "migrate"]);
        // An entrypoint drops CMD...
        let p = run(RunOptions {
            entrypoint: Some(vec!["/bin/sh".into()]),
            ..opts()
        })
        .unwrap();
        assert_eq!(p.process.args, ["/bin/sh"]);
        // ...unless a command is given too.
        let p = run(RunOptions {
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: vec!["echo hi".into()],
            ..opts()
        })
        .unwrap();
        assert_eq!(p.process.args, ["/bin/sh", "-c", "echo hi"]);
        // Given variables replace the image's; PATH is set when nobody
        // sets it; HOME is the user's, unless given.
        let p = run(RunOptions {
            env: vec!["MODE=dev".into(), "HOME=/data".into()],
            user: Some("root".into()),
            ..opts()
        })
        .unwrap();
        assert_eq!(
            p.process.env,
            [
                "PATH=/app/bin",
                "MODE=dev",
                "HOME=/data",
                "HOSTNAME=0123456789ab"
            ]
        );
        let bare = ImageConfig {
            cmd: vec!["sh".into()],
            ..ImageConfig::default()
        };
        let p = plan(&opts(), ID, &bare, &Accounts::default(), |_| false).unwrap();
        assert!(p.process.env.contains(&DEFAULT_PATH.to_string()));
        assert!(p.process.env.contains(&"HOME=/".to_string()));
        assert_eq!((p.process.uid, p.process.cwd.as_str()), (0, "/"));
    }

    #[test]
    fn options_override_the_image_and_limits_are_taken() {
        let p = run(RunOptions {
            name: Some("web-1".into()),
            hostname: Some("web".into()),
            user: Some("1000:10".into()),
            workdir: Some("/srv".into()),
            memory: Some("64Mi".parse().unwrap()),
            cpus: Some("500m".parse().unwrap()),
            pids: Some(100),
            network: Some(NetworkMode::Host),
            ..opts()
        })
        .unwrap();
        assert_eq!((p.name.as_str(), p.hostname.as_str()), ("web-1", "web"));
        assert_eq!((p.process.uid, p.process.gid), (1000, 10));
        assert_eq!(p.process.cwd, "/srv");
        assert_eq!(
            p.limits,
            Limits {
                memory: Some(64 << 20),
                cpu_millis: Some(500),
                pids: Some(100)
            }
        );
        assert_eq!(p.network, NetworkMode::Host);
    }

    #[test]
    fn bad_options_are_named_in_one_line() {
        let cases: Vec<(RunOptions, &str)> = vec![
            (
                RunOptions {
                    name: Some("a b".into()),
                    ..opts()
                },
                "name \"a b\": letters, digits, '_', '.' and '-' only",
            ),
            (
                RunOptions {
                    name: Some("taken".into()),
                    ..opts()
                },
                "name \"taken\" is already in use",
            ),
            (
                RunOptions {
                    memory: Some("1Mi".parse().unwrap()),
                    ..opts()
                },
                "memory 1Mi: the minimum is 4Mi",
            ),
            (
                RunOptions {
                    pids: Some(0),
                    ..opts()
                },
                "pids: must be at least 1",
            ),
            (
                RunOptions {
                    log_max_bytes: Some(10),
                    ..opts()
                },
                "log max size: the minimum is 4k",
            ),
            (
                RunOptions {
                    network: Some(NetworkMode::None),
                    ports: vec![skiff_proto::PortSpec {
                        container: 80,
                        host: Some(8080),
                        protocol: skiff_proto::Protocol::Tcp,
                        host_ip: None,
                    }],
                    ..opts()
                },
                "ports: publishing needs the bridge network (this container's is none)",
            ),
            (
                RunOptions {
                    env: vec!["NOVALUE".into()],
                    ..opts()
                },
                "env \"NOVALUE\" is not KEY=VALUE",
            ),
            (
                RunOptions {
                    user: Some("ghost".into()),
                    ..opts()
                },
                "user \"ghost\": no user \"ghost\" in the image's /etc/passwd",
            ),
            (
                RunOptions {
                    workdir: Some("srv".into()),
                    ..opts()
                },
                "workdir \"srv\" must be absolute",
            ),
        ];
        for (o, want) in cases {
            assert_eq!(error(o), want);
        }
        let empty = ImageConfig::default();
        let e = plan(&opts(), ID, &empty, &Accounts::default(), |_| false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "image shop/web:1: no command given and the image has none"
        );
    }
}
