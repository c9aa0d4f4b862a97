//! Safe, fast extraction of one OCI image layer into an overlayfs lower
//! directory.
//!
//! A layer is a tar stream (plain, gzip or zstd) written by whoever built the
//! image, so every entry is treated as hostile. [`unpack_layer`] turns it into
//! the overlayfs on-disk format: OCI whiteouts (`.wh.NAME`) become character
//! devices 0/0, opaque markers (`.wh..wh..opq`) become the
//! `trusted.overlay.opaque=y` xattr.
//!
//! # Safety model
//!
//! *Nothing outside `dest` is ever created, modified or followed.* This rests
//! on four rules, each enforced in exactly one place:
//!
//! 1. **Names are normalised before use** ([`RelPath::parse`]): leading `/`,
//!    `.` and empty components are dropped (so `/etc/passwd`, `./etc/passwd`
//!    and `etc//passwd` all name `dest/etc/passwd`); `..` components, empty
//!    names, NUL bytes and paths longer than `PATH_MAX` are refused. What
//!    remains is a list of plain components.
//! 2. **Directories are walked one component at a time** ([`Walker`]), from
//!    an fd of `dest`, with `openat(O_DIRECTORY | O_NOFOLLOW)`. A parent that
//!    is a symlink (or anything but a directory) ends the entry with
//!    [`UnpackError::Refused`]. Missing parents are created (`0755`,
//!    `root:root`), as tar does.
//! 3. **Every change is made relative to the parent's fd and never follows
//!    the final component**: `openat(O_CREAT | O_EXCL | O_NOFOLLOW)`,
//!    `mkdirat`, `symlinkat`, `mknodat`, `linkat(.., 0)` (no
//!    `AT_SYMLINK_FOLLOW`), `unlinkat`, `fchownat`/`utimensat`/`fchmodat`
//!    with `AT_SYMLINK_NOFOLLOW`, `fchown`/`fchmod`/`fsetxattr`/`futimens`
//!    on fds we opened ourselves, and `lsetxattr` through
//!    `/proc/self/fd/<parent>/<name>` for symlinks and device nodes.
//! 4. **Existing entries are replaced, never written through**: creation
//!    uses `O_EXCL`; on `EEXIST` the old entry is unlinked (a directory is
//!    removed recursively with the same no-follow primitives) and creation
//!    is retried. A directory over a directory keeps the directory.
//!
//! Hard links are resolved with the same rules: the target must be a
//! non-directory that already exists in `dest`, reached without crossing a
//! symlink. Together this also holds if `dest` were changed concurrently
//! (no call would follow a planted symlink), although the parent-fd cache
//! assumes nobody else writes into `dest` while a layer is unpacked.
//!
//! Resource limits: regular-file bytes and the entry count are capped by
//! [`UnpackLimits`]; an entry's size is checked against the remaining byte
//! budget *before* any of its data is written. The tar parser buffers
//! metadata (PAX records, GNU long names) in memory, so the decompressed
//! bytes it may read to produce one entry are capped at
//! [`MAX_METADATA_BYTES`] (a guard reader sits between the decompressor and
//! the parser). After the end-of-archive marker the rest of the stream is
//! read and discarded (bounded by the remaining budget plus 1 MiB), like
//! containerd does, so that a digest-verifying reader underneath sees the
//! whole blob and the gzip/zstd trailer is checked.
//!
//! # Skiff next to containerd, rule by rule
//!
//! containerd's `archive.Apply` (`pkg/archive/tar.go`, the code behind its
//! overlayfs snapshotter) is the peer: an image it unpacks should unpack
//! here, unless the difference is a refusal of something dangerous.
//!
//! | entry | containerd | Skiff |
//! |---|---|---|
//! | `/a/b`, `./a/b`, `a//b` | `filepath.Clean`, joined under the root: `a/b` | the same: `a/b` ([`RelPath::parse`]) |
//! | `/`, `./`, `.` (a directory) | "resolved to root", skipped | skipped: the layer root keeps `0755 root:root` |
//! | `/`, `.` as a file, link or device | skipped | refused ("entry names the layer root") |
//! | `..` anywhere (`../x`, `a/../../x`, `/a/../../x`) | cleaned and clamped at the root (`../x` lands at `x`) | refused: no tool that writes layers from a filesystem writes `..`, and a name that means something else than it says is an attack |
//! | a parent that is a symlink made earlier in the same layer | followed, scoped to the root (`fs.RootPath`) | refused ([`Walker`]): nothing is ever written through a link |
//! | symlink with an absolute or climbing target (`/etc/alternatives/x`, `../../x`) | created as written | created as written, never followed here; in the container it resolves inside its root |
//! | hard link `x` → `/etc/passwd` or `etc/passwd` | target joined under the root | the same (`etc/passwd` in this layer), through [`RelPath::parse`] and a no-follow walk |
//! | hard link whose target climbs out or crosses a symlink | clamped / followed within the root | refused |
//! | hard link to a directory or a missing name | `link(2)` fails: error | refused |
//! | character and block devices | created as root; skipped with a warning in a user namespace | skipped and counted in [`UnpackStats::devices_skipped`] (the image record carries a warning) unless [`UnpackLimits::allow_devices`] (then created, as containerd does as root). Either way the container cannot use them: its `/dev` is its own tmpfs and the device cgroup denies everything else |
//! | FIFOs | created | created |
//! | `.wh.NAME`, `.wh..wh..opq` | overlayfs whiteouts (char 0/0, `trusted.overlay.opaque`) | the same |
//! | `trusted.overlay.*`, `user.overlay.*` xattrs | applied | skipped with a warning: they would forge whiteouts, opaque dirs or redirects |
//! | other xattrs (`security.capability`, `user.*`) | applied; `ENOTSUP`, and `EPERM` for `user.*` on links, ignored | applied; `ENOTSUP`/`EPERM` ignored with a warning |
//! | an existing entry of another type | `RemoveAll`, then created | unlinked without following, then created |
//! | a directory over a directory | merged, metadata from the layer | the same |
//! | set-id bits, file capabilities | kept (`lchmod` after `lchown`) | kept (chown, then chmod, then xattrs) |
//! | unknown entry types | error "unhandled tar header type" | refused |
//! | a stream that ends right after the last entry's data (no padding, no end blocks: umoci 0.4 `insert`) | the end of the archive | the same; data cut short is an error in both |
//! | PAX global headers | ignored | ignored |
//! | sparse files (GNU `S` entries, PAX 1.0 `GNU.sparse.*`) | read by Go's `archive/tar` | read ([`sparse`]); holes stay holes; PAX 0.x refused |
//! | sizes, entry counts, metadata | unbounded | bounded by [`UnpackLimits`] and [`MAX_METADATA_BYTES`] |
//!
//! # Other choices
//!
//! * A whiteout for a name this same layer already created keeps the entry
//!   (OCI: a whiteout only hides lower layers); a later real entry with that
//!   name replaces the whiteout.
//! * Directory modes and mtimes are applied after every entry is written
//!   (children before parents), so a read-only directory can still be filled
//!   and writing into a directory does not spoil its mtime.
//! * Hard links: the link entry's own mode, owner, mtime and xattrs are
//!   ignored (the inode is shared with the target). A hard link to a
//!   symlink links the symlink itself (it is not followed).
//! * The store that holds the layers is `0700` ([`super::store`]), so no user
//!   of the host reaches an image's set-id binaries or device nodes.

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

mod sparse;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstatat, futimens, makedev,
    mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use tar::EntryType;

/// Size of the buffer file contents are copied through.
const COPY_BUFFER: usize = 1 << 20;
/// Size of the buffer in front of the (compressed) input.
const INPUT_BUFFER: usize = 256 << 10;
/// How many decompressed bytes the tar parser may read to produce one entry
/// (headers, PAX records, GNU long names): it keeps those in memory.
pub const MAX_METADATA_BYTES: u64 = 8 << 20;
/// Extra bytes tolerated after the end-of-archive marker (tar record padding).
const TAIL_SLACK: u64 = 1 << 20;
/// Longest accepted normalised path (`PATH_MAX` without the NUL).
const MAX_PATH: usize = 4095;
/// Parent directories deeper than this are walked per entry, not cached, so
/// a hostile deep path cannot exhaust file descriptors.
const MAX_CACHED_DEPTH: usize = 128;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
/// Xattr namespaces overlayfs interprets; never taken from an image.
const OVERLAY_XATTR_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);
const NEW_FILE_FLAGS: OFlag = OFlag::O_WRONLY
    .union(OFlag::O_CREAT)
    .union(OFlag::O_EXCL)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip, possibly several concatenated members.
    Gzip,
    /// zstd, possibly several concatenated frames.
    Zstd,
}

impl Compression {
    /// From an OCI/Docker layer media type (`…tar`, `…tar+gzip`,
    /// `…tar.gzip`, `…tar+zstd`,
    /// `application/vnd.docker.image.rootfs.diff.tar.gzip`, ...), ignoring
    /// case and parameters. `None` for unknown media types (including
    /// encrypted layers).
    pub fn from_media_type(mt: &str) -> Option<Self> {
        let essence = mt.split(';').next().unwrap_or_default().trim();
        let essence = essence.to_ascii_lowercase();
        let (body, suffix) = [
            "application/vnd.oci.image.layer.",
            "application/vnd.docker.image.rootfs.",
        ]
        .iter()
        .find_map(|prefix| essence.strip_prefix(prefix))?
        .split_once(".tar")?;
        if !matches!(body, "v1" | "nondistributable.v1" | "diff" | "foreign.diff") {
            return None;
        }
        match suffix {
            "" => Some(Self::None),
            "+gzip" | ".gzip" | "+gz" | ".gz" => Some(Self::Gzip),
            "+zstd" | ".zstd" | "+zst" | ".zst" => Some(Self::Zstd),
            _ => None,
        }
    }

    /// The OCI layer media type of a tar compressed so.
    pub fn oci_layer_media_type(self) -> &'static str {
        match self {
            Self::None => "application/vnd.oci.image.layer.v1.tar",
            Self::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Self::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// From the first bytes of the blob (gzip `1f 8b`, zstd `28 b5 2f fd`;
    /// anything else is taken to be an uncompressed tar).
    pub fn sniff(first_bytes: &[u8]) -> Self {
        if first_bytes.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if first_bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }
}

/// Resource limits for one layer.
#[derive(Debug, Clone)]
pub struct UnpackLimits {
    /// Total size of regular-file contents (and of any data attached to
    /// other entries, which is read and discarded).
    pub max_bytes: u64,
    /// Number of tar entries, whiteouts included (PAX extended headers and
    /// GNU long-name headers belong to their entry and are not counted).
    pub max_entries: u64,
    /// Whether character and block devices from the image are created.
    /// FIFOs and whiteouts are always created.
    pub allow_devices: bool,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 30,
            max_entries: 2_000_000,
            allow_devices: false,
        }
    }
}

/// What an unpack wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries processed.
    pub entries: u64,
    /// Total regular-file content written.
    pub bytes: u64,
    /// Character and block devices not created (devices not allowed).
    pub devices_skipped: u64,
    /// The first [`SKIPPED_NAMES_KEPT`] of them, as normalised paths.
    pub devices_skipped_names: Vec<String>,
}

/// How many names of skipped device nodes [`UnpackStats`] keeps.
pub const SKIPPED_NAMES_KEPT: usize = 8;

/// Why a layer could not be unpacked. The caller deletes `dest`.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// A hostile or malformed entry; `entry` is the path as written in the tar.
    #[error("entry {entry:?}: {reason}")]
    Refused { entry: String, reason: String },
    /// The layer is larger than [`UnpackLimits`] allow.
    #[error("layer exceeds the limit of {limit} {what}")]
    Limit { what: &'static str, limit: u64 },
    /// Writing an entry failed.
    #[error("entry {entry:?}: {source}")]
    Io {
        entry: String,
        #[source]
        source: io::Error,
    },
    /// Reading, decompressing or parsing the layer failed.
    #[error("reading the layer: {0}")]
    Read(#[source] io::Error),
    /// `dest` could not be opened as a directory.
    #[error("opening the destination {path:?}: {source}")]
    Dest {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Unpacks a layer into `dest`, an existing empty directory. On error, the
/// caller deletes `dest`; nothing outside `dest` may ever have been created,
/// modified or followed (see the module documentation).
pub fn unpack_layer(
    reader: impl Read,
    compression: Compression,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    let root = nix::fcntl::open(
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Dest {
        path: dest.to_owned(),
        source: e.into(),
    })?;
    let input = BufReader::with_capacity(INPUT_BUFFER, reader);
    let stats = match compression {
        Compression::None => run(input, root, limits),
        Compression::Gzip => run(flate2::bufread::MultiGzDecoder::new(input), root, limits),
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::with_buffer(input).map_err(UnpackError::Read)?;
            run(decoder, root, limits)
        }
    }?;
    tracing::debug!(
        dest = %dest.display(),
        entries = stats.entries,
        bytes = stats.bytes,
        devices_skipped = stats.devices_skipped,
        "layer unpacked"
    );
    Ok(stats)
}

// ---------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------

/// Reads the decompressed stream entry by entry.
fn run<R: Read>(
    decoded: R,
    root: OwnedFd,
    limits: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    let allowance = Cell::new(MAX_METADATA_BYTES);
    let tripped = Cell::new(false);
    let position = Cell::new(0);
    let ended = Cell::new(false);
    let mut archive = tar::Archive::new(Guard {
        inner: decoded,
        allowance: &allowance,
        tripped: &tripped,
        position: &position,
        ended: &ended,
    });
    let mut unpacker = Unpacker::new(root, limits);
    {
        let mut entries = archive.entries().map_err(UnpackError::Read)?;
        // Where the last entry's data ended in the decompressed stream.
        let mut data_end = None;
        loop {
            allowance.set(MAX_METADATA_BYTES);
            let next = entries.next();
            allowance.set(u64::MAX);
            match next {
                None => break,
                Some(Ok(mut entry)) => {
                    unpacker.entry(&mut entry)?;
                    data_end = Some(position.get());
                }
                // A stream that ends right after an entry's data, without
                // its padding and the end-of-archive blocks, ends the
                // archive, as in Go's archive/tar (containerd, docker):
                // umoci 0.4's `insert` writes such layers.
                Some(Err(_)) if ended.get() && data_end == Some(position.get()) => break,
                Some(Err(_)) if tripped.get() => {
                    return Err(UnpackError::Limit {
                        what: "bytes of tar metadata for one entry",
                        limit: MAX_METADATA_BYTES,
                    });
                }
                Some(Err(e)) => return Err(UnpackError::Read(e)),
            }
        }
    }
    let mut rest = archive.into_inner();
    allowance.set(unpacker.remaining_budget().saturating_add(TAIL_SLACK));
    discard_to_end(&mut rest, &mut unpacker.buf).map_err(|e| {
        if tripped.get() {
            UnpackError::Limit {
                what: "bytes",
                limit: limits.max_bytes,
            }
        } else {
            UnpackError::Read(e)
        }
    })?;
    unpacker.finish_dirs()?;
    Ok(unpacker.stats)
}

/// Sits between the decompressor and the tar parser and fails reads beyond
/// `allowance` (which the driver sets per phase); counts the bytes it
/// passes on and notes the end of the stream.
struct Guard<'a, R> {
    inner: R,
    allowance: &'a Cell<u64>,
    tripped: &'a Cell<bool>,
    position: &'a Cell<u64>,
    ended: &'a Cell<bool>,
}

impl<R: Read> Read for Guard<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let allowance = self.allowance.get();
        if buf.is_empty() {
            return Ok(0);
        }
        if allowance == 0 {
            self.tripped.set(true);
            return Err(io::Error::other("layer size limit reached"));
        }
        let len = usize::try_from(allowance).map_or(buf.len(), |a| a.min(buf.len()));
        let n = self.inner.read(&mut buf[..len])?;
        self.allowance.set(allowance - n as u64);
        self.position.set(self.position.get() + n as u64);
        if n == 0 {
            self.ended.set(true);
        }
        Ok(n)
    }
}

fn discard_to_end(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
    loop {
        match reader.read(buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Why one entry failed; turned into an [`UnpackError`] naming the entry.
#[derive(Debug)]
enum Fail {
    Refused(String),
    Io(io::Error),
    Read(io::Error),
    Limit(&'static str, u64),
}

impl Fail {
    fn refused(reason: impl Into<String>) -> Self {
        Self::Refused(reason.into())
    }

    fn into_error(self, entry: &[u8]) -> UnpackError {
        let entry = String::from_utf8_lossy(entry).into_owned();
        match self {
            Self::Refused(reason) => UnpackError::Refused { entry, reason },
            Self::Io(source) => UnpackError::Io { entry, source },
            Self::Read(e) => UnpackError::Read(e),
            Self::Limit(what, limit) => UnpackError::Limit { what, limit },
        }
    }
}

impl From<Errno> for Fail {
    fn from(e: Errno) -> Self {
        Self::Io(e.into())
    }
}

/// A component for messages.
fn show(name: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(name))
}

// ---------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------

/// A normalised path relative to `dest`: plain components joined by `/`.
/// Reused between entries so parsing does not allocate.
#[derive(Debug, Default)]
struct RelPath {
    bytes: Vec<u8>,
    /// End offset in `bytes` of each component.
    ends: Vec<usize>,
}

impl RelPath {
    /// Normalises a tar path, refusing anything that could leave `dest`.
    fn parse(&mut self, raw: &[u8]) -> Result<(), Fail> {
        self.bytes.clear();
        self.ends.clear();
        if raw.is_empty() {
            return Err(Fail::refused("empty name"));
        }
        if raw.contains(&0) {
            return Err(Fail::refused("name contains a NUL byte"));
        }
        for comp in raw.split(|&b| b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => return Err(Fail::refused("path has a `..` component")),
                _ => self.push(comp),
            }
        }
        if self.bytes.len() > MAX_PATH {
            return Err(Fail::refused("path is longer than PATH_MAX"));
        }
        Ok(())
    }

    fn push(&mut self, comp: &[u8]) {
        if !self.bytes.is_empty() {
            self.bytes.push(b'/');
        }
        self.bytes.extend_from_slice(comp);
        self.ends.push(self.bytes.len());
    }

    /// Keeps the first `n` components.
    fn truncate(&mut self, n: usize) {
        self.ends.truncate(n);
        self.bytes.truncate(self.ends.last().copied().unwrap_or(0));
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn is_root(&self) -> bool {
        self.ends.is_empty()
    }

    fn comp(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] + 1 };
        &self.bytes[start..self.ends[i]]
    }

    /// The last component (empty for the root).
    fn name(&self) -> &[u8] {
        self.len().checked_sub(1).map_or(&[], |i| self.comp(i))
    }

    /// Everything but the last component.
    fn parent_bytes(&self) -> &[u8] {
        match self.len() {
            0 | 1 => &[],
            n => &self.bytes[..self.ends[n - 2]],
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

// ---------------------------------------------------------------------------
// Directory walking
// ---------------------------------------------------------------------------

/// Opens directories inside `dest` without following symlinks, caching the
/// chain of the last parent so siblings do not re-walk their path.
#[derive(Debug)]
struct Walker {
    root: OwnedFd,
    /// `levels[i]` is the directory named by the first `i + 1` components of
    /// `cached`. Only ancestors of the current entry are cached, and an entry
    /// only ever replaces its own name, so the cache never goes stale.
    levels: Vec<OwnedFd>,
    cached: RelPath,
    /// The parent of an entry deeper than [`MAX_CACHED_DEPTH`].
    deep: Option<OwnedFd>,
}

impl Walker {
    fn new(root: OwnedFd) -> Self {
        Self {
            root,
            levels: Vec::new(),
            cached: RelPath::default(),
            deep: None,
        }
    }

    fn top(&self) -> BorrowedFd<'_> {
        self.levels.last().unwrap_or(&self.root).as_fd()
    }

    /// The directory named by the first `depth` components of `path`,
    /// creating missing ones if `create`.
    fn dir(&mut self, path: &RelPath, depth: usize, create: bool) -> Result<BorrowedFd<'_>, Fail> {
        let common = self.levels.len().min(depth);
        let keep = (0..common)
            .find(|&i| self.cached.comp(i) != path.comp(i))
            .unwrap_or(common);
        self.levels.truncate(keep);
        self.cached.truncate(keep);
        while self.levels.len() < depth.min(MAX_CACHED_DEPTH) {
            let comp = path.comp(self.levels.len());
            let fd = open_dir(self.top(), comp, create)?;
            self.levels.push(fd);
            self.cached.push(comp);
        }
        if depth <= MAX_CACHED_DEPTH {
            return Ok(self.top());
        }
        let mut fd = open_dir(self.top(), path.comp(MAX_CACHED_DEPTH), create)?;
        for i in MAX_CACHED_DEPTH + 1..depth {
            fd = open_dir(fd.as_fd(), path.comp(i), create)?;
        }
        let fd: &OwnedFd = self.deep.insert(fd);
        Ok(fd.as_fd())
    }

    /// Like [`Walker::dir`] without creating anything or touching the cache.
    fn dir_uncached(&self, path: &RelPath, depth: usize) -> Result<OwnedFd, Fail> {
        let mut fd = self.root.try_clone().map_err(Fail::Io)?;
        for i in 0..depth {
            fd = open_dir(fd.as_fd(), path.comp(i), false)?;
        }
        Ok(fd)
    }
}

/// Opens the directory `name` in `parent`, refusing symlinks and
/// non-directories; creates it (`0755`) if missing and `create`.
fn open_dir(parent: BorrowedFd<'_>, name: &[u8], create: bool) -> Result<OwnedFd, Fail> {
    match openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) if create => {}
        Err(Errno::ENOENT) => return Err(Fail::refused(format!("{} does not exist", show(name)))),
        Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(not_a_directory(parent, name)),
        Err(e) => return Err(e.into()),
    }
    let created = match mkdirat(parent, name, Mode::from_bits_truncate(0o755)) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(e) => return Err(e.into()),
    };
    let fd = match openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(not_a_directory(parent, name)),
        Err(e) => return Err(e.into()),
    };
    if created {
        // Exactly 0755, whatever the umask.
        fchmod(&fd, Mode::from_bits_truncate(0o755))?;
    }
    Ok(fd)
}

fn not_a_directory(parent: BorrowedFd<'_>, name: &[u8]) -> Fail {
    match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
            Fail::refused(format!("parent {} is a symlink", show(name)))
        }
        Ok(_) => Fail::refused(format!("parent {} is not a directory", show(name))),
        Err(e) => e.into(),
    }
}

// ---------------------------------------------------------------------------
// Replacing entries
// ---------------------------------------------------------------------------

/// Runs `create`; if the name is taken, removes the old entry (without
/// following it) and runs `create` once more.
fn create_replacing<T>(
    parent: BorrowedFd<'_>,
    name: &[u8],
    mut create: impl FnMut() -> nix::Result<T>,
) -> Result<T, Fail> {
    match create() {
        Err(Errno::EEXIST) => {
            remove_entry(parent, name)?;
            Ok(create()?)
        }
        other => Ok(other?),
    }
}

/// Removes `name` in `parent`; directories recursively, symlinks themselves.
fn remove_entry(parent: BorrowedFd<'_>, name: &[u8]) -> Result<(), Fail> {
    match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) => remove_tree(parent, name),
        Err(e) => Err(e.into()),
    }
}

fn remove_tree(parent: BorrowedFd<'_>, name: &[u8]) -> Result<(), Fail> {
    let mut dir = Dir::from_fd(openat(parent, name, DIR_FLAGS, Mode::empty())?)?;
    let mut children: Vec<CString> = Vec::new();
    for child in dir.iter() {
        let child = child?;
        let child = child.file_name();
        if child != c"." && child != c".." {
            children.push(child.to_owned());
        }
    }
    for child in &children {
        remove_entry(dir.as_fd(), child.to_bytes())?;
    }
    unlinkat(parent, name, UnlinkatFlags::RemoveDir)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------

/// Owner, mode and mtime of an entry.
#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: Mode,
    uid: Uid,
    gid: Gid,
    mtime: TimeSpec,
}

/// A numeric header field; a field left blank (all NULs or spaces) counts as
/// 0, as in GNU tar and Go's archive/tar.
fn numeric<T: Default>(value: io::Result<T>, raw: &[u8], what: &str) -> Result<T, Fail> {
    match value {
        Ok(v) => Ok(v),
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(T::default()),
        Err(_) => Err(Fail::refused(format!("invalid {what} field"))),
    }
}

/// A uid or gid (`-1` would mean "unchanged" to chown).
fn header_id(value: io::Result<u64>, raw: &[u8], what: &str) -> Result<u32, Fail> {
    u32::try_from(numeric(value, raw, what)?)
        .ok()
        .filter(|&v| v != u32::MAX)
        .ok_or_else(|| Fail::refused(format!("{what} out of range")))
}

/// The raw device number fields (ustar and GNU headers keep them at the same
/// offsets; old headers have none).
fn raw_device_fields(header: &tar::Header) -> (&[u8], &[u8]) {
    match (header.as_ustar(), header.as_gnu()) {
        (Some(u), _) => (&u.dev_major, &u.dev_minor),
        (None, Some(g)) => (&g.dev_major, &g.dev_minor),
        (None, None) => (&[], &[]),
    }
}

/// Parses a PAX time (`secs[.fraction]`, possibly negative).
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut secs: i64 = int.parse().ok()?;
    let mut nanos: i64 = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0, |n, d| n * 10 + i64::from(d - b'0'));
    if negative {
        secs = -secs;
        if nanos > 0 {
            secs -= 1;
            nanos = 1_000_000_000 - nanos;
        }
    }
    Some(TimeSpec::new(secs, nanos))
}

/// Extended attributes of the current entry, from its PAX header. Names are
/// stored NUL-terminated so they can be passed to the kernel as they are.
#[derive(Debug, Default)]
struct Xattrs {
    buf: Vec<u8>,
    /// (name start, value start, value end) in `buf`.
    spans: Vec<(usize, usize, usize)>,
}

impl Xattrs {
    fn clear(&mut self) {
        self.buf.clear();
        self.spans.clear();
    }

    fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn push(&mut self, name: &[u8], value: &[u8]) -> Result<(), Fail> {
        if name.is_empty() || name.contains(&0) {
            return Err(Fail::refused(format!("invalid xattr name {}", show(name))));
        }
        if OVERLAY_XATTR_PREFIXES.iter().any(|p| name.starts_with(p)) {
            tracing::warn!(xattr = %String::from_utf8_lossy(name), "skipping overlayfs xattr from a layer");
            return Ok(());
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(name);
        self.buf.push(0);
        let value_start = self.buf.len();
        self.buf.extend_from_slice(value);
        self.spans.push((start, value_start, self.buf.len()));
        Ok(())
    }

    /// Applies every xattr with `set`, skipping those the filesystem does
    /// not support or permit.
    fn apply(&self, mut set: impl FnMut(&CStr, &[u8]) -> io::Result<()>) -> Result<(), Fail> {
        for &(start, value_start, end) in &self.spans {
            let name = CStr::from_bytes_with_nul(&self.buf[start..value_start])
                .map_err(|_| Fail::refused("invalid xattr name"))?;
            match set(name, &self.buf[value_start..end]) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP | libc::EPERM)) => {
                    tracing::warn!(xattr = ?name, error = %e, "xattr not applied");
                }
                Err(e) => return Err(Fail::Io(e)),
            }
        }
        Ok(())
    }
}

fn fset_xattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor borrowed for the duration of the
    // call, `name` is a NUL-terminated string and `value` a live slice whose
    // pointer and length are passed together; the kernel only reads them.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `lsetxattr` on `name` in `parent`, for entries that must not be opened
/// (symlinks, device nodes). The path goes through the parent's fd, and the
/// final component is not followed.
fn lset_xattr_at(
    parent: BorrowedFd<'_>,
    name: &[u8],
    xattr: &CStr,
    value: &[u8],
) -> io::Result<()> {
    let mut path = format!("/proc/self/fd/{}/", parent.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    let path = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `path` and `xattr` are NUL-terminated strings and `value` a live
    // slice whose pointer and length are passed together; the kernel only
    // reads them, and `parent` stays open for the call.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            xattr.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Owner, xattrs and mtime of a symlink or device node, never following it.
fn finish_at(
    parent: BorrowedFd<'_>,
    name: &[u8],
    meta: &Meta,
    xattrs: &Xattrs,
) -> Result<(), Fail> {
    fchownat(
        parent,
        name,
        Some(meta.uid),
        Some(meta.gid),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    xattrs.apply(|xattr, value| lset_xattr_at(parent, name, xattr, value))?;
    utimensat(
        parent,
        name,
        &meta.mtime,
        &meta.mtime,
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// Directories whose mode and mtime are applied at the end.
#[derive(Debug, Default)]
struct PendingDirs {
    paths: Vec<u8>,
    dirs: Vec<PendingDir>,
}

#[derive(Debug)]
struct PendingDir {
    start: usize,
    end: usize,
    mode: Mode,
    mtime: TimeSpec,
}

impl PendingDirs {
    fn push(&mut self, path: &[u8], meta: &Meta) {
        let start = self.paths.len();
        self.paths.extend_from_slice(path);
        self.dirs.push(PendingDir {
            start,
            end: self.paths.len(),
            mode: meta.mode,
            mtime: meta.mtime,
        });
    }

    fn path(&self, dir: &PendingDir) -> &[u8] {
        &self.paths[dir.start..dir.end]
    }
}

// ---------------------------------------------------------------------------
// Entries
// ---------------------------------------------------------------------------

/// The state of one unpack; buffers are reused between entries.
#[derive(Debug)]
struct Unpacker<'l> {
    limits: &'l UnpackLimits,
    walker: Walker,
    stats: UnpackStats,
    /// Bytes charged against `max_bytes` (all entry data, not only files).
    charged: u64,
    buf: Vec<u8>,
    raw_path: Vec<u8>,
    raw_link: Vec<u8>,
    path: RelPath,
    target: RelPath,
    xattrs: Xattrs,
    pending: PendingDirs,
    /// The current entry is a PAX 1.0 sparse file.
    pax_sparse: Option<sparse::PaxSparse>,
}

impl<'l> Unpacker<'l> {
    fn new(root: OwnedFd, limits: &'l UnpackLimits) -> Self {
        Self {
            limits,
            walker: Walker::new(root),
            stats: UnpackStats::default(),
            charged: 0,
            buf: vec![0; COPY_BUFFER],
            raw_path: Vec::new(),
            raw_link: Vec::new(),
            path: RelPath::default(),
            target: RelPath::default(),
            xattrs: Xattrs::default(),
            pending: PendingDirs::default(),
            pax_sparse: None,
        }
    }

    fn remaining_budget(&self) -> u64 {
        self.limits.max_bytes.saturating_sub(self.charged)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        self.raw_path.clear();
        self.raw_path.extend_from_slice(&entry.path_bytes());
        self.sparse_records(entry)
            .and_then(|()| self.entry_inner(entry))
            .map_err(|fail| fail.into_error(&self.raw_path))
    }

    /// Notes a PAX 1.0 sparse file, whose real name replaces the one in its
    /// header.
    fn sparse_records<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Fail> {
        self.pax_sparse = None;
        let Some(mut records) = entry.pax_extensions().map_err(Fail::Read)? else {
            return Ok(());
        };
        let is_sparse = |r: &io::Result<tar::PaxExtension<'_>>| {
            r.as_ref()
                .is_ok_and(|r| r.key_bytes().starts_with(b"GNU.sparse."))
        };
        if !records.any(|r| is_sparse(&r)) {
            return Ok(());
        }
        // The records are kept in memory: reading them again is cheap.
        let Some(records) = entry.pax_extensions().map_err(Fail::Read)? else {
            return Ok(());
        };
        let pairs = records
            .filter_map(Result::ok)
            .map(|r| (r.key_bytes(), r.value_bytes()));
        let found = sparse::PaxSparse::from_records(pairs)?;
        if let Some(name) = found.as_ref().and_then(|s| s.name.as_ref()) {
            self.raw_path.clear();
            self.raw_path.extend_from_slice(name);
        }
        self.pax_sparse = found;
        Ok(())
    }

    fn entry_inner<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Fail> {
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(Fail::Limit("entries", self.limits.max_entries));
        }
        // A sparse file takes its real size of the budget.
        let size = self
            .pax_sparse
            .as_ref()
            .map_or(entry.size(), |s| s.real_size.max(entry.size()));
        if size > self.remaining_budget() {
            return Err(Fail::Limit("bytes", self.limits.max_bytes));
        }
        self.charged += size;
        self.dispatch(entry)?;
        // Whatever data the entry carried and was not used.
        discard_to_end(entry, &mut self.buf).map_err(Fail::Read)
    }

    fn dispatch<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Fail> {
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        self.path.parse(&self.raw_path)?;
        if self.pax_sparse.is_some() && kind != EntryType::Regular {
            return Err(Fail::refused(
                "sparse records on an entry that is not a file",
            ));
        }
        // Old (v7) archives mark directories with a trailing slash only.
        let is_dir = kind == EntryType::Directory
            || (kind == EntryType::Regular && self.raw_path.ends_with(b"/"));
        if self.path.is_root() {
            return if is_dir {
                Ok(())
            } else {
                Err(Fail::refused("entry names the layer root"))
            };
        }
        if self.path.name().starts_with(WHITEOUT_PREFIX) {
            return self.whiteout();
        }
        match kind {
            _ if is_dir => self.directory(entry),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.regular(entry)
            }
            EntryType::Symlink => self.symlink(entry),
            EntryType::Link => self.hard_link(entry),
            EntryType::Char | EntryType::Block | EntryType::Fifo => self.special(entry, kind),
            other => Err(Fail::refused(format!(
                "unsupported entry type {:?}",
                char::from(other.as_byte())
            ))),
        }
    }

    /// Reads owner, mode and mtime from the header and xattrs (and a precise
    /// mtime) from the PAX records.
    fn read_meta<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<Meta, Fail> {
        let header = entry.header();
        let old = header.as_old();
        let mode = numeric(header.mode(), &old.mode, "mode")?;
        let uid = header_id(header.uid(), &old.uid, "uid")?;
        let gid = header_id(header.gid(), &old.gid, "gid")?;
        let secs = numeric(header.mtime(), &old.mtime, "mtime")?;
        let mut meta = Meta {
            mode: Mode::from_bits_truncate(mode & 0o7777),
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid),
            mtime: TimeSpec::new(i64::try_from(secs).unwrap_or(i64::MAX), 0),
        };
        self.xattrs.clear();
        if let Some(records) = entry.pax_extensions().map_err(Fail::Read)? {
            for record in records {
                let record = record.map_err(|_| Fail::refused("malformed PAX record"))?;
                let key = record.key_bytes();
                if key == b"mtime" {
                    if let Some(mtime) = parse_pax_time(record.value_bytes()) {
                        meta.mtime = mtime;
                    }
                } else if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    self.xattrs.push(name, record.value_bytes())?;
                }
            }
        }
        Ok(meta)
    }

    /// Copies the link name into `raw_link`.
    fn read_link_name<R: Read>(&mut self, entry: &tar::Entry<'_, R>) -> Result<(), Fail> {
        let link = entry
            .link_name_bytes()
            .ok_or_else(|| Fail::refused("link without a target"))?;
        self.raw_link.clear();
        self.raw_link.extend_from_slice(&link);
        if self.raw_link.is_empty() {
            return Err(Fail::refused("empty link target"));
        }
        if self.raw_link.contains(&0) {
            return Err(Fail::refused("link target contains a NUL byte"));
        }
        Ok(())
    }

    fn regular<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Fail> {
        let size = entry.size();
        let meta = self.read_meta(entry)?;
        let parent = self.walker.dir(&self.path, self.path.len() - 1, true)?;
        let name = self.path.name();
        let fd = create_replacing(parent, name, || {
            openat(
                parent,
                name,
                NEW_FILE_FLAGS,
                Mode::from_bits_truncate(0o600),
            )
        })?;
        let mut file = File::from(fd);
        let written = match self.pax_sparse.take() {
            Some(s) => {
                sparse::copy_pax_1_0(entry, &mut file, size, s.real_size, &mut self.buf)?;
                s.real_size
            }
            None if entry.header().entry_type() == EntryType::GNUSparse => {
                sparse::copy_skipping_zeros(entry, &mut file, size, &mut self.buf)?;
                size
            }
            None => {
                copy_exact(entry, &mut file, size, &mut self.buf)?;
                size
            }
        };
        // chown clears set-id bits and capabilities: chown, then chmod, then
        // xattrs; the mtime last.
        fchown(&file, Some(meta.uid), Some(meta.gid))?;
        fchmod(&file, meta.mode)?;
        self.xattrs
            .apply(|xattr, value| fset_xattr(file.as_fd(), xattr, value))?;
        futimens(&file, &meta.mtime, &meta.mtime)?;
        self.stats.bytes += written;
        Ok(())
    }

    fn directory<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Fail> {
        let meta = self.read_meta(entry)?;
        let parent = self.walker.dir(&self.path, self.path.len() - 1, true)?;
        let name = self.path.name();
        match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                let st = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
                if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                    remove_entry(parent, name)?;
                    mkdirat(parent, name, Mode::from_bits_truncate(0o700))?;
                }
            }
            Err(e) => return Err(e.into()),
        }
        fchownat(
            parent,
            name,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        if !self.xattrs.is_empty() {
            let dir = open_dir(parent, name, false)?;
            self.xattrs
                .apply(|xattr, value| fset_xattr(dir.as_fd(), xattr, value))?;
        }
        self.pending.push(self.path.as_bytes(), &meta);
        Ok(())
    }

    fn symlink<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Fail> {
        self.read_link_name(entry)?;
        let meta = self.read_meta(entry)?;
        let parent = self.walker.dir(&self.path, self.path.len() - 1, true)?;
        let name = self.path.name();
        let target = self.raw_link.as_slice();
        create_replacing(parent, name, || symlinkat(target, parent, name))?;
        finish_at(parent, name, &meta, &self.xattrs)
    }

    fn hard_link<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Fail> {
        self.read_link_name(entry)?;
        let in_target = |fail: Fail| match fail {
            Fail::Refused(reason) => Fail::Refused(format!("hard link target: {reason}")),
            other => other,
        };
        self.target.parse(&self.raw_link).map_err(in_target)?;
        if self.target.is_root() {
            return Err(Fail::refused("hard link to the layer root"));
        }
        if self.target.as_bytes() == self.path.as_bytes() {
            return Err(Fail::refused("hard link to itself"));
        }
        let target_dir = if self.target.parent_bytes() == self.path.parent_bytes() {
            None
        } else {
            let depth = self.target.len() - 1;
            Some(
                self.walker
                    .dir_uncached(&self.target, depth)
                    .map_err(in_target)?,
            )
        };
        let parent = self.walker.dir(&self.path, self.path.len() - 1, true)?;
        let target_parent = target_dir.as_ref().map_or(parent, |fd| fd.as_fd());
        let target_name = self.target.name();
        match fstatat(target_parent, target_name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                return Err(Fail::refused("hard link target is a directory"));
            }
            Ok(_) => {}
            Err(Errno::ENOENT) => return Err(Fail::refused("hard link target does not exist")),
            Err(e) => return Err(e.into()),
        }
        let name = self.path.name();
        create_replacing(parent, name, || {
            linkat(target_parent, target_name, parent, name, AtFlags::empty())
        })
    }

    fn special<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: EntryType,
    ) -> Result<(), Fail> {
        let kind = match kind {
            EntryType::Fifo => SFlag::S_IFIFO,
            _ if !self.limits.allow_devices => {
                // Its parents are walked (and made) as for any entry, so a
                // device's name is held to the same rules.
                self.walker.dir(&self.path, self.path.len() - 1, true)?;
                self.skip_device();
                return Ok(());
            }
            EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFCHR,
        };
        let header = entry.header();
        let (raw_major, raw_minor) = raw_device_fields(header);
        let major = numeric(header.device_major(), raw_major, "device major")?.unwrap_or(0);
        let minor = numeric(header.device_minor(), raw_minor, "device minor")?.unwrap_or(0);
        let dev = makedev(major.into(), minor.into());
        let meta = self.read_meta(entry)?;
        let parent = self.walker.dir(&self.path, self.path.len() - 1, true)?;
        let name = self.path.name();
        create_replacing(parent, name, || {
            mknodat(parent, name, kind, Mode::from_bits_truncate(0o600), dev)
        })?;
        fchownat(
            parent,
            name,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        fchmodat(parent, name, meta.mode, FchmodatFlags::NoFollowSymlink)?;
        finish_at(parent, name, &meta, &self.xattrs)
    }

    /// Records a device node that is not created.
    fn skip_device(&mut self) {
        self.stats.devices_skipped += 1;
        if self.stats.devices_skipped_names.len() < SKIPPED_NAMES_KEPT {
            self.stats
                .devices_skipped_names
                .push(String::from_utf8_lossy(self.path.as_bytes()).into_owned());
        }
    }

    /// `.wh.NAME` and `.wh..wh..opq` entries.
    fn whiteout(&mut self) -> Result<(), Fail> {
        let parent = self.walker.dir(&self.path, self.path.len() - 1, true)?;
        let name = self.path.name();
        if name == OPAQUE_MARKER {
            return fset_xattr(parent, OPAQUE_XATTR, b"y").map_err(Fail::Io);
        }
        if name.starts_with(WHITEOUT_META_PREFIX) {
            return Ok(());
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if matches!(hidden, b"" | b"." | b"..") {
            return Err(Fail::refused("invalid whiteout name"));
        }
        match fstatat(parent, hidden, AtFlags::AT_SYMLINK_NOFOLLOW) {
            // This layer's own entry: a whiteout only hides lower layers.
            Ok(_) => Ok(()),
            Err(Errno::ENOENT) => {
                mknodat(parent, hidden, SFlag::S_IFCHR, Mode::empty(), 0)?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Applies directory modes and mtimes, children before parents.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let mut dirs = std::mem::take(&mut self.pending);
        // Stable and descending: a child sorts after its parent, so it is
        // handled first; a directory listed twice keeps its last metadata.
        let PendingDirs { paths, dirs: list } = &mut dirs;
        list.sort_by(|a, b| paths[b.start..b.end].cmp(&paths[a.start..a.end]));
        for dir in &dirs.dirs {
            self.raw_path.clear();
            self.raw_path.extend_from_slice(dirs.path(dir));
            self.finish_dir(dir)
                .map_err(|fail| fail.into_error(&self.raw_path))?;
        }
        Ok(())
    }

    fn finish_dir(&mut self, dir: &PendingDir) -> Result<(), Fail> {
        self.path.parse(&self.raw_path)?;
        let parent = match self.walker.dir(&self.path, self.path.len() - 1, false) {
            Ok(parent) => parent,
            // Replaced by a later entry.
            Err(Fail::Refused(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let fd = match openat(parent, self.path.name(), DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        fchmod(&fd, dir.mode)?;
        futimens(&fd, &dir.mtime, &dir.mtime)?;
        Ok(())
    }
}

/// Copies exactly `size` bytes of entry data into `file`.
fn copy_exact(src: &mut impl Read, file: &mut File, size: u64, buf: &mut [u8]) -> Result<(), Fail> {
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(Fail::Read(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "layer ends inside a file",
                )));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Fail::Read(e)),
        };
        file.write_all(&buf[..n]).map_err(Fail::Io)?;
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> Result<String, String> {
        let mut path = RelPath::default();
        match path.parse(raw.as_bytes()) {
            Ok(()) => Ok(String::from_utf8(path.as_bytes().to_vec()).unwrap()),
            Err(Fail::Refused(reason)) => Err(reason),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(parsed("./a/b/").unwrap(), "a/b");
        assert_eq!(parsed("a//./b").unwrap(), "a/b");
        assert_eq!(parsed("./").unwrap(), "");
        assert_eq!(parsed(".").unwrap(), "");
        assert_eq!(parsed("...").unwrap(), "...");
        assert_eq!(parsed("a/..b").unwrap(), "a/..b");
        // Absolute names are relative to the layer root, as in containerd.
        assert_eq!(parsed("/etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(parsed("//etc/./x/").unwrap(), "etc/x");
        assert_eq!(parsed("/").unwrap(), "");
    }

    #[test]
    fn hostile_paths_are_refused() {
        for raw in [
            "",
            "/../x",
            "/etc/../../x",
            "../x",
            "a/../../x",
            "a/..",
            "./..",
            "a\0b",
        ] {
            assert!(parsed(raw).is_err(), "{raw:?} was accepted");
        }
        let longest = "a/".repeat(2048);
        assert_eq!(parsed(&longest).unwrap().len(), MAX_PATH);
        assert!(parsed(&format!("b{longest}")).is_err());
    }

    #[test]
    fn components() {
        let mut path = RelPath::default();
        path.parse(b"./usr/bin/ls").unwrap();
        assert_eq!(path.len(), 3);
        assert_eq!(path.comp(1), b"bin");
        assert_eq!(path.name(), b"ls");
        assert_eq!(path.parent_bytes(), b"usr/bin");
        path.truncate(1);
        assert_eq!(path.as_bytes(), b"usr");
        assert_eq!(path.parent_bytes(), b"");
        path.push(b"lib");
        assert_eq!(path.as_bytes(), b"usr/lib");
    }

    #[test]
    fn media_types() {
        use Compression as C;
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar", Some(C::None)),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Some(C::Gzip)),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Some(C::Zstd)),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Some(C::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(C::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Some(C::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.zstd",
                Some(C::Zstd),
            ),
            (
                "Application/VND.OCI.image.layer.v1.tar+GZIP; foo=bar",
                Some(C::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
                None,
            ),
            ("application/vnd.oci.image.config.v1+json", None),
            ("application/vnd.oci.image.layer.v1.tar+bzip2", None),
            ("application/octet-stream", None),
        ];
        for (mt, want) in cases {
            assert_eq!(Compression::from_media_type(mt), want, "{mt}");
        }
    }

    #[test]
    fn sniffing() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/\0\0\0"), Compression::None);
        assert_eq!(Compression::sniff(&[0x1f]), Compression::None);
        assert_eq!(Compression::sniff(&[]), Compression::None);
    }

    #[test]
    fn pax_times() {
        let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec(), t.tv_nsec()));
        assert_eq!(t("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(t("1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(t("1.1234567899"), Some((1, 123_456_789)));
        assert_eq!(t("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(t("-3"), Some((-3, 0)));
        assert_eq!(t(""), None);
        assert_eq!(t("x1"), None);
        assert_eq!(t("1.x"), None);
        assert_eq!(t("+1"), None);
    }

    #[test]
    fn guard_limits_reads() {
        let allowance = Cell::new(5);
        let tripped = Cell::new(false);
        let (position, ended) = (Cell::new(0), Cell::new(false));
        let mut guard = Guard {
            inner: &b"0123456789"[..],
            allowance: &allowance,
            tripped: &tripped,
            position: &position,
            ended: &ended,
        };
        let mut buf = [0; 8];
        assert_eq!(guard.read(&mut buf).unwrap(), 5);
        assert!(!tripped.get());
        assert!(guard.read(&mut buf).is_err());
        assert!(tripped.get());
        allowance.set(u64::MAX);
        assert_eq!(guard.read(&mut buf).unwrap(), 5);
        assert_eq!((position.get(), ended.get()), (10, false));
        assert_eq!(guard.read(&mut buf).unwrap(), 0);
        assert!(ended.get());
    }
}
