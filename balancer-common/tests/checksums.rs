//! Incremental checksum updates (RFC 1624) against the checksum recomputed from
//! scratch (RFC 1071) over the rewritten bytes: the oracle is the definition, not
//! the incremental formula.

use balancer_common::csum::{fold, replace128, replace16, replace32, udp_nonzero};
use proptest::prelude::*;

/// RFC 1071: the one's complement of the one's-complement sum of the 16-bit
/// words, read as they sit in memory (the sum is byte-order independent).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for c in data.chunks(2) {
        sum += u16::from_ne_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `data` with its checksum written at `at`, as a sender would.
fn with_checksum(mut data: Vec<u8>, at: usize) -> (Vec<u8>, u16) {
    data[at..at + 2].copy_from_slice(&[0, 0]);
    let c = checksum(&data);
    data[at..at + 2].copy_from_slice(&c.to_ne_bytes());
    (data, c)
}

/// The checksum field is correct when the whole sums to 0xffff (its complement 0).
fn verifies(data: &[u8]) -> bool {
    checksum(data) == 0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn replace16_equals_recomputing(data in prop::collection::vec(any::<u8>(), 24..64),
                                    field in 2usize..10, new in any::<u16>()) {
        let (mut d, c) = with_checksum(data, 0);
        let at = field * 2;
        let old = u16::from_ne_bytes([d[at], d[at + 1]]);
        d[at..at + 2].copy_from_slice(&new.to_ne_bytes());
        let inc = replace16(c, old, new);
        d[0..2].copy_from_slice(&inc.to_ne_bytes());
        prop_assert!(verifies(&d), "{:04x} -> {:04x}", old, new);
    }

    #[test]
    fn replace32_equals_recomputing(data in prop::collection::vec(any::<u8>(), 24..64),
                                    field in 1usize..5, new in any::<u32>()) {
        let (mut d, c) = with_checksum(data, 0);
        let at = field * 4;
        let old = u32::from_ne_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]);
        d[at..at + 4].copy_from_slice(&new.to_ne_bytes());
        let inc = replace32(c, old, new);
        d[0..2].copy_from_slice(&inc.to_ne_bytes());
        prop_assert!(verifies(&d));
    }

    #[test]
    fn replace128_equals_recomputing(data in prop::collection::vec(any::<u8>(), 40..80),
                                     new in any::<[u8; 16]>()) {
        let (mut d, c) = with_checksum(data, 0);
        let old: [u8; 16] = d[8..24].try_into().unwrap();
        d[8..24].copy_from_slice(&new);
        let inc = replace128(c, &old, &new);
        d[0..2].copy_from_slice(&inc.to_ne_bytes());
        prop_assert!(verifies(&d));
    }

    #[test]
    fn fold_is_the_ones_complement_sum(a in any::<u32>()) {
        // Folding a 32-bit accumulator adds its halves with end-around carry.
        let mut s = a as u64;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        prop_assert_eq!(fold(a) as u64, s);
    }
}

#[test]
fn fold_carries_twice() {
    // 0xffff + 0xffff = 0x1fffe: one fold gives 0xffff with no carry left; the
    // worst case needs the second fold.
    assert_eq!(fold(0xffff_ffff), 0xffff);
    assert_eq!(fold(0x0001_ffff), 0x0001);
    assert_eq!(fold(0), 0);
    assert_eq!(fold(0x1234), 0x1234);
}

#[test]
fn udp_never_sends_a_zero_checksum() {
    // RFC 768: a computed zero is sent as all ones; zero means "none".
    assert_eq!(udp_nonzero(0), 0xffff);
    for c in [1, 0x8000, 0xfffe, 0xffff] {
        assert_eq!(udp_nonzero(c), c);
    }
}

#[test]
fn replacing_a_field_by_itself_changes_nothing() {
    for c in [0x0000, 0x1234, 0xfffe] {
        assert_eq!(replace16(c, 0xabcd, 0xabcd), c);
        assert_eq!(replace32(c, 0xdead_beef, 0xdead_beef), c);
        let a = [7u8; 16];
        assert_eq!(replace128(c, &a, &a), c);
    }
}
