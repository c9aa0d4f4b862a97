//! Layer extraction (`images::unpack`) against in-memory tar streams: normal
//! layers, compression, whiteouts, hostile layers and limits. Runs as root
//! (owners, device nodes and `trusted.*` xattrs need it).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use skiff_agent::images::unpack::{
    Compression, UnpackError, UnpackLimits, UnpackStats, unpack_layer,
};
use skiff_test_support::tools::require_root;
use tar::{EntryType, Header};

// ---------------------------------------------------------------------------
// Building layers
// ---------------------------------------------------------------------------

/// A tar stream under construction. Names and link names are written into
/// the header as raw bytes, so hostile names (`..`, absolute) are possible.
struct Layer {
    b: tar::Builder<Vec<u8>>,
}

const MTIME: u64 = 1_600_000_000;

impl Layer {
    fn new() -> Self {
        Self {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: EntryType, name: &[u8], link: &[u8], mode: u32, size: u64) -> Header {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(size);
        h
    }

    fn push(&mut self, mut h: Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn raw(&mut self, kind: EntryType, name: &str, link: &str, data: &[u8]) -> &mut Self {
        let h = Self::header(
            kind,
            name.as_bytes(),
            link.as_bytes(),
            0o644,
            data.len() as u64,
        );
        self.push(h, data)
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        let h = Self::header(EntryType::Directory, name.as_bytes(), b"", 0o755, 0);
        self.push(h, b"")
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(EntryType::Regular, name, "", data)
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(EntryType::Symlink, name, target, b"")
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(EntryType::Link, name, target, b"")
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.b
            .append_pax_extensions(records.iter().map(|&(k, v)| (k, v)))
            .unwrap();
        self
    }

    fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

// ---------------------------------------------------------------------------
// Inspecting results
// ---------------------------------------------------------------------------

/// A directory holding `dest` next to the victims a hostile layer would
/// like to reach.
struct Sandbox {
    _tmp: tempfile::TempDir,
    top: PathBuf,
    dest: PathBuf,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().canonicalize().unwrap();
        let dest = top.join("dest");
        fs::create_dir(&dest).unwrap();
        fs::create_dir(top.join("victim_dir")).unwrap();
        fs::write(top.join("victim_dir/inner"), b"inner").unwrap();
        fs::write(top.join("victim_file"), b"victim").unwrap();
        Self {
            _tmp: tmp,
            top,
            dest,
        }
    }

    /// `text` with `@V` replaced by the absolute path of `victim_dir` and
    /// `@F` by that of `victim_file`.
    fn sub(&self, text: &str) -> String {
        let top = self.top.to_str().unwrap();
        text.replace("@V", &format!("{top}/victim_dir"))
            .replace("@F", &format!("{top}/victim_file"))
    }

    fn unpack(&self, layer: &[u8], limits: &UnpackLimits) -> Result<UnpackStats, UnpackError> {
        unpack_layer(layer, Compression::None, &self.dest, limits)
    }

    /// Everything outside `dest`, including ctime (any chmod/chown/xattr
    /// change) and link counts (hard links to a victim).
    fn outside(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        snapshot(&self.top, &self.top, &mut out, Some(&self.dest), true);
        out
    }
}

fn snapshot(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<PathBuf, String>,
    skip: Option<&Path>,
    with_ctime: bool,
) {
    let meta = fs::symlink_metadata(dir).unwrap();
    out.insert(
        dir.strip_prefix(root).unwrap().to_owned(),
        describe(dir, &meta, with_ctime),
    );
    for child in fs::read_dir(dir).unwrap() {
        let path = child.unwrap().path();
        if Some(path.as_path()) == skip {
            continue;
        }
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            snapshot(root, &path, out, skip, with_ctime);
        } else {
            out.insert(
                path.strip_prefix(root).unwrap().to_owned(),
                describe(&path, &meta, with_ctime),
            );
        }
    }
}

fn describe(path: &Path, m: &fs::Metadata, with_ctime: bool) -> String {
    let ft = m.file_type();
    let body = if ft.is_file() {
        format!(
            "file {:?}",
            String::from_utf8_lossy(&fs::read(path).unwrap())
        )
    } else if ft.is_symlink() {
        format!("symlink {:?}", fs::read_link(path).unwrap())
    } else if ft.is_dir() {
        "dir".to_owned()
    } else {
        format!("special {:o} rdev {}", m.mode() & 0o170000, m.rdev())
    };
    // Implicit parents (and `dest` itself) get the time of the unpack.
    let mtime = if ft.is_dir() && m.mtime() > 1_700_000_000 {
        "recent".to_owned()
    } else {
        format!("{}.{}", m.mtime(), m.mtime_nsec())
    };
    let mut s = format!(
        "{body} mode {:o} owner {}:{} nlink {} mtime {mtime} xattrs {:?}",
        m.mode() & 0o7777,
        m.uid(),
        m.gid(),
        if ft.is_dir() { 0 } else { m.nlink() },
        xattrs(path),
    );
    if with_ctime {
        s += &format!(" ctime {}.{}", m.ctime(), m.ctime_nsec());
    }
    s
}

/// The tree under `dest`, without ctimes (so two unpacks can be compared).
fn tree(dest: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    snapshot(dest, dest, &mut out, None, false);
    out
}

fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(path.to_str().unwrap()).unwrap();
    let name = CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: both strings are NUL-terminated, `buf` is writable for its
    // whole length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let cpath = CString::new(path.to_str().unwrap()).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: `cpath` is NUL-terminated, `buf` is writable for its length.
    let n = unsafe { libc::llistxattr(cpath.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let Ok(n) = usize::try_from(n) else {
        return Vec::new();
    };
    buf[..n]
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| {
            let name = String::from_utf8_lossy(name).into_owned();
            let value = lgetxattr(path, &name).unwrap_or_default();
            (name, value)
        })
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

// ---------------------------------------------------------------------------
// Normal layers
// ---------------------------------------------------------------------------

/// Dirs, files (setuid, owned 1000:1000), symlink, hard link, xattr, long
/// names (GNU and PAX), a `./` root entry and `./`-prefixed names.
fn normal_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.dir("./");
    l.dir("./etc/");
    let mut h = Layer::header(EntryType::Directory, b"./home/user/", b"", 0o750, 0);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_500_000_000);
    l.push(h, b"");
    l.pax(&[
        ("SCHILY.xattr.user.foo", b"bar"),
        ("mtime", b"1500000000.25"),
    ]);
    let mut h = Layer::header(EntryType::Regular, b"./home/user/hello", b"", 0o640, 5);
    h.set_uid(1000);
    h.set_gid(1000);
    l.push(h, b"hello");
    l.dir("usr/").dir("usr/bin/");
    l.push(
        Layer::header(EntryType::Regular, b"usr/bin/su", b"", 0o4755, 6),
        b"suid!\n",
    );
    l.push(
        Layer::header(EntryType::Regular, b"usr/bin/sg", b"", 0o3775, 0),
        b"",
    );
    let mut h = Layer::header(EntryType::Symlink, b"usr/bin/sh", b"/bin/busybox", 0o777, 0);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_400_000_000);
    l.push(h, b"");
    l.hardlink("usr/bin/su2", "./usr/bin/su");
    // A read-only directory that still gets a file.
    l.push(
        Layer::header(EntryType::Directory, b"ro/", b"", 0o555, 0),
        b"",
    );
    l.file("ro/inside", b"x");
    // Long names: GNU long name and PAX path.
    let long = format!("deep/{}/file", "d".repeat(150));
    let mut h = Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o600);
    h.set_mtime(MTIME);
    h.set_entry_type(EntryType::Regular);
    l.b.append_data(&mut h, &long, &b"long"[..]).unwrap();
    let pax_long = format!("pax/{}/file", "p".repeat(200));
    l.pax(&[("path", pax_long.as_bytes())]);
    l.file("placeholder", b"pax!");
    l.finish()
}

#[test]
fn normal_layer_keeps_everything() {
    require_root();
    let sb = Sandbox::new();
    let stats = sb
        .unpack(&normal_layer(), &UnpackLimits::default())
        .unwrap();
    assert_eq!(stats.entries, 14);
    assert_eq!(stats.bytes, 5 + 6 + 1 + 4 + 4);
    let d = &sb.dest;

    let m = fs::symlink_metadata(d.join("home/user")).unwrap();
    assert!(m.is_dir());
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o750, 1000, 1000));
    assert_eq!(
        m.mtime(),
        1_500_000_000,
        "dir mtime survives writing into it"
    );

    let hello = d.join("home/user/hello");
    let m = fs::symlink_metadata(&hello).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 1000, 1000));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_500_000_000, 250_000_000));
    assert_eq!(fs::read(&hello).unwrap(), b"hello");
    assert_eq!(lgetxattr(&hello, "user.foo").as_deref(), Some(&b"bar"[..]));

    let su = fs::symlink_metadata(d.join("usr/bin/su")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755);
    assert_eq!(su.mtime(), MTIME as i64);
    assert_eq!(su.nlink(), 2);
    let su2 = fs::symlink_metadata(d.join("usr/bin/su2")).unwrap();
    assert_eq!(su2.ino(), su.ino());
    let sg = fs::symlink_metadata(d.join("usr/bin/sg")).unwrap();
    assert_eq!(sg.mode() & 0o7777, 0o3775);

    let sh = d.join("usr/bin/sh");
    let m = fs::symlink_metadata(&sh).unwrap();
    assert!(m.file_type().is_symlink());
    assert_eq!(fs::read_link(&sh).unwrap(), Path::new("/bin/busybox"));
    assert_eq!((m.uid(), m.gid(), m.mtime()), (1000, 1000, 1_400_000_000));

    let ro = fs::symlink_metadata(d.join("ro")).unwrap();
    assert_eq!(ro.mode() & 0o7777, 0o555);
    assert_eq!(fs::read(d.join("ro/inside")).unwrap(), b"x");
    assert_eq!(
        fs::symlink_metadata(d.join("etc")).unwrap().mtime(),
        MTIME as i64
    );

    let long = d.join(format!("deep/{}/file", "d".repeat(150)));
    assert_eq!(fs::read(long).unwrap(), b"long");
    let pax_long = d.join(format!("pax/{}/file", "p".repeat(200)));
    assert_eq!(fs::read(pax_long).unwrap(), b"pax!");
    assert!(!d.join("placeholder").exists());
    // Implicit parents: 0755, root.
    let m = fs::symlink_metadata(d.join("deep")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o755, 0));
}

#[test]
fn compressed_layers_unpack_identically() {
    require_root();
    let plain = normal_layer();
    let gz = gzip(&plain);
    let zst = zstd::stream::encode_all(&plain[..], 3).unwrap();
    // Multi-member gzip: split the stream in two members.
    let mut multi = gzip(&plain[..3000]);
    multi.extend(gzip(&plain[3000..]));

    let reference = Sandbox::new();
    let want_stats = reference.unpack(&plain, &UnpackLimits::default()).unwrap();
    let want = tree(&reference.dest);
    for (name, blob, compression) in [
        ("gzip", &gz, Compression::Gzip),
        ("zstd", &zst, Compression::Zstd),
        ("multi-member gzip", &multi, Compression::Gzip),
    ] {
        assert_eq!(Compression::sniff(blob), compression, "{name}");
        let sb = Sandbox::new();
        let stats = unpack_layer(&blob[..], compression, &sb.dest, &UnpackLimits::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(stats, want_stats, "{name}");
        assert_eq!(tree(&sb.dest), want, "{name}");
    }
}

#[test]
fn corrupt_and_truncated_layers_are_read_errors() {
    require_root();
    let plain = normal_layer();
    let mut gz = gzip(&plain);
    let n = gz.len();
    gz[n - 6] ^= 0xff; // CRC/length trailer
    let sb = Sandbox::new();
    let err = unpack_layer(
        &gz[..],
        Compression::Gzip,
        &sb.dest,
        &UnpackLimits::default(),
    );
    assert!(matches!(err, Err(UnpackError::Read(_))), "{err:?}");

    let mut l = Layer::new();
    l.file("big", &[7u8; 4096]);
    let bytes = l.finish();
    let sb = Sandbox::new();
    let err = sb.unpack(&bytes[..512 + 1000], &UnpackLimits::default());
    assert!(matches!(err, Err(UnpackError::Read(_))), "{err:?}");
}

// ---------------------------------------------------------------------------
// Whiteouts
// ---------------------------------------------------------------------------

#[test]
fn whiteouts_become_overlayfs_whiteouts() {
    require_root();
    let mut l = Layer::new();
    l.file(".wh.gone", b"");
    l.dir("dir/");
    l.file("dir/.wh..wh..opq", b"");
    l.file("dir/kept", b"k");
    l.file("other/.wh..wh.plnk.123", b"");
    // A whiteout for a name this layer created keeps the entry.
    l.file("same", b"same layer");
    l.file(".wh.same", b"");
    // A real entry after a whiteout replaces it.
    l.file(".wh.back", b"");
    l.file("back", b"back");
    // Overlayfs xattrs from the image are never applied.
    l.pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y")]);
    l.dir("forged/");
    let sb = Sandbox::new();
    // Whiteouts are created although devices are not allowed.
    sb.unpack(&l.finish(), &UnpackLimits::default()).unwrap();
    let d = &sb.dest;

    let gone = fs::symlink_metadata(d.join("gone")).unwrap();
    assert!(gone.file_type().is_char_device());
    assert_eq!(gone.rdev(), 0);
    assert!(!d.join(".wh.gone").exists());

    assert_eq!(
        lgetxattr(&d.join("dir"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!d.join("dir/.wh..wh..opq").exists());
    assert_eq!(fs::read(d.join("dir/kept")).unwrap(), b"k");

    assert!(d.join("other").is_dir());
    assert_eq!(fs::read_dir(d.join("other")).unwrap().count(), 0);

    assert_eq!(fs::read(d.join("same")).unwrap(), b"same layer");
    assert_eq!(fs::read(d.join("back")).unwrap(), b"back");
    assert!(!d.join(".wh.same").exists());

    assert_eq!(lgetxattr(&d.join("forged"), "trusted.overlay.opaque"), None);
}

// ---------------------------------------------------------------------------
// Hostile layers
// ---------------------------------------------------------------------------

/// A hostile layer as a list of entries: `(type, name, link target, data)`;
/// `@V`/`@F` in names stand for the victims' absolute paths.
type Case = &'static [(EntryType, &'static str, &'static str, &'static [u8])];

fn build(sb: &Sandbox, case: Case) -> Vec<u8> {
    let mut l = Layer::new();
    for &(kind, name, link, data) in case {
        l.raw(kind, &sb.sub(name), &sb.sub(link), data);
    }
    l.finish()
}

/// Expects `case` to be refused at `entry`, with nothing outside `dest`
/// changed.
fn assert_refused(case: Case, entry: &str, limits: &UnpackLimits) {
    let sb = Sandbox::new();
    let before = sb.outside();
    let result = sb.unpack(&build(&sb, case), limits);
    match result {
        Err(UnpackError::Refused { entry: got, reason }) => {
            assert_eq!(got, sb.sub(entry), "refused the wrong entry ({reason})");
        }
        other => panic!("{entry}: expected a refusal, got {other:?}"),
    }
    assert_eq!(
        sb.outside(),
        before,
        "{entry}: something outside dest changed"
    );
}

/// Expects `case` to unpack without touching anything outside `dest`.
fn assert_contained(case: Case) -> Sandbox {
    let sb = Sandbox::new();
    let before = sb.outside();
    sb.unpack(&build(&sb, case), &UnpackLimits::default())
        .unwrap();
    assert_eq!(sb.outside(), before, "something outside dest changed");
    sb
}

use EntryType::{Block, Char, Directory as Dir, Fifo, Link, Regular as File, Symlink as Sym};

#[test]
fn hostile_layers_are_refused() {
    require_root();
    let cases: &[(Case, &str)] = &[
        (&[(File, "../escape", "", b"pwned")], "../escape"),
        (&[(File, "./../escape", "", b"pwned")], "./../escape"),
        (&[(File, "a/../../escape", "", b"pwned")], "a/../../escape"),
        (
            &[(File, "a/b/../../../escape", "", b"pwned")],
            "a/b/../../../escape",
        ),
        // An absolute name with `..` in it.
        (&[(File, "/../escape", "", b"pwned")], "/../escape"),
        (
            &[(File, "/etc/../../escape", "", b"pwned")],
            "/etc/../../escape",
        ),
        (&[(Sym, "/a/../../l", "@V", b"")], "/a/../../l"),
        (&[(Dir, "../escape_dir/", "", b"")], "../escape_dir/"),
        (&[(File, "", "", b"")], ""),
        // Through a symlinked parent.
        (
            &[(Sym, "link", "..", b""), (File, "link/pwned", "", b"pwned")],
            "link/pwned",
        ),
        (
            &[(Sym, "link", "@V", b""), (File, "link/pwned", "", b"pwned")],
            "link/pwned",
        ),
        (
            &[(Sym, "link", "@V", b""), (Dir, "link/sub/", "", b"")],
            "link/sub/",
        ),
        (
            &[(Sym, "link", "@V", b""), (Sym, "link/s", "x", b"")],
            "link/s",
        ),
        (
            &[(Sym, "link", "@V", b""), (File, "link/.wh.inner", "", b"")],
            "link/.wh.inner",
        ),
        (
            &[
                (Sym, "link", "@V", b""),
                (File, "link/.wh..wh..opq", "", b""),
            ],
            "link/.wh..wh..opq",
        ),
        (
            &[
                (Sym, "a", "b", b""),
                (Sym, "b", "@V", b""),
                (File, "a/x", "", b"pwned"),
            ],
            "a/x",
        ),
        (
            &[
                (Dir, "d/", "", b""),
                (Sym, "d/up", "../..", b""),
                (File, "d/up/escape", "", b"x"),
            ],
            "d/up/escape",
        ),
        // Hard links out of the layer or through symlinks.
        (&[(Link, "hl", "../victim_file", b"")], "hl"),
        (&[(Link, "hl", "@F", b"")], "hl"),
        (&[(Link, "hl", "/../victim_file", b"")], "hl"),
        (&[(Link, "hl", "/etc/passwd", b"")], "hl"),
        (
            &[(Sym, "out", "@V", b""), (Link, "hl", "out/inner", b"")],
            "hl",
        ),
        (
            &[
                (Sym, "out", "..", b""),
                (Link, "hl", "out/victim_file", b""),
            ],
            "hl",
        ),
        (
            &[(Sym, "out", "@V", b""), (Link, "out/hl", "x", b"")],
            "out/hl",
        ),
        (&[(Link, "hl", "missing", b"")], "hl"),
        (&[(Dir, "etc/", "", b""), (Link, "hl", "etc", b"")], "hl"),
        (&[(File, "f", "", b""), (Link, "f", "f", b"")], "f"),
        // Device nodes whose names climb out (even though devices would be
        // skipped anyway).
        (&[(Char, "../null", "", b"")], "../null"),
        (&[(Block, "/dev/../../sda", "", b"")], "/dev/../../sda"),
        (
            &[(Sym, "dev", "@V", b""), (Char, "dev/null", "", b"")],
            "dev/null",
        ),
        // Malformed whiteouts, the layer root, unknown types.
        (&[(File, ".wh..", "", b"")], ".wh.."),
        (&[(File, "d/.wh...", "", b"")], "d/.wh..."),
        (&[(File, ".", "", b"x")], "."),
        (&[(Sym, ".", "@V", b"")], "."),
    ];
    let limits = UnpackLimits::default();
    for &(case, entry) in cases {
        assert_refused(case, entry, &limits);
    }
    // Unknown entry types (here a GNU volume label).
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.raw(EntryType::new(b'V'), "label", "", b"");
    let err = sb.unpack(&l.finish(), &limits);
    assert!(
        matches!(&err, Err(UnpackError::Refused { entry, .. }) if entry == "label"),
        "{err:?}"
    );
}

#[test]
fn pax_and_long_names_are_checked_too() {
    require_root();
    let sb = Sandbox::new();
    let before = sb.outside();
    let mut l = Layer::new();
    l.pax(&[("path", b"../pax-escape")]);
    l.file("innocent", b"pwned");
    let err = sb.unpack(&l.finish(), &UnpackLimits::default());
    assert!(
        matches!(&err, Err(UnpackError::Refused { entry, .. }) if entry == "../pax-escape"),
        "{err:?}"
    );
    let mut l = Layer::new();
    l.symlink("link", &sb.sub("@V"));
    l.pax(&[("linkpath", b"../victim_file")]);
    l.hardlink("hl", "innocent");
    let err = sb.unpack(&l.finish(), &UnpackLimits::default());
    assert!(
        matches!(&err, Err(UnpackError::Refused { entry, .. }) if entry == "hl"),
        "{err:?}"
    );
    // A sparse file's real name (PAX 1.0) is checked like any other.
    let mut l = Layer::new();
    l.pax(&[
        ("GNU.sparse.major", b"1"),
        ("GNU.sparse.minor", b"0"),
        ("GNU.sparse.name", b"../sparse-escape"),
        ("GNU.sparse.realsize", b"10"),
    ]);
    let mut map = b"0\n".to_vec();
    map.resize(512, 0);
    l.file("GNUSparseFile.0/innocent", &map);
    let err = sb.unpack(&l.finish(), &UnpackLimits::default());
    assert!(
        matches!(&err, Err(UnpackError::Refused { entry, .. }) if entry == "../sparse-escape"),
        "{err:?}"
    );
    // A GNU long name with `..` (the builder refuses to write one).
    let mut l = Layer::new();
    let name = format!("{}/../../../escape", "a".repeat(120));
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::GNULongName);
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_size(name.len() as u64 + 1);
    l.push(h, format!("{name}\0").as_bytes());
    l.file("short", b"pwned");
    let err = sb.unpack(&l.finish(), &UnpackLimits::default());
    assert!(
        matches!(&err, Err(UnpackError::Refused { entry, .. }) if *entry == name),
        "{err:?}"
    );
    assert_eq!(sb.outside(), before);
}

#[test]
fn replacing_entries_never_writes_through_them() {
    require_root();
    // A regular file over a symlink replaces the symlink.
    let sb = assert_contained(&[
        (Sym, "f", "../victim_file", b""),
        (File, "f", "", b"mine"),
        (Sym, "g", "@F", b""),
        (File, "g", "", b"mine too"),
    ]);
    for name in ["f", "g"] {
        let m = fs::symlink_metadata(sb.dest.join(name)).unwrap();
        assert!(m.is_file(), "{name} is not a regular file");
    }
    assert_eq!(fs::read(sb.dest.join("f")).unwrap(), b"mine");

    // A directory over a symlink to a directory replaces the symlink.
    let sb = assert_contained(&[
        (Sym, "d", "@V", b""),
        (Dir, "d/", "", b""),
        (File, "d/x", "", b"x"),
    ]);
    assert!(fs::symlink_metadata(sb.dest.join("d")).unwrap().is_dir());
    assert_eq!(fs::read(sb.dest.join("d/x")).unwrap(), b"x");

    // A file over a directory holding a symlink out: removed, not followed.
    let sb = assert_contained(&[
        (Dir, "d/", "", b""),
        (Sym, "d/s", "@V", b""),
        (Dir, "d/sub/", "", b""),
        (File, "d/sub/f", "", b"f"),
        (File, "d", "", b"now a file"),
    ]);
    assert_eq!(fs::read(sb.dest.join("d")).unwrap(), b"now a file");

    // Symlinks, hard links, devices and FIFOs over symlinks.
    let sb = assert_contained(&[
        (Sym, "s", "@F", b""),
        (Sym, "s", "elsewhere", b""),
        (File, "t", "", b"t"),
        (Sym, "h", "@F", b""),
        (Link, "h", "t", b""),
        (Sym, "p", "@F", b""),
        (Fifo, "p", "", b""),
    ]);
    assert_eq!(
        fs::read_link(sb.dest.join("s")).unwrap(),
        Path::new("elsewhere")
    );
    assert_eq!(fs::symlink_metadata(sb.dest.join("h")).unwrap().nlink(), 2);
    assert!(
        fs::symlink_metadata(sb.dest.join("p"))
            .unwrap()
            .file_type()
            .is_fifo()
    );

    // A hard link to a symlink links the symlink itself.
    let sb = assert_contained(&[(Sym, "s", "../victim_file", b""), (Link, "h", "s", b"")]);
    let h = fs::symlink_metadata(sb.dest.join("h")).unwrap();
    assert!(h.file_type().is_symlink());
    assert_eq!(h.nlink(), 2);
    assert_eq!(
        fs::read_link(sb.dest.join("h")).unwrap(),
        Path::new("../victim_file")
    );

    // Directory over directory keeps the contents.
    let sb = assert_contained(&[
        (Dir, "d/", "", b""),
        (File, "d/f", "", b"f"),
        (Dir, "d/", "", b""),
    ]);
    assert_eq!(fs::read(sb.dest.join("d/f")).unwrap(), b"f");
}

#[test]
fn deep_trees_beyond_the_parent_cache() {
    require_root();
    let sb = Sandbox::new();
    let deep = "d/".repeat(300);
    let mut l = Layer::new();
    for (name, data) in [("a", &b"a"[..]), ("b", b"b")] {
        l.pax(&[("path", format!("{deep}{name}").as_bytes())]);
        l.file("placeholder", data);
    }
    l.pax(&[("path", format!("{deep}hl").as_bytes())]);
    l.hardlink("placeholder", "d/d/../../x");
    let layer = l.finish();
    let err = sb.unpack(&layer, &UnpackLimits::default());
    assert!(matches!(err, Err(UnpackError::Refused { .. })), "{err:?}");

    let sb = Sandbox::new();
    let mut l = Layer::new();
    for (name, data) in [("a", &b"a"[..]), ("b", b"b")] {
        l.pax(&[("path", format!("{deep}{name}").as_bytes())]);
        l.file("placeholder", data);
    }
    l.pax(&[
        ("path", format!("{deep}hl").as_bytes()),
        ("linkpath", format!("{deep}a").as_bytes()),
    ]);
    l.hardlink("placeholder", "placeholder");
    l.pax(&[("linkpath", format!("{deep}b").as_bytes())]);
    l.hardlink("top", "placeholder");
    sb.unpack(&l.finish(), &UnpackLimits::default()).unwrap();
    let dir = sb.dest.join(&deep);
    assert_eq!(fs::read(dir.join("b")).unwrap(), b"b");
    assert_eq!(fs::read(dir.join("hl")).unwrap(), b"a");
    assert_eq!(fs::symlink_metadata(dir.join("a")).unwrap().nlink(), 2);
    assert_eq!(fs::read(sb.dest.join("top")).unwrap(), b"b");
}

/// Names with a leading `/` are relative to the layer root, as containerd
/// and moby read them: nothing outside `dest` is touched, and the entry
/// lands inside.
#[test]
fn absolute_names_stay_inside_the_layer() {
    require_root();
    let sb = assert_contained(&[
        (Dir, "/", "", b""),
        (File, "@V/abs", "", b"pwned"),
        (File, "/etc/skiff-unpack-test", "", b"mine"),
        (Dir, "/usr/bin/", "", b""),
        // An absolute symlink target, as /etc/alternatives has: created as
        // written, never followed here.
        (Sym, "/usr/bin/awk", "/etc/alternatives/awk", b""),
        (Sym, "/etc/alternatives/awk", "/usr/bin/mawk", b""),
        (File, "/usr/bin/mawk", "", b"awk"),
        (Link, "/usr/bin/hl", "/usr/bin/mawk", b""),
    ]);
    let victim = sb.sub("@V/abs");
    let inside = sb.dest.join(victim.trim_start_matches('/'));
    assert_eq!(fs::read(inside).unwrap(), b"pwned");
    assert_eq!(fs::read(sb.top.join("victim_dir/inner")).unwrap(), b"inner");
    assert_eq!(
        fs::read(sb.dest.join("etc/skiff-unpack-test")).unwrap(),
        b"mine"
    );
    assert!(!Path::new("/etc/skiff-unpack-test").exists());
    assert_eq!(
        fs::read_link(sb.dest.join("usr/bin/awk")).unwrap(),
        Path::new("/etc/alternatives/awk")
    );
    let mawk = fs::metadata(sb.dest.join("usr/bin/mawk")).unwrap();
    let hl = fs::metadata(sb.dest.join("usr/bin/hl")).unwrap();
    assert_eq!((mawk.ino(), mawk.nlink()), (hl.ino(), 2));
    // The root entry does not change the layer root.
    let root = fs::metadata(&sb.dest).unwrap();
    assert_eq!(root.mode() & 0o7777, 0o755);
}

/// Device nodes are skipped and counted unless devices are allowed; the
/// rest of the layer is unpacked.
#[test]
fn devices_are_skipped_by_default() {
    require_root();
    let mut l = Layer::new();
    for (name, major, minor) in [("dev/null", 1, 3), ("dev/sda", 8, 0)] {
        let kind = if name.ends_with("sda") { Block } else { Char };
        let mut h = Layer::header(kind, name.as_bytes(), b"", 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        l.push(h, b"");
    }
    l.file("etc/hostname", b"debian");
    let sb = Sandbox::new();
    let before = sb.outside();
    let stats = sb.unpack(&l.finish(), &UnpackLimits::default()).unwrap();
    assert_eq!(stats.devices_skipped, 2);
    assert_eq!(stats.devices_skipped_names, vec!["dev/null", "dev/sda"]);
    assert!(!sb.dest.join("dev/null").exists());
    assert!(!sb.dest.join("dev/sda").exists());
    assert_eq!(fs::read(sb.dest.join("etc/hostname")).unwrap(), b"debian");
    assert_eq!(sb.outside(), before);
}

#[test]
fn devices_when_allowed() {
    require_root();
    let sb = Sandbox::new();
    let mut l = Layer::new();
    let mut h = Layer::header(EntryType::Char, b"null", b"", 0o666, 0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    l.push(h, b"");
    let limits = UnpackLimits {
        allow_devices: true,
        ..UnpackLimits::default()
    };
    sb.unpack(&l.finish(), &limits).unwrap();
    let m = fs::symlink_metadata(sb.dest.join("null")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), libc::makedev(1, 3));
    assert_eq!(m.mode() & 0o7777, 0o666);
}

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

#[test]
fn limits_are_enforced() {
    require_root();
    let three = || {
        let mut l = Layer::new();
        l.file("a", b"123456").file("b", b"123456").file("c", b"");
        l.finish()
    };
    let sb = Sandbox::new();
    let limits = UnpackLimits {
        max_entries: 2,
        ..UnpackLimits::default()
    };
    let err = sb.unpack(&three(), &limits);
    assert!(
        matches!(
            err,
            Err(UnpackError::Limit {
                what: "entries",
                limit: 2
            })
        ),
        "{err:?}"
    );
    assert!(!sb.dest.join("c").exists());

    let limits = UnpackLimits {
        max_entries: 3,
        ..UnpackLimits::default()
    };
    assert_eq!(
        Sandbox::new().unpack(&three(), &limits).unwrap(),
        UnpackStats {
            entries: 3,
            bytes: 12,
            ..UnpackStats::default()
        }
    );

    let sb = Sandbox::new();
    let limits = UnpackLimits {
        max_bytes: 10,
        ..UnpackLimits::default()
    };
    let err = sb.unpack(&three(), &limits);
    assert!(
        matches!(
            err,
            Err(UnpackError::Limit {
                what: "bytes",
                limit: 10
            })
        ),
        "{err:?}"
    );
    assert!(sb.dest.join("a").exists());
    assert!(
        !sb.dest.join("b").exists(),
        "b was created before the check"
    );

    // Exactly at the limit is fine.
    let limits = UnpackLimits {
        max_bytes: 12,
        ..UnpackLimits::default()
    };
    Sandbox::new().unpack(&three(), &limits).unwrap();

    // A metadata bomb: a PAX header larger than the parser may buffer.
    let mut l = Layer::new();
    l.pax(&[("comment", &vec![b'x'; 9 << 20])]);
    l.file("f", b"");
    let err = Sandbox::new().unpack(&l.finish(), &UnpackLimits::default());
    assert!(matches!(err, Err(UnpackError::Limit { .. })), "{err:?}");

    // A compressed bomb of zeros after the end of the archive.
    let mut tail = three();
    tail.resize(tail.len() + (4 << 20), 0);
    let gz = gzip(&tail);
    let limits = UnpackLimits {
        max_bytes: 1 << 20,
        ..UnpackLimits::default()
    };
    let err = unpack_layer(&gz[..], Compression::Gzip, &Sandbox::new().dest, &limits);
    assert!(
        matches!(err, Err(UnpackError::Limit { what: "bytes", .. })),
        "{err:?}"
    );
}

#[test]
fn missing_destination_is_an_error() {
    let err = unpack_layer(
        &[][..],
        Compression::None,
        Path::new("/nonexistent/skiff-unpack"),
        &UnpackLimits::default(),
    );
    assert!(matches!(err, Err(UnpackError::Dest { .. })), "{err:?}");
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

fn component() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a",
        "b",
        "..",
        ".",
        "",
        "link",
        ".wh.a",
        ".wh..wh..opq",
        "@V",
        "@F",
        "victim_file",
    ])
}

fn name() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(component(), 1..5)).prop_map(|(abs, comps)| {
        let joined = comps.join("/");
        if abs { format!("/{joined}") } else { joined }
    })
}

fn kind() -> impl Strategy<Value = EntryType> {
    prop::sample::select(vec![
        EntryType::Regular,
        EntryType::Directory,
        EntryType::Symlink,
        EntryType::Link,
        EntryType::Fifo,
        EntryType::Char,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_bytes_never_escape(bytes in prop::collection::vec(any::<u8>(), 0..4096), which in 0..3u8) {
        let sb = Sandbox::new();
        let before = sb.outside();
        let compression = [Compression::None, Compression::Gzip, Compression::Zstd][usize::from(which)];
        let _ = unpack_layer(&bytes[..], compression, &sb.dest, &UnpackLimits::default());
        prop_assert_eq!(sb.outside(), before);
    }

    #[test]
    fn arbitrary_entries_never_escape(
        entries in prop::collection::vec((kind(), name(), name(), prop::collection::vec(any::<u8>(), 0..16)), 1..12),
        allow_devices in any::<bool>(),
    ) {
        let sb = Sandbox::new();
        let before = sb.outside();
        let mut l = Layer::new();
        for (kind, name, link, data) in &entries {
            let name = sb.sub(name);
            let link = sb.sub(link);
            if name.len() > 100 || link.len() > 100 {
                continue;
            }
            let data: &[u8] = if *kind == EntryType::Regular { data } else { b"" };
            l.raw(*kind, &name, &link, data);
        }
        let limits = UnpackLimits { allow_devices, ..UnpackLimits::default() };
        let result = sb.unpack(&l.finish(), &limits);
        prop_assert!(!matches!(result, Err(UnpackError::Io { .. }) | Err(UnpackError::Read(_))), "{:?}", result);
        prop_assert_eq!(sb.outside(), before);
    }
}
