//! The key a service hashes to pick a backend, from the message (the Call-ID
//! searched in place, `lines.rs`; otherwise a search in `bpf_loop` steps over a
//! copy of the payload), the source address, or a round-robin counter.

use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_xdp_load_bytes},
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
};
use balancer_common::{
    callid::SCAN_MAX,
    hash::{hash_addr, hash_span},
    keys::{is_keepalive, KeyScan, KeySource},
    line_scan::{ABSENT, FOUND, KEEPALIVE},
    maps::{reason, MAX_SERVICES},
};

use crate::{counters::count, events, lines, maps::SCRATCH, parse::Udp};

/// Round-robin counters (`ALG_ROUND_ROBIN`), per CPU, indexed by service id: the
/// counter is the key hash, post-incremented per datagram.
#[map]
pub static RR: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// The hash of the service's key, from where its algorithm says
/// ([`KeySource::of`], as `keys::message_dispatch` in user space); `None`
/// (counted) when the message holds no key, and the caller falls back to the
/// source address.
#[inline(always)]
pub fn key_of(ctx: &XdpContext, u: &Udp, alg: u32, id: u32) -> Result<Option<u32>, u32> {
    match KeySource::of(alg) {
        KeySource::Source => {
            count(reason::SOURCE);
            return Ok(Some(hash_addr(&u.src.addr, u.family)));
        }
        KeySource::RoundRobin => {
            // Per CPU, so no atomics: each CPU walks the table on its own.
            let Some(c) = RR.get_ptr_mut(id) else {
                events::note(events::NO_ROUND_ROBIN, id, 0);
                return Err(reason::MALFORMED);
            };
            let h = unsafe { *c };
            unsafe { *c = h.wrapping_add(1) };
            count(reason::ROUND_ROBIN);
            return Ok(Some(h));
        }
        KeySource::Message => {}
    }
    let s = SCRATCH.get_ptr_mut(0).ok_or(reason::MALFORMED)?;
    let len = u.payload_len;
    // A first fragment holds only part of the payload: scan what is here, and
    // the search knows the message goes on.
    let n = if u.avail > SCAN_MAX as u32 {
        SCAN_MAX as u32
    } else {
        u.avail
    };
    if n > 0 {
        let off = (u.l4 + 8) as u32;
        // The Call-ID in place first; the byte machine over a copy only where
        // that defers (and for the other algorithms).
        unsafe { (*s).lines.reset(n, n == len) };
        match lines::search(ctx.ctx, unsafe { &mut (*s).lines }, off, alg) {
            FOUND => {
                if let Some(h) = lines::hash_found(ctx, s, off) {
                    count(reason::CALLID);
                    return Ok(Some(h));
                }
            }
            ABSENT => {
                count(reason::FALLBACK_NO_CALLID);
                return Ok(None);
            }
            KEEPALIVE => {
                count(reason::FALLBACK_KEEPALIVE);
                return Ok(None);
            }
            _ => {}
        }
        // The length masked into [1, SCAN_MAX] right at the call (a no-op here):
        // 6.1's verifier does not learn `n >= 1` from `n > 0` and refuses a
        // helper access that might be empty.
        let n1 = ((n - 1) & (SCAN_MAX as u32 - 1)) + 1;
        let rc =
            unsafe { bpf_xdp_load_bytes(ctx.ctx, off, (*s).buf.bytes.as_mut_ptr() as *mut _, n1) };
        if rc == 0 {
            // Request-URI user, header scan and From/To URI: one state machine run
            // from one bpf_loop call site. `reset` only stores (the choice by
            // algorithm is the first step's), so the verifier state does not split
            // by algorithm here and the step function is not checked once per split.
            unsafe {
                (*s).key.reset(alg, n, n == len);
                bpf_loop(
                    KeyScan::steps(n),
                    key_step as *mut _,
                    core::ptr::null_mut(),
                    0,
                );
                if let Some((span, r)) = (*s).key.result() {
                    count(r);
                    return Ok(Some(hash_span(&(*s).buf, span)));
                }
            }
        }
    }
    count(if is_keepalive(unsafe { &(*s).buf }, n) {
        reason::FALLBACK_KEEPALIVE
    } else {
        reason::FALLBACK_NO_CALLID
    });
    Ok(None)
}

/// One `bpf_loop` step of the key search (see `KeyScan::advance`). Returns 1 to stop.
#[inline(never)]
extern "C" fn key_step(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    match SCRATCH.get_ptr_mut(0) {
        Some(s) => unsafe { (*s).key.advance(&(*s).buf) as i64 },
        None => 1,
    }
}
