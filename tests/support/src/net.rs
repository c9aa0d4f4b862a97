//! Loopback ports and readiness checks.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_listener(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A test's share of the host's networking, so tests running at the same
/// time never collide: slot `n` owns the bridge `sktb<n>`, the subnet
/// `10.251.<n>.0/24`, the nftables table `skiff_t<n>`, and the names and
/// addresses `10.252.<n>.0/24` for extra "hosts". Held by an exclusive
/// lock on `/run/skiff-test/net-<n>.lock` until dropped; dropping it
/// removes the bridge and the table.
#[derive(Debug)]
pub struct NetSlot {
    pub n: u32,
    _lock: std::fs::File,
}

impl NetSlot {
    /// Takes the first free slot.
    pub fn take() -> Result<NetSlot> {
        use std::os::fd::AsRawFd;
        let dir = std::path::Path::new("/run/skiff-test");
        std::fs::create_dir_all(dir)?;
        for n in 0..250 {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("net-{n}.lock")))?;
            // SAFETY: flock on a descriptor we own.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                let slot = NetSlot { n, _lock: f };
                slot.clean();
                return Ok(slot);
            }
        }
        bail!("no free test network slot in /run/skiff-test")
    }

    pub fn bridge(&self) -> String {
        format!("sktb{}", self.n)
    }

    pub fn subnet(&self) -> String {
        format!("10.251.{}.0/24", self.n)
    }

    pub fn table(&self) -> String {
        format!("skiff_t{}", self.n)
    }

    /// `10.252.<n>`: for links to extra hosts.
    pub fn outside_prefix(&self) -> String {
        format!("10.252.{}", self.n)
    }

    /// The agent's `[network]` config section for this slot.
    pub fn agent_config(&self) -> String {
        format!(
            "{}subnet = \"{}\"\n",
            self.agent_config_no_subnet(),
            self.subnet()
        )
    }

    /// The same without the subnet (the agent takes the gateway's).
    pub fn agent_config_no_subnet(&self) -> String {
        format!(
            "[network]\nbridge = \"{}\"\nnft_table = \"{}\"\n",
            self.bridge(),
            self.table()
        )
    }

    /// Removes what a test using this slot may have left.
    fn clean(&self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", &self.table()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for NetSlot {
    fn drop(&mut self) {
        self.clean();
    }
}
