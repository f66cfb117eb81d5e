//! Per-source token buckets (Kamailio's pike): datagrams and new dialogs per
//! second, with a burst, and a block time for a source that goes over. One
//! bucket per (service, source) in the kernel's `RATES` map; the arithmetic
//! lives here so the host tests check what the kernel computes.
//!
//! Tokens are counted in thousandths, so a rate of a few per second refills
//! smoothly without floating point. Several CPUs may update one bucket at
//! once; a lost update errs by a token either way, never by a burst.

use bytemuck::{Pod, Zeroable};

use crate::maps::Service;

/// Thousandths of a token per token.
const MILLI: u64 = 1000;
/// Refill is computed over at most this long: longer idle is a full bucket
/// anyway at any rate a service accepts, and it bounds the product below.
const MAX_ELAPSED_NS: u64 = 100_000_000_000;
/// Highest rate (per second) a service may set: `MAX_ELAPSED_NS * MAX_RATE`
/// stays far inside a u64.
pub const MAX_RATE: u32 = 10_000_000;

/// One source's state for one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Bucket {
    /// Datagram tokens, thousandths.
    pub datagrams: u64,
    /// New-dialog tokens, thousandths.
    pub dialogs: u64,
    /// Monotonic ns of the last refill.
    pub last: u64,
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
    /// A source seen for the first time: full buckets.
    #[inline(always)]
    pub fn fresh(svc: &Service, now: u64) -> Bucket {
        Bucket {
            datagrams: svc.burst as u64 * MILLI,
            dialogs: svc.dialog_burst as u64 * MILLI,
            last: now,
            blocked_until: 0,
        }
    }

    /// Tops both buckets up for the time since the last refill.
    #[inline(always)]
    pub fn refill(&mut self, svc: &Service, now: u64) {
        let mut elapsed = now.wrapping_sub(self.last);
        // Another CPU stamped it after this one read the clock: nothing to add.
        if elapsed > u64::MAX / 2 {
            return;
        }
        if elapsed > MAX_ELAPSED_NS {
            elapsed = MAX_ELAPSED_NS;
        }
        self.datagrams = topped(self.datagrams, elapsed, svc.rate, svc.burst);
        self.dialogs = topped(self.dialogs, elapsed, svc.dialog_rate, svc.dialog_burst);
        self.last = now;
    }

    /// Admits one datagram (after [`refill`](Self::refill)).
    #[inline(always)]
    pub fn datagram(&mut self, svc: &Service, now: u64) -> Verdict {
        if self.blocked_until != 0 && now < self.blocked_until {
            return Verdict::StillBlocked;
        }
        if svc.rate == 0 {
            return Verdict::Pass;
        }
        let v = take(&mut self.datagrams);
        self.over(v, svc, now)
    }

    /// Admits one new dialog (after [`datagram`](Self::datagram) passed).
    #[inline(always)]
    pub fn dialog(&mut self, svc: &Service, now: u64) -> Verdict {
        if svc.dialog_rate == 0 {
            return Verdict::Pass;
        }
        let v = take(&mut self.dialogs);
        self.over(v, svc, now)
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

#[inline(always)]
fn topped(tokens: u64, elapsed_ns: u64, rate: u32, burst: u32) -> u64 {
    // ns * (tokens/s) / 1e9 tokens = ns * rate / 1e6 thousandths.
    let t = tokens + elapsed_ns * rate as u64 / 1_000_000;
    let cap = burst as u64 * MILLI;
    if t > cap {
        cap
    } else {
        t
    }
}

#[inline(always)]
fn take(tokens: &mut u64) -> bool {
    if *tokens < MILLI {
        return false;
    }
    *tokens -= MILLI;
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
            rate,
            burst,
            dialog_rate: rate,
            dialog_burst: burst,
            block_s,
            ..Service::default()
        }
    }

    fn admitted(b: &mut Bucket, s: &Service, now: u64, n: u32) -> u32 {
        let mut ok = 0;
        for _ in 0..n {
            b.refill(s, now);
            if b.datagram(s, now) == Verdict::Pass {
                ok += 1;
            }
        }
        ok
    }

    #[test]
    fn a_fresh_source_gets_its_burst_then_the_rate() {
        let s = svc(100, 50, 0);
        let mut b = Bucket::fresh(&s, 10 * SEC);
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
        let mut b = Bucket::fresh(&s, 0);
        for i in 0..50_000u64 {
            let now = i * SEC / 500;
            b.refill(&s, now);
            assert_eq!(b.datagram(&s, now), Verdict::Pass, "datagram {i}");
            assert_eq!(b.dialog(&s, now), Verdict::Pass, "dialog {i}");
        }
    }

    #[test]
    fn slow_rates_refill_in_thousandths() {
        let s = svc(3, 1, 0);
        let mut b = Bucket::fresh(&s, 0);
        assert_eq!(admitted(&mut b, &s, 0, 5), 1);
        assert_eq!(admitted(&mut b, &s, SEC / 3 - 1_000_000, 1), 0);
        assert_eq!(admitted(&mut b, &s, SEC / 3 + 1_000_000, 1), 1);
    }

    #[test]
    fn going_over_blocks_for_the_block_time_when_set() {
        let s = svc(10, 10, 5);
        let mut b = Bucket::fresh(&s, SEC);
        assert_eq!(admitted(&mut b, &s, SEC, 10), 10);
        assert_eq!(b.datagram(&s, SEC), Verdict::Blocked);
        assert_eq!(b.datagram(&s, 2 * SEC), Verdict::StillBlocked);
        assert_eq!(b.datagram(&s, 6 * SEC - 1), Verdict::StillBlocked);
        b.refill(&s, 6 * SEC);
        assert_eq!(b.datagram(&s, 6 * SEC), Verdict::Pass);
    }

    #[test]
    fn no_rate_no_limit_and_a_clock_behind_adds_nothing() {
        let s = svc(0, 0, 5);
        let mut b = Bucket::fresh(&s, SEC);
        assert_eq!(admitted(&mut b, &s, SEC, 1000), 1000);
        let s = svc(10, 1, 0);
        let mut b = Bucket::fresh(&s, 5 * SEC);
        b.datagrams = 0;
        b.refill(&s, 4 * SEC);
        assert_eq!((b.datagrams, b.last), (0, 5 * SEC));
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
