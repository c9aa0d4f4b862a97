//! A UDP echo server for test containers: `udp-echo PORT` answers every
//! datagram with the same bytes, upper-cased.
fn main() {
    let port = std::env::args().nth(1).unwrap_or_else(|| "9000".into());
    let s = std::net::UdpSocket::bind(format!("0.0.0.0:{port}")).expect("bind");
    let mut buf = [0u8; 1500];
    loop {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n].to_ascii_uppercase(), from);
        }
    }
}
