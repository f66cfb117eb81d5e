//! Rewrites: addresses, ports, TTL, MACs, with incremental checksum updates.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect},
    programs::XdpContext,
};
use balancer_common::{
    csum::{replace128, replace16, replace32, udp_nonzero},
    maps::{reason, Endpoint, AF_INET, IPPROTO_UDP},
};

use crate::{
    addr,
    maps::{NEXTHOP, NEXTHOP_TTL_NS, SCRATCH, SLOT_HOPS, TX_PORTS},
    parse::{ptr_at, Udp},
};

const AF_INET_FIB: u8 = 2;
const AF_INET6_FIB: u8 = 10;

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
    let now = unsafe { bpf_ktime_get_coarse_ns() };
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
            let _ = NEXTHOP.insert(&*key, &*e, 0);
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

/// TTL / hop limit of the packet.
#[inline(always)]
pub fn ttl(ctx: &XdpContext, family: u8, l3: usize) -> Result<u8, u32> {
    let off = if family == AF_INET { l3 + 8 } else { l3 + 7 };
    Ok(unsafe { *ptr_at::<u8>(ctx, off)? })
}

/// IP total length as the FIB wants it (for the MTU check).
#[inline(always)]
pub fn ip_len(ctx: &XdpContext, l3: usize) -> u16 {
    (ctx.data_end() - ctx.data() - l3) as u16
}

/// Which address/port pair a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

/// Replaces the source or destination address and port, fixing the IPv4 header
/// checksum and the UDP checksum (IPv4 UDP checksum 0 stays 0: none was sent).
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, u: &Udp, side: Side, new: &Endpoint) -> Result<(), u32> {
    let udp = ptr_at::<[u16; 4]>(ctx, u.l4)?;
    let (port_idx, old) = match side {
        Side::Src => (0, &u.src),
        Side::Dst => (1, &u.dst),
    };
    unsafe {
        let check = (*udp)[3];
        (*udp)[port_idx] = new.port;
        rewrite_addr(ctx, u.family, u.l3, side, &new.addr)?;
        // The UDP checksum covers the pseudo-header: address and port changes.
        if u.family == AF_INET {
            if check != 0 {
                let (o, n) = (word4(&old.addr), word4(&new.addr));
                (*udp)[3] = udp_nonzero(replace16(replace32(check, o, n), old.port, new.port));
            }
        } else {
            (*udp)[3] = udp_nonzero(replace16(
                replace128(check, &old.addr, &new.addr),
                old.port,
                new.port,
            ));
        }
    }
    Ok(())
}

/// The IPv4 address in the first four bytes, as the packet holds it.
#[inline(always)]
fn word4(a: &[u8; 16]) -> u32 {
    u32::from_ne_bytes([a[0], a[1], a[2], a[3]])
}

/// Rewrites an IP address, fixing the IPv4 header checksum. Alone for a later
/// fragment (no UDP header; the UDP checksum, in the first fragment, already
/// accounts for the new address); `rewrite` adds port and UDP checksum.
#[inline(always)]
pub fn rewrite_addr(
    ctx: &XdpContext,
    family: u8,
    l3: usize,
    side: Side,
    new: &[u8; 16],
) -> Result<(), u32> {
    unsafe {
        if family == AF_INET {
            let addr_off = if side == Side::Src { 12 } else { 16 };
            let a = ptr_at::<u32>(ctx, l3 + addr_off)?;
            let ipc = ptr_at::<u16>(ctx, l3 + 10)?;
            let o = *a;
            let n = word4(new);
            *a = n;
            *ipc = replace32(*ipc, o, n);
        } else {
            let addr_off = if side == Side::Src { 8 } else { 24 };
            let a = ptr_at::<[u8; 16]>(ctx, l3 + addr_off)?;
            *a = *new;
        }
    }
    Ok(())
}

/// Decrements TTL / hop limit (we are a router on the DNAT path).
#[inline(always)]
pub fn dec_ttl(ctx: &XdpContext, family: u8, l3: usize) -> Result<(), u32> {
    unsafe {
        if family == AF_INET {
            let w = ptr_at::<u16>(ctx, l3 + 8)?;
            let ipc = ptr_at::<u16>(ctx, l3 + 10)?;
            let old = *w;
            let b = ptr_at::<u8>(ctx, l3 + 8)?;
            *b -= 1;
            *ipc = replace16(*ipc, old, *w);
        } else {
            let b = ptr_at::<u8>(ctx, l3 + 7)?;
            *b -= 1;
        }
    }
    Ok(())
}

/// Sets the MACs and sends the frame towards `ifindex`.
#[inline(always)]
pub fn forward(ctx: &XdpContext, ifindex: u32, smac: &[u8; 6], dmac: &[u8; 6]) -> Result<u32, u32> {
    let eth = ptr_at::<[u8; 12]>(ctx, 0)?;
    unsafe {
        (&mut *eth)[..6].copy_from_slice(dmac);
        (&mut *eth)[6..].copy_from_slice(smac);
    }
    if ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
        crate::maps::count(reason::TX);
        return Ok(xdp_action::XDP_TX);
    }
    crate::maps::count(reason::REDIRECT);
    match TX_PORTS.redirect(ifindex, 0) {
        Ok(v) => Ok(v),
        Err(_) => Ok(unsafe { bpf_redirect(ifindex, 0) } as u32),
    }
}
