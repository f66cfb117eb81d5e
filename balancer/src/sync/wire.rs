//! The datagram layout (see the table in [`super`]): encoding, and a parser
//! that checks every length and field before it trusts one, since anything on
//! the network may send anything.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// First bytes of every datagram: tells a sync datagram from a stray one
/// before any HMAC is computed.
pub const MAGIC: [u8; 4] = *b"SLBS";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 48;
pub const ENTRY_LEN: usize = 48;
/// HMAC-SHA256, never truncated.
pub const TAG_LEN: usize = 32;
/// Below a 1,500-byte MTU with IPv6 and UDP headers, and room for tunnels:
/// a sync datagram is never fragmented.
pub const MAX_DATAGRAM: usize = 1400;
/// As many entries as fit in [`MAX_DATAGRAM`] with the header and the tag.
pub const MAX_ENTRIES: usize = (MAX_DATAGRAM - HEADER_LEN - TAG_LEN) / ENTRY_LEN;

const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// New affinity entries.
    Entries = 1,
    /// Entries that are gone (dialog ended, backend removed).
    Removals = 2,
    /// A peer back from a restart asks for everything, from a cursor on.
    BulkRequest = 3,
    /// One page of the answer to a [`Kind::BulkRequest`].
    BulkChunk = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Entries,
            2 => Kind::Removals,
            3 => Kind::BulkRequest,
            4 => Kind::BulkChunk,
            _ => return None,
        })
    }
}

/// Which kernel map an entry lives in: the two are kept apart on peers too,
/// because they have different capacities and different owners of the key
/// (the client's Call-ID, or what a backend's dialog taught).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Map {
    Client = 0,
    Learned = 1,
}

/// One affinity entry in a form every balancer understands: addresses, not
/// the slots and service ids, which each balancer numbers by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub map: Map,
    pub vip: SocketAddr,
    pub hash: u32,
    pub backend: SocketAddr,
    /// Milliseconds since the dialog's last message on the sender: the
    /// receiver's own clock then dates it, as the kernels' clocks differ.
    pub age_ms: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub sender: u64,
    pub epoch: u64,
    pub seq: u64,
    /// Milliseconds since the Unix epoch when the datagram was made.
    pub timestamp_ms: u64,
    /// Bulk transfer position: where a request starts, where the next chunk
    /// starts (0 after the last chunk). 0 in other kinds.
    pub cursor: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub header: Header,
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("{0} bytes: not a whole header, entries and tag")]
    Length(usize),
    #[error("bad magic")]
    Magic,
    #[error("version {0}, this balancer speaks {VERSION}")]
    Version(u8),
    #[error("unknown kind {0}")]
    Kind(u8),
    #[error("{0} entries, at most {MAX_ENTRIES}")]
    TooMany(usize),
    #[error("{0:?} with entries or a cursor it cannot have")]
    Shape(Kind),
    #[error("entry {0}: {1}")]
    Entry(usize, &'static str),
}

impl Datagram {
    /// The datagram without its tag. Panics on more than [`MAX_ENTRIES`]
    /// entries: callers page their entries, this is a programming error.
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.entries.len() <= MAX_ENTRIES, "page the entries");
        let h = &self.header;
        let mut b = Vec::with_capacity(HEADER_LEN + self.entries.len() * ENTRY_LEN + TAG_LEN);
        b.extend_from_slice(&MAGIC);
        b.push(VERSION);
        b.push(h.kind as u8);
        b.extend_from_slice(&(self.entries.len() as u16).to_le_bytes());
        for v in [h.sender, h.epoch, h.seq, h.timestamp_ms, h.cursor] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for e in &self.entries {
            b.push(e.map as u8);
            b.push(family(&e.vip));
            b.push(family(&e.backend));
            b.push(0);
            b.extend_from_slice(&e.hash.to_le_bytes());
            b.extend_from_slice(&addr16(&e.vip));
            b.extend_from_slice(&e.vip.port().to_le_bytes());
            b.extend_from_slice(&addr16(&e.backend));
            b.extend_from_slice(&e.backend.port().to_le_bytes());
            b.extend_from_slice(&e.age_ms.to_le_bytes());
        }
        debug_assert_eq!(b.len(), HEADER_LEN + self.entries.len() * ENTRY_LEN);
        b
    }

    /// Parses a datagram whose tag is already checked and cut off. Total on
    /// every input: it returns an error, never panics.
    pub fn decode(b: &[u8]) -> Result<Datagram, WireError> {
        if b.len() < HEADER_LEN || b.len() > MAX_DATAGRAM - TAG_LEN {
            return Err(WireError::Length(b.len()));
        }
        if b[0..4] != MAGIC {
            return Err(WireError::Magic);
        }
        if b[4] != VERSION {
            return Err(WireError::Version(b[4]));
        }
        let kind = Kind::from_u8(b[5]).ok_or(WireError::Kind(b[5]))?;
        let count = u16::from_le_bytes([b[6], b[7]]) as usize;
        if count > MAX_ENTRIES {
            return Err(WireError::TooMany(count));
        }
        if b.len() != HEADER_LEN + count * ENTRY_LEN {
            return Err(WireError::Length(b.len() + TAG_LEN));
        }
        let header = Header {
            kind,
            sender: u64_at(b, 8),
            epoch: u64_at(b, 16),
            seq: u64_at(b, 24),
            timestamp_ms: u64_at(b, 32),
            cursor: u64_at(b, 40),
        };
        let shape_ok = match kind {
            Kind::Entries | Kind::Removals => header.cursor == 0,
            Kind::BulkRequest => count == 0,
            Kind::BulkChunk => true,
        };
        if !shape_ok {
            return Err(WireError::Shape(kind));
        }
        let entries = b[HEADER_LEN..]
            .chunks_exact(ENTRY_LEN)
            .enumerate()
            .map(|(i, e)| entry(e).map_err(|m| WireError::Entry(i, m)))
            .collect::<Result<_, _>>()?;
        Ok(Datagram { header, entries })
    }
}

fn entry(e: &[u8]) -> Result<Entry, &'static str> {
    let map = match e[0] {
        0 => Map::Client,
        1 => Map::Learned,
        _ => return Err("unknown map"),
    };
    if e[3] != 0 {
        return Err("reserved byte set");
    }
    let vip = sockaddr(e[1], &e[8..24], u16::from_le_bytes([e[24], e[25]]))?;
    let backend = sockaddr(e[2], &e[26..42], u16::from_le_bytes([e[42], e[43]]))?;
    // A service and its backends share a family (the configuration checks
    // it): an entry that mixes them was not made by a balancer.
    if vip.is_ipv4() != backend.is_ipv4() {
        return Err("VIP and backend of different families");
    }
    Ok(Entry {
        map,
        vip,
        hash: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
        backend,
        age_ms: u32::from_le_bytes([e[44], e[45], e[46], e[47]]),
    })
}

fn sockaddr(family: u8, a: &[u8], port: u16) -> Result<SocketAddr, &'static str> {
    let mut x = [0u8; 16];
    x.copy_from_slice(a);
    let ip = match family {
        // One encoding per address: trailing bytes must be zero, or two
        // datagrams could differ yet mean the same.
        FAMILY_V4 if x[4..].iter().all(|&b| b == 0) => {
            IpAddr::V4(Ipv4Addr::new(x[0], x[1], x[2], x[3]))
        }
        FAMILY_V4 => return Err("IPv4 address with trailing bytes"),
        FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(x)),
        _ => return Err("unknown address family"),
    };
    Ok(SocketAddr::new(ip, port))
}

fn family(a: &SocketAddr) -> u8 {
    if a.is_ipv4() {
        FAMILY_V4
    } else {
        FAMILY_V6
    }
}

fn addr16(a: &SocketAddr) -> [u8; 16] {
    match a.ip() {
        IpAddr::V4(v) => {
            let mut x = [0u8; 16];
            x[..4].copy_from_slice(&v.octets());
            x
        }
        IpAddr::V6(v) => v.octets(),
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    pub(crate) fn entry(i: u32) -> Entry {
        Entry {
            map: if i.is_multiple_of(2) {
                Map::Client
            } else {
                Map::Learned
            },
            vip: if i.is_multiple_of(3) {
                "[2001:db8::10]:5060".parse().unwrap()
            } else {
                "203.0.113.10:5060".parse().unwrap()
            },
            hash: i.wrapping_mul(2_654_435_761),
            backend: if i.is_multiple_of(3) {
                format!("[2001:db8:2::{}]:5062", i % 200 + 1)
                    .parse()
                    .unwrap()
            } else {
                format!("10.0.2.{}:5060", i % 200 + 1).parse().unwrap()
            },
            age_ms: i * 1000,
        }
    }

    pub(crate) fn datagram(kind: Kind, n: u32) -> Datagram {
        Datagram {
            header: Header {
                kind,
                sender: 7,
                epoch: 1_700_000_000_000,
                seq: 1,
                timestamp_ms: 1_700_000_000_500,
                cursor: 0,
            },
            entries: (0..n).map(entry).collect(),
        }
    }

    #[test]
    fn round_trips_at_every_size() {
        assert_eq!(MAX_ENTRIES, 27);
        for n in [0, 1, 2, MAX_ENTRIES as u32] {
            for kind in [Kind::Entries, Kind::Removals, Kind::BulkChunk] {
                let d = datagram(kind, n);
                let b = d.encode();
                assert_eq!(b.len(), HEADER_LEN + n as usize * ENTRY_LEN);
                assert!(b.len() + TAG_LEN <= MAX_DATAGRAM);
                assert_eq!(Datagram::decode(&b).unwrap(), d);
            }
        }
        let mut d = datagram(Kind::BulkRequest, 0);
        d.header.cursor = 12345;
        assert_eq!(Datagram::decode(&d.encode()).unwrap(), d);
    }

    #[test]
    fn layout_is_fixed_little_endian() {
        let b = datagram(Kind::Entries, 1).encode();
        assert_eq!(&b[0..6], b"SLBS\x01\x01");
        assert_eq!(&b[6..8], &[1, 0]);
        assert_eq!(&b[8..16], &7u64.to_le_bytes());
        let e = &b[HEADER_LEN..];
        // Entry 0: client map, IPv6 both sides.
        assert_eq!(&e[0..4], &[0, 6, 6, 0]);
        assert_eq!(&e[24..26], &5060u16.to_le_bytes());
        assert_eq!(&e[42..44], &5062u16.to_le_bytes());
        let b = datagram(Kind::Entries, 2).encode();
        let e = &b[HEADER_LEN + ENTRY_LEN..];
        assert_eq!(&e[0..4], &[1, 4, 4, 0]);
        assert_eq!(&e[8..12], &[203, 0, 113, 10]);
        assert!(e[12..24].iter().all(|&x| x == 0));
    }

    #[test]
    fn malformed_is_refused() {
        let good = datagram(Kind::Entries, 2).encode();
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            Datagram::decode(&b).unwrap_err()
        };
        assert_eq!(bad(&|b| b.truncate(HEADER_LEN + 10)), WireError::Length(90));
        assert_eq!(bad(&|b| b[0] = b'X'), WireError::Magic);
        assert_eq!(bad(&|b| b[4] = 2), WireError::Version(2));
        assert_eq!(bad(&|b| b[5] = 9), WireError::Kind(9));
        assert_eq!(bad(&|b| b[6] = 200), WireError::TooMany(200));
        assert!(matches!(bad(&|b| b[6] = 3), WireError::Length(_)));
        assert_eq!(bad(&|b| b[40] = 1), WireError::Shape(Kind::Entries));
        assert!(matches!(
            bad(&|b| b[HEADER_LEN] = 5),
            WireError::Entry(0, _)
        ));
        assert!(matches!(
            bad(&|b| b[HEADER_LEN + ENTRY_LEN + 20] = 1),
            WireError::Entry(1, _)
        ));
        // An IPv4 VIP with an IPv6 backend.
        assert!(matches!(
            bad(&|b| b[HEADER_LEN + ENTRY_LEN + 2] = 6),
            WireError::Entry(1, _)
        ));
        let mut r = datagram(Kind::BulkRequest, 0);
        r.entries.push(entry(1));
        let b = r.encode();
        assert_eq!(
            Datagram::decode(&b),
            Err(WireError::Shape(Kind::BulkRequest))
        );
    }

    /// Fuzz-style: random bytes, and good datagrams with random bytes
    /// changed, never panic the parser, and what parses encodes back the same.
    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let good = datagram(Kind::BulkChunk, 5).encode();
        for i in 0..200_000u32 {
            let b: Vec<u8> = if i.is_multiple_of(2) {
                let n = rng.gen_range(0..MAX_DATAGRAM + 64);
                (0..n).map(|_| rng.gen()).collect()
            } else {
                let mut b = good.clone();
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..b.len());
                    b[at] = rng.gen();
                }
                if rng.gen_bool(0.1) {
                    b.truncate(rng.gen_range(0..b.len()));
                }
                b
            };
            if let Ok(d) = Datagram::decode(&b) {
                assert_eq!(d.encode(), b);
            }
        }
    }
}
