//! `[sync]` against a live daemon: the test plays its peer over real UDP in
//! the bed's client namespace. What the program enters for a new dialog
//! reaches the peer (ring buffer, daemon, datagram); what the peer sends
//! moves a Call-ID to the backend it names; a bulk request gets what the
//! maps hold. Then the hostile side: a wrong key, another peer's sender id,
//! a replay, a stranger's address, and a flood change nothing and are
//! counted, and the daemon still takes a good datagram afterwards.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime};

use balancer::model::sync::KeyText;
use balancer::model::SyncConfig;
use balancer::sync::peer::unix_ms;
use balancer::sync::{Datagram, Entry, Key, Kind, Map, Sender};
use balancer_test_support::bed::{self, Bed};
use balancer_test_support::daemon::{cli_ok, Daemon};
use balancer_test_support::netns::require_root;
use balancer_test_support::peers::{enter_netns, invite, Uas};

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const OTHER_KEY: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
const PORT: u16 = 5099;

fn daemon_addr() -> SocketAddr {
    format!("{}:{PORT}", bed::LB_CLIENT_SIDE).parse().unwrap()
}

fn peer_addr() -> SocketAddr {
    format!("{}:{PORT}", bed::CLIENT).parse().unwrap()
}

fn vip() -> SocketAddr {
    format!("{}:5060", bed::VIP).parse().unwrap()
}

fn backend(i: usize) -> SocketAddr {
    format!("{}:5060", bed::backend_ip(i)).parse().unwrap()
}

/// A UDP socket bound in `ns` (a thread enters it; the socket stays there).
fn socket_in(ns: &str, bind: SocketAddr) -> UdpSocket {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        let s = UdpSocket::bind(bind).expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s
    })
    .join()
    .unwrap()
}

/// The sender of a peer at `listen`, with `key`.
fn sender(listen: SocketAddr, key: &str) -> Sender {
    let c = SyncConfig {
        listen,
        peers: vec![daemon_addr()],
        key: Some(KeyText(key.into())),
        key_file: None,
        limits: Default::default(),
    };
    Sender::new(&c, Key::parse(key).unwrap(), unix_ms(SystemTime::now()))
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// The kernel's choice for a Call-ID: (backend, via, hash).
fn whereis(inst: &str, call_id: &str) -> (Option<SocketAddr>, String, u32) {
    let v: serde_json::Value =
        serde_json::from_str(&cli_ok(inst, &["whereis", "--json", call_id])).unwrap();
    (
        v["backend"].as_str().map(|b| b.parse().unwrap()),
        v["via"].as_str().unwrap().to_string(),
        u32::from_str_radix(v["hash"].as_str().unwrap(), 16).unwrap(),
    )
}

fn peers(inst: &str) -> serde_json::Value {
    serde_json::from_str(&cli_ok(inst, &["peers", "--json"])).unwrap()
}

fn until(limit: Duration, f: impl FnMut() -> bool) -> bool {
    balancer_test_support::until(limit, Duration::from_millis(50), f)
}

/// Datagrams the peer socket receives within `limit`, checked with `key`.
fn receive(
    s: &UdpSocket,
    key: &Key,
    limit: Duration,
    mut keep: impl FnMut(&Datagram) -> bool,
) -> Option<Datagram> {
    let end = Instant::now() + limit;
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        let Ok((n, from)) = s.recv_from(&mut buf) else {
            continue;
        };
        assert_eq!(from, daemon_addr(), "a datagram from elsewhere");
        let body = key.verify(&buf[..n]).expect("the daemon's tag verifies");
        let d = Datagram::decode(body).expect("the daemon's datagram decodes");
        if keep(&d) {
            return Some(d);
        }
    }
    None
}

fn entry(call_hash: u32, to: SocketAddr) -> Entry {
    Entry {
        map: Map::Client,
        vip: vip(),
        hash: call_hash,
        backend: to,
        age_ms: 0,
    }
}

/// The bed with two UAS backends and the daemon, `[sync]` naming the test's
/// peer socket.
struct Setup {
    bed: Bed,
    _uas: Vec<Uas>,
    daemon: Option<Daemon>,
    inst: &'static str,
}

impl Setup {
    fn new(prefix: &str, inst: &'static str) -> Setup {
        let bed = Bed::new(prefix, 2);
        let uas = (0..2)
            .map(|i| Uas::start(&bed.backend_ns(i), &backend(i).to_string()))
            .collect();
        let args = Bed::attach_args(
            "dnat",
            inst,
            &[backend(0).to_string(), backend(1).to_string()],
        );
        let path = bed::config_path(inst);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text += &format!(
            "\n[sync]\nlisten = \"{}\"\npeers = [\"{}\"]\nkey = \"{KEY}\"\n",
            daemon_addr(),
            peer_addr()
        );
        std::fs::write(&path, text).unwrap();
        let daemon = Some(Daemon::start(&bed.ns("lb"), &args));
        Setup {
            bed,
            _uas: uas,
            daemon,
            inst,
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            let _ = d.stop();
        }
        let _ = std::fs::remove_file(bed::config_path(self.inst));
    }
}

#[test]
fn entries_travel_both_ways_and_bulk_requests_are_answered() {
    require_root();
    let s = Setup::new("syb", "test-sync-both");
    let inst = s.inst;
    let key = Key::parse(KEY).unwrap();
    let peer = socket_in(&s.bed.ns("cli"), peer_addr());

    // The daemon asks a peer it has not heard for everything it holds.
    let asked = receive(&peer, &key, Duration::from_secs(3), |d| {
        d.header.kind == Kind::BulkRequest
    });
    assert!(asked.is_some(), "no bulk request at start");

    // A dialog the program starts goes to the peer with its backend.
    let client = socket_in(
        &s.bed.ns("cli"),
        format!("{}:0", bed::CLIENT).parse().unwrap(),
    );
    client.send_to(&invite("sync-out-1"), vip()).unwrap();
    let (out_backend, _, out_hash) = whereis(inst, "sync-out-1");
    let got = receive(&peer, &key, Duration::from_secs(3), |d| {
        d.header.kind == Kind::Entries && d.entries.iter().any(|e| e.hash == out_hash)
    })
    .expect("the new dialog's entry never reached the peer");
    let e = got.entries.iter().find(|e| e.hash == out_hash).unwrap();
    assert_eq!(
        (e.map, e.vip, Some(e.backend)),
        (Map::Client, vip(), out_backend)
    );
    assert!(e.age_ms < 1000, "{e:?}");

    // A peer's entry moves a Call-ID off its table backend.
    let (table, via, in_hash) = whereis(inst, "sync-in-1");
    assert_eq!(via, "table");
    let other = if table == Some(backend(0)) {
        backend(1)
    } else {
        backend(0)
    };
    let mut tx = sender(peer_addr(), KEY);
    for d in tx.entries(Kind::Entries, &[entry(in_hash, other)], now_ms()) {
        peer.send_to(&d, daemon_addr()).unwrap();
    }
    assert!(
        until(Duration::from_secs(3), || whereis(inst, "sync-in-1")
            == (Some(other), "affinity".into(), in_hash)),
        "the peer's entry was not applied: {:?}",
        whereis(inst, "sync-in-1")
    );

    // A bulk request gets both entries back.
    let d = tx.bulk_request(0, now_ms());
    peer.send_to(&d, daemon_addr()).unwrap();
    let chunk = receive(&peer, &key, Duration::from_secs(3), |d| {
        d.header.kind == Kind::BulkChunk
    })
    .expect("no bulk chunk");
    let hashes: Vec<u32> = chunk.entries.iter().map(|e| e.hash).collect();
    assert!(
        hashes.contains(&out_hash) && hashes.contains(&in_hash),
        "{chunk:?}"
    );
    assert_eq!(chunk.header.cursor, 0, "two entries fit one page");

    let p = peers(inst);
    let row = &p["peers"][0];
    assert_eq!(row["address"], peer_addr().to_string());
    assert!(row["last_heard_ms"].as_u64().unwrap() < 5_000, "{p}");
    assert!(row["received_entries"].as_u64().unwrap() >= 1, "{p}");
    assert!(row["sent_entries"].as_u64().unwrap() >= 1, "{p}");
    assert!(p["totals"]["applied"].as_u64().unwrap() >= 1, "{p}");
    let stats: serde_json::Value =
        serde_json::from_str(&cli_ok(inst, &["stats", "--json"])).unwrap();
    assert!(stats["sync"]["events"].as_u64().unwrap() >= 1, "{stats}");
    let text = cli_ok(inst, &["stats"]);
    assert!(
        text.contains("affinity sync") && text.contains("entries applied"),
        "{text}"
    );
}

#[test]
fn forged_replayed_and_flooded_datagrams_change_nothing() {
    require_root();
    let s = Setup::new("syf", "test-sync-forged");
    let inst = s.inst;
    s.bed.add_attacker();
    let peer = socket_in(&s.bed.ns("cli"), peer_addr());
    let stranger = socket_in(
        &s.bed.ns("atk"),
        format!("{}:{PORT}", bed::ATTACKER).parse().unwrap(),
    );
    let rejected = |why: &str| peers(inst)["peers"][0]["rejected"][why].as_u64().unwrap();

    let (table, _, hash) = whereis(inst, "sync-forged-1");
    let other = if table == Some(backend(0)) {
        backend(1)
    } else {
        backend(0)
    };
    let unchanged = || whereis(inst, "sync-forged-1") == (table, "table".into(), hash);
    let moved = [entry(hash, other)];

    // A wrong key.
    for d in sender(peer_addr(), OTHER_KEY).entries(Kind::Entries, &moved, now_ms()) {
        peer.send_to(&d, daemon_addr()).unwrap();
    }
    assert!(until(Duration::from_secs(3), || rejected("auth") >= 1));
    // The right key, signed as another balancer (its sender id).
    let elsewhere: SocketAddr = format!("10.9.9.9:{PORT}").parse().unwrap();
    for d in sender(elsewhere, KEY).entries(Kind::Entries, &moved, now_ms()) {
        peer.send_to(&d, daemon_addr()).unwrap();
    }
    assert!(until(Duration::from_secs(3), || rejected("sender") >= 1));
    // The right datagram from an address that is not a peer.
    for d in sender(peer_addr(), KEY).entries(Kind::Entries, &moved, now_ms()) {
        stranger.send_to(&d, daemon_addr()).unwrap();
    }
    assert!(until(Duration::from_secs(3), || peers(inst)["totals"]
        ["not_a_peer"]
        .as_u64()
        .unwrap()
        >= 1));
    assert!(
        unchanged(),
        "a refused datagram changed the kernel: {:?}",
        whereis(inst, "sync-forged-1")
    );

    // A replay: a good datagram moves the key; a newer one moves it back;
    // the first sent again is refused and the key stays.
    let mut tx = sender(peer_addr(), KEY);
    let first = tx.entries(Kind::Entries, &moved, now_ms()).remove(0);
    peer.send_to(&first, daemon_addr()).unwrap();
    assert!(until(Duration::from_secs(3), || whereis(
        inst,
        "sync-forged-1"
    )
    .0 == Some(other)));
    std::thread::sleep(Duration::from_millis(20));
    let back = [entry(hash, table.unwrap())];
    for d in tx.entries(Kind::Entries, &back, now_ms()) {
        peer.send_to(&d, daemon_addr()).unwrap();
    }
    assert!(until(Duration::from_secs(3), || whereis(
        inst,
        "sync-forged-1"
    )
    .0 == table));
    peer.send_to(&first, daemon_addr()).unwrap();
    assert!(until(Duration::from_secs(3), || rejected("replay") >= 1));
    assert_eq!(
        whereis(inst, "sync-forged-1").0,
        table,
        "a replay moved the key"
    );

    // A flood of forgeries: over the peer's datagram rate, refused before any
    // HMAC; the daemon keeps answering, and takes a good datagram afterwards.
    let forged = sender(peer_addr(), OTHER_KEY)
        .entries(Kind::Entries, &moved, now_ms())
        .remove(0);
    let refused = || {
        let r = &peers(inst)["peers"][0]["rejected"];
        r["auth"].as_u64().unwrap() + r["datagram_rate"].as_u64().unwrap()
    };
    let applied = || peers(inst)["totals"]["applied"].as_u64().unwrap();
    let (refused_before, applied_before) = (refused(), applied());
    let lost_before = bed::udp_counter(&s.bed.ns("lb"), "RcvbufErrors");
    let started = Instant::now();
    // In bursts, so that the daemon reads most of them rather than its
    // socket's buffer dropping them.
    for _ in 0..40 {
        for _ in 0..500 {
            let _ = peer.send_to(&forged, daemon_addr());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let reached = refused() - refused_before;
    let lost = bed::udp_counter(&s.bed.ns("lb"), "RcvbufErrors") - lost_before;
    println!("20,000 forged datagrams in {took:?}: {reached} reached the daemon and were refused, {lost} dropped by its socket's buffer");
    assert_eq!(applied(), applied_before, "a forged datagram was applied");
    // The bucket holds 2,000 and refills 2,000 a second: a flood that got
    // through the socket beyond that must have met it.
    let allowed = 2_000 + 2_000 * (took.as_millis() as u64 + 500) / 1000;
    if reached > allowed {
        assert!(rejected("datagram_rate") >= 1, "{}", peers(inst));
    }
    assert_eq!(
        whereis(inst, "sync-forged-1").0,
        table,
        "the flood moved the key"
    );
    std::thread::sleep(Duration::from_millis(1100));
    let (_, _, late_hash) = whereis(inst, "sync-forged-2");
    let late_table = whereis(inst, "sync-forged-2").0;
    let late_other = if late_table == Some(backend(0)) {
        backend(1)
    } else {
        backend(0)
    };
    for d in tx.entries(Kind::Entries, &[entry(late_hash, late_other)], now_ms()) {
        peer.send_to(&d, daemon_addr()).unwrap();
    }
    assert!(
        until(Duration::from_secs(3), || whereis(inst, "sync-forged-2").0
            == Some(late_other)),
        "a good datagram after the flood was not taken: {}",
        peers(inst)
    );
    println!("{}", cli_ok(inst, &["peers"]));
}
