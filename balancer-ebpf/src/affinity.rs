//! Dialog affinity: a dialog stays on its backend while that backend takes its
//! traffic, whatever the Maglev table says meanwhile.

use aya_ebpf::{
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{LruHashMap, RingBuf},
    programs::XdpContext,
};
use balancer_common::maps::{
    reason, Affinity, AffinityEvent, AffinityKey, Reverse, Service, AFFINITY_ENTRIES,
    AFFINITY_EVENTS_BYTES, BACKEND_STICKY, EVENT_CLIENT, EVENT_LEARNED, LEARNED_ENTRIES,
    NO_BACKEND, REVERSE_SYNC, SERVICE_SYNC,
};

use crate::{counters::count, events, maps::BACKENDS, parse::Udp, policy};

/// (service, key hash) -> backend for the dialogs clients start, least
/// recently used entries evicted when full. User space may resize it at load time.
#[map]
pub static AFFINITY: LruHashMap<AffinityKey, Affinity> =
    LruHashMap::with_max_entries(AFFINITY_ENTRIES, 0);

/// The same for dialogs backends start (learned from their requests): a map
/// of its own, so no amount of client traffic evicts them.
#[map]
pub static LEARNED: LruHashMap<AffinityKey, Affinity> =
    LruHashMap::with_max_entries(LEARNED_ENTRIES, 0);

/// The entries made here, for the daemon to tell its `[sync]` peers: a
/// balancer that takes over this one's dialogs (ECMP moved them) then keeps
/// them on their backends. Only services with [`SERVICE_SYNC`] (and backends
/// with [`REVERSE_SYNC`]) queue anything.
#[map]
pub static AFFINITY_EVENTS: RingBuf = RingBuf::with_byte_size(AFFINITY_EVENTS_BYTES, 0);

/// The backend for a key whose table choice is `table`: the dialog's own while
/// it is fresh and its backend sticky, else the table's. Only a request that
/// starts a dialog (`policy::starts_dialog`) creates or replaces an entry, and
/// a new one costs its source a new-dialog token (`Err`: over the limit, drop it).
#[inline(always)]
pub fn choose(ctx: &XdpContext, u: &Udp, svc: &Service, hash: u32, table: u32) -> Result<u32, u32> {
    let key = AffinityKey {
        service: svc.id,
        hash,
    };
    let now = policy::now();
    // An entry that no longer holds is replaced in place by a dialog start.
    let mut stale: Option<*mut Affinity> = None;
    if let Some(e) = AFFINITY.get_ptr_mut(&key) {
        let entry = unsafe { &mut *e };
        if entry.is_fresh(now, svc.affinity_idle) && sticky(entry.slot) {
            entry.touch(now);
            count(reason::AFFINITY_HIT);
            return Ok(entry.slot);
        }
        stale = Some(e);
    }
    if let Some(e) = LEARNED.get_ptr_mut(&key) {
        let e = unsafe { &mut *e };
        if e.is_fresh(now, svc.affinity_idle) && sticky(e.slot) {
            e.touch(now);
            count(reason::AFFINITY_HIT);
            return Ok(e.slot);
        }
    }
    if table == NO_BACKEND || !policy::starts_dialog(ctx, u) {
        return Ok(table);
    }
    match stale {
        Some(e) => {
            let e = unsafe { &mut *e };
            e.slot = table;
            e.seen = now;
            count(reason::AFFINITY_REPLACED);
        }
        None => {
            policy::new_dialog(svc)?;
            remember(&AFFINITY, &key, table, now);
            count(reason::AFFINITY_NEW);
        }
    }
    if svc.flags & SERVICE_SYNC != 0 {
        tell(EVENT_CLIENT, svc.id, hash, table);
    }
    Ok(table)
}

/// Enters the dialog of a backend's request (its key's hash) into `LEARNED`,
/// pointing at that backend, when the request begins one (`starts`); other
/// requests only refresh what is there. A backend's OPTIONS pings to its
/// phones (a fresh Call-ID each) would otherwise fill the map.
#[inline(always)]
pub fn learn(r: &Reverse, hash: u32, starts: bool) {
    let key = AffinityKey {
        service: r.service,
        hash,
    };
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(e) = LEARNED.get_ptr_mut(&key) {
        let e = unsafe { &mut *e };
        if e.slot == r.slot {
            e.touch(now);
            return;
        }
    }
    if !starts {
        return;
    }
    remember(&LEARNED, &key, r.slot, now);
    count(reason::AFFINITY_LEARNED);
    if r.learn & REVERSE_SYNC != 0 {
        tell(EVENT_LEARNED, r.service, hash, r.slot);
    }
}

/// Queues a new entry for the daemon. A subprogram: the main function's
/// verifier state does not grow by the helper call. A full ring (no daemon
/// reading it) loses the event, noted for the log; the entry itself stands.
#[inline(never)]
fn tell(map: u32, service: u32, hash: u32, slot: u32) {
    let event = AffinityEvent {
        map,
        service,
        hash,
        slot,
    };
    if let Err(e) = AFFINITY_EVENTS.output::<AffinityEvent>(&event, 0) {
        events::note(events::AFFINITY_NOT_QUEUED, service, e as i64);
    }
}

/// A new affinity entry (the LRU map evicts the least recently used when full:
/// a failure is not a full map).
#[inline(always)]
fn remember(map: &LruHashMap<AffinityKey, Affinity>, key: &AffinityKey, slot: u32, now: u64) {
    let entry = Affinity {
        slot,
        _pad: 0,
        seen: now,
    };
    if let Err(e) = map.insert(key, &entry, 0) {
        events::note(events::AFFINITY_NOT_STORED, key.service, e.into());
    }
}

/// Whether dialogs pinned to `slot` stay there (active or draining, not down).
#[inline(always)]
fn sticky(slot: u32) -> bool {
    match BACKENDS.get(slot) {
        Some(b) => b.flags & BACKEND_STICKY != 0,
        None => false,
    }
}
