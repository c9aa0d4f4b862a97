//! Size limits of local volumes: project quotas, where the filesystem
//! under the agent's state directory has them (XFS; ext4 made with
//! `-O project,quota` and mounted with `prjquota`). As Docker's overlay2
//! `size` option does, a volume's directory gets a project id of its own,
//! inherited by everything made in it, and the project a hard block limit;
//! a write past it fails with `EDQUOT` in the container (which has no
//! `CAP_SYS_RESOURCE`, so the limit holds for its root too).
//!
//! Written by hand on `libc`: no maintained crate wraps `quotactl_fd(2)`
//! or the `FS_IOC_FS[GS]ETXATTR` ioctls. Everything here is a kernel call;
//! the rule (which id a directory gets) is [`project_id`].

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

/// Why a volume could not be given its limit.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("{}: {op}: {source}", path.display())]
    Sys {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: nix::Error,
    },
    /// The filesystem cannot hold a directory to a size (the agent says so
    /// to the gateway instead of failing the container).
    #[error("{0}")]
    Unsupported(String),
}

/// `struct fsxattr` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

nix::ioctl_read!(fs_get_xattr, b'X', 31, FsXattr);
nix::ioctl_write_ptr!(fs_set_xattr, b'X', 32, FsXattr);

/// New files and directories take their directory's project.
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;
/// `<linux/quota.h>`; not in `libc`.
const PRJQUOTA: libc::c_int = 2;
/// Quota limits count 1 KiB blocks.
const QIF_DQBLKSIZE: u64 = 1024;

fn qcmd(cmd: libc::c_int) -> libc::c_int {
    (cmd << 8) | PRJQUOTA
}

/// The project id of a volume's directory: its inode number, unique on its
/// filesystem while it exists (ext4's are 32-bit); a larger one (XFS
/// `inode64`) is folded into the upper half of the id space.
pub fn project_id(inode: u64) -> u32 {
    match u32::try_from(inode) {
        Ok(id) if id != 0 => id,
        _ => 0x8000_0000 | ((inode ^ (inode >> 32)) as u32 & 0x7fff_ffff).max(1),
    }
}

fn open_dir(dir: &Path) -> Result<OwnedFd, QuotaError> {
    open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|source| QuotaError::Sys {
        path: dir.to_path_buf(),
        op: "open",
        source,
    })
}

fn quotactl(fd: &OwnedFd, cmd: libc::c_int, id: u32, addr: *mut libc::c_void) -> nix::Result<()> {
    // SAFETY: quotactl_fd(2) reads or writes the structure `addr` points
    // at (a `dqblk` or an `if_dqinfo`, both owned by the caller and large
    // enough for the command).
    let r = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fd.as_raw_fd(),
            qcmd(cmd) as libc::c_uint,
            id as libc::c_uint,
            addr,
        )
    };
    nix::errno::Errno::result(r).map(drop)
}

/// Whether directories under `dir` can be held to a size; the reason they
/// cannot, in one line, otherwise.
pub fn probe(dir: &Path) -> Result<(), QuotaError> {
    let fd = open_dir(dir)?;
    // struct if_dqinfo: two u64, two u32.
    let mut info = [0u64; 3];
    match quotactl(&fd, libc::Q_GETINFO, 0, info.as_mut_ptr().cast()) {
        Ok(()) => {}
        Err(e) => {
            let fs = nix::sys::statfs::fstatfs(&fd)
                .map(|s| fs_name(s.filesystem_type()))
                .unwrap_or("unknown");
            return Err(QuotaError::Unsupported(format!(
                "{} is on {fs} without project quotas ({e}): use XFS or ext4 (-O project,quota) mounted with prjquota",
                dir.display()
            )));
        }
    }
    let mut attr = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR fills a `struct fsxattr` we own.
    unsafe { fs_get_xattr(fd.as_raw_fd(), &mut attr) }.map_err(|e| {
        QuotaError::Unsupported(format!("{} has no project ids ({e})", dir.display()))
    })?;
    Ok(())
}

/// Holds directory `dir` (and everything made in it from now on) to
/// `bytes`; idempotent. The directory keeps the project id it has.
pub fn limit(dir: &Path, bytes: u64) -> Result<u32, QuotaError> {
    let fd = open_dir(dir)?;
    let sys = |op: &'static str| {
        move |source| QuotaError::Sys {
            path: dir.to_path_buf(),
            op,
            source,
        }
    };
    let mut attr = FsXattr::default();
    // SAFETY: as in `probe`.
    unsafe { fs_get_xattr(fd.as_raw_fd(), &mut attr) }.map_err(sys("FS_IOC_FSGETXATTR"))?;
    if attr.projid == 0 || attr.xflags & FS_XFLAG_PROJINHERIT == 0 {
        if attr.projid == 0 {
            let st = nix::sys::stat::fstat(&fd).map_err(sys("fstat"))?;
            attr.projid = project_id(st.st_ino);
        }
        attr.xflags |= FS_XFLAG_PROJINHERIT;
        // SAFETY: FS_IOC_FSSETXATTR reads the `struct fsxattr` we pass.
        unsafe { fs_set_xattr(fd.as_raw_fd(), &attr) }.map_err(sys("FS_IOC_FSSETXATTR"))?;
    }
    let blocks = bytes.div_ceil(QIF_DQBLKSIZE);
    // SAFETY: dqblk is plain data; zeroed is a valid value.
    let mut q: libc::dqblk = unsafe { std::mem::zeroed() };
    q.dqb_bhardlimit = blocks;
    q.dqb_bsoftlimit = blocks;
    q.dqb_valid = libc::QIF_BLIMITS;
    quotactl(&fd, libc::Q_SETQUOTA, attr.projid, (&raw mut q).cast())
        .map_err(sys("quotactl_fd(Q_SETQUOTA, PRJQUOTA)"))?;
    Ok(attr.projid)
}

fn fs_name(t: nix::sys::statfs::FsType) -> &'static str {
    use nix::sys::statfs as fs;
    match t {
        fs::EXT4_SUPER_MAGIC => "ext4",
        fs::XFS_SUPER_MAGIC => "xfs",
        fs::TMPFS_MAGIC => "tmpfs",
        fs::OVERLAYFS_SUPER_MAGIC => "overlayfs",
        fs::BTRFS_SUPER_MAGIC => "btrfs",
        _ => "a filesystem",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_s_project_is_its_inode_or_a_folded_one_never_zero() {
        assert_eq!(project_id(12), 12);
        assert_eq!(project_id(u64::from(u32::MAX)), u32::MAX);
        for big in [0, 1 << 32, (1 << 40) + 7, u64::MAX] {
            let id = project_id(big);
            assert!(id >= 0x8000_0000, "{big} -> {id}");
        }
        assert_ne!(project_id((1 << 40) + 7), project_id((1 << 40) + 8));
    }

    #[test]
    fn a_filesystem_without_project_quotas_is_named_in_the_reason() {
        // /proc has neither quotas nor project ids, on every kernel.
        let why = probe(Path::new("/proc")).unwrap_err().to_string();
        assert!(why.starts_with("/proc is on "), "{why}");
        assert!(why.contains("without project quotas"), "{why}");
    }
}
