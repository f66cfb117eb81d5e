//! `[announce]`: the kernel routes that tell a routing daemon (BIRD, FRR)
//! which VIPs this host should carry. A VIP is carried while the data plane
//! is attached (the daemon serves) and at least one of its services has a
//! usable backend: admin state active or draining, and not down by health.
//! The routes are written by a thread of their own (netlink, which could
//! block), always to the latest wanted set; a hitless restart (`--persist`)
//! leaves them, and the next daemon adopts them and fixes only differences.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::time::Duration;

use super::threads::{self, Watched};
use super::Daemon;
use crate::model::{AdminState, Config};
use crate::route::announce::{reconcile, Place};
use crate::route::announced;

/// After a failed write, try again this often.
const RETRY: Duration = Duration::from_secs(1);

/// The VIPs to carry, each with its number of usable backends (over every
/// service on that address); a VIP without one is absent.
pub fn carried(c: &Config, down: &HashSet<SocketAddr>) -> BTreeMap<IpAddr, usize> {
    let mut out = BTreeMap::new();
    for s in &c.services {
        let usable = s
            .backends
            .iter()
            .filter(|b| matches!(b.state, AdminState::Active | AdminState::Draining))
            .filter(|b| !down.contains(&b.address))
            .count();
        if usable > 0 {
            *out.entry(s.vip.ip()).or_insert(0) += usable;
        }
    }
    out
}

/// The writer thread and what it was last asked for.
pub(super) struct Announcer {
    tx: Option<Sender<BTreeSet<IpAddr>>>,
    thread: Option<Watched>,
    /// What was last decided, with the usable backends of each VIP.
    carried: BTreeMap<IpAddr, usize>,
    /// Whether the thread was given a set yet.
    sent: bool,
}

impl Announcer {
    /// `record`: where to keep what was written (`route::announced`).
    pub(super) fn start(place: Place, record: PathBuf) -> Announcer {
        let (tx, rx) = channel::<BTreeSet<IpAddr>>();
        let thread = threads::spawn("announce", move || {
            let mut want: Option<BTreeSet<IpAddr>> = None;
            let mut failed = false;
            loop {
                let next = if failed {
                    rx.recv_timeout(RETRY)
                } else {
                    rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
                };
                match next {
                    Ok(w) => want = Some(w),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                // Only the latest set counts.
                while let Ok(w) = rx.try_recv() {
                    want = Some(w);
                }
                let Some(w) = want.as_ref() else { continue };
                match reconcile(w, place) {
                    Ok(_) => {
                        failed = false;
                        if let Err(e) = announced::save(&record, place, w) {
                            log::warn!(
                                "announce: keeping {} (for a detach without daemon): {e}",
                                record.display()
                            );
                        }
                    }
                    Err(e) => {
                        if !failed {
                            log::error!(
                                "announce: writing the routes of table {} (retrying every second): {e}",
                                place.table
                            );
                        }
                        failed = true;
                    }
                }
            }
        })
        .expect("spawning the announce thread");
        Announcer {
            tx: Some(tx),
            thread: Some(thread),
            carried: BTreeMap::new(),
            sent: false,
        }
    }

    /// Why the thread stopped, if it did by a panic.
    pub(super) fn failure(&self) -> Option<String> {
        self.thread.as_ref().and_then(Watched::failure)
    }

    /// Stops the thread after its last write; with `withdraw`, that write
    /// removes every announcement route first.
    pub(super) fn finish(mut self, withdraw: bool) {
        if let Some(tx) = self.tx.take() {
            if withdraw {
                for ip in self.carried.keys() {
                    log::info!("announce: {ip} withdrawn (detached)");
                }
                let _ = tx.send(BTreeSet::new());
            }
        }
        if let Some(t) = self.thread.take() {
            t.join();
        }
    }
}

impl Daemon {
    /// Decides which VIPs to carry now, logs what changed and hands the set to
    /// the writer thread (which does nothing if the kernel already has it).
    pub(super) fn update_announce(&mut self) {
        if self.announcer.is_none() {
            return;
        }
        let now = carried(self.dp.config(), &self.down_set());
        let Some(a) = self.announcer.as_mut() else {
            return;
        };
        if a.sent && now == a.carried {
            return;
        }
        for (ip, n) in &now {
            if !a.carried.contains_key(ip) {
                let s = if *n == 1 { "" } else { "s" };
                log::info!("announce: {ip} carried ({n} usable backend{s})");
            }
        }
        for ip in a.carried.keys() {
            if !now.contains_key(ip) {
                log::info!("announce: {ip} withdrawn (no usable backend)");
            }
        }
        // The first set goes to the thread whatever it is: routes an earlier
        // run left are adopted or removed.
        let send = !a.sent || !now.keys().eq(a.carried.keys());
        a.carried = now;
        a.sent = true;
        if send {
            if let Some(tx) = &a.tx {
                let _ = tx.send(a.carried.keys().copied().collect());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            r#"
interfaces = ["eth0"]
[[service]]
vip = "10.0.0.10:5060"
[[service.backend]]
address = "10.0.2.11:5060"
[[service.backend]]
address = "10.0.2.12:5060"
state = "draining"
[[service.backend]]
address = "10.0.2.13:5060"
state = "disabled"
[[service]]
vip = "10.0.0.10:5080"
[[service.backend]]
address = "10.0.2.21:5080"
[[service]]
vip = "[fd00::10]:5060"
[[service.backend]]
address = "[fd00:2::11]:5060"
state = "disabled"
"#,
        )
        .unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_vip_is_carried_with_a_usable_backend() {
        let c = config();
        let v4: IpAddr = "10.0.0.10".parse().unwrap();
        // Active and draining count, disabled not; both ports of the address.
        assert_eq!(carried(&c, &HashSet::new()), [(v4, 3)].into());
        let down: HashSet<_> = [sa("10.0.2.11:5060"), sa("10.0.2.21:5080")].into();
        assert_eq!(carried(&c, &down), [(v4, 1)].into());
        let down: HashSet<_> = [
            sa("10.0.2.11:5060"),
            sa("10.0.2.12:5060"),
            sa("10.0.2.21:5080"),
        ]
        .into();
        assert!(carried(&c, &down).is_empty());
    }

    #[test]
    fn a_vip_without_backends_is_not_carried() {
        let mut c = config();
        c.services[2].backends[0].state = AdminState::Active;
        let v6: IpAddr = "fd00::10".parse().unwrap();
        assert_eq!(carried(&c, &HashSet::new()).get(&v6), Some(&1));
        c.services[2].backends.clear();
        assert_eq!(carried(&c, &HashSet::new()).get(&v6), None);
        c.services.clear();
        assert!(carried(&c, &HashSet::new()).is_empty());
    }
}
