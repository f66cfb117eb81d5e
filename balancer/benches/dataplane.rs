//! In-kernel cost per packet (BPF_PROG_TEST_RUN, large repeat) of the balancer
//! program for realistic SIP messages, next to the trivial rewrite baseline
//! (`xdp_trivial`) measured in the same run. Run by `cargo xtask bench`, which
//! puts this section (BENCH_DATAPLANE) into bench/RESULTS.md. BENCH_TESTRUN_RUNS
//! sets the runs per message (default 20000). A benchmark: it measures, it does
//! not judge.

use std::net::IpAddr;
use std::time::Duration;

use balancer::{
    kernel::{Dataplane, PROGRAM, TRIVIAL},
    model::{BackendConfig, ServiceConfig},
};
use balancer_common::maps::TrivialTarget;
use balancer_test_support::{netns::*, packet::*, sip::*, xdp::*};

fn runs() -> usize {
    std::env::var("BENCH_TESTRUN_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Median (and 10th/90th percentile) in-kernel time of one run on a fresh copy of
/// `frame`. Every run starts from the original bytes: a repeated run (`repeat > 1`,
/// or live-frames mode, whose page pool recycles pages) would feed the already
/// rewritten frame back in, and the balancer would then measure its pass-through
/// path instead of a dispatch.
fn ns_per_packet(dp: &mut Dataplane, frame: &[u8], ingress: u32) -> ([Stats; 2], u32) {
    let mut out = Vec::new();
    let runs = runs();
    let mut samples = [Vec::with_capacity(runs), Vec::with_capacity(runs)];
    let mut verdict = 0;
    // The two programs alternate run by run, so both see the same machine.
    for _ in 0..runs {
        for (i, prog) in [PROGRAM, TRIVIAL].into_iter().enumerate() {
            let r = run_xdp(dp, prog, frame, ingress, &mut out);
            if i == 0 {
                verdict = r.return_value;
            }
            samples[i].push(duration_ns(r.duration));
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

/// Every check of a datagram's path in place and taking its full cost, none
/// ever refusing what the bench sends: per-source limits far above the bench's
/// rate (buckets looked up and updated), a block list with entries (the trie
/// walked), the reverse-path map holding the backends, the VIP and this
/// host's addresses (the backends' replies found there and checked).
fn protect(dp: &mut Dataplane, bk: u32) {
    use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, MapData};
    use balancer_common::{
        hints,
        limits::{interval, MAX_RATE},
        maps::{Block, Cidr, Endpoint, Guard, Service, SourceAddr, AF_INET, CIDR_FAMILY_BITS},
    };
    let v4 = |a: [u8; 4]| {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&a);
        addr
    };
    let mut services: HashMap<MapData, Endpoint, Service> =
        program_map(dp, "SERVICES").try_into().unwrap();
    let key = Endpoint::from("10.0.0.10:5060".parse::<std::net::SocketAddr>().unwrap());
    let mut s = services.get(&key, 0).unwrap();
    (s.interval, s.burst) = (interval(MAX_RATE), MAX_RATE);
    (s.dialog_interval, s.dialog_burst) = (interval(MAX_RATE), MAX_RATE);
    services.insert(key, s, 0).unwrap();
    let mut guard: HashMap<MapData, SourceAddr, Guard> =
        program_map(dp, "GUARD").try_into().unwrap();
    for (a, ifindex) in [
        ([10, 0, 2, 11], bk),
        ([10, 0, 2, 12], bk),
        ([10, 0, 2, 13], bk),
        ([10, 0, 0, 10], 0),
        ([10, 0, 1, 1], 0),
        ([10, 0, 2, 1], 0),
    ] {
        let k = SourceAddr {
            addr: v4(a),
            family: AF_INET as u32,
        };
        guard.insert(k, Guard { ifindex }, 0).unwrap();
        hint(dp, hints::GUARD_HINTS, hints::guard_bit(&k.addr));
    }
    let mut blocked: LpmTrie<MapData, Cidr, Block> = program_map(dp, "BLOCKED").try_into().unwrap();
    for (a, bits) in [
        ([203, 0, 113, 0], 24),
        ([198, 51, 100, 0], 24),
        ([10, 0, 1, 66], 32),
    ] {
        let k = Key::new(
            CIDR_FAMILY_BITS + bits,
            Cidr {
                family: AF_INET as u32,
                addr: v4(a),
            },
        );
        blocked.insert(&k, Block { until: 0 }, 0).unwrap();
        let (first, n) = hints::block_bits(&v4(a), bits);
        for bit in first..first + n {
            hint(dp, hints::BLOCK_HINTS, bit);
        }
    }
}

/// Sets a bit of `HINTS`, as user space does beside the entries it writes.
fn hint(dp: &mut Dataplane, base: u32, bit: u32) {
    use aya::maps::{Array, MapData};
    let mut m: Array<MapData, u64> = program_map(dp, "HINTS").try_into().unwrap();
    let idx = base + bit / 64;
    let w = m.get(&idx, 0).unwrap();
    m.set(idx, w | 1 << (bit % 64), 0).unwrap();
}

fn main() {
    require_root();
    pin_to_last_cpu();
    let (_ns, cli, bk) = fixture_net("bench");

    let mut dp = Dataplane::load().unwrap();
    dp.install_service(ServiceConfig::with_backends(
        "10.0.0.10:5060".parse().unwrap(),
        ["10.0.2.11:5060", "10.0.2.12:5060", "10.0.2.13:5060"]
            .iter()
            .map(|b| b.parse().unwrap())
            .collect(),
    ))
    .unwrap();
    dp.add_tx_port(cli).unwrap();
    dp.add_tx_port(bk).unwrap();
    protect(&mut dp, bk);
    let t = TrivialTarget {
        addr: [10, 0, 2, 11],
        port: 5060u16.to_be(),
        dmac: [2, 0, 0, 0, 2, 0x11],
        smac: [2, 0, 0, 0, 0xfe, 1],
        _pad: [0; 2],
        ifindex: bk,
    };
    dp.set_trivial_target(t).unwrap();

    let early = invite_early("a84b4c76e66710@pc33.atlanta.com", 900);
    let late = invite("Call-ID: far-away-call-id@example.com", 1400);
    let options = b"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bKhjhs8ass877\r\nMax-Forwards: 70\r\nTo: <sip:bob@example.com>\r\nFrom: Alice <sip:alice@example.com>;tag=1928301774\r\nCall-ID: a84b4c76e66710\r\nCSeq: 63104 OPTIONS\r\nContact: <sip:alice@10.0.1.2>\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n".to_vec();
    let bye = b"BYE sip:alice@10.0.1.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bKnashds7\r\nMax-Forwards: 70\r\nFrom: Bob <sip:bob@example.com>;tag=a6c85cf\r\nTo: Alice <sip:alice@example.com>;tag=1928301774\r\nCall-ID: a84b4c76e66710\r\nCSeq: 231 BYE\r\nContent-Length: 0\r\n\r\n".to_vec();
    let ok = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bKnashds7;received=10.0.1.2\r\nFrom: Bob <sip:bob@example.com>;tag=a6c85cf\r\nTo: Alice <sip:alice@example.com>;tag=1928301774\r\nCall-ID: a84b4c76e66710\r\nCSeq: 231 BYE\r\nContent-Length: 0\r\n\r\n".to_vec();

    let to_vip = |p: &[u8]| Frame::udp(ip("10.0.1.2"), 5060, ip("10.0.0.10"), 5060, p).build();
    let cases: Vec<(String, Vec<u8>, u32)> = vec![
        (
            format!("INVITE {} B, Call-ID second header", early.len()),
            to_vip(&early),
            cli,
        ),
        (
            format!("INVITE {} B, Call-ID last header", late.len()),
            to_vip(&late),
            cli,
        ),
        (
            format!("OPTIONS {} B", options.len()),
            to_vip(&options),
            cli,
        ),
        (format!("BYE {} B", bye.len()), to_vip(&bye), cli),
        ("CRLF keepalive".into(), to_vip(b"\r\n\r\n"), cli),
        (
            format!("200 OK {} B from a backend (reverse NAT)", ok.len()),
            Frame::udp(ip("10.0.2.12"), 5060, ip("10.0.1.2"), 5060, &ok).build(),
            bk,
        ),
    ];

    let mut table = String::new();
    table.push_str("| message | balancer ns/pkt (p10-p90) | trivial ns/pkt (p10-p90) | ratio of medians | verdict |\n|---|---:|---:|---:|---|\n");
    for (name, frame, ingress) in &cases {
        let before: std::collections::HashMap<_, _> = dp.stats().unwrap().into_iter().collect();
        let ([ours, base], v) = ns_per_packet(&mut dp, frame, *ingress);
        let moved: Vec<String> = dp
            .stats()
            .unwrap()
            .into_iter()
            .filter(|(k, n)| before[k] != *n)
            .map(|(k, n)| format!("{k}={}", n - before[k]))
            .collect();
        eprintln!("{name}: counters {}", moved.join(" "));
        let verdict = match v {
            3 => "TX",
            4 => "REDIRECT",
            2 => "PASS",
            _ => "other",
        };
        table.push_str(&format!(
            "| {name} | {:.0} ({:.0}-{:.0}) | {:.0} ({:.0}-{:.0}) | {:.2}x | {verdict} |\n",
            ours.median,
            ours.p10,
            ours.p90,
            base.median,
            base.p10,
            base.p90,
            ours.median / base.median
        ));
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
    table.push_str(&change_latency(&mut dp));
    let report = format!(
        "## In-kernel cost per packet\n\nIn-kernel time of one program run, as BPF_PROG_TEST_RUN reports it, {} runs per message and program, each on a fresh copy of the frame, the two programs alternating run by run (median, 10th-90th percentile), \
same run, same frames. `trivial` is `xdp_trivial`: parse, rewrite destination address and port with checksum updates, \
set fixed MACs, redirect through the devmap to the backend-side interface: the least a DNAT balancer does. `balancer` also finds the service, scans the packet in place \
for the Call-ID, hashes it, looks up Maglev, finds the next hop (FIB, through a one-second cache), counts, and redirects through a devmap; \
and every protection check is in place and paid for, none refusing: the reverse-path table holds the backends, the VIP and the host's addresses, \
the block list three prefixes (none near the client), the per-source limits are on (far above the bench's rate). \
The OPTIONS and the BYE carry a Call-ID that is in no dialog: both affinity maps are looked up and missed. The bench pins itself to the last CPU.\n\n{table}",
        runs()
    );
    println!("{report}");
    if let Ok(path) = std::env::var("BENCH_DATAPLANE") {
        std::fs::write(&path, &report).unwrap();
        eprintln!("wrote {path}");
    }
}

/// Runs on the last CPU only: a test run executes on the calling CPU, and one
/// CPU that the scheduler does not move us off gives steadier figures.
fn pin_to_last_cpu() {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(n - 1, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
