//! One backend's health: what each probe found, and the state machine that turns
//! a run of them into up, trying or down.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Params;

/// What one probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Reply {
        code: u16,
        rtt: Duration,
    },
    Timeout,
    /// Sending failed (no route, ...).
    Error(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Reply { code, rtt } => write!(f, "answered {code} in {:.1} ms", ms(*rtt)),
            Outcome::Timeout => write!(f, "no answer within the timeout"),
            Outcome::Error(e) => write!(f, "probe not sent: {e}"),
        }
    }
}

/// What the probes say about a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Answering (also before the first probe: a start or restart must not take
    /// traffic away).
    Up,
    /// Failing, fewer than `fall` times in a row: still takes traffic.
    Trying,
    /// Failed `fall` times in a row; back after `rise` successes in a row.
    Down,
}

impl Health {
    pub fn name(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Trying => "trying",
            Health::Down => "down",
        }
    }
}

/// Probe round-trip times.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rtt {
    pub last: Option<Duration>,
    pub max: Duration,
    sum: Duration,
    count: u64,
}

impl Rtt {
    pub fn add(&mut self, d: Duration) {
        self.last = Some(d);
        self.max = self.max.max(d);
        self.sum += d;
        self.count += 1;
    }

    pub fn avg(&self) -> Option<Duration> {
        (self.count > 0).then(|| self.sum / self.count as u32)
    }
}

/// One backend's probe history and state.
#[derive(Clone, Debug)]
pub struct Tracker {
    pub health: Health,
    fails: u32,
    oks: u32,
    pub rtt: Rtt,
    pub last: Option<Outcome>,
    pub probes: u64,
    pub failures: u64,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            health: Health::Up,
            fails: 0,
            oks: 0,
            rtt: Rtt::default(),
            last: None,
            probes: 0,
            failures: 0,
        }
    }
}

impl Tracker {
    /// A backend known to be down before any probe (the last run held it
    /// down): back up only after `rise` successes in a row, like any other.
    pub fn held_down() -> Self {
        Tracker {
            health: Health::Down,
            ..Tracker::default()
        }
    }
}

/// A change of health, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: Health,
    pub to: Health,
    pub reason: String,
}

impl Tracker {
    /// Takes one probe result; returns the transition it caused, if any.
    pub fn record(&mut self, p: &Params, o: &Outcome) -> Option<Transition> {
        self.probes += 1;
        let ok = match o {
            Outcome::Reply { code, rtt } => {
                self.rtt.add(*rtt);
                p.accepts(*code)
            }
            // A timeout is never a success, whatever `reply_codes` says.
            Outcome::Timeout | Outcome::Error(_) => false,
        };
        self.last = Some(o.clone());
        if !p.enabled {
            return None;
        }
        let from = self.health;
        if ok {
            self.fails = 0;
            match from {
                Health::Down => {
                    self.oks += 1;
                    if self.oks >= p.rise {
                        self.health = Health::Up;
                    }
                }
                _ => self.health = Health::Up,
            }
        } else {
            self.failures += 1;
            self.oks = 0;
            if from != Health::Down {
                self.fails += 1;
                self.health = if self.fails >= p.fall {
                    Health::Down
                } else {
                    Health::Trying
                };
            }
        }
        let to = self.health;
        (to != from).then(|| Transition {
            from,
            to,
            reason: match to {
                Health::Down => format!("{} failures in a row, last: {o}", p.fall),
                Health::Trying => format!("probe failed: {o}"),
                Health::Up if from == Health::Down => {
                    format!("{} successes in a row, last: {o}", p.rise)
                }
                Health::Up => format!("probe succeeded: {o}"),
            },
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::config::params;
    use crate::health::{CodeMatch, HealthConfig};

    /// The names the log and `backend list` show are the JSON values.
    #[test]
    fn health_names_are_their_json() {
        for h in [Health::Up, Health::Trying, Health::Down] {
            assert_eq!(serde_json::to_value(h).unwrap(), h.name());
        }
        assert_eq!(Health::Trying.name(), "trying");
    }

    #[test]
    fn round_trip_times_keep_last_max_and_mean() {
        let mut r = Rtt::default();
        assert_eq!(r.avg(), None);
        for ms in [2, 6, 1] {
            r.add(Duration::from_millis(ms));
        }
        assert_eq!(r.last, Some(Duration::from_millis(1)));
        assert_eq!(r.max, Duration::from_millis(6));
        assert_eq!(r.avg(), Some(Duration::from_millis(3)));
    }

    /// Every probe is counted, every failure too, and the reason says what
    /// happened, with the round trip in milliseconds.
    #[test]
    fn counts_and_reasons() {
        let p = params(2, 2);
        let mut t = Tracker::default();
        let slow = Outcome::Reply {
            code: 200,
            rtt: Duration::from_micros(2500),
        };
        assert_eq!(slow.to_string(), "answered 200 in 2.5 ms");
        t.record(&p, &slow);
        let tr = t.record(&p, &Outcome::Timeout).unwrap();
        assert_eq!(tr.reason, "probe failed: no answer within the timeout");
        let tr = t.record(&p, &Outcome::Error("no route".into())).unwrap();
        assert_eq!(
            tr.reason,
            "2 failures in a row, last: probe not sent: no route"
        );
        t.record(&p, &slow);
        let tr = t.record(&p, &slow).unwrap();
        assert_eq!(
            (tr.from, tr.to, tr.reason.as_str()),
            (
                Health::Down,
                Health::Up,
                "2 successes in a row, last: answered 200 in 2.5 ms"
            )
        );
        assert_eq!((t.probes, t.failures), (5, 2));
        // From trying, one success is enough, and says so.
        t.record(&p, &Outcome::Timeout);
        let tr = t.record(&p, &slow).unwrap();
        assert_eq!(tr.reason, "probe succeeded: answered 200 in 2.5 ms");
        assert_eq!((t.probes, t.failures), (7, 3));
    }

    fn ok() -> Outcome {
        Outcome::Reply {
            code: 200,
            rtt: Duration::from_millis(2),
        }
    }

    #[test]
    fn fall_and_rise() {
        let p = params(3, 2);
        let mut t = Tracker::default();
        assert_eq!(t.record(&p, &ok()), None);
        let tr = t.record(&p, &Outcome::Timeout).unwrap();
        assert_eq!((tr.from, tr.to), (Health::Up, Health::Trying));
        assert_eq!(t.record(&p, &Outcome::Timeout), None);
        let tr = t
            .record(
                &p,
                &Outcome::Reply {
                    code: 503,
                    rtt: Duration::from_millis(1),
                },
            )
            .unwrap();
        assert_eq!(tr.to, Health::Down);
        assert!(tr.reason.contains("503"), "{}", tr.reason);
        assert_eq!(t.record(&p, &ok()), None, "one success is not enough");
        assert_eq!(t.record(&p, &Outcome::Timeout), None);
        assert_eq!(t.record(&p, &ok()), None);
        let tr = t.record(&p, &ok()).unwrap();
        assert_eq!((tr.from, tr.to), (Health::Down, Health::Up));
    }

    /// What a restart restores: down, and up only after `rise` successes.
    #[test]
    fn held_down_needs_rise_successes() {
        let p = params(3, 2);
        let mut t = Tracker::held_down();
        assert_eq!(t.health, Health::Down);
        assert_eq!(t.record(&p, &ok()), None, "one success is not enough");
        let tr = t.record(&p, &ok()).unwrap();
        assert_eq!((tr.from, tr.to), (Health::Down, Health::Up));
    }

    #[test]
    fn alternating_never_goes_down_with_fall_above_one() {
        let p = params(2, 2);
        let mut t = Tracker::default();
        let mut downs = 0;
        for i in 0..100 {
            let o = if i % 2 == 0 { Outcome::Timeout } else { ok() };
            if let Some(tr) = t.record(&p, &o) {
                downs += (tr.to == Health::Down) as u32;
            }
        }
        assert_eq!(downs, 0);
    }

    #[test]
    fn timeouts_never_succeed_and_classes_match() {
        let p = HealthConfig {
            reply_codes: Some(vec!["2xx".into(), "503".into()]),
            fall: Some(1),
            ..Default::default()
        }
        .params()
        .unwrap();
        assert!(p.accepts(200) && p.accepts(202) && p.accepts(503));
        assert!(!p.accepts(500) && !p.accepts(404));
        let mut t = Tracker::default();
        assert_eq!(t.record(&p, &Outcome::Timeout).unwrap().to, Health::Down);
        assert!(CodeMatch::parse("2xx").is_ok());
        assert!(CodeMatch::parse("7xx").is_err());
        assert!(CodeMatch::parse("20").is_err());
    }
}
