//! The device allow-list of a container: only the devices of its minimal
//! `/dev` may be read or written (creating device nodes is allowed, using
//! them is not), as Docker's default.
//!
//! * cgroup v1: the `devices` controller (`devices.deny` everything, then
//!   `devices.allow` each entry) through cgroups-rs.
//! * cgroup v2 has no device files: access is decided by an eBPF program
//!   of type `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the cgroup. The
//!   program is a short list of compare-and-jump instructions generated
//!   from the same list; it is assembled and loaded here with the `bpf(2)`
//!   system call directly, as runc and youki do, because the eBPF crates
//!   (aya, libbpf-rs) build programs from separate C or Rust BPF sources
//!   and need clang or libbpf, far more than twenty instructions warrant.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use cgroups_rs::fs::devices::{DevicePermissions, DeviceType, DevicesController};
use cgroups_rs::fs::{Cgroup, hierarchies};

/// `b` or `c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Block,
    Char,
    /// Both.
    Any,
}

/// One allowed device (or range): `None` is any major or minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub kind: Kind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// Bits of [`MKNOD`], [`READ`], [`WRITE`].
    pub access: u32,
}

pub const MKNOD: u32 = 1;
pub const READ: u32 = 2;
pub const WRITE: u32 = 4;
const RWM: u32 = MKNOD | READ | WRITE;

const fn chr(major: u32, minor: Option<u32>) -> Rule {
    Rule {
        kind: Kind::Char,
        major: Some(major),
        minor,
        access: RWM,
    }
}

/// Docker's default list: mknod of anything; use of null, zero, full,
/// random, urandom, tty, console, ptmx and the pseudo-terminals.
pub const DEFAULT: &[Rule] = &[
    Rule {
        kind: Kind::Any,
        major: None,
        minor: None,
        access: MKNOD,
    },
    chr(1, Some(3)),
    chr(1, Some(5)),
    chr(1, Some(7)),
    chr(1, Some(8)),
    chr(1, Some(9)),
    chr(5, Some(0)),
    chr(5, Some(1)),
    chr(5, Some(2)),
    chr(136, None),
];

/// Restricts the cgroup at `path` (relative to the hierarchy root) to
/// `rules`.
pub fn restrict(path: &str, rules: &[Rule]) -> Result<(), String> {
    if hierarchies::is_cgroup2_unified_mode() {
        let dir = Path::new(hierarchies::UNIFIED_MOUNTPOINT).join(path);
        attach_program(&dir, &program(rules))
            .map_err(|e| format!("cgroup {path}: device filter: {e}"))
    } else {
        let cg = Cgroup::load(hierarchies::auto(), path);
        let Some(dev) = cg.controller_of::<DevicesController>() else {
            return Err(format!("cgroup {path}: no devices controller"));
        };
        let e = |e: cgroups_rs::fs::error::Error| format!("cgroup {path}: devices: {e}");
        dev.deny_device(DeviceType::All, -1, -1, &DevicePermissions::all())
            .map_err(e)?;
        for r in rules {
            // `a` in devices.allow allows everything whatever the rest of
            // the line says: a rule for both types is written as two.
            let kinds: &[DeviceType] = match r.kind {
                Kind::Block => &[DeviceType::Block],
                Kind::Char => &[DeviceType::Char],
                Kind::Any => &[DeviceType::Char, DeviceType::Block],
            };
            let mut perms = Vec::new();
            for (bit, p) in [
                (READ, DevicePermissions::Read),
                (WRITE, DevicePermissions::Write),
                (MKNOD, DevicePermissions::MkNod),
            ] {
                if r.access & bit != 0 {
                    perms.push(p);
                }
            }
            let n = |v: Option<u32>| v.map_or(-1, i64::from);
            for kind in kinds {
                dev.allow_device(*kind, n(r.major), n(r.minor), &perms)
                    .map_err(e)?;
            }
        }
        Ok(())
    }
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

// Opcodes (linux/bpf.h, linux/bpf_common.h).
const LDX_MEM_W: u8 = 0x61;
const ALU64_MOV_X: u8 = 0xbf;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const JMP_JNE_K: u8 = 0x55;
const EXIT: u8 = 0x95;

/// `BPF_DEVCG_DEV_BLOCK`, `BPF_DEVCG_DEV_CHAR`.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// The device filter for `rules`: 1 (allow) when a rule matches the
/// device's type, major and minor and grants every access asked, else 0.
///
/// The context is `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major;
/// u32 minor; }`, where `access_type` is `access << 16 | type`.
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),        // r2 = access_type
        insn(ALU64_MOV_X, 3, 2, 0, 0),      // r3 = r2
        insn(ALU64_AND_K, 3, 0, 0, 0xffff), // r3 = type
        insn(ALU64_RSH_K, 2, 0, 0, 16),     // r2 = access
        insn(LDX_MEM_W, 4, 1, 4, 0),        // r4 = major
        insn(LDX_MEM_W, 5, 1, 8, 0),        // r5 = minor
    ];
    for r in rules {
        let mut block = Vec::new();
        match r.kind {
            Kind::Block => block.push((3, DEV_BLOCK)),
            Kind::Char => block.push((3, DEV_CHAR)),
            Kind::Any => {}
        }
        if let Some(m) = r.major {
            block.push((4, m as i32));
        }
        if let Some(m) = r.minor {
            block.push((5, m as i32));
        }
        // Each compare jumps past the rest of this rule on mismatch: the
        // remaining compares, the access check (3) and the return (2).
        let n = block.len();
        for (i, (reg, value)) in block.into_iter().enumerate() {
            let skip = (n - i - 1) + 3 + 2;
            p.push(insn(JMP_JNE_K, reg, 0, skip as i16, value));
        }
        // Every access asked must be granted: (access & !granted) == 0.
        p.push(insn(ALU64_MOV_X, 6, 2, 0, 0));
        p.push(insn(ALU64_AND_K, 6, 0, 0, !(r.access as i32)));
        p.push(insn(JMP_JNE_K, 6, 0, 2, 0));
        p.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        p.push(insn(EXIT, 0, 0, 0, 0));
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// `union bpf_attr` for `BPF_PROG_LOAD`, zero-padded.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    pad: [u8; 80],
}

/// `union bpf_attr` for `BPF_PROG_ATTACH`, zero-padded.
#[repr(C)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    pad: [u8; 104],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a properly laid out, zero-padded `bpf_attr` of
    // size_of::<T>() bytes that lives across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Loads `insns` and attaches it to the cgroup directory `dir`. The
/// attachment keeps the program alive; it goes with the cgroup.
fn attach_program(dir: &Path, insns: &[Insn]) -> std::io::Result<()> {
    let license = c"GPL";
    // Without a log first: the verifier's trace of even this short program
    // overflows a small buffer, and an overflowing log fails the load
    // (ENOSPC) on older kernels. The log is only wanted to explain a failure.
    let load = |log: &mut [u8]| {
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: log.len() as u32,
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            pad: [0; 80],
        };
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    let prog = match load(&mut []) {
        // SAFETY: the kernel returned a new descriptor that we now own.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as i32) },
        Err(e) => {
            let mut log = vec![0u8; 1 << 20];
            let _ = load(&mut log);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let verifier = String::from_utf8_lossy(&log[..end]);
            return Err(std::io::Error::new(
                e.kind(),
                format!("load: {e}: {}", verifier.trim()),
            ));
        }
    };
    let cgroup = std::fs::File::open(dir)?;
    let mut attach = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        pad: [0; 104],
    };
    bpf(BPF_PROG_ATTACH, &mut attach)
        .map(|_| ())
        .map_err(|e| std::io::Error::new(e.kind(), format!("attach to {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the filter on a context the way the kernel would, with a
    /// tiny interpreter of the instructions `program` emits.
    fn run(p: &[Insn], kind: i32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [(access << 16) | kind as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 15) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = u64::from(ctx[i.off as usize / 4]),
                ALU64_MOV_X => r[dst] = r[src],
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                ALU64_AND_K => r[dst] &= i.imm as i64 as u64,
                ALU64_RSH_K => r[dst] >>= i.imm,
                JMP_JNE_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc += i.off as usize;
                    }
                }
                EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
            assert!(src <= 10 && dst <= 10);
        }
    }

    #[test]
    fn the_default_filter_allows_the_minimal_dev_only() {
        let p = program(DEFAULT);
        let rw = READ | WRITE;
        // /dev/null, /dev/urandom, a pty: read and write.
        assert_eq!(run(&p, DEV_CHAR, rw, 1, 3), 1);
        assert_eq!(run(&p, DEV_CHAR, READ, 1, 9), 1);
        assert_eq!(run(&p, DEV_CHAR, rw, 136, 7), 1);
        // /dev/mem (1:1), /dev/kmsg (1:11), a disk (block 8:0): no.
        assert_eq!(run(&p, DEV_CHAR, READ, 1, 1), 0);
        assert_eq!(run(&p, DEV_CHAR, rw, 1, 11), 0);
        assert_eq!(run(&p, DEV_BLOCK, READ, 8, 0), 0);
        // The same numbers as a block device are not the char device.
        assert_eq!(run(&p, DEV_BLOCK, READ, 1, 3), 0);
        // mknod of anything, but not mknod together with reading it.
        assert_eq!(run(&p, DEV_BLOCK, MKNOD, 8, 0), 1);
        assert_eq!(run(&p, DEV_BLOCK, MKNOD | READ, 8, 0), 0);
    }

    #[test]
    fn an_empty_list_denies_everything() {
        let p = program(&[]);
        assert_eq!(run(&p, DEV_CHAR, READ, 1, 3), 0);
        assert_eq!(p.len(), 8);
    }
}
