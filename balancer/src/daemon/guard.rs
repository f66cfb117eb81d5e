//! Keeping `GUARD` (strict reverse path) and the attached interfaces in step
//! with the routing table: the kernel's routing and address notifications
//! (rtnetlink) wake the daemon, which looks every backend's route up again
//! after a short quiet time and writes what changed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::Daemon;
use crate::kernel::guard;
use crate::route;

/// Notifications arrive in bursts (an interface going down withdraws its
/// addresses and routes one message at a time): wait this long after the
/// first before looking again.
pub(super) const QUIET: Duration = Duration::from_millis(200);

/// A receiver that yields once per rtnetlink notification of a route, address
/// or link change, fed by a thread of its own. Without a netlink socket (a
/// sandbox that forbids it) it never yields, and says so once.
pub(super) fn watch() -> UnboundedReceiver<()> {
    let (tx, rx) = unbounded_channel();
    match subscribe() {
        Ok(sock) => {
            std::thread::Builder::new()
                .name("rtnetlink".into())
                .spawn(move || listen(sock, tx))
                .expect("spawning the rtnetlink thread");
        }
        Err(e) => log::warn!(
            "routing changes are not followed (GUARD and interfaces as at start and after each change): {e:#}"
        ),
    }
    rx
}

/// A netlink socket bound to the route, address and link groups.
fn subscribe() -> Result<Socket> {
    let groups = libc::RTMGRP_LINK
        | libc::RTMGRP_IPV4_IFADDR
        | libc::RTMGRP_IPV6_IFADDR
        | libc::RTMGRP_IPV4_ROUTE
        | libc::RTMGRP_IPV6_ROUTE;
    let mut sock = Socket::new(NETLINK_ROUTE).context("netlink socket")?;
    sock.bind(&SocketAddr::new(0, groups as u32))
        .context("binding the netlink socket to the routing groups")?;
    Ok(sock)
}

/// Reads notifications until the daemon stops listening. What they say is not
/// parsed: any of them means "look again", and an overrun (ENOBUFS) too.
fn listen(sock: Socket, tx: UnboundedSender<()>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        if let Err(e) = sock.recv(&mut buf, 0) {
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) => {}
                _ => {
                    log::warn!("routing changes are no longer followed: {e}");
                    return;
                }
            }
        }
        if tx.send(()).is_err() {
            return;
        }
    }
}

impl Daemon {
    /// Every backend's route looked up again (off the runtime's thread: one
    /// round of netlink requests for all), changes of interface logged,
    /// interfaces the program is not on yet attached, the program's cached
    /// next hops towards moved backends dropped, and `GUARD` rewritten.
    pub(super) async fn follow_routes(&mut self) {
        let mut addrs: Vec<IpAddr> = self
            .dp
            .config()
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.address.ip()))
            .collect();
        addrs.sort();
        addrs.dedup();
        let looked = tokio::task::spawn_blocking(move || route::egress_interfaces(&addrs)).await;
        let routes = match looked {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return log::error!("looking up the backends' routes: {e:#}"),
            Err(e) => return log::error!("looking up the backends' routes: {e}"),
        };
        let moved = self.set_routes(routes);
        let want = self.wanted_interfaces();
        if let Err(e) = self.attach_interfaces(want) {
            log::error!("attaching to a backend's new interface: {e:#}");
        }
        // After the attachment: the program may redirect to the new
        // interface once it asks the FIB again.
        if !moved.is_empty() {
            self.forget_next_hops(&moved);
        }
        if let Err(e) = self.update_guard() {
            log::error!("updating GUARD: {e:#}");
        }
    }

    /// Drops the program's cached next hops towards `moved` (and the copies
    /// of their backends' slots), so the next datagram follows the new route.
    fn forget_next_hops(&mut self, moved: &[IpAddr]) {
        let slots: Vec<u32> = self
            .dp
            .config()
            .services
            .iter()
            .flat_map(|s| &s.backends)
            .filter(|b| moved.contains(&b.address.ip()))
            .filter_map(|b| self.dp.slot_of(b.address))
            .collect();
        match self.dp.forget_next_hops(moved, &slots) {
            Ok(n) => log::info!(
                "route: next hops towards {} refreshed ({n} cached entries dropped)",
                moved
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => {
                log::error!("dropping cached next hops (they expire within a second anyway): {e:#}")
            }
        }
    }

    /// Replaces the route cache, saying which backend's interface changed;
    /// returns the addresses whose interface is another one now.
    fn set_routes(&mut self, routes: HashMap<IpAddr, String>) -> Vec<IpAddr> {
        let backends: Vec<IpAddr> = self
            .dp
            .config()
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.address.ip()))
            .collect();
        let mut moved = Vec::new();
        for ip in backends {
            match (self.routes.get(&ip), routes.get(&ip)) {
                (Some(a), Some(b)) if a != b => {
                    log::info!("route: backend {ip} is now reached through {b} (was {a})");
                    moved.push(ip);
                }
                (Some(a), None) => log::warn!(
                    "route: no route to backend {ip} any more (was {a}); its source is not checked until there is"
                ),
                (None, Some(b)) => log::info!("route: backend {ip} is reached through {b}"),
                _ => {}
            }
        }
        self.routes = routes;
        moved.sort();
        moved.dedup();
        moved
    }

    /// `GUARD` from the configuration, the cached routes and this host's
    /// addresses now.
    pub(super) fn update_guard(&mut self) -> Result<()> {
        let local = route::local_addresses()?;
        let mut ifindex: HashMap<String, u32> = HashMap::new();
        let mut routes: HashMap<IpAddr, u32> = HashMap::new();
        for (ip, dev) in &self.routes {
            let idx = match ifindex.get(dev) {
                Some(i) => *i,
                None => match route::ifindex(dev) {
                    Ok(i) => {
                        ifindex.insert(dev.clone(), i);
                        i
                    }
                    // Gone between the lookup and now: the next notification
                    // brings the new route.
                    Err(_) => continue,
                },
            };
            routes.insert(*ip, idx);
        }
        let want = guard::entries(self.dp.config(), &routes, &local);
        let w = self.dp.write_guard(&want)?;
        if w.written + w.removed > 0 {
            log::info!(
                "guard: {} addresses checked by interface ({} written, {} removed)",
                want.len(),
                w.written,
                w.removed
            );
        }
        Ok(())
    }
}
