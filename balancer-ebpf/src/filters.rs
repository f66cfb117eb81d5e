//! Requests a service refuses by their content: the User-Agent scanner filter
//! (`balancer_common::useragent` has the rules and user space's twin).
//!
//! The search is a global BPF function (`ua_search`, `#[unsafe(no_mangle)]`:
//! BTF linkage global), which the verifier checks once, on its own, instead of
//! once more for every path that reaches the call (the header scan's step is
//! what it would walk most). Inside, the header scan and then the patterns run
//! from `bpf_loop` as the key search does. Stack: 6.1 counts each frame of a
//! call chain (a callback's too) at a multiple of 32 bytes against 512, and the
//! program's own frame takes 352; the steps get the scratch memory through
//! their context instead of a lookup (whose key would take a stack slot), which
//! keeps the scan step's frame at 64 bytes, so the deepest chain through the
//! filter (32 + 352 + 32 + 64) is no deeper than the key search's (32 + 352 + 96).

use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_xdp_load_bytes},
    macros::map,
    maps::Array,
    programs::XdpContext,
};
use balancer_common::{
    callid::{Header, Span, SCAN_MAX},
    maps::{UaPattern, MAX_UA_PATTERNS},
    useragent::matches,
};

use crate::{
    bounds::ptr_at,
    maps::{Scratch, SCRATCH},
    parse::Udp,
};

/// User-Agent prefixes, lower case; the first empty entry ends the list.
#[map]
pub static SCANNERS: Array<UaPattern> = Array::with_max_entries(MAX_UA_PATTERNS, 0);

/// `ua_search`'s answer for a scanner.
const YES: i64 = 1;

/// Whether the datagram is a request whose User-Agent begins with a `SCANNERS`
/// pattern. `loaded`: SCRATCH's buffer already holds the payload's first
/// `min(avail, SCAN_MAX)` bytes (the key search copied them); otherwise they
/// are copied here. Uses SCRATCH's header scan (`key.scan`): call it before
/// the key search or once its result is taken.
#[inline(always)]
pub fn is_scanner(ctx: &XdpContext, u: &Udp, loaded: bool) -> bool {
    // Responses are never filtered.
    if let Ok(p) = ptr_at::<[u8; 4]>(ctx, u.l4 + 8) {
        if unsafe { *p } == *b"SIP/" {
            return false;
        }
    }
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let n = if u.avail > SCAN_MAX as u32 {
        SCAN_MAX as u32
    } else {
        u.avail
    };
    if n == 0 {
        return false;
    }
    if !loaded {
        // The length masked into [1, SCAN_MAX] at the call: 6.1's verifier does
        // not learn `n >= 1` from `n != 0` for a copy spilled to the stack. Read
        // back volatile, or the compiler, which knows the mask changes nothing,
        // drops it (`key::key_of`'s survives by luck of register allocation).
        let n1 = unsafe { core::ptr::read_volatile(&n) };
        let n1 = (n1.wrapping_sub(1) & (SCAN_MAX as u32 - 1)) + 1;
        let off = (u.l4 + 8) as u32;
        let rc =
            unsafe { bpf_xdp_load_bytes(ctx.ctx, off, (*s).buf.bytes.as_mut_ptr() as *mut _, n1) };
        if rc != 0 {
            return false;
        }
    }
    ua_search(n, (n == u.payload_len) as u32) == YES
}

/// The User-Agent search over the first `n` bytes of SCRATCH's buffer
/// (`complete`: they are the whole datagram): `YES` for a scanner, else 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ua_search(n: u32, complete: u32) -> i64 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // A global function is verified for any argument.
    let n = if n > SCAN_MAX as u32 {
        SCAN_MAX as u32
    } else {
        n
    };
    let mut c = Search {
        s,
        value: Span { start: 0, len: 0 },
        hit: 0,
    };
    unsafe {
        (*s).key.scan.reset(Header::USER_AGENT, n, complete != 0);
        // Every step takes a word at least; one more finds the end.
        bpf_loop(
            n.div_ceil(8) + 1,
            scan_step as *mut _,
            &mut c as *mut Search as *mut _,
            0,
        );
        let Some(v) = (*s).key.scan.result() else {
            return 0;
        };
        c.value = v;
        bpf_loop(
            MAX_UA_PATTERNS,
            pattern_step as *mut _,
            &mut c as *mut Search as *mut _,
            0,
        );
    }
    if c.hit != 0 {
        YES
    } else {
        0
    }
}

/// What the steps share with `ua_search`, on its stack: the scratch memory
/// (no lookup, so no key, in the steps' frames), the value, the answer.
#[repr(C)]
struct Search {
    s: *mut Scratch,
    value: Span,
    hit: u32,
}

/// One `bpf_loop` step of the User-Agent scan. Returns 1 to stop.
#[inline(never)]
extern "C" fn scan_step(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let s = unsafe { (*(ctx as *mut Search)).s };
    unsafe { (*s).key.scan.advance(&(*s).buf) as i64 }
}

/// Compares the value with pattern `index`. Returns 1 to stop: a match, or the
/// end of the list.
#[inline(never)]
extern "C" fn pattern_step(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let c = ctx as *mut Search;
    let Some(p) = SCANNERS.get(index as u32) else {
        return 1;
    };
    if p.len == 0 {
        return 1;
    }
    unsafe {
        if matches(&(*(*c).s).buf, (*c).value, p) {
            (*c).hit = 1;
            return 1;
        }
    }
    0
}
