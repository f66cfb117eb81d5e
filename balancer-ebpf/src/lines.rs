//! The Call-ID searched in place (`balancer_common::line_scan`): the scan
//! reads the packet itself, one `bpf_loop` step after the other, and only the
//! value is copied out, for the hash. Where the scan defers, `key::key_of`
//! copies the payload and runs the byte machine as before.

use aya_ebpf::{
    bindings::xdp_md,
    helpers::generated::{bpf_loop, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use balancer_common::{
    callid::{Span, SCAN_MAX},
    hash::{hash_span, HASH_MAX},
    keys::scans_in_place,
    line_scan::{LineScan, Run, Words, DEFER, LINE_STEPS, RUN_BYTES},
};

use crate::maps::Scratch;

// The value's copy is masked into [1, HASH_MAX] bytes at the front of the buffer.
const _: () = assert!(HASH_MAX.is_power_of_two() && HASH_MAX <= SCAN_MAX);

/// What the steps share with [`search`], on its stack: the packet (a context
/// pointer is all a step can reach it by), the scan in SCRATCH (no lookup,
/// so no key, in the step's frame), and where the payload begins.
#[repr(C)]
struct Search {
    xdp: *mut xdp_md,
    scan: *mut LineScan,
    base: u32,
}

/// The datagram where the packet holds it: its payload begins `base` bytes
/// into the frame.
struct Packet {
    data: usize,
    end: usize,
    base: usize,
}

/// Longest frame whose last word the scan reads (its tail is deferred in a
/// longer one): the verifier learns bounds from a packet check only where
/// the pointer's offset stays below 64 KiB with the access added.
const FRAME_MAX: usize = 0x7fff;

impl Packet {
    /// The packet's start and end, read anew for every access: computed
    /// once and kept, what a bounds check taught the verifier about them on
    /// one path would set that path apart from the others for the rest of
    /// the step, and the step would be checked once per path.
    #[inline(always)]
    fn ends(&self) -> (usize, usize) {
        unsafe {
            (
                core::ptr::read_volatile(&self.data),
                core::ptr::read_volatile(&self.end),
            )
        }
    }
}

/// A run of words whose bounds are checked (`Words::run`).
struct PacketRun(usize);

impl Run for PacketRun {
    #[inline(always)]
    fn word(&self, k: u32) -> u64 {
        load(self.0 + 8 * k as usize)
    }
}

impl Words for Packet {
    type Run = PacketRun;

    #[inline(always)]
    fn run(&mut self, off: u32) -> Option<PacketRun> {
        let (data, end) = self.ends();
        let p = opaque(data + self.base + (off as usize & (SCAN_MAX - 1)));
        if p + RUN_BYTES as usize > end {
            return None;
        }
        Some(PacketRun(p))
    }

    #[inline(always)]
    fn word(&mut self, off: u32, need: u32) -> Option<u64> {
        // The scan asks only for bytes inside the window: the mask changes
        // nothing, and tells the verifier how far the pointer may go.
        let (data, end) = self.ends();
        let at = self.base + (off as usize & (SCAN_MAX - 1));
        if data + at + 8 <= end {
            return Some(load(data + at));
        }
        // The window's last bytes end the frame: take the frame's last word
        // and shift the wanted bytes down. Bytes past the frame (a packet's
        // non-linear part) are out of reach: the scan defers.
        let frame = end - data;
        if at + need as usize > frame || frame > FRAME_MAX {
            return None;
        }
        let last = data + ((frame - 8) & FRAME_MAX);
        if last + 8 > end {
            return None;
        }
        let shift = (at + 8 - frame) & 7;
        Some(load(last) >> (8 * shift))
    }
}

/// `p`, through the stack: the compiler cannot compute it again from its
/// parts, so the run's loads use the very register the bounds check was made
/// on (the verifier knows a check only for that pointer; rebuilt from the
/// packet's start it is unchecked).
#[inline(always)]
fn opaque(p: usize) -> usize {
    let mut cell = 0usize;
    unsafe {
        core::ptr::write_volatile(&mut cell, p);
        core::ptr::read_volatile(&cell)
    }
}

/// The 8 bytes at packet address `p`, first byte lowest. Packet words sit at
/// any byte offset. A `u64` read, volatile, is one 8-byte load in BPF (not
/// so sure with `read_unaligned`, which may be split up); the verifier
/// allows unaligned packet access (no strict alignment on x86-64 and arm64)
/// and the JITs load unaligned words. Rust itself asks for alignment here:
/// nothing but this one load is derived from the pointer.
#[inline(always)]
fn load(p: usize) -> u64 {
    unsafe { core::ptr::read_volatile(p as *const u64) }
}

/// Runs the in-place scan (already `reset` for the window) over the payload
/// at `base`: a `line_scan` code. [`DEFER`] for the algorithms whose key is
/// not the Call-ID's. A subprogram: its branches stay out of the caller's
/// verifier state, which goes on with a code only.
#[inline(never)]
pub fn search(ctx: *mut xdp_md, scan: *mut LineScan, base: u32, alg: u32) -> u32 {
    if !scans_in_place(alg) {
        return DEFER;
    }
    let mut c = Search {
        xdp: ctx,
        scan,
        base,
    };
    unsafe {
        bpf_loop(
            LINE_STEPS,
            line_step as *mut _,
            &mut c as *mut Search as *mut _,
            0,
        );
        (*scan).code()
    }
}

/// One `bpf_loop` step of the scan. Returns 1 to stop.
#[inline(never)]
extern "C" fn line_step(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let c = ctx as *mut Search;
    unsafe {
        let xdp = (*c).xdp;
        let mut p = Packet {
            data: (*xdp).data as usize,
            end: (*xdp).data_end as usize,
            // The payload's offset is below 256 (`parse::join` masks L4
            // below 128): masked again, in case the verifier lost its bounds
            // on the way through the stack.
            base: ((*c).base & 0xff) as usize,
        };
        (*(*c).scan).advance(&mut p) as i64
    }
}

/// The hash of the value the scan found, copied (its first `HASH_MAX` bytes,
/// all the hash reads) to the front of SCRATCH's buffer. `None` if the copy
/// fails: the caller then takes the byte machine's path.
#[inline(always)]
pub fn hash_found(ctx: &XdpContext, s: *mut Scratch, base: u32) -> Option<u32> {
    let v = unsafe { (*s).lines.span() };
    let start = v.start & (SCAN_MAX as u32 - 1);
    let len = v.len & (SCAN_MAX as u32 * 2 - 1);
    let take = if len > HASH_MAX as u32 {
        HASH_MAX as u32
    } else {
        len
    };
    // Masked into [1, HASH_MAX] at the call (6.1 does not learn `take >= 1`).
    let take = (take.wrapping_sub(1) & (HASH_MAX as u32 - 1)) + 1;
    let buf = unsafe { &mut (*s).buf };
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            base + start,
            buf.bytes.as_mut_ptr() as *mut _,
            take,
        )
    };
    if rc != 0 {
        return None;
    }
    Some(hash_span(buf, Span { start: 0, len }))
}
