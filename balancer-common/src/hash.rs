//! The key hash. FNV-1a (cheap per byte, no tables) with a murmur3 finaliser so the
//! low bits that pick a Maglev slot are well mixed. Stable forever: changing it
//! moves every dialog, and all balancers of a cluster must agree on it.

use crate::callid::{ScanBuf, Span};

/// Bytes of a key that enter the hash; longer Call-IDs are hashed by their prefix.
pub const HASH_MAX: usize = 256;

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

#[inline(always)]
pub const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Hash of the key bytes at `span` inside `buf` (the kernel's path).
#[inline(always)]
pub fn hash_span(buf: &ScanBuf, span: Span) -> u32 {
    let n = span.len as usize;
    let start = span.start as usize;
    let mut h = FNV_OFFSET;
    let mut k = 0;
    while k < HASH_MAX {
        if k >= n {
            break;
        }
        h ^= buf.at(start + k) as u32;
        h = h.wrapping_mul(FNV_PRIME);
        k += 1;
    }
    fmix32(h)
}

/// Hash of a key held in a slice (user space); equal to [`hash_span`] on the same bytes.
pub fn hash_bytes(key: &[u8]) -> u32 {
    let mut h = FNV_OFFSET;
    for &b in key.iter().take(HASH_MAX) {
        h ^= b as u32;
        h = h.wrapping_mul(FNV_PRIME);
    }
    fmix32(h)
}

/// The fallback key: the source address (16 bytes, IPv4 in the first 4) and family.
/// The port is left out so a phone's keepalives from any port stay together.
#[inline(always)]
pub fn hash_addr(addr: &[u8; 16], family: u8) -> u32 {
    let mut h = FNV_OFFSET ^ family as u32;
    let mut k = 0;
    while k < 16 {
        h ^= addr[k] as u32;
        h = h.wrapping_mul(FNV_PRIME);
        k += 1;
    }
    fmix32(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_and_slice_agree() {
        let mut buf = ScanBuf::zeroed();
        let msg = b"xxabcdef@example.com";
        buf.fill(msg);
        let span = Span { start: 2, len: 18 };
        assert_eq!(hash_span(&buf, span), hash_bytes(&msg[2..]));
    }

    #[test]
    fn known_value_is_stable() {
        // Changing the hash moves every dialog: this pins it.
        assert_eq!(hash_bytes(b"a84b4c76e66710@pc33.atlanta.com"), 0x0a1e_551d);
    }
}
