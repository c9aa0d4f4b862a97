//! Container addresses from the node's subnet, crash-safe.
//!
//! Every allocation is committed to an embedded database (redb) before the
//! address is used, so an agent that crashes and restarts never hands the
//! same address out twice; `reclaim` frees what containers that are gone
//! still hold. Allocating for an owner that already has an address returns
//! that address (a restarted container keeps it).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// Address (as `u32`) → owner.
const BY_ADDR: TableDefinition<u32, &str> = TableDefinition::new("ipam_by_addr");
/// Owner → address.
const BY_OWNER: TableDefinition<&str, u32> = TableDefinition::new("ipam_by_owner");

/// What can go wrong; each names the subnet or the store.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("subnet {subnet}: no free address ({in_use} in use)")]
    Exhausted { subnet: Ipv4Net, in_use: usize },
    #[error("subnet {0}: too small for containers (at least /30)")]
    TooSmall(Ipv4Net),
    #[error("address store: {0}")]
    Store(String),
}

fn store(e: impl std::fmt::Display) -> IpamError {
    IpamError::Store(e.to_string())
}

/// The node's address pool.
#[derive(Debug)]
pub struct Ipam {
    db: Database,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
}

impl Ipam {
    /// Opens (or creates) the pool of `subnet` stored at `path`; the first
    /// host address is the gateway (the node's bridge).
    pub fn open(path: &Path, subnet: Ipv4Net) -> Result<Self, IpamError> {
        let subnet = subnet.trunc();
        if subnet.prefix_len() > 30 {
            return Err(IpamError::TooSmall(subnet));
        }
        let gateway = subnet.hosts().next().ok_or(IpamError::TooSmall(subnet))?;
        let db = crate::open_db(path).map_err(store)?;
        let tx = db.begin_write().map_err(store)?;
        tx.open_table(BY_ADDR).map_err(store)?;
        tx.open_table(BY_OWNER).map_err(store)?;
        tx.commit().map_err(store)?;
        Ok(Self {
            db,
            subnet,
            gateway,
        })
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// How many containers can hold an address at once: the subnet's
    /// hosts but the bridge's.
    pub fn capacity(&self) -> u32 {
        u32::try_from(self.subnet.hosts().count().saturating_sub(1)).unwrap_or(u32::MAX)
    }

    /// The gateway: the bridge's address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// An address for `owner`: the one it has, or the lowest free one.
    /// `durable`: committed to disk before it is returned (otherwise with
    /// the next durable commit; [`Ipam::claim`] restores what a crash
    /// lost).
    pub fn allocate(&self, owner: &str, durable: bool) -> Result<Ipv4Addr, IpamError> {
        let mut tx = self.db.begin_write().map_err(store)?;
        if !durable {
            tx.set_durability(redb::Durability::None).map_err(store)?;
        }
        let ip = {
            let mut by_owner = tx.open_table(BY_OWNER).map_err(store)?;
            if let Some(ip) = by_owner.get(owner).map_err(store)? {
                return Ok(Ipv4Addr::from(ip.value()));
            }
            let mut by_addr = tx.open_table(BY_ADDR).map_err(store)?;
            let mut free = None;
            for candidate in self.subnet.hosts().filter(|h| *h != self.gateway) {
                if by_addr.get(u32::from(candidate)).map_err(store)?.is_none() {
                    free = Some(candidate);
                    break;
                }
            }
            let Some(ip) = free else {
                return Err(IpamError::Exhausted {
                    subnet: self.subnet,
                    in_use: by_addr.len().map_err(store)? as usize,
                });
            };
            by_addr.insert(u32::from(ip), owner).map_err(store)?;
            by_owner.insert(owner, u32::from(ip)).map_err(store)?;
            ip
        };
        tx.commit().map_err(store)?;
        Ok(ip)
    }

    /// Records that `owner` holds `ip` (after a restart, from the
    /// container's own configuration), unless another owner has it.
    pub fn claim(&self, owner: &str, ip: Ipv4Addr) -> Result<(), IpamError> {
        let tx = self.db.begin_write().map_err(store)?;
        {
            let mut by_owner = tx.open_table(BY_OWNER).map_err(store)?;
            if by_owner.get(owner).map_err(store)?.is_some() {
                return Ok(());
            }
            let mut by_addr = tx.open_table(BY_ADDR).map_err(store)?;
            if !self.subnet.contains(&ip) || by_addr.get(u32::from(ip)).map_err(store)?.is_some() {
                return Ok(());
            }
            by_addr.insert(u32::from(ip), owner).map_err(store)?;
            by_owner.insert(owner, u32::from(ip)).map_err(store)?;
        }
        tx.commit().map_err(store)
    }

    /// Frees `owner`'s address, if it has one. Not waited onto disk: a
    /// release lost in a crash is redone by [`Ipam::reclaim`].
    pub fn release(&self, owner: &str) -> Result<(), IpamError> {
        let mut tx = self.db.begin_write().map_err(store)?;
        tx.set_durability(redb::Durability::None).map_err(store)?;
        {
            let mut by_owner = tx.open_table(BY_OWNER).map_err(store)?;
            let ip = by_owner.remove(owner).map_err(store)?.map(|v| v.value());
            if let Some(ip) = ip {
                tx.open_table(BY_ADDR)
                    .map_err(store)?
                    .remove(ip)
                    .map_err(store)?;
            }
        }
        tx.commit().map_err(store)
    }

    /// Frees the addresses of owners not in `live` (after a crash);
    /// returns how many.
    pub fn reclaim(&self, live: &HashSet<String>) -> Result<usize, IpamError> {
        let stale: Vec<String> = self
            .allocations()?
            .into_iter()
            .filter(|(owner, _)| !live.contains(owner))
            .map(|(owner, _)| owner)
            .collect();
        for owner in &stale {
            self.release(owner)?;
        }
        Ok(stale.len())
    }

    /// Every allocation: owner and address.
    pub fn allocations(&self) -> Result<Vec<(String, Ipv4Addr)>, IpamError> {
        let tx = self.db.begin_read().map_err(store)?;
        let t = tx.open_table(BY_OWNER).map_err(store)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(store)? {
            let (k, v) = row.map_err(store)?;
            out.push((k.value().to_string(), Ipv4Addr::from(v.value())));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(dir: &Path, subnet: &str) -> Ipam {
        Ipam::open(&dir.join("net.redb"), subnet.parse().unwrap()).unwrap()
    }

    #[test]
    fn addresses_are_distinct_stable_and_skip_the_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = pool(dir.path(), "10.88.0.0/24");
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        let a = ipam.allocate("a", true).unwrap();
        let b = ipam.allocate("b", true).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(b, Ipv4Addr::new(10, 88, 0, 3));
        // The same owner keeps its address.
        assert_eq!(ipam.allocate("a", true).unwrap(), a);
        // A released address is handed out again.
        ipam.release("a").unwrap();
        assert_eq!(ipam.allocate("c", true).unwrap(), a);
    }

    #[test]
    fn an_exhausted_pool_says_so_and_a_tiny_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // /29: .1 is the gateway, .2 to .6 for containers, .7 broadcast.
        let ipam = pool(dir.path(), "10.89.0.0/29");
        let got: Vec<Ipv4Addr> = (0..5)
            .map(|i| ipam.allocate(&format!("c{i}"), true).unwrap())
            .collect();
        assert_eq!(got.last(), Some(&Ipv4Addr::new(10, 89, 0, 6)));
        let e = ipam.allocate("one-too-many", true).unwrap_err().to_string();
        assert_eq!(e, "subnet 10.89.0.0/29: no free address (5 in use)");
        let e = Ipam::open(&dir.path().join("x.redb"), "10.1.0.0/31".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("10.1.0.0/31: too small"), "{e}");
    }

    #[test]
    fn allocations_survive_a_restart_and_stale_ones_are_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let ipam = pool(dir.path(), "10.90.0.0/24");
            (
                ipam.allocate("a", true).unwrap(),
                ipam.allocate("b", true).unwrap(),
            )
        };
        // Reopened (a restart): nothing handed out twice.
        let ipam = pool(dir.path(), "10.90.0.0/24");
        assert_eq!(ipam.allocate("a", true).unwrap(), a);
        let c = ipam.allocate("c", true).unwrap();
        assert!(c != a && c != b);
        // Only "a" still runs: the others' addresses come back.
        let live: HashSet<String> = ["a".to_string()].into();
        assert_eq!(ipam.reclaim(&live).unwrap(), 2);
        let left: Vec<String> = ipam
            .allocations()
            .unwrap()
            .into_iter()
            .map(|(o, _)| o)
            .collect();
        assert_eq!(left, ["a"]);
        // A claim (an address a container's config holds) is recorded,
        // unless another owner has it.
        ipam.claim("d", Ipv4Addr::new(10, 90, 0, 9)).unwrap();
        ipam.claim("e", a).unwrap();
        let got: Vec<(String, Ipv4Addr)> = ipam.allocations().unwrap();
        assert_eq!(
            got,
            [
                ("a".to_string(), a),
                ("d".to_string(), Ipv4Addr::new(10, 90, 0, 9))
            ]
        );
    }
}
