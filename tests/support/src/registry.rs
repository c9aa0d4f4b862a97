//! Debian's `docker-registry` (the CNCF distribution registry) on loopback.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::net::{free_port, wait_for_listener};
use crate::procs::ChildGuard;
use crate::tools::{require, run};

/// Basic-auth credentials a registry requires.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// A running registry; stopped and its storage removed on drop.
#[derive(Debug)]
pub struct Registry {
    addr: SocketAddr,
    credentials: Option<Credentials>,
    /// The CA that signed its certificate, when it serves HTTPS.
    ca: Option<std::path::PathBuf>,
    // Dropped first: stop the process before its directory goes.
    process: ChildGuard,
    dir: tempfile::TempDir,
}

impl Registry {
    /// An anonymous registry.
    pub fn start() -> Result<Self> {
        Self::start_with(None, [127, 0, 0, 1].into())
    }

    /// An anonymous registry on `ip` (an address of a test bridge, for
    /// agents in network namespaces), plain HTTP.
    pub fn start_on(ip: std::net::Ipv4Addr) -> Result<Self> {
        Self::start_with(None, ip)
    }

    /// A registry that requires these credentials (htpasswd, bcrypt).
    pub fn start_with_auth(username: &str, password: &str) -> Result<Self> {
        Self::start_with(
            Some(Credentials {
                username: username.into(),
                password: password.into(),
            }),
            [127, 0, 0, 1].into(),
        )
    }

    /// A registry serving HTTPS on `ip` (not loopback: agents reach
    /// loopback registries over plain HTTP), with a certificate for that
    /// address from a CA of its own, made with `openssl`; [`Registry::ca`]
    /// is the CA's PEM file.
    pub fn start_tls(ip: std::net::Ipv4Addr) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("skiff-registry-")
            .tempdir()?;
        let tls = make_certificates(dir.path(), ip)?;
        Self::start_in(dir, None, ip, Some(tls))
    }

    /// The CA certificate (PEM) of a registry started with
    /// [`Registry::start_tls`].
    pub fn ca(&self) -> Option<&std::path::Path> {
        self.ca.as_deref()
    }

    fn start_with(credentials: Option<Credentials>, ip: std::net::Ipv4Addr) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("skiff-registry-")
            .tempdir()?;
        Self::start_in(dir, credentials, ip, None)
    }

    fn start_in(
        dir: tempfile::TempDir,
        credentials: Option<Credentials>,
        ip: std::net::Ipv4Addr,
        tls: Option<Tls>,
    ) -> Result<Self> {
        let bin = require("docker-registry")?;
        let tls_config = match &tls {
            Some(t) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                t.cert.display(),
                t.key.display()
            ),
            None => String::new(),
        };
        let auth = match &credentials {
            Some(c) => {
                let htpasswd = require("htpasswd")?;
                let line = run(Command::new(htpasswd).args(["-Bbn", &c.username, &c.password]))?;
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, line.trim())?;
                format!(
                    "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                    path.display()
                )
            }
            None => String::new(),
        };
        // A port can be taken between free_port() and the bind: try a few.
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            let addr: SocketAddr = (ip, port).into();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{tls_config}{auth}",
                    dir.path().join("storage").display()
                ),
            )?;
            let log = std::fs::File::create(dir.path().join("registry.log"))?;
            let mut process = ChildGuard::spawn(
                "docker-registry",
                Command::new(&bin)
                    .arg("serve")
                    .arg(&config)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log),
            )?;
            match wait_for_listener(addr, Duration::from_secs(10)) {
                Ok(()) if process.is_running() => {
                    return Ok(Self {
                        addr,
                        credentials,
                        ca: tls.map(|t| t.ca),
                        process,
                        dir,
                    });
                }
                Ok(()) => last_err = Some(anyhow::anyhow!("docker-registry exited at start")),
                Err(e) => last_err = Some(e),
            }
        }
        let log = std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
        Err(last_err.unwrap()).context(format!("docker-registry did not start: {log}"))
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Where the registry keeps its blobs.
    pub fn storage_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("storage")
    }

    /// `skopeo` arguments that authenticate to this registry, if it needs it.
    pub fn skopeo_creds(&self, flag: &str) -> Vec<String> {
        match &self.credentials {
            Some(c) => vec![flag.into(), format!("{}:{}", c.username, c.password)],
            None => Vec::new(),
        }
    }
}

/// A registry's certificate, its key and the CA that signed it.
#[derive(Debug)]
struct Tls {
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

/// A CA and a server certificate for `ip` under `dir`, with `openssl` (as
/// an operator would make them).
fn make_certificates(dir: &std::path::Path, ip: std::net::Ipv4Addr) -> Result<Tls> {
    let openssl = require("openssl")?;
    let p = |name: &str| dir.join(name);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new(&openssl)
        .args([
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=skiff test registry CA",
        ])
        .args(ec)
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem")))?;
    run(Command::new(&openssl)
        .args(["req", "-subj", "/CN=skiff test registry"])
        .args(ec)
        .arg("-keyout")
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")))?;
    std::fs::write(p("san.ext"), format!("subjectAltName=IP:{ip}\n"))?;
    run(Command::new(&openssl)
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.pem"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-extfile")
        .arg(p("san.ext"))
        .arg("-out")
        .arg(p("server.pem")))?;
    Ok(Tls {
        ca: p("ca.pem"),
        cert: p("server.pem"),
        key: p("server.key"),
    })
}
