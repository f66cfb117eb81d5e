//! The next hop: `bpf_fib_lookup` behind a cache (NEXTHOP, and its per-slot copy
//! SLOT_HOPS), and the MTU rule that decides when a cached answer may be used.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use balancer_common::maps::{Endpoint, AF_INET, IPPROTO_UDP, MAX_BACKENDS};

use crate::{
    addr::{self, word4},
    events,
    maps::SCRATCH,
};

const AF_INET_FIB: u8 = 2;
const AF_INET6_FIB: u8 = 10;

/// Next-hop cache: `bpf_fib_lookup` costs several hundred ns per call, so its
/// answers are kept for a second per (destination, ingress interface). A changed
/// neighbour MAC reaches the data plane within that second; an entry is used only
/// for datagrams no larger than one the FIB has already accepted (MTU).
#[map]
pub static NEXTHOP: LruHashMap<NhKey, NhEntry> = LruHashMap::with_max_entries(65536, 0);

/// How long a NEXTHOP entry holds.
pub const NEXTHOP_TTL_NS: u64 = 1_000_000_000;

#[repr(C, align(8))]
pub struct NhKey {
    pub addr: [u8; 16],
    pub ingress: u32,
    /// Address family; a whole word so building the key needs no byte-wise padding.
    pub family: u32,
}

#[repr(C)]
pub struct NhEntry {
    pub expires: u64,
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// The largest IP total length the FIB accepted for this route (MTU).
    pub max_len: u16,
    pub _pad: [u8; 2],
}

/// A backend slot's next hop: a copy of the NEXTHOP entry for the slot's
/// address, found by an array lookup where NEXTHOP costs a hash lookup. Used
/// while `addr` and `ingress` still match and the copied entry is valid, so it
/// is never fresher or staler than NEXTHOP. Per CPU: written without locks.
#[map]
pub static SLOT_HOPS: PerCpuArray<SlotHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[repr(C)]
pub struct SlotHop {
    pub addr: [u8; 16],
    pub ingress: u32,
    pub _pad: u32,
    pub nh: NhEntry,
}

/// Outcome of a next-hop lookup.
pub enum Hop {
    /// MACs and egress interface known.
    Ok {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Route exists, neighbour not resolved: let the kernel resolve it.
    NoNeigh,
    /// Destination is this host.
    Local,
    /// Anything else (no route, forwarding disabled, ...).
    Fail,
}

/// The next hop towards the backend in `slot` (address `dst`): from the slot's
/// copy of the NEXTHOP entry while it holds, else from `next_hop`, whose entry
/// is then copied for the slot.
#[inline(always)]
pub fn backend_hop(
    ctx: &XdpContext,
    slot: u32,
    src: &Endpoint,
    dst: &Endpoint,
    tot_len: u16,
) -> Hop {
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    // The clock `policy::admit` read for this datagram (only datagrams to a
    // service come here).
    let now = crate::policy::now();
    let Some(c) = SLOT_HOPS.get_ptr_mut(slot) else {
        return next_hop(ctx, src, dst, tot_len);
    };
    let c = unsafe { &mut *c };
    if now < c.nh.expires
        && tot_len <= c.nh.max_len
        && c.ingress == ingress
        && addr::eq(&c.addr, &dst.addr)
    {
        return Hop::Ok {
            ifindex: c.nh.ifindex,
            smac: c.nh.smac,
            dmac: c.nh.dmac,
        };
    }
    let hop = next_hop(ctx, src, dst, tot_len);
    if let Hop::Ok { .. } = hop {
        // `next_hop` left its key in scratch memory.
        if let Some(s) = SCRATCH.get_ptr_mut(0) {
            if let Some(e) = unsafe { NEXTHOP.get(&(*s).nh_key) } {
                addr::copy(&mut c.addr, &dst.addr);
                c.ingress = ingress;
                c.nh.expires = e.expires;
                c.nh.ifindex = e.ifindex;
                c.nh.smac = e.smac;
                c.nh.dmac = e.dmac;
                c.nh.max_len = e.max_len;
            }
        }
    }
    hop
}

/// Asks the kernel FIB for the next hop towards `dst` (through the cache).
/// A BPF subprogram of its own: keeps its locals off the main program's stack,
/// which `bpf_loop`'s callback frame adds to.
#[inline(never)]
pub fn next_hop(ctx: &XdpContext, src: &Endpoint, dst: &Endpoint, tot_len: u16) -> Hop {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return Hop::Fail;
    };
    // Key and new entry live in per-CPU scratch memory: the combined stack of
    // the main path and this subprogram is limited to 512 bytes.
    let key = unsafe { &mut (*s).nh_key };
    addr::copy(&mut key.addr, &dst.addr);
    key.ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    key.family = dst.family as u32;
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(e) = unsafe { NEXTHOP.get(&*key) } {
        if now < e.expires && tot_len <= e.max_len {
            return Hop::Ok {
                ifindex: e.ifindex,
                smac: e.smac,
                dmac: e.dmac,
            };
        }
    }
    // Zeroed with word stores: `mem::zeroed` becomes a byte-wise memset call in BPF.
    let raw = unsafe { &mut (*s).fib };
    let mut i = 0;
    while i < raw.len() {
        // Volatile: LLVM would fold a plain loop back into a memset call.
        unsafe { core::ptr::write_volatile(&mut raw[i], 0) };
        i += 1;
    }
    let p = unsafe { &mut *(raw.as_mut_ptr() as *mut bpf_fib_lookup) };
    p.l4_protocol = IPPROTO_UDP;
    p.sport = src.port;
    p.dport = dst.port;
    p.__bindgen_anon_1.tot_len = tot_len;
    p.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    if dst.family == AF_INET {
        p.family = AF_INET_FIB;
        p.__bindgen_anon_3.ipv4_src = word4(&src.addr);
        p.__bindgen_anon_4.ipv4_dst = word4(&dst.addr);
    } else {
        p.family = AF_INET6_FIB;
        p.__bindgen_anon_3.ipv6_src = addr::words(&src.addr);
        p.__bindgen_anon_4.ipv6_dst = addr::words(&dst.addr);
    }
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc < 0 {
        // Not a routing answer: the arguments were refused.
        events::note(events::FIB_REFUSED, 0, rc);
        return Hop::Fail;
    }
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            // The FIB said this size fits the route's MTU: remember the answer for
            // datagrams up to this size.
            let max_len = match unsafe { NEXTHOP.get(&*key) } {
                Some(e) if e.max_len > tot_len && now < e.expires => e.max_len,
                _ => tot_len,
            };
            let e = unsafe { &mut (*s).nh_entry };
            e.expires = now + NEXTHOP_TTL_NS;
            e.ifindex = p.ifindex;
            e.smac = p.smac;
            e.dmac = p.dmac;
            e.max_len = max_len;
            e._pad = [0; 2];
            if let Err(e) = NEXTHOP.insert(&*key, &*e, 0) {
                events::note(events::NEXT_HOP_NOT_STORED, 0, e.into());
            }
            Hop::Ok {
                ifindex: p.ifindex,
                smac: p.smac,
                dmac: p.dmac,
            }
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Hop::NoNeigh,
        BPF_FIB_LKUP_RET_NOT_FWDED => Hop::Local,
        _ => Hop::Fail,
    }
}

/// IP total length as the FIB wants it (for the MTU check).
#[inline(always)]
pub fn ip_len(ctx: &XdpContext, l3: usize) -> u16 {
    (ctx.data_end() - ctx.data() - l3) as u16
}
