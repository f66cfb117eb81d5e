//! The key hash against its definition: 32-bit FNV-1a (offset basis 2166136261,
//! prime 16777619) over at most `HASH_MAX` bytes, then MurmurHash3's `fmix32`.
//! Every balancer of a cluster must compute it alike, so it is checked against
//! the published constants, not against itself.

use balancer_common::hash::{fmix32, hash_addr, hash_bytes, hash_span, HASH_MAX};
use balancer_common::{ScanBuf, Span};
use proptest::prelude::*;

fn fnv1a(seed: u32, bytes: impl IntoIterator<Item = u8>) -> u32 {
    bytes
        .into_iter()
        .fold(seed, |h, b| (h ^ b as u32).wrapping_mul(16_777_619))
}

/// MurmurHash3's 32-bit finaliser (Appleby, `fmix32`).
fn murmur_fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

fn reference(key: &[u8]) -> u32 {
    murmur_fmix(fnv1a(2_166_136_261, key.iter().copied().take(HASH_MAX)))
}

#[test]
fn published_vectors() {
    // FNV-1a 32 of "" is the offset basis and of "a" is 0xe40c292c (the FNV
    // reference test vectors); fmix32 of 0 is 0.
    assert_eq!(fnv1a(2_166_136_261, *b"a"), 0xe40c_292c);
    assert_eq!(fmix32(0), 0);
    assert_eq!(hash_bytes(b""), murmur_fmix(0x811c_9dc5));
    assert_eq!(hash_bytes(b"a"), murmur_fmix(0xe40c_292c));
    assert_eq!(HASH_MAX, 256);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn hashes_equal_the_definition(key in prop::collection::vec(any::<u8>(), 0..600),
                                   start in 0u32..64) {
        prop_assert_eq!(hash_bytes(&key), reference(&key));
        prop_assert_eq!(fmix32(key.len() as u32), murmur_fmix(key.len() as u32));
        // The kernel's path, on the same bytes anywhere in the buffer.
        let mut m = vec![b'x'; start as usize];
        m.extend_from_slice(&key);
        let mut buf = ScanBuf::zeroed();
        buf.fill(&m);
        let span = Span { start, len: key.len() as u32 };
        prop_assert_eq!(hash_span(&buf, span), reference(&key));
    }

    #[test]
    fn the_address_hash_is_fnv_of_family_then_address(addr in any::<[u8; 16]>(), family in any::<u8>()) {
        // The family is folded into the offset basis; the port is not hashed.
        let want = murmur_fmix(fnv1a(2_166_136_261 ^ family as u32, addr));
        prop_assert_eq!(hash_addr(&addr, family), want);
    }
}

#[test]
fn only_the_first_hash_max_bytes_count() {
    let mut a = vec![b'k'; HASH_MAX];
    let b = a.clone();
    a.push(b'!');
    assert_eq!(hash_bytes(&a), hash_bytes(&b));
    let mut buf = ScanBuf::zeroed();
    buf.fill(&a);
    let whole = Span {
        start: 0,
        len: a.len() as u32,
    };
    assert_eq!(hash_span(&buf, whole), hash_bytes(&b));
    // One byte fewer is another key.
    assert_ne!(hash_bytes(&b[..HASH_MAX - 1]), hash_bytes(&b));
}
