//! The block list as the daemon keeps it: what `block list` shows, and
//! configured entries removed once they expire.

use std::time::{Duration, SystemTime};

use anyhow::Result;

use super::Daemon;
use crate::control::protocol::{AutoBlockRow, Blocks, ConfiguredBlock};
use crate::model::policy::fmt_time;
use crate::model::Op;

/// How often expired entries are looked for. The kernel stops blocking at the
/// entry's expiry by itself; this tidies the list and the file, and follows
/// steps of the wall clock.
pub(super) const EXPIRY_CHECK: Duration = Duration::from_secs(5);

/// Whole seconds, rounded up: a block with 0.2 s left is not "0 s" left.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Daemon {
    pub(super) fn blocks(&self) -> Result<Blocks> {
        let now = SystemTime::now();
        let configured = self
            .dp
            .config()
            .blocks
            .iter()
            .map(|b| ConfiguredBlock {
                cidr: b.cidr.to_string(),
                until: b.until.map(fmt_time),
                remaining_s: b.until.map(|u| u.duration_since(now).map_or(0, ceil_secs)),
                reason: b.reason.clone(),
            })
            .collect();
        let automatic = self
            .dp
            .auto_blocked()?
            .into_iter()
            .map(|a| AutoBlockRow {
                service: a.service,
                source: a.source.to_string(),
                remaining_s: ceil_secs(a.remaining),
            })
            .collect();
        Ok(Blocks {
            configured,
            automatic,
        })
    }

    /// Removes expired entries from the configuration (and so from the kernel
    /// and the file), as one change; and rewrites any entry whose expiry in the
    /// kernel no longer matches the wall clock (it was stepped).
    pub(super) fn expire_blocks(&mut self) {
        let config = self.dp.config().clone();
        if let Err(e) = self.dp.write_blocked(&config) {
            log::error!("refreshing the block list in the kernel: {e:#}");
        }
        let now = SystemTime::now();
        let ops: Vec<Op> = self
            .dp
            .config()
            .blocks
            .iter()
            .filter(|b| b.expired(now))
            .map(|b| Op::BlockRemove { cidr: b.cidr })
            .collect();
        if ops.is_empty() {
            return;
        }
        for op in &ops {
            if let Op::BlockRemove { cidr } = op {
                log::info!("block: {cidr} expired");
            }
        }
        if let Err(e) = self.apply(&ops) {
            log::error!("removing expired block-list entries: {e:#}");
        }
    }
}
