//! Per-packet flow (DESIGN.md section 3): parse, service lookup or reverse NAT,
//! key extraction, Maglev selection, rewrite, forward. Counters at every exit.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_loop, bpf_xdp_load_bytes},
    macros::xdp,
    programs::XdpContext,
};
use balancer_common::{
    callid::SCAN_MAX,
    hash::{hash_addr, hash_span},
    keys::{is_keepalive, KeyScan},
    maglev,
    maps::{
        reason, Endpoint, Service, ALG_ROUND_ROBIN, ALG_SOURCE, MODE_DSR, NO_BACKEND,
        SERVICE_PASS_NO_BACKEND,
    },
};

use crate::{
    maps::{
        add_traffic, count, BACKENDS, BACKEND_STATS, MAGLEV, REVERSE, RR, SCRATCH, SERVICES,
        SERVICE_STATS, TRIVIAL, TX_PORTS,
    },
    nat::{dec_ttl, forward, ip_len, next_hop, rewrite, ttl, Hop, Side},
    parse::{parse, ptr_at, Udp},
};

#[xdp]
pub fn balancer(ctx: XdpContext) -> u32 {
    match try_balancer(&ctx) {
        Ok(action) => action,
        Err(r) => {
            // Every early exit is counted and passes the frame untouched.
            count(r);
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
fn try_balancer(ctx: &XdpContext) -> Result<u32, u32> {
    let u = parse(ctx)?;
    if let Some(svc) = unsafe { SERVICES.get(&u.dst) } {
        let svc = *svc;
        return dispatch(ctx, &u, svc);
    }
    if let Some(vip) = unsafe { REVERSE.get(&u.src) } {
        let vip = *vip;
        return reverse(ctx, &u, &vip);
    }
    Err(reason::PASS_NO_SERVICE)
}

/// Client -> VIP: pick a backend and send the datagram there.
#[inline(always)]
fn dispatch(ctx: &XdpContext, u: &Udp, svc: Service) -> Result<u32, u32> {
    let hash = key_hash(ctx, u, &svc)?;
    let idx = maglev::table_base(svc.id, svc.active) + maglev::index(hash, svc.table_size);
    let slot = *MAGLEV.get(idx).ok_or(reason::NO_BACKEND)?;
    if slot == NO_BACKEND {
        if svc.flags & SERVICE_PASS_NO_BACKEND != 0 {
            return Err(reason::NO_BACKEND_PASS);
        }
        count(reason::NO_BACKEND);
        return Ok(xdp_action::XDP_DROP);
    }
    let be = *BACKENDS.get(slot).ok_or(reason::NO_BACKEND)?;
    if be.family != u.family {
        count(reason::NO_BACKEND);
        return Ok(xdp_action::XDP_DROP);
    }
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    add_traffic(&BACKEND_STATS, slot, bytes);
    add_traffic(&SERVICE_STATS, svc.id, bytes);
    let target = Endpoint {
        addr: be.addr,
        port: be.port,
        family: be.family,
        proto: u.dst.proto,
    };
    if svc.mode == MODE_DSR {
        // L2 direct server return: the backend holds the VIP; only MACs change.
        return match next_hop(ctx, &u.src, &target, ip_len(ctx, u)) {
            Hop::Ok {
                ifindex,
                smac,
                dmac,
            } => forward(ctx, ifindex, &smac, &dmac),
            Hop::NoNeigh => Err(reason::FIB_NO_NEIGH),
            _ => Err(reason::FIB_FAIL),
        };
    }
    if ttl(ctx, u)? <= 1 {
        return Err(reason::TTL_EXCEEDED);
    }
    rewrite(ctx, u, Side::Dst, &target)?;
    let hop = next_hop(ctx, &u.src, &target, ip_len(ctx, u));
    routed(ctx, u, hop)
}

/// Backend -> client: make the reply come from the VIP. Replies addressed to this
/// host (answers to our own probes) are left alone.
#[inline(always)]
fn reverse(ctx: &XdpContext, u: &Udp, vip: &Endpoint) -> Result<u32, u32> {
    let hop = next_hop(ctx, vip, &u.dst, ip_len(ctx, u));
    match hop {
        Hop::Local => return Err(reason::PASS_LOCAL),
        Hop::Fail => return Err(reason::FIB_FAIL),
        _ => {}
    }
    if ttl(ctx, u)? <= 1 {
        return Err(reason::TTL_EXCEEDED);
    }
    rewrite(ctx, u, Side::Src, vip)?;
    count(reason::REVERSE_NAT);
    routed(ctx, u, hop)
}

/// Sends on a datagram this host routes (both DNAT directions): TTL down, MACs
/// from the next hop, out. An unresolved neighbour sends the rewritten datagram up
/// the stack, which resolves it and forwards: nothing is lost while ARP/ND runs.
#[inline(always)]
fn routed(ctx: &XdpContext, u: &Udp, hop: Hop) -> Result<u32, u32> {
    match hop {
        Hop::Ok {
            ifindex,
            smac,
            dmac,
        } => {
            dec_ttl(ctx, u)?;
            forward(ctx, ifindex, &smac, &dmac)
        }
        Hop::NoNeigh => Err(reason::FIB_NO_NEIGH),
        _ => Err(reason::FIB_FAIL),
    }
}

/// The key hash of the service's algorithm. `keys::message_dispatch` is the same
/// decision in user space (same building blocks, same order, same counters): keep
/// the two in step.
#[inline(always)]
fn key_hash(ctx: &XdpContext, u: &Udp, svc: &Service) -> Result<u32, u32> {
    let alg = svc.algorithm;
    if alg == ALG_SOURCE {
        count(reason::SOURCE);
        return Ok(hash_addr(&u.src.addr, u.family));
    }
    if alg == ALG_ROUND_ROBIN {
        // Per CPU, so no atomics: each CPU walks the table on its own.
        let c = RR.get_ptr_mut(svc.id).ok_or(reason::MALFORMED)?;
        let h = unsafe { *c };
        unsafe { *c = h.wrapping_add(1) };
        count(reason::ROUND_ROBIN);
        return Ok(h);
    }
    let s = SCRATCH.get_ptr_mut(0).ok_or(reason::MALFORMED)?;
    let len = u.payload_len;
    let n = if len > SCAN_MAX as u32 {
        SCAN_MAX as u32
    } else {
        len
    };
    if n > 0 {
        let off = (u.l4 + 8) as u32;
        let rc =
            unsafe { bpf_xdp_load_bytes(ctx.ctx, off, (*s).buf.bytes.as_mut_ptr() as *mut _, n) };
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
                    return Ok(hash_span(&(*s).buf, span));
                }
            }
        }
    }
    count(if is_keepalive(unsafe { &(*s).buf }, n) {
        reason::FALLBACK_KEEPALIVE
    } else {
        reason::FALLBACK_NO_CALLID
    });
    Ok(hash_addr(&u.src.addr, u.family))
}

/// One `bpf_loop` step of the key search (see `KeyScan::advance`). Returns 1 to stop.
#[inline(never)]
extern "C" fn key_step(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    match SCRATCH.get_ptr_mut(0) {
        Some(s) => unsafe { (*s).key.advance(&(*s).buf) as i64 },
        None => 1,
    }
}

/// Benchmark baseline: the least a DNAT balancer must do (IPv4/UDP only, fixed
/// target): rewrite destination address and port with checksum updates, set MACs,
/// redirect through the devmap. `cargo xtask bench` compares `balancer` against it.
#[xdp]
pub fn xdp_trivial(ctx: XdpContext) -> u32 {
    try_trivial(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn try_trivial(ctx: &XdpContext) -> Result<u32, u32> {
    let u = parse(ctx)?;
    let t = TRIVIAL.get(0).ok_or(0u32)?;
    let mut target = u.dst;
    target.addr[..4].copy_from_slice(&t.addr);
    target.port = t.port;
    rewrite(ctx, &u, Side::Dst, &target)?;
    let eth = ptr_at::<[u8; 12]>(ctx, 0)?;
    unsafe {
        (&mut *eth)[..6].copy_from_slice(&t.dmac);
        (&mut *eth)[6..].copy_from_slice(&t.smac);
    }
    Ok(TX_PORTS
        .redirect(t.ifindex, 0)
        .unwrap_or(xdp_action::XDP_ABORTED))
}
