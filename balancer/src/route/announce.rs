//! The announcement routes (`[announce]`): one `blackhole` route per carried
//! VIP (`/32` or `/128`) in a table and with a protocol number of the
//! balancer's own, written and removed over rtnetlink (`RTM_NEWROUTE`,
//! `RTM_DELROUTE`), listed with an `RTM_GETROUTE` dump. Routing daemons (BIRD's
//! `kernel` protocol with `learn`, FRR's `ip import-table`) read them; the
//! kernel never forwards through them, the table being one no rule points to.
//! Synchronous, like `lookup.rs`: called from the announcer's own thread.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Where the announcement routes live: a table and a protocol number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub table: u32,
    pub protocol: u8,
}

fn message(addr: IpAddr, place: Place) -> RouteMessage {
    let mut route = RouteMessage::default();
    route.header.address_family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    route.header.destination_prefix_length = if addr.is_ipv4() { 32 } else { 128 };
    // The header holds 8 bits; RTA_TABLE the whole number.
    route.header.table = if place.table < 256 {
        place.table as u8
    } else {
        RouteHeader::RT_TABLE_UNSPEC
    };
    route.header.protocol = RouteProtocol::from(place.protocol);
    route.header.scope = RouteScope::Universe;
    route.header.kind = RouteType::BlackHole;
    route
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(addr)));
    route.attributes.push(RouteAttribute::Table(place.table));
    route
}

fn bytes(payload: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    msg.finalize();
    let mut b = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut b);
    b
}

/// `ip route replace blackhole ADDR/32 table T proto P`.
fn add_request(addr: IpAddr, place: Place, seq: u32) -> Vec<u8> {
    bytes(
        RouteNetlinkMessage::NewRoute(message(addr, place)),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
    )
}

/// `ip route del blackhole ADDR/32 table T proto P`.
fn del_request(addr: IpAddr, place: Place, seq: u32) -> Vec<u8> {
    bytes(
        RouteNetlinkMessage::DelRoute(message(addr, place)),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    )
}

fn open() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    super::lookup::set_timeout(&sock)?;
    Ok(sock)
}

/// Sends one request and waits for its acknowledgement.
fn ask(sock: &Socket, req: &[u8], seq: u32) -> io::Result<()> {
    sock.send_to(req, &SocketAddr::new(0, 0), 0)?;
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let n = super::lookup::recv(sock, &mut buf)?;
        let mut b = &buf[..n];
        while b.len() >= 16 {
            let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            if len < 16 || len > b.len() {
                break;
            }
            if let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&b[..len]) {
                if msg.header.sequence_number == seq {
                    if let NetlinkPayload::Error(e) = msg.payload {
                        return match e.code {
                            None => Ok(()),
                            Some(c) => Err(io::Error::from_raw_os_error(-c.get())),
                        };
                    }
                }
            }
            b = &b[((len + 3) & !3).min(b.len())..];
        }
    }
}

/// The destinations of the routes in `place` (its table, its protocol).
pub fn list(place: Place) -> io::Result<BTreeSet<IpAddr>> {
    let sock = open()?;
    let mut out = BTreeSet::new();
    for (i, family) in [AddressFamily::Inet, AddressFamily::Inet6]
        .into_iter()
        .enumerate()
    {
        let seq = i as u32 + 1;
        let mut m = RouteMessage::default();
        m.header.address_family = family;
        let req = bytes(
            RouteNetlinkMessage::GetRoute(m),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
        );
        sock.send_to(&req, &SocketAddr::new(0, 0), 0)?;
        let mut buf = Vec::with_capacity(64 * 1024);
        'dump: loop {
            let n = super::lookup::recv(&sock, &mut buf)?;
            let mut b = &buf[..n];
            while b.len() >= 16 {
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                if len < 16 || len > b.len() {
                    break;
                }
                let kind = u16::from_ne_bytes([b[4], b[5]]);
                if kind == libc::NLMSG_DONE as u16 {
                    break 'dump;
                }
                if kind == libc::NLMSG_ERROR as u16 {
                    let code = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
                    return Err(io::Error::from_raw_os_error(-code));
                }
                if let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&b[..len]) {
                    if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) =
                        msg.payload
                    {
                        if let Some(a) = ours(&r, place) {
                            out.insert(a);
                        }
                    }
                }
                b = &b[((len + 3) & !3).min(b.len())..];
            }
        }
    }
    Ok(out)
}

/// The destination of `r` if it is one of ours: host route, our table, our
/// protocol.
fn ours(r: &RouteMessage, place: Place) -> Option<IpAddr> {
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(r.header.table as u32);
    if table != place.table || u8::from(r.header.protocol) != place.protocol {
        return None;
    }
    let host = if r.header.address_family == AddressFamily::Inet {
        32
    } else {
        128
    };
    if r.header.destination_prefix_length != host {
        return None;
    }
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

/// What one reconciliation did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
}

/// Makes the routes in `place` exactly `want`: adds the missing ones, removes
/// the others, leaves alone those already there (a restart adopts them).
pub fn reconcile(want: &BTreeSet<IpAddr>, place: Place) -> io::Result<Changes> {
    let have = list(place)?;
    let sock = open()?;
    let mut seq = 100;
    let mut c = Changes::default();
    for a in want.difference(&have) {
        seq += 1;
        ask(&sock, &add_request(*a, place, seq), seq)?;
        c.added.push(*a);
    }
    for a in have.difference(want) {
        seq += 1;
        match ask(&sock, &del_request(*a, place, seq), seq) {
            // Removed by someone else meanwhile: gone all the same.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            r => r?,
        }
        c.removed.push(*a);
    }
    Ok(c)
}

/// Removes the routes to `addrs` in `place` (those already gone count as
/// removed); the others stay. What `balancer detach` does without a daemon.
pub fn remove(addrs: &BTreeSet<IpAddr>, place: Place) -> io::Result<Vec<IpAddr>> {
    let sock = open()?;
    let mut done = Vec::new();
    for (seq, a) in (1..).zip(addrs) {
        match ask(&sock, &del_request(*a, place, seq), seq) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            r => r?,
        }
        done.push(*a);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLACE: Place = Place {
        table: 251,
        protocol: 252,
    };

    #[test]
    fn an_add_request_is_a_blackhole_host_route_in_our_table() {
        let r = add_request("10.0.0.10".parse().unwrap(), PLACE, 9);
        // nlmsghdr, rtmsg, RTA_DST (8), RTA_TABLE (8)
        assert_eq!(r.len(), 16 + 12 + 8 + 8);
        assert_eq!(u16::from_ne_bytes(r[4..6].try_into().unwrap()), 24); // RTM_NEWROUTE
        let flags = u16::from_ne_bytes(r[6..8].try_into().unwrap());
        assert_eq!(flags, 1 | 4 | 0x400 | 0x100);
        // family, dst len, src len, tos, table, protocol, scope, type
        assert_eq!(
            &r[16..24],
            &[
                libc::AF_INET as u8,
                32,
                0,
                0,
                251,
                252,
                0,
                libc::RTN_BLACKHOLE
            ]
        );
        let d = del_request("fd00::10".parse().unwrap(), PLACE, 3);
        assert_eq!(u16::from_ne_bytes(d[4..6].try_into().unwrap()), 25); // RTM_DELROUTE
        assert_eq!(d[17], 128);
    }

    #[test]
    fn only_our_host_routes_are_ours() {
        let mut m = message("10.0.0.10".parse().unwrap(), PLACE);
        assert_eq!(ours(&m, PLACE), Some("10.0.0.10".parse().unwrap()));
        m.header.protocol = RouteProtocol::Bird;
        assert_eq!(ours(&m, PLACE), None);
        let mut m = message("10.0.0.10".parse().unwrap(), PLACE);
        m.attributes
            .retain(|a| !matches!(a, RouteAttribute::Table(_)));
        m.header.table = 254;
        assert_eq!(ours(&m, PLACE), None);
        let mut m = message("10.0.0.10".parse().unwrap(), PLACE);
        m.header.destination_prefix_length = 24;
        assert_eq!(ours(&m, PLACE), None);
    }

    #[test]
    fn routes_are_added_adopted_and_removed() {
        // In a network namespace of its own (needs CAP_SYS_ADMIN).
        let r = std::thread::spawn(|| {
            // SAFETY: moves only this thread, which ends with the test.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            let a: IpAddr = "10.0.0.10".parse().unwrap();
            let b: IpAddr = "fd00::10".parse().unwrap();
            let both: BTreeSet<IpAddr> = [a, b].into();
            let first = reconcile(&both, PLACE).unwrap();
            let listed = list(PLACE).unwrap();
            let again = reconcile(&both, PLACE).unwrap();
            let other = list(Place {
                table: 251,
                protocol: 251,
            })
            .unwrap();
            let none = reconcile(&BTreeSet::new(), PLACE).unwrap();
            let after = list(PLACE).unwrap();
            Some((first, listed, again, other, none, after))
        })
        .join()
        .unwrap();
        let Some((first, listed, again, other, none, after)) = r else {
            eprintln!("skipped: no network namespace of our own (not root)");
            return;
        };
        let a: IpAddr = "10.0.0.10".parse().unwrap();
        let b: IpAddr = "fd00::10".parse().unwrap();
        assert_eq!(first.added, vec![a, b]);
        assert_eq!(listed, [a, b].into());
        assert_eq!(again, Changes::default(), "a second pass changes nothing");
        assert!(other.is_empty(), "{other:?}");
        assert_eq!(none.removed, vec![a, b]);
        assert!(after.is_empty(), "{after:?}");
    }
}
