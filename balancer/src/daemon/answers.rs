//! The daemon's answers to the control socket's requests, as the typed
//! structs of [`crate::control::protocol`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use balancer_common::hash::{hash_addr, hash_bytes};
use balancer_common::keys::KeySource;
use balancer_common::maps::Endpoint;

use super::Daemon;
use crate::control::protocol::{
    Applied, BackendState, BackendStatus, ServiceStatus, Stats, Status, Whereis,
};
use crate::health::Health;
use crate::kernel::SyncReport;
use crate::model::file::CommitError;
use crate::model::{self, Op};

impl Daemon {
    /// All or nothing: edit a copy, write it beside the file, attach and sync,
    /// put the file in place; on a failure after the kernel changed, sync
    /// back to the previous configuration.
    pub(super) fn apply(&mut self, ops: &[Op]) -> Result<Applied> {
        let prev = self.dp.config().clone();
        let (next, said) = model::edit::apply(&prev, ops)?;
        // Written and synced before anything else changes: a full or
        // read-only disk refuses the change here, with nothing applied.
        let path = &self.opts.config_path;
        let staged = next
            .stage(path)
            .with_context(|| format!("writing {} (nothing was changed)", path.display()))?;
        // Health is left as it is until the change committed (a removed
        // backend's is forgotten by `update_probes` below: added again, it
        // starts up), so a rollback restores the tables with the same backends
        // held down.
        self.dp.set_down(self.down_set());
        let result =
            self.ensure_interfaces(&next)
                .and_then(|_| self.dp.sync(&next))
                .and_then(|r| match staged.commit() {
                    Ok(()) => Ok(r),
                    Err(e @ CommitError::SyncDirectory(_)) => {
                        log::warn!("{}: {e}", self.opts.config_path.display());
                        Ok(r)
                    }
                    Err(e) => Err(e)
                        .with_context(|| format!("writing {}", self.opts.config_path.display())),
                });
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                if let Err(e2) = self.dp.sync(&prev) {
                    log::error!("restoring the previous state failed too: {e2:#}");
                }
                return Err(e);
            }
        };
        self.changed(said, report, "")
    }

    /// Re-reads the configuration file (SIGHUP, `balancer reload`) and
    /// applies what differs as a CLI change would, without writing the file:
    /// the kernel's tables are rebuilt only for services that changed, and
    /// the backends' health is kept. What only a start reads is refused
    /// when it changed, with nothing applied.
    pub(super) fn reload(&mut self) -> Result<Applied> {
        let path = self.opts.config_path.clone();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (nothing was changed)", path.display()))?;
        let next = model::Config::parse(&text)
            .with_context(|| format!("{} (nothing was changed)", path.display()))?;
        let prev = self.dp.config().clone();
        for (what, same) in [
            ("[sync]", next.sync == prev.sync),
            ("[announce]", next.announce == prev.announce),
            (
                "affinity_entries",
                next.affinity_entries == prev.affinity_entries,
            ),
            ("[metrics]", next.metrics == prev.metrics),
        ] {
            if !same {
                bail!(
                    "{}: {what} changed, and it is read at start only (nothing was changed; restart the daemon with --persist to apply it)",
                    path.display()
                );
            }
        }
        let said = model::edit::differences(&prev, &next);
        if said.is_empty() {
            return Ok(Applied {
                changes: Vec::new(),
                tables: 0,
                to_kernel_us: 0,
                total_us: 0,
            });
        }
        self.dp.set_down(self.down_set());
        let result = self
            .ensure_interfaces(&next)
            .and_then(|_| self.dp.sync(&next));
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                if let Err(e2) = self.dp.sync(&prev) {
                    log::error!("restoring the previous state failed too: {e2:#}");
                }
                return Err(e).with_context(|| format!("reloading {}", path.display()));
            }
        };
        self.changed(said, report, "reload: ")
    }

    /// What follows a change in the kernel: each change logged (with
    /// `prefix`), `GUARD` and the probes brought up to date, the answer.
    fn changed(&mut self, said: Vec<String>, report: SyncReport, prefix: &str) -> Result<Applied> {
        for s in &said {
            log::info!(
                "{prefix}{s} (in the kernel after {:.2} ms)",
                report.to_kernel.as_secs_f64() * 1e3
            );
        }
        if let Err(e) = self.update_guard() {
            log::error!("updating GUARD after the change: {e:#}");
        }
        self.update_probes()?;
        Ok(Applied {
            changes: said,
            tables: report.tables,
            to_kernel_us: report.to_kernel.as_micros() as u64,
            total_us: report.total.as_micros() as u64,
        })
    }

    pub(super) fn status(&self) -> Result<Status> {
        let mut services = Vec::new();
        for (vip, live) in self.dp.live() {
            let t = self.dp.service_traffic(live.id)?;
            let mut backends = Vec::new();
            for b in &live.config.backends {
                backends.push(self.backend_status(*vip, b, live.is_member(b.address))?);
            }
            let c = &live.config;
            services.push(ServiceStatus {
                vip: *vip,
                algorithm: c.algorithm,
                mode: c.mode,
                no_backend: c.no_backend,
                affinity: c.affinity,
                table_size: c.table_size,
                packets: t.packets,
                bytes: t.bytes,
                backends,
            });
        }
        Ok(Status {
            instance: self.opts.instance.clone(),
            interfaces: self.ifaces.clone(),
            config: self.opts.config_path.clone(),
            health_rebuilds: self.health_rebuilds,
            services,
        })
    }

    fn backend_status(
        &self,
        vip: SocketAddr,
        b: &model::BackendConfig,
        member: bool,
    ) -> Result<BackendStatus> {
        let traffic = match self.dp.slot_of(b.address) {
            Some(s) => self.dp.backend_traffic(s)?,
            None => Default::default(),
        };
        let t = self.health.get(&b.address);
        let health = t.map_or(Health::Up, |t| t.health);
        // Milliseconds with microsecond resolution.
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3);
        Ok(BackendStatus {
            address: b.address,
            service: vip,
            state: BackendState::of(b.state, health, member),
            health,
            weight: b.weight,
            priority: b.priority,
            packets: traffic.packets,
            bytes: traffic.bytes,
            rtt_last_ms: ms(t.and_then(|t| t.rtt.last)),
            rtt_avg_ms: ms(t.and_then(|t| t.rtt.avg())),
            rtt_max_ms: ms(t.map(|t| t.rtt.max).filter(|m| !m.is_zero())),
            probes: t.map_or(0, |t| t.probes),
            probe_failures: t.map_or(0, |t| t.failures),
            last_probe: t.and_then(|t| t.last.as_ref()).map(|o| o.to_string()),
        })
    }

    pub(super) fn stats(&self) -> Result<Stats> {
        let reasons = self
            .dp
            .stats()?
            .into_iter()
            .map(|(name, n)| (name.to_string(), n))
            .collect();
        Ok(Stats {
            status: self.status()?,
            reasons,
            sync: self.syncer.as_ref().map(|s| s.report().totals),
        })
    }

    /// The live kernel table's answer, with the kernel's own hash functions.
    pub(super) fn whereis(&self, service: Option<SocketAddr>, key: &str) -> Result<Whereis> {
        let c = self.dp.config();
        let vip = c.resolve(service)?;
        let alg = c.service(vip)?.algorithm;
        // The kernel's own choice of key for the algorithm.
        let hash = match KeySource::of(alg.raw()) {
            KeySource::RoundRobin => {
                bail!("service {vip} is round-robin: the backend depends on the turn, not on a key")
            }
            KeySource::Source => {
                let ip: IpAddr = key.parse().map_err(|_| {
                    anyhow!("service {vip} hashes the source address: `{key}` is not an IP address")
                })?;
                let e = Endpoint::from(SocketAddr::new(ip, 0));
                hash_addr(&e.addr, e.family)
            }
            KeySource::Message => hash_bytes(key.trim().as_bytes()),
        };
        let (backend, via) = self.dp.lookup(vip, hash)?;
        Ok(Whereis {
            service: vip,
            algorithm: alg,
            key: key.to_string(),
            hash: format!("{hash:08x}"),
            backend,
            via,
        })
    }
}
