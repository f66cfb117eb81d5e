//! Attaching the program to interfaces (links pinned so they outlive the
//! daemon) and the benchmark baseline.

use std::path::PathBuf;

use anyhow::{Context, Result};
use aya::maps::{Array, DevMapHash, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::XdpMode;
use balancer_common::maps::{names, TrivialTarget};

use super::{detach_link, pinned_xdp_ifindex, remove_pins, Dataplane, PROGRAM, TRIVIAL};

impl Dataplane {
    /// Lets the program redirect to this interface.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        if self.tx_ports.contains(&ifindex) {
            return Ok(());
        }
        let mut ports: DevMapHash<&mut MapData> = self.map(names::TX_PORTS)?;
        ports.insert(ifindex, ifindex, None, 0)?;
        self.tx_ports.insert(ifindex);
        Ok(())
    }

    fn link_pin(&self, iface: &str) -> Option<PathBuf> {
        self.pins.as_ref().map(|d| d.join(format!("link_{iface}")))
    }

    /// Attaches the program to `iface`. With pins, an existing pinned link is
    /// taken over atomically (the old program runs until the new one replaces it)
    /// and a new link is pinned, so it outlives this process. A pinned link no
    /// longer on `iface` (the interface was deleted, or re-created under the same
    /// name) cannot be taken over: it is dropped and a new one made.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        if self.attached.iter().any(|a| a == iface) {
            return Ok(());
        }
        let pin = self.link_pin(iface);
        if let Some(pin) = pin.as_ref().filter(|p| p.exists()) {
            let here = crate::route::ifindex(iface)?;
            let stale = match pinned_xdp_ifindex(pin) {
                Ok(Some(i)) if i == here => None,
                Ok(Some(0)) => Some("its interface is gone".to_string()),
                Ok(Some(i)) => Some(format!(
                    "it is on interface index {i}, {iface} is now index {here} (re-created)"
                )),
                Ok(None) => Some("it is not an XDP link".to_string()),
                Err(e) => Some(format!("it cannot be read: {e}")),
            };
            if let Some(why) = stale {
                log::info!(
                    "note: dropping the pinned link {} ({why}); attaching anew",
                    pin.display()
                );
                let _ = detach_link(pin);
                std::fs::remove_file(pin)
                    .with_context(|| format!("removing the stale pin {}", pin.display()))?;
            }
        }
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

    /// Detaches and unpins the pinned links of interfaces not in `keep` (an
    /// earlier run's, no longer configured); returns their interfaces.
    pub fn drop_links_except(&self, keep: &[String]) -> Result<Vec<String>> {
        let Some(dir) = &self.pins else {
            return Ok(Vec::new());
        };
        let mut dropped = Vec::new();
        for e in std::fs::read_dir(dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(iface) = name.strip_prefix("link_") else {
                continue;
            };
            if keep.iter().any(|k| k == iface) {
                continue;
            }
            // Gone with its interface already: nothing to detach.
            let _ = detach_link(&e.path());
            std::fs::remove_file(e.path())
                .with_context(|| format!("removing the pin {}", e.path().display()))?;
            dropped.push(iface.to_string());
        }
        Ok(dropped)
    }

    /// Removes every pin: links are detached once this process lets go of them,
    /// maps are freed with the last program using them.
    pub fn unpin(&self) -> Result<()> {
        if let Some(d) = &self.pins {
            remove_pins(d)?;
        }
        Ok(())
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
        let mut m: Array<&mut MapData, TrivialTarget> = self.map(names::TRIVIAL)?;
        m.set(0, t, 0)?;
        Ok(())
    }
}
