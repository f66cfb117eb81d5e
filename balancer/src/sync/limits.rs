//! Token buckets on what each peer may make this balancer do: a peer (or
//! whoever has its key) cannot make it spend more than a bounded share of a
//! core on HMACs, nor write more than a bounded number of entries a second
//! into the kernel's maps.

use std::time::Instant;

/// `rate` tokens a second, up to `burst` saved. A rate of 0 turns the bucket
/// off (everything passes), as in `[service.limits]`.
#[derive(Clone, Debug)]
pub struct Bucket {
    rate: u32,
    burst: u32,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Starts full: a peer's first bulk transfer is not throttled at once.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Bucket {
        Bucket {
            rate,
            burst,
            tokens: burst as f64,
            last: now,
        }
    }

    /// Takes `n` tokens if there are as many; otherwise takes none, so a
    /// datagram refused for its entries does not also starve the next one.
    pub fn take(&mut self, n: u32, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        // A clock that went back (it cannot, Instant is monotonic) would only
        // refill nothing.
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate as f64).min(self.burst as f64);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refills_at_the_rate_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100, 10, t0);
        assert_eq!((0..20).filter(|_| b.take(1, t0)).count(), 10);
        // 50 ms refill 5.
        let t1 = t0 + Duration::from_millis(50);
        assert_eq!((0..20).filter(|_| b.take(1, t1)).count(), 5);
        // An hour away still holds only the burst.
        let t2 = t1 + Duration::from_secs(3600);
        assert!(!b.take(11, t2));
        assert!(b.take(10, t2));
        assert!(!b.take(1, t2));
        let mut off = Bucket::new(0, 0, t0);
        assert!((0..1000).all(|_| off.take(100, t0)));
    }
}
