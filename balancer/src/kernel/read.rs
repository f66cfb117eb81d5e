//! Reading what the kernel holds and counts: verdict counters, traffic, and
//! where a key goes right now.

use std::net::SocketAddr;

use anyhow::{anyhow, Result};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray};
use balancer_common::maglev;
use balancer_common::maps::{
    names, reason, Affinity, AffinityKey, Backend, Endpoint, Service, Traffic, BACKEND_STICKY,
    NO_BACKEND, SERVICE_AFFINITY,
};

use super::{backend_addr, Dataplane};
use serde::{Deserialize, Serialize};

/// Which of the kernel's structures decided.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The dialog's affinity entry (fresh, backend sticky).
    Affinity,
    /// The service's Maglev table.
    Table,
}

impl Dataplane {
    /// Where the kernel sends a key hash now: the dialog's affinity entry while
    /// it holds (fresh, backend sticky), else the live table; and which decided.
    pub fn lookup(&self, vip: SocketAddr, hash: u32) -> Result<(Option<SocketAddr>, Via)> {
        let svc: BpfHashMap<&MapData, Endpoint, Service> = self.map_ref(names::SERVICES)?;
        let s = svc
            .get(&Endpoint::from(vip), 0)
            .map_err(|_| anyhow!("the kernel has no service {vip}"))?;
        let backends: Array<&MapData, Backend> = self.map_ref(names::BACKENDS)?;
        if s.flags & SERVICE_AFFINITY != 0 {
            let aff: BpfHashMap<&MapData, AffinityKey, Affinity> = self.map_ref(names::AFFINITY)?;
            if let Ok(e) = aff.get(
                &AffinityKey {
                    service: s.id,
                    hash,
                },
                0,
            ) {
                let b = backends.get(&e.slot, 0)?;
                if e.is_fresh(monotonic_ns(), s.affinity_idle) && b.flags & BACKEND_STICKY != 0 {
                    return Ok((Some(backend_addr(&b)), Via::Affinity));
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
fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
