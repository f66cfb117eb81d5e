//! IP fragments: the first fragment's decision, remembered for the later ones
//! (no UDP header, no Call-ID), which follow it.

use aya_ebpf::{helpers::generated::bpf_ktime_get_coarse_ns, macros::map, maps::LruHashMap};
use balancer_common::maps::{reason, FragEntry, FragKey, FRAG_TIMEOUT_S};

use crate::{events, maps::SCRATCH, parse::Udp};

/// Fragmented datagrams in flight: the first fragment's decision.
#[map]
pub static FRAGS: LruHashMap<FragKey, FragEntry> = LruHashMap::with_max_entries(65536, 0);

/// Remembers a first fragment's decision (`how`, one of `FRAG_*`, and `addr`)
/// for the later fragments.
#[inline(always)]
pub fn remember(u: &Udp, addr: &[u8; 16], how: u32) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    unsafe {
        (*s).frag_key.src = u.src.addr;
        (*s).frag_key.dst = u.dst.addr;
        (*s).frag_key.id = u.frag_id;
        (*s).frag_key.family = u.family as u32;
        (*s).frag_entry.addr = *addr;
        (*s).frag_entry.how = how;
        (*s).frag_entry._pad = 0;
        (*s).frag_entry.seen = bpf_ktime_get_coarse_ns();
        if let Err(e) = FRAGS.insert(&(*s).frag_key, &(*s).frag_entry, 0) {
            events::note(events::FRAGMENT_NOT_STORED, 0, e.into());
        }
    }
}

/// The decision a later fragment follows, read in place (a copy would not fit
/// on the stack). None fresh (`FRAGMENT_MISS`): it came before its first
/// fragment, or belongs to traffic that is not ours.
#[inline(always)]
pub fn decision(key: &FragKey) -> Result<&'static FragEntry, u32> {
    let e = match unsafe { FRAGS.get(key) } {
        Some(e) => e,
        None => return Err(reason::FRAGMENT_MISS),
    };
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(e.seen) > FRAG_TIMEOUT_S * 1_000_000_000 {
        return Err(reason::FRAGMENT_MISS);
    }
    Ok(e)
}
