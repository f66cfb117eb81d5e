//! The Maglev table against what its population algorithm guarantees (Eisenbud
//! et al., NSDI 2016, section 3.4, with the weighted turns of maglev.rs): shares
//! are exact up to one entry, not measured. The builder is user-space only (the
//! `user` feature); the lookup side is tested without it too.

#[cfg(feature = "user")]
use balancer_common::maglev::{build, BuildError, Member};
use balancer_common::maglev::{index, is_prime, table_base, DEFAULT_TABLE, MAX_TABLE};
use balancer_common::maps::MAX_SERVICES;

#[cfg(feature = "user")]
fn member(i: usize, weight: u32) -> Member {
    Member {
        id: vec![192, 0, 2, i as u8, 0x13, 0xc4],
        weight,
    }
}

#[cfg(feature = "user")]
fn counts(t: &[Option<usize>], n: usize) -> Vec<usize> {
    let mut c = vec![0; n];
    for e in t {
        c[e.expect("every entry is filled")] += 1;
    }
    c
}

#[test]
fn primes_by_trial_division() {
    let naive = |n: u32| {
        n >= 2
            && (2..n)
                .take_while(|&d| (d as u64) * (d as u64) <= n as u64)
                .all(|d| !n.is_multiple_of(d))
    };
    for n in 0..5000 {
        assert_eq!(is_prime(n), naive(n), "{n}");
    }
    // Up to u32::MAX: a square of the divisor near there does not fit in u32.
    for n in [
        65_521,
        65_536,
        65_537,
        65_539,
        1_000_003,
        4_294_836_223,
        4_294_967_291,
        u32::MAX,
    ] {
        assert_eq!(is_prime(n), naive(n), "{n}");
    }
    assert!(is_prime(DEFAULT_TABLE) && is_prime(MAX_TABLE));
}

#[test]
fn index_is_the_hash_modulo_the_size() {
    for size in [1, 2, 251, 65_537] {
        for h in [0, 1, 250, 251, 65_537, u32::MAX] {
            assert_eq!(index(h, size), h % size);
        }
    }
    // An empty service has no table: entry 0, never a division by zero.
    assert_eq!(index(12345, 0), 0);
}

#[test]
fn service_tables_do_not_overlap() {
    // Two tables (active 0 and 1) per service, MAX_TABLE entries each, packed.
    let mut bases: Vec<u32> = (0..MAX_SERVICES)
        .flat_map(|id| [0, 1].map(|a| table_base(id, a)))
        .collect();
    bases.sort();
    let want: Vec<u32> = (0..2 * MAX_SERVICES).map(|k| k * MAX_TABLE).collect();
    assert_eq!(bases, want);
    // Only the low bit of `active` selects the half.
    assert_eq!(table_base(5, 2), table_base(5, 0));
    assert_eq!(table_base(5, 3), table_base(5, 1));
    assert_eq!(table_base(0, 0), 0);
    assert_eq!(table_base(1, 1), 3 * MAX_TABLE);
}

#[test]
#[cfg(feature = "user")]
fn equal_backends_get_floor_or_ceil_of_m_over_n() {
    // One entry per backend per round until the M entries are full.
    for (n, m) in [
        (1, 7),
        (2, 7),
        (3, 251),
        (5, 65_537),
        (7, 4099),
        (13, 13),
        (40, 251),
    ] {
        let ms: Vec<Member> = (0..n).map(|i| member(i, 1)).collect();
        let t = build(&ms, m).unwrap();
        assert_eq!(t.len(), m as usize);
        let (lo, hi) = (m as usize / n, (m as usize).div_ceil(n));
        for (i, c) in counts(&t, n).into_iter().enumerate() {
            assert!((lo..=hi).contains(&c), "n {n} m {m}: backend {i} has {c}");
        }
    }
}

#[test]
#[cfg(feature = "user")]
fn weighted_turns_are_proportional() {
    // Each round adds its weight w to a member's credit and every W (the largest
    // weight) of credit is one turn: after r full rounds a member has had
    // floor(r w / W) turns, and the table fills during round R + 1 for some R.
    for weights in [
        &[2u32, 1, 1][..],
        &[3, 1],
        &[5, 3, 2, 1],
        &[100, 1],
        &[1, 0, 4],
        &[7, 7, 7],
    ] {
        for m in [251u32, 4099, 65_537] {
            let ms: Vec<Member> = weights
                .iter()
                .enumerate()
                .map(|(i, &w)| member(i, w))
                .collect();
            let t = build(&ms, m).unwrap();
            let c = counts(&t, ms.len());
            let w_max = *weights.iter().max().unwrap() as usize;
            let heaviest = weights.iter().position(|&w| w as usize == w_max).unwrap();
            let fits = |r: usize| {
                weights.iter().zip(&c).all(|(&w, &c)| {
                    let w = w as usize;
                    (r * w / w_max..=(r + 1) * w / w_max).contains(&c)
                })
            };
            let r = c[heaviest];
            assert!(
                fits(r) || (r > 0 && fits(r - 1)),
                "weights {weights:?}, m {m}: {c:?}"
            );
        }
    }
}

#[test]
#[cfg(feature = "user")]
fn zero_weights_and_sizes() {
    // Weight 0: no entries; nobody with a weight: an empty table.
    let t = build(&[member(0, 0), member(1, 3)], 7).unwrap();
    assert!(t.iter().all(|e| *e == Some(1)));
    assert!(build(&[member(0, 0)], 7)
        .unwrap()
        .iter()
        .all(Option::is_none));
    assert!(build(&[], 7).unwrap().iter().all(Option::is_none));
    // Sizes: primes up to MAX_TABLE.
    assert_eq!(build(&[], 65_539), Err(BuildError::BadSize(65_539)));
    assert_eq!(build(&[], 1), Err(BuildError::BadSize(1)));
    assert_eq!(build(&[], 9), Err(BuildError::BadSize(9)));
    assert!(build(&[member(0, 1)], MAX_TABLE).is_ok());
    assert!(build(&[member(0, 1)], 2).is_ok());
    // As many backends as entries fit; one more does not, counting only those
    // with a weight.
    let ms: Vec<Member> = (0..7).map(|i| member(i, 1)).collect();
    assert_eq!(counts(&build(&ms, 7).unwrap(), 7), vec![1; 7]);
    let mut more = ms.clone();
    more.push(member(7, 1));
    assert_eq!(build(&more, 7), Err(BuildError::TooMany(8, 7)));
    more[7].weight = 0;
    assert!(build(&more, 7).is_ok());
}

/// The table a configuration gives must not change between releases: balancers
/// of one cluster, and a restarted one, must agree on every entry, or dialogs
/// move. A digest of a few tables, recorded when the builder was released.
#[test]
#[cfg(feature = "user")]
fn tables_are_stable_across_releases() {
    let digest = |t: &[Option<usize>]| {
        t.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, e| {
            (h ^ e.map_or(0xff, |i| i as u64)).wrapping_mul(0x100_0000_01b3)
        })
    };
    let ms: Vec<Member> = (0..5).map(|i| member(i, 1 + i as u32 % 3)).collect();
    let got: Vec<u64> = [13u32, 251, 4099]
        .iter()
        .map(|&m| digest(&build(&ms, m).unwrap()))
        .collect();
    assert_eq!(got, STABLE, "{got:#x?}");
}

#[cfg(feature = "user")]
const STABLE: [u64; 3] = [
    0x1c1e_76b3_ad8a_d923,
    0xae41_9bbd_6934_dcd1,
    0x90c2_1977_b8c2_2873,
];
