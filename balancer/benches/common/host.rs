//! The balancer host the in-kernel benches (dataplane, live_frames) run their
//! programs in: the kernel fixtures' namespace (client side `cli0`, backend
//! side `bk0`), the program loaded with one service at 10.0.0.10:5060 and
//! three backends, every protection check in place, and the trivial
//! baseline's fixed target.

use balancer::{
    kernel::Dataplane,
    model::{Mode, ServiceConfig},
};
use balancer_common::maps::TrivialTarget;
use balancer_test_support::{netns::*, xdp::program_map};

pub const VIP: &str = "10.0.0.10:5060";

/// The host, entered by the calling thread, with the service in `mode`: the
/// namespace (deleted with the veths when dropped), the loaded program, and
/// the client-side and backend-side ifindexes.
pub fn host(tag: &str, mode: Mode) -> (Netns, Dataplane, u32, u32) {
    let (ns, cli, bk) = fixture_net(tag);
    let mut dp = Dataplane::load().unwrap();
    let mut svc = ServiceConfig::with_backends(
        VIP.parse().unwrap(),
        ["10.0.2.11:5060", "10.0.2.12:5060", "10.0.2.13:5060"]
            .iter()
            .map(|b| b.parse().unwrap())
            .collect(),
    );
    svc.mode = mode;
    dp.install_service(svc).unwrap();
    dp.add_tx_port(cli).unwrap();
    dp.add_tx_port(bk).unwrap();
    protect(&mut dp, bk);
    dp.set_trivial_target(TrivialTarget {
        addr: [10, 0, 2, 11],
        port: 5060u16.to_be(),
        dmac: [2, 0, 0, 0, 2, 0x11],
        smac: [2, 0, 0, 0, 0xfe, 1],
        _pad: [0; 2],
        ifindex: bk,
    })
    .unwrap();
    (ns, dp, cli, bk)
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
    let key = Endpoint::from(VIP.parse::<std::net::SocketAddr>().unwrap());
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

/// Runs on the last CPU only: a test run executes on the calling CPU, and one
/// CPU that the scheduler does not move us off gives steadier figures.
pub fn pin_to_last_cpu() {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(n - 1, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The verdict counters that moved since `before`, as `name=delta`.
pub fn moved(dp: &Dataplane, before: &[(&'static str, u64)]) -> Vec<(&'static str, u64)> {
    dp.stats()
        .unwrap()
        .into_iter()
        .zip(before)
        .filter(|((_, n), (_, b))| n != b)
        .map(|((k, n), (_, b))| (k, n - b))
        .collect()
}

pub fn show(moved: &[(&str, u64)]) -> String {
    moved
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// 100000 -> "100,000".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
