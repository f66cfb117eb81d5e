//! Durations as an operator writes them: `1s`, `200ms`, `12h`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

pub fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 && d.as_secs() >= 3600 && d.as_secs().is_multiple_of(3600) {
        format!("{}h", d.as_secs() / 3600)
    } else if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Parses `1s`, `200ms`, `1.5s`, `30m`, `12h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && v * scale < 1e7 => {
            Ok(Duration::from_secs_f64(v * scale))
        }
        _ => Err(format!("`{s}` is not a duration (like 1s, 200ms or 12h)")),
    }
}

/// `Option<Duration>` fields in the configuration, written as text.
pub mod optional {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&fmt_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(f64),
            Text(String),
        }
        let r = Raw::deserialize(d)?;
        let d = match r {
            Raw::Secs(v) => parse_duration(&v.to_string()),
            Raw::Text(t) => parse_duration(&t),
        }
        .map_err(serde::de::Error::custom)?;
        Ok(Some(d))
    }
}
