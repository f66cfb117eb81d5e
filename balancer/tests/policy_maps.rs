//! The policy maps as user space writes them into the real kernel (no traffic
//! needed): allow-lists following services and their ids, the same contents
//! after a restart adopts the pins, and `whereis` reading the affinity maps in
//! the kernel's order.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use balancer::kernel::{remove_pins, Dataplane, Via};
use balancer::model::{BackendConfig, Config, ServiceConfig};
use balancer_common::maps::{Affinity, AffinityKey, AllowCidr};
use balancer_test_support::netns::require_root;

/// A pin directory removed on drop.
struct Pins(PathBuf);

impl Pins {
    fn new(tag: &str) -> Pins {
        let p = PathBuf::from(format!(
            "/sys/fs/bpf/balancer-test-{tag}-{}",
            std::process::id()
        ));
        let _ = remove_pins(&p);
        Pins(p)
    }

    fn map(&self, name: &str) -> MapData {
        MapData::from_pin(self.0.join(name)).expect("pinned map")
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = remove_pins(&self.0);
    }
}

fn service(vip: &str, backends: &[&str], allow: &[&str]) -> ServiceConfig {
    let mut s = ServiceConfig::with_backends(
        vip.parse().unwrap(),
        backends
            .iter()
            .map(|b| BackendConfig::new(b.parse().unwrap()))
            .collect(),
    );
    s.allow = allow.iter().map(|a| a.parse().unwrap()).collect();
    s
}

fn config(services: Vec<ServiceConfig>) -> Config {
    let c = Config {
        interfaces: vec!["lo".into()],
        services,
        ..Default::default()
    };
    c.validate().unwrap();
    c
}

/// The pinned `ALLOWED`: (service id, CIDR as text).
fn allowed(pins: &Pins) -> HashSet<(u32, String)> {
    let m: LpmTrie<MapData, AllowCidr, u32> = Map::LpmTrie(pins.map("ALLOWED")).try_into().unwrap();
    m.iter()
        .map(Result::unwrap)
        .map(|(k, v)| {
            assert_eq!(v, 1);
            let d = k.data();
            let bits = k.prefix_len() - 64;
            let ip = if d.family == 2 {
                IpAddr::from([d.addr[0], d.addr[1], d.addr[2], d.addr[3]])
            } else {
                IpAddr::from(d.addr)
            };
            (d.service, format!("{ip}/{bits}"))
        })
        .collect()
}

fn set(entries: &[(u32, &str)]) -> HashSet<(u32, String)> {
    entries.iter().map(|(i, s)| (*i, s.to_string())).collect()
}

#[test]
fn allow_lists_follow_services_their_ids_and_a_restart() {
    require_root();
    let pins = Pins::new("allow");
    let a = "10.0.0.10:5060";
    let b = "10.0.0.11:5060";
    let c = "10.0.0.12:5060";
    let mut dp = Dataplane::open(Some(&pins.0)).unwrap();
    let first = config(vec![
        service(a, &["10.0.2.11:5060"], &["198.51.100.0/24"]),
        service(b, &["10.0.2.12:5060"], &["192.0.2.7/32", "10.9.0.0/16"]),
    ]);
    dp.sync(&first).unwrap();
    let id = |dp: &Dataplane, vip: &str| dp.live()[&vip.parse::<SocketAddr>().unwrap()].id;
    assert_eq!((id(&dp, a), id(&dp, b)), (0, 1));
    assert_eq!(
        allowed(&pins),
        set(&[
            (0, "198.51.100.0/24"),
            (1, "192.0.2.7/32"),
            (1, "10.9.0.0/16")
        ])
    );

    // A removed and B's list changed: A's entries go, B's are the new ones.
    let second = config(vec![service(
        b,
        &["10.0.2.12:5060"],
        &["192.0.2.7/32", "203.0.113.0/24"],
    )]);
    dp.sync(&second).unwrap();
    assert_eq!(
        allowed(&pins),
        set(&[(1, "192.0.2.7/32"), (1, "203.0.113.0/24")])
    );

    // C takes A's old id: only C's entries under it, nothing of A's left.
    let mut third = second.clone();
    third
        .services
        .push(service(c, &["10.0.2.13:5060"], &["198.51.100.128/25"]));
    dp.sync(&third).unwrap();
    assert_eq!(id(&dp, c), 0);
    assert_eq!(
        allowed(&pins),
        set(&[
            (1, "192.0.2.7/32"),
            (1, "203.0.113.0/24"),
            (0, "198.51.100.128/25")
        ])
    );

    // A restart adopts the pins and serves the same configuration: the same
    // entries. Then B's list emptied: its entries go, and its flag with them.
    drop(dp);
    let mut dp = Dataplane::open(Some(&pins.0)).unwrap();
    let before = allowed(&pins);
    dp.sync(&third).unwrap();
    assert_eq!(allowed(&pins), before);
    let mut fourth = third.clone();
    fourth.services[0].allow.clear();
    dp.sync(&fourth).unwrap();
    assert_eq!(allowed(&pins), set(&[(0, "198.51.100.128/25")]));
    let flags = dp.live()[&b.parse::<SocketAddr>().unwrap()].kernel.flags;
    assert_eq!(flags & balancer_common::maps::SERVICE_ALLOW_LIST, 0);
}

fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[test]
fn whereis_reads_affinity_then_learned_then_the_table() {
    require_root();
    let pins = Pins::new("whereis");
    let vip: SocketAddr = "10.0.0.10:5060".parse().unwrap();
    let backends = ["10.0.2.11:5060", "10.0.2.12:5060"];
    let mut dp = Dataplane::open(Some(&pins.0)).unwrap();
    dp.sync(&config(vec![service(&vip.to_string(), &backends, &[])]))
        .unwrap();
    let id = dp.live()[&vip].id;
    let hash = 0x1234_5678;
    let (table, via) = dp.lookup(vip, hash).unwrap();
    assert_eq!(via, Via::Table);
    let table = table.unwrap();
    let other: SocketAddr = backends
        .iter()
        .map(|b| b.parse().unwrap())
        .find(|b| *b != table)
        .unwrap();
    let key = AffinityKey { service: id, hash };
    let entry = |to: SocketAddr, seen: u64| Affinity {
        slot: dp.slot_of(to).unwrap(),
        _pad: 0,
        seen,
    };
    let now = monotonic_ns();
    // Idle longer than the default 12 h (wrapping, as the kernel computes it).
    let stale = now.wrapping_sub(13 * 3600 * 1_000_000_000);

    // A fresh learned entry (a dialog the other backend started) wins over the table.
    let mut learned: BpfHashMap<MapData, AffinityKey, Affinity> =
        Map::LruHashMap(pins.map("LEARNED")).try_into().unwrap();
    learned.insert(key, entry(other, now), 0).unwrap();
    assert_eq!(dp.lookup(vip, hash).unwrap(), (Some(other), Via::Learned));
    // Stale, it does not.
    learned.insert(key, entry(other, stale), 0).unwrap();
    assert_eq!(dp.lookup(vip, hash).unwrap(), (Some(table), Via::Table));
    learned.insert(key, entry(other, now), 0).unwrap();

    // A client's entry comes first, fresh...
    let mut affinity: BpfHashMap<MapData, AffinityKey, Affinity> =
        Map::LruHashMap(pins.map("AFFINITY")).try_into().unwrap();
    affinity.insert(key, entry(table, now), 0).unwrap();
    assert_eq!(dp.lookup(vip, hash).unwrap(), (Some(table), Via::Affinity));
    // ...and stale it gives way to a fresh learned entry...
    affinity.insert(key, entry(table, stale), 0).unwrap();
    assert_eq!(dp.lookup(vip, hash).unwrap(), (Some(other), Via::Learned));
    // ...and with that one stale too, to the table.
    learned.insert(key, entry(other, stale), 0).unwrap();
    assert_eq!(dp.lookup(vip, hash).unwrap(), (Some(table), Via::Table));
}
