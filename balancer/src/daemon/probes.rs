//! Probe results into health states, and health changes into tables.

use std::collections::HashSet;
use std::net::SocketAddr;

use anyhow::Result;

use super::Daemon;
use crate::health::{Event, Health};

impl Daemon {
    /// Points the prober at the configured backends and forgets removed ones.
    pub(super) fn update_probes(&mut self) -> Result<()> {
        let want = self.dp.config().health_params()?;
        let addrs: HashSet<SocketAddr> = want.iter().map(|(a, _)| *a).collect();
        self.health.retain(|a, _| addrs.contains(a));
        if let Some(p) = self.prober.as_mut() {
            p.update(&want);
        }
        Ok(())
    }

    pub(super) fn down_set(&self) -> HashSet<SocketAddr> {
        self.health
            .iter()
            .filter(|(_, t)| t.health == Health::Down)
            .map(|(a, _)| *a)
            .collect()
    }

    /// One probe result: a change of health is logged with its reason, and one
    /// into or out of `down` rebuilds the tables at once.
    pub(super) fn on_probe(&mut self, ev: Event) {
        let Some(params) = self
            .prober
            .as_ref()
            .and_then(|p| p.params(ev.backend))
            .cloned()
        else {
            return;
        };
        let t = self.health.entry(ev.backend).or_default();
        let Some(tr) = t.record(&params, &ev.outcome) else {
            return;
        };
        eprintln!(
            "health: backend {} {} -> {} ({})",
            ev.backend,
            tr.from.name(),
            tr.to.name(),
            tr.reason
        );
        if tr.from != Health::Down && tr.to != Health::Down {
            return;
        }
        let down = self.down_set();
        self.dp.set_down(down);
        self.health_rebuilds += 1;
        let config = self.dp.config().clone();
        match self.dp.sync(&config) {
            Ok(r) => eprintln!(
                "health: tables rebuilt, in the kernel after {:.2} ms",
                r.to_kernel.as_secs_f64() * 1e3
            ),
            Err(e) => eprintln!("error: rebuilding the tables after a health change: {e:#}"),
        }
    }
}
