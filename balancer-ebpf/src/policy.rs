//! Who may use a service: the block list, the service's allow-list, the size
//! limit and the per-source rate limits (datagrams, new dialogs). Applied to
//! datagrams addressed to a service, before any state is created for them.

use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{lpm_trie::Key, Array, LpmTrie},
    programs::XdpContext,
};
use balancer_common::{
    hints::{self, block_bit, guard_bit, BLOCK_HINTS, GUARD_HINTS, HINT_WORDS},
    limits::{rate_slot, source_prefix, RateSlot, Verdict, RATE_SLOTS},
    maps::{
        reason, AllowCidr, Block, Cidr, RateKey, Service, AF_INET, AF_INET6, ALLOW_ENTRIES,
        ALLOW_PREFIX_BITS, BLOCK_ENTRIES, CIDR_FAMILY_BITS, SERVICE_ALLOW_LIST,
    },
    sip,
};

use crate::{bounds::ptr_at, counters::count, guard, maps::SCRATCH, parse::Udp};

/// The block list (every service): prefix -> until when. (aya adds the
/// `BPF_F_NO_PREALLOC` an LPM trie needs.)
#[map]
pub static BLOCKED: LpmTrie<Cidr, Block> = LpmTrie::with_max_entries(BLOCK_ENTRIES, 0);

/// The services' allow-lists: (service, prefix) -> unused.
#[map]
pub static ALLOWED: LpmTrie<AllowCidr, u32> = LpmTrie::with_max_entries(ALLOW_ENTRIES, 0);

/// Per (service, source) buckets, by a seeded hash (`limits::rate_slot`).
#[map]
pub static RATES: Array<RateSlot> = Array::with_max_entries(RATE_SLOTS, 0);

/// `RATES`' hash seed (slot 0), drawn by user space at first load.
#[map]
pub static SEED: Array<u32> = Array::with_max_entries(1, 0);

/// Where `GUARD` and `BLOCKED` may hold an entry for a source
/// (`balancer_common::hints`): most datagrams skip both lookups.
#[map]
pub static HINTS: Array<u64> = Array::with_max_entries(2 * HINT_WORDS, 0);

/// `admit`'s input (filled by the caller) and its keys, in per-CPU memory:
/// the main path's stack has no room for them.
#[repr(C)]
pub struct Admission {
    pub service: Service,
    /// The source (the block list's key data).
    pub cidr: Key<Cidr>,
    pub payload_len: u32,
    pub l4: u32,
    pub first_fragment: u32,
    /// Non-zero: the datagram's key came from the message (not a fallback).
    keyed: u32,
    /// Non-zero: the datagram is addressed to `service` (not a backend's).
    forward: u32,
    /// The clock as `admit` read it, for the rest of the datagram's path.
    pub now: u64,
    /// The source's bucket in `RATES`.
    slot: u32,
    allow: Key<AllowCidr>,
    rate: RateKey,
}

/// Admits a datagram to a service from its source (`Scratch::policy`), or
/// names the reason it is dropped (0: admitted). Takes a datagram token. A
/// subprogram of its own: its branches stay out of the caller's verifier
/// state (it returns 0 or a reason, nothing else the caller goes on with),
/// and its keys out of the caller's stack.
#[inline(never)]
pub fn admit(ctx: &XdpContext) -> u32 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return reason::MALFORMED;
    };
    let p = unsafe { &mut (*s).policy };
    match check(ctx, p) {
        Ok(()) => 0,
        Err(r) => r,
    }
}

#[inline(always)]
fn check(ctx: &XdpContext, p: &mut Admission) -> Result<(), u32> {
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    p.now = now;
    if hinted(GUARD_HINTS, guard_bit(&p.cidr.data.addr))
        && !guard::source_ok(ctx, &p.cidr.data.addr, p.cidr.data.family)
    {
        return Err(reason::SPOOFED);
    }
    if p.cidr.data.family == AF_INET6 as u32 && p.first_fragment == 0 {
        // RFC 8200 8.1: an IPv6 UDP datagram with a zero checksum is discarded.
        let check = ptr_at::<u16>(ctx, (p.l4 & 127) as usize + 6)?;
        if unsafe { *check } == 0 {
            return Err(reason::ZERO_CHECKSUM);
        }
    }
    let svc = &p.service;
    if svc.max_size != 0 && p.payload_len > svc.max_size {
        return Err(reason::TOO_BIG);
    }
    let bits = if p.cidr.data.family == AF_INET as u32 {
        32
    } else {
        128
    };
    if hinted(BLOCK_HINTS, block_bit(&p.cidr.data.addr)) {
        p.cidr.prefix_len = CIDR_FAMILY_BITS + bits;
        if let Some(b) = BLOCKED.get(&p.cidr) {
            if b.until == 0 || now < b.until {
                return Err(reason::BLOCKED);
            }
        }
    }
    if svc.flags & SERVICE_ALLOW_LIST != 0 {
        p.allow.prefix_len = ALLOW_PREFIX_BITS + bits;
        p.allow.data.service = svc.id;
        p.allow.data.family = p.cidr.data.family;
        p.allow.data.addr = p.cidr.data.addr;
        if ALLOWED.get(&p.allow).is_none() {
            return Err(reason::NOT_ALLOWED);
        }
    }
    if svc.interval == 0 && svc.dialog_interval == 0 {
        return Ok(());
    }
    p.rate.addr = source_prefix(&p.cidr.data.addr, p.cidr.data.family as u8);
    p.rate.family = p.cidr.data.family;
    p.rate.service = svc.id;
    let seed = SEED.get(0).copied().unwrap_or(0);
    p.slot = rate_slot(&p.rate, seed);
    let Some(slot) = RATES.get_ptr_mut(p.slot) else {
        return Ok(());
    };
    let slot = unsafe { &mut *slot };
    let v = slot.bucket.datagram(svc, now);
    if v == Verdict::Blocked {
        slot.source = p.rate;
    }
    verdict(v, reason::RATE_LIMITED)
}

/// Whether a hint map (its first word `base`) has `bit` set.
#[inline(always)]
fn hinted(base: u32, bit: u32) -> bool {
    match HINTS.get(base + (bit >> 6)) {
        Some(w) => hints::is_set(*w, bit),
        // Out of range cannot happen; looking is always right.
        None => true,
    }
}

/// Takes a new-dialog token for the source `admit` last saw (its bucket key
/// is still in `Scratch::policy`).
#[inline(always)]
pub fn new_dialog(svc: &Service) -> Result<(), u32> {
    if svc.dialog_interval == 0 {
        return Ok(());
    }
    let s = SCRATCH.get_ptr_mut(0).ok_or(reason::MALFORMED)?;
    let (now, idx) = unsafe { ((*s).policy.now, (*s).policy.slot) };
    let Some(slot) = RATES.get_ptr_mut(idx) else {
        return Ok(());
    };
    let slot = unsafe { &mut *slot };
    let v = slot.bucket.dialog(svc, now);
    if v == Verdict::Blocked {
        slot.source = unsafe { (*s).policy.rate };
    }
    verdict(v, reason::DIALOG_LIMITED)
}

#[inline(always)]
fn verdict(v: Verdict, over: u32) -> Result<(), u32> {
    match v {
        Verdict::Pass => Ok(()),
        Verdict::Over => Err(over),
        Verdict::Blocked => {
            count(over);
            Err(reason::AUTO_BLOCKED)
        }
        Verdict::StillBlocked => Err(reason::BLOCKED),
    }
}

/// Records whether the datagram's key came from the message, for
/// [`starts_dialog`] (volatile: the verifier must not keep the value).
#[inline(always)]
pub fn set_keyed(keyed: bool) {
    if let Some(s) = SCRATCH.get_ptr_mut(0) {
        unsafe { core::ptr::write_volatile(&mut (*s).policy.keyed, keyed as u32) };
    }
}

/// Whether the datagram may create dialog state: its key came from the
/// message (fallbacks never do) and it is a request that begins a dialog.
#[inline(always)]
pub fn starts_dialog(ctx: &XdpContext, u: &Udp) -> bool {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    if unsafe { core::ptr::read_volatile(&(*s).policy.keyed) } == 0 {
        return false;
    }
    request_starts_dialog(ctx, u)
}

/// Whether the datagram is a request that begins a dialog (by its method).
#[inline(always)]
pub fn request_starts_dialog(ctx: &XdpContext, u: &Udp) -> bool {
    match ptr_at::<[u8; 10]>(ctx, u.l4 + 8) {
        Ok(p) => sip::starts_dialog(unsafe { &*p }),
        Err(_) => false,
    }
}

/// Whether the datagram is a request that never belongs to a dialog.
#[inline(always)]
pub fn never_in_dialog(ctx: &XdpContext, u: &Udp) -> bool {
    match ptr_at::<[u8; 10]>(ctx, u.l4 + 8) {
        Ok(p) => sip::never_in_dialog(unsafe { &*p }),
        Err(_) => false,
    }
}

/// Whether the datagram's key came from the message (see [`set_keyed`]).
#[inline(always)]
pub fn keyed() -> bool {
    match SCRATCH.get_ptr_mut(0) {
        Some(s) => unsafe { core::ptr::read_volatile(&(*s).policy.keyed) != 0 },
        None => false,
    }
}

/// The clock as `admit` read it for this datagram.
#[inline(always)]
pub fn now() -> u64 {
    match SCRATCH.get_ptr_mut(0) {
        Some(s) => unsafe { (*s).policy.now },
        None => unsafe { bpf_ktime_get_coarse_ns() },
    }
}

/// Records the datagram's direction: addressed to the service `admit` saw
/// (`true`), or a backend's (volatile, as [`set_keyed`]).
#[inline(always)]
pub fn set_forward(forward: bool) {
    if let Some(s) = SCRATCH.get_ptr_mut(0) {
        unsafe { core::ptr::write_volatile(&mut (*s).policy.forward, forward as u32) };
    }
}

/// The service a datagram to a service is for, as `admit` saw it (read back
/// from memory instead of asking the service map again), or `None` for a
/// backend's datagram.
#[inline(always)]
pub fn forward_service() -> Option<&'static Service> {
    let s = SCRATCH.get_ptr_mut(0)?;
    unsafe {
        if core::ptr::read_volatile(&(*s).policy.forward) == 0 {
            return None;
        }
        Some(&(*s).policy.service)
    }
}
