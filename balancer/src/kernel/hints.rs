//! `HINTS`: the bits that let most datagrams skip the reverse-path and
//! block-list lookups (`balancer_common::hints`), set from what those maps hold.

use anyhow::Result;
use aya::maps::{Array, MapData};
use balancer_common::hints::{self, HINT_WORDS};
use balancer_common::maps::names;

use super::Dataplane;

/// The reverse-path hint words for a set of `GUARD` addresses.
pub fn guard_words<'a>(addrs: impl IntoIterator<Item = &'a [u8; 16]>) -> Vec<u64> {
    let mut words = vec![0u64; HINT_WORDS as usize];
    for a in addrs {
        hints::set(&mut words, hints::guard_bit(a));
    }
    words
}

/// The block-list hint words for a set of (address, prefix length) networks.
pub fn block_words<'a>(nets: impl IntoIterator<Item = (&'a [u8; 16], u32)>) -> Vec<u64> {
    let mut words = vec![0u64; HINT_WORDS as usize];
    for (a, len) in nets {
        let (first, n) = hints::block_bits(a, len);
        for b in first..first + n {
            hints::set(&mut words, b);
        }
    }
    words
}

impl Dataplane {
    /// Writes the hint words starting at `base` where they differ. Called
    /// after the entries they announce are in their map (a bit set early
    /// only costs a lookup; one set late would skip an entry).
    pub fn write_hints(&mut self, base: u32, words: &[u64]) -> Result<()> {
        let mut m: Array<&mut MapData, u64> = self.map(names::HINTS)?;
        for (i, w) in words.iter().enumerate() {
            let idx = base + i as u32;
            if m.get(&idx, 0)? != *w {
                m.set(idx, *w, 0)?;
            }
        }
        Ok(())
    }
}
