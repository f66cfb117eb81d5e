//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.
//!
//! The lookup is what the kernel does per packet; the build (user space only) fills
//! a table from the set of usable backends. The build depends only on the backends'
//! addresses, ports and weights, never on their order or slot numbers, so every
//! balancer with the same configuration builds the same table.

/// Largest table size; the kernel reserves this many entries per table.
pub const MAX_TABLE: u32 = 65537;
/// Default table size (prime, > 100 x backends for even spread up to ~650 backends).
pub const DEFAULT_TABLE: u32 = 65537;

/// The table index for a key hash.
#[inline(always)]
pub const fn index(hash: u32, table_size: u32) -> u32 {
    if table_size == 0 {
        0
    } else {
        hash % table_size
    }
}

/// Where table `active` of service `id` starts in the flat kernel array.
#[inline(always)]
pub const fn table_base(id: u32, active: u32) -> u32 {
    (id * 2 + (active & 1)) * MAX_TABLE
}

pub const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    // `d <= n / d`, not `d * d <= n`: the square overflows near u32::MAX.
    while d <= n / d {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(feature = "user")]
pub use build::*;

#[cfg(feature = "user")]
mod build {
    use crate::hash::fmix32;

    /// A backend as the table builder sees it: a stable identity and a weight.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Member {
        /// Stable identity bytes (address and port), hashed for the permutation.
        pub id: Vec<u8>,
        pub weight: u32,
    }

    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    pub enum BuildError {
        #[error("table size {0} is not a prime between 2 and {max}", max = super::MAX_TABLE)]
        BadSize(u32),
        #[error("{0} backends do not fit a table of {1} entries")]
        TooMany(usize, u32),
    }

    fn h(id: &[u8], seed: u32) -> u32 {
        let mut x = seed ^ 0x811c_9dc5;
        for &b in id {
            x ^= b as u32;
            x = x.wrapping_mul(0x0100_0193);
        }
        fmix32(x)
    }

    /// Builds a table of `size` entries holding indices into `members`. Members
    /// with weight 0 get no entries. An empty (or all-zero-weight) set gives `None`
    /// in every entry.
    pub fn build(members: &[Member], size: u32) -> Result<Vec<Option<usize>>, BuildError> {
        if !super::is_prime(size) || size > super::MAX_TABLE {
            return Err(BuildError::BadSize(size));
        }
        let live: Vec<usize> = {
            let mut v: Vec<usize> = (0..members.len())
                .filter(|&i| members[i].weight > 0)
                .collect();
            // Order by identity, not by position: the table must not depend on the order
            // in which an operator listed the backends.
            v.sort_by(|&a, &b| members[a].id.cmp(&members[b].id));
            v
        };
        let mut table = vec![None; size as usize];
        if live.is_empty() {
            return Ok(table);
        }
        if live.len() > size as usize {
            return Err(BuildError::TooMany(live.len(), size));
        }
        let m = size as u64;
        let perm: Vec<(u64, u64)> = live
            .iter()
            .map(|&i| {
                let offset = h(&members[i].id, 0xdead_beef) as u64 % m;
                let skip = h(&members[i].id, 0x5eed_cafe) as u64 % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_w = live.iter().map(|&i| members[i].weight).max().unwrap_or(1) as u64;
        let mut next = vec![0u64; live.len()];
        let mut credit = vec![0u64; live.len()];
        let mut filled = 0usize;
        // Weighted Maglev: in each round a member takes a turn only when its
        // accumulated weight reaches the largest weight, so turns are proportional.
        'fill: loop {
            for (j, &i) in live.iter().enumerate() {
                credit[j] += members[i].weight as u64;
                if credit[j] < max_w {
                    continue;
                }
                credit[j] -= max_w;
                let (offset, skip) = perm[j];
                loop {
                    let c = ((offset + next[j] * skip) % m) as usize;
                    next[j] += 1;
                    if table[c].is_none() {
                        table[c] = Some(i);
                        filled += 1;
                        break;
                    }
                }
                if filled == size as usize {
                    break 'fill;
                }
            }
        }
        Ok(table)
    }
}

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                id: vec![10, 0, 2, i as u8, 0x13, 0xc4],
                weight: 1,
            })
            .collect()
    }

    fn share(t: &[Option<usize>], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for e in t {
            c[e.unwrap()] += 1;
        }
        c
    }

    #[test]
    fn even_and_weighted() {
        let t = build(&members(3), 65537).unwrap();
        for c in share(&t, 3) {
            assert!((c as f64 - 65537.0 / 3.0).abs() < 65537.0 * 0.01, "{c}");
        }
        let mut m = members(3);
        m[0].weight = 2;
        let t = build(&m, 65537).unwrap();
        let c = share(&t, 3);
        assert!((c[0] as f64 / c[1] as f64 - 2.0).abs() < 0.05, "{c:?}");
    }

    #[test]
    fn order_independent_and_minimal_disruption() {
        let m = members(5);
        let mut r = m.clone();
        r.reverse();
        let a = build(&m, 4099).unwrap();
        let b = build(&r, 4099).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(m[x.unwrap()], r[y.unwrap()]);
        }
        // Removing one backend moves (almost) only its own entries.
        let fewer: Vec<Member> = m[..4].to_vec();
        let c = build(&fewer, 4099).unwrap();
        let moved = a
            .iter()
            .zip(&c)
            .filter(|(x, y)| x.unwrap() != 4 && m[x.unwrap()] != fewer[y.unwrap()])
            .count();
        assert!(moved < 4099 / 50, "moved {moved}");
    }

    #[test]
    fn bad_sizes() {
        assert_eq!(build(&members(1), 4096), Err(BuildError::BadSize(4096)));
        assert_eq!(build(&members(4), 3), Err(BuildError::TooMany(4, 3)));
        assert!(build(&[], 7).unwrap().iter().all(|e| e.is_none()));
    }
}
