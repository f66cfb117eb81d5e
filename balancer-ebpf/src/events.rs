//! Rare events (a map update refused, a state user space should never leave),
//! logged with aya-log. Noted in per-CPU memory where they happen and logged at
//! the program's exit: the verifier checks one set of log calls where few
//! registers are live, not one per event on every path that reaches it (which
//! more than doubled the instructions it processes). One event per packet: the
//! last. With the log level at 0 (`aya_log::LEVEL`), the verifier removes the
//! log calls; what remains is the check of the note.

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::{error, warn};

use crate::maps::SCRATCH;

/// An event noted for the exit: `kind` (0: none) and two values it reports.
#[repr(C)]
pub struct Event {
    pub kind: u32,
    pub a: u32,
    pub b: i64,
}

/// AFFINITY refused an entry: a = service, b = error.
pub const AFFINITY_NOT_STORED: u32 = 1;
/// FRAGS refused a first fragment's decision: b = error.
pub const FRAGMENT_NOT_STORED: u32 = 2;
/// NEXTHOP refused an entry: b = error.
pub const NEXT_HOP_NOT_STORED: u32 = 3;
/// `bpf_fib_lookup` refused its arguments: b = its return value.
pub const FIB_REFUSED: u32 = 4;
/// A service's Maglev index lies outside MAGLEV: a = service, b = index.
pub const MAGLEV_OUT_OF_RANGE: u32 = 5;
/// A service id without a round-robin counter: a = service.
pub const NO_ROUND_ROBIN: u32 = 6;
/// AFFINITY_EVENTS was full: a = service, b = error.
pub const AFFINITY_NOT_QUEUED: u32 = 7;

/// Notes an event for [`log`].
#[inline(always)]
pub fn note(kind: u32, a: u32, b: i64) {
    if let Some(s) = SCRATCH.get_ptr_mut(0) {
        unsafe {
            (*s).event.kind = kind;
            (*s).event.a = a;
            (*s).event.b = b;
        }
    }
}

/// Logs the packet's event, if one was noted.
#[inline(always)]
pub fn log(ctx: &XdpContext) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let e = unsafe { &mut (*s).event };
    if e.kind == 0 {
        return;
    }
    let (a, b) = (e.a, e.b);
    match e.kind {
        AFFINITY_NOT_STORED => warn!(ctx, "affinity: service {} entry not stored: {}", a, b),
        FRAGMENT_NOT_STORED => warn!(ctx, "fragments: decision not stored: {}", b),
        NEXT_HOP_NOT_STORED => warn!(ctx, "next hop: cache entry not stored: {}", b),
        FIB_REFUSED => error!(ctx, "bpf_fib_lookup refused its arguments: {}", b),
        MAGLEV_OUT_OF_RANGE => error!(ctx, "service {}: Maglev index {} out of range", a, b),
        NO_ROUND_ROBIN => error!(ctx, "service {}: no round-robin counter", a),
        AFFINITY_NOT_QUEUED => warn!(
            ctx,
            "sync: service {} entry not queued for the peers: {}", a, b
        ),
        _ => {}
    }
    e.kind = 0;
}
