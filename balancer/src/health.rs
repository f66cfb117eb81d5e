//! Health checks: parameters, the SIP probe messages, and the per-backend state
//! machine. The prober (`prober.rs`) sends and times; this module decides.
//!
//! Names and meaning follow Kamailio's dispatcher where it has an equivalent:
//!
//! | here          | Kamailio dispatcher            | default |
//! |---------------|--------------------------------|---------|
//! | `interval`    | `ds_ping_interval`             | 1 s     |
//! | `timeout`     | tm `fr_timer` for the ping     | 500 ms  |
//! | `fall`        | `ds_probing_threshold`         | 3       |
//! | `rise`        | `ds_inactive_threshold`        | 2       |
//! | `reply_codes` | `ds_ping_reply_codes`          | 200     |
//! | `from`        | `ds_ping_from`                 | `sip:balancer@<host address>` |
//! | `method`      | `ds_ping_method`               | OPTIONS |

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    #[serde(
        default,
        with = "opt_duration",
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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

pub mod opt_duration {
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

/// A probe request. `tag` makes branch, Call-ID and From tag unique.
pub struct Probe<'a> {
    pub params: &'a Params,
    pub backend: SocketAddr,
    pub local: SocketAddr,
    pub tag: &'a str,
    pub cseq: u32,
}

fn host(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.to_string(),
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    }
}

fn host_ip(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.ip().to_string(),
        SocketAddr::V6(v) => format!("[{}]", v.ip()),
    }
}

impl Probe<'_> {
    pub fn branch(&self) -> String {
        format!("z9hG4bK-bal-{}", self.tag)
    }

    pub fn call_id(&self) -> String {
        format!("bal-{}@{}", self.tag, host_ip(self.local))
    }

    pub fn ruri(&self) -> String {
        self.params
            .uri
            .clone()
            .unwrap_or_else(|| format!("sip:{}", host(self.backend)))
    }

    fn from(&self) -> String {
        self.params
            .from
            .clone()
            .unwrap_or_else(|| format!("sip:balancer@{}", host_ip(self.local)))
    }

    /// The request: OPTIONS (or the configured method), or the deep check's INVITE.
    pub fn request(&self) -> String {
        let body = if self.params.deep() {
            let (net, ip) = match self.local {
                SocketAddr::V4(v) => ("IP4", v.ip().to_string()),
                SocketAddr::V6(v) => ("IP6", v.ip().to_string()),
            };
            // A real offer (PCMU to the discard port) so servers that refuse
            // INVITEs without SDP still run their dialplan.
            format!(
                "v=0\r\no=balancer 1 1 IN {net} {ip}\r\ns=health check\r\nc=IN {net} {ip}\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
            )
        } else {
            String::new()
        };
        let to = format!("<{}>", self.ruri());
        self.message(&self.params.method, &to, &self.branch(), self.cseq, &body)
    }

    /// CANCEL for the deep check's INVITE (same branch, Call-ID, From, CSeq number).
    pub fn cancel(&self) -> String {
        let to = format!("<{}>", self.ruri());
        self.message("CANCEL", &to, &self.branch(), self.cseq, "")
    }

    /// ACK for a final response to the INVITE (`to` is the response's To value,
    /// with its tag). A 2xx ACK is a new transaction; for a non-2xx it reuses the
    /// INVITE's branch (RFC 3261 17.1.1.3).
    pub fn ack(&self, to: &str, success: bool) -> String {
        let branch = if success {
            format!("{}-ack", self.branch())
        } else {
            self.branch()
        };
        self.message("ACK", to, &branch, self.cseq, "")
    }

    /// BYE after a 2xx to the deep check's INVITE.
    pub fn bye(&self, to: &str) -> String {
        let branch = format!("{}-bye", self.branch());
        self.message("BYE", to, &branch, self.cseq + 1, "")
    }

    /// Every message of a probe: the same Via host, From, Call-ID; a Contact
    /// on requests that may set up a dialog; Content-Type with a body.
    fn message(&self, method: &str, to: &str, branch: &str, cseq: u32, body: &str) -> String {
        let via = host(self.local);
        let contact = if ["CANCEL", "ACK", "BYE"].contains(&method) {
            String::new()
        } else {
            format!("Contact: <sip:balancer@{via}>\r\n")
        };
        let ctype = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        format!(
            "{method} {ruri} SIP/2.0\r\n\
Via: SIP/2.0/UDP {via};branch={branch};rport\r\n\
Max-Forwards: 70\r\n\
From: <{from}>;tag={tag}\r\n\
To: {to}\r\n\
Call-ID: {call_id}\r\n\
CSeq: {cseq} {method}\r\n\
{contact}User-Agent: sip-xdp-balancer health check\r\n\
{ctype}Content-Length: {len}\r\n\r\n{body}",
            ruri = self.ruri(),
            from = self.from(),
            tag = self.tag,
            call_id = self.call_id(),
            len = body.len(),
        )
    }
}

/// The parts of a response the prober needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    pub call_id: String,
    pub cseq_method: String,
    pub to: String,
}

pub fn parse_response(msg: &[u8]) -> Option<Response> {
    let text = std::str::from_utf8(msg).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?;
    let code = status
        .strip_prefix("SIP/2.0 ")?
        .get(..3)?
        .parse::<u16>()
        .ok()?;
    let (mut call_id, mut cseq_method, mut to) = (None, None, None);
    for l in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "call-id" | "i" => call_id = Some(value.to_string()),
            "cseq" => cseq_method = value.split_whitespace().nth(1).map(str::to_string),
            "to" | "t" => to = Some(value.to_string()),
            _ => {}
        }
    }
    Some(Response {
        code,
        call_id: call_id?,
        cseq_method: cseq_method?,
        to: to.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(fall: u32, rise: u32) -> Params {
        HealthConfig {
            fall: Some(fall),
            rise: Some(rise),
            ..Default::default()
        }
        .params()
        .unwrap()
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

    #[test]
    fn probes_are_well_formed_and_answers_parse() {
        let p = params(3, 2);
        let probe = Probe {
            params: &p,
            backend: "10.0.2.11:5060".parse().unwrap(),
            local: "10.0.2.1:40000".parse().unwrap(),
            tag: "7a",
            cseq: 7,
        };
        let m = probe.request();
        assert!(m.starts_with("OPTIONS sip:10.0.2.11:5060 SIP/2.0\r\n"));
        for h in [
            "Via: SIP/2.0/UDP 10.0.2.1:40000;branch=z9hG4bK-bal-7a;rport\r\n",
            "Max-Forwards: 70\r\n",
            "From: <sip:balancer@10.0.2.1>;tag=7a\r\n",
            "To: <sip:10.0.2.11:5060>\r\n",
            "Call-ID: bal-7a@10.0.2.1\r\n",
            "CSeq: 7 OPTIONS\r\n",
            "Contact: <sip:balancer@10.0.2.1:40000>\r\n",
            "User-Agent: ",
        ] {
            assert!(m.contains(h), "{h} in {m}");
        }
        assert!(m.ends_with("Content-Length: 0\r\n\r\n"));
        assert_eq!(
            balancer_common::callid::call_id(m.as_bytes()),
            Some(&b"bal-7a@10.0.2.1"[..])
        );
        let r = parse_response(b"SIP/2.0 503 Service Unavailable\r\nVia: x\r\nTo: <sip:a>;tag=9\r\nCall-ID: bal-7a@10.0.2.1\r\nCSeq: 7 OPTIONS\r\n\r\n").unwrap();
        assert_eq!(r.code, 503);
        assert_eq!(r.call_id, "bal-7a@10.0.2.1");
        assert_eq!(r.cseq_method, "OPTIONS");
        assert_eq!(r.to, "<sip:a>;tag=9");
        assert!(parse_response(b"INVITE sip:a SIP/2.0\r\n\r\n").is_none());

        let deep = HealthConfig {
            method: Some("invite".into()),
            uri: Some("sip:health@10.0.2.11:5060".into()),
            ..Default::default()
        }
        .params()
        .unwrap();
        assert!(deep.deep() && deep.accepts(180) && !deep.accepts(100) && !deep.accepts(503));
        let probe = Probe {
            params: &deep,
            ..probe
        };
        let m = probe.request();
        assert!(m.starts_with("INVITE sip:health@10.0.2.11:5060 SIP/2.0\r\n"));
        assert!(
            m.contains("Content-Type: application/sdp\r\n") && m.contains("m=audio 9 RTP/AVP 0")
        );
        let body = m.split("\r\n\r\n").nth(1).unwrap();
        assert!(m.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(probe
            .cancel()
            .starts_with("CANCEL sip:health@10.0.2.11:5060 SIP/2.0\r\n"));
        assert!(probe.cancel().contains("CSeq: 7 CANCEL\r\n"));
        assert!(probe
            .ack("<sip:x>;tag=1", false)
            .contains("branch=z9hG4bK-bal-7a;"));
    }
}
