//! Bit maps that say where the reverse-path map (`GUARD`) and the block list
//! (`BLOCKED`) may hold an entry for a source, so that most datagrams (a
//! client's, on an ordinary day) skip those lookups: a bit in an array the
//! verifier inlines costs a few instructions, a hash or trie lookup tens of
//! ns. A set bit only means "look"; a clear one means there is nothing to find.
//! User space sets the bits from what it writes into the maps.

/// Bits per map.
pub const HINT_BITS: u32 = 1 << 16;
/// 64-bit words per map; the `HINTS` array holds the reverse-path words, then
/// the block-list words.
pub const HINT_WORDS: u32 = HINT_BITS / 64;
pub const GUARD_HINTS: u32 = 0;
pub const BLOCK_HINTS: u32 = HINT_WORDS;

/// The reverse-path bit of an address (IPv4 in the first four bytes): a hash,
/// since `GUARD` holds whole addresses.
#[inline(always)]
pub fn guard_bit(addr: &[u8; 16]) -> u32 {
    let w = |i: usize| u32::from_le_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let x = w(0) ^ w(4) ^ w(8) ^ w(12);
    x.wrapping_mul(0x9e37_79b1) >> 16
}

/// The block-list bit of an address: its first 16 bits, since the block list
/// holds prefixes (one of 16 bits or longer sets one bit, a shorter one all
/// the bits it covers).
#[inline(always)]
pub fn block_bit(addr: &[u8; 16]) -> u32 {
    (addr[0] as u32) << 8 | addr[1] as u32
}

/// The block-list bits a prefix covers: the first and how many.
pub fn block_bits(addr: &[u8; 16], prefix_len: u32) -> (u32, u32) {
    if prefix_len >= 16 {
        return (block_bit(addr), 1);
    }
    let n = 1u32 << (16 - prefix_len);
    (block_bit(addr) & !(n - 1), n)
}

/// Sets `bit` in a map of [`HINT_WORDS`] words.
pub fn set(words: &mut [u64], bit: u32) {
    words[(bit / 64) as usize] |= 1 << (bit % 64);
}

/// Whether `bit` is set in `word` (the word `bit / 64` of its map).
#[inline(always)]
pub fn is_set(word: u64, bit: u32) -> bool {
    (word >> (bit & 63)) & 1 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut x = [0u8; 16];
        x[..4].copy_from_slice(&a);
        x
    }

    #[test]
    fn a_prefix_covers_the_bits_of_every_address_in_it() {
        for (net, len, inside) in [
            (v4([10, 0, 0, 0]), 8, v4([10, 200, 3, 4])),
            (v4([10, 0, 1, 0]), 24, v4([10, 0, 1, 77])),
            (v4([0, 0, 0, 0]), 0, v4([203, 0, 113, 9])),
            (v4([192, 168, 0, 0]), 13, v4([192, 175, 255, 255])),
        ] {
            let mut words = vec![0u64; HINT_WORDS as usize];
            let (first, n) = block_bits(&net, len);
            for b in first..first + n {
                set(&mut words, b);
            }
            let bit = block_bit(&inside);
            assert!(is_set(words[(bit / 64) as usize], bit), "{net:?}/{len}");
            // Outside the prefix (when it leaves room): not set.
            if len >= 8 {
                let mut out = net;
                out[0] ^= 0x80;
                let bit = block_bit(&out);
                assert!(!is_set(words[(bit / 64) as usize], bit), "{net:?}/{len}");
            }
        }
    }

    #[test]
    fn guard_bits_spread_addresses_of_one_subnet() {
        let mut seen = std::collections::HashSet::new();
        for h in 0..=255u8 {
            seen.insert(guard_bit(&v4([10, 0, 2, h])));
        }
        assert!(seen.len() > 250, "{} distinct bits of 256", seen.len());
        assert!(seen.iter().all(|b| *b < HINT_BITS));
    }
}
