//! Forgetting the program's cached next hops towards addresses whose route
//! moved. `NEXTHOP` (and each backend slot's copy in `SLOT_HOPS`) keeps a
//! `bpf_fib_lookup` answer for up to a second (balancer-ebpf/src/fib.rs):
//! forgotten, the next datagram asks the FIB again and leaves by the new
//! interface at once.

use std::net::{IpAddr, SocketAddr};

use anyhow::{anyhow, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues};
use balancer_common::maps::{names, Endpoint};

use super::Dataplane;

/// `NhKey`: address (16 bytes, IPv4 in the first four), ingress ifindex,
/// family. Only the address is read here.
type NhKey = [u8; 24];
/// `NhEntry`, as bytes: only removed, never read.
type NhEntry = [u8; 32];
/// `SlotHop`: address, ingress, padding, `NhEntry`. All zero is "no copy"
/// (its `expires` is 0, long past).
type SlotHop = [u8; 56];

impl Dataplane {
    /// Removes the cached next hops towards `addrs` and clears the copies of
    /// the backend slots `slots`; returns how many cache entries went.
    pub fn forget_next_hops(&mut self, addrs: &[IpAddr], slots: &[u32]) -> Result<usize> {
        let wanted: Vec<[u8; 16]> = addrs
            .iter()
            .map(|a| Endpoint::from(SocketAddr::new(*a, 0)).addr)
            .collect();
        let mut cache: BpfHashMap<&mut MapData, NhKey, NhEntry> = self.map(names::NEXTHOP)?;
        let stale: Vec<NhKey> = cache
            .keys()
            .filter_map(Result::ok)
            .filter(|k| wanted.iter().any(|w| k[..16] == w[..]))
            .collect();
        for k in &stale {
            // Gone already (LRU eviction): as good.
            let _ = cache.remove(k);
        }
        if !slots.is_empty() {
            let n = aya::util::nr_cpus().map_err(|(m, e)| anyhow!("{m}: {e}"))?;
            let mut copies: PerCpuArray<&mut MapData, SlotHop> = self.map(names::SLOT_HOPS)?;
            for s in slots {
                copies.set(*s, PerCpuValues::try_from(vec![[0u8; 56]; n])?, 0)?;
            }
        }
        Ok(stale.len())
    }
}
