//! Who may use a service: the block list, the service's allow-list, the size
//! limit and the per-source rate limits (datagrams, new dialogs). Applied to
//! datagrams addressed to a service, before any state is created for them.

use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{lpm_trie::Key, LpmTrie, LruHashMap},
};
use balancer_common::{
    limits::{source_prefix, Bucket, Verdict},
    maps::{
        reason, AllowCidr, Block, Cidr, RateKey, Service, ALLOW_ENTRIES, ALLOW_PREFIX_BITS,
        BLOCK_ENTRIES, CIDR_FAMILY_BITS, RATE_ENTRIES, SERVICE_ALLOW_LIST,
    },
};

use crate::{counters::count, parse::Udp};

/// The block list (every service): prefix -> until when. (aya adds the
/// `BPF_F_NO_PREALLOC` an LPM trie needs.)
#[map]
pub static BLOCKED: LpmTrie<Cidr, Block> = LpmTrie::with_max_entries(BLOCK_ENTRIES, 0);

/// The services' allow-lists: (service, prefix) -> unused.
#[map]
pub static ALLOWED: LpmTrie<AllowCidr, u32> = LpmTrie::with_max_entries(ALLOW_ENTRIES, 0);

/// Per (service, source) token buckets. LRU: a flood of fresh sources evicts
/// idle buckets, which only gives those sources a full bucket again.
#[map]
pub static RATES: LruHashMap<RateKey, Bucket> = LruHashMap::with_max_entries(RATE_ENTRIES, 0);

/// Admits a datagram to `svc` from `u`'s source, or names the reason it is
/// dropped. Takes a datagram token.
#[inline(always)]
pub fn admit(u: &Udp, svc: &Service, now: u64) -> Result<(), u32> {
    if svc.max_size != 0 && u.payload_len > svc.max_size {
        return Err(reason::TOO_BIG);
    }
    let bits = if u.family == balancer_common::maps::AF_INET {
        32
    } else {
        128
    };
    let block = Key::new(
        CIDR_FAMILY_BITS + bits,
        Cidr {
            family: u.family as u32,
            addr: u.src.addr,
        },
    );
    if let Some(b) = BLOCKED.get(&block) {
        if b.until == 0 || now < b.until {
            return Err(reason::BLOCKED);
        }
    }
    if svc.flags & SERVICE_ALLOW_LIST != 0 {
        let allow = Key::new(
            ALLOW_PREFIX_BITS + bits,
            AllowCidr {
                service: svc.id,
                family: u.family as u32,
                addr: u.src.addr,
            },
        );
        if ALLOWED.get(&allow).is_none() {
            return Err(reason::NOT_ALLOWED);
        }
    }
    if svc.rate == 0 && svc.dialog_rate == 0 {
        return Ok(());
    }
    let key = rate_key(u, svc);
    match RATES.get_ptr_mut(&key) {
        Some(b) => {
            let b = unsafe { &mut *b };
            b.refill(svc, now);
            verdict(b.datagram(svc, now), reason::RATE_LIMITED)
        }
        None => {
            let mut b = Bucket::fresh(svc, now);
            let v = b.datagram(svc, now);
            let _ = RATES.insert(&key, &b, 0);
            verdict(v, reason::RATE_LIMITED)
        }
    }
}

/// Takes a new-dialog token for `u`'s source (its bucket was made by `admit`).
#[inline(always)]
pub fn new_dialog(u: &Udp, svc: &Service) -> Result<(), u32> {
    if svc.dialog_rate == 0 {
        return Ok(());
    }
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    match RATES.get_ptr_mut(&rate_key(u, svc)) {
        Some(b) => verdict(unsafe { (*b).dialog(svc, now) }, reason::DIALOG_LIMITED),
        // Evicted since `admit`: a fresh bucket would allow it anyway.
        None => Ok(()),
    }
}

#[inline(always)]
fn rate_key(u: &Udp, svc: &Service) -> RateKey {
    RateKey {
        addr: source_prefix(&u.src.addr, u.family),
        family: u.family as u32,
        service: svc.id,
    }
}

#[inline(always)]
fn verdict(v: Verdict, over: u32) -> Result<(), u32> {
    match v {
        Verdict::Pass => Ok(()),
        Verdict::Over => Err(over),
        Verdict::Blocked => {
            count(over);
            Err(reason::AUTO_BLOCKED)
        }
        Verdict::StillBlocked => Err(reason::BLOCKED),
    }
}
