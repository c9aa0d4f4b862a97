//! User-namespace remapping (`run --userns-remap`): root in the container
//! is an unprivileged user on the host (uid and gid `0..size` map to
//! `host_id..host_id+size`, like Docker's `userns-remap`).
//!
//! The container's first process is cloned into a new user namespace
//! together with its other namespaces, so they all belong to it. The
//! image layers stay owned by root on disk and are shared with every
//! other container: the shim hands the child an *idmapped* mount of each
//! layer (`open_tree` + `mount_setattr(MOUNT_ATTR_IDMAP)`, Linux 5.12+),
//! through a socket, and the child stacks them under overlayfs inside its
//! namespaces (overlayfs on idmapped lower layers: Linux 5.19+). Nothing
//! is copied or chowned but the container's own upper directory.
//!
//! The mount-API system calls have no wrapper in nix yet, hence the raw
//! `syscall`s here.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use super::spec::IdRange;

/// Writes the uid and gid maps of the (new) user namespace of `pid`.
pub fn write_maps(pid: i32, range: IdRange) -> std::io::Result<()> {
    let line = format!("0 {} {}\n", range.host_id, range.size);
    std::fs::write(format!("/proc/{pid}/uid_map"), &line)?;
    std::fs::write(format!("/proc/{pid}/gid_map"), &line)
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` (version 0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn check(r: libc::c_long) -> std::io::Result<libc::c_long> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A detached copy of the mount at `path`, its ids shifted through the
/// user namespace `userns`.
pub fn idmapped_tree(path: &Path, userns: &OwnedFd) -> std::io::Result<OwnedFd> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated path; the kernel returns a new descriptor.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    })?;
    // SAFETY: we own the new descriptor.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: `attr` is a valid mount_attr of the given size; "" with
    // AT_EMPTY_PATH names the tree itself.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map_err(|e| std::io::Error::new(e.kind(), format!("idmap {}: {e}", path.display())))?;
    Ok(tree)
}

/// Attaches a detached tree at `target`.
pub fn attach(tree: &OwnedFd, target: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()))
        .map_err(std::io::Error::other)?;
    // SAFETY: valid descriptors and NUL-terminated paths.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(|_| ())
}

/// Sends descriptors over a Unix socket (one message).
pub fn send_fds(sock: &OwnedFd, fds: &[OwnedFd]) -> std::io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let count = (raw.len() as u32).to_le_bytes();
    let iov = [IoSlice::new(&count)];
    let cmsg = [ControlMessage::ScmRights(&raw)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives the descriptors [`send_fds`] sent.
pub fn recv_fds(sock: &OwnedFd, max: usize) -> std::io::Result<Vec<OwnedFd>> {
    let mut count = [0u8; 4];
    let mut iov = [std::io::IoSliceMut::new(&mut count)];
    let mut space = nix::cmsg_space!([RawFd; 253]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut out = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel installed these descriptors for us.
                out.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if out.len() > max {
        return Err(std::io::Error::other("too many descriptors"));
    }
    Ok(out)
}
