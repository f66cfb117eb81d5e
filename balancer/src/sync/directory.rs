//! Kernel numbers to addresses and back. The program names services by id
//! and backends by slot; each balancer numbers them by itself, so entries
//! travel by address, and each end translates with its own directory.

use std::collections::HashMap;
use std::net::SocketAddr;

use balancer_common::maps::AffinityKey;

use super::wire::{Entry, Map};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Service {
    id: u32,
    idle_s: u32,
    /// Backend address to slot, for this service's backends only.
    backends: HashMap<SocketAddr, u32>,
}

/// The services and backends the kernel serves now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    services: HashMap<SocketAddr, Service>,
    vips: HashMap<u32, SocketAddr>,
    backends: HashMap<u32, SocketAddr>,
}

/// Why a peer's entry was not entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unknown {
    /// No service on that VIP here (or without affinity).
    Service,
    /// The service has no such backend here.
    Backend,
}

impl Directory {
    /// Adds a service with affinity: its id, idle time, and `(address, slot)`
    /// of each backend.
    pub fn add(
        &mut self,
        vip: SocketAddr,
        id: u32,
        idle_s: u32,
        backends: impl IntoIterator<Item = (SocketAddr, u32)>,
    ) {
        let backends: HashMap<SocketAddr, u32> = backends.into_iter().collect();
        for (a, s) in &backends {
            self.backends.insert(*s, *a);
        }
        self.vips.insert(id, vip);
        self.services.insert(
            vip,
            Service {
                id,
                idle_s,
                backends,
            },
        );
    }

    /// A kernel entry as peers understand it; `None` for a service or slot
    /// this directory does not know (changed meanwhile).
    pub fn entry(&self, map: Map, key: AffinityKey, slot: u32, age_ms: u32) -> Option<Entry> {
        let vip = *self.vips.get(&key.service)?;
        let backend = *self.backends.get(&slot)?;
        self.services.get(&vip)?.backends.get(&backend)?;
        Some(Entry {
            map,
            vip,
            hash: key.hash,
            backend,
            age_ms,
        })
    }

    /// A peer's entry as this kernel keys it: the key and the backend's slot.
    pub fn local(&self, e: &Entry) -> Result<(AffinityKey, u32), Unknown> {
        let s = self.services.get(&e.vip).ok_or(Unknown::Service)?;
        let slot = *s.backends.get(&e.backend).ok_or(Unknown::Backend)?;
        Ok((
            AffinityKey {
                service: s.id,
                hash: e.hash,
            },
            slot,
        ))
    }

    /// The idle time of service `id`, seconds.
    pub fn idle_s(&self, id: u32) -> Option<u32> {
        self.services.get(self.vips.get(&id)?).map(|s| s.idle_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Two balancers number the same service and backends differently; an
    /// entry goes from one's numbers to the other's through the addresses.
    #[test]
    fn entries_cross_between_numberings() {
        let mut one = Directory::default();
        one.add(
            a("10.0.0.10:5060"),
            3,
            60,
            [(a("10.0.2.11:5060"), 7), (a("10.0.2.12:5060"), 8)],
        );
        let mut two = Directory::default();
        two.add(
            a("10.0.0.10:5060"),
            0,
            60,
            [(a("10.0.2.12:5060"), 1), (a("10.0.2.11:5060"), 2)],
        );
        let key = AffinityKey {
            service: 3,
            hash: 0xdead_beef,
        };
        let e = one.entry(Map::Client, key, 8, 5).unwrap();
        assert_eq!(e.backend, a("10.0.2.12:5060"));
        let (k, slot) = two.local(&e).unwrap();
        assert_eq!((k.service, k.hash, slot), (0, 0xdead_beef, 1));
    }

    #[test]
    fn unknown_services_and_backends_are_named() {
        let mut d = Directory::default();
        d.add(a("10.0.0.10:5060"), 0, 60, [(a("10.0.2.11:5060"), 0)]);
        let e = Entry {
            map: Map::Learned,
            vip: a("10.0.0.99:5060"),
            hash: 1,
            backend: a("10.0.2.11:5060"),
            age_ms: 0,
        };
        assert_eq!(d.local(&e), Err(Unknown::Service));
        let e = Entry {
            vip: a("10.0.0.10:5060"),
            backend: a("10.0.2.99:5060"),
            ..e
        };
        assert_eq!(d.local(&e), Err(Unknown::Backend));
        // A slot of another service's backend is not this service's.
        d.add(a("10.0.0.11:5060"), 1, 60, [(a("10.0.2.12:5060"), 1)]);
        let key = AffinityKey {
            service: 0,
            hash: 1,
        };
        assert_eq!(d.entry(Map::Client, key, 1, 0), None);
        assert_eq!(d.idle_s(1), Some(60));
    }
}
