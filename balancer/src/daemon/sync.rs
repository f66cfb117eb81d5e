//! `[sync]`: a thread that tells the peers about the affinity entries the
//! program makes (read from its `AFFINITY_EVENTS` ring) and enters theirs
//! into this kernel's maps, over one UDP socket (`crate::sync` has the
//! format and the checks).
//!
//! - A new entry goes out at once if nothing was sent for [`FLUSH`], else
//!   within [`FLUSH`] with those that follow (up to 27 a datagram); the same
//!   datagram goes to every peer.
//! - Every peer hears from this one at least every [`HEARTBEAT`], which is
//!   how `balancer peers` knows when each was last heard.
//! - At start, and when a peer is heard again after [`SILENCE`], this
//!   balancer asks it for every fresh entry it holds, page by page
//!   (a bulk transfer, paced by [`PAGE_GAP`] and retried after [`RETRY`]).
//! - What peers send is entered with the age it had on the peer, so an
//!   entry idles out on every balancer at the same time; a key this kernel
//!   saw more recently keeps its own backend.
//!
//! The program makes no removals (an entry is replaced by a dialog start or
//! idles out), so none are sent; removals that peers send are applied.

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use balancer_common::maps::AffinityKey;

use super::threads::{self, Watched};
use super::Daemon;
use crate::control::protocol::{PeerStatus, Peers as PeersReply, SyncTotals};
use crate::kernel::affinity::{AffinityMaps, Events, Put};
use crate::model::SyncConfig;
use crate::sync::directory::{Directory, Unknown};
use crate::sync::peer::unix_ms;
use crate::sync::wire::MAX_ENTRIES;
use crate::sync::{Datagram, Entry, Kind, Peers, Sender};

/// Longest a new entry waits for others to share its datagram.
pub const FLUSH: Duration = Duration::from_millis(2);
/// Longest this balancer stays silent towards its peers.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A peer not heard for this long is caught up with when it comes back.
pub const SILENCE: Duration = Duration::from_secs(3);
/// Between the pages of a bulk transfer: 27 entries a page, 13,500 entries a
/// second, inside a peer's default limits (2,000 datagrams, 40,000 entries).
pub const PAGE_GAP: Duration = Duration::from_millis(2);
/// A bulk request without an answer is sent again after this long.
pub const RETRY: Duration = Duration::from_secs(1);
/// A bulk answer's snapshot is reused for the following pages this long.
const SNAPSHOT_LIFE: Duration = Duration::from_secs(30);
/// Events read per wake-up, so that datagrams from peers are not starved.
const EVENTS_PER_ROUND: usize = 4096;

/// What the thread and the daemon share.
struct Shared {
    directory: RwLock<Directory>,
    state: Mutex<State>,
}

struct State {
    peers: Peers,
    heard: HashMap<SocketAddr, (Instant, i64)>,
    catching_up: HashMap<SocketAddr, bool>,
    totals: SyncTotals,
}

/// The running sync: stopped on drop.
pub(super) struct Syncer {
    listen: SocketAddr,
    shared: Arc<Shared>,
    stop: OwnedFd,
    thread: Option<Watched>,
}

impl Syncer {
    /// Binds the sync address and starts the thread. Fails (and the daemon
    /// with it) on an unreadable key, an address it cannot bind, or maps
    /// it cannot open: a balancer configured to sync that does not would
    /// split dialogs at the next failover without a word.
    pub(super) fn start(c: &SyncConfig, pins: &Path, directory: Directory) -> Result<Syncer> {
        let key = c.load_key()?;
        let socket = UdpSocket::bind(c.listen)
            .with_context(|| format!("[sync] listen {}: binding", c.listen))?;
        socket.set_nonblocking(true)?;
        let maps = AffinityMaps::open(pins)?;
        let events = Events::open(pins)?;
        let epoch = unix_ms(SystemTime::now());
        let sender = Sender::new(c, key.clone(), epoch);
        let now = Instant::now();
        let shared = Arc::new(Shared {
            directory: RwLock::new(directory),
            state: Mutex::new(State {
                peers: Peers::new(c, key, now),
                heard: HashMap::new(),
                catching_up: c.peers.iter().map(|p| (*p, true)).collect(),
                totals: SyncTotals::default(),
            }),
        });
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if stop < 0 {
            return Err(std::io::Error::last_os_error()).context("eventfd for the sync thread");
        }
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let wake = stop.try_clone()?;
        let mut w = Worker {
            shared: shared.clone(),
            socket,
            maps,
            events,
            sender,
            peers: c.peers.clone(),
            pending: Vec::new(),
            pending_since: None,
            last_sent: now,
            bulk: c
                .peers
                .iter()
                .map(|p| {
                    (
                        *p,
                        Bulk {
                            next: Some(0),
                            at: now,
                            asked: None,
                        },
                    )
                })
                .collect(),
            snapshots: HashMap::new(),
            silent: HashSet::new(),
        };
        log::info!(
            "sync: on {}, {} peers; asking each for its entries",
            c.listen,
            c.peers.len()
        );
        let thread =
            threads::spawn("sync", move || w.run(wake)).context("starting the sync thread")?;
        Ok(Syncer {
            listen: c.listen,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// The services and backends the kernel serves now.
    pub(super) fn set_directory(&self, d: Directory) {
        // Poisoned only by a panic of the thread, which ends the daemon.
        *self
            .shared
            .directory
            .write()
            .unwrap_or_else(|e| e.into_inner()) = d;
    }

    /// Why the thread stopped, if it did by a panic.
    pub(super) fn failure(&self) -> Option<String> {
        self.thread.as_ref().and_then(Watched::failure)
    }

    pub(super) fn report(&self) -> PeersReply {
        let s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut totals = s.totals.clone();
        totals.not_a_peer = s.peers.unknown;
        let peers: Vec<PeerStatus> = s
            .peers
            .report()
            .into_iter()
            .map(|r| {
                let heard = s.heard.get(&r.address);
                totals.rejected += r.counters.rejected.total();
                PeerStatus {
                    address: r.address,
                    last_heard_ms: heard.map(|(at, _)| (now - *at).as_millis() as u64),
                    lag_ms: heard.map(|(_, lag)| *lag),
                    epoch: r.counters.epoch,
                    sent_datagrams: r.counters.sent_datagrams,
                    sent_entries: r.counters.sent_entries,
                    received_datagrams: r.counters.received_datagrams,
                    received_entries: r.counters.received_entries,
                    catching_up: s.catching_up.get(&r.address).copied().unwrap_or(false),
                    rejected: r.counters.rejected,
                }
            })
            .collect();
        PeersReply {
            listen: Some(self.listen),
            peers,
            totals,
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        let one: u64 = 1;
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(t) = self.thread.take() {
            t.join();
        }
    }
}

/// A bulk transfer from one peer: the next page to ask for (`None`: done)
/// and when.
struct Bulk {
    next: Option<u64>,
    at: Instant,
    /// When the last request went out, for [`RETRY`].
    asked: Option<Instant>,
}

struct Worker {
    shared: Arc<Shared>,
    socket: UdpSocket,
    maps: AffinityMaps,
    events: Events,
    sender: Sender,
    peers: Vec<SocketAddr>,
    pending: Vec<Entry>,
    pending_since: Option<Instant>,
    last_sent: Instant,
    bulk: HashMap<SocketAddr, Bulk>,
    /// What each peer is being sent page by page, in one order.
    snapshots: HashMap<SocketAddr, (Vec<Entry>, Instant)>,
    /// Peers logged as silent.
    silent: HashSet<SocketAddr>,
}

impl Worker {
    fn run(&mut self, stop: OwnedFd) {
        let mut buf = vec![0u8; 2048];
        loop {
            let timeout = self
                .next_deadline()
                .saturating_duration_since(Instant::now());
            let mut fds = [
                poll_in(self.events.fd()),
                poll_in(self.socket.as_raw_fd()),
                poll_in(stop.as_raw_fd()),
            ];
            let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 3, ms) };
            if rc < 0 && std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
                log::info!("sync: poll: {}", std::io::Error::last_os_error());
                std::thread::sleep(Duration::from_millis(100));
            }
            if fds[2].revents != 0 {
                self.read_events();
                self.flush();
                return;
            }
            self.read_events();
            self.receive(&mut buf);
            let now = Instant::now();
            if self.pending.len() >= MAX_ENTRIES
                || self.pending_since.is_some_and(|t| now >= t + FLUSH)
                // Nothing went out for as long: the news goes at once. Only a
                // busy balancer batches.
                || (!self.pending.is_empty() && now >= self.last_sent + FLUSH)
                || now >= self.last_sent + HEARTBEAT
            {
                self.flush();
            }
            self.ask(now);
            self.note_silence(now);
        }
    }

    /// Logs a peer that went silent, once.
    fn note_silence(&mut self, now: Instant) {
        let s = self.shared.state.lock().unwrap();
        for (p, (at, _)) in &s.heard {
            if now - *at >= SILENCE && self.silent.insert(*p) {
                log::info!("sync: peer {p} silent for {}s", SILENCE.as_secs());
            }
        }
    }

    /// The earliest of: the pending entries' flush, the heartbeat, the next
    /// bulk request.
    fn next_deadline(&self) -> Instant {
        let mut t = self.last_sent + HEARTBEAT;
        if let Some(p) = self.pending_since {
            t = t.min(p + FLUSH);
        }
        for b in self.bulk.values() {
            if b.next.is_some() {
                t = t.min(b.at);
            }
        }
        t
    }

    fn read_events(&mut self) {
        let dir = self.shared.directory.read().unwrap();
        let mut fresh = Vec::new();
        let n = self.events.drain(EVENTS_PER_ROUND, |which, e| {
            let key = AffinityKey {
                service: e.service,
                hash: e.hash,
            };
            if let Some(entry) = dir.entry(which, key, e.slot, 0) {
                fresh.push(entry);
            }
        });
        drop(dir);
        if n == 0 {
            return;
        }
        self.shared.state.lock().unwrap().totals.events += n as u64;
        if !fresh.is_empty() && self.pending.is_empty() {
            self.pending_since = Some(Instant::now());
        }
        self.pending.extend(fresh);
    }

    /// Sends what is pending (an empty datagram as the heartbeat).
    fn flush(&mut self) {
        let entries = std::mem::take(&mut self.pending);
        self.pending_since = None;
        let now_ms = unix_ms(SystemTime::now());
        for d in self.sender.entries(Kind::Entries, &entries, now_ms).iter() {
            self.send_all(d, d_entries(d));
        }
        if entries.is_empty() {
            let d = self.sender.heartbeat(now_ms);
            self.send_all(&d, 0);
        }
        self.last_sent = Instant::now();
    }

    fn send_all(&mut self, d: &[u8], entries: usize) {
        let mut errors = 0;
        for p in &self.peers {
            if self.socket.send_to(d, p).is_err() {
                errors += 1;
            }
        }
        let mut s = self.shared.state.lock().unwrap();
        s.peers.sent(entries);
        s.totals.sent_datagrams += 1;
        s.totals.sent_entries += entries as u64;
        s.totals.errors += errors;
    }

    fn send_to(&mut self, d: &[u8], to: SocketAddr, entries: usize) {
        let failed = self.socket.send_to(d, to).is_err();
        let mut s = self.shared.state.lock().unwrap();
        s.peers.sent_to(to, entries);
        s.totals.sent_datagrams += 1;
        s.totals.sent_entries += entries as u64;
        s.totals.errors += failed as u64;
    }

    fn receive(&mut self, buf: &mut [u8]) {
        // Bounded per round, so that a flood does not keep the ring unread.
        for _ in 0..256 {
            let (n, from) = match self.socket.recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            let now = Instant::now();
            let now_ms = unix_ms(SystemTime::now());
            let d = {
                let mut s = self.shared.state.lock().unwrap();
                match s.peers.receive(from, &buf[..n], now, now_ms) {
                    Ok(d) => {
                        let lag = now_ms as i64 - d.header.timestamp_ms as i64;
                        let before = s.heard.insert(from, (now, lag));
                        if before.is_none() {
                            log::info!("sync: peer {from} heard");
                        }
                        self.silent.remove(&from);
                        // Back after a silence: catch up with what it holds.
                        if let Some((at, _)) = before.filter(|(at, _)| now - *at >= SILENCE) {
                            log::info!(
                                "sync: peer {from} heard again after {:.1}s: asking for its entries",
                                (now - at).as_secs_f64()
                            );
                            s.catching_up.insert(from, true);
                            self.bulk.insert(
                                from,
                                Bulk {
                                    next: Some(0),
                                    at: now,
                                    asked: None,
                                },
                            );
                        }
                        d
                    }
                    Err(_) => continue,
                }
            };
            self.take(from, d, now);
        }
    }

    fn take(&mut self, from: SocketAddr, d: Datagram, now: Instant) {
        match d.header.kind {
            Kind::Entries | Kind::BulkChunk => self.apply(&d.entries, false),
            Kind::Removals => self.apply(&d.entries, true),
            Kind::BulkRequest => {
                self.answer(from, d.header.cursor, now);
                return;
            }
        }
        if d.header.kind == Kind::BulkChunk {
            // Only an answer to the request under way moves it on.
            if let Some(b) = self.bulk.get_mut(&from) {
                if b.asked.is_some() {
                    b.asked = None;
                    b.next = (d.header.cursor != 0).then_some(d.header.cursor);
                    b.at = now + PAGE_GAP;
                    if b.next.is_none() {
                        log::info!("sync: caught up with {from}");
                        self.shared
                            .state
                            .lock()
                            .unwrap()
                            .catching_up
                            .insert(from, false);
                    }
                }
            }
        }
    }

    fn apply(&mut self, entries: &[Entry], remove: bool) {
        let dir = self.shared.directory.read().unwrap();
        let mut t = SyncTotals::default();
        for e in entries {
            let (key, slot) = match dir.local(e) {
                Ok(k) => k,
                Err(Unknown::Service) => {
                    t.unknown_service += 1;
                    continue;
                }
                Err(Unknown::Backend) => {
                    t.unknown_backend += 1;
                    continue;
                }
            };
            let r = if remove {
                self.maps.remove(e.map, key, slot).map(|_| Put::Written)
            } else {
                self.maps
                    .put(e.map, key, slot, Duration::from_millis(e.age_ms as u64))
            };
            match r {
                Ok(Put::KeptNewer) => t.kept_newer += 1,
                Ok(_) => t.applied += 1,
                Err(_) => t.errors += 1,
            }
        }
        drop(dir);
        let mut s = self.shared.state.lock().unwrap();
        let s = &mut s.totals;
        s.received_entries += entries.len() as u64;
        s.applied += t.applied;
        s.kept_newer += t.kept_newer;
        s.unknown_service += t.unknown_service;
        s.unknown_backend += t.unknown_backend;
        s.errors += t.errors;
    }

    /// One page of everything fresh this balancer holds, for a peer that asks.
    fn answer(&mut self, to: SocketAddr, cursor: u64, now: Instant) {
        let stale = self
            .snapshots
            .get(&to)
            .is_none_or(|(_, at)| now - *at > SNAPSHOT_LIFE);
        if cursor == 0 || stale {
            let dir = self.shared.directory.read().unwrap();
            let mut all: Vec<Entry> = self
                .maps
                .fresh(|id| dir.idle_s(id))
                .into_iter()
                .filter_map(|(which, key, slot, age)| {
                    dir.entry(
                        which,
                        key,
                        slot,
                        age.as_millis().min(u32::MAX as u128) as u32,
                    )
                })
                .collect();
            all.sort_by_key(|e| (e.map as u8, e.vip, e.hash));
            self.snapshots.insert(to, (all, now));
        }
        let all = std::mem::take(&mut self.snapshots.get_mut(&to).unwrap().0);
        let (d, next) = self
            .sender
            .bulk_chunk(&all, cursor, unix_ms(SystemTime::now()));
        let n = d_entries(&d);
        self.send_to(&d, to, n);
        if next == 0 {
            self.snapshots.remove(&to);
        } else {
            self.snapshots.get_mut(&to).unwrap().0 = all;
        }
        self.shared.state.lock().unwrap().totals.bulk_pages += 1;
    }

    /// Sends the bulk requests that are due.
    fn ask(&mut self, now: Instant) {
        let due: Vec<(SocketAddr, u64)> = self
            .bulk
            .iter()
            .filter_map(|(p, b)| Some((*p, b.next?, b.at)))
            .filter(|(_, _, at)| now >= *at)
            .map(|(p, c, _)| (p, c))
            .collect();
        for (peer, cursor) in due {
            let d = self.sender.bulk_request(cursor, unix_ms(SystemTime::now()));
            self.send_to(&d, peer, 0);
            let b = self.bulk.get_mut(&peer).unwrap();
            b.asked = Some(now);
            b.at = now + RETRY;
        }
    }
}

/// The entry count of an encoded datagram (bytes 6-7).
fn d_entries(d: &[u8]) -> usize {
    u16::from_le_bytes([d[6], d[7]]) as usize
}

fn poll_in(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// The directory of what the kernel serves now: services with affinity,
/// their ids, idle times and backends' slots.
pub(super) fn directory(d: &Daemon) -> Directory {
    let mut out = Directory::default();
    for (vip, live) in d.dp.live() {
        if !live.config.affinity {
            continue;
        }
        let backends = live
            .config
            .backends
            .iter()
            .filter_map(|b| Some((b.address, d.dp.slot_of(b.address)?)));
        out.add(*vip, live.id, live.kernel.affinity_idle, backends);
    }
    out
}

/// `peers` without `[sync]`.
pub(super) fn none() -> PeersReply {
    PeersReply::default()
}
