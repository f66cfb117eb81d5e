//! The XDP frame parser, which exists only in the eBPF program: libFuzzer's
//! input is an Ethernet frame, run once through the real `balancer` program with
//! BPF_PROG_TEST_RUN (loaded once, in a namespace of its own set up as the
//! kernel fixture tests' host, with their services and backends). Needs root.
//!
//! After every run: the verdict is PASS, DROP, TX or REDIRECT; exactly one
//! verdict counter moved (the others in `STATS` say why a frame was dispatched
//! the way it was, and move beside one); the verdict is the one that counter
//! stands for; a frame passed for a reason that says "untouched" comes out
//! byte for byte as it went in; and no output is longer than its input.
#![no_main]

use std::sync::Mutex;

use balancer::kernel::{Dataplane, PROGRAM};
use balancer::model::{Algorithm, Mode, ServiceConfig};
use balancer_common::maps::reason;
use balancer_test_support::{netns::fixture_net_here, xdp::run_xdp};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// What a verdict counter says happened to the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Passed as it came in.
    Untouched,
    /// Passed, maybe rewritten, for the kernel to route (`fib_*`, `ttl_exceeded`).
    Pass,
    /// Passed untouched or dropped (`no_backend`, `malformed` have both exits).
    PassOrDrop,
    Drop,
    Tx,
    Redirect,
}

/// The counters that end a frame's path, and what each means. Every other
/// counter says why, and moves beside one of these.
fn verdict_counter(r: u32) -> Option<Outcome> {
    use reason::*;
    Some(match r {
        PASS_NOT_IP | PASS_NOT_UDP | PASS_NO_SERVICE | PASS_LOCAL | FRAGMENT_MISS
        | NO_BACKEND_PASS => Outcome::Untouched,
        FIB_NO_NEIGH | FIB_FAIL | TTL_EXCEEDED => Outcome::Pass,
        NO_BACKEND | MALFORMED => Outcome::PassOrDrop,
        SPOOFED | BLOCKED | NOT_ALLOWED | RATE_LIMITED | DIALOG_LIMITED | TOO_BIG | SCANNER
        | ZERO_CHECKSUM => Outcome::Drop,
        TX => Outcome::Tx,
        REDIRECT => Outcome::Redirect,
        CALLID | FALLBACK_NO_CALLID | FALLBACK_KEEPALIVE | REVERSE_NAT | FRAGMENT | SOURCE
        | ROUND_ROBIN | URI | AFFINITY_HIT | AFFINITY_NEW | AFFINITY_REPLACED
        | AFFINITY_LEARNED | AUTO_BLOCKED => return None,
        _ => panic!("reason {r} is new: say whether it ends a frame's path"),
    })
}

/// Largest frame BPF_PROG_TEST_RUN takes without fragments: a page less the
/// headroom and the shared info (the program is not frags-aware).
pub const MAX_FRAME: usize = 3500;

struct Bed {
    dp: Dataplane,
    cli: u32,
    counters: Vec<u64>,
    out: Vec<u8>,
}

fn spec(vip: &str, mode: Mode, algorithm: Algorithm, backends: &[&str]) -> ServiceConfig {
    ServiceConfig {
        mode,
        algorithm,
        ..ServiceConfig::with_backends(
            vip.parse().unwrap(),
            backends.iter().map(|b| b.parse().unwrap()).collect(),
        )
    }
}

/// Stops the fuzzer without a finding: the set-up failed, no input did.
/// (`_exit`: libFuzzer takes an `exit` during a run for a finding.)
fn unusable(why: &str) -> ! {
    eprintln!("frame: {why}");
    unsafe { libc::_exit(2) }
}

fn bed() -> Bed {
    if unsafe { libc::geteuid() } != 0 {
        unusable("the frame target loads the XDP program: run it as root");
    }
    let (cli, bk) = fixture_net_here();
    let mut dp = Dataplane::open_with(None, balancer_common::maps::AFFINITY_ENTRIES)
        .unwrap_or_else(|e| unusable(&format!("loading the data plane: {e:#}")));
    // The kernel fixtures' services (kernel_fixtures.rs), one algorithm each.
    for s in [
        spec(
            "10.0.0.10:5060",
            Mode::Dnat,
            Algorithm::CallId,
            &["10.0.2.11:5060", "10.0.2.12:5060", "10.0.2.13:5060"],
        ),
        spec(
            "[fd00::10]:5060",
            Mode::Dnat,
            Algorithm::FromUri,
            &[
                "[fd00:2::11]:5060",
                "[fd00:2::12]:5060",
                "[fd00:2::13]:5060",
            ],
        ),
        spec(
            "10.0.0.20:5060",
            Mode::Dsr,
            Algorithm::RequestUri,
            &["10.0.2.21:5060", "10.0.2.22:5060"],
        ),
    ] {
        dp.install_service(s).unwrap();
    }
    dp.add_tx_port(cli).unwrap();
    dp.add_tx_port(bk).unwrap();
    let counters = counters(&dp);
    Bed {
        dp,
        cli,
        counters,
        out: Vec::new(),
    }
}

/// `STATS`, summed over CPUs, by reason.
fn counters(dp: &Dataplane) -> Vec<u64> {
    dp.stats().unwrap().into_iter().map(|(_, n)| n).collect()
}

static BED: Mutex<Option<Bed>> = Mutex::new(None);

/// libFuzzer sees the coverage of this process only, not of the eBPF program:
/// a function of its own for each counter that moved and each verdict makes
/// the program's decisions coverage it can steer by.
macro_rules! observers {
    ($($n:literal)*) => {
        const OBSERVE: &[fn()] = &[$({
            #[inline(never)]
            fn seen() {
                // Distinct bodies, or identical functions would be merged.
                std::hint::black_box($n);
            }
            seen
        }),*];
    };
}
observers!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29
    30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59
    60 61 62 63);

fn observe(i: usize) {
    if let Some(f) = OBSERVE.get(i) {
        f();
    }
}

libfuzzer_sys::fuzz_target!(|frame: &[u8]| {
    // BPF_PROG_TEST_RUN refuses less than an Ethernet header.
    if frame.len() < 14 || frame.len() > MAX_FRAME {
        return;
    }
    let mut guard = BED.lock().unwrap();
    let b = guard.get_or_insert_with(bed);
    let mut out = std::mem::take(&mut b.out);
    let r = run_xdp(&mut b.dp, PROGRAM, frame, b.cli, &mut out);
    let after = counters(&b.dp);
    let moved: Vec<(u32, u64)> = after
        .iter()
        .zip(&b.counters)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| (i as u32, a - b))
        .collect();
    b.counters = after;
    for (r, _) in &moved {
        observe(*r as usize);
    }
    observe(reason::COUNT as usize + r.return_value as usize);
    observe(reason::COUNT as usize + 6 + (out.as_slice() != frame) as usize);
    let names = |v: &[(u32, u64)]| -> Vec<String> {
        v.iter()
            .map(|(r, n)| format!("{}+{n}", reason::NAMES[*r as usize]))
            .collect()
    };
    let verdicts: Vec<(u32, u64)> = moved
        .iter()
        .copied()
        .filter(|(r, _)| verdict_counter(*r).is_some())
        .collect();
    assert!(
        verdicts.len() == 1 && verdicts[0].1 == 1,
        "verdict {}: not exactly one verdict counter moved: {:?}",
        r.return_value,
        names(&moved)
    );
    let (counter, _) = verdicts[0];
    let outcome = verdict_counter(counter).unwrap();
    let action = r.return_value;
    let fits = match outcome {
        Outcome::Untouched | Outcome::Pass => action == XDP_PASS,
        Outcome::PassOrDrop => action == XDP_PASS || action == XDP_DROP,
        Outcome::Drop => action == XDP_DROP,
        Outcome::Tx => action == XDP_TX,
        Outcome::Redirect => action == XDP_REDIRECT,
    };
    assert!(fits, "verdict {action} counted as {:?}", names(&moved));
    assert!(
        out.len() <= frame.len(),
        "{} bytes out of {} in ({:?})",
        out.len(),
        frame.len(),
        names(&moved)
    );
    let untouched =
        outcome == Outcome::Untouched || (outcome == Outcome::PassOrDrop && action == XDP_PASS);
    if untouched {
        assert!(
            out == frame,
            "passed untouched as {:?}, but changed: first difference at byte {:?}",
            names(&moved),
            out.iter().zip(frame).position(|(a, b)| a != b)
        );
    }
    b.out = out;
});
