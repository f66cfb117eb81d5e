//! What the kernel's maps must hold to serve a configuration, computed without
//! touching the kernel: a pure function of the configuration, the backends the
//! probes hold down, and what the kernel already holds (slots and service ids
//! are kept across changes, so that a change moves nothing it does not have to).
//! [`apply`](super::apply) writes the difference.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use balancer_common::limits::interval;
use balancer_common::maglev::BuildError;
use balancer_common::maps::{
    AllowCidr, Backend, Block, Cidr, Endpoint, Reverse, Service, UaPattern, AF_INET, AF_INET6,
    ALLOW_PREFIX_BITS, BACKEND_STICKY, CIDR_FAMILY_BITS, MAX_BACKENDS, MAX_SERVICES,
    MAX_UA_PATTERNS, NO_BACKEND, REVERSE_LEARN, REVERSE_SYNC, SERVICE_AFFINITY, SERVICE_ALLOW_LIST,
    SERVICE_PASS_NO_BACKEND, SERVICE_SCANNERS, SERVICE_SYNC,
};
use ipnet::IpNet;

use crate::model::{AdminState, Config, Mode, NoBackend, ServiceConfig, AFFINITY_IDLE};
use crate::select::Selector;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("at most {MAX_BACKENDS} backends")]
    TooManyBackends,
    #[error("at most {MAX_SERVICES} services")]
    TooManyServices,
    #[error("service {0}: {1}")]
    Table(SocketAddr, BuildError),
}

/// A service the kernel serves now.
#[derive(Clone, Debug)]
pub struct Held {
    pub entry: Service,
    /// The slots of its active table half; `None` when unknown (a service
    /// adopted from an earlier run's pins), which forces a rewrite.
    pub table: Option<Vec<u32>>,
}

/// What the kernel holds now, as far as planning needs it.
#[derive(Clone, Debug, Default)]
pub struct Holdings {
    /// The backend slot of every address that has one.
    pub slots: HashMap<SocketAddr, u32>,
    pub services: HashMap<SocketAddr, Held>,
}

/// One service as it must be served.
#[derive(Clone, Debug)]
pub struct ServicePlan {
    pub config: ServiceConfig,
    pub selector: Selector,
    /// Backend slot per table entry ([`NO_BACKEND`] where the table is empty).
    pub table: Vec<u32>,
    /// The service entry; when `write`, `active` names the idle half the table
    /// goes to, and the entry's update makes it live.
    pub entry: Service,
    /// Whether table and entry must be written (new or changed).
    pub write: bool,
    /// A new service id: its counters start from zero.
    pub fresh: bool,
}

/// Everything the maps must hold.
#[derive(Clone, Debug, Default)]
pub struct MapContents {
    /// The slot of every configured backend address.
    pub slots: HashMap<SocketAddr, u32>,
    /// Slots taken by new addresses (their counters start from zero).
    pub new_slots: Vec<u32>,
    /// Slots of addresses no longer configured: cleared after a grace period.
    pub freed_slots: Vec<u32>,
    pub backends: BTreeMap<u32, Backend>,
    pub reverse: HashMap<Endpoint, Reverse>,
    pub services: BTreeMap<SocketAddr, ServicePlan>,
    /// Served now, not configured any more.
    pub gone: Vec<SocketAddr>,
    /// The services' allow-lists: (prefix length, key) of `ALLOWED`.
    pub allowed: HashSet<(u32, AllowCidr)>,
    /// `SCANNERS`, every entry (unused ones empty).
    pub scanners: Vec<UaPattern>,
}

impl MapContents {
    /// Services whose table and entry must be written.
    pub fn writes(&self) -> usize {
        self.services.values().filter(|s| s.write).count()
    }
}

/// The maps' contents that serve `next` (already validated), with `down` held
/// out of every table, given what the kernel holds now.
pub fn plan(
    next: &Config,
    down: &HashSet<SocketAddr>,
    now: &Holdings,
) -> Result<MapContents, PlanError> {
    let mut out = MapContents::default();
    backends(next, down, now, &mut out)?;
    let ids = service_ids(next, now)?;
    out.reverse = reverse(next, &ids, &out.slots);
    out.allowed = allowed(next, &ids);
    out.scanners = scanners(&next.user_agents);
    for s in &next.services {
        let sync = next.sync.is_some();
        let p = service(
            s,
            ids[&s.vip],
            down,
            &out.slots,
            now.services.get(&s.vip),
            sync,
        )?;
        out.services.insert(s.vip, p);
    }
    out.gone = now
        .services
        .keys()
        .filter(|v| !out.services.contains_key(v))
        .copied()
        .collect();
    out.gone.sort();
    Ok(out)
}

/// Slots (old addresses keep theirs, new ones take the lowest free ones in
/// address order) and each slot's entry. Dialogs stay on a backend that some
/// service has active or draining and that is not down (`BACKEND_STICKY`).
fn backends(
    next: &Config,
    down: &HashSet<SocketAddr>,
    now: &Holdings,
    out: &mut MapContents,
) -> Result<(), PlanError> {
    let mut wanted: HashSet<SocketAddr> = HashSet::new();
    let mut admin_up: HashSet<SocketAddr> = HashSet::new();
    for b in next.services.iter().flat_map(|s| &s.backends) {
        wanted.insert(b.address);
        if matches!(b.state, AdminState::Active | AdminState::Draining) {
            admin_up.insert(b.address);
        }
    }
    let mut new_addrs: Vec<SocketAddr> = Vec::new();
    for a in &wanted {
        match now.slots.get(a) {
            Some(s) => {
                out.slots.insert(*a, *s);
            }
            None => new_addrs.push(*a),
        }
    }
    new_addrs.sort();
    let used: HashSet<u32> = now.slots.values().copied().collect();
    let mut free = (0..MAX_BACKENDS).filter(|s| !used.contains(s));
    for a in new_addrs {
        let slot = free.next().ok_or(PlanError::TooManyBackends)?;
        out.slots.insert(a, slot);
        out.new_slots.push(slot);
    }
    out.freed_slots = now
        .slots
        .iter()
        .filter(|(a, _)| !wanted.contains(a))
        .map(|(_, s)| *s)
        .collect();
    out.freed_slots.sort();
    for (a, slot) in &out.slots {
        let e = Endpoint::from(*a);
        let sticky = admin_up.contains(a) && !down.contains(a);
        out.backends.insert(
            *slot,
            Backend {
                addr: e.addr,
                port: e.port,
                family: e.family,
                flags: if sticky { BACKEND_STICKY } else { 0 },
            },
        );
    }
    Ok(())
}

/// Service ids: kept by VIP, new services take the lowest free id.
fn service_ids(next: &Config, now: &Holdings) -> Result<HashMap<SocketAddr, u32>, PlanError> {
    let mut taken: HashSet<u32> = now.services.values().map(|h| h.entry.id).collect();
    let mut ids = HashMap::new();
    for s in &next.services {
        let id = match now.services.get(&s.vip) {
            Some(h) => h.entry.id,
            None => {
                let id = (0..MAX_SERVICES)
                    .find(|i| !taken.contains(i))
                    .ok_or(PlanError::TooManyServices)?;
                taken.insert(id);
                id
            }
        };
        ids.insert(s.vip, id);
    }
    Ok(ids)
}

/// Reverse NAT for every DNAT backend, whatever its state: replies of draining
/// and disabled backends still come from the VIP. With affinity, what they send
/// also teaches the data plane their dialogs.
fn reverse(
    next: &Config,
    ids: &HashMap<SocketAddr, u32>,
    slots: &HashMap<SocketAddr, u32>,
) -> HashMap<Endpoint, Reverse> {
    let mut out = HashMap::new();
    for s in next.services.iter().filter(|s| s.mode == Mode::Dnat) {
        let learn = s.affinity && s.algorithm.learns();
        let bits = match (learn, next.sync.is_some()) {
            (false, _) => 0,
            (true, false) => REVERSE_LEARN,
            (true, true) => REVERSE_LEARN | REVERSE_SYNC,
        };
        for b in &s.backends {
            out.insert(
                Endpoint::from(b.address),
                Reverse {
                    vip: Endpoint::from(s.vip),
                    service: ids[&s.vip],
                    slot: slots[&b.address],
                    algorithm: s.algorithm.raw(),
                    learn: bits,
                },
            );
        }
    }
    out
}

/// The service's table over its members and its entry. An unchanged service
/// keeps its active half and is not written.
fn service(
    s: &ServiceConfig,
    id: u32,
    down: &HashSet<SocketAddr>,
    slots: &HashMap<SocketAddr, u32>,
    held: Option<&Held>,
    sync: bool,
) -> Result<ServicePlan, PlanError> {
    let members: Vec<_> = s.members(down).into_iter().cloned().collect();
    let selector =
        Selector::build(&members, s.table_size).map_err(|e| PlanError::Table(s.vip, e))?;
    let table: Vec<u32> = selector
        .table
        .iter()
        .map(|e| e.map_or(NO_BACKEND, |i| slots[&members[i].address]))
        .collect();
    let limits = s.limits.effective();
    let mut flags = match s.no_backend {
        NoBackend::Drop => 0,
        NoBackend::Pass => SERVICE_PASS_NO_BACKEND,
    };
    for (on, flag) in [
        (s.affinity, SERVICE_AFFINITY),
        (!s.allow.is_empty(), SERVICE_ALLOW_LIST),
        (s.drop_scanners, SERVICE_SCANNERS),
        // The entries only matter to peers when affinity is on.
        (s.affinity && sync, SERVICE_SYNC),
    ] {
        if on {
            flags |= flag;
        }
    }
    let mut entry = Service {
        id,
        table_size: s.table_size,
        active: 0,
        mode: s.mode.raw(),
        algorithm: s.algorithm.raw(),
        flags,
        affinity_idle: s.affinity_idle.unwrap_or(AFFINITY_IDLE).as_secs() as u32,
        interval: interval(limits.rate),
        burst: limits.burst,
        dialog_interval: interval(limits.dialog_rate),
        dialog_burst: limits.dialog_burst,
        block_s: limits.block_s,
        max_size: s.max_size.unwrap_or(0),
    };
    let (write, fresh) = match held {
        None => (true, true),
        Some(h) => {
            entry.active = h.entry.active;
            let same = h.table.as_ref() == Some(&table) && h.entry == entry;
            if !same {
                entry.active = 1 - h.entry.active;
            }
            (!same, false)
        }
    };
    Ok(ServicePlan {
        config: s.clone(),
        selector,
        table,
        entry,
        write,
        fresh,
    })
}

/// The family and address bytes of a network (IPv4 in the first four).
fn net_bytes(n: &IpNet) -> (u32, [u8; 16]) {
    let mut addr = [0u8; 16];
    match n.network() {
        IpAddr::V4(a) => {
            addr[..4].copy_from_slice(&a.octets());
            (AF_INET as u32, addr)
        }
        IpAddr::V6(a) => (AF_INET6 as u32, a.octets()),
    }
}

/// The `BLOCKED` key of a network: its prefix length counts the family.
pub fn block_key(n: &IpNet) -> (u32, Cidr) {
    let (family, addr) = net_bytes(n);
    (
        CIDR_FAMILY_BITS + n.prefix_len() as u32,
        Cidr { family, addr },
    )
}

/// The `ALLOWED` key of a network in service `id`.
pub fn allow_key(id: u32, n: &IpNet) -> (u32, AllowCidr) {
    let (family, addr) = net_bytes(n);
    (
        ALLOW_PREFIX_BITS + n.prefix_len() as u32,
        AllowCidr {
            service: id,
            family,
            addr,
        },
    )
}

/// Every allow-list entry of every service that has one.
fn allowed(next: &Config, ids: &HashMap<SocketAddr, u32>) -> HashSet<(u32, AllowCidr)> {
    next.services
        .iter()
        .flat_map(|s| s.allow.iter().map(|n| allow_key(ids[&s.vip], n)))
        .collect()
}

/// `SCANNERS`: the patterns in order, then empty entries (the first ends the
/// list). The configuration checked them (`check_user_agents`).
pub fn scanners(user_agents: &[String]) -> Vec<UaPattern> {
    balancer_common::useragent::patterns(user_agents)
        .map(|p| p.to_vec())
        .unwrap_or_else(|_| vec![UaPattern::default(); MAX_UA_PATTERNS as usize])
}

/// The two clocks at one moment: block-list expiry is configured in wall-clock
/// time and checked by the kernel against `CLOCK_MONOTONIC`.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub wall: SystemTime,
    pub monotonic_ns: u64,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            wall: SystemTime::now(),
            monotonic_ns: super::monotonic_ns(),
        }
    }
}

/// `BLOCKED`'s contents at `now`: permanent entries with `until` 0, the others
/// at their expiry on the monotonic clock; expired ones are left out.
pub fn blocked(next: &Config, now: Clock) -> HashMap<(u32, Cidr), Block> {
    let mut out = HashMap::new();
    for b in &next.blocks {
        let until = match b.until {
            None => 0,
            Some(t) => match t.duration_since(now.wall) {
                Ok(left) if !left.is_zero() => {
                    now.monotonic_ns.saturating_add(left.as_nanos() as u64)
                }
                _ => continue,
            },
        };
        out.insert(block_key(&b.cidr), Block { until });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(services: &[(&str, &[&str])]) -> Config {
        let mut c = Config {
            interfaces: vec!["eth0".into()],
            ..Config::default()
        };
        for (vip, backends) in services {
            c.services.push(ServiceConfig::with_backends(
                vip.parse().unwrap(),
                backends.iter().map(|b| b.parse().unwrap()).collect(),
            ));
        }
        c.validate().unwrap();
        c
    }

    /// What the kernel holds after `p` is applied.
    fn held(p: &MapContents) -> Holdings {
        Holdings {
            slots: p.slots.clone(),
            services: p
                .services
                .iter()
                .map(|(v, s)| {
                    (
                        *v,
                        Held {
                            entry: s.entry,
                            table: Some(s.table.clone()),
                        },
                    )
                })
                .collect(),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const VIP: &str = "10.0.0.10:5060";
    const B: [&str; 3] = ["10.0.2.11:5060", "10.0.2.12:5060", "10.0.2.13:5060"];

    #[test]
    fn a_first_plan_writes_everything_from_slot_zero() {
        let p = plan(&config(&[(VIP, &B)]), &HashSet::new(), &Holdings::default()).unwrap();
        let s = &p.services[&addr(VIP)];
        assert!(s.write && s.fresh);
        assert_eq!(p.writes(), 1);
        assert_eq!(s.entry.id, 0);
        assert_eq!(s.entry.active, 0);
        assert_eq!(p.new_slots, vec![0, 1, 2]);
        // Slots in address order.
        for (i, b) in B.iter().enumerate() {
            assert_eq!(p.slots[&addr(b)], i as u32);
            assert_eq!(p.backends[&(i as u32)].flags, BACKEND_STICKY);
        }
        // Every entry of the table names one of the three slots, each about a third.
        let mut per = [0usize; 3];
        for e in &s.table {
            per[*e as usize] += 1;
        }
        let third = s.table.len() / 3;
        assert!(
            per.iter().all(|n| n.abs_diff(third) < third / 50),
            "{per:?}"
        );
        assert_eq!(p.reverse.len(), 3);
        let r = p.reverse[&Endpoint::from(addr(B[1]))];
        assert_eq!((r.service, r.slot, r.learn), (0, 1, 1));
        assert!(p.gone.is_empty() && p.freed_slots.is_empty());
    }

    #[test]
    fn nothing_changed_writes_nothing() {
        let c = config(&[(VIP, &B)]);
        let first = plan(&c, &HashSet::new(), &Holdings::default()).unwrap();
        let again = plan(&c, &HashSet::new(), &held(&first)).unwrap();
        assert_eq!(again.writes(), 0);
        assert!(again.new_slots.is_empty() && again.freed_slots.is_empty());
        assert_eq!(again.services[&addr(VIP)].entry.active, 0);
    }

    #[test]
    fn a_change_goes_to_the_idle_half_and_keeps_ids_and_slots() {
        let first = plan(&config(&[(VIP, &B)]), &HashSet::new(), &Holdings::default()).unwrap();
        // B[0] removed, a new backend added: the others keep their slots, the new
        // one takes the lowest free slot only after the old one is freed.
        let next = config(&[(VIP, &[B[1], B[2], "10.0.2.14:5060"])]);
        let p = plan(&next, &HashSet::new(), &held(&first)).unwrap();
        let s = &p.services[&addr(VIP)];
        assert!(s.write && !s.fresh);
        assert_eq!(s.entry.active, 1);
        assert_eq!(s.entry.id, 0);
        assert_eq!(p.slots[&addr(B[1])], 1);
        assert_eq!(p.slots[&addr(B[2])], 2);
        assert_eq!(p.slots[&addr("10.0.2.14:5060")], 3);
        assert_eq!(p.new_slots, vec![3]);
        assert_eq!(p.freed_slots, vec![0]);
        assert!(!p.backends.contains_key(&0));
        assert!(!s.table.contains(&0));
        // The next change flips back.
        let p2 = plan(&config(&[(VIP, &B[1..])]), &HashSet::new(), &held(&p)).unwrap();
        assert_eq!(p2.services[&addr(VIP)].entry.active, 0);
    }

    #[test]
    fn down_backends_leave_the_table_and_lose_stickiness() {
        let c = config(&[(VIP, &B)]);
        let down: HashSet<SocketAddr> = [addr(B[2])].into();
        let p = plan(&c, &down, &Holdings::default()).unwrap();
        let s = &p.services[&addr(VIP)];
        assert!(!s.table.contains(&2));
        assert!(s.table.contains(&0) && s.table.contains(&1));
        assert_eq!(p.backends[&2].flags, 0);
        assert_eq!(p.backends[&0].flags, BACKEND_STICKY);
        // Still reverse-NATed: its replies must come from the VIP.
        assert!(p.reverse.contains_key(&Endpoint::from(addr(B[2]))));
    }

    #[test]
    fn draining_keeps_dialogs_disabled_does_not() {
        let mut c = config(&[(VIP, &B)]);
        c.services[0].backends[0].state = AdminState::Draining;
        c.services[0].backends[1].state = AdminState::Disabled;
        let p = plan(&c, &HashSet::new(), &Holdings::default()).unwrap();
        let s = &p.services[&addr(VIP)];
        assert!(s.table.iter().all(|e| *e == 2));
        assert_eq!(p.backends[&0].flags, BACKEND_STICKY);
        assert_eq!(p.backends[&1].flags, 0);
    }

    #[test]
    fn an_empty_service_fills_its_table_with_no_backend() {
        let c = config(&[(VIP, &[])]);
        let p = plan(&c, &HashSet::new(), &Holdings::default()).unwrap();
        let s = &p.services[&addr(VIP)];
        assert!(s.table.iter().all(|e| *e == NO_BACKEND));
        assert_eq!(s.table.len(), s.entry.table_size as usize);
    }

    #[test]
    fn entry_fields_follow_the_configuration() {
        let mut c = config(&[(VIP, &B)]);
        let s = &mut c.services[0];
        s.mode = Mode::Dsr;
        s.no_backend = NoBackend::Pass;
        s.affinity = false;
        s.affinity_idle = Some(std::time::Duration::from_secs(90));
        s.algorithm = crate::model::Algorithm::RequestUri;
        let p = plan(&c, &HashSet::new(), &Holdings::default()).unwrap();
        let e = p.services[&addr(VIP)].entry;
        assert_eq!(e.mode, Mode::Dsr.raw());
        assert_eq!(e.flags, SERVICE_PASS_NO_BACKEND);
        assert_eq!(e.affinity_idle, 90);
        assert_eq!(e.algorithm, crate::model::Algorithm::RequestUri.raw());
        // DSR backends answer clients directly: nothing to reverse.
        assert!(p.reverse.is_empty());
        let c = config(&[(VIP, &B)]);
        let p = plan(&c, &HashSet::new(), &Holdings::default()).unwrap();
        let e = p.services[&addr(VIP)].entry;
        assert_eq!(e.flags, SERVICE_AFFINITY);
        assert_eq!(e.affinity_idle as u64, AFFINITY_IDLE.as_secs());
    }

    /// Replies teach affinity only when the service keeps affinity and its key
    /// is one the other party's answers carry too.
    #[test]
    fn learning_needs_affinity_and_a_key_answers_carry() {
        let learn = |affinity: bool, alg: crate::model::Algorithm| {
            let mut c = config(&[(VIP, &B[..1])]);
            c.services[0].affinity = affinity;
            c.services[0].algorithm = alg;
            let p = plan(&c, &HashSet::new(), &Holdings::default()).unwrap();
            p.reverse[&Endpoint::from(addr(B[0]))].learn
        };
        use crate::model::Algorithm::{CallId, RequestUri};
        assert_eq!(learn(true, CallId), 1);
        assert_eq!(learn(false, CallId), 0);
        assert_eq!(learn(true, RequestUri), 0);
        assert_eq!(learn(false, RequestUri), 0);
    }

    #[test]
    fn removed_services_are_gone_and_ids_are_reused_lowest_first() {
        let two = config(&[(VIP, &B[..1]), ("10.0.0.11:5060", &B[1..2])]);
        let first = plan(&two, &HashSet::new(), &Holdings::default()).unwrap();
        assert_eq!(first.services[&addr("10.0.0.11:5060")].entry.id, 1);
        let one = config(&[("10.0.0.11:5060", &B[1..2])]);
        let p = plan(&one, &HashSet::new(), &held(&first)).unwrap();
        assert_eq!(p.gone, vec![addr(VIP)]);
        assert_eq!(p.services[&addr("10.0.0.11:5060")].entry.id, 1);
        assert!(!p.services[&addr("10.0.0.11:5060")].write);
        let back = config(&[("10.0.0.11:5060", &B[1..2]), ("10.0.0.12:5060", &B[..1])]);
        let p2 = plan(&back, &HashSet::new(), &held(&p)).unwrap();
        assert_eq!(p2.services[&addr("10.0.0.12:5060")].entry.id, 0);
        assert!(p2.services[&addr("10.0.0.12:5060")].fresh);
    }

    #[test]
    fn adopted_services_are_rewritten_into_their_idle_half() {
        let c = config(&[(VIP, &B)]);
        let first = plan(&c, &HashSet::new(), &Holdings::default()).unwrap();
        let mut h = held(&first);
        let svc = h.services.get_mut(&addr(VIP)).unwrap();
        svc.table = None;
        svc.entry.active = 1;
        let p = plan(&c, &HashSet::new(), &h).unwrap();
        let s = &p.services[&addr(VIP)];
        assert!(s.write && !s.fresh);
        assert_eq!(s.entry.active, 0);
        assert_eq!(s.table, first.services[&addr(VIP)].table);
    }

    #[test]
    fn policy_fields_reach_the_entry() {
        let mut c = config(&[(VIP, &B)]);
        let e = plan(&c, &HashSet::new(), &Holdings::default())
            .unwrap()
            .services[&addr(VIP)]
            .entry;
        // Defaults: 20000 datagrams/s and 2000 dialogs/s, bursts as large, no block.
        assert_eq!(
            (
                e.interval,
                e.burst,
                e.dialog_interval,
                e.dialog_burst,
                e.block_s,
                e.max_size
            ),
            (50_000, 20000, 500_000, 2000, 0, 0)
        );
        assert_eq!(e.flags & (SERVICE_ALLOW_LIST | SERVICE_SCANNERS), 0);
        let s = &mut c.services[0];
        s.allow = vec!["198.51.100.0/24".parse().unwrap()];
        s.drop_scanners = true;
        s.max_size = Some(1500);
        s.limits = crate::model::Limits {
            datagrams: Some(0),
            dialogs: Some(30),
            dialogs_burst: Some(60),
            block_for: Some(std::time::Duration::from_secs(90)),
            ..Default::default()
        };
        c.validate().unwrap();
        let first = plan(&config(&[(VIP, &B)]), &HashSet::new(), &Holdings::default()).unwrap();
        let p = plan(&c, &HashSet::new(), &held(&first)).unwrap();
        let s = &p.services[&addr(VIP)];
        let e = s.entry;
        assert_eq!(
            (
                e.interval,
                e.burst,
                e.dialog_interval,
                e.dialog_burst,
                e.block_s,
                e.max_size
            ),
            (0, 0, 33_333_333, 60, 90, 1500)
        );
        assert_eq!(
            e.flags,
            SERVICE_AFFINITY | SERVICE_ALLOW_LIST | SERVICE_SCANNERS
        );
        // A changed entry is a change: written, into the idle half.
        assert!(s.write && e.active == 1);
    }

    #[test]
    fn allow_lists_are_keyed_by_service_id_and_prefix() {
        let mut c = config(&[(VIP, &B[..1]), ("[fd00::10]:5060", &[])]);
        c.services[0].allow = vec![
            "198.51.100.0/24".parse().unwrap(),
            "192.0.2.7/32".parse().unwrap(),
        ];
        c.services[1].allow = vec!["2001:db8::/48".parse().unwrap()];
        let p = plan(&c, &HashSet::new(), &Holdings::default()).unwrap();
        let want: HashSet<(u32, AllowCidr)> = [
            (
                64 + 24,
                AllowCidr {
                    service: 0,
                    family: AF_INET as u32,
                    addr: [198, 51, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                },
            ),
            (
                64 + 32,
                AllowCidr {
                    service: 0,
                    family: AF_INET as u32,
                    addr: [192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                },
            ),
            (
                64 + 48,
                AllowCidr {
                    service: 1,
                    family: AF_INET6 as u32,
                    addr: "2001:db8::".parse::<std::net::Ipv6Addr>().unwrap().octets(),
                },
            ),
        ]
        .into();
        assert_eq!(p.allowed, want);
        // The first service goes and the second keeps its id: only its entries stay.
        let mut next = c.clone();
        next.services.remove(0);
        let p2 = plan(&next, &HashSet::new(), &held(&p)).unwrap();
        assert_eq!(p2.allowed.len(), 1);
        assert!(p2.allowed.iter().all(|(_, k)| k.service == 1));
    }

    #[test]
    fn scanners_fill_the_array_in_order_lower_case() {
        let s = scanners(&["SIPVicious".to_string(), "friendly-scanner".to_string()]);
        assert_eq!(s.len(), MAX_UA_PATTERNS as usize);
        assert_eq!(s[0].len, 10);
        assert_eq!(&s[0].bytes[..10], b"sipvicious");
        assert!(s[0].bytes[10..].iter().all(|b| *b == 0));
        assert_eq!(&s[1].bytes[..16], b"friendly-scanner");
        assert!(s[2..].iter().all(|p| p.len == 0));
        let d = scanners(&crate::model::policy::default_user_agents());
        assert_eq!(d.iter().filter(|p| p.len > 0).count(), 11);
    }

    #[test]
    fn blocks_expire_on_the_monotonic_clock() {
        use std::time::Duration;
        let mut c = config(&[(VIP, &B[..1])]);
        let wall = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let entry = |cidr: &str, until: Option<SystemTime>| crate::model::BlockEntry {
            cidr: cidr.parse().unwrap(),
            until,
            reason: None,
        };
        c.blocks = vec![
            entry("203.0.113.0/24", None),
            entry("2001:db8:bad::/48", Some(wall + Duration::from_secs(60))),
            entry("192.0.2.0/25", Some(wall - Duration::from_secs(1))),
            entry("192.0.2.128/25", Some(wall)),
        ];
        let now = Clock {
            wall,
            monotonic_ns: 5_000_000_000,
        };
        let b = blocked(&c, now);
        assert_eq!(b.len(), 2, "expired entries are left out: {b:?}");
        let (len, key) = block_key(&"203.0.113.0/24".parse().unwrap());
        assert_eq!(len, 32 + 24);
        assert_eq!(key.family, AF_INET as u32);
        assert_eq!(&key.addr[..4], &[203, 0, 113, 0]);
        assert_eq!(b[&(len, key)].until, 0);
        let k6 = block_key(&"2001:db8:bad::/48".parse().unwrap());
        assert_eq!(k6.0, 32 + 48);
        assert_eq!(k6.1.family, AF_INET6 as u32);
        assert_eq!(b[&k6].until, 65_000_000_000);
    }

    #[test]
    fn too_many_backends_is_an_error_not_a_panic() {
        let mut h = Holdings::default();
        for i in 0..MAX_BACKENDS {
            h.slots.insert(
                SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 5060)),
                i,
            );
        }
        let c = config(&[(VIP, &B[..1])]);
        assert_eq!(
            plan(&c, &HashSet::new(), &h).unwrap_err(),
            PlanError::TooManyBackends
        );
    }
}
