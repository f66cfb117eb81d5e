//! The data plane's protection, datagram by datagram through BPF_PROG_TEST_RUN
//! (the real program, the real verifier): strict reverse path, block list,
//! allow-list, per-source limits on datagrams and on new dialogs, the size
//! limit, IPv6 zero checksums, and which datagrams may create dialog state.
//! Each case sets the maps up itself, sends frames as received on a given
//! interface, and checks verdicts, the counters that moved, and map contents.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use aya::maps::{lpm_trie::Key, Array, HashMap as BpfHashMap, LpmTrie, MapData};
use balancer::kernel::{Dataplane, PROGRAM};
use balancer::model::{Mode, ServiceConfig};
use balancer_common::{
    hash::hash_bytes,
    hints,
    maps::{
        Affinity, AffinityKey, AllowCidr, Block, Cidr, Endpoint, Guard, Service, SourceAddr,
        AF_INET, AF_INET6, ALLOW_PREFIX_BITS, CIDR_FAMILY_BITS, SERVICE_AFFINITY,
        SERVICE_ALLOW_LIST,
    },
};
use balancer_test_support::{
    netns::{fixture_net, require_root, Netns},
    packet::Frame,
    xdp::{pin_to_current_cpu, program_map, run_xdp},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const VIP: &str = "10.0.0.10:5060";
const VIP6: &str = "[fd00::10]:5060";
const BACKENDS: [&str; 3] = ["10.0.2.11:5060", "10.0.2.12:5060", "10.0.2.13:5060"];
const BACKENDS6: [&str; 2] = ["[fd00:2::11]:5060", "[fd00:2::12]:5060"];
const CLIENT: &str = "10.0.1.2";

struct Bed {
    dp: Dataplane,
    cli: u32,
    bk: u32,
    _ns: Netns,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The fixture host with a DNAT service on each family, affinity on, no
/// limits; `affinity_entries` sizes the affinity map.
fn bed(affinity_entries: u32) -> Bed {
    require_root();
    let (ns, cli, bk) = fixture_net("pr");
    let mut dp = Dataplane::open_with(None, affinity_entries).expect("loading the data plane");
    for (vip, backends) in [(VIP, &BACKENDS[..]), (VIP6, &BACKENDS6[..])] {
        let s = ServiceConfig {
            mode: Mode::Dnat,
            ..ServiceConfig::with_backends(
                addr(vip),
                backends.iter().map(|b| b.parse().unwrap()).collect(),
            )
        };
        dp.install_service(s).unwrap();
    }
    dp.add_tx_port(cli).unwrap();
    dp.add_tx_port(bk).unwrap();
    pin_to_current_cpu();
    let mut b = Bed {
        dp,
        cli,
        bk,
        _ns: ns,
    };
    for vip in [VIP, VIP6] {
        b.service(vip, |s| {
            s.flags |= SERVICE_AFFINITY;
            s.interval = 0;
            s.dialog_interval = 0;
            s.block_s = 0;
            s.max_size = 0;
        });
    }
    b
}

impl Bed {
    /// Rewrites the SERVICES entry of the service at `vip`.
    fn service(&mut self, vip: &str, f: impl FnOnce(&mut Service)) -> Service {
        let mut m: BpfHashMap<MapData, Endpoint, Service> =
            program_map(&mut self.dp, "SERVICES").try_into().unwrap();
        let key = Endpoint::from(addr(vip));
        let mut s = m.get(&key, 0).expect("service installed");
        f(&mut s);
        m.insert(key, s, 0).unwrap();
        s
    }

    fn guard(&mut self, a: &str, ifindex: u32) {
        let mut m: BpfHashMap<MapData, SourceAddr, Guard> =
            program_map(&mut self.dp, "GUARD").try_into().unwrap();
        let (addr, family) = key_addr(ip(a));
        m.insert(SourceAddr { addr, family }, Guard { ifindex }, 0)
            .unwrap();
        self.hint(hints::GUARD_HINTS, hints::guard_bit(&addr));
    }

    /// Sets a bit of `HINTS` (user space sets them with the entries).
    fn hint(&mut self, base: u32, bit: u32) {
        let mut m: Array<MapData, u64> = program_map(&mut self.dp, "HINTS").try_into().unwrap();
        let idx = base + bit / 64;
        let w = m.get(&idx, 0).unwrap();
        m.set(idx, w | 1 << (bit % 64), 0).unwrap();
    }

    fn block(&mut self, cidr: &str, until: u64) {
        let mut m: LpmTrie<MapData, Cidr, Block> =
            program_map(&mut self.dp, "BLOCKED").try_into().unwrap();
        let (a, bits) = cidr.split_once('/').unwrap();
        let (addr, family) = key_addr(ip(a));
        let key = Key::new(
            CIDR_FAMILY_BITS + bits.parse::<u32>().unwrap(),
            Cidr { family, addr },
        );
        m.insert(&key, Block { until }, 0).unwrap();
        let (first, n) = hints::block_bits(&addr, bits.parse().unwrap());
        for bit in first..first + n {
            self.hint(hints::BLOCK_HINTS, bit);
        }
    }

    fn allow(&mut self, vip: &str, cidr: &str) {
        let id = self.service(vip, |s| s.flags |= SERVICE_ALLOW_LIST).id;
        let mut m: LpmTrie<MapData, AllowCidr, u32> =
            program_map(&mut self.dp, "ALLOWED").try_into().unwrap();
        let (a, bits) = cidr.split_once('/').unwrap();
        let (addr, family) = key_addr(ip(a));
        let key = Key::new(
            ALLOW_PREFIX_BITS + bits.parse::<u32>().unwrap(),
            AllowCidr {
                service: id,
                family,
                addr,
            },
        );
        m.insert(&key, 1, 0).unwrap();
    }

    fn counters(&self) -> BTreeMap<&'static str, u64> {
        self.dp.stats().unwrap().into_iter().collect()
    }

    /// Runs `frame` as received on `ingress`: the verdict and the counters
    /// that moved (name -> by how much).
    fn send(&mut self, frame: &Frame, ingress: u32) -> (u32, BTreeMap<&'static str, u64>) {
        let before = self.counters();
        let mut out = Vec::new();
        let r = run_xdp(&mut self.dp, PROGRAM, &frame.build(), ingress, &mut out);
        let moved = self
            .counters()
            .into_iter()
            .filter_map(|(k, v)| {
                let d = v - before.get(k).copied().unwrap_or(0);
                (d > 0).then_some((k, d))
            })
            .collect();
        (r.return_value, moved)
    }

    /// Sends and checks the verdict and that `reason` moved (by one).
    fn expect(&mut self, frame: &Frame, ingress: u32, verdict: u32, reason: &str, what: &str) {
        let (v, moved) = self.send(frame, ingress);
        assert_eq!(v, verdict, "{what}: verdict (counters moved: {moved:?})");
        assert_eq!(
            moved.get(reason),
            Some(&1),
            "{what}: counter {reason} (moved: {moved:?})"
        );
    }

    fn affinity(&mut self, map: &str) -> Vec<(AffinityKey, Affinity)> {
        let m: BpfHashMap<MapData, AffinityKey, Affinity> =
            program_map(&mut self.dp, map).try_into().unwrap();
        m.iter().map(|r| r.unwrap()).collect()
    }
}

fn key_addr(a: IpAddr) -> ([u8; 16], u32) {
    let mut addr = [0u8; 16];
    match a {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            (addr, AF_INET as u32)
        }
        IpAddr::V6(v6) => (v6.octets(), AF_INET6 as u32),
    }
}

fn request(method: &str, call_id: &str) -> Vec<u8> {
    format!(
        "{method} sip:bob@example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bK-{call_id}\r\n\
         Call-ID: {call_id}\r\n\
         From: <sip:alice@example.com>;tag=1\r\n\
         To: <sip:bob@example.com>\r\n\
         CSeq: 1 {method}\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn to_vip(src: &str, payload: &[u8]) -> Frame {
    let v = addr(VIP);
    Frame::udp(ip(src), 5060, v.ip(), v.port(), payload)
}

/// A backend's message to the client (reverse NAT).
fn from_backend(backend: &str, payload: &[u8]) -> Frame {
    let b = addr(backend);
    Frame::udp(b.ip(), b.port(), ip(CLIENT), 5060, payload)
}

#[test]
fn the_reverse_path_decides_where_known_sources_may_come_from() {
    let mut b = bed(1024);
    let (cli, bk) = (b.cli, b.bk);
    b.guard("10.0.2.11", bk);
    b.guard("10.0.0.10", 0);
    b.guard("10.0.1.1", 0);
    let invite = request("INVITE", "spoof-1");
    // Toll fraud: a backend's address on the client side.
    b.expect(
        &to_vip("10.0.2.11", &invite),
        cli,
        XDP_DROP,
        "spoofed",
        "INVITE from a backend's address on the client side",
    );
    // The VIP and this host's addresses never come from outside.
    for src in ["10.0.0.10", "10.0.1.1"] {
        b.expect(
            &to_vip(src, &invite),
            cli,
            XDP_DROP,
            "spoofed",
            &format!("INVITE from {src}"),
        );
        b.expect(
            &to_vip(src, &invite),
            bk,
            XDP_DROP,
            "spoofed",
            &format!("INVITE from {src} on the backend side"),
        );
    }
    // The backend itself, on its own side, may call the VIP.
    let (v, moved) = b.send(&to_vip("10.0.2.11", &invite), bk);
    assert_eq!(v, XDP_TX, "a backend's own INVITE to the VIP: {moved:?}");
    // Reflection: a "backend reply" to the client arriving on the client side
    // is neither reverse-NATed nor learned.
    let ringing = from_backend(
        "10.0.2.11:5060",
        b"INVITE sip:alice@10.0.1.2 SIP/2.0\r\nCall-ID: hijack-1\r\nCSeq: 1 INVITE\r\n\r\n",
    );
    b.expect(
        &ringing,
        cli,
        XDP_DROP,
        "spoofed",
        "backend request from the client side",
    );
    assert!(
        b.affinity("LEARNED").is_empty(),
        "a spoofed backend request taught a dialog"
    );
    // The same from the backend's side is reverse-NATed and learned.
    let (v, moved) = b.send(&ringing, bk);
    assert_eq!(v, XDP_REDIRECT, "the backend's real request: {moved:?}");
    assert_eq!(moved.get("reverse_nat"), Some(&1), "{moved:?}");
    assert_eq!(moved.get("affinity_learned"), Some(&1), "{moved:?}");
    // Unknown sources are not the check's business.
    let (v, moved) = b.send(&to_vip("198.51.100.7", &invite), bk);
    assert_eq!(v, XDP_TX, "an unknown source: {moved:?}");
    assert!(!moved.contains_key("spoofed"), "{moved:?}");
}

#[test]
fn block_list_and_allow_list() {
    let mut b = bed(1024);
    let cli = b.cli;
    let opts = request("OPTIONS", "policy-1");
    b.block("10.0.1.0/24", 0);
    b.expect(
        &to_vip(CLIENT, &opts),
        cli,
        XDP_DROP,
        "blocked",
        "blocked /24",
    );
    let (v, _) = b.send(&to_vip("10.0.9.9", &opts), cli);
    assert_eq!(v, XDP_REDIRECT, "outside the blocked prefix");
    // An entry whose time is up no longer blocks (the monotonic clock is far
    // past 1 s on any running host).
    b.block("10.0.1.0/24", 1_000_000_000);
    let (v, moved) = b.send(&to_vip(CLIENT, &opts), cli);
    assert_eq!(v, XDP_REDIRECT, "expired block: {moved:?}");
    // The longest prefix decides: a live /32 inside the expired /24.
    b.block("10.0.1.2/32", 0);
    b.expect(
        &to_vip(CLIENT, &opts),
        cli,
        XDP_DROP,
        "blocked",
        "blocked /32",
    );
    // IPv6 by prefix.
    let v6 = addr(VIP6);
    b.block("fd00:1::/64", 0);
    let f = Frame::udp(ip("fd00:1::2"), 5060, v6.ip(), v6.port(), &opts);
    b.expect(&f, cli, XDP_DROP, "blocked", "blocked IPv6 /64");

    // The allow-list: only the listed prefix, per service.
    b.allow(VIP, "10.0.7.0/24");
    b.expect(
        &to_vip("10.0.9.9", &opts),
        cli,
        XDP_DROP,
        "not_allowed",
        "outside the allow-list",
    );
    let (v, moved) = b.send(&to_vip("10.0.7.1", &opts), cli);
    assert_eq!(v, XDP_REDIRECT, "inside the allow-list: {moved:?}");
    // The block list wins over the allow-list.
    b.block("10.0.7.1/32", 0);
    b.expect(
        &to_vip("10.0.7.1", &opts),
        cli,
        XDP_DROP,
        "blocked",
        "blocked inside the allow-list",
    );
}

#[test]
fn per_source_datagram_limit_and_automatic_block() {
    let mut b = bed(1024);
    let cli = b.cli;
    b.service(VIP, |s| {
        s.interval = 1_000_000_000;
        s.burst = 5;
    });
    let opts = request("OPTIONS", "rate-1");
    for i in 0..5 {
        let (v, moved) = b.send(&to_vip(CLIENT, &opts), cli);
        assert_eq!(v, XDP_REDIRECT, "datagram {i} within the burst: {moved:?}");
    }
    b.expect(
        &to_vip(CLIENT, &opts),
        cli,
        XDP_DROP,
        "rate_limited",
        "over the burst",
    );
    // Another source has a bucket of its own; so has another service.
    let (v, _) = b.send(&to_vip("10.0.1.3", &opts), cli);
    assert_eq!(v, XDP_REDIRECT, "another source");

    // With a block time, going over blocks the source.
    b.service(VIP, |s| s.block_s = 60);
    let (v, moved) = b.send(&to_vip(CLIENT, &opts), cli);
    assert_eq!(v, XDP_DROP);
    assert_eq!(moved.get("auto_blocked"), Some(&1), "{moved:?}");
    assert_eq!(moved.get("rate_limited"), Some(&1), "{moved:?}");
    b.expect(
        &to_vip(CLIENT, &opts),
        cli,
        XDP_DROP,
        "blocked",
        "while blocked",
    );
}

#[test]
fn only_dialog_starts_create_state_and_they_are_limited_per_source() {
    let mut b = bed(1024);
    let cli = b.cli;
    b.service(VIP, |s| {
        s.dialog_interval = 1_000_000_000;
        s.dialog_burst = 2;
    });
    // Requests that start nothing follow the table and leave no entry.
    for (i, m) in ["OPTIONS", "REGISTER", "BYE", "MESSAGE", "NOTIFY"]
        .iter()
        .enumerate()
    {
        let (v, moved) = b.send(&to_vip(CLIENT, &request(m, &format!("none-{i}"))), cli);
        assert_eq!(v, XDP_REDIRECT, "{m}");
        assert!(!moved.contains_key("affinity_new"), "{m}: {moved:?}");
    }
    let (v, moved) = b.send(&to_vip(CLIENT, b"\r\n\r\n"), cli);
    assert_eq!(v, XDP_REDIRECT, "keepalive");
    assert!(!moved.contains_key("affinity_new"), "keepalive: {moved:?}");
    assert!(b.affinity("AFFINITY").is_empty(), "state without a dialog");

    for (m, id) in [("INVITE", "d-1"), ("SUBSCRIBE", "d-2")] {
        b.expect(
            &to_vip(CLIENT, &request(m, id)),
            cli,
            XDP_REDIRECT,
            "affinity_new",
            m,
        );
    }
    b.expect(
        &to_vip(CLIENT, &request("REFER", "d-3")),
        cli,
        XDP_DROP,
        "dialog_limited",
        "a third new dialog within the second",
    );
    // Dialogs that exist go on, and other sources start theirs.
    b.expect(
        &to_vip(CLIENT, &request("BYE", "d-1")),
        cli,
        XDP_REDIRECT,
        "affinity_hit",
        "the first dialog's BYE",
    );
    b.expect(
        &to_vip("10.0.1.3", &request("INVITE", "d-4")),
        cli,
        XDP_REDIRECT,
        "affinity_new",
        "another source's dialog",
    );
    let keys: Vec<u32> = b.affinity("AFFINITY").iter().map(|(k, _)| k.hash).collect();
    for id in ["d-1", "d-2", "d-4"] {
        assert!(
            keys.contains(&hash_bytes(id.as_bytes())),
            "{id} not in {keys:?}"
        );
    }
    assert!(
        !keys.contains(&hash_bytes(b"d-3")),
        "the refused dialog left state"
    );
}

#[test]
fn learned_dialogs_survive_a_flood_of_new_ones() {
    // An affinity map of 64 entries, flooded with 1,000 new dialogs.
    let mut b = bed(64);
    let (cli, bk) = (b.cli, b.bk);
    // A dialog the table would send elsewhere: only the learned entry keeps it.
    let learned = (0..)
        .map(|i| format!("backend-started-{i}"))
        .find(|c| {
            let (to, _) = b.dp.lookup(addr(VIP), hash_bytes(c.as_bytes())).unwrap();
            to != Some(addr(BACKENDS[1]))
        })
        .unwrap();
    // A backend's pings to its phones (a fresh Call-ID each) teach nothing.
    for i in 0..3 {
        let ping = format!("OPTIONS sip:alice@10.0.1.2 SIP/2.0\r\nCall-ID: ping-{i}\r\n\r\n");
        let (v, moved) = b.send(&from_backend(BACKENDS[1], ping.as_bytes()), bk);
        assert_eq!(v, XDP_REDIRECT, "the backend's OPTIONS: {moved:?}");
        assert!(!moved.contains_key("affinity_learned"), "{moved:?}");
    }
    assert!(b.affinity("LEARNED").is_empty(), "pings were learned");
    let invite = format!(
        "INVITE sip:alice@10.0.1.2 SIP/2.0\r\nCall-ID: {learned}\r\nCSeq: 1 INVITE\r\n\r\n"
    );
    let (v, moved) = b.send(&from_backend(BACKENDS[1], invite.as_bytes()), bk);
    assert_eq!(v, XDP_REDIRECT, "the backend's INVITE: {moved:?}");
    assert_eq!(moved.get("affinity_learned"), Some(&1), "{moved:?}");
    for i in 0..1000 {
        let (v, _) = b.send(
            &to_vip(CLIENT, &request("INVITE", &format!("flood-{i}"))),
            cli,
        );
        assert_eq!(v, XDP_REDIRECT, "flood INVITE {i}");
    }
    assert!(b.affinity("AFFINITY").len() <= 64);
    // A client entry for the same key that no longer holds (its slot is
    // empty) gives way to the learned one.
    let mut m: BpfHashMap<MapData, AffinityKey, Affinity> =
        program_map(&mut b.dp, "AFFINITY").try_into().unwrap();
    let key = AffinityKey {
        service: b.service(VIP, |_| {}).id,
        hash: hash_bytes(learned.as_bytes()),
    };
    let gone = Affinity {
        slot: 4000,
        _pad: 0,
        seen: 0,
    };
    m.insert(key, gone, 0).unwrap();
    // The client's answer still reaches the backend that called it.
    let ok = format!(
        "SIP/2.0 200 OK\r\nCall-ID: {learned}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    let mut out = Vec::new();
    let r = run_xdp(
        &mut b.dp,
        PROGRAM,
        &to_vip(CLIENT, ok.as_bytes()).build(),
        cli,
        &mut out,
    );
    assert_eq!(r.return_value, XDP_REDIRECT);
    let p = balancer_test_support::packet::parse(&out);
    assert_eq!(
        SocketAddr::new(p.dst, p.dport),
        addr(BACKENDS[1]),
        "the answer to a backend's INVITE went elsewhere after the flood"
    );
}

#[test]
fn size_limit_and_ipv6_zero_checksum() {
    let mut b = bed(1024);
    let cli = b.cli;
    b.service(VIP, |s| s.max_size = 300);
    let big = request("INVITE", &"x".repeat(200));
    assert!(big.len() > 300);
    b.expect(
        &to_vip(CLIENT, &big),
        cli,
        XDP_DROP,
        "too_big",
        "over the size limit",
    );
    let small = b"OPTIONS sip:a SIP/2.0\r\nCall-ID: s\r\n\r\n";
    let (v, _) = b.send(&to_vip(CLIENT, small), cli);
    assert_eq!(v, XDP_REDIRECT, "under the size limit");

    let v6 = addr(VIP6);
    let f = Frame::udp(ip("fd00:1::2"), 5060, v6.ip(), v6.port(), small);
    let (v, _) = b.send(&f, cli);
    assert_eq!(v, XDP_REDIRECT, "IPv6 with its checksum");
    // The same with a zero UDP checksum (Ethernet 14 + IPv6 40 + 6).
    let mut bytes = f.build();
    bytes[60..62].copy_from_slice(&[0, 0]);
    let mut out = Vec::new();
    let before = b.counters()["zero_checksum"];
    let r = run_xdp(&mut b.dp, PROGRAM, &bytes, cli, &mut out);
    assert_eq!(r.return_value, XDP_DROP, "IPv6 UDP with a zero checksum");
    assert_eq!(b.counters()["zero_checksum"], before + 1);
    let _ = XDP_PASS;
}
