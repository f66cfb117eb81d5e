//! Who may use the services: the global block list, the scanners' User-Agents,
//! and per service the allow-list and the per-source limits.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use balancer_common::limits::MAX_RATE;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ConfigError;

/// Per-source datagrams per second a service accepts unless configured.
pub const DATAGRAMS: u32 = 20_000;
/// Per-source new dialogs per second a service accepts unless configured.
pub const DIALOGS: u32 = 2_000;

/// User-Agent prefixes of the SIP scanners seen on the Internet (lower case):
/// what `drop_scanners` drops unless `user_agents` says otherwise.
pub use balancer_common::useragent::DEFAULT_SCANNERS as DEFAULT_USER_AGENTS;

pub fn default_user_agents() -> Vec<String> {
    DEFAULT_USER_AGENTS.iter().map(|s| s.to_string()).collect()
}

pub fn is_default_user_agents(v: &[String]) -> bool {
    v.iter()
        .map(String::as_str)
        .eq(DEFAULT_USER_AGENTS.iter().copied())
}

/// A `[[block]]` entry: sources in `cidr` are dropped, until `until` if set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockEntry {
    #[serde(with = "cidr")]
    pub cidr: IpNet,
    /// RFC 3339, UTC, whole seconds; absent: until removed.
    #[serde(default, with = "rfc3339", skip_serializing_if = "Option::is_none")]
    pub until: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl BlockEntry {
    /// Whether the entry no longer blocks at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.until.is_some_and(|u| u <= now)
    }
}

/// `[service.limits]`: per source (an IPv4 address, an IPv6 /64), token
/// buckets of datagrams and new dialogs per second. Absent fields take the
/// defaults; 0 turns a limit off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datagrams: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datagrams_burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialogs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialogs_burst: Option<u32>,
    /// A source over a limit is dropped whole for this long (absent: only
    /// what is over the limit is dropped).
    #[serde(
        default,
        with = "super::duration::optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub block_for: Option<Duration>,
}

/// The limits as the kernel's service entry holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effective {
    pub rate: u32,
    pub burst: u32,
    pub dialog_rate: u32,
    pub dialog_burst: u32,
    pub block_s: u32,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    pub fn effective(&self) -> Effective {
        let rate = self.datagrams.unwrap_or(DATAGRAMS);
        let dialog_rate = self.dialogs.unwrap_or(DIALOGS);
        Effective {
            rate,
            burst: self.datagrams_burst.unwrap_or(rate),
            dialog_rate,
            dialog_burst: self.dialogs_burst.unwrap_or(dialog_rate),
            block_s: self.block_for.map_or(0, |d| d.as_secs() as u32),
        }
    }

    /// What the kernel cannot check: rates it can count, bursts that admit
    /// something, a block time in whole seconds.
    pub fn check(&self) -> Result<(), String> {
        let e = self.effective();
        for (name, rate, burst) in [
            ("datagrams", e.rate, e.burst),
            ("dialogs", e.dialog_rate, e.dialog_burst),
        ] {
            if rate > MAX_RATE {
                return Err(format!("`{name} = {rate}` is over {MAX_RATE} per second"));
            }
            if burst > MAX_RATE {
                return Err(format!("`{name}_burst = {burst}` is over {MAX_RATE}"));
            }
            if rate > 0 && burst == 0 {
                return Err(format!(
                    "`{name}_burst = 0` with `{name} = {rate}` admits nothing (0 for {name} turns the limit off)"
                ));
            }
        }
        if let Some(d) = self.block_for {
            if d < Duration::from_secs(1) || d.subsec_nanos() != 0 || d.as_secs() > u32::MAX as u64
            {
                return Err(format!(
                    "`block_for` must be whole seconds, at least 1s (it is {})",
                    super::fmt_duration(d)
                ));
            }
        }
        Ok(())
    }
}

/// A CIDR as the block and allow lists take it: a bare address is the host
/// (/32, /128); host bits set are an error, not silently dropped.
pub fn parse_cidr(s: &str) -> Result<IpNet, ConfigError> {
    let s = s.trim();
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(a) => IpNet::from(a),
            Err(_) => return Err(ConfigError::Cidr(s.to_string())),
        },
    };
    if net.trunc() != net {
        return Err(ConfigError::HostBits(s.to_string(), net.trunc()));
    }
    Ok(net)
}

/// A User-Agent prefix as `SCANNERS` holds it (`useragent::patterns` says
/// what fits); the error names the first prefix that does not.
pub fn check_user_agents(v: &[String]) -> Result<(), ConfigError> {
    use balancer_common::useragent::{patterns, PatternError};
    match patterns(v) {
        Err(PatternError::TooMany { count }) => Err(ConfigError::TooManyUserAgents(count)),
        Err(_) => {
            let bad = v.iter().find(|p| patterns(&[p.as_str()]).is_err());
            Err(ConfigError::UserAgent(bad.cloned().unwrap_or_default()))
        }
        // Case is folded for ASCII only: say so rather than match bytes.
        Ok(_) => match v.iter().find(|p| !p.is_ascii()) {
            Some(p) => Err(ConfigError::UserAgent(p.clone())),
            None => Ok(()),
        },
    }
}

/// `user_agents`: lower-cased as read, so the file and the kernel agree.
pub fn lower_case<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    Ok(v.into_iter().map(|s| s.to_ascii_lowercase()).collect())
}

/// CIDRs as text.
pub mod cidr {
    use super::*;

    pub fn serialize<S: Serializer>(n: &IpNet, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&n.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let t = String::deserialize(d)?;
        parse_cidr(&t).map_err(serde::de::Error::custom)
    }
}

/// Lists of CIDRs as text.
pub mod cidrs {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|n| n.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| parse_cidr(t).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// `Option<SystemTime>` as RFC 3339 UTC text, whole seconds.
pub mod rfc3339 {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&fmt_time(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        let t = String::deserialize(d)?;
        parse_time(&t).map(Some).map_err(serde::de::Error::custom)
    }
}

/// `2026-11-30T09:00:00Z`.
pub fn fmt_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// RFC 3339 in UTC (`Z`), truncated to whole seconds (what the file keeps).
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    let t = humantime::parse_rfc3339(s.trim())
        .map_err(|_| format!("`{s}` is not an RFC 3339 UTC time (like 2026-11-30T09:00:00Z)"))?;
    Ok(whole_seconds(t))
}

/// `t` without its fraction of a second.
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    let s = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use balancer_common::maps::{MAX_UA_PATTERNS, UA_PATTERN_MAX};

    #[test]
    fn cidrs_are_networks_and_bare_addresses_hosts() {
        assert_eq!(
            parse_cidr("203.0.113.0/24").unwrap().to_string(),
            "203.0.113.0/24"
        );
        assert_eq!(
            parse_cidr("203.0.113.7").unwrap().to_string(),
            "203.0.113.7/32"
        );
        assert_eq!(
            parse_cidr("2001:db8::/48").unwrap().to_string(),
            "2001:db8::/48"
        );
        assert_eq!(
            parse_cidr("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        let e = parse_cidr("203.0.113.7/24").unwrap_err().to_string();
        assert!(
            e.contains("host bits") && e.contains("203.0.113.0/24"),
            "{e}"
        );
        let e = parse_cidr("203.0.113.0/33").unwrap_err().to_string();
        assert!(e.contains("not a CIDR"), "{e}");
        assert!(parse_cidr("eth0").is_err());
    }

    #[test]
    fn limits_default_and_check() {
        let l = Limits::default();
        assert_eq!(
            l.effective(),
            Effective {
                rate: DATAGRAMS,
                burst: DATAGRAMS,
                dialog_rate: DIALOGS,
                dialog_burst: DIALOGS,
                block_s: 0
            }
        );
        let l = Limits {
            datagrams: Some(100),
            dialogs_burst: Some(7),
            block_for: Some(Duration::from_secs(60)),
            ..Limits::default()
        };
        let e = l.effective();
        assert_eq!(
            (e.rate, e.burst, e.dialog_burst, e.block_s),
            (100, 100, 7, 60)
        );
        assert!(l.check().is_ok());
        let off = Limits {
            datagrams: Some(0),
            dialogs: Some(0),
            ..Limits::default()
        };
        assert!(off.check().is_ok());
        assert_eq!(off.effective().burst, 0);
        let over = Limits {
            datagrams: Some(MAX_RATE + 1),
            ..Limits::default()
        };
        assert!(over.check().unwrap_err().contains("over"));
        let zero_burst = Limits {
            dialogs_burst: Some(0),
            ..Limits::default()
        };
        assert!(zero_burst
            .check()
            .unwrap_err()
            .contains("dialogs_burst = 0"));
        let half = Limits {
            block_for: Some(Duration::from_millis(500)),
            ..Limits::default()
        };
        assert!(half.check().unwrap_err().contains("whole seconds"));
    }

    #[test]
    fn times_are_utc_whole_seconds() {
        let t = parse_time("2026-11-30T09:00:00Z").unwrap();
        assert_eq!(fmt_time(t), "2026-11-30T09:00:00Z");
        let t2 = parse_time("2026-11-30T09:00:00.75Z").unwrap();
        assert_eq!(t, t2);
        assert!(parse_time("2026-11-30T09:00:00+01:00").is_err());
        assert!(parse_time("tomorrow").is_err());
    }

    #[test]
    fn user_agents_fit_the_kernel() {
        assert!(check_user_agents(&default_user_agents()).is_ok());
        assert!(is_default_user_agents(&default_user_agents()));
        let long = vec!["x".repeat(UA_PATTERN_MAX + 1)];
        assert!(matches!(
            check_user_agents(&long),
            Err(ConfigError::UserAgent(_))
        ));
        assert!(check_user_agents(&["x".repeat(UA_PATTERN_MAX)]).is_ok());
        assert!(check_user_agents(&["sipvicious\u{e9}".into()]).is_err());
        assert!(check_user_agents(&[String::new()]).is_err());
        let many: Vec<String> = (0..=MAX_UA_PATTERNS).map(|i| format!("s{i}")).collect();
        assert!(matches!(
            check_user_agents(&many),
            Err(ConfigError::TooManyUserAgents(17))
        ));
    }
}
