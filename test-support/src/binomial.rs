//! How far a count may stray from what the configuration predicts when a hash
//! spreads keys over backends: each of `n` keys lands on a backend with
//! probability `p` (its weight over the total, or its share of the table), so
//! the count is Binomial(n, p). The balance checks use the range below instead
//! of a margin picked from past runs.

use std::ops::RangeInclusive;

/// Standard deviations allowed either side of the mean. A count from a fair
/// hash falls outside with probability 6.3e-5 (the normal tail at 4 sd, close
/// to the binomial's for the sizes used here, `n p (1 - p)` in the tens at
/// least): a failure means the spread is not what the configuration says.
pub const Z: f64 = 4.0;

/// The counts of `n` keys a backend with probability `p` may get.
pub fn range(n: usize, p: f64) -> RangeInclusive<usize> {
    assert!((0.0..=1.0).contains(&p), "probability {p}");
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    let lo = (mean - Z * sd).ceil().max(0.0) as usize;
    let hi = (mean + Z * sd).floor().min(n as f64) as usize;
    lo..=hi
}

/// Each backend's probability by weight: `weights[i] / sum`.
pub fn shares(weights: &[u32]) -> Vec<f64> {
    let total: u32 = weights.iter().sum();
    assert!(total > 0, "no weight at all");
    weights.iter().map(|&w| w as f64 / total as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_is_four_standard_deviations_wide_each_side() {
        // 3000 keys, a third each: mean 1000, sd sqrt(3000 * 1/3 * 2/3) = 25.8.
        assert_eq!(range(3000, 1.0 / 3.0), 897..=1103);
        // 300 keys: mean 100, sd 8.16.
        assert_eq!(range(300, 1.0 / 3.0), 68..=132);
        assert_eq!(range(10, 0.0), 0..=0);
        assert_eq!(shares(&[1, 1, 2]), [0.25, 0.25, 0.5]);
    }
}
