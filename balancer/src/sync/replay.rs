//! Replay protection per sender: a datagram captured and sent again must
//! change nothing, or an attacker on the path could bring back entries a
//! peer has removed since.
//!
//! A sender numbers its datagrams (epoch, sequence). The epoch is the time
//! its daemon started (milliseconds since the Unix epoch), so a restarted
//! peer, whose sequence starts again at 1, is newer than anything it sent
//! before; datagrams of an older epoch are refused whole. Within an epoch an
//! IPsec-style window of [`WINDOW`] sequence numbers accepts datagrams UDP
//! reordered, each once.
//!
//! The window lives in memory: a receiver that restarts takes, once, a
//! datagram replayed from before its restart if it is still within the
//! allowed clock skew (`max_skew`) and its epoch is still the sender's. Such
//! a replay is at most `max_skew` old: it can bring back an entry removed
//! within that time, which then lasts until its idle timeout.

use std::time::Duration;

/// How far behind the newest sequence number a datagram may arrive.
pub const WINDOW: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, thiserror::Error)]
#[serde(rename_all = "kebab-case")]
pub enum Stale {
    #[error("epoch older than the sender's current one")]
    OldEpoch,
    #[error("sequence number seen already")]
    Replay,
    #[error("sequence number behind the window")]
    BehindWindow,
    #[error("timestamp outside the allowed clock skew")]
    Skew,
}

/// What one sender has sent so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    epoch: u64,
    /// The highest sequence number accepted in `epoch` (0: none yet).
    top: u64,
    /// Bit i: `top - i` was accepted.
    seen: u64,
}

impl Window {
    /// Whether (epoch, seq) is new, without recording it: the caller records
    /// it with [`Window::accept`] only once every other check has passed, so
    /// a datagram dropped later (over a rate limit) is not half-counted.
    pub fn check(&self, epoch: u64, seq: u64) -> Result<(), Stale> {
        if epoch < self.epoch {
            return Err(Stale::OldEpoch);
        }
        // Sequence 0 is never sent: it would be taken for "none yet".
        if epoch > self.epoch || seq > self.top {
            return if seq == 0 { Err(Stale::Replay) } else { Ok(()) };
        }
        let behind = self.top - seq;
        if behind >= WINDOW {
            return Err(Stale::BehindWindow);
        }
        if self.seen & (1 << behind) != 0 {
            return Err(Stale::Replay);
        }
        Ok(())
    }

    /// Records (epoch, seq), which [`Window::check`] accepted.
    pub fn accept(&mut self, epoch: u64, seq: u64) {
        debug_assert!(self.check(epoch, seq).is_ok());
        if epoch > self.epoch {
            *self = Window {
                epoch,
                top: seq,
                seen: 1,
            };
        } else if seq > self.top {
            let ahead = seq - self.top;
            self.seen = if ahead >= WINDOW {
                0
            } else {
                self.seen << ahead
            } | 1;
            self.top = seq;
        } else {
            self.seen |= 1 << (self.top - seq);
        }
    }
}

/// Whether a datagram made at `sent_ms` may be taken at `now_ms` (both
/// milliseconds since the Unix epoch): a datagram held back and sent later
/// is refused even if its sequence number is still in the window.
pub fn check_skew(sent_ms: u64, now_ms: u64, max: Duration) -> Result<(), Stale> {
    if sent_ms.abs_diff(now_ms) > max.as_millis() as u64 {
        Err(Stale::Skew)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(w: &mut Window, epoch: u64, seq: u64) -> Result<(), Stale> {
        w.check(epoch, seq)?;
        w.accept(epoch, seq);
        Ok(())
    }

    #[test]
    fn accepts_each_once_in_any_order_within_the_window() {
        let mut w = Window::default();
        assert_eq!(take(&mut w, 5, 0), Err(Stale::Replay));
        for s in [1, 2, 5, 3, 4] {
            assert_eq!(take(&mut w, 5, s), Ok(()), "seq {s}");
        }
        for s in 1..=5 {
            assert_eq!(take(&mut w, 5, s), Err(Stale::Replay), "seq {s}");
        }
        assert_eq!(take(&mut w, 5, 100), Ok(()));
        // 100 - 63 is the oldest the window still holds.
        assert_eq!(take(&mut w, 5, 37), Ok(()));
        assert_eq!(take(&mut w, 5, 36), Err(Stale::BehindWindow));
        assert_eq!(take(&mut w, 5, 37), Err(Stale::Replay));
        assert_eq!(take(&mut w, 5, 6), Err(Stale::BehindWindow));
        // A jump past the whole window forgets it.
        assert_eq!(take(&mut w, 5, 1000), Ok(()));
        assert_eq!(take(&mut w, 5, 999), Ok(()));
        assert_eq!(take(&mut w, 5, 100), Err(Stale::BehindWindow));
    }

    #[test]
    fn a_new_epoch_restarts_and_an_old_one_is_refused() {
        let mut w = Window::default();
        assert_eq!(take(&mut w, 5, 500), Ok(()));
        assert_eq!(take(&mut w, 6, 1), Ok(()));
        assert_eq!(take(&mut w, 5, 501), Err(Stale::OldEpoch));
        assert_eq!(take(&mut w, 6, 1), Err(Stale::Replay));
        assert_eq!(take(&mut w, 6, 2), Ok(()));
        // Checking alone records nothing.
        assert_eq!(w.check(6, 3), Ok(()));
        assert_eq!(w.check(6, 3), Ok(()));
    }

    #[test]
    fn skew_is_either_way() {
        let max = Duration::from_secs(30);
        assert_eq!(check_skew(100_000, 130_000, max), Ok(()));
        assert_eq!(check_skew(130_000, 100_000, max), Ok(()));
        assert_eq!(check_skew(100_000, 130_001, max), Err(Stale::Skew));
        assert_eq!(check_skew(u64::MAX, 0, max), Err(Stale::Skew));
    }
}
