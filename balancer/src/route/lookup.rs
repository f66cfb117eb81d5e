//! Route lookups asked of the kernel over rtnetlink (`RTM_GETROUTE`, what
//! `ip route get` sends): the kernel's own answer, so policy routing and VRFs
//! count, without a process per lookup.
//!
//! Written over a plain netlink socket rather than with a crate: one request
//! and one answer of fixed shape is all that is needed, synchronously (the
//! daemon asks from start-up code and from blocking tasks), and the daemon's
//! route subscription (`daemon/guard.rs`) already speaks netlink this way.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Requests in flight at once: the answers (about 100 bytes each) must fit
/// in the socket's receive buffer, or the kernel drops them.
const IN_FLIGHT: usize = 256;

/// Longest wait for an answer: the kernel answers at once; this only guards
/// against a lost datagram.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

const NLMSG_HDRLEN: usize = 16;
const RTMSG_LEN: usize = 12;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;

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
    for (n, chunk) in addrs.chunks(IN_FLIGHT).enumerate() {
        let base = (n * IN_FLIGHT) as u32 + 1;
        let mut pending: HashMap<u32, IpAddr> = HashMap::with_capacity(chunk.len());
        for (i, a) in chunk.iter().enumerate() {
            let seq = base + i as u32;
            send(&sock, &request(*a, seq))?;
            pending.insert(seq, *a);
        }
        let mut buf = vec![0u8; 64 * 1024];
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
    let (family, bytes): (u8, Vec<u8>) = match addr {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let rta_len = 4 + bytes.len();
    let len = NLMSG_HDRLEN + RTMSG_LEN + rta_len;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&libc::RTM_GETROUTE.to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
                                              // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    m.extend_from_slice(&[family, (bytes.len() * 8) as u8, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&(rta_len as u16).to_ne_bytes());
    m.extend_from_slice(&RTA_DST.to_ne_bytes());
    m.extend_from_slice(&bytes);
    m
}

/// The answers in one datagram, by sequence number.
fn parse(mut buf: &[u8]) -> Vec<(u32, Outcome)> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes(buf[4..6].try_into().unwrap());
        let seq = u32::from_ne_bytes(buf[8..12].try_into().unwrap());
        let body = &buf[NLMSG_HDRLEN..len];
        if kind == libc::NLMSG_ERROR as u16 && body.len() >= 4 {
            let errno = i32::from_ne_bytes(body[0..4].try_into().unwrap());
            // 0 is an acknowledgement, which a plain request does not ask for.
            if errno != 0 {
                out.push((seq, Err(-errno)));
            }
        } else if kind == libc::RTM_NEWROUTE && body.len() >= RTMSG_LEN {
            match attribute(&body[RTMSG_LEN..], RTA_OIF) {
                Some(v) if v.len() >= 4 => {
                    out.push((seq, Ok(u32::from_ne_bytes(v[0..4].try_into().unwrap()))))
                }
                // A route without an output interface (unreachable,
                // blackhole, prohibit) leads nowhere.
                _ => out.push((seq, Err(libc::ENETUNREACH))),
            }
        }
        buf = &buf[align(len).min(buf.len())..];
    }
    out
}

fn attribute(mut attrs: &[u8], want: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes(attrs[0..2].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(attrs[2..4].try_into().unwrap());
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == want {
            return Some(&attrs[4..len]);
        }
        attrs = &attrs[align(len).min(attrs.len())..];
    }
    None
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

fn open() -> io::Result<OwnedFd> {
    // SAFETY: a new socket, owned at once; setsockopt gets a timeval of the
    // size given.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let tv = libc::timeval {
            tv_sec: ANSWER_WAIT.as_secs() as _,
            tv_usec: 0,
        };
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

fn send(sock: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: a zeroed sockaddr_nl addressed to the kernel; the message is
    // read for its length.
    let rc = unsafe {
        let mut to: libc::sockaddr_nl = std::mem::zeroed();
        to.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&to as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn recv(sock: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reads into a buffer of the length given.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the kernel did not answer a route lookup",
                ))
            }
            _ => return Err(e),
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
        m.extend_from_slice(&RTA_OIF.to_ne_bytes());
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
