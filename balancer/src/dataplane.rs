//! The loaded XDP object and the maps user space feeds.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf,
};
use balancer_common::{
    maglev,
    maps::{
        reason, Backend, Endpoint, Service, Traffic, TrivialTarget, MAX_BACKENDS, MAX_SERVICES,
        NO_BACKEND,
    },
};

use crate::{
    select::Selector,
    spec::{endpoint, Mode, ServiceSpec},
};

/// The compiled XDP object, built by `build.rs` with aya-build.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer"));

/// The main program's name in the object.
pub const PROGRAM: &str = "balancer";
/// The benchmark baseline's name in the object.
pub const TRIVIAL: &str = "xdp_trivial";

/// A service as installed in the kernel.
#[derive(Debug)]
pub struct Installed {
    pub id: u32,
    pub spec: ServiceSpec,
    pub selector: Selector,
    /// Kernel backend slot of each backend, in `spec.backends` order.
    pub slots: Vec<u32>,
    pub active: u32,
}

pub struct Dataplane {
    ebpf: Ebpf,
    services: BTreeMap<u32, Installed>,
    next_slot: u32,
}

impl Dataplane {
    /// Loads the object and both programs into the kernel (this is where the
    /// verifier runs).
    pub fn load() -> Result<Self> {
        raise_memlock();
        let mut ebpf = Ebpf::load(OBJECT).context("loading the XDP object")?;
        for name in [PROGRAM, TRIVIAL] {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?
                .try_into()?;
            p.load()
                .with_context(|| format!("the kernel rejected program {name}"))?;
        }
        Ok(Dataplane {
            ebpf,
            services: BTreeMap::new(),
            next_slot: 0,
        })
    }

    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?)
    }

    /// Installs a service with its backends: slots, reverse-NAT entries (DNAT
    /// only: DSR backends answer from the VIP themselves), the Maglev table, and
    /// last the service entry that makes it live.
    pub fn install_service(&mut self, spec: &ServiceSpec) -> Result<&Installed> {
        spec.validate()?;
        if self.services.values().any(|s| s.spec.vip == spec.vip) {
            bail!("service {} exists already", spec.vip);
        }
        let id = (0..MAX_SERVICES)
            .find(|i| !self.services.contains_key(i))
            .ok_or_else(|| anyhow!("at most {MAX_SERVICES} services"))?;
        if self.next_slot + spec.backends.len() as u32 > MAX_BACKENDS {
            bail!("at most {MAX_BACKENDS} backends");
        }
        let selector = Selector::build(&spec.backends, spec.table_size)?;
        let slots: Vec<u32> = (0..spec.backends.len() as u32)
            .map(|i| self.next_slot + i)
            .collect();
        let vip = endpoint(spec.vip);
        {
            let mut backends: Array<&mut MapData, Backend> = self.map("BACKENDS")?;
            for (b, &slot) in spec.backends.iter().zip(&slots) {
                let e = endpoint(b.addr);
                backends.set(
                    slot,
                    Backend {
                        addr: e.addr,
                        port: e.port,
                        family: e.family,
                        _pad: 0,
                    },
                    0,
                )?;
            }
        }
        if spec.mode == Mode::Dnat {
            let mut reverse: HashMap<&mut MapData, Endpoint, Endpoint> = self.map("REVERSE")?;
            for b in &spec.backends {
                reverse.insert(endpoint(b.addr), vip, 0)?;
            }
        }
        let active = 0;
        self.write_table(id, active, &selector, &slots)?;
        {
            let mut services: HashMap<&mut MapData, Endpoint, Service> = self.map("SERVICES")?;
            services.insert(
                vip,
                Service {
                    id,
                    table_size: spec.table_size,
                    active,
                    mode: spec.mode.raw(),
                    algorithm: 0,
                },
                0,
            )?;
        }
        self.next_slot += slots.len() as u32;
        self.services.insert(
            id,
            Installed {
                id,
                spec: spec.clone(),
                selector,
                slots,
                active,
            },
        );
        Ok(&self.services[&id])
    }

    fn write_table(&mut self, id: u32, half: u32, sel: &Selector, slots: &[u32]) -> Result<()> {
        let mut table: Array<&mut MapData, u32> = self.map("MAGLEV")?;
        let base = maglev::table_base(id, half);
        for (i, e) in sel.table.iter().enumerate() {
            let v = e.map_or(NO_BACKEND, |b| slots[b]);
            table.set(base + i as u32, v, 0)?;
        }
        Ok(())
    }

    /// Lets the program redirect to this interface.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        let mut ports: DevMapHash<&mut MapData> = DevMapHash::try_from(
            self.ebpf
                .map_mut("TX_PORTS")
                .ok_or_else(|| anyhow!("no map TX_PORTS"))?,
        )?;
        ports.insert(ifindex, ifindex, None, 0)?;
        Ok(())
    }

    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        let p = self.program(PROGRAM)?;
        p.attach(iface, mode).with_context(|| {
            format!("attaching XDP to {iface} (is another XDP program attached?)")
        })?;
        Ok(())
    }

    /// Verdict counters summed over CPUs, by name.
    pub fn stats(&self) -> Result<Vec<(&'static str, u64)>> {
        let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("STATS")
                .ok_or_else(|| anyhow!("no map STATS"))?,
        )?;
        (0..reason::COUNT)
            .map(|r| Ok((reason::NAMES[r as usize], m.get(&r, 0)?.iter().sum())))
            .collect()
    }

    /// Traffic of a backend slot, summed over CPUs.
    pub fn backend_traffic(&self, slot: u32) -> Result<Traffic> {
        let m: PerCpuArray<&MapData, Traffic> = PerCpuArray::try_from(
            self.ebpf
                .map("BACKEND_STATS")
                .ok_or_else(|| anyhow!("no map BACKEND_STATS"))?,
        )?;
        Ok(m.get(&slot, 0)?
            .iter()
            .fold(Traffic::default(), |a, t| Traffic {
                packets: a.packets + t.packets,
                bytes: a.bytes + t.bytes,
            }))
    }

    /// Sets the benchmark baseline's fixed target.
    pub fn set_trivial_target(&mut self, t: TrivialTarget) -> Result<()> {
        let mut m: Array<&mut MapData, TrivialTarget> = self.map("TRIVIAL")?;
        m.set(0, t, 0)?;
        Ok(())
    }

    fn map<'a, T>(&'a mut self, name: &str) -> Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let m = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("no map {name}"))?;
        T::try_from(m).with_context(|| format!("map {name}"))
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
