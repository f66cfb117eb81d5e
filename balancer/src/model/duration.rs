//! Durations as an operator writes them: `1s`, `200ms`, `12h`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// A duration as humantime writes it (`12h`, `1m 30s`, `1ms 500us`): what
/// [`parse_duration`] reads back exactly.
pub fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The longest duration a setting takes: about 115 days.
const LONGEST_S: f64 = 1e7;

/// Parses what humantime reads (`1s`, `200ms`, `1m30s`, `1h 5m`, `12h`),
/// a decimal number with one unit (`1.5s`, `0.5ms`: humantime takes whole
/// numbers only) or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match humantime::parse_duration(s) {
        Ok(d) => Some(d),
        Err(_) => decimal(s),
    };
    match d {
        Some(d) if d.as_secs_f64() < LONGEST_S => Ok(d),
        Some(_) => Err(format!("`{s}` is too long a duration (at most 115 days)")),
        None => Err(format!(
            "`{s}` is not a duration (like 1s, 200ms, 1m30s or 12h)"
        )),
    }
}

/// `1.5s`, `0.25ms`, `2.5m`, `0.5h`, or a bare number of seconds.
fn decimal(s: &str) -> Option<Duration> {
    let (num, scale) = [
        ("us", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ]
    .iter()
    .find_map(|(unit, scale)| s.strip_suffix(unit).map(|n| (n, *scale)))
    .unwrap_or((s, 1.0));
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && v * scale < LONGEST_S => {
            Some(Duration::from_secs_f64(v * scale))
        }
        _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the configuration writes back reads as the same duration, and
    /// what an operator writes is read as meant.
    #[test]
    fn durations_round_trip() {
        for (text, d) in [
            ("1.5ms", Duration::from_micros(1500)),
            ("1m30s", Duration::from_secs(90)),
            ("1m 30s", Duration::from_secs(90)),
            ("200ms", Duration::from_millis(200)),
            ("12h", Duration::from_secs(43200)),
            ("2", Duration::from_secs(2)),
            ("0.5", Duration::from_millis(500)),
            ("250us", Duration::from_micros(250)),
            ("0s", Duration::ZERO),
        ] {
            let got = parse_duration(text).unwrap();
            assert_eq!(got, d, "{text}");
            assert_eq!(parse_duration(&fmt_duration(got)).unwrap(), d, "{text}");
        }
        assert_eq!(fmt_duration(Duration::from_micros(1500)), "1ms 500us");
        assert_eq!(fmt_duration(Duration::from_secs(90)), "1m 30s");
        for bad in ["fast", "-1s", "1x", "", "200 days"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
