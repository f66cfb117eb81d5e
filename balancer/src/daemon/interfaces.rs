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
        let mut want = c.interfaces.clone();
        for s in &c.services {
            for b in &s.backends {
                // `ip route get` is a process: once per backend address, not
                // once per backend per change.
                let ip = b.address.ip();
                let dev = match self.routes.get(&ip) {
                    Some(d) => d.clone(),
                    None => {
                        let d = route::egress_interface(ip)?;
                        self.routes.insert(ip, d.clone());
                        d
                    }
                };
                if !want.contains(&dev) {
                    want.push(dev);
                }
            }
        }
        for i in want {
            if self.ifaces.contains(&i) {
                continue;
            }
            let idx = route::ifindex(&i)?;
            self.dp.add_tx_port(idx)?;
            self.dp.attach(&i, self.opts.xdp_mode)?;
            if route::is_veth(&i) && self.opts.xdp_mode != XdpMode::Skb {
                eprintln!(
                    "note: {i} is a veth: frames redirected into it are received only if its peer runs NAPI \
                     (an XDP program, or `ethtool -K <peer> gro on`); otherwise they are silently lost"
                );
            }
            self.ifaces.push(i);
        }
        Ok(())
    }
}
