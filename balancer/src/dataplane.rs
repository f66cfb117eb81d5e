//! The loaded XDP object and the maps user space feeds.
//!
//! [`Dataplane::sync`] makes the kernel serve a [`Config`]: backend slots, reverse-NAT
//! entries, one Maglev table per service, and the service entries. Tables are
//! double-buffered: a change writes the idle half and flips the service's `active`
//! field with one map update, then waits an RCU grace period before anything the
//! old half referred to may be reused, so no packet ever sees a half-written table
//! or a recycled slot.
//!
//! With a pin directory, every map and link lives in bpffs, so a restarted daemon
//! adopts them (the old program keeps forwarding until the new one replaces it
//! atomically on the same link) and a crashed one leaves the data plane running.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, DevMapHash, HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{
        links::{FdLink, PinnedLink},
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use balancer_common::{
    maglev,
    maps::{
        reason, Affinity, AffinityKey, Backend, Endpoint, Reverse, Service, Traffic, TrivialTarget,
        AFFINITY_ENTRIES, AF_INET, AF_INET6, BACKEND_STICKY, MAX_BACKENDS, MAX_SERVICES,
        NO_BACKEND, SERVICE_AFFINITY, SERVICE_PASS_NO_BACKEND,
    },
};

use crate::{
    config::{AdminState, Config, NoBackend, ServiceConfig, AFFINITY_IDLE},
    requirements::Rejected,
    select::Selector,
    spec::{endpoint, Mode, ServiceSpec},
};

/// The compiled XDP object, built by `build.rs` with aya-build.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer"));

/// The main program's name in the object.
pub const PROGRAM: &str = "balancer";
/// The benchmark baseline's name in the object.
pub const TRIVIAL: &str = "xdp_trivial";

/// Every map of the object: all of them are pinned when the data plane persists.
const MAPS: &[&str] = &[
    "SERVICES",
    "REVERSE",
    "BACKENDS",
    "MAGLEV",
    "TX_PORTS",
    "NEXTHOP",
    "SLOT_HOPS",
    "STATS",
    "BACKEND_STATS",
    "SERVICE_STATS",
    "SCRATCH",
    "TRIVIAL",
    "RR",
    "AFFINITY",
    "FRAGS",
];

/// A service as the kernel serves it now.
#[derive(Debug, Clone)]
pub struct Live {
    pub id: u32,
    pub config: ServiceConfig,
    pub selector: Selector,
    /// Backend slot per table entry, as written to the active half.
    pub table: Vec<u32>,
    pub active: u32,
    pub kernel: Service,
}

/// What [`Dataplane::install_service`] returns (tests, benchmarks).
#[derive(Debug)]
pub struct Installed {
    pub id: u32,
    pub selector: Selector,
}

/// What one [`Dataplane::sync`] did.
#[derive(Debug, Default, Clone)]
pub struct SyncReport {
    /// Tables written and flipped.
    pub tables: usize,
    /// From the start until the last flip: how long a change takes to reach packets.
    pub to_kernel: Duration,
    /// Including the grace period and clean-up.
    pub total: Duration,
}

pub struct Dataplane {
    ebpf: Ebpf,
    pins: Option<PathBuf>,
    live: BTreeMap<SocketAddr, Live>,
    /// Kernel backend slot of every configured backend address.
    slots: HashMap<SocketAddr, u32>,
    /// What each used slot holds in `BACKENDS`.
    backend_vals: HashMap<u32, Backend>,
    /// Services found pinned at start and not yet matched with the configuration.
    adopted: HashMap<SocketAddr, Service>,
    tx_ports: HashSet<u32>,
    /// Links this process holds (not pinned): dropping them detaches.
    attached: Vec<String>,
    config: Config,
    /// Backends the health checks hold down: out of every table.
    down: HashSet<SocketAddr>,
    table_map: Option<TableMap>,
}

impl Dataplane {
    /// Loads the object and both programs into the kernel (this is where the
    /// verifier runs). Maps are private to this process.
    pub fn load() -> Result<Self> {
        Self::open(None)
    }

    /// Like [`load`](Self::load), with every map pinned under `pins`; maps already
    /// pinned there are adopted with their contents.
    pub fn open(pins: Option<&Path>) -> Result<Self> {
        Self::open_with(pins, AFFINITY_ENTRIES)
    }

    /// Like [`open`](Self::open), with the affinity map sized for `entries`
    /// dialogs (a pinned map that exists keeps its size).
    pub fn open_with(pins: Option<&Path>, entries: u32) -> Result<Self> {
        raise_memlock();
        let mut loader = EbpfLoader::new();
        loader.map_max_entries("AFFINITY", entries);
        let paths: Vec<(&str, PathBuf)> = match pins {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating pin directory {}", dir.display()))?;
                MAPS.iter().map(|m| (*m, dir.join(m))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).context("loading the XDP object")?;
        for name in [PROGRAM, TRIVIAL] {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?
                .try_into()?;
            match p.load() {
                Ok(()) => {}
                Err(ProgramError::LoadError { verifier_log, .. }) => {
                    return Err(Rejected {
                        program: name.to_string(),
                        log: verifier_log.to_string(),
                    }
                    .into())
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("loading program {name}"));
                }
            }
        }
        let mut dp = Dataplane {
            ebpf,
            pins: pins.map(Path::to_path_buf),
            live: BTreeMap::new(),
            slots: HashMap::new(),
            backend_vals: HashMap::new(),
            adopted: HashMap::new(),
            tx_ports: HashSet::new(),
            attached: Vec::new(),
            config: Config::default(),
            down: HashSet::new(),
            table_map: None,
        };
        dp.adopt()?;
        Ok(dp)
    }

    /// Reads back what pinned maps already hold: services and backend slots.
    fn adopt(&mut self) -> Result<()> {
        let mut adopted = HashMap::new();
        let services: BpfHashMap<&MapData, Endpoint, Service> = self.map_ref("SERVICES")?;
        for kv in services.iter() {
            let (vip, svc) = kv?;
            adopted.insert(socket_addr(&vip), svc);
        }
        let (mut slots, mut vals) = (HashMap::new(), HashMap::new());
        let backends: Array<&MapData, Backend> = self.map_ref("BACKENDS")?;
        for slot in 0..MAX_BACKENDS {
            let b = backends.get(&slot, 0)?;
            if b.family != 0 {
                let e = Endpoint {
                    addr: b.addr,
                    port: b.port,
                    family: b.family,
                    proto: 0,
                };
                slots.insert(socket_addr(&e), slot);
                vals.insert(slot, b);
            }
        }
        self.adopted = adopted;
        self.slots = slots;
        self.backend_vals = vals;
        Ok(())
    }

    /// Whether this data plane found services of an earlier run in its pins.
    pub fn adopted_services(&self) -> usize {
        self.adopted.len()
    }

    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn live(&self) -> &BTreeMap<SocketAddr, Live> {
        &self.live
    }

    /// Sets which backends health checks hold down; takes effect at the next
    /// [`sync`](Self::sync).
    pub fn set_down(&mut self, down: HashSet<SocketAddr>) {
        self.down = down;
    }

    pub fn slot_of(&self, addr: SocketAddr) -> Option<u32> {
        self.slots.get(&addr).copied()
    }

    /// Adds one service to what is served (tests and benchmarks).
    pub fn install_service(&mut self, spec: &ServiceSpec) -> Result<Installed> {
        spec.validate()?;
        let mut next = self.config.clone();
        let mut s = ServiceConfig::with_backends(spec.vip, &spec.backends);
        s.mode = spec.mode;
        s.table_size = spec.table_size;
        next.services.push(s);
        next.validate()?;
        self.sync(&next)?;
        let l = &self.live[&spec.vip];
        Ok(Installed {
            id: l.id,
            selector: l.selector.clone(),
        })
    }

    /// Makes the kernel serve `next` (already validated). Services and backends that
    /// did not change are not touched; a changed service gets its idle table half
    /// written and flipped.
    pub fn sync(&mut self, next: &Config) -> Result<SyncReport> {
        let start = Instant::now();
        let mut report = SyncReport::default();

        // 1. Slots for new backend addresses (old ones keep theirs), and each
        // backend's flags: dialogs stay on a backend that is active or draining
        // and not down.
        let mut wanted: HashSet<SocketAddr> = HashSet::new();
        // Addresses some service has active or draining (one pass: a backend
        // may be in several services).
        let mut admin_up: HashSet<SocketAddr> = HashSet::new();
        for b in next.services.iter().flat_map(|s| &s.backends) {
            wanted.insert(b.address);
            if matches!(b.state, AdminState::Active | AdminState::Draining) {
                admin_up.insert(b.address);
            }
        }
        let mut new_addrs: Vec<SocketAddr> = wanted
            .iter()
            .filter(|a| !self.slots.contains_key(a))
            .copied()
            .collect();
        new_addrs.sort();
        let used: HashSet<u32> = self.slots.values().copied().collect();
        let mut free = (0..MAX_BACKENDS).filter(|s| !used.contains(s));
        for a in new_addrs {
            let slot = free
                .next()
                .ok_or_else(|| anyhow!("at most {MAX_BACKENDS} backends"))?;
            self.slots.insert(a, slot);
            self.zero_backend_stats(slot)?;
        }
        for a in &wanted {
            let sticky = admin_up.contains(a) && !self.down.contains(a);
            let e = endpoint(*a);
            let val = Backend {
                addr: e.addr,
                port: e.port,
                family: e.family,
                flags: if sticky { BACKEND_STICKY } else { 0 },
            };
            let slot = self.slots[a];
            if self.backend_vals.get(&slot) != Some(&val) {
                let mut m: Array<&mut MapData, Backend> = self.map("BACKENDS")?;
                m.set(slot, val, 0)?;
                self.backend_vals.insert(slot, val);
            }
        }

        // 2. Service ids: kept by VIP, new ones take a free id.
        let mut ids: HashSet<u32> = self.live.values().map(|l| l.id).collect();
        ids.extend(self.adopted.values().map(|s| s.id));
        let mut id_of: HashMap<SocketAddr, u32> = HashMap::new();
        for s in &next.services {
            let id = match (self.live.get(&s.vip), self.adopted.get(&s.vip)) {
                (Some(l), _) => l.id,
                (None, Some(a)) => a.id,
                (None, None) => {
                    let id = (0..MAX_SERVICES)
                        .find(|i| !ids.contains(i))
                        .ok_or_else(|| anyhow!("at most {MAX_SERVICES} services"))?;
                    ids.insert(id);
                    id
                }
            };
            id_of.insert(s.vip, id);
        }

        // 3. Reverse NAT for every DNAT backend, whatever its state: replies of
        // draining and disabled backends still come from the VIP. With affinity,
        // what they send also teaches the data plane their dialogs.
        let reverse: HashMap<Endpoint, Reverse> = next
            .services
            .iter()
            .filter(|s| s.mode == Mode::Dnat)
            .flat_map(|s| {
                let learn = s.affinity && s.algorithm.learns();
                let (id, slots) = (id_of[&s.vip], &self.slots);
                s.backends.iter().map(move |b| {
                    (
                        endpoint(b.address),
                        Reverse {
                            vip: endpoint(s.vip),
                            service: id,
                            slot: slots[&b.address],
                            algorithm: s.algorithm.raw(),
                            learn: learn as u32,
                        },
                    )
                })
            })
            .collect();
        {
            let mut m: BpfHashMap<&mut MapData, Endpoint, Reverse> = self.map("REVERSE")?;
            for (k, v) in &reverse {
                if m.get(k, 0).ok() != Some(*v) {
                    m.insert(k, v, 0)?;
                }
            }
        }

        // 4. Tables and service entries.
        for s in &next.services {
            let members: Vec<crate::spec::BackendSpec> = s
                .members(&self.down)
                .iter()
                .map(|b| crate::spec::BackendSpec {
                    addr: b.address,
                    weight: b.weight,
                })
                .collect();
            let selector = Selector::build(&members, s.table_size)?;
            let table: Vec<u32> = selector
                .table
                .iter()
                .map(|e| e.map_or(NO_BACKEND, |i| self.slots[&members[i].addr]))
                .collect();
            let id = id_of[&s.vip];
            let (half, fresh) = match (self.live.get(&s.vip), self.adopted.get(&s.vip)) {
                (Some(l), _) => (1 - l.active, false),
                (None, Some(a)) => (1 - a.active, false),
                (None, None) => (0, true),
            };
            let kernel = Service {
                id,
                table_size: s.table_size,
                active: half,
                mode: s.mode.raw(),
                algorithm: s.algorithm.raw(),
                flags: match s.no_backend {
                    NoBackend::Drop => 0,
                    NoBackend::Pass => SERVICE_PASS_NO_BACKEND,
                } | if s.affinity { SERVICE_AFFINITY } else { 0 },
                affinity_idle: s.affinity_idle.unwrap_or(AFFINITY_IDLE).as_secs() as u32,
            };
            let unchanged = self.live.get(&s.vip).is_some_and(|l| {
                l.table == table
                    && l.kernel.mode == kernel.mode
                    && l.kernel.algorithm == kernel.algorithm
                    && l.kernel.table_size == kernel.table_size
                    && l.kernel.flags == kernel.flags
                    && l.kernel.affinity_idle == kernel.affinity_idle
            });
            if unchanged {
                let l = self.live.get_mut(&s.vip).unwrap();
                l.config = s.clone();
                l.selector = selector;
                continue;
            }
            self.write_table(id, half, &table)?;
            if fresh {
                self.zero_service_stats(id)?;
            }
            let mut m: BpfHashMap<&mut MapData, Endpoint, Service> = self.map("SERVICES")?;
            m.insert(endpoint(s.vip), kernel, 0)?;
            report.tables += 1;
            self.adopted.remove(&s.vip);
            self.live.insert(
                s.vip,
                Live {
                    id,
                    config: s.clone(),
                    selector,
                    table,
                    active: half,
                    kernel,
                },
            );
        }
        let keep: HashSet<SocketAddr> = next.services.iter().map(|s| s.vip).collect();
        let gone: Vec<SocketAddr> = self
            .live
            .keys()
            .chain(self.adopted.keys())
            .filter(|v| !keep.contains(v))
            .copied()
            .collect();
        {
            let mut m: BpfHashMap<&mut MapData, Endpoint, Service> = self.map("SERVICES")?;
            for v in &gone {
                let _ = m.remove(&endpoint(*v));
            }
        }
        for v in &gone {
            self.live.remove(v);
            self.adopted.remove(v);
        }
        report.to_kernel = start.elapsed();

        // 4. After a grace period no packet still reads an old half, an old
        // service entry or a slot the new tables no longer name.
        let stale_slots: Vec<(SocketAddr, u32)> = self
            .slots
            .iter()
            .filter(|(a, _)| !wanted.contains(a))
            .map(|(a, s)| (*a, *s))
            .collect();
        let stale_reverse: Vec<Endpoint> = {
            let m: BpfHashMap<&MapData, Endpoint, Reverse> = self.map_ref("REVERSE")?;
            m.keys()
                .filter_map(|k| k.ok())
                .filter(|k| !reverse.contains_key(k))
                .collect()
        };
        if report.tables > 0 || !gone.is_empty() || !stale_slots.is_empty() {
            grace_period();
        }
        {
            let mut m: BpfHashMap<&mut MapData, Endpoint, Reverse> = self.map("REVERSE")?;
            for k in &stale_reverse {
                let _ = m.remove(k);
            }
        }
        for (a, slot) in stale_slots {
            let mut m: Array<&mut MapData, Backend> = self.map("BACKENDS")?;
            m.set(slot, Backend::default(), 0)?;
            self.backend_vals.remove(&slot);
            self.slots.remove(&a);
        }
        self.config = next.clone();
        report.total = start.elapsed();
        Ok(report)
    }

    /// A new backend starts its counters from zero.
    fn zero_backend_stats(&mut self, slot: u32) -> Result<()> {
        let mut s: PerCpuArray<&mut MapData, Traffic> = self.map("BACKEND_STATS")?;
        s.set(slot, zeros()?, 0)?;
        Ok(())
    }

    fn zero_service_stats(&mut self, id: u32) -> Result<()> {
        let mut s: PerCpuArray<&mut MapData, Traffic> = self.map("SERVICE_STATS")?;
        s.set(id, zeros()?, 0)?;
        Ok(())
    }

    /// One table half. `MAGLEV` is a mappable array: the half is written with a
    /// memory copy into the kernel's pages (about 0.1 ms; 65537 map updates take
    /// about 0.1 s, one batched update about 13 ms). Nothing reads the idle half.
    fn write_table(&mut self, id: u32, half: u32, table: &[u32]) -> Result<()> {
        let base = maglev::table_base(id, half) as usize;
        if self.table_map.is_none() {
            let (fd, entries) = match self.ebpf.map("MAGLEV") {
                Some(Map::Array(m)) => (m.fd().as_fd().as_raw_fd(), maglev_entries()),
                _ => bail!("no array map MAGLEV"),
            };
            self.table_map =
                Some(TableMap::map(fd, entries).context("mapping the MAGLEV table into memory")?);
        }
        self.table_map.as_mut().unwrap().write(base, table);
        Ok(())
    }

    /// Where the kernel sends a key hash now: the dialog's affinity entry while
    /// it holds (fresh, backend sticky), else the live table. The second value
    /// says which (`"affinity"` or `"table"`).
    pub fn lookup(&self, vip: SocketAddr, hash: u32) -> Result<(Option<SocketAddr>, &'static str)> {
        let svc: BpfHashMap<&MapData, Endpoint, Service> = self.map_ref("SERVICES")?;
        let s = svc
            .get(&endpoint(vip), 0)
            .map_err(|_| anyhow!("the kernel has no service {vip}"))?;
        let backends: Array<&MapData, Backend> = self.map_ref("BACKENDS")?;
        let addr = |b: Backend| {
            socket_addr(&Endpoint {
                addr: b.addr,
                port: b.port,
                family: b.family,
                proto: 0,
            })
        };
        if s.flags & SERVICE_AFFINITY != 0 {
            let aff: BpfHashMap<&MapData, AffinityKey, Affinity> = self.map_ref("AFFINITY")?;
            if let Ok(e) = aff.get(
                &AffinityKey {
                    service: s.id,
                    hash,
                },
                0,
            ) {
                let idle = monotonic_ns().saturating_sub(e.seen);
                let b = backends.get(&e.slot, 0)?;
                if idle < s.affinity_idle as u64 * 1_000_000_000 && b.flags & BACKEND_STICKY != 0 {
                    return Ok((Some(addr(b)), "affinity"));
                }
            }
        }
        let table: Array<&MapData, u32> = self.map_ref("MAGLEV")?;
        let idx = maglev::table_base(s.id, s.active) + maglev::index(hash, s.table_size);
        let slot = table.get(&idx, 0)?;
        if slot == NO_BACKEND {
            return Ok((None, "table"));
        }
        Ok((Some(addr(backends.get(&slot, 0)?)), "table"))
    }

    /// Lets the program redirect to this interface.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        if self.tx_ports.contains(&ifindex) {
            return Ok(());
        }
        let mut ports: DevMapHash<&mut MapData> = self.map("TX_PORTS")?;
        ports.insert(ifindex, ifindex, None, 0)?;
        self.tx_ports.insert(ifindex);
        Ok(())
    }

    fn link_pin(&self, iface: &str) -> Option<PathBuf> {
        self.pins.as_ref().map(|d| d.join(format!("link_{iface}")))
    }

    /// Attaches the program to `iface`. With pins, an existing pinned link is
    /// taken over atomically (the old program runs until the new one replaces it)
    /// and a new link is pinned, so it outlives this process.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        if self.attached.iter().any(|a| a == iface) {
            return Ok(());
        }
        let pin = self.link_pin(iface);
        if let Some(pin) = pin.as_ref().filter(|p| p.exists()) {
            let link = PinnedLink::from_pin(pin)
                .with_context(|| format!("opening pinned link {}", pin.display()))?;
            let link: aya::programs::xdp::XdpLink = FdLink::from(link)
                .try_into()
                .context("pinned link is not an XDP link")?;
            self.program(PROGRAM)?
                .attach_to_link(link)
                .with_context(|| format!("replacing the program on {iface}"))?;
        } else {
            let p = self.program(PROGRAM)?;
            let id = p.attach(iface, mode).with_context(|| {
                format!("attaching XDP to {iface} (is another XDP program attached?)")
            })?;
            if let Some(pin) = pin {
                let link = p.take_link(id)?;
                let fd: FdLink = link
                    .try_into()
                    .context("this kernel has no XDP links to pin")?;
                fd.pin(&pin)
                    .with_context(|| format!("pinning the link at {}", pin.display()))?;
            }
        }
        self.attached.push(iface.to_string());
        Ok(())
    }

    /// Removes every pin: links are detached once this process lets go of them,
    /// maps are freed with the last program using them.
    pub fn unpin(&self) -> Result<()> {
        if let Some(d) = &self.pins {
            remove_pins(d)?;
        }
        Ok(())
    }

    /// Verdict counters summed over CPUs, by name.
    pub fn stats(&self) -> Result<Vec<(&'static str, u64)>> {
        let m: PerCpuArray<&MapData, u64> = self.map_ref("STATS")?;
        (0..reason::COUNT)
            .map(|r| Ok((reason::NAMES[r as usize], m.get(&r, 0)?.iter().sum())))
            .collect()
    }

    /// Traffic of a backend slot, summed over CPUs.
    pub fn backend_traffic(&self, slot: u32) -> Result<Traffic> {
        self.traffic("BACKEND_STATS", slot)
    }

    /// Traffic of a service, summed over CPUs.
    pub fn service_traffic(&self, id: u32) -> Result<Traffic> {
        self.traffic("SERVICE_STATS", id)
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

    /// Attaches the benchmark baseline `xdp_trivial` to `iface` (in the calling
    /// thread's network namespace) instead of the balancer; detached when this
    /// data plane is dropped. Benchmarks only: it sends everything to the
    /// [`TrivialTarget`] set with [`set_trivial_target`](Self::set_trivial_target).
    pub fn attach_trivial(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        self.program(TRIVIAL)?
            .attach(iface, mode)
            .with_context(|| format!("attaching {TRIVIAL} to {iface}"))?;
        Ok(())
    }

    /// Sets the benchmark baseline's fixed target.
    pub fn set_trivial_target(&mut self, t: TrivialTarget) -> Result<()> {
        let mut m: Array<&mut MapData, TrivialTarget> = self.map("TRIVIAL")?;
        m.set(0, t, 0)?;
        Ok(())
    }

    fn map<'a, T>(&'a mut self, name: &str) -> Result<T>
    where
        T: TryFrom<&'a mut Map, Error = aya::maps::MapError>,
    {
        let m = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("no map {name}"))?;
        T::try_from(m).with_context(|| format!("map {name}"))
    }

    fn map_ref<'a, T>(&'a self, name: &str) -> Result<T>
    where
        T: TryFrom<&'a Map, Error = aya::maps::MapError>,
    {
        let m = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("no map {name}"))?;
        T::try_from(m).with_context(|| format!("map {name}"))
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

/// Removes a pin directory and everything in it (bpffs: unlinking a pin drops
/// the kernel's reference).
pub fn remove_pins(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

fn zeros() -> Result<PerCpuValues<Traffic>> {
    let n = aya::util::nr_cpus().map_err(|(m, e)| anyhow!("{m}: {e}"))?;
    Ok(PerCpuValues::try_from(vec![Traffic::default(); n])?)
}

pub fn socket_addr(e: &Endpoint) -> SocketAddr {
    let port = u16::from_be(e.port);
    match e.family {
        AF_INET6 => SocketAddr::from((e.addr, port)),
        _ => {
            debug_assert!(e.family == AF_INET || e.family == 0);
            SocketAddr::from(([e.addr[0], e.addr[1], e.addr[2], e.addr[3]], port))
        }
    }
}

/// Waits until every XDP program run that started before now has finished (XDP
/// runs inside RCU read-side sections; `membarrier(MEMBARRIER_CMD_GLOBAL)` is
/// `synchronize_rcu()`). Falls back to a pause far longer than any program run.
fn grace_period() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn maglev_entries() -> usize {
    (MAX_SERVICES * 2 * maglev::MAX_TABLE) as usize
}

/// The `MAGLEV` array mapped into this process. Array map elements are 8-byte
/// aligned in the kernel's layout (`round_up(value_size, 8)`), so a `u32` entry
/// takes 8 bytes.
struct TableMap {
    ptr: *mut u8,
    len: usize,
}

impl TableMap {
    const STRIDE: usize = 8;

    fn map(fd: i32, entries: usize) -> std::io::Result<TableMap> {
        let len = entries * Self::STRIDE;
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(TableMap {
            ptr: ptr as *mut u8,
            len,
        })
    }

    fn write(&mut self, base: usize, table: &[u32]) {
        assert!((base + table.len()) * Self::STRIDE <= self.len);
        for (i, v) in table.iter().enumerate() {
            // Volatile: these are the kernel's pages, read by XDP programs.
            unsafe {
                std::ptr::write_volatile(self.ptr.add((base + i) * Self::STRIDE) as *mut u32, *v)
            };
        }
        // The service entry update that makes the half live is a syscall, which
        // orders these stores before it.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
}

// The mapping is owned like a Vec: moving it across threads is fine.
unsafe impl Send for TableMap {}

impl Drop for TableMap {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let r = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) };
}
