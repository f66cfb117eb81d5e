//! Per-packet flow (README, "What the data plane does"): parse, service lookup or reverse NAT,
//! key extraction, Maglev selection, rewrite, forward. Counters at every exit.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_loop, bpf_xdp_load_bytes},
    macros::xdp,
    programs::XdpContext,
};
use balancer_common::{
    callid::SCAN_MAX,
    hash::{hash_addr, hash_span},
    keys::{is_keepalive, KeyScan},
    maglev,
    maps::{
        reason, Affinity, AffinityKey, Endpoint, Reverse, Service, ALG_ROUND_ROBIN, ALG_SOURCE,
        BACKEND_STICKY, FRAG_DST, FRAG_KEEP, FRAG_SRC, FRAG_TIMEOUT_S, MODE_DSR, NO_BACKEND,
        SERVICE_AFFINITY, SERVICE_PASS_NO_BACKEND,
    },
};

use crate::{
    maps::{
        add_traffic, count, AFFINITY, BACKENDS, BACKEND_STATS, FRAGS, MAGLEV, REVERSE, RR, SCRATCH,
        SERVICES, SERVICE_STATS, TRIVIAL, TX_PORTS,
    },
    nat::{backend_hop, dec_ttl, forward, ip_len, next_hop, rewrite, rewrite_addr, ttl, Hop, Side},
    parse::{join, parse, parse_fragment, ptr_at, Udp},
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
    let u = match parse(ctx) {
        Ok(u) => join(u)?,
        Err(reason::FRAGMENT) => return later_fragment(ctx),
        Err(r) => return Err(r),
    };
    // The key search is the bulk of what the verifier checks: one call site for
    // both directions, so it is checked once, not once per direction.
    let svc = if let Some(s) = unsafe { SERVICES.get(&u.dst) } {
        *s
    } else if let Some(r) = unsafe { REVERSE.get(&u.src) } {
        // Learning needs the backend's requests only (a dialog it starts begins
        // with one); its responses belong to dialogs already known.
        if r.learn == 0 || is_response(ctx, &u) {
            let r = *r;
            return reverse(ctx, &u, &r, None);
        }
        Service {
            id: r.service,
            algorithm: r.algorithm,
            ..Service::default()
        }
    } else {
        return Err(reason::PASS_NO_SERVICE);
    };
    let key = key_of(ctx, &u, &svc)?;
    // Which way, asked again rather than remembered: a remembered flag would
    // keep the two directions' verifier states apart through the search.
    if let Some(s) = unsafe { SERVICES.get(&u.dst) } {
        let s = *s;
        let hash = match key {
            Some(h) => h,
            None => hash_addr(&u.src.addr, u.family),
        };
        return dispatch(ctx, &u, s, hash);
    }
    match unsafe { REVERSE.get(&u.src) } {
        Some(r) => {
            let r = *r;
            reverse(ctx, &u, &r, key)
        }
        None => Err(reason::PASS_NO_SERVICE),
    }
}

/// Whether the datagram is a SIP response (starts with `SIP/`).
#[inline(always)]
fn is_response(ctx: &XdpContext, u: &Udp) -> bool {
    match ptr_at::<[u8; 4]>(ctx, u.l4 + 8) {
        Ok(p) => unsafe { *p == *b"SIP/" },
        Err(_) => false,
    }
}

/// Client -> VIP: pick a backend and send the datagram there.
#[inline(always)]
fn dispatch(ctx: &XdpContext, u: &Udp, svc: Service, hash: u32) -> Result<u32, u32> {
    let slot = pick(&svc, hash)?;
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
    if u.first_fragment != 0 {
        let how = if svc.mode == MODE_DSR {
            FRAG_KEEP
        } else {
            FRAG_DST
        };
        first_fragment(u, &target.addr, how);
    }
    if svc.mode == MODE_DSR {
        // L2 direct server return: the backend holds the VIP; only MACs change.
        return send(
            ctx,
            backend_hop(ctx, slot, &u.src, &target, ip_len(ctx, u.l3)),
            None,
        );
    }
    if ttl(ctx, u.family, u.l3)? <= 1 {
        return Err(reason::TTL_EXCEEDED);
    }
    rewrite(ctx, u, Side::Dst, &target)?;
    let hop = backend_hop(ctx, slot, &u.src, &target, ip_len(ctx, u.l3));
    send(ctx, hop, Some((u.family, u.l3)))
}

/// The backend for a key: the dialog's own (affinity) while that backend still
/// takes its traffic, else the Maglev table's, remembered for the dialog.
#[inline(always)]
fn pick(svc: &Service, hash: u32) -> Result<u32, u32> {
    let idx = maglev::table_base(svc.id, svc.active) + maglev::index(hash, svc.table_size);
    let table = *MAGLEV.get(idx).ok_or(reason::NO_BACKEND)?;
    // Round-robin's key is a counter: nothing to remember.
    if svc.flags & SERVICE_AFFINITY == 0 || svc.algorithm == ALG_ROUND_ROBIN {
        return Ok(table);
    }
    let key = AffinityKey {
        service: svc.id,
        hash,
    };
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(e) = AFFINITY.get_ptr_mut(&key) {
        let e = unsafe { &mut *e };
        let fresh = now.wrapping_sub(e.seen) < svc.affinity_idle as u64 * 1_000_000_000;
        if fresh && sticky(e.slot) {
            e.seen = now;
            count(reason::AFFINITY_HIT);
            return Ok(e.slot);
        }
        if table != NO_BACKEND {
            e.slot = table;
            e.seen = now;
            count(reason::AFFINITY_REPLACED);
        }
        return Ok(table);
    }
    if table != NO_BACKEND {
        remember(&key, table, now);
        count(reason::AFFINITY_NEW);
    }
    Ok(table)
}

/// A new affinity entry (the LRU map evicts the least recently used when full).
#[inline(always)]
fn remember(key: &AffinityKey, slot: u32, now: u64) {
    let _ = AFFINITY.insert(
        key,
        &Affinity {
            slot,
            _pad: 0,
            seen: now,
        },
        0,
    );
}

/// Whether dialogs pinned to `slot` stay there (active or draining, not down).
#[inline(always)]
fn sticky(slot: u32) -> bool {
    match BACKENDS.get(slot) {
        Some(b) => b.flags & BACKEND_STICKY != 0,
        None => false,
    }
}

/// A backend's message on its way to a client: learn its dialog (the backend may
/// have started it: the other party's answers must come back to it), and make it
/// come from the VIP. Messages addressed to this host (answers to our own probes)
/// are left alone.
#[inline(always)]
fn reverse(ctx: &XdpContext, u: &Udp, r: &Reverse, key: Option<u32>) -> Result<u32, u32> {
    let vip = &r.vip;
    let hop = next_hop(ctx, vip, &u.dst, ip_len(ctx, u.l3));
    match hop {
        Hop::Local => return Err(reason::PASS_LOCAL),
        Hop::Fail => return Err(reason::FIB_FAIL),
        _ => {}
    }
    if ttl(ctx, u.family, u.l3)? <= 1 {
        return Err(reason::TTL_EXCEEDED);
    }
    if let Some(hash) = key {
        learn(r, hash);
    }
    if u.first_fragment != 0 {
        first_fragment(u, &vip.addr, FRAG_SRC);
    }
    rewrite(ctx, u, Side::Src, vip)?;
    count(reason::REVERSE_NAT);
    send(ctx, hop, Some((u.family, u.l3)))
}

/// Remembers a first fragment's decision for the later fragments.
#[inline(always)]
fn first_fragment(u: &Udp, addr: &[u8; 16], how: u32) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    unsafe {
        (*s).frag_key.src = u.src.addr;
        (*s).frag_key.dst = u.dst.addr;
        (*s).frag_key.id = u.frag_id;
        (*s).frag_key.family = u.family as u32;
        (*s).frag_entry.addr = *addr;
        (*s).frag_entry.how = how;
        (*s).frag_entry._pad = 0;
        (*s).frag_entry.seen = bpf_ktime_get_coarse_ns();
        let _ = FRAGS.insert(&(*s).frag_key, &(*s).frag_entry, 0);
    }
}

/// A later fragment (no UDP header, no Call-ID): it goes where its first
/// fragment went, with the same address rewritten.
#[inline(always)]
fn later_fragment(ctx: &XdpContext) -> Result<u32, u32> {
    let s = SCRATCH.get_ptr_mut(0).ok_or(reason::MALFORMED)?;
    let (family, l3) = unsafe {
        parse_fragment(
            ctx,
            &mut (*s).frag_key,
            &mut (*s).frag_src,
            &mut (*s).frag_dst,
        )?
    };
    // No fresh decision: it came before its first fragment, or belongs to
    // traffic that is not ours. The kernel gets it untouched.
    // The entry is read in place: a copy would not fit on the stack.
    let e = match unsafe { FRAGS.get(&(*s).frag_key) } {
        Some(e) => e,
        None => return Err(reason::FRAGMENT_MISS),
    };
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(e.seen) > FRAG_TIMEOUT_S * 1_000_000_000 {
        return Err(reason::FRAGMENT_MISS);
    }
    let len = ip_len(ctx, l3);
    unsafe {
        if e.how == FRAG_SRC {
            (*s).frag_src.addr = e.addr;
            rewrite_addr(ctx, family, l3, Side::Src, &e.addr)?;
        } else {
            (*s).frag_dst.addr = e.addr;
            if e.how == FRAG_DST {
                rewrite_addr(ctx, family, l3, Side::Dst, &e.addr)?;
            }
        }
    }
    let keep = e.how == FRAG_KEEP;
    count(reason::FRAGMENT);
    let hop = unsafe { next_hop(ctx, &(*s).frag_src, &(*s).frag_dst, len) };
    // DSR only changes MACs; the routed directions count a hop.
    if keep {
        return send(ctx, hop, None);
    }
    if matches!(hop, Hop::Ok { .. }) && ttl(ctx, family, l3)? <= 1 {
        return Err(reason::TTL_EXCEEDED);
    }
    send(ctx, hop, Some((family, l3)))
}

/// Enters the dialog of a backend's message (its key's hash) into the affinity
/// map, pointing at that backend.
#[inline(always)]
fn learn(r: &Reverse, hash: u32) {
    let key = AffinityKey {
        service: r.service,
        hash,
    };
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(e) = AFFINITY.get_ptr_mut(&key) {
        let e = unsafe { &mut *e };
        if e.slot == r.slot {
            e.seen = now;
            return;
        }
    }
    remember(&key, r.slot, now);
    count(reason::AFFINITY_LEARNED);
}

/// Sends the datagram to its next hop: MACs from the FIB's answer, out. With
/// `route` (family, L3 offset) this host routes it (both DNAT directions, and
/// their later fragments): the TTL goes down. An unresolved neighbour sends the
/// (rewritten) datagram up the stack, which resolves it and forwards: nothing is
/// lost while ARP/ND runs.
#[inline(always)]
fn send(ctx: &XdpContext, hop: Hop, route: Option<(u8, usize)>) -> Result<u32, u32> {
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

/// The hash of the service's key in the message; `None` (counted) when the
/// message has none, and the caller falls back to the source address.
/// `keys::message_dispatch` is the same decision in user space (same building
/// blocks, same order, same counters): keep the two in step.
#[inline(always)]
fn key_of(ctx: &XdpContext, u: &Udp, svc: &Service) -> Result<Option<u32>, u32> {
    let alg = svc.algorithm;
    if alg == ALG_SOURCE {
        count(reason::SOURCE);
        return Ok(Some(hash_addr(&u.src.addr, u.family)));
    }
    if alg == ALG_ROUND_ROBIN {
        // Per CPU, so no atomics: each CPU walks the table on its own.
        let c = RR.get_ptr_mut(svc.id).ok_or(reason::MALFORMED)?;
        let h = unsafe { *c };
        unsafe { *c = h.wrapping_add(1) };
        count(reason::ROUND_ROBIN);
        return Ok(Some(h));
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
