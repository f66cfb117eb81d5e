//! Route lookups asked of the kernel over rtnetlink (`RTM_GETROUTE`, what
//! `ip route get` sends): the kernel's own answer, so policy routing and VRFs
//! count, without a process per lookup. Messages are built and parsed by
//! `netlink-packet-route`, sent over a `netlink-sys` socket: synchronously,
//! since the daemon asks from start-up code and from blocking tasks.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Requests in flight at once: the answers (about 100 bytes each) must fit
/// in the socket's receive buffer, or the kernel drops them.
const IN_FLIGHT: usize = 256;

/// Longest wait for an answer: the kernel answers at once; this only guards
/// against a lost datagram.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// The outcome of one lookup: the egress interface's index, or the errno the
/// kernel answered (ENETUNREACH, EHOSTUNREACH, ...).
pub type Outcome = Result<u32, i32>;

/// Looks every address up; an address the kernel never answered for (it
/// should not happen) is missing from the result.
pub fn egress_indexes(addrs: &[IpAddr]) -> io::Result<HashMap<IpAddr, Outcome>> {
    let mut out = HashMap::with_capacity(addrs.len());
    if addrs.is_empty() {
        return Ok(out);
    }
    let sock = open()?;
    let kernel = SocketAddr::new(0, 0);
    let mut buf = Vec::with_capacity(64 * 1024);
    for (n, chunk) in addrs.chunks(IN_FLIGHT).enumerate() {
        let base = (n * IN_FLIGHT) as u32 + 1;
        let mut pending: HashMap<u32, IpAddr> = HashMap::with_capacity(chunk.len());
        for (i, a) in chunk.iter().enumerate() {
            let seq = base + i as u32;
            sock.send_to(&request(*a, seq), &kernel, 0)?;
            pending.insert(seq, *a);
        }
        while !pending.is_empty() {
            let n = recv(&sock, &mut buf)?;
            for (seq, outcome) in parse(&buf[..n]) {
                if let Some(a) = pending.remove(&seq) {
                    out.insert(a, outcome);
                }
            }
        }
    }
    Ok(out)
}

/// `ip route get ADDR`, as an `RTM_GETROUTE` request.
fn request(addr: IpAddr, seq: u32) -> Vec<u8> {
    let mut route = RouteMessage::default();
    route.header.address_family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    route.header.destination_prefix_length = if addr.is_ipv4() { 32 } else { 128 };
    route
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(addr)));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetRoute(route)),
    );
    msg.finalize();
    let mut bytes = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut bytes);
    bytes
}

/// The answers in one datagram, by sequence number. A message the crate
/// cannot parse ends the datagram: its sequence stays pending, and the wait
/// for it ends in a timeout error rather than a wrong answer.
fn parse(mut buf: &[u8]) -> Vec<(u32, Outcome)> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len]) else {
            break;
        };
        let seq = msg.header.sequence_number;
        match msg.payload {
            // No code is an acknowledgement, which a plain request does not ask for.
            NetlinkPayload::Error(e) => {
                if let Some(code) = e.code {
                    out.push((seq, Err(-code.get())));
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                let oif = route.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                // A route without an output interface (unreachable,
                // blackhole, prohibit) leads nowhere.
                out.push((seq, oif.ok_or(libc::ENETUNREACH)));
            }
            _ => {}
        }
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

fn open() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    set_timeout(&sock)?;
    Ok(sock)
}

/// Bounds every wait for an answer on `sock` ([`ANSWER_WAIT`]).
pub(super) fn set_timeout(sock: &Socket) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: ANSWER_WAIT.as_secs() as _,
        tv_usec: 0,
    };
    // SAFETY: setsockopt reads a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn recv(sock: &Socket, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        buf.clear();
        match sock.recv(buf, 0) {
            Ok(n) => return Ok(n.min(buf.len())),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the kernel did not answer a route lookup",
                ))
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_what_ip_route_get_sends() {
        let r = request("10.0.2.11".parse().unwrap(), 7);
        assert_eq!(r.len(), 16 + 12 + 8);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 36);
        assert_eq!(u16::from_ne_bytes(r[4..6].try_into().unwrap()), 26);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 7);
        assert_eq!(&r[16..18], &[libc::AF_INET as u8, 32]);
        assert_eq!(&r[32..36], &[10, 0, 2, 11]);
        let r6 = request("fd00:2::11".parse().unwrap(), 1);
        assert_eq!(r6.len(), 16 + 12 + 20);
        assert_eq!(r6[17], 128);
    }

    #[test]
    fn answers_and_errors_are_read_by_sequence() {
        // An RTM_NEWROUTE with RTA_TABLE then RTA_OIF, then an NLMSG_ERROR.
        let mut m = Vec::new();
        let route_len = 16 + 12 + 8 + 8;
        m.extend_from_slice(&(route_len as u32).to_ne_bytes());
        m.extend_from_slice(&libc::RTM_NEWROUTE.to_ne_bytes());
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&3u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[2, 32, 0, 0, 254, 0, 0, 1, 0, 0, 0, 0]);
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&15u16.to_ne_bytes()); // RTA_TABLE
        m.extend_from_slice(&254u32.to_ne_bytes());
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&4u16.to_ne_bytes()); // RTA_OIF
        m.extend_from_slice(&42u32.to_ne_bytes());
        let err_len = 16 + 4 + 16;
        m.extend_from_slice(&(err_len as u32).to_ne_bytes());
        m.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&4u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-libc::ENETUNREACH).to_ne_bytes());
        m.extend_from_slice(&[0; 16]);
        assert_eq!(parse(&m), vec![(3, Ok(42)), (4, Err(libc::ENETUNREACH))]);
    }

    #[test]
    fn an_address_without_a_route_gets_the_kernels_errno() {
        // In a network namespace of its own, with nothing configured (needs
        // CAP_SYS_ADMIN; without it there is nothing to check).
        let r = std::thread::spawn(|| {
            // SAFETY: moves only this thread, which ends with the test.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            let addrs: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
            Some(egress_indexes(&addrs).unwrap())
        })
        .join()
        .unwrap();
        let Some(r) = r else {
            eprintln!("skipped: no network namespace of our own (not root)");
            return;
        };
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r.values().all(|o| *o == Err(libc::ENETUNREACH)), "{r:?}");
    }

    #[test]
    fn every_loopback_address_of_a_large_batch_is_answered() {
        let lo = crate::route::ifindex("lo").unwrap();
        // More than one round of requests in flight.
        let addrs: Vec<IpAddr> = (0..1000u32)
            .map(|i| IpAddr::from([127, 1, (i >> 8) as u8, i as u8]))
            .collect();
        let r = egress_indexes(&addrs).unwrap();
        assert_eq!(r.len(), addrs.len());
        assert!(r.values().all(|o| *o == Ok(lo)), "{r:?}");
    }
}
