//! Images as people actually have them, built by the tools they build them
//! with (all from Debian's packages): `umoci insert` and `repack`,
//! `buildah` from scratch, a Debian root filesystem from `mmdebstrap`
//! imported as one plain layer (what `docker import` makes), and layers
//! written by GNU tar with sparse files, long and non-UTF-8 names and
//! thousands of symlinks. The agent's corpus tests import or pull each one
//! and check, from inside a container, what the image meant.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::images::busybox_rootfs;
use crate::tools::{require, run};

/// Contents of the files the umoci image's layers add or hide.
pub const OLD_PAGE: &str = "old page\n";
pub const NEW_PAGE: &str = "new page\n";

/// An OCI layout (tag `v1`) made with `umoci`:
///
/// 1. `umoci insert ROOTFS /`: a busybox root filesystem, whose layer
///    carries a `/` entry (with `/etc/removed` and `/www/old.html`);
/// 2. `umoci insert --opaque DIR /www`: `/www` replaced by a directory
///    holding only `new.html` (an opaque whiteout);
/// 3. `umoci insert --whiteout /etc/removed`;
/// 4. `umoci unpack` + `repack` of a bundle where `/bin/caps/busybox`
///    has the file capability `cap_net_raw+ep` (`setcap`), `/bin/suid` is
///    set-uid root and `/bin/linked-a` and `/bin/linked-b` are one file.
pub fn umoci_image(work: &Path) -> Result<PathBuf> {
    let umoci = require("umoci")?;
    let setcap = require("setcap")?;
    let layout = work.join("umoci-layout");
    let image = format!("{}:v1", layout.display());
    let root = work.join("umoci-root");
    busybox_rootfs(&root)?;
    std::fs::write(root.join("etc/removed"), "to be removed\n")?;
    std::fs::write(root.join("www/old.html"), OLD_PAGE)?;
    let www = work.join("umoci-www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("new.html"), NEW_PAGE)?;

    run(Command::new(&umoci).args(["init", "--layout"]).arg(&layout))?;
    run(Command::new(&umoci).args(["new", "--image", &image]))?;
    run(Command::new(&umoci)
        .args(["insert", "--image", &image])
        .arg(&root)
        .arg("/"))?;
    run(Command::new(&umoci)
        .args(["insert", "--opaque", "--image", &image])
        .arg(&www)
        .arg("/www"))?;
    run(Command::new(&umoci).args(["insert", "--whiteout", "--image", &image, "/etc/removed"]))?;

    let bundle = work.join("umoci-bundle");
    run(Command::new(&umoci)
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(bin.join("caps"))?;
    std::fs::copy("/bin/busybox", bin.join("caps/busybox"))?;
    run(Command::new(&setcap)
        .arg("cap_net_raw+ep")
        .arg(bin.join("caps/busybox")))?;
    std::fs::copy("/bin/busybox", bin.join("suid"))?;
    set_mode(&bin.join("suid"), 0o4755)?;
    std::fs::write(bin.join("linked-a"), "one inode\n")?;
    std::fs::hard_link(bin.join("linked-a"), bin.join("linked-b"))?;
    run(Command::new(&umoci)
        .args(["repack", "--image", &image])
        .arg(&bundle))?;
    configure(&umoci, &image)?;
    std::fs::remove_dir_all(&bundle)?;
    Ok(layout)
}

fn configure(umoci: &Path, image: &str) -> Result<()> {
    run(Command::new(umoci).args([
        "config",
        "--image",
        image,
        "--config.cmd",
        "/bin/sh",
        "--config.env",
        "PATH=/bin",
    ]))?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// An `oci-archive` written by `buildah commit` of a container made
/// `from scratch` with a busybox root filesystem `copy`'d in, named
/// `bh:v1` (buildah writes one uncompressed layer).
pub fn buildah_image(work: &Path) -> Result<PathBuf> {
    let buildah = require("buildah")?;
    let root = work.join("buildah-root");
    busybox_rootfs(&root)?;
    std::fs::write(root.join("etc/motd"), "built by buildah\n")?;
    let store = work.join("buildah-store");
    let b = || {
        let mut c = Command::new(&buildah);
        c.arg("--root")
            .arg(store.join("root"))
            .arg("--runroot")
            .arg(store.join("run"))
            .args(["--storage-driver", "vfs"]);
        c
    };
    let container = run(b().args(["from", "--quiet", "scratch"]))?
        .trim()
        .to_string();
    run(b().arg("copy").arg(&container).arg(&root).arg("/"))?;
    run(b().args([
        "config",
        "--cmd",
        "/bin/sh",
        "--env",
        "PATH=/bin",
        &container,
    ]))?;
    let archive = work.join("bh.tar");
    run(b()
        .args(["commit", "--quiet", "--format", "oci", &container])
        .arg(format!("oci-archive:{}:bh:v1", archive.display())))?;
    run(b().args(["rm", &container]))?;
    // buildah's vfs store keeps its layers with their owners; remove it now
    // rather than leaving it to the temporary directory.
    let _ = std::fs::remove_dir_all(&store);
    Ok(archive)
}

/// A Debian root filesystem (bookworm, `--variant=essential`) as one tar,
/// made by `mmdebstrap`: device nodes under `/dev`, set-uid binaries
/// (`su`), hard links (`perl5.36.0`), absolute symlinks
/// (`/etc/alternatives`). It takes half a minute and the Debian mirror, so
/// it is kept in `$SKIFF_TEST_CACHE` (default `/var/tmp/skiff-test-cache`)
/// and made again only when missing.
pub fn debian_rootfs() -> Result<PathBuf> {
    let cache = PathBuf::from(
        std::env::var_os("SKIFF_TEST_CACHE").unwrap_or_else(|| "/var/tmp/skiff-test-cache".into()),
    );
    let tar = cache.join("debian-bookworm-essential.tar");
    if tar.metadata().is_ok_and(|m| m.is_file() && m.len() > 0) {
        return Ok(tar);
    }
    let mmdebstrap = require("mmdebstrap")?;
    std::fs::create_dir_all(&cache)?;
    // mmdebstrap writes a tar because the name ends in `.tar`.
    let partial = cache.join(format!(
        "debian-bookworm-essential.{}.tmp.tar",
        std::process::id()
    ));
    run(Command::new(mmdebstrap)
        .args(["--quiet", "--variant=essential", "bookworm"])
        .arg(&partial))
    .context("mmdebstrap (it needs the Debian mirror)")?;
    std::fs::rename(&partial, &tar)?;
    Ok(tar)
}

/// The name of the non-UTF-8 file [`gnu_tar_layers`] writes, under `/names`.
pub const NON_UTF8_NAME: &[u8] = b"caf\xe9-latin1";
/// How many symlinks [`gnu_tar_layers`] writes under `/links`.
pub const SYMLINKS: usize = 3000;
/// The apparent size of the sparse file in the PAX layer: over 8 GiB, past
/// what a tar header's octal size field holds.
pub const PAX_SPARSE_SIZE: u64 = 9 << 30;
/// The same in the GNU layer, smaller: the `tar` crate hands old GNU
/// sparse files over with their holes as zeros, which the unpacker then
/// reads through.
pub const GNU_SPARSE_SIZE: u64 = 64 << 20;

/// Two layers written by GNU tar from one directory: PAX (`--format=posix
/// --sparse`, sparse files in PAX format 1.0) and GNU (`--format=gnu
/// --sparse`, old GNU sparse entries). The directory holds
/// `/sparse/file` ([`PAX_SPARSE_SIZE`] or [`GNU_SPARSE_SIZE`] bytes:
/// `head` at 0, `mid` at 1 MiB,
/// `end` at the last 3 bytes, holes between), a file with a 200-character
/// name, one 300 characters deep, one with a non-UTF-8 name
/// ([`NON_UTF8_NAME`]), and [`SYMLINKS`] symlinks `/links/N` → `/bin/busybox`.
pub fn gnu_tar_layers(work: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let tar = require("tar")?;
    let dir = work.join("gnu-tree");
    std::fs::create_dir_all(dir.join("sparse"))?;
    let names = dir.join("names");
    std::fs::create_dir_all(&names)?;
    std::fs::write(names.join("n".repeat(200)), "long name\n")?;
    let deep: PathBuf = (0..30).map(|i| format!("level{i:04}")).collect();
    std::fs::create_dir_all(names.join(&deep))?;
    std::fs::write(names.join(&deep).join("deep.txt"), "deep\n")?;
    std::fs::write(names.join(OsStr::from_bytes(NON_UTF8_NAME)), "latin-1\n")?;
    let links = dir.join("links");
    std::fs::create_dir_all(&links)?;
    for i in 0..SYMLINKS {
        std::os::unix::fs::symlink("/bin/busybox", links.join(i.to_string()))?;
    }
    let mut out = Vec::new();
    for (format, size) in [("posix", PAX_SPARSE_SIZE), ("gnu", GNU_SPARSE_SIZE)] {
        let sparse = std::fs::File::create(dir.join("sparse/file"))?;
        sparse.set_len(size)?;
        use std::os::unix::fs::FileExt;
        sparse.write_all_at(b"head", 0)?;
        sparse.write_all_at(b"mid", 1 << 20)?;
        sparse.write_all_at(b"end", size - 3)?;
        drop(sparse);
        let path = work.join(format!("layer-{format}.tar"));
        run(Command::new(&tar)
            .arg("-C")
            .arg(&dir)
            .args(["--sparse", "--numeric-owner", "--owner=0", "--group=0"])
            .arg(format!("--format={format}"))
            .arg("-cf")
            .arg(&path)
            .args(["sparse", "names", "links"]))?;
        out.push(std::fs::read(&path)?);
        std::fs::remove_file(&path)?;
    }
    std::fs::remove_dir_all(&dir)?;
    let gnu = out.pop().context("no GNU layer")?;
    let posix = out.pop().context("no PAX layer")?;
    Ok((posix, gnu))
}
