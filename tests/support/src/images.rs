//! Small OCI images built from `busybox-static`, the way an image build
//! would make them, with `umoci` (layout) and `skopeo` (archives, push).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::registry::Registry;
use crate::tools::{require, run};

/// Busybox applets linked into test images; enough for tests and probes.
pub const APPLETS: &[&str] = &[
    "sh", "true", "false", "echo", "cat", "sleep", "ls", "id", "env", "ps", "kill", "mount",
    "hostname", "httpd", "nc", "wget", "ip", "ping", "dd", "head", "yes", "seq", "grep", "wc",
    "touch", "mkdir", "rm", "date", "uname", "pwd", "stat", "chmod", "printf", "tail", "test",
    "find", "readlink", "od", "tr", "cut", "uniq",
];

/// An OCI image layout directory holding one tagged image.
#[derive(Debug)]
pub struct OciImage {
    /// The layout directory (`oci-layout`, `index.json`, `blobs/`).
    pub layout: PathBuf,
    pub tag: String,
    work: PathBuf,
}

/// Files for one extra layer: (path inside the image, contents);
/// executables (ELF or `#!`) get mode 0755.
pub type LayerFiles = Vec<(String, Vec<u8>)>;

/// A layer with `/bin/udp-echo PORT`, a static UDP echo server (busybox
/// `nc` has no UDP), compiled with `rustc` into `work`.
pub fn udp_echo_layer(work: &Path) -> Result<LayerFiles> {
    let src = work.join("udp_echo.rs");
    std::fs::write(&src, include_str!("../helpers/udp_echo.rs"))?;
    let out = work.join("udp-echo");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    run(Command::new(rustc)
        .args(["--edition", "2021", "-C", "opt-level=1"])
        .args([
            "-C",
            "target-feature=+crt-static",
            "-C",
            "strip=symbols",
            "-o",
        ])
        .arg(&out)
        .arg(&src))?;
    Ok(vec![("/bin/udp-echo".into(), std::fs::read(&out)?)])
}

/// Sets every entry under `dir` (symlinks themselves, not their targets)
/// to one fixed time, so the same files always make the same layer
/// whenever the image is built.
fn fixed_times(dir: &Path) -> Result<()> {
    let t = libc::timespec {
        tv_sec: 1_700_000_000,
        tv_nsec: 0,
    };
    let times = [t, t];
    let mut stack = vec![dir.to_path_buf()];
    let mut all = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
            all.push(e.path());
        }
    }
    all.push(dir.to_path_buf());
    for p in all {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())?;
        // SAFETY: a valid C string and a two-element array, as utimensat wants.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("set the time of {}", p.display()));
        }
    }
    Ok(())
}

/// Fills `rootfs` with a small busybox system: `/bin/busybox` and its
/// [`APPLETS`] as symlinks, `/etc/passwd` and `/etc/group` (root, nobody,
/// app:1000), `/www/index.html`, and the usual empty directories.
pub fn busybox_rootfs(rootfs: &Path) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    anyhow::ensure!(
        busybox.is_file(),
        "/bin/busybox is missing: install busybox-static (scripts/test does)"
    );
    for dir in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "www"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\napp:x:1000:1000:app:/tmp:/bin/sh\n",
    )?;
    std::fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\nnogroup:x:65534:\napp:x:1000:\n",
    )?;
    std::fs::write(rootfs.join("www/index.html"), "hello from skiff\n")?;
    Ok(())
}

impl OciImage {
    /// A busybox image tagged `tag` in a layout under `work`, with one base
    /// layer (busybox and its applets) and one layer per entry of `extra`.
    pub fn busybox(work: &Path, tag: &str, extra: &[LayerFiles]) -> Result<Self> {
        let umoci = require("umoci")?;
        let layout = work.join("layout");
        let image = format!("{}:{tag}", layout.display());
        run(Command::new(&umoci).args(["init", "--layout"]).arg(&layout))?;
        run(Command::new(&umoci).args(["new", "--image", &image]))?;
        let bundle = work.join("bundle");
        run(Command::new(&umoci)
            .args(["unpack", "--image", &image])
            .arg(&bundle))?;
        let rootfs = bundle.join("rootfs");
        busybox_rootfs(&rootfs)?;
        fixed_times(&rootfs)?;
        run(Command::new(&umoci)
            .args(["repack", "--image", &image])
            .arg(&bundle))?;
        for files in extra {
            // umoci diffs against the manifest the bundle was unpacked
            // from, so each new layer needs a fresh unpack.
            std::fs::remove_dir_all(&bundle)?;
            run(Command::new(&umoci)
                .args(["unpack", "--image", &image])
                .arg(&bundle))?;
            for (path, contents) in files {
                let target = rootfs.join(path.trim_start_matches('/'));
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&target, contents)?;
                if contents.starts_with(b"\x7fELF") || contents.starts_with(b"#!") {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
                }
            }
            fixed_times(&rootfs)?;
            run(Command::new(&umoci)
                .args(["repack", "--image", &image])
                .arg(&bundle))?;
        }
        run(Command::new(&umoci).args([
            "config",
            "--image",
            &image,
            "--config.cmd",
            "/bin/sh",
            "--config.env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--config.workingdir",
            "/",
        ]))?;
        run(Command::new(&umoci).args(["gc", "--layout"]).arg(&layout))?;
        std::fs::remove_dir_all(&bundle)?;
        Ok(Self {
            layout,
            tag: tag.to_string(),
            work: work.to_path_buf(),
        })
    }

    /// `oci:DIR:TAG`, the skopeo transport name of this image.
    pub fn transport(&self) -> String {
        format!("oci:{}:{}", self.layout.display(), self.tag)
    }

    /// The image manifest, read from the layout.
    pub fn manifest(&self) -> Result<Value> {
        let index: Value = serde_json::from_slice(&std::fs::read(self.layout.join("index.json"))?)?;
        let digest = index["manifests"]
            .as_array()
            .and_then(|m| {
                m.iter().find(|d| {
                    d["annotations"]["org.opencontainers.image.ref.name"].as_str()
                        == Some(self.tag.as_str())
                })
            })
            .and_then(|d| d["digest"].as_str())
            .context("the layout's index.json names no manifest for the tag")?;
        let (algo, hex) = digest.split_once(':').context("bad digest")?;
        Ok(serde_json::from_slice(&std::fs::read(
            self.layout.join("blobs").join(algo).join(hex),
        )?)?)
    }

    /// Digests of the image's layers, base first.
    pub fn layer_digests(&self) -> Result<Vec<String>> {
        Ok(self.manifest()?["layers"]
            .as_array()
            .context("manifest has no layers")?
            .iter()
            .filter_map(|l| l["digest"].as_str().map(str::to_string))
            .collect())
    }

    /// Writes an `oci-archive` tar (a tarred OCI layout).
    pub fn oci_archive(&self) -> Result<PathBuf> {
        let path = self.work.join("image.oci.tar");
        self.skopeo_copy(&format!("oci-archive:{}:{}", path.display(), self.tag))?;
        Ok(path)
    }

    /// Writes a `docker-archive` tar (what `docker save` writes), naming the
    /// image `name` (e.g. `skiff/busybox:test`).
    pub fn docker_archive(&self, name: &str) -> Result<PathBuf> {
        let path = self.work.join("image.docker.tar");
        self.skopeo_copy(&format!("docker-archive:{}:{name}", path.display()))?;
        Ok(path)
    }

    /// Pushes to `registry` as `repository:tag`; returns the reference.
    pub fn push(&self, registry: &Registry, repository: &str) -> Result<String> {
        let reference = format!("{}/{repository}:{}", registry.host(), self.tag);
        let skopeo = require("skopeo")?;
        run(Command::new(skopeo)
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(registry.skopeo_creds("--dest-creds"))
            .arg(self.transport())
            .arg(format!("docker://{reference}")))?;
        Ok(reference)
    }

    fn skopeo_copy(&self, dest: &str) -> Result<()> {
        let skopeo = require("skopeo")?;
        run(Command::new(skopeo)
            .args(["copy", "--quiet"])
            .arg(self.transport())
            .arg(dest))?;
        Ok(())
    }
}

/// `skopeo inspect` of an image reference (`docker://…`, `oci-archive:…`).
pub fn inspect(transport_ref: &str, extra_args: &[String]) -> Result<Value> {
    let skopeo = require("skopeo")?;
    let out = run(Command::new(skopeo)
        .args(["inspect", "--tls-verify=false"])
        .args(extra_args)
        .arg(transport_ref))?;
    Ok(serde_json::from_str(&out)?)
}

/// Copies any skopeo source (`oci:DIR:TAG`, …) to `registry` as
/// `repository:tag`, all platforms of an index included; returns the
/// reference.
pub fn push_transport(registry: &Registry, source: &str, repo_tag: &str) -> Result<String> {
    let reference = format!("{}/{repo_tag}", registry.host());
    let skopeo = require("skopeo")?;
    run(Command::new(skopeo)
        .args([
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .args(registry.skopeo_creds("--dest-creds"))
        .arg(source)
        .arg(format!("docker://{reference}")))?;
    Ok(reference)
}
