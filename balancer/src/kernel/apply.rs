//! Writing a [`MapContents`] into the kernel: only what differs from what the
//! maps hold, tables into idle halves, and nothing freed before a grace period.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuValues};
use balancer_common::hints::BLOCK_HINTS;
use balancer_common::maglev;
use balancer_common::maps::{
    names, AllowCidr, Backend, Block, Cidr, Endpoint, Reverse, Service, Traffic, UaPattern,
    CIDR_FAMILY_BITS,
};

use super::plan::{blocked, Clock};
use super::table::{grace_period, maglev_entries, TableMap};
use super::{plan, Dataplane, Live, MapContents};
use crate::model::{Config, ServiceConfig};
use crate::select::Selector;

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

impl Dataplane {
    /// Adds one service to what is served (tests and benchmarks).
    pub fn install_service(&mut self, service: ServiceConfig) -> Result<Installed> {
        let vip = service.vip;
        let mut next = self.config.clone();
        next.services.push(service);
        next.validate()?;
        self.sync(&next)?;
        let l = &self.live[&vip];
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
        let p = plan(next, &self.down, &self.holdings())?;
        let mut report = SyncReport {
            tables: p.writes(),
            ..SyncReport::default()
        };
        self.write_backends(&p)?;
        // Tracked from now on, so a failure further down leaves no slot unknown.
        self.slots.extend(p.slots.iter().map(|(a, s)| (*a, *s)));
        self.write_reverse(&p)?;
        // New allow-list entries (and patterns) before a service entry asks
        // for them; stale ones once no service entry does.
        let stale_allowed = self.write_allowed(&p)?;
        self.write_scanners(&p.scanners)?;
        self.write_services(&p)?;
        self.write_blocked(next)?;
        report.to_kernel = start.elapsed();

        // After a grace period no packet still reads an old half, an old service
        // entry or a slot the new tables no longer name.
        let stale_reverse: Vec<Endpoint> = {
            let m: BpfHashMap<&MapData, Endpoint, Reverse> = self.map_ref(names::REVERSE)?;
            m.keys()
                .filter_map(|k| k.ok())
                .filter(|k| !p.reverse.contains_key(k))
                .collect()
        };
        if report.tables > 0 || !p.gone.is_empty() || !p.freed_slots.is_empty() {
            grace_period();
        }
        {
            let mut m: BpfHashMap<&mut MapData, Endpoint, Reverse> = self.map(names::REVERSE)?;
            for k in &stale_reverse {
                let _ = m.remove(k);
            }
        }
        if !stale_allowed.is_empty() {
            let mut m: LpmTrie<&mut MapData, AllowCidr, u32> = self.map(names::ALLOWED)?;
            for (len, k) in &stale_allowed {
                let _ = m.remove(&Key::new(*len, *k));
            }
        }
        for slot in &p.freed_slots {
            let mut m: Array<&mut MapData, Backend> = self.map(names::BACKENDS)?;
            m.set(*slot, Backend::default(), 0)?;
            self.backend_vals.remove(slot);
        }
        self.slots = p.slots;
        self.config = next.clone();
        report.total = start.elapsed();
        Ok(report)
    }

    /// New slots start their counters from zero; entries that differ are written.
    fn write_backends(&mut self, p: &MapContents) -> Result<()> {
        for slot in &p.new_slots {
            let mut s: PerCpuArray<&mut MapData, Traffic> = self.map(names::BACKEND_STATS)?;
            s.set(*slot, zeros()?, 0)?;
        }
        for (slot, val) in &p.backends {
            if self.backend_vals.get(slot) != Some(val) {
                let mut m: Array<&mut MapData, Backend> = self.map(names::BACKENDS)?;
                m.set(*slot, *val, 0)?;
                self.backend_vals.insert(*slot, *val);
            }
        }
        Ok(())
    }

    fn write_reverse(&mut self, p: &MapContents) -> Result<()> {
        let mut m: BpfHashMap<&mut MapData, Endpoint, Reverse> = self.map(names::REVERSE)?;
        for (k, v) in &p.reverse {
            if m.get(k, 0).ok() != Some(*v) {
                m.insert(k, v, 0)?;
            }
        }
        Ok(())
    }

    /// Adds the allow-list entries the plan has and the kernel lacks; returns
    /// the kernel's entries the plan no longer has.
    fn write_allowed(&mut self, p: &MapContents) -> Result<Vec<(u32, AllowCidr)>> {
        let mut m: LpmTrie<&mut MapData, AllowCidr, u32> = self.map(names::ALLOWED)?;
        let held: HashSet<(u32, AllowCidr)> = m
            .iter()
            .filter_map(|kv| kv.ok())
            .map(|(k, _)| (k.prefix_len(), k.data()))
            .collect();
        for (len, k) in p.allowed.difference(&held) {
            m.insert(&Key::new(*len, *k), 1, 0)
                .context("adding to the allow-list map ALLOWED")?;
        }
        Ok(held.difference(&p.allowed).copied().collect())
    }

    /// The block list as of now: entries written where they differ (expiry
    /// compared to the second: both clocks are read anew each time), removed
    /// where no longer configured or expired. Called again now and then, it
    /// follows a step of the wall clock (the kernel only knows the monotonic one).
    pub fn write_blocked(&mut self, next: &Config) -> Result<()> {
        let want = blocked(next, Clock::now());
        let mut m: LpmTrie<&mut MapData, Cidr, Block> = self.map(names::BLOCKED)?;
        let held: HashMap<(u32, Cidr), Block> = m
            .iter()
            .filter_map(|kv| kv.ok())
            .map(|(k, v)| ((k.prefix_len(), k.data()), v))
            .collect();
        for (k, v) in &want {
            let same = held.get(k).is_some_and(|h| {
                (h.until == 0) == (v.until == 0) && h.until.abs_diff(v.until) < 1_000_000_000
            });
            if !same {
                m.insert(&Key::new(k.0, k.1), *v, 0)
                    .context("adding to the block-list map BLOCKED")?;
            }
        }
        for k in held.keys().filter(|k| !want.contains_key(k)) {
            let _ = m.remove(&Key::new(k.0, k.1));
        }
        let words = super::hints::block_words(
            want.keys()
                .map(|(len, c)| (&c.addr, len.saturating_sub(CIDR_FAMILY_BITS))),
        );
        self.write_hints(BLOCK_HINTS, &words)?;
        Ok(())
    }

    /// `SCANNERS`, entries that differ. An object without the map (built
    /// before the User-Agent filter) has nothing to feed.
    fn write_scanners(&mut self, want: &[UaPattern]) -> Result<()> {
        if self.ebpf.map(names::SCANNERS).is_none() {
            return Ok(());
        }
        let mut m: Array<&mut MapData, UaPattern> = self.map(names::SCANNERS)?;
        for (i, p) in want.iter().enumerate() {
            if m.get(&(i as u32), 0).ok().as_ref() != Some(p) {
                m.set(i as u32, *p, 0)?;
            }
        }
        Ok(())
    }

    /// Each changed service: the table into its idle half, then the entry that
    /// makes it live. Removed services' entries go.
    fn write_services(&mut self, p: &MapContents) -> Result<()> {
        for (vip, s) in &p.services {
            if s.write {
                self.write_table(s.entry.id, s.entry.active, &s.table)?;
                if s.fresh {
                    let mut m: PerCpuArray<&mut MapData, Traffic> =
                        self.map(names::SERVICE_STATS)?;
                    m.set(s.entry.id, zeros()?, 0)?;
                }
                let mut m: BpfHashMap<&mut MapData, Endpoint, Service> =
                    self.map(names::SERVICES)?;
                m.insert(Endpoint::from(*vip), s.entry, 0)?;
            }
            self.adopted.remove(vip);
            self.live.insert(
                *vip,
                Live {
                    id: s.entry.id,
                    config: s.config.clone(),
                    selector: s.selector.clone(),
                    table: s.table.clone(),
                    kernel: s.entry,
                },
            );
        }
        let gone: HashSet<_> = p.gone.iter().collect();
        {
            let mut m: BpfHashMap<&mut MapData, Endpoint, Service> = self.map(names::SERVICES)?;
            for v in &gone {
                let _ = m.remove(&Endpoint::from(**v));
            }
        }
        self.live.retain(|v, _| !gone.contains(v));
        self.adopted.retain(|v, _| !gone.contains(v));
        Ok(())
    }

    /// One table half. `MAGLEV` is a mappable array: the half is written with a
    /// memory copy into the kernel's pages (about 0.1 ms; 65537 map updates take
    /// about 0.1 s, one batched update about 13 ms). Nothing reads the idle half.
    fn write_table(&mut self, id: u32, half: u32, table: &[u32]) -> Result<()> {
        let base = maglev::table_base(id, half) as usize;
        if self.table_map.is_none() {
            let (fd, entries) = match self.ebpf.map(names::MAGLEV) {
                Some(Map::Array(m)) => (m.fd().as_fd().as_raw_fd(), maglev_entries()),
                _ => bail!("no array map MAGLEV"),
            };
            self.table_map =
                Some(TableMap::map(fd, entries).context("mapping the MAGLEV table into memory")?);
        }
        self.table_map
            .as_mut()
            .expect("mapped above")
            .write(base, table);
        Ok(())
    }
}

fn zeros() -> Result<PerCpuValues<Traffic>> {
    let n = aya::util::nr_cpus().map_err(|(m, e)| anyhow!("{m}: {e}"))?;
    Ok(PerCpuValues::try_from(vec![Traffic::default(); n])?)
}
