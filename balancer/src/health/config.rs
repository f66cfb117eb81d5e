//! Health-check settings: as configured (globally, per service, per backend)
//! and as effective for one backend.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::duration::{self, fmt_duration};

/// Health-check settings as written in the configuration: globally, per service
/// and per backend; the most specific one that is set wins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// `false`: backends are still pinged (to keep neighbour entries fresh) but
    /// never marked down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(
        default,
        with = "duration::optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    #[serde(
        default,
        with = "duration::optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    /// Codes or classes (`"200"`, `"2xx"`, `"503"`) that count as success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_codes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// `OPTIONS` (default), another method that needs no dialog (`INFO`,
    /// `NOTIFY`), or `INVITE`: the deep check, a call that is cancelled as soon
    /// as it rings, for servers that answer OPTIONS while their dialplan is dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request-URI of the probe (default `sip:BACKEND`); for INVITE, the number
    /// to call, e.g. `sip:healthcheck@10.0.2.11:5060`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

impl HealthConfig {
    pub fn is_empty(&self) -> bool {
        *self == HealthConfig::default()
    }

    /// `self` where set, else `base`.
    pub fn over(&self, base: &HealthConfig) -> HealthConfig {
        HealthConfig {
            enabled: self.enabled.or(base.enabled),
            interval: self.interval.or(base.interval),
            timeout: self.timeout.or(base.timeout),
            fall: self.fall.or(base.fall),
            rise: self.rise.or(base.rise),
            reply_codes: self
                .reply_codes
                .clone()
                .or_else(|| base.reply_codes.clone()),
            from: self.from.clone().or_else(|| base.from.clone()),
            method: self.method.clone().or_else(|| base.method.clone()),
            uri: self.uri.clone().or_else(|| base.uri.clone()),
        }
    }

    /// The effective parameters, checked.
    pub fn params(&self) -> Result<Params, String> {
        let method = self
            .method
            .clone()
            .unwrap_or_else(|| "OPTIONS".into())
            .to_ascii_uppercase();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!("health method `{method}` is not a SIP method"));
        }
        if ["ACK", "CANCEL", "BYE", "PRACK", "UPDATE"].contains(&method.as_str()) {
            return Err(format!(
                "health method {method} needs a dialog or transaction; use OPTIONS, INFO, NOTIFY or INVITE"
            ));
        }
        let deep = method == "INVITE";
        let codes = match &self.reply_codes {
            Some(c) => c
                .iter()
                .map(|s| CodeMatch::parse(s))
                .collect::<Result<Vec<_>, _>>()?,
            None if deep => vec![
                CodeMatch::Exact(180),
                CodeMatch::Exact(183),
                CodeMatch::Class(2),
            ],
            None => vec![CodeMatch::Exact(200)],
        };
        if codes.is_empty() {
            return Err("health reply_codes is empty: nothing could ever succeed".into());
        }
        let interval = self.interval.unwrap_or(Duration::from_secs(1));
        let timeout = self.timeout.unwrap_or(Duration::from_millis(500));
        if interval < Duration::from_millis(10) || interval > Duration::from_secs(3600) {
            return Err(format!(
                "health interval {} must be from 10ms to 1h",
                fmt_duration(interval)
            ));
        }
        if timeout < Duration::from_millis(1) || timeout > Duration::from_secs(60) {
            return Err(format!(
                "health timeout {} must be from 1ms to 60s",
                fmt_duration(timeout)
            ));
        }
        let fall = self.fall.unwrap_or(3);
        let rise = self.rise.unwrap_or(2);
        if !(1..=100).contains(&fall) || !(1..=100).contains(&rise) {
            return Err(format!(
                "health fall ({fall}) and rise ({rise}) must be from 1 to 100"
            ));
        }
        if let Some(f) = &self.from {
            if !(f.starts_with("sip:") || f.starts_with("sips:")) || f.contains(['\r', '\n']) {
                return Err(format!("health from `{f}` is not a SIP URI"));
            }
        }
        if let Some(u) = &self.uri {
            if !u.starts_with("sip:") || u.contains(['\r', '\n', ' ']) {
                return Err(format!("health uri `{u}` is not a SIP URI"));
            }
        }
        Ok(Params {
            enabled: self.enabled.unwrap_or(true),
            interval,
            timeout,
            fall,
            rise,
            codes,
            from: self.from.clone(),
            method,
            uri: self.uri.clone(),
        })
    }
}

/// Effective health-check parameters of one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub enabled: bool,
    pub interval: Duration,
    pub timeout: Duration,
    pub fall: u32,
    pub rise: u32,
    pub codes: Vec<CodeMatch>,
    pub from: Option<String>,
    pub method: String,
    pub uri: Option<String>,
}

impl Params {
    pub fn deep(&self) -> bool {
        self.method == "INVITE"
    }

    pub fn accepts(&self, code: u16) -> bool {
        self.codes.iter().any(|c| c.matches(code))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeMatch {
    Exact(u16),
    /// `2xx`: the hundreds digit.
    Class(u16),
}

impl CodeMatch {
    pub fn parse(s: &str) -> Result<CodeMatch, String> {
        let s = s.trim();
        let b = s.as_bytes();
        if b.len() == 3 && (b'1'..=b'6').contains(&b[0]) {
            if s[1..].eq_ignore_ascii_case("xx") {
                return Ok(CodeMatch::Class((b[0] - b'0') as u16));
            }
            if let Ok(n) = s.parse::<u16>() {
                return Ok(CodeMatch::Exact(n));
            }
        }
        Err(format!(
            "reply code `{s}`: expected a SIP status code (100-699) or a class like 2xx"
        ))
    }

    pub fn matches(self, code: u16) -> bool {
        match self {
            CodeMatch::Exact(c) => c == code,
            CodeMatch::Class(c) => code / 100 == c,
        }
    }
}

/// Default parameters but `fall` and `rise` (the other modules' tests).
#[cfg(test)]
pub(crate) fn params(fall: u32, rise: u32) -> Params {
    HealthConfig {
        fall: Some(fall),
        rise: Some(rise),
        ..Default::default()
    }
    .params()
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_duration;

    #[test]
    fn parameters_are_checked() {
        let bad = |h: HealthConfig| h.params().unwrap_err();
        assert!(bad(HealthConfig {
            interval: Some(Duration::from_millis(1)),
            ..Default::default()
        })
        .contains("interval"));
        assert!(bad(HealthConfig {
            method: Some("BYE".into()),
            ..Default::default()
        })
        .contains("BYE"));
        assert!(bad(HealthConfig {
            reply_codes: Some(vec!["abc".into()]),
            ..Default::default()
        })
        .contains("abc"));
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(43200));
        assert_eq!(fmt_duration(Duration::from_secs(43200)), "12h");
    }

    #[test]
    fn overrides_take_the_most_specific() {
        let global = HealthConfig {
            interval: Some(Duration::from_secs(2)),
            fall: Some(5),
            ..Default::default()
        };
        let backend = HealthConfig {
            fall: Some(1),
            ..Default::default()
        };
        let p = backend.over(&global).params().unwrap();
        assert_eq!((p.interval, p.fall, p.rise), (Duration::from_secs(2), 1, 2));
    }
}
