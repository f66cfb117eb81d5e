//! The loaded XDP object and the maps user space feeds.
//!
//! [`Dataplane::sync`] makes the kernel serve a [`Config`]: [`plan`] computes
//! what the maps must hold (backend slots, reverse-NAT entries, one Maglev table
//! per service, the service entries) and [`apply`] writes the difference. Tables
//! are double-buffered: a change writes the idle half and flips the service's
//! `active` field with one map update, then waits an RCU grace period before
//! anything the old half referred to may be reused, so no packet ever sees a
//! half-written table or a recycled slot.
//!
//! With a pin directory, every map and link lives in bpffs, so a restarted daemon
//! adopts them (the old program keeps forwarding until the new one replaces it
//! atomically on the same link) and a crashed one leaves the data plane running.
//! Pins are adopted only once checked ([`pins`]): their version, every map's
//! layout, and what the backend and service maps hold.

pub mod affinity;
mod apply;
mod attach;
pub mod guard;
mod hints;
mod nexthop;
pub mod pins;
pub mod plan;
pub mod program_log;
mod read;
pub mod requirements;
mod table;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData},
    programs::{ProgramError, Xdp},
    Ebpf, EbpfLoader,
};
use balancer_common::maps::{
    names, Backend, Endpoint, Service, AFFINITY_ENTRIES, AF_INET, AF_INET6, MAX_BACKENDS,
    MAX_SERVICES,
};

use crate::{
    model::{Config, ServiceConfig},
    select::Selector,
};
use requirements::Rejected;
use table::TableMap;

pub use apply::{Installed, SyncReport};
pub use plan::{plan, Clock, Held, Holdings, MapContents, PlanError};
use read::monotonic_ns;
pub use read::{AutoBlock, Via};

/// The compiled XDP object, built by `build.rs` with aya-build.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer"));

/// The main program's name in the object.
pub const PROGRAM: &str = "balancer";
/// The benchmark baseline's name in the object.
pub const TRIVIAL: &str = "xdp_trivial";

/// A service as the kernel serves it now.
#[derive(Debug, Clone)]
pub struct Live {
    pub id: u32,
    pub config: ServiceConfig,
    pub selector: Selector,
    /// Backend slot per table entry, as written to the active half.
    pub table: Vec<u32>,
    pub kernel: Service,
}

impl Live {
    /// Whether the backend is in the service's table now (a member of its
    /// selector: usable, of the best priority present).
    pub fn is_member(&self, backend: SocketAddr) -> bool {
        self.selector.backends.iter().any(|m| m.address == backend)
    }
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
    /// Forwards the program's rare events to stderr while the program runs.
    _log: Option<program_log::Reader>,
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
        loader.map_max_entries(names::AFFINITY, entries);
        let paths: Vec<(&str, PathBuf)> = match pins {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating pin directory {}", dir.display()))?;
                pins::check(dir, OBJECT)?;
                // Every map that holds state, so a restarted daemon adopts all of it.
                names::pinned().map(|m| (m, dir.join(m))).collect()
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
        // Without its log the data plane works the same: say so and go on.
        let log = program_log::start(&mut ebpf)
            .map_err(|e| log::warn!("the XDP program's log is not read: {e:#}"))
            .ok();
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
            _log: log,
        };
        dp.adopt()?;
        dp.seed_rates()?;
        if let Some(dir) = pins {
            pins::write_version(dir)
                .with_context(|| format!("pinning the version in {}", dir.display()))?;
        }
        Ok(dp)
    }

    /// Draws the seed of the per-source buckets' hash (`limits::rate_slot`)
    /// unless adopted pins hold one: a seed nobody outside knows, so nobody
    /// can aim a flood at another source's bucket.
    fn seed_rates(&mut self) -> Result<()> {
        let mut m: Array<&mut MapData, u32> = self.map(names::SEED)?;
        if m.get(&0, 0)? != 0 {
            return Ok(());
        }
        let mut seed = 0u32;
        while seed == 0 {
            let mut b = [0u8; 4];
            let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
            if n != b.len() as isize {
                return Err(std::io::Error::last_os_error()).context("getrandom");
            }
            seed = u32::from_ne_bytes(b);
        }
        m.set(0, seed, 0)?;
        Ok(())
    }

    /// Reads back what pinned maps already hold: services and backend slots,
    /// refused whole if they hold what this balancer never writes.
    fn adopt(&mut self) -> Result<()> {
        let invalid = |map: &str, what: String| -> anyhow::Error {
            let dir = self.pins.clone().unwrap_or_default();
            pins::PinError::Contents {
                map: map.to_string(),
                path: dir.join(map),
                instance: pins::instance_of(&dir),
                what,
            }
            .into()
        };
        let mut adopted = HashMap::new();
        let services: BpfHashMap<&MapData, Endpoint, Service> = self.map_ref(names::SERVICES)?;
        let mut ids = HashSet::new();
        for kv in services.iter() {
            let (vip, svc) = kv?;
            let vip = SocketAddr::from(vip);
            if svc.id >= MAX_SERVICES || svc.active > 1 || !ids.insert(svc.id) {
                let what = format!(
                    "service {vip} with id {} and live half {}",
                    svc.id, svc.active
                );
                return Err(invalid(names::SERVICES, what));
            }
            adopted.insert(vip, svc);
        }
        let (mut slots, mut vals) = (HashMap::new(), HashMap::new());
        let backends: Array<&MapData, Backend> = self.map_ref(names::BACKENDS)?;
        for slot in 0..MAX_BACKENDS {
            let b = backends.get(&slot, 0)?;
            if b.family == 0 {
                continue;
            }
            if b.family != AF_INET && b.family != AF_INET6 {
                let what = format!("address family {} in slot {slot}", b.family);
                return Err(invalid(names::BACKENDS, what));
            }
            if let Some(other) = slots.insert(backend_addr(&b), slot) {
                let what = format!("{} in slots {other} and {slot}", backend_addr(&b));
                return Err(invalid(names::BACKENDS, what));
            }
            vals.insert(slot, b);
        }
        self.adopted = adopted;
        self.slots = slots;
        self.backend_vals = vals;
        Ok(())
    }

    /// Backends the adopted pins hold without `BACKEND_STICKY`: the run that
    /// wrote them held them down (or had them disabled). Read before the first
    /// [`sync`](Self::sync) rewrites the slots.
    pub fn pinned_unsticky(&self) -> HashSet<SocketAddr> {
        self.backend_vals
            .values()
            .filter(|b| b.flags & balancer_common::maps::BACKEND_STICKY == 0)
            .map(backend_addr)
            .collect()
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

    /// What the kernel holds now, for [`plan`].
    pub fn holdings(&self) -> Holdings {
        let live = self.live.iter().map(|(vip, l)| {
            let held = Held {
                entry: l.kernel,
                table: Some(l.table.clone()),
            };
            (*vip, held)
        });
        let adopted = self.adopted.iter().map(|(vip, s)| {
            let held = Held {
                entry: *s,
                table: None,
            };
            (*vip, held)
        });
        Holdings {
            slots: self.slots.clone(),
            services: live.chain(adopted).collect(),
        }
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

/// Removes a pin directory and everything in it (bpffs: unlinking a pin drops
/// the kernel's reference). Pinned links are detached first: the reference an
/// unlinked pin held is dropped later, from a deferred release, and until then
/// the program would still run on the interface after `detach` returned.
pub fn remove_pins(dir: &Path) -> Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("link_") {
                detach_link(&e.path())
                    .with_context(|| format!("detaching the link {}", e.path().display()))?;
            }
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// Opens a pinned object (BPF_OBJ_GET).
fn obj_get(pin: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    const BPF_OBJ_GET: libc::c_long = 7;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes())?;
    let get = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let size = std::mem::size_of::<ObjGet>();
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &get as *const ObjGet, size) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just returned, owned here.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Detaches a pinned link now (BPF_LINK_DETACH, Linux 5.9): the link stays
/// as an object until its last reference goes, but is no longer attached.
fn detach_link(pin: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const BPF_LINK_DETACH: libc::c_long = 34;
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
    }
    let fd = obj_get(pin)?;
    let detach = LinkDetach {
        link_fd: fd.as_raw_fd() as u32,
    };
    let size = std::mem::size_of::<LinkDetach>();
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &detach as *const LinkDetach,
            size,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The interface a pinned XDP link is attached to (0: none, its interface is
/// gone); `None` if the pin is not an XDP link (BPF_OBJ_GET_INFO_BY_FD).
fn pinned_xdp_ifindex(pin: &Path) -> std::io::Result<Option<u32>> {
    use std::os::fd::AsRawFd;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_TYPE_XDP: u32 = 6;
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // struct bpf_link_info: type, id, prog_id, then a union aligned to 8
    // whose XDP member is the ifindex. Bytes the kernel does not know must be 0.
    let mut info = [0u32; 16];
    let fd = obj_get(pin)?;
    let attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    let size = std::mem::size_of::<InfoByFd>();
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoByFd,
            size,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((info[0] == BPF_LINK_TYPE_XDP).then_some(info[4]))
}

/// The address a backend slot holds.
fn backend_addr(b: &Backend) -> SocketAddr {
    SocketAddr::from(Endpoint {
        addr: b.addr,
        port: b.port,
        family: b.family,
        proto: 0,
    })
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let r = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) };
}
