//! Reading what the kernel holds and counts: verdict counters, traffic, and
//! where a key goes right now.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, Result};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray};
use balancer_common::limits::{RateSlot, RATE_SLOTS};
use balancer_common::maglev;
use balancer_common::maps::AF_INET6;
use balancer_common::maps::{
    names, reason, Affinity, AffinityKey, Backend, Endpoint, Service, Traffic, ALG_ROUND_ROBIN,
    BACKEND_STICKY, NO_BACKEND, SERVICE_AFFINITY,
};
use ipnet::IpNet;

use super::{backend_addr, Dataplane};
use serde::{Deserialize, Serialize};

/// Which of the kernel's structures decided.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The dialog's affinity entry (fresh, backend sticky).
    Affinity,
    /// The entry learned from the backend's own request (a dialog it started).
    Learned,
    /// The service's Maglev table.
    Table,
}

/// A source the kernel blocks for going over a service's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoBlock {
    pub service: SocketAddr,
    pub source: IpNet,
    pub remaining: Duration,
}

impl Dataplane {
    /// Where the kernel sends a key hash now, and which structure decided, in
    /// the data plane's order (`balancer-ebpf/src/affinity.rs`, `choose`): the
    /// dialog's `AFFINITY` entry while it holds (fresh, backend sticky); else
    /// a `LEARNED` one that holds; else the live table.
    pub fn lookup(&self, vip: SocketAddr, hash: u32) -> Result<(Option<SocketAddr>, Via)> {
        let svc: BpfHashMap<&MapData, Endpoint, Service> = self.map_ref(names::SERVICES)?;
        let s = svc
            .get(&Endpoint::from(vip), 0)
            .map_err(|_| anyhow!("the kernel has no service {vip}"))?;
        let backends: Array<&MapData, Backend> = self.map_ref(names::BACKENDS)?;
        if s.flags & SERVICE_AFFINITY != 0 && s.algorithm != ALG_ROUND_ROBIN {
            let key = AffinityKey {
                service: s.id,
                hash,
            };
            let now = monotonic_ns();
            for (map, via) in [
                (names::AFFINITY, Via::Affinity),
                (names::LEARNED, Via::Learned),
            ] {
                let m: BpfHashMap<&MapData, AffinityKey, Affinity> = self.map_ref(map)?;
                let Ok(e) = m.get(&key, 0) else { continue };
                let b = backends.get(&e.slot, 0)?;
                if e.is_fresh(now, s.affinity_idle) && b.flags & BACKEND_STICKY != 0 {
                    return Ok((Some(backend_addr(&b)), via));
                }
            }
        }
        let table: Array<&MapData, u32> = self.map_ref(names::MAGLEV)?;
        let idx = maglev::table_base(s.id, s.active) + maglev::index(hash, s.table_size);
        let slot = table.get(&idx, 0)?;
        if slot == NO_BACKEND {
            return Ok((None, Via::Table));
        }
        Ok((Some(backend_addr(&backends.get(&slot, 0)?)), Via::Table))
    }

    /// Sources the kernel blocks for going over a service's limits now: the
    /// service, the source (an IPv4 address, an IPv6 /64) and how long it stays
    /// blocked.
    pub fn auto_blocked(&self) -> Result<Vec<AutoBlock>> {
        let rates: Array<&MapData, RateSlot> = self.map_ref(names::RATES)?;
        let vips: HashMap<u32, SocketAddr> =
            self.live.iter().map(|(vip, l)| (l.id, *vip)).collect();
        let now = monotonic_ns();
        let mut out = Vec::new();
        for i in 0..RATE_SLOTS {
            let Ok(slot) = rates.get(&i, 0) else { continue };
            let (k, b) = (slot.source, slot.bucket);
            if b.blocked_until <= now {
                continue;
            }
            let Some(vip) = vips.get(&k.service) else {
                continue;
            };
            let source = match k.family as u8 {
                AF_INET6 => IpNet::new(IpAddr::from(k.addr), 64),
                _ => IpNet::new(
                    IpAddr::from([k.addr[0], k.addr[1], k.addr[2], k.addr[3]]),
                    32,
                ),
            }
            .expect("valid prefix lengths");
            out.push(AutoBlock {
                service: *vip,
                source,
                remaining: Duration::from_nanos(b.blocked_until - now),
            });
        }
        out.sort_by_key(|a| (a.service, a.source));
        Ok(out)
    }

    /// Verdict counters summed over CPUs, by name.
    pub fn stats(&self) -> Result<Vec<(&'static str, u64)>> {
        let m: PerCpuArray<&MapData, u64> = self.map_ref(names::STATS)?;
        (0..reason::COUNT)
            .map(|r| Ok((reason::NAMES[r as usize], m.get(&r, 0)?.iter().sum())))
            .collect()
    }

    /// Traffic of a backend slot, summed over CPUs.
    pub fn backend_traffic(&self, slot: u32) -> Result<Traffic> {
        self.traffic(names::BACKEND_STATS, slot)
    }

    /// Traffic of a service, summed over CPUs.
    pub fn service_traffic(&self, id: u32) -> Result<Traffic> {
        self.traffic(names::SERVICE_STATS, id)
    }

    fn traffic(&self, map: &str, idx: u32) -> Result<Traffic> {
        let m: PerCpuArray<&MapData, Traffic> = self.map_ref(map)?;
        Ok(m.get(&idx, 0)?
            .iter()
            .fold(Traffic::default(), |a, t| Traffic {
                packets: a.packets + t.packets,
                bytes: a.bytes + t.bytes,
            }))
    }
}

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`.
pub(super) fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
