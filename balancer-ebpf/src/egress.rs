//! Out: MACs from the next hop, then back out of the receiving interface or
//! redirected to another.

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_redirect, macros::map, maps::DevMapHash,
    programs::XdpContext,
};
use balancer_common::maps::{reason, MAX_PORTS};

use crate::{bounds::ptr_at, counters::count, fib::Hop, rewrite::dec_ttl};

/// Egress interfaces for redirects, keyed by ifindex.
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_PORTS, 0);

/// Sends the datagram to its next hop: MACs from the FIB's answer, out. With
/// `route` (family, L3 offset) this host routes it (both DNAT directions, and
/// their later fragments): the TTL goes down. An unresolved neighbour sends the
/// (rewritten) datagram up the stack, which resolves it and forwards: nothing is
/// lost while ARP/ND runs.
#[inline(always)]
pub fn send(ctx: &XdpContext, hop: Hop, route: Option<(u8, usize)>) -> Result<u32, u32> {
    match hop {
        Hop::Ok {
            ifindex,
            smac,
            dmac,
        } => {
            if let Some((family, l3)) = route {
                dec_ttl(ctx, family, l3)?;
            }
            forward(ctx, ifindex, &smac, &dmac)
        }
        Hop::NoNeigh => Err(reason::FIB_NO_NEIGH),
        _ => Err(reason::FIB_FAIL),
    }
}

/// Sets the MACs and sends the frame towards `ifindex`.
#[inline(always)]
fn forward(ctx: &XdpContext, ifindex: u32, smac: &[u8; 6], dmac: &[u8; 6]) -> Result<u32, u32> {
    let eth = ptr_at::<[u8; 12]>(ctx, 0)?;
    unsafe {
        (&mut *eth)[..6].copy_from_slice(dmac);
        (&mut *eth)[6..].copy_from_slice(smac);
    }
    if ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
        count(reason::TX);
        return Ok(xdp_action::XDP_TX);
    }
    count(reason::REDIRECT);
    match TX_PORTS.redirect(ifindex, 0) {
        Ok(v) => Ok(v),
        Err(_) => Ok(unsafe { bpf_redirect(ifindex, 0) } as u32),
    }
}
