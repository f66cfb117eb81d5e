//! The balancer's whole configuration: what the daemon serves, as the TOML file an
//! operator edits and the daemon writes back after every CLI change.
//!
//! ```toml
//! interfaces = ["eth0"]          # client-facing; backend-side ones come from routes
//!
//! [[service]]
//! vip = "203.0.113.10:5060"
//! algorithm = "call-id"
//! mode = "dnat"
//!
//! [[service.backend]]
//! address = "10.0.2.11:5060"
//! weight = 2
//! ```
//!
//! Every change is made on a copy, checked whole by [`Config::validate`], and only
//! then applied and saved, so nothing ever half-applies.

mod announce;
pub(crate) mod duration;
pub mod edit;
mod error;
pub mod file;
pub mod hooks;
mod kinds;
mod layout;
pub mod metrics;
pub mod policy;
mod service;
pub mod sync;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use balancer_common::maglev::{is_prime, MAX_TABLE};
use balancer_common::maps::{
    AFFINITY_ENTRIES, ALLOW_ENTRIES, BLOCK_ENTRIES, MAX_BACKENDS, MAX_SERVICES,
};
use serde::{Deserialize, Serialize};

use crate::health::{HealthConfig, Params};

pub use announce::{AnnounceConfig, ANNOUNCE_PROTOCOL, ANNOUNCE_TABLE};
pub use duration::{fmt_duration, parse_duration};
pub use edit::Op;
pub use error::ConfigError;
pub use hooks::HooksConfig;
pub use kinds::{AdminState, Algorithm, Mode, NoBackend};
pub use metrics::MetricsConfig;
pub use policy::{parse_cidr, BlockEntry, Limits};
pub use service::{parse_addr, BackendConfig, ServiceConfig};
pub use sync::{SyncConfig, SyncLimits};

fn default_affinity_entries() -> u32 {
    AFFINITY_ENTRIES
}
fn is_default_affinity_entries(n: &u32) -> bool {
    *n == AFFINITY_ENTRIES
}

/// Default idle timeout of a dialog's affinity entry.
pub const AFFINITY_IDLE: Duration = Duration::from_secs(12 * 3600);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Client-facing interfaces. The program also attaches to every interface the
    /// routing table names towards a backend.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Capacity of the dialog-affinity map, over all services (read when the
    /// data plane is first loaded; a pinned map keeps its size until `detach`).
    #[serde(
        default = "default_affinity_entries",
        skip_serializing_if = "is_default_affinity_entries"
    )]
    pub affinity_entries: u32,
    /// Health-check settings for every backend (services and backends override).
    /// User-Agent prefixes (lower case) that services with `drop_scanners`
    /// drop; absent: [`policy::DEFAULT_USER_AGENTS`].
    #[serde(
        default = "policy::default_user_agents",
        deserialize_with = "policy::lower_case",
        skip_serializing_if = "is_default_user_agents"
    )]
    pub user_agents: Vec<String>,
    /// Health-check settings for every backend (services and backends override).
    #[serde(default, skip_serializing_if = "HealthConfig::is_empty")]
    pub health: HealthConfig,
    /// Sources dropped before any service sees them.
    #[serde(default, rename = "block", skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<BlockEntry>,
    /// Kernel routes telling a routing daemon which VIPs to announce.
    #[serde(default, skip_serializing_if = "AnnounceConfig::is_default")]
    pub announce: AnnounceConfig,
    /// Commands run on events (backend state changes).
    #[serde(default, skip_serializing_if = "HooksConfig::is_empty")]
    pub hooks: HooksConfig,
    /// Where Prometheus scrapes `/metrics`; absent: nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    /// Affinity entries exchanged with the other balancers; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncConfig>,
}

fn is_default_user_agents(v: &[String]) -> bool {
    policy::is_default_user_agents(v)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interfaces: Vec::new(),
            affinity_entries: AFFINITY_ENTRIES,
            user_agents: policy::default_user_agents(),
            health: HealthConfig::default(),
            blocks: Vec::new(),
            announce: AnnounceConfig::default(),
            hooks: HooksConfig::default(),
            metrics: None,
            services: Vec::new(),
            sync: None,
        }
    }
}

/// A TOML error in one line: `line 4, column 7: invalid string; expected ...`
/// (toml's own text draws the line with a caret under it, over several lines).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let what = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {what}")
        }
        None => what,
    }
}

impl Config {
    /// Parses and validates a configuration; errors name the line.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let c = Self::syntax(text)?;
        match c.problems().into_iter().next() {
            Some(e) => Err(locate(text, e)),
            None => Ok(c),
        }
    }

    /// Every problem of a configuration's text, each naming its line where
    /// it can: the syntax error, or every validation error.
    pub fn check(text: &str) -> Vec<ConfigError> {
        match Self::syntax(text) {
            Err(e) => vec![e],
            Ok(c) => {
                let mut out: Vec<ConfigError> = Vec::new();
                for e in c.problems().into_iter().map(|e| locate(text, e)) {
                    // The same problem found by two checks is one.
                    if !out.iter().any(|o| o.to_string() == e.to_string()) {
                        out.push(e);
                    }
                }
                out
            }
        }
    }

    /// The text as a configuration, unchecked; a syntax error in one line.
    fn syntax(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Syntax(toml_error(text, &e)))
    }

    pub fn load(path: &Path) -> anyhow::Result<Config> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading configuration {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("configuration {}", path.display()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the configuration always serialises")
    }

    /// The file's text: a header line, then the TOML.
    fn file_text(&self) -> String {
        let mut t = String::from(
            "# Written by balancer; CLI changes keep comments, `balancer reload` (SIGHUP) applies edits.\n",
        );
        t += &self.to_toml();
        t
    }

    /// Writes the new version beside `path` and syncs it, without replacing
    /// anything yet: a full or read-only disk fails here, before a change
    /// touches the kernel. See [`file`].
    pub fn stage(&self, path: &Path) -> std::io::Result<file::Staged> {
        // Into the file's own text when there is one: its comments and
        // layout stay (`layout`).
        let text = std::fs::read_to_string(path)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .and_then(|old| layout::merged(&old, self))
            .unwrap_or_else(|| self.file_text());
        file::stage(path, text.as_bytes())
    }

    /// Replaces the file at once ([`Config::stage`], then commit).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        Ok(self.stage(path)?.commit()?)
    }

    pub fn service(&self, vip: SocketAddr) -> Result<&ServiceConfig, ConfigError> {
        self.services
            .iter()
            .find(|s| s.vip == vip)
            .ok_or(ConfigError::NoService(vip))
    }

    pub fn service_mut(&mut self, vip: SocketAddr) -> Result<&mut ServiceConfig, ConfigError> {
        self.services
            .iter_mut()
            .find(|s| s.vip == vip)
            .ok_or(ConfigError::NoService(vip))
    }

    /// The service a command means: the one named, or the only one there is.
    pub fn resolve(&self, vip: Option<SocketAddr>) -> Result<SocketAddr, ConfigError> {
        match (vip, self.services.len()) {
            (Some(v), _) => self.service(v).map(|s| s.vip),
            (None, 0) => Err(ConfigError::NoServices),
            (None, 1) => Ok(self.services[0].vip),
            (None, n) => Err(ConfigError::WhichService(n)),
        }
    }

    /// Every backend address with its effective health-check parameters (a
    /// backend in several services is probed once, with its first service's).
    pub fn health_params(&self) -> Result<Vec<(SocketAddr, Params)>, ConfigError> {
        let mut out: Vec<(SocketAddr, Params)> = Vec::new();
        for s in &self.services {
            let base = s.health.over(&self.health);
            for b in &s.backends {
                if out.iter().any(|(a, _)| *a == b.address) {
                    continue;
                }
                let p = b
                    .health
                    .over(&base)
                    .params()
                    .map_err(|e| ConfigError::Health(b.address, e))?;
                out.push((b.address, p));
            }
        }
        Ok(out)
    }

    /// Everything the kernel cannot check, over the whole configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every problem of the configuration, in the file's order as far as
    /// it goes (`balancer check` lists them all; a change stops at the first).
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        let mut e = |r: Result<(), ConfigError>| {
            if let Err(x) = r {
                out.push(x);
            }
        };
        e(self
            .health
            .params()
            .map(drop)
            .map_err(ConfigError::GlobalHealth));
        if self.services.len() > MAX_SERVICES as usize {
            e(Err(ConfigError::TooManyServices));
        }
        if !(1024..=1 << 24).contains(&self.affinity_entries) {
            e(Err(ConfigError::AffinityEntries(self.affinity_entries)));
        }
        for i in &self.interfaces {
            if i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) {
                e(Err(ConfigError::Interface(i.clone())));
            }
        }
        e(policy::check_user_agents(&self.user_agents));
        e(self.announce.validate());
        e(self.hooks.validate());
        if self.blocks.len() > BLOCK_ENTRIES as usize {
            e(Err(ConfigError::TooManyBlocks));
        }
        let mut blocked = HashSet::new();
        for b in &self.blocks {
            if !blocked.insert(b.cidr) {
                e(Err(ConfigError::BlockedTwice(b.cidr)));
            }
        }
        let allowed: usize = self.services.iter().map(|s| s.allow.len()).sum();
        if allowed > ALLOW_ENTRIES as usize {
            e(Err(ConfigError::TooManyAllowed));
        }
        let mut vips = HashSet::new();
        let mut dnat_owner: HashMap<SocketAddr, SocketAddr> = HashMap::new();
        let mut all = HashSet::new();
        for s in &self.services {
            if !vips.insert(s.vip) {
                e(Err(ConfigError::ServiceExists(s.vip)));
            }
            if !(3..=MAX_TABLE).contains(&s.table_size) || !is_prime(s.table_size) {
                e(Err(ConfigError::TableSize {
                    vip: s.vip,
                    size: s.table_size,
                }));
            }
            e(s.limits.check().map_err(|x| ConfigError::Limits(s.vip, x)));
            if let Some(m) = s.max_size.filter(|m| !(1..=65535).contains(m)) {
                e(Err(ConfigError::MaxSize(s.vip, m)));
            }
            let mut seen = HashSet::new();
            for b in &s.backends {
                if !seen.insert(b.address) {
                    e(Err(ConfigError::BackendExists(b.address, s.vip)));
                }
                if b.address.is_ipv4() != s.vip.is_ipv4() {
                    e(Err(ConfigError::Family {
                        backend: b.address,
                        bfam: family(&b.address),
                        vip: s.vip,
                        vfam: family(&s.vip),
                    }));
                }
                if b.weight > u16::MAX as u32 {
                    e(Err(ConfigError::Weight(b.address, b.weight)));
                }
                if s.mode == Mode::Dnat {
                    // The same service twice is the duplicate above.
                    if let Some(other) = dnat_owner.insert(b.address, s.vip).filter(|o| *o != s.vip)
                    {
                        e(Err(ConfigError::SharedDnatBackend(b.address, other, s.vip)));
                    }
                }
                all.insert(b.address);
            }
        }
        if all.len() > MAX_BACKENDS as usize {
            e(Err(ConfigError::TooManyBackends));
        }
        if let Some(v) = vips.iter().find(|v| all.contains(v)) {
            e(Err(ConfigError::VipIsBackend(*v)));
        }
        e(self.health_params().map(drop));
        if let Some(s) = &self.sync {
            e(s.validate());
        }
        out
    }
}

pub(crate) fn family(a: &SocketAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// `e` naming the line of what it is about, when the text shows it.
fn locate(text: &str, e: ConfigError) -> ConfigError {
    // A duplicate is wrong where it appears the second time.
    let last = matches!(
        e,
        ConfigError::BackendExists(..)
            | ConfigError::ServiceExists(_)
            | ConfigError::BlockedTwice(_)
    );
    match e.subject().and_then(|s| line_of(text, &s, last)) {
        Some(l) => ConfigError::Syntax(format!("line {l}: {e}")),
        None => e,
    }
}

/// The first (or last) line mentioning `needle`, 1-based.
fn line_of(text: &str, needle: &str, last: bool) -> Option<usize> {
    let mut hits = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1);
    if last {
        hits.last()
    } else {
        hits.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example the Debian package ships (dist/example.toml) is valid.
    #[test]
    fn the_packaged_example_is_valid() {
        let c =
            Config::parse(include_str!("../../../dist/example.toml")).expect("dist/example.toml");
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services[0].backends.len(), 3);
    }

    const GOOD: &str = r#"
interfaces = ["eth0"]

[[service]]
vip = "10.0.0.10:5060"
algorithm = "from-uri"

[[service.backend]]
address = "10.0.2.11:5060"
weight = 2

[[service.backend]]
address = "10.0.2.12:5060"
state = "draining"

[[service]]
vip = "[2001:db8::10]:5060"
mode = "dsr"
table_size = 251

[[service.backend]]
address = "[2001:db8:2::11]:5060"
priority = 5
"#;

    #[test]
    fn parses_and_round_trips() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.services[0].algorithm, Algorithm::FromUri);
        assert_eq!(c.services[0].backends[0].weight, 2);
        assert_eq!(c.services[0].backends[1].state, AdminState::Draining);
        assert_eq!(c.services[1].mode, Mode::Dsr);
        assert_eq!(c.services[1].backends[0].priority, 5);
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn errors_name_the_line() {
        let e = Config::parse("interfaces = [\"eth0\"]\n[[service]]\nvip = \"10.0.0.1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
        let e = Config::parse(&GOOD.replace("algorithm = \"from-uri\"", "algorithm = \"fastest\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 6") && e.contains("fastest"), "{e}");
        let e = Config::parse(&GOOD.replace("weight = 2", "wieght = 2"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("wieght"), "{e}");
        let dup = GOOD.replace("10.0.2.12:5060", "10.0.2.11:5060");
        let e = Config::parse(&dup).unwrap_err().to_string();
        assert!(e.contains("line 13") && e.contains("already"), "{e}");
        let fam = GOOD.replace("[2001:db8:2::11]:5060", "10.0.2.99:5060");
        let e = Config::parse(&fam).unwrap_err().to_string();
        assert!(e.contains("line 22") && e.contains("IPv4"), "{e}");
        let e = Config::parse(&GOOD.replace("251", "250"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("prime"), "{e}");
    }

    const POLICY: &str = r#"
interfaces = ["eth0"]
user_agents = ["Friendly-Scanner", "sipvicious"]

[[block]]
cidr = "203.0.113.0/24"
until = "2026-11-30T09:00:00Z"
reason = "REGISTER flood"

[[block]]
cidr = "2001:db8:bad::/48"

[[service]]
vip = "10.0.0.10:5060"
allow = ["198.51.100.0/24", "2001:db8::/48", "192.0.2.7"]
drop_scanners = true
max_size = 4096

[service.limits]
datagrams = 500
dialogs = 50
dialogs_burst = 100
block_for = "60s"

[[service.backend]]
address = "10.0.2.11:5060"
"#;

    #[test]
    fn policy_parses_and_round_trips() {
        let c = Config::parse(POLICY).unwrap();
        assert_eq!(c.user_agents, vec!["friendly-scanner", "sipvicious"]);
        assert_eq!(c.blocks.len(), 2);
        assert_eq!(c.blocks[0].cidr.to_string(), "203.0.113.0/24");
        assert_eq!(c.blocks[0].reason.as_deref(), Some("REGISTER flood"));
        assert!(c.blocks[0].until.is_some() && c.blocks[1].until.is_none());
        let s = &c.services[0];
        assert_eq!(s.allow.len(), 3);
        assert_eq!(s.allow[2].to_string(), "192.0.2.7/32");
        assert!(s.drop_scanners);
        assert_eq!(s.max_size, Some(4096));
        let e = s.limits.effective();
        assert_eq!(
            (e.rate, e.burst, e.dialog_rate, e.dialog_burst, e.block_s),
            (500, 500, 50, 100, 60)
        );
        let text = c.to_toml();
        assert_eq!(Config::parse(&text).unwrap(), c);
        assert!(text.contains("until = \"2026-11-30T09:00:00Z\""), "{text}");
        assert!(!text.contains("datagrams_burst"), "{text}");
    }

    #[test]
    fn policy_defaults_are_not_written_back() {
        let c = Config::parse(GOOD).unwrap();
        assert!(is_default_user_agents(&c.user_agents));
        assert!(c.services[0].limits.effective().rate == policy::DATAGRAMS);
        let text = c.to_toml();
        for key in [
            "user_agents",
            "block",
            "allow",
            "drop_scanners",
            "max_size",
            "limits",
        ] {
            assert!(!text.contains(key), "{key} written back: {text}");
        }
        // An empty list is not the default list: it stays.
        let none = Config::parse(&format!("user_agents = []\n{GOOD}")).unwrap();
        assert!(none.user_agents.is_empty());
        assert_eq!(Config::parse(&none.to_toml()).unwrap(), none);
    }

    #[test]
    fn policy_errors_name_the_line() {
        let err = |from: &str, to: &str| {
            Config::parse(&POLICY.replace(from, to))
                .unwrap_err()
                .to_string()
        };
        let e = err("198.51.100.0/24", "198.51.100.1/24");
        assert!(
            e.contains("line 15") && e.contains("host bits") && e.contains("198.51.100.0/24"),
            "{e}"
        );
        let e = err("\"203.0.113.0/24\"", "\"203.0.113.0/40\"");
        assert!(e.contains("line 6") && e.contains("not a CIDR"), "{e}");
        let e = err("datagrams = 500", "datagrams = 20000000");
        assert!(e.contains("line 20") && e.contains("10000000"), "{e}");
        let e = err("dialogs_burst = 100", "dialogs_burst = 0");
        assert!(e.contains("line 22") && e.contains("admits nothing"), "{e}");
        let e = err("max_size = 4096", "max_size = 70000");
        assert!(e.contains("line 17") && e.contains("65535"), "{e}");
        let e = err("until = \"2026-11-30T09:00:00Z\"", "until = \"tomorrow\"");
        assert!(e.contains("line 7") && e.contains("RFC 3339"), "{e}");
        let e = err("2001:db8:bad::/48", "203.0.113.0/24");
        assert!(e.contains("line 11") && e.contains("blocked twice"), "{e}");
        let e = err("\"sipvicious\"]", &format!("\"{}\"]", "x".repeat(40)));
        assert!(e.contains("line 3") && e.contains("ASCII"), "{e}");
        let many: Vec<String> = (0..17).map(|i| format!("\"s{i}\"")).collect();
        let e = err(
            "[\"Friendly-Scanner\", \"sipvicious\"]",
            &format!("[{}]", many.join(", ")),
        );
        assert!(e.contains("at most 16"), "{e}");
        let e = err("block_for = \"60s\"", "block_for = \"1500ms\"");
        assert!(e.contains("line 23") && e.contains("whole seconds"), "{e}");
    }

    #[test]
    fn shared_dnat_backend_is_refused() {
        let mut c = Config::parse(GOOD).unwrap();
        let mut s = ServiceConfig::new("10.0.0.11:5060".parse().unwrap());
        s.backends
            .push(BackendConfig::new("10.0.2.11:5060".parse().unwrap()));
        c.services.push(s);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::SharedDnatBackend(..))
        ));
    }

    #[test]
    fn members_follow_state_weight_and_priority() {
        let mut s = ServiceConfig::new("10.0.0.10:5060".parse().unwrap());
        for (i, (prio, state, w)) in [
            (1, AdminState::Active, 1),
            (2, AdminState::Active, 1),
            (2, AdminState::Draining, 1),
            (3, AdminState::Disabled, 1),
            (2, AdminState::Active, 0),
        ]
        .into_iter()
        .enumerate()
        {
            let mut b = BackendConfig::new(format!("10.0.2.{}:5060", i + 1).parse().unwrap());
            b.priority = prio;
            b.state = state;
            b.weight = w;
            s.backends.push(b);
        }
        let none = HashSet::new();
        assert_eq!(s.members(&none).len(), 2);
        s.algorithm = Algorithm::Priority;
        let m = s.members(&none);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].address.to_string(), "10.0.2.2:5060");
        // When the top priority is down, the next one takes over.
        let down: HashSet<SocketAddr> = ["10.0.2.2:5060".parse().unwrap()].into();
        let m = s.members(&down);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].address.to_string(), "10.0.2.1:5060");
    }

    #[test]
    fn resolve_needs_a_name_only_when_ambiguous() {
        let mut c = Config::default();
        assert_eq!(c.resolve(None), Err(ConfigError::NoServices));
        c.services
            .push(ServiceConfig::new("10.0.0.10:5060".parse().unwrap()));
        assert!(c.resolve(None).is_ok());
        c.services
            .push(ServiceConfig::new("10.0.0.11:5060".parse().unwrap()));
        assert_eq!(c.resolve(None), Err(ConfigError::WhichService(2)));
    }
}
