//! Whether a host port may be published: not by two containers, and not
//! over a port a host process is listening on (its traffic would silently
//! go to the container instead).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use super::nat::{PortMapping, Proto};

/// Why a port cannot be published, naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("host port {0} is already published by container {1}")]
    Published(String, String),
    #[error("host port {0} is in use by a process on the host")]
    InUse(String),
}

fn label(ip: Option<Ipv4Addr>, port: u16, proto: Proto) -> String {
    let proto = match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    match ip {
        Some(ip) => format!("{ip}:{port}/{proto}"),
        None => format!("{port}/{proto}"),
    }
}

/// Refuses `new` when it overlaps a published port (same protocol and
/// port, and the same address or either on all addresses) or a port a
/// host process holds. `published` pairs each mapping with its container.
pub fn check(new: &PortMapping, published: &[(String, PortMapping)]) -> Result<(), PortError> {
    let name = label(new.host_ip, new.host_port, new.proto);
    for (owner, p) in published {
        let same_ip = p.host_ip.is_none() || new.host_ip.is_none() || p.host_ip == new.host_ip;
        if p.proto == new.proto && p.host_port == new.host_port && same_ip {
            return Err(PortError::Published(name, owner.clone()));
        }
    }
    let ip = IpAddr::V4(new.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED));
    let addr = SocketAddr::new(ip, new.host_port);
    let taken = match new.proto {
        Proto::Tcp => TcpListener::bind(addr).err(),
        Proto::Udp => UdpSocket::bind(addr).err(),
    };
    match taken {
        Some(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(PortError::InUse(name)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(ip: Option<Ipv4Addr>, port: u16, proto: Proto) -> PortMapping {
        PortMapping {
            host_ip: ip,
            host_port: port,
            proto,
            container_ip: Ipv4Addr::new(10, 88, 0, 2),
            container_port: 80,
        }
    }

    #[test]
    fn a_port_published_by_another_container_is_refused() {
        let lo = Some(Ipv4Addr::LOCALHOST);
        let published = vec![("web".to_string(), mapping(None, 18080, Proto::Tcp))];
        assert_eq!(
            check(&mapping(None, 18080, Proto::Tcp), &published)
                .unwrap_err()
                .to_string(),
            "host port 18080/tcp is already published by container web"
        );
        // A wildcard overlaps every address.
        assert!(check(&mapping(lo, 18080, Proto::Tcp), &published).is_err());
        // Another protocol or port is fine.
        assert!(check(&mapping(None, 18080, Proto::Udp), &published).is_ok());
        assert!(check(&mapping(None, 18081, Proto::Tcp), &published).is_ok());
        // Two different addresses do not overlap.
        let on_lo = vec![("a".to_string(), mapping(lo, 18082, Proto::Tcp))];
        let other = Some(Ipv4Addr::new(127, 0, 0, 2));
        assert!(check(&mapping(other, 18082, Proto::Tcp), &on_lo).is_ok());
    }

    #[test]
    fn a_port_a_host_process_holds_is_refused() {
        let held = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let e = check(&mapping(None, port, Proto::Tcp), &[]).unwrap_err();
        assert_eq!(e, PortError::InUse(format!("{port}/tcp")));
        let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
        let uport = udp.local_addr().unwrap().port();
        assert!(check(&mapping(None, uport, Proto::Udp), &[]).is_err());
        drop((held, udp));
        assert!(check(&mapping(None, port, Proto::Tcp), &[]).is_ok());
    }
}
