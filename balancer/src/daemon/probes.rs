//! Probe results into health states, and health changes into tables.

use std::collections::HashSet;
use std::net::SocketAddr;

use anyhow::Result;

use super::Daemon;
use crate::health::{Event, Health, Tracker};
use crate::model::{AdminState, Config};

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

    /// A restart keeps what the last run knew instead of declaring every
    /// backend up: one the adopted pins hold without `BACKEND_STICKY` although
    /// `c` has it active or draining was held down, and stays down until `rise`
    /// probes in a row succeed. (A backend enabled in the file while no daemon
    /// ran looks the same: it waits for `rise` successes too.) Called before
    /// the first sync rewrites the pinned slots.
    pub(super) fn restore_health(&mut self, c: &Config) -> Result<()> {
        let unsticky = self.dp.pinned_unsticky();
        let params = c.health_params()?;
        for b in c.services.iter().flat_map(|s| &s.backends) {
            let checked = params.iter().any(|(a, p)| *a == b.address && p.enabled);
            let up = matches!(b.state, AdminState::Active | AdminState::Draining);
            if checked
                && up
                && unsticky.contains(&b.address)
                && !self.health.contains_key(&b.address)
            {
                log::info!(
                    "health: backend {} starts down, as the last run left it",
                    b.address
                );
                self.health.insert(b.address, Tracker::held_down());
            }
        }
        self.dp.set_down(self.down_set());
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
        log::info!(
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
            Ok(r) => log::info!(
                "health: tables rebuilt, in the kernel after {:.2} ms",
                r.to_kernel.as_secs_f64() * 1e3
            ),
            Err(e) => log::error!("rebuilding the tables after a health change: {e:#}"),
        }
    }
}
