//! Rewrites: addresses and ports with incremental checksum updates, and the
//! TTL / hop limit.

use aya_ebpf::programs::XdpContext;
use balancer_common::{
    csum::{replace128, replace16, replace32, udp_nonzero},
    maps::{Endpoint, AF_INET},
};

use crate::{addr::word4, bounds::ptr_at, parse::Udp};

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

/// TTL / hop limit of the packet.
#[inline(always)]
pub fn ttl(ctx: &XdpContext, family: u8, l3: usize) -> Result<u8, u32> {
    // The header's first 9 bytes, then the byte: a one-byte check at a
    // variable offset may compile to `p >= end`, from which some verifiers
    // learn no range at all.
    let h = unsafe { &*ptr_at::<[u8; 9]>(ctx, l3)? };
    Ok(if family == AF_INET { h[8] } else { h[7] })
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
