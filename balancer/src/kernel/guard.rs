//! Strict reverse path (`GUARD`): the interface each known source address may
//! arrive on. A pure function of the configuration, the routes to the
//! backends and this host's addresses; [`Dataplane::write_guard`] writes the
//! difference.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use anyhow::Result;
use aya::maps::{HashMap as BpfHashMap, MapData};
use balancer_common::hints::GUARD_HINTS;
use balancer_common::maps::{names, Guard, SourceAddr};

use super::Dataplane;
use crate::model::Config;

/// Never accepted from outside: a VIP, an address of this host.
pub const NEVER: u32 = 0;

/// The key of an address.
pub fn source(ip: IpAddr) -> SourceAddr {
    let e = balancer_common::maps::Endpoint::from(SocketAddr::new(ip, 0));
    SourceAddr {
        addr: e.addr,
        family: e.family as u32,
    }
}

/// `GUARD`'s contents: every backend address on the interface the route to it
/// uses (`routes`: ifindex by address; a backend without a route is left out,
/// unchecked, rather than refused everywhere), every VIP and every address of
/// this host (`local`) on none. An address that is both a backend and this
/// host's or a VIP is never accepted from outside: the host's own traffic does
/// not come in through an interface.
pub fn entries(
    c: &Config,
    routes: &HashMap<IpAddr, u32>,
    local: &[IpAddr],
) -> HashMap<SourceAddr, Guard> {
    let mut out = HashMap::new();
    for b in c.services.iter().flat_map(|s| &s.backends) {
        if let Some(&ifindex) = routes.get(&b.address.ip()) {
            out.insert(source(b.address.ip()), Guard { ifindex });
        }
    }
    let never = c
        .services
        .iter()
        .map(|s| s.vip.ip())
        .chain(local.iter().copied());
    for ip in never {
        out.insert(source(ip), Guard { ifindex: NEVER });
    }
    out
}

/// What one [`Dataplane::write_guard`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuardWrites {
    pub written: usize,
    pub removed: usize,
}

impl Dataplane {
    /// Makes `GUARD` hold `want`: entries that differ are written, others removed.
    pub fn write_guard(&mut self, want: &HashMap<SourceAddr, Guard>) -> Result<GuardWrites> {
        let mut m: BpfHashMap<&mut MapData, SourceAddr, Guard> = self.map(names::GUARD)?;
        let held: HashMap<SourceAddr, Guard> = m.iter().filter_map(|kv| kv.ok()).collect();
        let mut w = GuardWrites::default();
        for (k, v) in want {
            if held.get(k) != Some(v) {
                m.insert(k, v, 0)?;
                w.written += 1;
            }
        }
        for k in held.keys().filter(|k| !want.contains_key(k)) {
            let _ = m.remove(k);
            w.removed += 1;
        }
        let words = super::hints::guard_words(want.keys().map(|k| &k.addr));
        self.write_hints(GUARD_HINTS, &words)?;
        Ok(w)
    }

    /// What `GUARD` holds (tests, diagnostics).
    pub fn guard(&self) -> Result<HashMap<SourceAddr, Guard>> {
        let m: BpfHashMap<&MapData, SourceAddr, Guard> = self.map_ref(names::GUARD)?;
        Ok(m.iter().filter_map(|kv| kv.ok()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServiceConfig;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn config() -> Config {
        let mut c = Config::default();
        c.services.push(ServiceConfig::with_backends(
            "10.0.0.10:5060".parse().unwrap(),
            vec![
                "10.0.2.11:5060".parse().unwrap(),
                "10.0.2.12:5060".parse().unwrap(),
            ],
        ));
        c.services.push(ServiceConfig::with_backends(
            "[fd00::10]:5060".parse().unwrap(),
            vec!["[fd00:2::11]:5060".parse().unwrap()],
        ));
        c
    }

    #[test]
    fn backends_on_their_route_vips_and_host_never() {
        let routes: HashMap<IpAddr, u32> = [
            (ip("10.0.2.11"), 3),
            (ip("10.0.2.12"), 4),
            (ip("fd00:2::11"), 3),
        ]
        .into();
        let local = [ip("10.0.1.1"), ip("127.0.0.1"), ip("fd00:1::1")];
        let g = entries(&config(), &routes, &local);
        let at = |s: &str| g.get(&source(ip(s))).map(|g| g.ifindex);
        assert_eq!(at("10.0.2.11"), Some(3));
        assert_eq!(at("10.0.2.12"), Some(4));
        assert_eq!(at("fd00:2::11"), Some(3));
        assert_eq!(at("10.0.0.10"), Some(NEVER));
        assert_eq!(at("fd00::10"), Some(NEVER));
        assert_eq!(at("10.0.1.1"), Some(NEVER));
        assert_eq!(at("fd00:1::1"), Some(NEVER));
        assert_eq!(at("10.0.1.2"), None);
        assert_eq!(g.len(), 8);
        let k = source(ip("10.0.2.11"));
        assert_eq!(&k.addr[..4], &[10, 0, 2, 11]);
        assert!(k.addr[4..].iter().all(|b| *b == 0));
        assert_eq!(k.family, 2);
        assert_eq!(source(ip("fd00::10")).family, 10);
    }

    #[test]
    fn a_backend_without_a_route_is_unchecked_and_the_host_wins() {
        let routes: HashMap<IpAddr, u32> = [(ip("10.0.2.11"), 3)].into();
        // 10.0.2.12 is also this host's address.
        let g = entries(&config(), &routes, &[ip("10.0.2.12")]);
        assert_eq!(g[&source(ip("10.0.2.11"))].ifindex, 3);
        assert_eq!(g[&source(ip("10.0.2.12"))].ifindex, NEVER);
        assert!(!g.contains_key(&source(ip("fd00:2::11"))));
    }
}
