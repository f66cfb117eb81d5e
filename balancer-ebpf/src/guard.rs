//! Strict reverse path: XDP runs before the kernel's rp_filter, so for the
//! datagrams this program rewrites it does that job itself. A datagram whose
//! source is an address the balancer knows (a backend's, a VIP, one of this
//! host's) is accepted only on the interface the route to that address uses;
//! user space keeps `GUARD` current as routes change.

use aya_ebpf::{macros::map, maps::HashMap, programs::XdpContext};
use balancer_common::maps::{Guard, SourceAddr, MAX_BACKENDS};

/// Source address -> the only interface it may arrive on (0: none).
#[map]
pub static GUARD: HashMap<SourceAddr, Guard> = HashMap::with_max_entries(2 * MAX_BACKENDS, 0);

/// Whether the datagram's source may come in where it did: any source the
/// balancer does not know, or a known one on its own interface.
#[inline(always)]
pub fn source_ok(ctx: &XdpContext, addr: &[u8; 16], family: u32) -> bool {
    let key = SourceAddr {
        addr: *addr,
        family,
    };
    match unsafe { GUARD.get(&key) } {
        Some(g) => g.ifindex != 0 && g.ifindex == unsafe { (*ctx.ctx).ingress_ifindex },
        None => true,
    }
}
