//! `[hooks]`: the command run on backend state changes, as keepalived runs
//! its `notify` scripts. States are compared after every event of the loop
//! (a probe verdict, a CLI change, a reload), so health and the operator's
//! changes both count. A hook runs on its own: the loop never waits for it;
//! one still running after [`LIMIT`] is killed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Daemon;
use crate::control::protocol::BackendState;
use crate::health::Health;

/// Longest a hook may run.
pub const LIMIT: Duration = Duration::from_secs(30);

/// (service, backend) -> state name.
pub(super) type States = BTreeMap<(SocketAddr, SocketAddr), &'static str>;

impl Daemon {
    fn backend_states(&self) -> States {
        let mut out = States::new();
        for (vip, live) in self.dp.live() {
            for b in &live.config.backends {
                let member = live.is_member(b.address);
                let health = self.health.get(&b.address).map_or(Health::Up, |t| t.health);
                out.insert(
                    (*vip, b.address),
                    BackendState::of(b.state, health, member).name(),
                );
            }
        }
        out
    }

    /// Runs the hook for every state that changed since the last call (the
    /// first call only learns the states).
    pub(super) fn run_hooks(&mut self) {
        let Some(cmd) = self.dp.config().hooks.backend_state.clone() else {
            self.hook_states = None;
            return;
        };
        let now = self.backend_states();
        let Some(before) = self.hook_states.replace(now.clone()) else {
            return;
        };
        for (key, old) in &before {
            match now.get(key) {
                Some(new) if new == old => {}
                Some(new) => self.hook(&cmd, *key, old, new),
                None => self.hook(&cmd, *key, old, "removed"),
            }
        }
        for (key, new) in &now {
            if !before.contains_key(key) {
                self.hook(&cmd, *key, "none", new);
            }
        }
    }

    fn hook(&self, cmd: &Path, (vip, backend): (SocketAddr, SocketAddr), old: &str, new: &str) {
        let child = Command::new(cmd)
            .args([backend.to_string(), old.to_string(), new.to_string()])
            .env("BALANCER_INSTANCE", &self.opts.instance)
            .env("BALANCER_SERVICE", vip.to_string())
            .stdin(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                log::error!("hook {}: {e}", cmd.display());
                return;
            }
        };
        let what = format!("{} {backend} {old} {new}", cmd.display());
        // Reaped, and bounded, by a thread of its own.
        std::thread::spawn(move || {
            let end = Instant::now() + LIMIT;
            loop {
                match child.try_wait() {
                    Ok(Some(s)) if s.success() => return,
                    Ok(Some(s)) => return log::warn!("hook `{what}` exited with {s}"),
                    Ok(None) if Instant::now() >= end => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return log::warn!("hook `{what}` killed after {}s", LIMIT.as_secs());
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                    Err(_) => return,
                }
            }
        });
    }
}
