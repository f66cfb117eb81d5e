//! Per-source rate limits (Kamailio's pike): datagrams and new dialogs per
//! second, with a burst, and a block time for a source that goes over. The
//! kernel keeps the [`Bucket`]s in an array (`RATES`) indexed by a seeded hash
//! of (service, source), [`rate_slot`]: an array lookup costs the data path
//! almost nothing where a hash map's costs it ~30 ns per datagram, and there
//! is no state for a sender to create. The price: two sources whose keys hash
//! alike share a bucket. With [`RATE_SLOTS`] buckets and a seed drawn at load
//! time, a given source shares its bucket with about one in 65,536 other
//! active sources, and nobody can aim at another's bucket without the seed.
//! The arithmetic lives here so the host tests check what the kernel computes.
//!
//! The limiter is GCRA, the token bucket written as a "theoretical arrival
//! time": a datagram is admitted while that time is at most `burst - 1`
//! intervals ahead of now, and each admitted one moves it an interval on.
//! Exactly a token bucket of `burst` tokens refilled at `1/interval`, with no
//! division on the data path (user space turns rates into intervals once).
//! Several CPUs may update one bucket at once; a lost update errs by one
//! datagram either way.

use bytemuck::{Pod, Zeroable};

use crate::maps::{RateKey, Service};

/// Buckets in `RATES` (a power of two).
pub const RATE_SLOTS: u32 = 1 << 16;

/// A bucket of `RATES`, and the source that last went over its limits there
/// (for `balancer block list`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RateSlot {
    pub bucket: Bucket,
    pub source: RateKey,
}

/// The bucket of a (service, source) key under `seed`.
#[inline(always)]
pub fn rate_slot(key: &RateKey, seed: u32) -> u32 {
    let a = &key.addr;
    let w = |i: usize| u32::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    // An IPv6 /64 has its last two words zero, an IPv4 address its last three.
    let mut h = (seed ^ w(0)).wrapping_mul(0x9e37_79b1);
    h ^= h >> 15;
    h = (h ^ w(4) ^ (key.service << 8 | key.family)).wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h & (RATE_SLOTS - 1)
}

/// Highest rate (per second) a service may set: intervals stay >= 100 ns.
pub const MAX_RATE: u32 = 10_000_000;

/// The interval the kernel keeps for a rate per second (0: no limit).
/// Rounded down: the limit is never stricter than configured.
pub const fn interval(rate: u32) -> u32 {
    match 1_000_000_000u32.checked_div(rate) {
        Some(i) => i,
        None => 0,
    }
}

/// One source's state for one service. All zero for a source not seen yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Bucket {
    /// Theoretical arrival time of the next datagram, monotonic ns.
    pub datagrams: u64,
    /// The same for new dialogs.
    pub dialogs: u64,
    /// Monotonic ns until which the source is blocked (0: not blocked).
    pub blocked_until: u64,
}

/// What a bucket says about a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Over the limit: drop this one.
    Over,
    /// Over the limit, and the service blocks such sources: drop, and the
    /// source is now blocked (counted once, when it happens).
    Blocked,
    /// Still inside a block time: drop.
    StillBlocked,
}

impl Bucket {
    /// Admits one datagram at `now`.
    #[inline(always)]
    pub fn datagram(&mut self, svc: &Service, now: u64) -> Verdict {
        if self.blocked_until != 0 && now < self.blocked_until {
            return Verdict::StillBlocked;
        }
        let ok = take(&mut self.datagrams, now, svc.interval, svc.burst);
        self.over(ok, svc, now)
    }

    /// Admits one new dialog at `now` (after [`datagram`](Self::datagram) passed).
    #[inline(always)]
    pub fn dialog(&mut self, svc: &Service, now: u64) -> Verdict {
        let ok = take(
            &mut self.dialogs,
            now,
            svc.dialog_interval,
            svc.dialog_burst,
        );
        self.over(ok, svc, now)
    }

    #[inline(always)]
    fn over(&mut self, taken: bool, svc: &Service, now: u64) -> Verdict {
        if taken {
            return Verdict::Pass;
        }
        if svc.block_s == 0 {
            return Verdict::Over;
        }
        self.blocked_until = now + svc.block_s as u64 * 1_000_000_000;
        Verdict::Blocked
    }
}

/// GCRA: admits at `now` if the theoretical arrival time `tat` is at most
/// `burst - 1` intervals ahead, and moves it on. Interval 0: no limit.
#[inline(always)]
fn take(tat: &mut u64, now: u64, interval: u32, burst: u32) -> bool {
    if interval == 0 {
        return true;
    }
    let t = if *tat > now { *tat } else { now };
    let ahead = burst.saturating_sub(1) as u64 * interval as u64;
    if t - now > ahead {
        return false;
    }
    *tat = t + interval as u64;
    true
}

/// The [`RateKey`](crate::maps::RateKey) address of a source: IPv4 whole,
/// IPv6 cut to its /64.
#[inline(always)]
pub fn source_prefix(addr: &[u8; 16], family: u8) -> [u8; 16] {
    let mut a = *addr;
    if family == crate::maps::AF_INET6 {
        let mut i = 8;
        while i < 16 {
            a[i] = 0;
            i += 1;
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn svc(rate: u32, burst: u32, block_s: u32) -> Service {
        Service {
            interval: interval(rate),
            burst,
            dialog_interval: interval(rate),
            dialog_burst: burst,
            block_s,
            ..Service::default()
        }
    }

    fn admitted(b: &mut Bucket, s: &Service, now: u64, n: u32) -> u32 {
        (0..n)
            .filter(|_| b.datagram(s, now) == Verdict::Pass)
            .count() as u32
    }

    #[test]
    fn a_fresh_source_gets_its_burst_then_the_rate() {
        let s = svc(100, 50, 0);
        let mut b = Bucket::default();
        assert_eq!(admitted(&mut b, &s, 10 * SEC, 80), 50);
        // A tenth of a second later: ten more.
        assert_eq!(admitted(&mut b, &s, 10 * SEC + SEC / 10, 80), 10);
        // Idle for long: back to the burst, not beyond.
        assert_eq!(admitted(&mut b, &s, 1000 * SEC, 80), 50);
    }

    #[test]
    fn a_steady_sender_under_the_rate_is_never_limited() {
        // 500 per second against a limit of 1000 with a burst of 1000.
        let s = svc(1000, 1000, 60);
        let mut b = Bucket::default();
        for i in 0..50_000u64 {
            let now = SEC + i * SEC / 500;
            assert_eq!(b.datagram(&s, now), Verdict::Pass, "datagram {i}");
            assert_eq!(b.dialog(&s, now), Verdict::Pass, "dialog {i}");
        }
    }

    #[test]
    fn a_sender_at_the_rate_is_never_limited_and_one_above_is() {
        let s = svc(1000, 1, 0);
        let mut b = Bucket::default();
        for i in 0..10_000u64 {
            assert_eq!(b.datagram(&s, SEC + i * 1_000_000), Verdict::Pass, "{i}");
        }
        // Twice the rate: every other one.
        let mut b = Bucket::default();
        let ok = (0..10_000u64)
            .filter(|i| b.datagram(&s, SEC + i * 500_000) == Verdict::Pass)
            .count();
        assert_eq!(ok, 5_000);
    }

    #[test]
    fn slow_rates_keep_their_interval() {
        let s = svc(3, 1, 0);
        let mut b = Bucket::default();
        assert_eq!(admitted(&mut b, &s, SEC, 5), 1);
        assert_eq!(admitted(&mut b, &s, SEC + SEC / 3 - 1_000_000, 1), 0);
        assert_eq!(admitted(&mut b, &s, SEC + SEC / 3 + 1_000_000, 1), 1);
    }

    #[test]
    fn going_over_blocks_for_the_block_time_when_set() {
        let s = svc(10, 10, 5);
        let mut b = Bucket::default();
        assert_eq!(admitted(&mut b, &s, SEC, 10), 10);
        assert_eq!(b.datagram(&s, SEC), Verdict::Blocked);
        assert_eq!(b.datagram(&s, 2 * SEC), Verdict::StillBlocked);
        assert_eq!(b.datagram(&s, 6 * SEC - 1), Verdict::StillBlocked);
        assert_eq!(b.datagram(&s, 6 * SEC), Verdict::Pass);
    }

    #[test]
    fn no_rate_no_limit_and_rates_round_towards_more() {
        let s = svc(0, 0, 5);
        let mut b = Bucket::default();
        assert_eq!(admitted(&mut b, &s, SEC, 1000), 1000);
        assert_eq!(interval(0), 0);
        assert_eq!(interval(3), 333_333_333);
        assert_eq!(interval(MAX_RATE), 100);
        // The dialog limit is its own.
        let s = Service {
            dialog_interval: interval(1),
            dialog_burst: 1,
            ..Service::default()
        };
        let mut b = Bucket::default();
        assert_eq!(b.dialog(&s, SEC), Verdict::Pass);
        assert_eq!(b.dialog(&s, SEC), Verdict::Over);
        assert_eq!(b.datagram(&s, SEC), Verdict::Pass);
    }

    #[test]
    fn sources_spread_over_the_buckets_and_the_seed_moves_them() {
        let key = |i: u32, service: u32| {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&(0x0a00_0000 + i).to_be_bytes());
            RateKey {
                addr,
                family: crate::maps::AF_INET as u32,
                service,
            }
        };
        let slots: std::collections::HashSet<u32> =
            (0..4096).map(|i| rate_slot(&key(i, 0), 7)).collect();
        assert!(
            slots.len() > 3900,
            "{} distinct buckets of 4096",
            slots.len()
        );
        assert!(slots.iter().all(|s| *s < RATE_SLOTS));
        // The same source in another service, or under another seed: elsewhere.
        assert_ne!(rate_slot(&key(1, 0), 7), rate_slot(&key(1, 1), 7));
        let moved = (0..256)
            .filter(|i| rate_slot(&key(*i, 0), 7) != rate_slot(&key(*i, 0), 8))
            .count();
        assert!(moved > 250, "{moved}");
    }

    #[test]
    fn ipv6_sources_count_by_their_64() {
        let a: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        let p = source_prefix(&a, crate::maps::AF_INET6);
        assert_eq!(&p[..8], &a[..8]);
        assert_eq!(&p[8..], &[0; 8]);
        assert_eq!(source_prefix(&a, crate::maps::AF_INET), a);
    }
}
