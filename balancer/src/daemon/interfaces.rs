//! Which interfaces the program runs on.

use anyhow::Result;
use aya::programs::XdpMode;

use super::Daemon;
use crate::model::Config;
use crate::route;

impl Daemon {
    /// Attaches to the client-facing interfaces and to every interface the
    /// routing table names towards a backend.
    pub(super) fn ensure_interfaces(&mut self, c: &Config) -> Result<()> {
        // Only addresses not looked up yet, all in one round of netlink
        // requests (routing notifications refresh the cache: `guard.rs`).
        let mut missing: Vec<std::net::IpAddr> = c
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.address.ip()))
            .filter(|ip| !self.routes.contains_key(ip))
            .collect();
        missing.sort();
        missing.dedup();
        self.routes.extend(route::every_egress_interface(&missing)?);
        let mut want = c.interfaces.clone();
        for s in &c.services {
            for b in &s.backends {
                let dev = &self.routes[&b.address.ip()];
                if !want.contains(dev) {
                    want.push(dev.clone());
                }
            }
        }
        self.attach_interfaces(want)
    }

    /// The client-facing interfaces and those the cached routes to the
    /// configured backends use.
    pub(super) fn wanted_interfaces(&self) -> Vec<String> {
        let c = self.dp.config();
        let mut want = c.interfaces.clone();
        for b in c.services.iter().flat_map(|s| &s.backends) {
            if let Some(dev) = self.routes.get(&b.address.ip()) {
                if !want.contains(dev) {
                    want.push(dev.clone());
                }
            }
        }
        want
    }

    /// Drops the pinned links an earlier run left on interfaces this one does
    /// not use (no longer configured, no backend routed there).
    pub(super) fn drop_stale_links(&mut self) -> Result<()> {
        for i in self.dp.drop_links_except(&self.ifaces)? {
            log::info!("note: detached {i}: an earlier run's interface, not used now");
        }
        Ok(())
    }

    /// Attaches to those of `want` the program is not on yet.
    pub(super) fn attach_interfaces(&mut self, want: Vec<String>) -> Result<()> {
        for i in want {
            if self.ifaces.contains(&i) {
                continue;
            }
            let idx = route::ifindex(&i)?;
            self.dp.add_tx_port(idx)?;
            self.dp.attach(&i, self.opts.xdp_mode)?;
            if route::is_veth(&i) && self.opts.xdp_mode != XdpMode::Skb {
                log::info!(
                    "note: {i} is a veth: frames redirected into it are received only if its peer runs NAPI \
                     (an XDP program, or `ethtool -K <peer> gro on`); otherwise they are silently lost"
                );
            }
            self.ifaces.push(i);
        }
        Ok(())
    }
}
