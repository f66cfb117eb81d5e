//! The packet's path (README, "What the data plane does"), top to bottom: parse,
//! service lookup or reverse NAT, key, backend, rewrite, next hop, out. Every
//! early exit is counted and passes the frame untouched.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use balancer_common::{
    hash::hash_addr,
    maglev,
    maps::{
        reason, Endpoint, Reverse, Service, ALG_ROUND_ROBIN, FRAG_DST, FRAG_KEEP, FRAG_SRC,
        MODE_DSR, NO_BACKEND, SERVICE_AFFINITY, SERVICE_PASS_NO_BACKEND, SERVICE_SCANNERS,
    },
};

use crate::{
    affinity,
    bounds::ptr_at,
    counters::{add_traffic, count, BACKEND_STATS, SERVICE_STATS},
    egress::{send, TX_PORTS},
    events,
    fib::{backend_hop, ip_len, next_hop, Hop},
    filters, fragments, guard,
    key::key_of,
    maps::{BACKENDS, MAGLEV, REVERSE, SCRATCH, SERVICES, TRIVIAL},
    parse::{join, parse, parse_fragment, Udp},
    policy,
    rewrite::{rewrite, rewrite_addr, ttl, Side},
};

#[xdp]
pub fn balancer(ctx: XdpContext) -> u32 {
    let action = match try_balancer(&ctx) {
        Ok(action) => action,
        Err(r) => {
            count(r);
            xdp_action::XDP_PASS
        }
    };
    events::log(&ctx);
    action
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
    // (algorithm, service id): all the key search needs.
    let (alg, id) = if let Some(s) = unsafe { SERVICES.get(&u.dst) } {
        if let Err(r) = screen(ctx, &u, s) {
            count(r);
            return Ok(xdp_action::XDP_DROP);
        }
        policy::set_forward(true);
        (s.algorithm, s.id)
    } else if let Some(r) = unsafe { REVERSE.get(&u.src) } {
        // Only a backend's own datagrams are reverse-NATed or teach affinity.
        if !guard::source_ok(ctx, &u.src.addr, u.family as u32) {
            count(reason::SPOOFED);
            return Ok(xdp_action::XDP_DROP);
        }
        // Learning needs the backend's requests only (a dialog it starts begins
        // with one); its responses belong to dialogs already known.
        if r.learn == 0 || is_response(ctx, &u) {
            let r = *r;
            return reverse(ctx, &u, &r, None);
        }
        policy::set_forward(false);
        (r.algorithm, r.service)
    } else {
        return Err(reason::PASS_NO_SERVICE);
    };
    let key = key_of(ctx, &u, alg, id)?;
    // Which way, read back from memory rather than kept: a flag kept here
    // would keep the two directions' verifier states apart through the search.
    if let Some(s) = policy::forward_service() {
        let hash = match key {
            Some(h) => h,
            None => hash_addr(&u.src.addr, u.family),
        };
        // Read back where a dialog may be created (`affinity::choose`), from
        // memory: a flag kept here would split the verifier's paths.
        policy::set_keyed(key.is_some());
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

/// What a datagram to a service must pass before anything is done for it
/// (`policy::admit`). `Err`: drop it, counted under that reason.
#[inline(always)]
fn screen(ctx: &XdpContext, u: &Udp, svc: &Service) -> Result<(), u32> {
    let s = SCRATCH.get_ptr_mut(0).ok_or(reason::MALFORMED)?;
    unsafe {
        let p = &mut (*s).policy;
        p.service = *svc;
        p.cidr.data.family = u.family as u32;
        p.cidr.data.addr = u.src.addr;
        p.payload_len = u.payload_len;
        p.l4 = u.l4 as u32;
        p.first_fragment = u.first_fragment;
    }
    match policy::admit(ctx) {
        0 => Ok(()),
        r => Err(r),
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
fn dispatch(ctx: &XdpContext, u: &Udp, svc: &Service, hash: u32) -> Result<u32, u32> {
    if svc.flags & SERVICE_SCANNERS != 0 && filters::is_scanner(ctx, u, false) {
        count(reason::SCANNER);
        return Ok(xdp_action::XDP_DROP);
    }
    let slot = match pick(ctx, u, svc, hash) {
        Ok(slot) => slot,
        Err(r)
            if r == reason::DIALOG_LIMITED || r == reason::AUTO_BLOCKED || r == reason::BLOCKED =>
        {
            count(r);
            return Ok(xdp_action::XDP_DROP);
        }
        Err(r) => return Err(r),
    };
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
        fragments::remember(u, &target.addr, how);
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

/// The backend for a key: the Maglev table's, or with dialog affinity the
/// dialog's own while that backend still takes its traffic.
#[inline(always)]
fn pick(ctx: &XdpContext, u: &Udp, svc: &Service, hash: u32) -> Result<u32, u32> {
    let idx = maglev::table_base(svc.id, svc.active) + maglev::index(hash, svc.table_size);
    let Some(&table) = MAGLEV.get(idx) else {
        // Only a service user space got wrong (id, table size) lands outside.
        events::note(events::MAGLEV_OUT_OF_RANGE, svc.id, idx.into());
        return Err(reason::NO_BACKEND);
    };
    // Round-robin's key is a counter, a fallback's the source: no dialog's;
    // a REGISTER or PUBLISH is in none.
    if svc.flags & SERVICE_AFFINITY == 0
        || svc.algorithm == ALG_ROUND_ROBIN
        || !policy::keyed()
        || policy::never_in_dialog(ctx, u)
    {
        return Ok(table);
    }
    affinity::choose(ctx, u, svc, hash, table)
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
        affinity::learn(r, hash, policy::request_starts_dialog(ctx, u));
    }
    if u.first_fragment != 0 {
        fragments::remember(u, &vip.addr, FRAG_SRC);
    }
    rewrite(ctx, u, Side::Src, vip)?;
    count(reason::REVERSE_NAT);
    send(ctx, hop, Some((u.family, u.l3)))
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
    // Without a fresh decision the kernel gets it untouched.
    let e = fragments::decision(unsafe { &(*s).frag_key })?;
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
