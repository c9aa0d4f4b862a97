//! `skiff-shim`: the long-lived half of a container's supervisor.
//!
//! `skiff-agent __shim DIR` sets a container up (namespaces, cgroup, root
//! filesystem) and, once its first process runs, `exec`s this program in
//! the same process, so it stays the container's parent. From then on
//! this program only copies the container's stdout and stderr into the
//! JSON-lines log (rotating it by size), reaps the first process, and
//! records how it ended in `exit.json`.
//!
//! It runs once per container for the container's whole life, so it is
//! built to be small: no `std`, no heap, only a few libc calls, statically
//! linked by `agent/build.rs`. Its resident memory is about 0.6 MiB, where
//! the agent binary in the same role took 13 MiB (and `std` alone, static,
//! 1 MiB). Written by hand for that reason; everything else in Skiff uses
//! `std` and libraries.
//!
//! Usage (by the agent only):
//! `skiff-shim __shim DIR PID STDOUT_FD STDERR_FD LOG_MAX_BYTES`
//!
//! The log line format and rotation are those of
//! `skiff_agent::runtime::logfile`, which reads them; `exit.json` is its
//! `ExitRecord`.

#![no_std]
#![no_main]

mod civil;

use core::ffi::{c_char, c_int, c_long, c_uint, c_void};

#[repr(C)]
struct PollFd {
    fd: c_int,
    events: i16,
    revents: i16,
}

#[repr(C)]
struct Timespec {
    sec: c_long,
    nsec: c_long,
}

/// glibc's `sigset_t` (1024 bits).
#[repr(C)]
struct SigSet([u64; 16]);

#[link(name = "c")]
unsafe extern "C" {
    fn poll(fds: *mut PollFd, n: u64, timeout: c_int) -> c_int;
    fn read(fd: c_int, buf: *mut c_void, n: usize) -> isize;
    fn write(fd: c_int, buf: *const c_void, n: usize) -> isize;
    fn open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int;
    fn close(fd: c_int) -> c_int;
    fn lseek(fd: c_int, off: i64, whence: c_int) -> i64;
    fn rename(old: *const c_char, new: *const c_char) -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn clock_gettime(clock: c_int, ts: *mut Timespec) -> c_int;
    fn sigemptyset(set: *mut SigSet) -> c_int;
    fn sigaddset(set: *mut SigSet, sig: c_int) -> c_int;
    fn sigprocmask(how: c_int, set: *const SigSet, old: *mut SigSet) -> c_int;
    fn signalfd(fd: c_int, mask: *const SigSet, flags: c_int) -> c_int;
    fn __errno_location() -> *mut c_int;
    fn _exit(code: c_int) -> !;
}

const POLLIN: i16 = 0x1;
const O_WRONLY: c_int = 0o1;
const O_CREAT: c_int = 0o100;
const O_TRUNC: c_int = 0o1000;
const O_APPEND: c_int = 0o2000;
const O_CLOEXEC: c_int = 0o2000000;
const SFD_NONBLOCK: c_int = 0o4000;
const SIG_BLOCK: c_int = 0;
const SIGCHLD: c_int = 17;
const WNOHANG: c_int = 1;
const EINTR: c_int = 4;
const SEEK_END: c_int = 2;
const CLOCK_REALTIME: c_int = 0;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: `_exit` ends the process; nothing to uphold.
    unsafe { _exit(70) }
}

/// The precompiled `core` refers to it; with `panic=abort` it is never
/// called.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

fn errno() -> c_int {
    // SAFETY: glibc returns the calling thread's errno slot.
    unsafe { *__errno_location() }
}

/// A NUL-terminated path in a fixed buffer.
struct Path {
    buf: [u8; 4096],
    len: usize,
}

impl Path {
    fn new(dir: &[u8], name: &[u8]) -> Path {
        let mut p = Path {
            buf: [0; 4096],
            len: 0,
        };
        p.push(dir);
        p.push(b"/");
        p.push(name);
        p
    }

    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - 1 - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        self.buf[self.len] = 0;
    }

    fn ptr(&self) -> *const c_char {
        self.buf.as_ptr().cast()
    }
}

/// Bytes appended into a fixed buffer.
struct Buf<const N: usize> {
    data: [u8; N],
    len: usize,
}

impl<const N: usize> Buf<N> {
    const fn new() -> Self {
        Buf {
            data: [0; N],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(N - self.len);
        self.data[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_u64(&mut self, mut v: u64, width: usize) {
        let mut digits = [b'0'; 20];
        let mut i = digits.len();
        while v > 0 || i == digits.len() {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        for _ in (digits.len() - i)..width {
            self.push(b"0");
        }
        self.push(&digits[i..]);
    }

    fn push_i64(&mut self, v: i64) {
        if v < 0 {
            self.push(b"-");
        }
        self.push_u64(v.unsigned_abs(), 0);
    }

    fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

fn now() -> Timespec {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { clock_gettime(CLOCK_REALTIME, &mut ts) };
    ts
}

/// RFC 3339 UTC time with nanoseconds, as `logfile::rfc3339` writes it.
fn push_time<const N: usize>(b: &mut Buf<N>, t: &Timespec) {
    let secs = t.sec;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil::civil_from_days(days);
    b.push_u64(year as u64, 4);
    b.push(b"-");
    b.push_u64(month as u64, 2);
    b.push(b"-");
    b.push_u64(day as u64, 2);
    b.push(b"T");
    b.push_u64((rem / 3600) as u64, 2);
    b.push(b":");
    b.push_u64((rem % 3600 / 60) as u64, 2);
    b.push(b":");
    b.push_u64((rem % 60) as u64, 2);
    b.push(b".");
    b.push_u64(t.nsec as u64, 9);
    b.push(b"Z");
}

/// Appends `text` as the inside of a JSON string; invalid UTF-8 becomes
/// U+FFFD, as `String::from_utf8_lossy` does.
fn push_json_str<const N: usize>(b: &mut Buf<N>, text: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for chunk in text.utf8_chunks() {
        for &c in chunk.valid().as_bytes() {
            match c {
                b'"' => b.push(b"\\\""),
                b'\\' => b.push(b"\\\\"),
                b'\n' => b.push(b"\\n"),
                b'\r' => b.push(b"\\r"),
                b'\t' => b.push(b"\\t"),
                0x08 => b.push(b"\\b"),
                0x0c => b.push(b"\\f"),
                c if c < 0x20 => b.push(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(c >> 4) as usize],
                    HEX[(c & 15) as usize],
                ]),
                c => b.push(&[c]),
            }
        }
        if !chunk.invalid().is_empty() {
            b.push("\u{fffd}".as_bytes());
        }
    }
}

/// Longest piece of output written as one log line.
const MAX_LINE: usize = 16 * 1024;

/// The log file, rotated to `container.log.1` past its size limit.
struct Log {
    path: Path,
    old: Path,
    fd: c_int,
    size: u64,
    max: u64,
}

static mut LINE: Buf<{ MAX_LINE * 6 + 128 }> = Buf::new();

impl Log {
    fn open(dir: &[u8], max: u64) -> Log {
        let path = Path::new(dir, b"container.log");
        let old = Path::new(dir, b"container.log.1");
        let mut log = Log {
            path,
            old,
            fd: -1,
            size: 0,
            max,
        };
        log.reopen();
        log
    }

    fn reopen(&mut self) {
        if self.fd >= 0 {
            // SAFETY: closing our own descriptor.
            unsafe { close(self.fd) };
        }
        // SAFETY: the path is NUL-terminated.
        self.fd = unsafe {
            open(
                self.path.ptr(),
                O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
                0o640,
            )
        };
        // SAFETY: lseek on our descriptor (or -1, which fails harmlessly).
        self.size = unsafe { lseek(self.fd, 0, SEEK_END) }.max(0) as u64;
    }

    fn write(&mut self, stream: &[u8], text: &[u8]) {
        // SAFETY: single-threaded; LINE is only used here.
        let line = unsafe { &mut *core::ptr::addr_of_mut!(LINE) };
        line.len = 0;
        line.push(b"{\"time\":\"");
        push_time(line, &now());
        line.push(b"\",\"stream\":\"");
        line.push(stream);
        line.push(b"\",\"log\":\"");
        push_json_str(line, text);
        line.push(b"\"}\n");
        let n = line.len as u64;
        if self.size > 0 && self.size + n > self.max {
            // SAFETY: both paths are NUL-terminated.
            if unsafe { rename(self.path.ptr(), self.old.ptr()) } == 0 {
                self.reopen();
            }
        }
        write_all(self.fd, line.bytes());
        self.size += n;
    }
}

fn write_all(fd: c_int, mut data: &[u8]) {
    while !data.is_empty() {
        // SAFETY: writing from a valid slice.
        let n = unsafe { write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 && errno() == EINTR {
            continue;
        }
        if n <= 0 {
            return;
        }
        data = &data[n as usize..];
    }
}

/// One output pipe and the part of a line not yet written.
struct Stream {
    fd: c_int,
    name: &'static [u8],
    open: bool,
    partial: Buf<MAX_LINE>,
}

static mut READ_BUF: [u8; MAX_LINE] = [0; MAX_LINE];

impl Stream {
    /// Reads what is there and logs every complete line.
    fn drain(&mut self, log: &mut Log) {
        // SAFETY: single-threaded; READ_BUF is only used here.
        let buf = unsafe { &mut *core::ptr::addr_of_mut!(READ_BUF) };
        let want = (MAX_LINE - self.partial.len).min(buf.len());
        // SAFETY: reading into a valid buffer of `want` bytes.
        let n = unsafe { read(self.fd, buf.as_mut_ptr().cast(), want) };
        if n < 0 {
            if errno() != EINTR && errno() != 11 {
                self.close(log);
            }
            return;
        }
        if n == 0 {
            self.close(log);
            return;
        }
        self.partial.push(&buf[..n as usize]);
        let mut start = 0;
        let data = &self.partial.data[..self.partial.len];
        while let Some(pos) = data[start..].iter().position(|b| *b == b'\n') {
            log.write(self.name, &data[start..start + pos + 1]);
            start += pos + 1;
        }
        if start == 0 && self.partial.len == MAX_LINE {
            log.write(self.name, data);
            start = MAX_LINE;
        }
        let rest = self.partial.len - start;
        self.partial.data.copy_within(start..self.partial.len, 0);
        self.partial.len = rest;
    }

    fn close(&mut self, log: &mut Log) {
        if self.partial.len > 0 {
            log.write(self.name, self.partial.bytes());
            self.partial.len = 0;
        }
        // SAFETY: closing our own descriptor.
        unsafe { close(self.fd) };
        self.open = false;
    }
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

/// # Safety
/// `p` must point to a NUL-terminated string that outlives the program.
unsafe fn arg(p: *const c_char) -> &'static [u8] {
    // SAFETY: per the contract above.
    unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes()
}

static mut PARTIAL: [Stream; 2] = [
    Stream {
        fd: -1,
        name: b"stdout",
        open: false,
        partial: Buf::new(),
    },
    Stream {
        fd: -1,
        name: b"stderr",
        open: false,
        partial: Buf::new(),
    },
];

#[unsafe(no_mangle)]
pub extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    if argc != 7 {
        return 2;
    }
    // SAFETY: argv has argc NUL-terminated strings that live as long as
    // the process.
    let args: [&[u8]; 7] = core::array::from_fn(|i| unsafe { arg(*argv.add(i)) });
    let dir = args[2];
    let (Some(pid), Some(out), Some(err), Some(max)) = (
        parse_u64(args[3]),
        parse_u64(args[4]),
        parse_u64(args[5]),
        parse_u64(args[6]),
    ) else {
        return 2;
    };
    let pid = pid as c_int;

    // SIGCHLD is already blocked (the mask survives exec); a pending one
    // shows up on the signalfd.
    let mut set = SigSet([0; 16]);
    // SAFETY: valid sigset pointers.
    let sfd = unsafe {
        sigemptyset(&mut set);
        sigaddset(&mut set, SIGCHLD);
        sigprocmask(SIG_BLOCK, &set, core::ptr::null_mut());
        signalfd(-1, &set, SFD_NONBLOCK | O_CLOEXEC)
    };

    let mut log = Log::open(dir, max);
    // SAFETY: single-threaded; the streams are only used here.
    let streams = unsafe { &mut *core::ptr::addr_of_mut!(PARTIAL) };
    streams[0].fd = out as c_int;
    streams[1].fd = err as c_int;
    streams[0].open = true;
    streams[1].open = true;

    let mut status: Option<c_int> = None;
    loop {
        let mut st: c_int = 0;
        // Reap everything; remember how the first process ended.
        loop {
            // SAFETY: valid out-pointer.
            let r = unsafe { waitpid(-1, &mut st, WNOHANG) };
            if r <= 0 {
                break;
            }
            if r == pid {
                status = Some(st);
            }
        }
        if status.is_some() && !streams.iter().any(|s| s.open) {
            break;
        }
        let mut fds = [
            PollFd {
                fd: sfd,
                events: POLLIN,
                revents: 0,
            },
            PollFd {
                fd: if streams[0].open { streams[0].fd } else { -1 },
                events: POLLIN,
                revents: 0,
            },
            PollFd {
                fd: if streams[1].open { streams[1].fd } else { -1 },
                events: POLLIN,
                revents: 0,
            },
        ];
        // Once the first process is gone its namespace is torn down and
        // the pipes close; the timeout guards against anything else
        // holding them open.
        let timeout = if status.is_some() { 2000 } else { -1 };
        // SAFETY: `fds` is a valid array of 3.
        let r = unsafe { poll(fds.as_mut_ptr(), 3, timeout) };
        if r < 0 && errno() == EINTR {
            continue;
        }
        if r == 0 && status.is_some() {
            break;
        }
        if fds[0].revents != 0 {
            let mut info = [0u8; 128];
            // SAFETY: reading into a valid buffer (signalfd_siginfo is 128).
            while unsafe { read(sfd, info.as_mut_ptr().cast(), 128) } > 0 {}
        }
        for (i, s) in streams.iter_mut().enumerate() {
            if s.open && fds[i + 1].revents != 0 {
                s.drain(&mut log);
            }
        }
    }
    for s in streams.iter_mut() {
        if s.open {
            s.close(&mut log);
        }
    }

    let st = status.unwrap_or(255 << 8);
    let (code, signal) = if st & 0x7f == 0 {
        ((st >> 8) & 0xff, -1)
    } else {
        (128 + (st & 0x7f), st & 0x7f)
    };
    let finished = now();
    let mut rec: Buf<256> = Buf::new();
    rec.push(b"{\"exit_code\":");
    rec.push_i64(i64::from(code));
    rec.push(b",\"signal\":");
    if signal < 0 {
        rec.push(b"null");
    } else {
        rec.push_i64(i64::from(signal));
    }
    rec.push(b",\"finished_unix_ms\":");
    rec.push_i64(finished.sec * 1000 + finished.nsec / 1_000_000);
    rec.push(b"}");
    let tmp = Path::new(dir, b".exit.json.tmp");
    let exit = Path::new(dir, b"exit.json");
    // SAFETY: NUL-terminated paths; writing our own descriptor.
    unsafe {
        let fd = open(tmp.ptr(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640);
        if fd < 0 {
            return 1;
        }
        write_all(fd, rec.bytes());
        close(fd);
        if rename(tmp.ptr(), exit.ptr()) != 0 {
            return 1;
        }
    }
    0
}
