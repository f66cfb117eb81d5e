//! Keeps the backends' neighbour (ARP/ND) entries resolved.
//!
//! The XDP program forwards with the kernel's FIB answer; when a backend's MAC is
//! not known yet, `dnat` hands the rewritten datagram to the kernel, which
//! resolves it, but `dsr` cannot (the datagram still says "VIP"), and nothing else
//! on the host may ever talk to a backend. So the balancer itself sends each
//! backend a SIP OPTIONS now and then, as Kamailio's dispatcher pings do; the
//! answers (to this host's address) pass the data plane untouched. Health checks
//! proper come with the prober.

use std::net::{SocketAddr, UdpSocket};

fn options(to: SocketAddr, from: SocketAddr, seq: u32) -> String {
    let host = |a: SocketAddr| match a {
        SocketAddr::V4(v) => v.to_string(),
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    };
    let branch = format!("z9hG4bK-bal-{}-{seq}", std::process::id());
    format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch={branch};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:balancer@{from}>;tag=bal{seq}\r\nTo: <sip:{to}>\r\n\
Call-ID: {branch}@balancer\r\nCSeq: {seq} OPTIONS\r\nUser-Agent: sip-xdp-balancer\r\n\
Content-Length: 0\r\n\r\n",
        to = host(to),
        from = host(from)
    )
}

/// Sends one OPTIONS to every backend; failures are only reported.
pub fn prime(backends: &[SocketAddr], seq: u32) {
    for &b in backends {
        let bind: SocketAddr = if b.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let sent = UdpSocket::bind(bind).and_then(|s| {
            s.connect(b)?;
            let from = s.local_addr()?;
            s.send(options(b, from, seq).as_bytes())
        });
        if let Err(e) = sent {
            eprintln!("warning: OPTIONS to backend {b}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn options_is_a_complete_request() {
        let m = super::options(
            "10.0.2.11:5060".parse().unwrap(),
            "10.0.2.1:40000".parse().unwrap(),
            7,
        );
        assert!(m.starts_with("OPTIONS sip:10.0.2.11:5060 SIP/2.0\r\n"));
        assert!(m.ends_with("Content-Length: 0\r\n\r\n"));
        assert!(balancer_common::callid::call_id(m.as_bytes()).is_some());
        let m6 = super::options(
            "[fd00::1]:5060".parse().unwrap(),
            "[fd00::2]:4000".parse().unwrap(),
            1,
        );
        assert!(m6.contains("Via: SIP/2.0/UDP [fd00::2]:4000;"));
    }
}
