//! What the CLI asks the daemon and what the daemon answers, as types. Both ends
//! use these, so the wire and every `--json` output are the serialisation of
//! the same structs: a field renamed here is renamed everywhere, and the test
//! below pins the names the README documents.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::health::Health;
pub use crate::kernel::Via;
use crate::model::{AdminState, Algorithm, Mode, NoBackend, Op};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// Changes, all or nothing. Answer: [`Applied`].
    Apply { ops: Vec<Op> },
    /// Services and backends with their counters. Answer: [`Status`].
    Status,
    /// The backend the live kernel table picks for a key. Answer: [`Whereis`].
    Whereis {
        service: Option<SocketAddr>,
        key: String,
    },
    /// Verdict counters and traffic. Answer: [`Stats`].
    Stats,
    /// The block list and the sources blocked for going over a limit.
    /// Answer: [`Blocks`].
    Blocks,
    /// The affinity sync with each `[sync]` peer. Answer: [`Peers`].
    Peers,
    /// Re-read the configuration file and apply what differs (as SIGHUP).
    /// Answer: [`Applied`].
    Reload,
    /// Detach everywhere, remove the pins and exit. Answer: [`Detached`].
    Detach,
}

/// The envelope of every answer: `data` on success, `error` on failure.
#[derive(Debug, Serialize, Deserialize)]
pub struct Response<T> {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
}

fn none<T>() -> Option<T> {
    None
}

impl<T> Response<T> {
    pub fn ok(data: T) -> Self {
        Response {
            ok: true,
            error: None,
            data: Some(data),
        }
    }

    pub fn error(e: String) -> Self {
        Response {
            ok: false,
            error: Some(e),
            data: None,
        }
    }
}

/// Any answer, as the daemon sends it (each serialises as its own object).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Applied(Applied),
    Status(Status),
    Stats(Stats),
    Whereis(Whereis),
    Blocks(Blocks),
    Peers(Peers),
    Detached(Detached),
}

/// What an `apply` did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Applied {
    /// One line per change, in order.
    pub changes: Vec<String>,
    /// Tables written and flipped.
    pub tables: usize,
    /// From the request until the last table was live.
    pub to_kernel_us: u64,
    /// Including the grace period and clean-up.
    pub total_us: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub instance: String,
    pub interfaces: Vec<String>,
    /// The configuration file the daemon writes back.
    pub config: PathBuf,
    /// Table rebuilds caused by health changes.
    pub health_rebuilds: u64,
    pub services: Vec<ServiceStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub vip: SocketAddr,
    pub algorithm: Algorithm,
    pub mode: Mode,
    pub no_backend: NoBackend,
    pub affinity: bool,
    pub table_size: u32,
    pub packets: u64,
    pub bytes: u64,
    pub backends: Vec<BackendStatus>,
}

/// A row of `service list`: the service with its number of backends.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceRow {
    pub vip: SocketAddr,
    pub algorithm: Algorithm,
    pub mode: Mode,
    pub no_backend: NoBackend,
    pub affinity: bool,
    pub table_size: u32,
    pub backends: usize,
    pub packets: u64,
    pub bytes: u64,
}

impl From<&ServiceStatus> for ServiceRow {
    fn from(s: &ServiceStatus) -> Self {
        ServiceRow {
            vip: s.vip,
            algorithm: s.algorithm,
            mode: s.mode,
            no_backend: s.no_backend,
            affinity: s.affinity,
            table_size: s.table_size,
            backends: s.backends.len(),
            packets: s.packets,
            bytes: s.bytes,
        }
    }
}

/// What a backend does now, admin states first: an operator's `drain` shows as
/// draining whatever the probes say.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    Active,
    /// Probes failing, fewer than `fall` times in a row: still takes traffic.
    Trying,
    /// Held down by the probes.
    Down,
    /// Active but takes no new dialogs (weight 0, or a lower priority under
    /// `priority`).
    Standby,
    Draining,
    Disabled,
}

impl BackendState {
    /// Combines the operator's state, the probes' verdict and whether the
    /// backend is in the table.
    pub fn of(admin: AdminState, health: Health, member: bool) -> Self {
        match (admin, health) {
            (AdminState::Active, Health::Down) => BackendState::Down,
            (AdminState::Active, Health::Trying) => BackendState::Trying,
            (AdminState::Active, _) if !member => BackendState::Standby,
            (AdminState::Active, _) => BackendState::Active,
            (AdminState::Draining, _) => BackendState::Draining,
            (AdminState::Disabled, _) => BackendState::Disabled,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Trying => "trying",
            BackendState::Down => "down",
            BackendState::Standby => "standby",
            BackendState::Draining => "draining",
            BackendState::Disabled => "disabled",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    pub address: SocketAddr,
    pub service: SocketAddr,
    pub state: BackendState,
    /// What the probes say.
    pub health: Health,
    pub weight: u32,
    pub priority: i32,
    pub packets: u64,
    pub bytes: u64,
    /// Probe round-trip times in milliseconds; `None` before the first answer.
    pub rtt_last_ms: Option<f64>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    pub probes: u64,
    pub probe_failures: u64,
    /// What the last probe found.
    pub last_probe: Option<String>,
}

/// `stats`: the status plus the verdict counters by name.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    #[serde(flatten)]
    pub status: Status,
    pub reasons: BTreeMap<String, u64>,
    /// The affinity sync's totals; absent without `[sync]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncTotals>,
}

/// `peers`: this balancer's sync address and what went to and came from each
/// peer. Without `[sync]`, `listen` is absent and there are no peers.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Peers {
    pub listen: Option<SocketAddr>,
    pub peers: Vec<PeerStatus>,
    pub totals: SyncTotals,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    pub address: SocketAddr,
    /// Milliseconds since the last datagram taken from the peer (every peer
    /// sends one a second at least); absent: never heard since the start.
    pub last_heard_ms: Option<u64>,
    /// How late that datagram arrived by its own timestamp, ms: the path's
    /// delay plus the difference between the two clocks.
    pub lag_ms: Option<i64>,
    /// The peer's start (ms since the Unix epoch), from its datagrams.
    pub epoch: u64,
    pub sent_datagrams: u64,
    pub sent_entries: u64,
    pub received_datagrams: u64,
    pub received_entries: u64,
    /// Whether a bulk transfer from the peer is under way (this balancer
    /// started, or the peer was silent and came back).
    pub catching_up: bool,
    /// Datagrams refused, by reason.
    pub rejected: crate::sync::Rejected,
}

/// What the affinity sync did since the daemon started.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncTotals {
    /// Entries the program queued (new dialogs, learned dialogs).
    pub events: u64,
    pub sent_datagrams: u64,
    pub sent_entries: u64,
    pub received_entries: u64,
    /// Peers' entries written into the maps.
    pub applied: u64,
    /// Peers' entries left out: this balancer saw the key more recently.
    pub kept_newer: u64,
    /// Peers' entries for a VIP, or a backend of it, this balancer does not serve.
    pub unknown_service: u64,
    pub unknown_backend: u64,
    /// Datagrams refused from peers (sum of their `rejected`).
    pub rejected: u64,
    /// Datagrams from addresses that are not peers.
    pub not_a_peer: u64,
    /// Bulk requests answered (pages sent).
    pub bulk_pages: u64,
    /// Failures to send or to write a map.
    pub errors: u64,
}

/// Where the kernel's live state sends a key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Whereis {
    pub service: SocketAddr,
    pub algorithm: Algorithm,
    pub key: String,
    /// The kernel's 32-bit hash of the key, in hex.
    pub hash: String,
    /// `None` when the service has no usable backend.
    pub backend: Option<SocketAddr>,
    pub via: Via,
}

/// `block list`: what is blocked, and for how long.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Blocks {
    /// The configured block list (`[[block]]`, `block add`).
    pub configured: Vec<ConfiguredBlock>,
    /// Sources the kernel blocks for going over a service's limits.
    pub automatic: Vec<AutoBlockRow>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfiguredBlock {
    /// `203.0.113.0/24`, `2001:db8::/48`.
    pub cidr: String,
    /// RFC 3339 UTC; `None`: until removed.
    pub until: Option<String>,
    /// Seconds left; `None`: until removed.
    pub remaining_s: Option<u64>,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AutoBlockRow {
    /// The service whose limit the source went over.
    pub service: SocketAddr,
    /// An IPv4 address (/32) or an IPv6 /64.
    pub source: String,
    /// Seconds left (rounded up).
    pub remaining_s: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Detached {
    pub detached: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn keys(v: &Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    fn sorted(names: &[&str]) -> Vec<String> {
        let mut k: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        k.sort();
        k
    }

    fn sample() -> Stats {
        let vip: SocketAddr = "10.0.0.10:5060".parse().unwrap();
        let backend = BackendStatus {
            address: "10.0.2.11:5060".parse().unwrap(),
            service: vip,
            state: BackendState::of(AdminState::Active, Health::Up, false),
            health: Health::Up,
            weight: 0,
            priority: 0,
            packets: 1,
            bytes: 2,
            rtt_last_ms: None,
            rtt_avg_ms: Some(0.5),
            rtt_max_ms: None,
            probes: 3,
            probe_failures: 0,
            last_probe: None,
        };
        Stats {
            status: Status {
                instance: "default".into(),
                interfaces: vec!["eth0".into()],
                config: "/etc/balancer.toml".into(),
                health_rebuilds: 0,
                services: vec![ServiceStatus {
                    vip,
                    algorithm: Algorithm::FromUri,
                    mode: Mode::Dsr,
                    no_backend: NoBackend::Pass,
                    affinity: true,
                    table_size: 251,
                    packets: 1,
                    bytes: 2,
                    backends: vec![backend],
                }],
            },
            reasons: [("no_service".to_string(), 4)].into(),
            sync: None,
        }
    }

    /// The README's "JSON output" section, field for field.
    #[test]
    fn documented_field_names() {
        let stats = serde_json::to_value(sample()).unwrap();
        assert_eq!(
            keys(&stats),
            sorted(&[
                "instance",
                "interfaces",
                "config",
                "health_rebuilds",
                "reasons",
                "services"
            ])
        );
        let service = &stats["services"][0];
        assert_eq!(
            keys(service),
            sorted(&[
                "vip",
                "algorithm",
                "mode",
                "no_backend",
                "affinity",
                "table_size",
                "packets",
                "bytes",
                "backends"
            ])
        );
        let backend = &service["backends"][0];
        assert_eq!(
            keys(backend),
            sorted(&[
                "address",
                "service",
                "state",
                "health",
                "weight",
                "priority",
                "packets",
                "bytes",
                "rtt_last_ms",
                "rtt_avg_ms",
                "rtt_max_ms",
                "probes",
                "probe_failures",
                "last_probe"
            ])
        );
        // Values an operator's script compares against.
        assert_eq!(backend["state"], "standby");
        assert_eq!(backend["health"], "up");
        assert_eq!(backend["rtt_last_ms"], Value::Null);
        assert_eq!(service["algorithm"], "from-uri");
        assert_eq!(service["mode"], "dsr");
        assert_eq!(service["no_backend"], "pass");
        assert_eq!(stats["reasons"]["no_service"], 4);

        let row = serde_json::to_value(ServiceRow::from(&sample().status.services[0])).unwrap();
        assert_eq!(
            keys(&row),
            sorted(&[
                "vip",
                "algorithm",
                "mode",
                "no_backend",
                "affinity",
                "table_size",
                "backends",
                "packets",
                "bytes"
            ])
        );
        assert_eq!(row["backends"], 1);

        let w = Whereis {
            service: "10.0.0.10:5060".parse().unwrap(),
            algorithm: Algorithm::CallId,
            key: "a@b".into(),
            hash: "0a1e551d".into(),
            backend: None,
            via: Via::Affinity,
        };
        let w = serde_json::to_value(w).unwrap();
        assert_eq!(
            keys(&w),
            sorted(&["service", "algorithm", "key", "hash", "backend", "via"])
        );
        assert_eq!(w["via"], "affinity");
        assert_eq!(w["backend"], Value::Null);
        assert_eq!(serde_json::to_value(Via::Learned).unwrap(), "learned");
        assert_eq!(serde_json::to_value(Via::Table).unwrap(), "table");

        let b = Blocks {
            configured: vec![ConfiguredBlock {
                cidr: "203.0.113.0/24".into(),
                until: Some("2026-11-30T09:00:00Z".into()),
                remaining_s: Some(60),
                reason: None,
            }],
            automatic: vec![AutoBlockRow {
                service: "10.0.0.10:5060".parse().unwrap(),
                source: "198.51.100.7/32".into(),
                remaining_s: 30,
            }],
        };
        let b = serde_json::to_value(b).unwrap();
        assert_eq!(keys(&b), sorted(&["configured", "automatic"]));
        assert_eq!(
            keys(&b["configured"][0]),
            sorted(&["cidr", "until", "remaining_s", "reason"])
        );
        assert_eq!(b["configured"][0]["reason"], Value::Null);
        assert_eq!(
            keys(&b["automatic"][0]),
            sorted(&["service", "source", "remaining_s"])
        );
    }

    /// The README's `peers --json`, field for field.
    #[test]
    fn documented_peer_field_names() {
        let p = Peers {
            listen: Some("10.0.1.1:5099".parse().unwrap()),
            peers: vec![PeerStatus {
                address: "10.0.1.2:5099".parse().unwrap(),
                last_heard_ms: Some(300),
                lag_ms: Some(1),
                epoch: 1,
                sent_datagrams: 2,
                sent_entries: 3,
                received_datagrams: 4,
                received_entries: 5,
                catching_up: false,
                rejected: Default::default(),
            }],
            totals: SyncTotals::default(),
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(keys(&v), sorted(&["listen", "peers", "totals"]));
        assert_eq!(
            keys(&v["peers"][0]),
            sorted(&[
                "address",
                "last_heard_ms",
                "lag_ms",
                "epoch",
                "sent_datagrams",
                "sent_entries",
                "received_datagrams",
                "received_entries",
                "catching_up",
                "rejected"
            ])
        );
        assert_eq!(
            keys(&v["peers"][0]["rejected"]),
            sorted(&[
                "datagram_rate",
                "too_long",
                "auth",
                "malformed",
                "sender",
                "old_epoch",
                "replay",
                "behind_window",
                "skew",
                "entry_rate"
            ])
        );
        assert_eq!(
            keys(&v["totals"]),
            sorted(&[
                "events",
                "sent_datagrams",
                "sent_entries",
                "received_entries",
                "applied",
                "kept_newer",
                "unknown_service",
                "unknown_backend",
                "rejected",
                "not_a_peer",
                "bulk_pages",
                "errors"
            ])
        );
        let back: Peers = serde_json::from_str(&v.to_string()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn states_put_the_operator_first() {
        use BackendState as S;
        assert_eq!(S::of(AdminState::Draining, Health::Down, true), S::Draining);
        assert_eq!(S::of(AdminState::Disabled, Health::Up, false), S::Disabled);
        assert_eq!(S::of(AdminState::Active, Health::Down, true), S::Down);
        assert_eq!(S::of(AdminState::Active, Health::Trying, false), S::Trying);
        assert_eq!(S::of(AdminState::Active, Health::Up, false), S::Standby);
        assert_eq!(S::of(AdminState::Active, Health::Up, true), S::Active);
    }

    /// What the daemon sends is what the CLI reads back, for every answer.
    #[test]
    fn answers_round_trip() {
        let s = sample();
        let wire = serde_json::to_string(&Response::ok(Reply::Stats(s.clone()))).unwrap();
        let back: Response<Stats> = serde_json::from_str(&wire).unwrap();
        assert_eq!(back.data, Some(s));
        let wire = serde_json::to_string(&Response::<Reply>::error("no".into())).unwrap();
        let back: Response<Status> = serde_json::from_str(&wire).unwrap();
        assert!(!back.ok && back.data.is_none() && back.error.as_deref() == Some("no"));
        let req = Request::Whereis {
            service: None,
            key: "k".into(),
        };
        let j = serde_json::to_string(&req).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&j).unwrap(), req);
    }
}
