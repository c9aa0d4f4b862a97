//! The images people actually have, built in the tests by the tools they
//! build them with (`umoci`, `buildah`, `skopeo`, `mmdebstrap`, GNU tar;
//! see `skiff_test_support::corpus`), imported or pulled by a real agent,
//! and checked from inside a container: the set-uid bit, the file
//! capability, the hard link's inode, the whiteout's effect, the sparse
//! file's holes, the names. As root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Agent, text};
use skiff_test_support::corpus;
use skiff_test_support::images::OciImage;
use skiff_test_support::layout::Layout;
use skiff_test_support::netns;
use skiff_test_support::registry::Registry;
use skiff_test_support::tools::{require, require_root, run};

fn agent() -> (tempfile::TempDir, Agent, PathBuf) {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let agent = Agent::start(dir.path());
    (dir, agent, work)
}

/// The references an `import` printed (`imported REF (ID)` lines).
fn imported(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("imported "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn import(agent: &Agent, path: &Path) -> Vec<String> {
    imported(&agent.ok(&["import", path.to_str().unwrap()]))
}

/// `run --rm IMAGE sh -c SCRIPT` (after `extra` flags); stdout.
fn sh(agent: &Agent, extra: &[&str], image: &str, script: &str) -> String {
    let mut args = vec!["run", "--rm", "--pull", "never"];
    args.extend(extra);
    args.extend([image, "sh", "-c", script]);
    agent.ok(&args)
}

#[test]
fn umoci_insert_and_repack_images_keep_whiteouts_setuid_caps_and_hard_links() {
    let (_dir, agent, work) = agent();
    let layout = corpus::umoci_image(&work).unwrap();
    // The first layer has a `/` entry, which the agent once refused.
    assert_eq!(import(&agent, &layout), ["localhost/umoci-layout:v1"]);
    // Found by its short name, as podman finds images it imported.
    let image = "umoci-layout:v1";

    // `--opaque`: only the new directory's content; `--whiteout`: gone.
    assert_eq!(sh(&agent, &[], image, "ls /www"), "new.html\n");
    assert_eq!(
        sh(&agent, &[], image, "cat /www/new.html"),
        corpus::NEW_PAGE
    );
    assert_eq!(
        sh(&agent, &[], image, "test -e /etc/removed; echo $?"),
        "1\n"
    );
    // The set-uid bit and the hard link.
    assert_eq!(sh(&agent, &[], image, "stat -c %a /bin/suid"), "4755\n");
    let inodes = sh(
        &agent,
        &[],
        image,
        "stat -c '%i %h' /bin/linked-a /bin/linked-b",
    );
    let lines: Vec<&str> = inodes.lines().collect();
    assert_eq!(lines.len(), 2, "{inodes}");
    assert_eq!(lines[0], lines[1], "one inode: {inodes}");
    assert!(lines[0].ends_with(" 2"), "two links: {inodes}");

    // The file capability works for a non-root user once no_new_privs is
    // off (as in docker's default), and not under Skiff's default.
    let caps = |extra: &[&str]| {
        let mut args = vec!["run", "--rm", "--pull", "never", "--user", "1000"];
        args.extend(extra);
        args.extend([
            image,
            "/bin/caps/busybox",
            "grep",
            "CapEff",
            "/proc/self/status",
        ]);
        agent.ok(&args)
    };
    assert_eq!(
        caps(&["--security-opt", "no-new-privileges=false"]),
        "CapEff:\t0000000000002000\n",
        "cap_net_raw from the file's security.capability"
    );
    assert_eq!(caps(&[]), "CapEff:\t0000000000000000\n");
}

#[test]
fn a_buildah_image_from_scratch_runs_by_its_name() {
    let (_dir, agent, work) = agent();
    let archive = corpus::buildah_image(&work).unwrap();
    assert_eq!(import(&agent, &archive), ["docker.io/library/bh:v1"]);
    assert_eq!(
        agent.ok(&[
            "run",
            "--rm",
            "--pull",
            "never",
            "bh:v1",
            "cat",
            "/etc/motd"
        ]),
        "built by buildah\n"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&agent.ok(&["image-inspect", "bh:v1"])).unwrap();
    assert_eq!(
        inspect["layers"][0]["media_type"], "application/vnd.oci.image.layer.v1.tar",
        "buildah writes an uncompressed layer: {inspect}"
    );
}

/// `skopeo copy SRC DEST` with extra flags.
fn skopeo(args: &[&str]) {
    run(Command::new(require("skopeo").unwrap())
        .args(["copy", "--quiet"])
        .args(args))
    .unwrap();
}

#[test]
fn the_three_archive_forms_import_under_names_that_run() {
    let (_dir, agent, work) = agent();
    let image = OciImage::busybox(&work, "latest", &[]).unwrap();
    let src = image.transport();
    let oci_archive = work.join("bb.tar");
    skopeo(&[
        &src,
        &format!("oci-archive:{}:bb:latest", oci_archive.display()),
    ]);
    let tag_only = work.join("tagged.oci.tar");
    skopeo(&[&src, &format!("oci-archive:{}:v3", tag_only.display())]);
    let docker_archive = work.join("bbd.tar");
    skopeo(&[
        "--additional-tag",
        "registry.example.com/team/bbd:1",
        &src,
        &format!("docker-archive:{}:bbd:latest", docker_archive.display()),
    ]);

    let cases: [(&Path, &[&str], &[&str]); 4] = [
        // skopeo ... oci-archive:bb.tar:bb:latest, imported as docker names it.
        (
            &oci_archive,
            &["docker.io/library/bb:latest"],
            &["bb:latest", "bb"],
        ),
        // Only a tag: localhost/<archive stem>:<tag>, run by its short name.
        (&tag_only, &["localhost/tagged:v3"], &["tagged:v3"]),
        // docker load: every name in RepoTags.
        (
            &docker_archive,
            &[
                "docker.io/library/bbd:latest",
                "registry.example.com/team/bbd:1",
            ],
            &["bbd:latest", "registry.example.com/team/bbd:1"],
        ),
        // An OCI layout directory (umoci's tag `latest`).
        (
            &image.layout,
            &["localhost/layout:latest"],
            &["layout:latest"],
        ),
    ];
    for (path, names, short) in cases {
        let printed = import(&agent, path);
        assert_eq!(printed, names, "{}", path.display());
        for name in printed
            .iter()
            .map(String::as_str)
            .chain(short.iter().copied())
        {
            let out = agent.ok(&["run", "--rm", "--pull", "never", name, "echo", "ok"]);
            assert_eq!(out, "ok\n", "{name}");
        }
    }
    // A name that is not there is refused with the name.
    let out = agent.cli(&["run", "--rm", "--pull", "never", "nothere:1", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        "skiff-agent: no such image: nothere:1"
    );
}

#[test]
fn a_debian_root_filesystem_from_mmdebstrap_runs() {
    let (_dir, agent, work) = agent();
    let rootfs = corpus::debian_rootfs().unwrap();
    // As `mmdebstrap ... | docker import -`: the tar is the one layer.
    let layout = Layout::create(&work.join("debian")).unwrap();
    let tar = std::fs::read(&rootfs).unwrap();
    let desc = layout.image_uncompressed(&[tar], "amd64").unwrap();
    layout.tag(desc, "bookworm").unwrap();

    let out = agent.cli(&["import", layout.dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(imported(&text(&out.stdout)), ["localhost/debian:bookworm"]);
    // Its device nodes are not created, and the operator is told.
    let warning = text(&out.stderr);
    assert!(
        warning.contains("8 device nodes not created (dev/console, dev/full, dev/null"),
        "{warning}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&agent.ok(&["image-inspect", "debian:bookworm"])).unwrap();
    assert_eq!(inspect["warnings"].as_array().map(Vec::len), Some(1));

    let script = "cat /etc/debian_version | cut -d. -f1; \
        stat -c %a /usr/bin/su; \
        find /usr/bin -samefile /usr/bin/perl | wc -l; \
        stat -c %h /usr/bin/perl; \
        readlink /etc/alternatives/awk; \
        awk 'BEGIN { print 6 * 7 }'; \
        test -c /dev/null && echo x > /dev/null && echo own-dev";
    let out = agent.ok(&[
        "run",
        "--rm",
        "--pull",
        "never",
        "-e",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "debian:bookworm",
        "/bin/bash",
        "-c",
        script,
    ]);
    assert_eq!(
        out, "12\n4755\n2\n2\n/usr/bin/mawk\n42\nown-dev\n",
        "bookworm; su set-uid; perl hard-linked (two names, two links); \
         awk through the absolute /etc/alternatives symlink; /dev the container's own"
    );
}

#[test]
fn gnu_tar_layers_keep_sparse_files_long_and_non_utf8_names_and_symlinks() {
    let (dir, agent, work) = agent();
    let (posix, gnu) = corpus::gnu_tar_layers(&work).unwrap();
    let base = work.join("base");
    skiff_test_support::images::busybox_rootfs(&base).unwrap();
    let base_tar = Command::new(require("tar").unwrap())
        .arg("-C")
        .arg(&base)
        .args(["--numeric-owner", "-cf", "-", "."])
        .output()
        .unwrap()
        .stdout;
    let layout = Layout::create(&work.join("gnutar")).unwrap();
    // The PAX layer gzip-compressed, the GNU one plain.
    let pax = layout.image(&[base_tar.clone(), posix], "amd64").unwrap();
    layout.tag(pax, "pax").unwrap();
    let old = layout
        .image_uncompressed(&[base_tar, gnu], "amd64")
        .unwrap();
    layout.tag(old, "gnu").unwrap();
    assert_eq!(
        import(&agent, &layout.dir),
        ["localhost/gnutar:pax", "localhost/gnutar:gnu"]
    );

    let sizes = [
        ("gnutar:pax", corpus::PAX_SPARSE_SIZE),
        ("gnutar:gnu", corpus::GNU_SPARSE_SIZE),
    ];
    for (image, size) in sizes {
        let script = format!(
            "stat -c %s /sparse/file; head -c 4 /sparse/file; echo; \
             dd if=/sparse/file bs=1 skip=1048576 count=3 2>/dev/null; echo; \
             dd if=/sparse/file bs=1 skip={} count=3 2>/dev/null; echo; \
             cat /names/{}; cat /names/{}/deep.txt; cat /names/caf*; \
             ls /links | wc -l; readlink /links/2999",
            size - 3,
            "n".repeat(200),
            (0..30)
                .map(|i| format!("level{i:04}"))
                .collect::<Vec<_>>()
                .join("/"),
        );
        assert_eq!(
            sh(&agent, &[], image, &script),
            format!(
                "{size}\nhead\nmid\nend\nlong name\ndeep\nlatin-1\n{}\n/bin/busybox\n",
                corpus::SYMLINKS
            ),
            "{image}"
        );
        // The name is the bytes it was, not a UTF-8 rendering of them (as
        // hex: the container's output goes through a JSON log, as Docker's
        // json-file log does, which would not carry the raw byte).
        let hex = sh(
            &agent,
            &[],
            image,
            "echo /names/caf* | od -An -tx1 | tr -d ' \\n'",
        );
        let want: String = corpus::NON_UTF8_NAME
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(hex.contains(&want), "{image}: {hex}");
    }
    // The holes stayed holes on disk: each unpacked sparse file uses a few
    // blocks, not gigabytes.
    use std::os::unix::fs::MetadataExt;
    let layers = dir.path().join("state/images/layers");
    let mut seen = Vec::new();
    for layer in std::fs::read_dir(&layers).unwrap() {
        let file = layer.unwrap().path().join("sparse/file");
        if let Ok(m) = std::fs::metadata(&file) {
            assert!(
                m.blocks() * 512 < 1 << 20,
                "{}: {} blocks",
                file.display(),
                m.blocks()
            );
            seen.push(m.len());
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [corpus::GNU_SPARSE_SIZE, corpus::PAX_SPARSE_SIZE],
        "one unpacked sparse file per format"
    );
}

#[test]
fn a_registry_over_tls_with_the_extra_ca_and_zstd_layers_and_run_pulls() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // The registry listens on the host's end of a link of the test's own
    // (not loopback, which agents reach over plain HTTP).
    let untrusting = dir.path().join("untrusting");
    std::fs::create_dir_all(&untrusting).unwrap();
    let probe = Agent::start(&untrusting);
    let n = probe.net.n;
    let prefix = probe.net.outside_prefix();
    let (_ns, _link) =
        netns::outside_host(&format!("skcr{n}"), &format!("skc{n}"), &prefix).unwrap();
    let ip: std::net::Ipv4Addr = format!("{prefix}.1").parse().unwrap();
    let registry = Registry::start_tls(ip).unwrap();
    let image = OciImage::busybox(&work, "tls", &[]).unwrap();
    let reference = format!("{}/skiff/zstd:tls", registry.host());
    skopeo(&[
        "--dest-tls-verify=false",
        "--dest-compress-format",
        "zstd",
        &image.transport(),
        &format!("docker://{reference}"),
    ]);

    // Without the CA, the registry's certificate is refused.
    let out = probe.cli(&["pull", &reference]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&reference) && err.contains("registry"),
        "{err}"
    );

    // With it, `run` pulls the missing image (progress on stderr, the
    // container's output alone on stdout).
    let ca = registry.ca().unwrap().display().to_string();
    let state = dir.path().join("trusting");
    std::fs::create_dir_all(&state).unwrap();
    let agent = Agent::start_configured(&state, &format!("extra_ca_file = \"{ca}\"\n"), "");
    let out = agent.cli(&["run", "--rm", &reference, "echo", "pulled-and-ran"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "pulled-and-ran\n");
    let progress = text(&out.stderr);
    assert!(
        progress.contains("is not here, pulling it") && progress.contains("pulled "),
        "{progress}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&agent.ok(&["image-inspect", &reference])).unwrap();
    assert_eq!(
        inspect["layers"][0]["media_type"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    // Present: `missing` does not pull again; `always` does (nothing to
    // download); `never` with an absent image fails without pulling.
    let again = agent.cli(&["run", "--rm", &reference, "true"]);
    assert!(again.status.success());
    assert!(
        !text(&again.stderr).contains("pulling"),
        "{}",
        text(&again.stderr)
    );
    let always = agent.cli(&["run", "--rm", "--pull", "always", &reference, "true"]);
    assert!(always.status.success());
    assert!(
        text(&always.stderr).contains("already present"),
        "{}",
        text(&always.stderr)
    );
    agent.ok(&["rmi", &reference]);
    let never = agent.cli(&["run", "--rm", "--pull", "never", &reference, "true"]);
    assert_eq!(never.status.code(), Some(1));
    assert_eq!(
        text(&never.stderr).trim(),
        format!("skiff-agent: no such image: {reference}")
    );
}
