//! Packets per second on one CPU with frames that really go somewhere:
//! BPF_PROG_TEST_RUN in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`, Linux
//! 5.18; what xdp-trafficgen uses), the balancer (DSR mode, see below) and
//! the trivial baseline (`xdp_trivial`) alternating round by round. Run by
//! `cargo xtask bench`, which puts this section (BENCH_LIVE) into
//! bench/RESULTS.md and the ratios (BENCH_FIGURES) into its goals summary.
//! Knobs: BENCH_LIVE_FRAMES (frames per call, default 2000000),
//! BENCH_LIVE_ROUNDS (calls per program and message, default 11),
//! BENCH_LIVE_BATCH (frames per batch, default 64, at most 256).
//! A benchmark: it measures, it does not judge.

#[path = "common/host.rs"]
mod host;

use std::net::IpAddr;

use balancer::{
    kernel::{Dataplane, PROGRAM, TRIVIAL},
    model::Mode,
};
use balancer_test_support::{figures, netns::*, packet::*, sip::*, xdp::*};
use host::{moved, show, thousands};

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn to_vip(payload: &[u8]) -> Vec<u8> {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    Frame::udp(ip("10.0.1.2"), 5060, ip("10.0.0.10"), 5060, payload).build()
}

/// Frames the XDP program on `bk0p` (the backend side's peer) has dropped so
/// far: what the redirects really delivered through veth's `ndo_xdp_xmit`.
fn peer_drops() -> u64 {
    sh_out("ethtool -S bk0p")
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .filter(|(k, _)| k.starts_with("rx_queue_") && k.ends_with("_xdp_drops"))
        .map(|(_, v)| v.trim().parse::<u64>().unwrap_or(0))
        .sum()
}

/// What one call of a program did: packets/s (frames over the call's wall
/// time), the kernel's own time per frame, the balancer's counters that
/// moved, frames that reached the peer.
struct Call {
    pps: f64,
    kernel_ns: f64,
    wall_ms: f64,
    moved: Vec<(&'static str, u64)>,
    arrived: u64,
}

fn call(
    dp: &mut Dataplane,
    prog: &str,
    frame: &[u8],
    ingress: u32,
    frames: u32,
    batch: u32,
) -> Call {
    let before = dp.stats().unwrap();
    let peer = peer_drops();
    let (wall, kernel) = run_xdp_live(dp, prog, frame, ingress, frames, batch);
    Call {
        pps: frames as f64 / wall.as_secs_f64(),
        kernel_ns: kernel.as_nanos() as f64,
        wall_ms: wall.as_secs_f64() * 1e3,
        moved: moved(dp, &before),
        arrived: peer_drops() - peer,
    }
}

/// Median, minimum and maximum.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (med, v[0], v[n - 1])
}

fn count(moved: &[(&str, u64)], name: &str) -> u64 {
    moved
        .iter()
        .filter(|(k, _)| *k == name)
        .map(|(_, n)| n)
        .sum()
}

/// Sums counters over calls.
fn total(calls: &[Call]) -> Vec<(&'static str, u64)> {
    let mut t: Vec<(&'static str, u64)> = Vec::new();
    for (k, n) in calls.iter().flat_map(|c| &c.moved) {
        match t.iter_mut().find(|(name, _)| name == k) {
            Some(e) => e.1 += n,
            None => t.push((k, *n)),
        }
    }
    t
}

fn main() {
    require_root();
    host::pin_to_last_cpu();
    let frames = env_or("BENCH_LIVE_FRAMES", 2_000_000);
    let rounds = env_or("BENCH_LIVE_ROUNDS", 11).max(1) as usize;
    let batch = env_or("BENCH_LIVE_BATCH", 64);
    let (ns, mut dp, cli, _) = host::host("live", Mode::Dsr);
    // A veth takes redirected frames (`ndo_xdp_xmit`) only when its peer
    // runs NAPI: an XDP program on the peer, here one that drops them, the
    // cheapest receiver (xdp-trafficgen's set-up, with a veth for the NIC).
    attach_verdict(&ns.name, "bk0p", XDP_DROP);

    let options = b"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bKhjhs8ass877\r\nMax-Forwards: 70\r\nTo: <sip:bob@example.com>\r\nFrom: Alice <sip:alice@example.com>;tag=1928301774\r\nCall-ID: a84b4c76e66710\r\nCSeq: 63104 OPTIONS\r\nContact: <sip:alice@10.0.1.2>\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n";
    let early = invite_early("a84b4c76e66710@pc33.atlanta.com", 900);
    let late = invite("Call-ID: far-away-call-id@example.com", 1400);
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (
            format!("INVITE {} B, Call-ID second header", early.len()),
            to_vip(&early),
            "invite",
        ),
        (
            format!("INVITE {} B, Call-ID last header", late.len()),
            to_vip(&late),
            "invite_late",
        ),
        (
            format!("OPTIONS {} B", options.len()),
            to_vip(options),
            "options",
        ),
        ("CRLF keepalive".into(), to_vip(b"\r\n\r\n"), "keepalive"),
    ];

    // What a call costs besides its frames (the page pool's set-up and
    // teardown, switching the XDP dispatcher on and off): calls of one batch.
    let fixed = spread(
        (0..5)
            .map(|_| call(&mut dp, TRIVIAL, &cases[0].1, cli, batch, batch).wall_ms)
            .collect(),
    )
    .0;
    let mut table = String::from(
        "| message | balancer (DSR) Mpps (min-max) | trivial Mpps (min-max) | balancer / trivial | kernel's own ns per frame: balancer / trivial (trivial's / balancer's) | balancer's frames dispatched and redirected | frames that reached the peer: balancer / trivial |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let (mut figs, mut counters) = (Vec::new(), String::new());
    for (name, frame, figure) in &cases {
        // Pages allocated, next-hop cache and the dialog's entry made, caches
        // warm, before anything is timed.
        for prog in [PROGRAM, TRIVIAL] {
            call(&mut dp, prog, frame, cli, batch * 16, batch);
        }
        let mut calls: [Vec<Call>; 2] = [Vec::new(), Vec::new()];
        for r in 0..rounds {
            // Alternating which program goes first too.
            for p in [r % 2, 1 - r % 2] {
                let prog = [PROGRAM, TRIVIAL][p];
                calls[p].push(call(&mut dp, prog, frame, cli, frames, batch));
            }
        }
        let [ours, base] = calls;
        let sent = frames as u64 * rounds as u64;
        let (o, o0, o1) = spread(ours.iter().map(|c| c.pps / 1e6).collect());
        let (t, t0, t1) = spread(base.iter().map(|c| c.pps / 1e6).collect());
        let (ok, _, _) = spread(ours.iter().map(|c| c.kernel_ns).collect());
        let (tk, _, _) = spread(base.iter().map(|c| c.kernel_ns).collect());
        let ours_total = total(&ours);
        let dispatched = count(&ours_total, "redirect");
        let arrived =
            |c: &[Call]| c.iter().map(|c| c.arrived).sum::<u64>() as f64 * 100.0 / sent as f64;
        eprintln!("{name}: balancer's counters {}", show(&ours_total));
        table.push_str(&format!(
            "| {name} | {o:.3} ({o0:.3}-{o1:.3}) | {t:.3} ({t0:.3}-{t1:.3}) | {:.0}% | {ok:.0} / {tk:.0} ({:.0}%) | {:.2}% | {:.2}% / {:.2}% |\n",
            100.0 * o / t,
            100.0 * tk / ok,
            dispatched as f64 * 100.0 / sent as f64,
            arrived(&ours),
            arrived(&base),
        ));
        counters.push_str(&format!("- {name}: {}\n", show(&ours_total)));
        figs.push((format!("live.{figure}"), o / t));
        figs.push((format!("live.{figure}_kernel"), 100.0 * tk / ok));
    }

    // The pitfall, measured: the same service in DNAT mode, one call.
    let dnat = dnat_share(&mut dp, &cases[0].1, cli, frames, batch);

    let report = format!(
        "# Live frames: packets per second on one CPU\n\n\
BPF_PROG_TEST_RUN in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`, Linux 5.18; what xdp-trafficgen uses): per call the kernel \
takes {f} frames from a page pool in batches of {batch} (a NAPI poll's worth), runs the program on each as if received on the \
client-side veth, and carries out its verdict: a redirect goes through the devmap to the backend-side veth, whose peer runs an XDP \
program that drops what arrives (a veth accepts redirected frames only when its peer runs NAPI), flushed after every batch as a \
driver does. Packets/s = frames / wall time of the call, which also holds what both programs pay the same: the redirect, the peer's \
receive, the pages' recycling. {rounds} calls per program and message, the two programs alternating call by call (and which goes \
first), the bench pinned to the last CPU: median (min-max). A call also pays a fixed cost besides its frames (the page pool's \
set-up and teardown, the XDP dispatcher switched on and off): {fixed:.1} ms for a call of one batch (median of 5), which the \
packets/s include; the kernel's own timer runs around the batches only, and its time per frame (median over the calls) is \
beside them. The service, its three backends and every protection check are those \
of the in-kernel section above; dialog affinity is on.\n\n\
Why DSR mode: the page pool writes a page's frame only when it allocates the page, and a recycled page comes back holding the \
frame as the last run left it. In DNAT mode the balancer has rewritten the destination to a backend (and taken one off the TTL), \
so from the second use of a page on the frame is no longer addressed to the VIP and the program takes its pass-through path; \
in this run, the same INVITE with the service switched to DNAT for one call: {dnat}. In DSR mode only the MACs change, the \
destination stays the VIP and the TTL as it was, so every frame is the same request again and gets the whole dispatch: service \
lookup, protection checks, Call-ID scan and hash, Maglev, affinity (a hit: one dialog), next hop, redirect; the balancer's \
counters below show every frame dispatched and redirected. DSR skips the DNAT address rewrite and TTL update (checksum updates \
on a header already in cache), which the trivial program does. The trivial program's rewrite (destination set to one fixed \
backend) gives the same result on a rewritten frame, so it does its whole work on every frame.\n\n{table}\n\
The balancer's counters that moved over its timed calls (summed over CPUs; the bench runs on one):\n\n{counters}",
        f = thousands(frames as u64),
    );
    println!("{report}");
    figures::write(&figs);
    if let Ok(path) = std::env::var("BENCH_LIVE") {
        std::fs::write(&path, &report).unwrap();
        eprintln!("wrote {path}");
    }
}

/// One live call of the balancer on `frame` with the service switched to
/// DNAT: how many of the frames it dispatched, and where the rest went.
fn dnat_share(dp: &mut Dataplane, frame: &[u8], ingress: u32, frames: u32, batch: u32) -> String {
    use aya::maps::{HashMap, MapData};
    use balancer_common::maps::{Endpoint, Service, MODE_DNAT};
    let mut services: HashMap<MapData, Endpoint, Service> =
        program_map(dp, "SERVICES").try_into().unwrap();
    let key = Endpoint::from(host::VIP.parse::<std::net::SocketAddr>().unwrap());
    let mut s = services.get(&key, 0).unwrap();
    s.mode = MODE_DNAT;
    services.insert(key, s, 0).unwrap();
    let c = call(dp, PROGRAM, frame, ingress, frames, batch);
    eprintln!("DNAT, one call: counters {}", show(&c.moved));
    format!(
        "{} of {} frames dispatched (`callid`), {} passed as `pass_no_service`",
        thousands(count(&c.moved, "callid")),
        thousands(frames as u64),
        thousands(count(&c.moved, "pass_no_service"))
    )
}
