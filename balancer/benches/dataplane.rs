//! In-kernel cost per packet (BPF_PROG_TEST_RUN, one run per frame) of the
//! balancer program for realistic SIP messages, next to the trivial rewrite
//! baseline (`xdp_trivial`) measured in the same run. Run by `cargo xtask
//! bench`, which puts this section (BENCH_DATAPLANE) into bench/RESULTS.md and
//! the ratios (BENCH_FIGURES) into its goals summary. BENCH_TESTRUN_RUNS sets
//! the runs per message (default 20000), BENCH_ROTATION the Call-IDs of the
//! rotation rows (default 100000). A benchmark: it measures, it does not judge.

#[path = "common/host.rs"]
mod host;

use std::net::IpAddr;
use std::time::Duration;

use balancer::{
    kernel::{Dataplane, PROGRAM, TRIVIAL},
    model::{BackendConfig, Mode},
};
use balancer_test_support::{figures, netns::*, packet::*, sip::*, xdp::*};
use host::{moved, show, thousands};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Median (and 10th/90th percentile) in-kernel time of one run of each program
/// on a fresh frame: `frame(i, buf)` puts run `i`'s frame into `buf`. Every
/// run starts from the frame's original bytes: a repeated run (`repeat > 1`,
/// or live-frames mode, whose page pool recycles pages) would feed the already
/// rewritten frame back in, and the balancer would then measure its
/// pass-through path instead of a dispatch. Returns the balancer's last verdict.
fn ns_per_packet(
    dp: &mut Dataplane,
    runs: usize,
    mut frame: impl FnMut(usize, &mut Vec<u8>),
    ingress: u32,
) -> ([Stats; 2], u32) {
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    let mut samples = [Vec::with_capacity(runs), Vec::with_capacity(runs)];
    let mut verdict = 0;
    // The two programs alternate run by run, so both see the same machine.
    for i in 0..runs {
        frame(i, &mut buf);
        for (p, prog) in [PROGRAM, TRIVIAL].into_iter().enumerate() {
            let r = run_xdp(dp, prog, &buf, ingress, &mut out);
            if p == 0 {
                verdict = r.return_value;
            }
            samples[p].push(duration_ns(r.duration));
        }
    }
    let stats = samples.map(|mut v| {
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((runs - 1) as f64 * p) as usize];
        Stats {
            median: q(0.5),
            p10: q(0.1),
            p90: q(0.9),
        }
    });
    (stats, verdict)
}

/// What `[sync]` costs per new dialog: in the kernel, an INVITE that starts a
/// dialog (a Call-ID of its own each run) with the service's sync flag off
/// and on, in alternating blocks (the flag adds the entry's queueing in the
/// `AFFINITY_EVENTS` ring buffer); in user space, per entry, what the
/// sending daemon does (encode and sign, 27 entries a datagram) and what each
/// receiving one does (verify and decode, then one map update by syscall).
fn sync_cost(dp: &mut Dataplane, cli: u32, runs: usize, figs: &mut Vec<(String, f64)>) -> String {
    use aya::maps::{HashMap, MapData, RingBuf};
    use balancer::model::{sync::KeyText, SyncConfig};
    use balancer::sync::{peer::unix_ms, Entry, Key, Kind, Map, Peers, Sender};
    use balancer_common::maps::{Affinity, AffinityKey, Endpoint, Service, SERVICE_SYNC};
    use std::time::{Instant, SystemTime};

    let set_sync = |dp: &mut Dataplane, on: bool| {
        let mut services: HashMap<MapData, Endpoint, Service> =
            program_map(dp, "SERVICES").try_into().unwrap();
        let key = Endpoint::from(host::VIP.parse::<std::net::SocketAddr>().unwrap());
        let mut s = services.get(&key, 0).unwrap();
        s.flags = if on {
            s.flags | SERVICE_SYNC
        } else {
            s.flags & !SERVICE_SYNC
        };
        services.insert(key, s, 0).unwrap();
    };
    let mut ring: RingBuf<MapData> = program_map(dp, "AFFINITY_EVENTS").try_into().unwrap();
    let block = runs.clamp(1, 5_000);
    let mut medians: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut queued = 0usize;
    let mut serial = 0usize;
    for round in 0..6 {
        let on = round % 2 == 1;
        set_sync(dp, on);
        let before = dp.stats().unwrap();
        let ([ours, _], _) = ns_per_packet(
            dp,
            block,
            |_, buf| {
                serial += 1;
                *buf = Frame::udp(
                    ip("10.0.1.2"),
                    5060,
                    ip("10.0.0.10"),
                    5060,
                    &invite_early(&format!("{serial:014}@sync.example"), 900),
                )
                .build();
            },
            cli,
        );
        let counted = moved(dp, &before);
        eprintln!(
            "new dialogs, sync {}: counters {}",
            if on { "on" } else { "off" },
            show(&counted)
        );
        let new = counted
            .iter()
            .find(|(n, _)| *n == "affinity_new")
            .map_or(0, |m| m.1);
        assert_eq!(new as usize, block, "every run starts a dialog");
        while ring.next().is_some() {
            queued += 1;
        }
        medians[on as usize].push(ours.median);
    }
    set_sync(dp, false);
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, on) = (med(&mut medians[0]), med(&mut medians[1]));

    // User space, per entry.
    let key_text = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let config = |listen: &str, peer: &str| SyncConfig {
        listen: listen.parse().unwrap(),
        peers: vec![peer.parse().unwrap()],
        key: Some(KeyText(key_text.into())),
        key_file: None,
        limits: Default::default(),
    };
    let (a, b) = (
        config("10.0.9.1:5099", "10.0.9.2:5099"),
        config("10.0.9.2:5099", "10.0.9.1:5099"),
    );
    let key = Key::parse(key_text).unwrap();
    let mut tx = Sender::new(&a, key.clone(), unix_ms(SystemTime::now()));
    let mut rx = Peers::new(&b, key, Instant::now());
    let entries: Vec<Entry> = (0..27u32)
        .map(|i| Entry {
            map: Map::Client,
            vip: host::VIP.parse().unwrap(),
            hash: i.wrapping_mul(0x9e37_79b9),
            backend: "10.0.2.11:5060".parse().unwrap(),
            age_ms: 0,
        })
        .collect();
    const DATAGRAMS: usize = 2_000;
    let t = Instant::now();
    let made: Vec<Vec<u8>> = (0..DATAGRAMS)
        .map(|_| {
            tx.entries(Kind::Entries, &entries, unix_ms(SystemTime::now()))
                .remove(0)
        })
        .collect();
    let send_ns = t.elapsed().as_nanos() as f64 / (DATAGRAMS * entries.len()) as f64;
    let from = a.listen;
    let t = Instant::now();
    for d in &made {
        // The buckets are per second: the bench's burst is far above them.
        let _ = rx.receive(from, d, Instant::now(), unix_ms(SystemTime::now()));
    }
    let check_ns = t.elapsed().as_nanos() as f64 / (DATAGRAMS * entries.len()) as f64;
    let mut affinity: HashMap<MapData, AffinityKey, Affinity> =
        program_map(dp, "AFFINITY").try_into().unwrap();
    const PUTS: u32 = 20_000;
    let t = Instant::now();
    for i in 0..PUTS {
        let k = AffinityKey {
            service: 0,
            hash: i ^ 0x5a5a_0000,
        };
        let _ = affinity.get(&k, 0);
        affinity
            .insert(
                k,
                Affinity {
                    slot: 0,
                    _pad: 0,
                    seen: 1,
                },
                0,
            )
            .unwrap();
    }
    let put_ns = t.elapsed().as_nanos() as f64 / PUTS as f64;
    figs.push(("dataplane.sync_kernel_ns".into(), on - off));
    figs.push(("dataplane.sync_sender_ns".into(), send_ns));
    figs.push(("dataplane.sync_receiver_ns".into(), check_ns + put_ns));
    format!(
        "\n### What affinity sync costs per new dialog\n\n\
In the kernel: an INVITE that starts a dialog (a Call-ID of its own each run; {block} runs a block, six blocks alternating the service's sync flag off and on; median of the blocks' medians). \
With the flag the program also queues the new entry in the `AFFINITY_EVENTS` ring buffer ({queued} entries queued). In user space, per entry: the sender's encoding and HMAC (27 entries a datagram), \
a receiver's checks (bucket, HMAC, layout, replay window) and its map update (a lookup and an update by syscall, as the daemon does).\n\n\
| | ns per new dialog |\n|---|---:|\n\
| kernel, sync off | {off:.0} |\n| kernel, sync on | {on:.0} |\n| kernel, added by sync | {:.0} |\n\
| sending daemon, per entry (encode, sign) | {send_ns:.0} |\n| each receiving daemon, per entry (checks) | {check_ns:.0} |\n| each receiving daemon, per entry (map update) | {put_ns:.0} |\n",
        on - off
    )
}

/// How long a backend change takes to reach packets: `Dataplane::sync` from the
/// start to the flip of the service entry (Maglev build, table copy, flip), and in
/// total with the RCU grace period that follows. Alternates adding and removing a
/// fourth backend on the 65537-entry table.
fn change_latency(dp: &mut Dataplane) -> String {
    const CHANGES: usize = 41;
    let three = dp.config().clone();
    let mut four = three.clone();
    four.services[0]
        .backends
        .push(BackendConfig::new("10.0.2.14:5060".parse().unwrap()));
    let (mut to_kernel, mut total) = (Vec::new(), Vec::new());
    for i in 0..CHANGES {
        let r = dp.sync(if i % 2 == 0 { &four } else { &three }).unwrap();
        assert_eq!(r.tables, 1);
        to_kernel.push(r.to_kernel.as_secs_f64() * 1e3);
        total.push(r.total.as_secs_f64() * 1e3);
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() / 10], v[v.len() * 9 / 10])
    };
    let (k, k10, k90) = med(to_kernel);
    let (t, t10, t90) = med(total);
    format!(
        "\nA backend change (add or remove one of four, 65537-entry table), {CHANGES} changes: \
in the kernel after {k:.2} ms median ({k10:.2}-{k90:.2}), done including the RCU grace period \
after {t:.2} ms ({t10:.2}-{t90:.2}).\n"
    )
}

struct Stats {
    median: f64,
    p10: f64,
    p90: f64,
}

fn duration_ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// One row of the table: a message, its frames, where they come in, and the
/// name of its ratio among the figures.
struct Case {
    name: String,
    /// Run `i`'s frame.
    frame: Box<dyn Fn(usize) -> Vec<u8>>,
    ingress: u32,
    runs: usize,
    /// Runs of the balancer alone before the timed ones, one per frame: every
    /// Call-ID of a rotation gets its affinity entry first.
    warm: usize,
    figure: &'static str,
}

fn main() {
    require_root();
    host::pin_to_last_cpu();
    let (_ns, mut dp, cli, bk) = host::host("bench", Mode::Dnat);
    let runs = env_or("BENCH_TESTRUN_RUNS", 20_000);
    let rotation = env_or("BENCH_ROTATION", 100_000);

    let early = invite_early("a84b4c76e66710@pc33.atlanta.com", 900);
    let late = invite("Call-ID: far-away-call-id@example.com", 1400);
    let options = |call_id: &str| {
        format!("OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bKhjhs8ass877\r\nMax-Forwards: 70\r\nTo: <sip:bob@example.com>\r\nFrom: Alice <sip:alice@example.com>;tag=1928301774\r\nCall-ID: {call_id}\r\nCSeq: 63104 OPTIONS\r\nContact: <sip:alice@10.0.1.2>\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n").into_bytes()
    };
    let bye = b"BYE sip:alice@10.0.1.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bKnashds7\r\nMax-Forwards: 70\r\nFrom: Bob <sip:bob@example.com>;tag=a6c85cf\r\nTo: Alice <sip:alice@example.com>;tag=1928301774\r\nCall-ID: a84b4c76e66710\r\nCSeq: 231 BYE\r\nContent-Length: 0\r\n\r\n".to_vec();
    let ok = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bKnashds7;received=10.0.1.2\r\nFrom: Bob <sip:bob@example.com>;tag=a6c85cf\r\nTo: Alice <sip:alice@example.com>;tag=1928301774\r\nCall-ID: a84b4c76e66710\r\nCSeq: 231 BYE\r\nContent-Length: 0\r\n\r\n".to_vec();

    fn to_vip(p: &[u8]) -> Vec<u8> {
        Frame::udp(ip("10.0.1.2"), 5060, ip("10.0.0.10"), 5060, p).build()
    }
    let same = |f: Vec<u8>| -> Box<dyn Fn(usize) -> Vec<u8>> { Box::new(move |_| f.clone()) };
    let single = |name: String, f: Vec<u8>, ingress: u32, figure: &'static str| Case {
        name,
        frame: same(f),
        ingress,
        runs,
        warm: 0,
        figure,
    };
    // The rotations' Call-IDs have the length of the single frames' ones, so
    // the frames have the same size; every frame is built afresh (checksums
    // included, though the program does not check them).
    let options_len = options("a84b4c76e66710").len();
    let cases = [
        single(
            format!("INVITE {} B, Call-ID second header", early.len()),
            to_vip(&early),
            cli,
            "invite",
        ),
        single(
            format!("INVITE {} B, Call-ID last header", late.len()),
            to_vip(&late),
            cli,
            "invite_late",
        ),
        single(
            format!("OPTIONS {options_len} B"),
            to_vip(&options("a84b4c76e66710")),
            cli,
            "options",
        ),
        single(format!("BYE {} B", bye.len()), to_vip(&bye), cli, "bye"),
        single(
            "CRLF keepalive".into(),
            to_vip(b"\r\n\r\n"),
            cli,
            "keepalive",
        ),
        single(
            format!("200 OK {} B from a backend (reverse NAT)", ok.len()),
            Frame::udp(ip("10.0.2.12"), 5060, ip("10.0.1.2"), 5060, &ok).build(),
            bk,
            "reply",
        ),
        Case {
            name: format!(
                "INVITE {} B, {} Call-IDs in rotation",
                early.len(),
                thousands(rotation as u64)
            ),
            frame: Box::new(|i| to_vip(&invite_early(&format!("{i:014}@pc33.atlanta.com"), 900))),
            ingress: cli,
            runs: rotation,
            warm: rotation,
            figure: "invite_rotation",
        },
        Case {
            name: format!(
                "OPTIONS {options_len} B, {} Call-IDs in rotation",
                thousands(rotation as u64)
            ),
            frame: Box::new(move |i| to_vip(&options(&format!("{i:014}")))),
            ingress: cli,
            runs: rotation,
            // No dialog to create: nothing to warm.
            warm: 0,
            figure: "options_rotation",
        },
    ];

    let mut table = String::new();
    let mut figs = Vec::new();
    table.push_str("| message | balancer ns/pkt (p10-p90) | trivial ns/pkt (p10-p90) | ratio of medians | verdict |\n|---|---:|---:|---:|---|\n");
    // BENCH_ONLY=TEXT: only the messages whose name holds TEXT (for profiling one).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for c in cases.iter().filter(|c| c.name.contains(&only)) {
        let mut out = Vec::new();
        if c.warm > 0 {
            let before = dp.stats().unwrap();
            for i in 0..c.warm {
                run_xdp(&mut dp, PROGRAM, &(c.frame)(i), c.ingress, &mut out);
            }
            eprintln!(
                "{} (warm-up): counters {}",
                c.name,
                show(&moved(&dp, &before))
            );
        }
        let before = dp.stats().unwrap();
        let ([ours, base], v) =
            ns_per_packet(&mut dp, c.runs, |i, buf| *buf = (c.frame)(i), c.ingress);
        eprintln!("{}: counters {}", c.name, show(&moved(&dp, &before)));
        let verdict = match v {
            3 => "TX",
            4 => "REDIRECT",
            2 => "PASS",
            _ => "other",
        };
        table.push_str(&format!(
            "| {} | {:.0} ({:.0}-{:.0}) | {:.0} ({:.0}-{:.0}) | {:.2}x | {verdict} |\n",
            c.name,
            ours.median,
            ours.p10,
            ours.p90,
            base.median,
            base.p10,
            base.p90,
            ours.median / base.median
        ));
        figs.push((format!("dataplane.{}", c.figure), ours.median / base.median));
    }
    let verified = |dp: &mut Dataplane, p: &str| {
        dp.program(p)
            .unwrap()
            .info()
            .ok()
            .and_then(|i| i.verified_instruction_count())
            .unwrap_or(0)
    };
    table.push_str(&format!(
        "\nInstructions the verifier processed: balancer {}, trivial {} (limit 1,000,000).\n",
        verified(&mut dp, PROGRAM),
        verified(&mut dp, TRIVIAL)
    ));
    // Before the change latency's rebuilds, which write the service's
    // default limits over the bench's.
    table.push_str(&sync_cost(&mut dp, cli, runs, &mut figs));
    table.push_str(&change_latency(&mut dp));
    let report = format!(
        "## In-kernel cost per packet\n\nIn-kernel time of one program run, as BPF_PROG_TEST_RUN reports it, {runs} runs per message and program, each on a fresh copy of the frame, the two programs alternating run by run (median, 10th-90th percentile), \
same run, same frames. `trivial` is `xdp_trivial`: parse, rewrite destination address and port with checksum updates, \
set fixed MACs, redirect through the devmap to the backend-side interface: the least a DNAT balancer does. `balancer` also finds the service, scans the packet in place \
for the Call-ID, hashes it, looks up Maglev, finds the next hop (FIB, through a one-second cache), counts, and redirects through a devmap; \
and every protection check is in place and paid for, none refusing: the reverse-path table holds the backends, the VIP and the host's addresses, \
the block list three prefixes (none near the client), the per-source limits are on (far above the bench's rate). \
The OPTIONS and the BYE carry a Call-ID that is in no dialog: both affinity maps are looked up and missed. The bench pins itself to the last CPU.\n\n\
The single-message rows run one frame again and again: one Call-ID, its map entries hot in the CPU caches. The rotation rows run {rot} frames, \
each with a Call-ID of its own (as long as the single rows' ones: same sizes), once per program, in turn. Before the timed runs \
the balancer ran once on every INVITE of the rotation, so {rot} dialogs are live: each has its entry in the affinity map (an LRU hash map, dialog affinity on) and the timed \
runs find it (affinity hits); the OPTIONS create none and miss both maps. Between two uses of an entry the program ran on all the other frames, \
so the entries, their hash buckets and the Maglev table's slots are mostly out of the CPU caches, as with that many dialogs in real traffic; \
the trivial program touches no such state.\n\n{table}",
        rot = thousands(rotation as u64),
    );
    figs.push(("dataplane.rotation".into(), rotation as f64));
    figures::write(&figs);
    println!("{report}");
    if let Ok(path) = std::env::var("BENCH_DATAPLANE") {
        std::fs::write(&path, &report).unwrap();
        eprintln!("wrote {path}");
    }
}
