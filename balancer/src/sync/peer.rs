//! Each peer's state and counters, the checks a received datagram goes
//! through, and the numbering of sent ones.
//!
//! The checks run cheapest first, so that a flood costs as little as it can:
//! the source address (only configured peers), the peer's datagram bucket
//! (before any HMAC is computed), the size, the tag, the layout, the sender
//! id, the clock skew, the replay window, and the entries bucket. Only a
//! datagram that passes every one changes any state beyond counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::auth::Key;
use super::limits::Bucket;
use super::replay::{check_skew, Stale, Window};
use super::wire::{Datagram, Entry, Header, Kind, MAX_DATAGRAM, MAX_ENTRIES};
use crate::model::sync::{EffectiveSync, SyncConfig};

/// A balancer's sender id: derived from its sync address, which its peers
/// list, so that each knows what id to expect from which address. Without
/// that, anyone on the path could send one peer's (validly signed) datagram
/// back to its sender, or to a third as if from another peer, and move that
/// peer's replay window.
pub fn sender_id(listen: SocketAddr) -> u64 {
    // FNV-1a: stable across versions and hosts, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes: Vec<u8> = match listen.ip() {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    for b in bytes.iter().chain(&listen.port().to_le_bytes()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Milliseconds since the Unix epoch, as the wire carries time.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("not from a configured peer")]
    UnknownPeer,
    #[error("over the peer's datagram rate")]
    DatagramRate,
    #[error("longer than {MAX_DATAGRAM} bytes")]
    TooLong,
    #[error("tag missing, truncated or wrong")]
    Auth,
    #[error("malformed")]
    Malformed,
    #[error("sender id is not the one of the peer's address")]
    Sender,
    #[error("{0}")]
    Stale(Stale),
    #[error("over the peer's entry rate")]
    EntryRate,
}

/// Drops by reason. A field each, not a map: `balancer peers --json` then
/// always shows every reason, zeros included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub datagram_rate: u64,
    pub too_long: u64,
    pub auth: u64,
    pub malformed: u64,
    pub sender: u64,
    pub old_epoch: u64,
    pub replay: u64,
    pub behind_window: u64,
    pub skew: u64,
    pub entry_rate: u64,
}

impl Rejected {
    fn count(&mut self, r: Reject) {
        let c = match r {
            // Counted on the receiver: there is no peer to count it on.
            Reject::UnknownPeer => return,
            Reject::DatagramRate => &mut self.datagram_rate,
            Reject::TooLong => &mut self.too_long,
            Reject::Auth => &mut self.auth,
            Reject::Malformed => &mut self.malformed,
            Reject::Sender => &mut self.sender,
            Reject::Stale(Stale::OldEpoch) => &mut self.old_epoch,
            Reject::Stale(Stale::Replay) => &mut self.replay,
            Reject::Stale(Stale::BehindWindow) => &mut self.behind_window,
            Reject::Stale(Stale::Skew) => &mut self.skew,
            Reject::EntryRate => &mut self.entry_rate,
        };
        *c += 1;
    }

    pub fn total(&self) -> u64 {
        self.datagram_rate
            + self.too_long
            + self.auth
            + self.malformed
            + self.sender
            + self.old_epoch
            + self.replay
            + self.behind_window
            + self.skew
            + self.entry_rate
    }
}

/// One peer's counters, as `balancer peers --json` and `stats` show them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub sent_datagrams: u64,
    pub sent_entries: u64,
    pub received_datagrams: u64,
    pub received_entries: u64,
    pub rejected: Rejected,
    /// The epoch (start time, ms since the Unix epoch) of the last datagram
    /// taken: a change means the peer restarted.
    pub epoch: u64,
}

#[derive(Debug)]
struct Peer {
    id: u64,
    window: Window,
    datagrams: Bucket,
    entries: Bucket,
    counters: Counters,
}

/// What this balancer knows of its peers.
#[derive(Debug)]
pub struct Peers {
    key: Key,
    limits: EffectiveSync,
    peers: BTreeMap<SocketAddr, Peer>,
    /// Datagrams from addresses that are not peers: not per peer, or a
    /// spoofed flood would grow the table.
    pub unknown: u64,
}

#[derive(Debug, Serialize)]
pub struct PeerReport {
    pub address: SocketAddr,
    #[serde(flatten)]
    pub counters: Counters,
}

impl Peers {
    pub fn new(config: &SyncConfig, key: Key, now: Instant) -> Peers {
        let limits = config.limits.effective();
        let peers = config
            .peers
            .iter()
            .map(|&a| {
                let p = Peer {
                    id: sender_id(a),
                    window: Window::default(),
                    datagrams: Bucket::new(limits.datagrams, limits.datagrams_burst, now),
                    entries: Bucket::new(limits.entries, limits.entries_burst, now),
                    counters: Counters::default(),
                };
                (a, p)
            })
            .collect();
        Peers {
            key,
            limits,
            peers,
            unknown: 0,
        }
    }

    /// Checks a datagram from `from`; what it carries, if it may be used.
    /// `now_ms` is the wall clock, for the skew check; `now` the monotonic
    /// one, for the buckets.
    pub fn receive(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        now: Instant,
        now_ms: u64,
    ) -> Result<Datagram, Reject> {
        let Some(peer) = self.peers.get_mut(&from) else {
            self.unknown += 1;
            return Err(Reject::UnknownPeer);
        };
        let r = Self::check(&self.key, &self.limits, peer, bytes, now, now_ms);
        match &r {
            Ok(d) => {
                peer.counters.received_datagrams += 1;
                peer.counters.received_entries += d.entries.len() as u64;
                peer.counters.epoch = d.header.epoch;
            }
            Err(e) => peer.counters.rejected.count(*e),
        }
        r
    }

    fn check(
        key: &Key,
        limits: &EffectiveSync,
        peer: &mut Peer,
        bytes: &[u8],
        now: Instant,
        now_ms: u64,
    ) -> Result<Datagram, Reject> {
        if !peer.datagrams.take(1, now) {
            return Err(Reject::DatagramRate);
        }
        if bytes.len() > MAX_DATAGRAM {
            return Err(Reject::TooLong);
        }
        let body = key.verify(bytes).ok_or(Reject::Auth)?;
        // Signed yet malformed: a peer of another version, or a bug; never
        // trusted further.
        let d = Datagram::decode(body).map_err(|_| Reject::Malformed)?;
        let h = &d.header;
        if h.sender != peer.id {
            return Err(Reject::Sender);
        }
        check_skew(h.timestamp_ms, now_ms, limits.max_skew).map_err(Reject::Stale)?;
        peer.window.check(h.epoch, h.seq).map_err(Reject::Stale)?;
        if !peer.entries.take(d.entries.len() as u32, now) {
            return Err(Reject::EntryRate);
        }
        peer.window.accept(h.epoch, h.seq);
        Ok(d)
    }

    /// Counts a datagram sent to every peer.
    pub fn sent(&mut self, entries: usize) {
        for p in self.peers.values_mut() {
            p.counters.sent_datagrams += 1;
            p.counters.sent_entries += entries as u64;
        }
    }

    /// Counts a datagram sent to one peer (a bulk chunk).
    pub fn sent_to(&mut self, peer: SocketAddr, entries: usize) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.counters.sent_datagrams += 1;
            p.counters.sent_entries += entries as u64;
        }
    }

    pub fn report(&self) -> Vec<PeerReport> {
        self.peers
            .iter()
            .map(|(a, p)| PeerReport {
                address: *a,
                counters: p.counters,
            })
            .collect()
    }

    pub fn counters(&self, peer: SocketAddr) -> Option<&Counters> {
        self.peers.get(&peer).map(|p| &p.counters)
    }
}

/// Makes this balancer's datagrams: one sequence for all peers, so that
/// every peer gets the same datagram, and one captured on its way to one
/// peer is a replay, or the same news, at any other.
#[derive(Debug)]
pub struct Sender {
    key: Key,
    id: u64,
    epoch: u64,
    seq: u64,
}

impl Sender {
    /// `epoch`: when this daemon started, in ms since the Unix epoch. It must
    /// grow from one start to the next, or peers refuse everything until the
    /// sequence passes the old one's; a clock set back across a restart
    /// does that, and the `old_epoch` counter on the peers says so.
    pub fn new(config: &SyncConfig, key: Key, epoch: u64) -> Sender {
        Sender {
            key,
            id: sender_id(config.listen),
            epoch,
            seq: 0,
        }
    }

    fn datagram(&mut self, kind: Kind, entries: &[Entry], cursor: u64, now_ms: u64) -> Vec<u8> {
        self.seq += 1;
        let d = Datagram {
            header: Header {
                kind,
                sender: self.id,
                epoch: self.epoch,
                seq: self.seq,
                timestamp_ms: now_ms,
                cursor,
            },
            entries: entries.to_vec(),
        };
        let mut b = d.encode();
        self.key.sign(&mut b);
        b
    }

    /// New entries ([`Kind::Entries`]) or removals, as many datagrams as
    /// they need.
    pub fn entries(&mut self, kind: Kind, entries: &[Entry], now_ms: u64) -> Vec<Vec<u8>> {
        assert!(matches!(kind, Kind::Entries | Kind::Removals));
        entries
            .chunks(MAX_ENTRIES)
            .map(|c| self.datagram(kind, c, 0, now_ms))
            .collect()
    }

    /// An empty [`Kind::Entries`]: tells the peers this balancer is there.
    pub fn heartbeat(&mut self, now_ms: u64) -> Vec<u8> {
        self.datagram(Kind::Entries, &[], 0, now_ms)
    }

    /// Asks a peer for everything it holds, from `cursor` on (0: the start).
    pub fn bulk_request(&mut self, cursor: u64, now_ms: u64) -> Vec<u8> {
        self.datagram(Kind::BulkRequest, &[], cursor, now_ms)
    }

    /// One page of the answer to a bulk request: the entries of `all` from
    /// `cursor` on, and the cursor of the next page (0 after the last). The
    /// cursor is a position in `all`, which the caller keeps in one order
    /// (by key) so that pages asked for later still follow on.
    pub fn bulk_chunk(&mut self, all: &[Entry], cursor: u64, now_ms: u64) -> (Vec<u8>, u64) {
        let start = usize::try_from(cursor).unwrap_or(usize::MAX).min(all.len());
        let end = (start + MAX_ENTRIES).min(all.len());
        let next = if end == all.len() { 0 } else { end as u64 };
        (
            self.datagram(Kind::BulkChunk, &all[start..end], next, now_ms),
            next,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::wire::tests::entry;
    use crate::sync::wire::{HEADER_LEN, TAG_LEN};
    use std::time::Duration;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const NOW_MS: u64 = 1_800_000_000_000;

    fn config(listen: &str, peers: &[&str]) -> SyncConfig {
        SyncConfig {
            listen: listen.parse().unwrap(),
            peers: peers.iter().map(|p| p.parse().unwrap()).collect(),
            key: Some(crate::model::sync::KeyText(KEY.into())),
            key_file: None,
            limits: Default::default(),
        }
    }

    /// Balancer A sends, balancer B receives.
    fn pair() -> (Sender, Peers, SocketAddr, Instant) {
        let a = config("10.0.1.1:5099", &["10.0.1.2:5099"]);
        let b = config("10.0.1.2:5099", &["10.0.1.1:5099", "10.0.1.3:5099"]);
        let key = Key::parse(KEY).unwrap();
        let now = Instant::now();
        (
            Sender::new(&a, key.clone(), NOW_MS - 60_000),
            Peers::new(&b, key, now),
            a.listen,
            now,
        )
    }

    #[test]
    fn entries_go_through_and_are_counted() {
        let (mut tx, mut rx, a, now) = pair();
        let es: Vec<Entry> = (0..60).map(entry).collect();
        let ds = tx.entries(Kind::Entries, &es, NOW_MS);
        assert_eq!(ds.len(), 3);
        let mut got = Vec::new();
        for d in &ds {
            assert!(d.len() <= MAX_DATAGRAM);
            got.extend(rx.receive(a, d, now, NOW_MS).unwrap().entries);
        }
        assert_eq!(got, es);
        let c = rx.counters(a).unwrap();
        assert_eq!((c.received_datagrams, c.received_entries), (3, 60));
        assert_eq!(c.epoch, NOW_MS - 60_000);
        let r = tx.entries(Kind::Removals, &es[..1], NOW_MS);
        let d = rx.receive(a, &r[0], now, NOW_MS).unwrap();
        assert_eq!(d.header.kind, Kind::Removals);
        let json = serde_json::to_value(rx.report()).unwrap();
        assert_eq!(json[0]["address"], "10.0.1.1:5099");
        assert_eq!(json[0]["received_entries"], 61);
        assert_eq!(json[0]["rejected"]["replay"], 0);
        assert_eq!(json[1]["received_datagrams"], 0);
    }

    /// The refusals the brief names, each counted under its own reason, and
    /// none of them moving the replay window.
    #[test]
    fn bad_datagrams_are_refused_and_counted_by_reason() {
        let (mut tx, mut rx, a, now) = pair();
        let es: Vec<Entry> = (0..3).map(entry).collect();
        let good = tx.entries(Kind::Entries, &es, NOW_MS).remove(0);

        // Wrong key.
        let other = config("10.0.1.1:5099", &["10.0.1.2:5099"]);
        let mut forger = Sender::new(&other, Key::parse(&"11".repeat(32)).unwrap(), NOW_MS);
        let forged = forger.entries(Kind::Entries, &es, NOW_MS).remove(0);
        assert_eq!(rx.receive(a, &forged, now, NOW_MS), Err(Reject::Auth));
        // Truncated: by any part of the tag, or into the entries.
        for cut in [1, 16, TAG_LEN, TAG_LEN + 10] {
            let t = &good[..good.len() - cut];
            assert_eq!(
                rx.receive(a, t, now, NOW_MS),
                Err(Reject::Auth),
                "cut {cut}"
            );
        }
        // Tampered after signing.
        let mut t = good.clone();
        t[HEADER_LEN + 4] ^= 1;
        assert_eq!(rx.receive(a, &t, now, NOW_MS), Err(Reject::Auth));
        // Too long to be ours, before any HMAC.
        let long = vec![0u8; MAX_DATAGRAM + 1];
        assert_eq!(rx.receive(a, &long, now, NOW_MS), Err(Reject::TooLong));

        // The good one, once; then its replay.
        assert!(rx.receive(a, &good, now, NOW_MS).is_ok());
        assert_eq!(
            rx.receive(a, &good, now, NOW_MS),
            Err(Reject::Stale(Stale::Replay))
        );
        // Outside the skew, either way.
        let late = tx.entries(Kind::Entries, &es, NOW_MS - 31_000).remove(0);
        assert_eq!(
            rx.receive(a, &late, now, NOW_MS),
            Err(Reject::Stale(Stale::Skew))
        );
        let early = tx.entries(Kind::Entries, &es, NOW_MS + 31_000).remove(0);
        assert_eq!(
            rx.receive(a, &early, now, NOW_MS),
            Err(Reject::Stale(Stale::Skew))
        );
        // A restart moves the epoch on; the old epoch's datagrams are then
        // refused, even ones never seen.
        let old = tx.entries(Kind::Entries, &es, NOW_MS).remove(0);
        let cfg = config("10.0.1.1:5099", &["10.0.1.2:5099"]);
        let mut restarted = Sender::new(&cfg, Key::parse(KEY).unwrap(), NOW_MS - 1000);
        let new = restarted.entries(Kind::Entries, &es, NOW_MS).remove(0);
        assert!(rx.receive(a, &new, now, NOW_MS).is_ok());
        assert_eq!(
            rx.receive(a, &old, now, NOW_MS),
            Err(Reject::Stale(Stale::OldEpoch))
        );
        // A peer's valid datagram sent back to it, or as if from another
        // peer: the sender id does not match the address.
        let c = rx.counters(a).copied().unwrap();
        let third: SocketAddr = "10.0.1.3:5099".parse().unwrap();
        assert_eq!(rx.receive(third, &new, now, NOW_MS), Err(Reject::Sender));
        // Not a peer at all.
        let stranger: SocketAddr = "192.0.2.1:5099".parse().unwrap();
        assert_eq!(
            rx.receive(stranger, &good, now, NOW_MS),
            Err(Reject::UnknownPeer)
        );
        assert_eq!(rx.unknown, 1);

        let r = c.rejected;
        assert_eq!(
            (r.auth, r.too_long, r.replay, r.skew, r.old_epoch),
            (6, 1, 1, 2, 1)
        );
        assert_eq!(r.total(), 11);
        assert_eq!((c.received_datagrams, c.received_entries), (2, 6));
        assert_eq!(rx.counters(third).unwrap().rejected.sender, 1);
    }

    #[test]
    fn malformed_but_signed_is_refused() {
        let (_, mut rx, a, now) = pair();
        let key = Key::parse(KEY).unwrap();
        for body in [vec![], vec![0u8; HEADER_LEN], b"SLBS\x02".repeat(10)] {
            let mut b = body;
            key.sign(&mut b);
            assert_eq!(rx.receive(a, &b, now, NOW_MS), Err(Reject::Malformed));
        }
        assert_eq!(rx.counters(a).unwrap().rejected.malformed, 3);
    }

    /// A flood, valid or not, changes nothing but drop counters: the
    /// buckets bound what is taken, and the window still takes the peer's
    /// next datagram afterwards.
    #[test]
    fn a_flood_changes_nothing_beyond_counted_drops() {
        let (mut tx, mut rx, a, now) = pair();
        let limits = crate::model::sync::SyncLimits::default().effective();
        // Garbage as fast as it comes: after the burst, not even an HMAC.
        let junk = vec![0xa5u8; 600];
        let n = 50_000u64;
        for _ in 0..n {
            assert!(rx.receive(a, &junk, now, NOW_MS).is_err());
        }
        let c = *rx.counters(a).unwrap();
        assert_eq!(c.rejected.auth, limits.datagrams_burst as u64);
        assert_eq!(c.rejected.datagram_rate, n - limits.datagrams_burst as u64);
        assert_eq!((c.received_datagrams, c.received_entries), (0, 0));

        // A second later, valid full datagrams, more than the entry rate.
        let t = now + Duration::from_secs(1);
        let es: Vec<Entry> = (0..MAX_ENTRIES as u32 * 3000).map(entry).collect();
        let ds = tx.entries(Kind::Entries, &es, NOW_MS);
        let mut taken = 0u64;
        for d in &ds {
            if let Ok(d) = rx.receive(a, d, t, NOW_MS) {
                taken += d.entries.len() as u64;
            }
        }
        assert!(taken <= limits.entries_burst as u64, "{taken}");
        let before = c;
        let c = *rx.counters(a).unwrap();
        assert_eq!(c.received_entries, taken);
        assert!(c.rejected.entry_rate > 0);
        assert!(c.rejected.datagram_rate > before.rejected.datagram_rate);
        assert_eq!(
            c.received_datagrams + c.rejected.total(),
            n + ds.len() as u64
        );
        // Refused datagrams did not use up their sequence numbers: once the
        // buckets refill, the next one is taken.
        let t = t + Duration::from_secs(2);
        let next = tx.entries(Kind::Entries, &es[..1], NOW_MS).remove(0);
        assert!(rx.receive(a, &next, t, NOW_MS).is_ok());
    }

    #[test]
    fn bulk_pages_with_a_cursor() {
        let (mut tx, mut rx, a, now) = pair();
        let req = tx.bulk_request(0, NOW_MS);
        let d = rx.receive(a, &req, now, NOW_MS).unwrap();
        assert_eq!((d.header.kind, d.header.cursor), (Kind::BulkRequest, 0));
        let all: Vec<Entry> = (0..60).map(entry).collect();
        let mut cursor = 0;
        let mut got = Vec::new();
        loop {
            let (b, next) = tx.bulk_chunk(&all, cursor, NOW_MS);
            let d = rx.receive(a, &b, now, NOW_MS).unwrap();
            assert_eq!(d.header.cursor, next);
            got.extend(d.entries);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert_eq!(got, all);
        // A cursor past the end: an empty last page.
        let (b, next) = tx.bulk_chunk(&all, 1000, NOW_MS);
        assert_eq!(next, 0);
        assert!(rx.receive(a, &b, now, NOW_MS).unwrap().entries.is_empty());
    }

    /// Over real sockets: the source address the receiver sees is the
    /// sender's bound `listen` address, which is what its id is derived from.
    #[test]
    fn over_loopback_udp() {
        let sa = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sb = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sb.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (a, b) = (sa.local_addr().unwrap(), sb.local_addr().unwrap());
        let ca = config(&a.to_string(), &[&b.to_string()]);
        let cb = config(&b.to_string(), &[&a.to_string()]);
        let key = Key::parse(KEY).unwrap();
        let now = Instant::now();
        let mut tx = Sender::new(&ca, key.clone(), unix_ms(SystemTime::now()));
        let mut rx = Peers::new(&cb, key, now);
        let es: Vec<Entry> = (0..40).map(entry).collect();
        let ds = tx.entries(Kind::Entries, &es, unix_ms(SystemTime::now()));
        for d in &ds {
            sa.send_to(d, b).unwrap();
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        for _ in &ds {
            let (n, from) = sb.recv_from(&mut buf).unwrap();
            assert_eq!(from, a);
            let d = rx
                .receive(from, &buf[..n], Instant::now(), unix_ms(SystemTime::now()))
                .unwrap();
            got.extend(d.entries);
        }
        assert_eq!(got, es);
    }

    #[test]
    fn sender_ids_differ_by_address() {
        let a = sender_id("10.0.1.1:5099".parse().unwrap());
        assert_eq!(a, sender_id("10.0.1.1:5099".parse().unwrap()));
        assert_ne!(a, sender_id("10.0.1.2:5099".parse().unwrap()));
        assert_ne!(a, sender_id("10.0.1.1:5098".parse().unwrap()));
        assert!(unix_ms(SystemTime::now()) > 1_600_000_000_000);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
