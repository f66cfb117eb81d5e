//! The scanner filter: a service with `SERVICE_SCANNERS` drops the requests
//! whose User-Agent value begins with one of the prefixes in `SCANNERS`
//! (friendly-scanner, sipvicious and the like announce themselves there).
//!
//! Rules, identical in the kernel and in user space ([`is_scanner`]):
//! - requests only: a datagram whose payload begins with `SIP/` (a response)
//!   is never filtered, so a backend's answers are never lost to a pattern;
//! - the value is the first User-Agent header of the first message, found by
//!   the header scanner (`callid.rs`: names case-insensitive, whitespace and
//!   folding around the colon, first [`SCAN_MAX`](crate::callid::SCAN_MAX)
//!   bytes only; User-Agent has no compact form), trimmed;
//! - a pattern matches when the value begins with it, ASCII letters compared
//!   case-insensitively (patterns are stored lower case, [`patterns`]); a value
//!   shorter than the pattern does not match;
//! - the patterns are read in order up to the first empty one, at most
//!   [`MAX_UA_PATTERNS`].
//!
//! The kernel (`balancer-ebpf/src/filters.rs`) runs the header scan from
//! `bpf_loop` (one word per step, as for the Call-ID), then [`matches`] once
//! per pattern from a second one.

use crate::callid::{scan, Header, ScanBuf, Span};
use crate::maps::{UaPattern, MAX_UA_PATTERNS, UA_PATTERN_MAX};
use crate::sip::lower;

/// The prefixes a configuration without `user_agents` drops: the User-Agent
/// values of common SIP scanning and brute-forcing tools.
pub const DEFAULT_SCANNERS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sipscan",
    "vaxsipuseragent",
    "sundayddr",
    "iwar",
    "sivus",
    "pplsip",
    "smap",
];

/// Whether a payload is a SIP response (begins with `SIP/`, as the kernel
/// checks it: at the first byte, no leading CR/LF skipped).
#[inline(always)]
pub fn is_response(payload: &[u8]) -> bool {
    payload.starts_with(b"SIP/")
}

/// Whether the User-Agent value at `value` in `buf` begins with `pattern`
/// (ASCII letters of the value folded to lower case; `pattern` is lower case).
/// An empty pattern matches nothing. Reads only bytes of the value.
#[inline(always)]
pub fn matches(buf: &ScanBuf, value: Span, pattern: &UaPattern) -> bool {
    let n = pattern.len;
    if n == 0 || n > value.len || n > UA_PATTERN_MAX as u32 {
        return false;
    }
    let mut k = 0;
    while k < UA_PATTERN_MAX {
        if k as u32 >= n {
            break;
        }
        if lower(buf.at(value.start as usize + k)) != pattern.bytes[k] {
            return false;
        }
        k += 1;
    }
    true
}

/// Whether a service with `SERVICE_SCANNERS` drops this datagram: a request
/// whose User-Agent begins with one of `patterns` (read as the kernel reads the
/// `SCANNERS` array: up to the first empty entry, at most [`MAX_UA_PATTERNS`]).
pub fn is_scanner(payload: &[u8], patterns: &[UaPattern]) -> bool {
    if is_response(payload) {
        return false;
    }
    let mut buf = ScanBuf::zeroed();
    let (len, complete) = buf.fill(payload);
    let Some(value) = scan(&buf, len, complete, Header::USER_AGENT) else {
        return false;
    };
    patterns
        .iter()
        .take(MAX_UA_PATTERNS as usize)
        .take_while(|p| p.len != 0)
        .any(|p| matches(&buf, value, p))
}

/// A `user_agents` entry the `SCANNERS` array cannot hold, or one that could
/// never match; `index` is its place in the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternError {
    TooMany { count: usize },
    Empty { index: usize },
    TooLong { index: usize, len: usize },
    Whitespace { index: usize },
    Control { index: usize },
}

// By hand rather than with thiserror: the kernel builds this crate without
// std or the `user` feature, and `patterns` is for every user of the crate.
impl core::fmt::Display for PatternError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            PatternError::TooMany { count } => write!(
                f,
                "{count} User-Agent prefixes: at most {MAX_UA_PATTERNS}"
            ),
            PatternError::Empty { index } => write!(
                f,
                "user_agents[{index}] is empty: it would match every User-Agent"
            ),
            PatternError::TooLong { index, len } => write!(
                f,
                "user_agents[{index}] is {len} bytes: at most {UA_PATTERN_MAX}"
            ),
            PatternError::Whitespace { index } => write!(
                f,
                "user_agents[{index}] begins with whitespace: a User-Agent value never does (it is trimmed)"
            ),
            PatternError::Control { index } => {
                write!(f, "user_agents[{index}] holds a control character")
            }
        }
    }
}

impl core::error::Error for PatternError {}

/// The `SCANNERS` array for `list`: each prefix lower-cased (ASCII letters;
/// other bytes compare as they are), in order, the rest of the entries empty.
/// An empty list filters nothing.
pub fn patterns<S: AsRef<str>>(
    list: &[S],
) -> Result<[UaPattern; MAX_UA_PATTERNS as usize], PatternError> {
    if list.len() > MAX_UA_PATTERNS as usize {
        return Err(PatternError::TooMany { count: list.len() });
    }
    let mut out = [UaPattern::default(); MAX_UA_PATTERNS as usize];
    for (index, (slot, p)) in out.iter_mut().zip(list).enumerate() {
        let b = p.as_ref().as_bytes();
        if b.is_empty() {
            return Err(PatternError::Empty { index });
        }
        if b.len() > UA_PATTERN_MAX {
            return Err(PatternError::TooLong {
                index,
                len: b.len(),
            });
        }
        if b[0] == b' ' || b[0] == b'\t' {
            return Err(PatternError::Whitespace { index });
        }
        if b.iter().any(|&c| c < 0x20 || c == 0x7f) {
            return Err(PatternError::Control { index });
        }
        slot.len = b.len() as u32;
        for (d, s) in slot.bytes.iter_mut().zip(b) {
            *d = lower(*s);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callid::SCAN_MAX;

    fn defaults() -> [UaPattern; MAX_UA_PATTERNS as usize] {
        patterns(DEFAULT_SCANNERS).unwrap()
    }

    fn request(headers: &str) -> Vec<u8> {
        format!(
            "INVITE sip:100@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK-1\r\n\
{headers}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn scanner(headers: &str) -> bool {
        is_scanner(&request(headers), &defaults())
    }

    #[test]
    fn the_default_list_fits_and_every_entry_is_dropped() {
        let p = defaults();
        assert_eq!(
            p.iter().filter(|p| p.len != 0).count(),
            DEFAULT_SCANNERS.len()
        );
        for name in DEFAULT_SCANNERS {
            assert!(scanner(&format!("User-Agent: {name}\r\n")), "{name}");
        }
    }

    #[test]
    fn case_insensitive_prefixes() {
        for h in [
            "User-Agent: friendly-scanner\r\n",
            "User-Agent: Friendly-Scanner\r\n",
            "USER-AGENT: FRIENDLY-SCANNER\r\n",
            "user-agent:friendly-scanner\r\n",
            "User-Agent: sipvicious 0.3.4\r\n",
            "User-Agent: SIPVicious/0.3.4\r\n",
            "User-Agent: sipcli/v1.8\r\n",
            "User-Agent: VaxSIPUserAgent/3.1\r\n",
            // The value is trimmed: trailing whitespace, anything after the prefix.
            "User-Agent:    friendly-scanner   \r\n",
            "User-Agent: friendly-scannerX\r\n",
        ] {
            assert!(scanner(h), "{h:?}");
        }
        for h in [
            "User-Agent: Friendly\r\n",
            "User-Agent: friendly-scanne\r\n",
            "User-Agent: Asterisk PBX 20.5.0\r\n",
            "User-Agent: FreeSWITCH-mod_sofia/1.10.11\r\n",
            "User-Agent: Linphone/5.2.0 (belle-sip/5.2.0)\r\n",
            // The prefix must begin the value.
            "User-Agent: not friendly-scanner\r\n",
            "User-Agent: x-sipvicious\r\n",
            // Only the User-Agent header counts.
            "Server: friendly-scanner\r\n",
            "X-User-Agent: friendly-scanner\r\n",
            "User-Agents: friendly-scanner\r\n",
            "User: friendly-scanner\r\n",
            "User-Agen: friendly-scanner\r\n",
            "Subject: friendly-scanner\r\n",
            "",
        ] {
            assert!(!scanner(h), "{h:?}");
        }
    }

    #[test]
    fn whitespace_and_folding_around_the_colon() {
        for h in [
            "User-Agent :friendly-scanner\r\n",
            "User-Agent\t: \tfriendly-scanner\r\n",
            "User-Agent\r\n : friendly-scanner\r\n",
            "User-Agent:\r\n\tfriendly-scanner\r\n",
            "User-Agent:\r\n friendly-scanner 1.0\r\n",
        ] {
            assert!(scanner(h), "{h:?}");
        }
        // A fold inside the prefix is not the prefix.
        assert!(!scanner("User-Agent: friendly-\r\n scanner\r\n"));
        // A continuation line is no header.
        assert!(!scanner("Via: x\r\n User-Agent: friendly-scanner\r\n"));
    }

    #[test]
    fn the_first_user_agent_of_the_first_message_counts() {
        // Anywhere among the headers, after the Call-ID too.
        assert!(scanner(
            "Call-ID: a@b\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nUser-Agent: sipvicious\r\n"
        ));
        // An empty value is skipped, as the Call-ID scan skips one.
        assert!(scanner("User-Agent:  \r\nUser-Agent: sipvicious\r\n"));
        assert!(!scanner(
            "User-Agent: Asterisk\r\nUser-Agent: sipvicious\r\n"
        ));
        // In the body, or in a second message, it does not count.
        let mut m = request("");
        m.extend_from_slice(b"User-Agent: friendly-scanner\r\n");
        assert!(!is_scanner(&m, &defaults()));
        let mut m = request("User-Agent: Asterisk\r\n");
        m.extend_from_slice(&request("User-Agent: friendly-scanner\r\n"));
        assert!(!is_scanner(&m, &defaults()));
        // The start line is no header.
        assert!(!is_scanner(
            b"User-Agent: friendly-scanner\r\n\r\n",
            &defaults()
        ));
    }

    #[test]
    fn responses_are_never_filtered() {
        let m = b"SIP/2.0 200 OK\r\nUser-Agent: friendly-scanner\r\nCall-ID: a@b\r\n\r\n";
        assert!(!is_scanner(m, &defaults()));
        // The same headers in a request are.
        let m = b"OPTIONS sip:a@b SIP/2.0\r\nUser-Agent: friendly-scanner\r\nCall-ID: a@b\r\n\r\n";
        assert!(is_scanner(m, &defaults()));
        assert!(is_response(b"SIP/2.0 100 Trying"));
        assert!(!is_response(b"SIP"));
        assert!(!is_response(b"sip/2.0 200 OK"));
    }

    #[test]
    fn a_value_shorter_than_the_pattern_does_not_match() {
        let p = patterns(&["friendly-scanner"]).unwrap();
        for v in ["f", "friendly", "friendly-scanne"] {
            assert!(
                !is_scanner(&request(&format!("User-Agent: {v}\r\n")), &p),
                "{v}"
            );
        }
        // At the datagram's very end, too: no byte after it may complete the prefix.
        let m = b"INVITE sip:a@b SIP/2.0\r\nUser-Agent: friendly-scanne";
        assert!(!is_scanner(m, &p));
        let m = b"INVITE sip:a@b SIP/2.0\r\nUser-Agent: friendly-scanner";
        assert!(is_scanner(m, &p));
    }

    /// The scan sees the first `SCAN_MAX` bytes: a User-Agent whose line ends
    /// inside them counts, one beyond them (or still open at their end in a
    /// longer datagram) does not.
    #[test]
    fn user_agent_near_the_window_end() {
        let line = "User-Agent: friendly-scanner\r\n";
        for line_end in SCAN_MAX - 40..SCAN_MAX + 40 {
            let head = "INVITE sip:a@b SIP/2.0\r\n";
            let pad = line_end - head.len() - line.len() - "X: \r\n".len();
            let mut m = format!("{head}X: {}\r\n{line}", "p".repeat(pad)).into_bytes();
            assert_eq!(m.len(), line_end);
            let whole = m.clone();
            m.extend_from_slice(b"Call-ID: a@b\r\n\r\n");
            // The line's LF and the byte after it (no fold) in the window.
            assert_eq!(
                is_scanner(&m, &defaults()),
                line_end < SCAN_MAX,
                "line ends at {line_end}"
            );
            // A datagram that ends right there: the window holds all of it.
            assert_eq!(
                is_scanner(&whole, &defaults()),
                line_end <= SCAN_MAX,
                "datagram ends at {line_end}"
            );
        }
    }

    #[test]
    fn patterns_are_lower_cased_in_order_and_validated() {
        let p = patterns(&["Friendly-Scanner", "SIPcli/1", "süß"]).unwrap();
        assert_eq!(&p[0].bytes[..p[0].len as usize], b"friendly-scanner");
        assert_eq!(&p[1].bytes[..p[1].len as usize], b"sipcli/1");
        // Only ASCII letters fold: other bytes compare as they are.
        assert_eq!(&p[2].bytes[..p[2].len as usize], "süß".as_bytes());
        assert!(p[3..].iter().all(|p| *p == UaPattern::default()));
        assert!(patterns::<&str>(&[]).unwrap().iter().all(|p| p.len == 0));
        let long = "x".repeat(UA_PATTERN_MAX);
        assert_eq!(patterns(&[&long]).unwrap()[0].len, UA_PATTERN_MAX as u32);
        let longer = "x".repeat(UA_PATTERN_MAX + 1);
        assert_eq!(
            patterns(&["a", &longer]),
            Err(PatternError::TooLong {
                index: 1,
                len: UA_PATTERN_MAX + 1
            })
        );
        assert_eq!(patterns(&["a", ""]), Err(PatternError::Empty { index: 1 }));
        assert_eq!(
            patterns(&[" sipcli"]),
            Err(PatternError::Whitespace { index: 0 })
        );
        assert_eq!(
            patterns(&["sip\r\ncli"]),
            Err(PatternError::Control { index: 0 })
        );
        assert_eq!(
            patterns(&["x\u{7f}"]),
            Err(PatternError::Control { index: 0 })
        );
        let many = vec!["a"; MAX_UA_PATTERNS as usize + 1];
        assert_eq!(
            patterns(&many),
            Err(PatternError::TooMany {
                count: MAX_UA_PATTERNS as usize + 1
            })
        );
        assert_eq!(
            PatternError::TooLong { index: 2, len: 30 }.to_string(),
            "user_agents[2] is 30 bytes: at most 28"
        );
        assert!(patterns(&many[1..]).is_ok());
        // Inner spaces are fine: the value keeps its inner whitespace.
        let p = patterns(&["Asterisk PBX 1"]).unwrap();
        assert!(is_scanner(&request("User-Agent: asterisk pbx 18\r\n"), &p));
        assert!(!is_scanner(&request("User-Agent: Asterisk PBX 20\r\n"), &p));
        // The message's non-ASCII bytes compare as they are.
        let p = patterns(&["süß"]).unwrap();
        assert!(is_scanner(&request("User-Agent: süß/1\r\n"), &p));
        assert!(!is_scanner(&request("User-Agent: SÜß/1\r\n"), &p));
    }

    /// The kernel reads `SCANNERS` up to the first empty entry: patterns after
    /// it are never consulted, and neither are entries past the array.
    #[test]
    fn an_empty_entry_ends_the_list() {
        let mut p = patterns(&["asterisk", "sipcli"]).unwrap();
        assert!(scanner_with("sipcli", &p));
        p[0] = UaPattern::default();
        assert!(!scanner_with("sipcli", &p));
        assert!(!scanner_with("asterisk", &p));
        let mut long = vec![UaPattern::default(); MAX_UA_PATTERNS as usize + 1];
        long[..MAX_UA_PATTERNS as usize].fill(patterns(&["x"]).unwrap()[0]);
        long[MAX_UA_PATTERNS as usize] = patterns(&["sipcli"]).unwrap()[0];
        assert!(!scanner_with("sipcli", &long));
    }

    fn scanner_with(ua: &str, p: &[UaPattern]) -> bool {
        is_scanner(&request(&format!("User-Agent: {ua}\r\n")), p)
    }

    /// `matches` reads nothing outside the value: what lies after it in the
    /// buffer (the kernel's buffer holds earlier datagrams there) is no part of
    /// the prefix.
    #[test]
    fn matches_reads_only_the_value() {
        let mut buf = ScanBuf::zeroed();
        buf.fill(b"xxfriendly-scanner");
        let p = patterns(&["friendly-scanner"]).unwrap()[0];
        assert!(matches(&buf, Span { start: 2, len: 16 }, &p));
        assert!(!matches(&buf, Span { start: 2, len: 15 }, &p));
        assert!(!matches(&buf, Span { start: 1, len: 17 }, &p));
        assert!(!matches(
            &buf,
            Span { start: 2, len: 16 },
            &UaPattern::default()
        ));
        // A corrupt entry longer than the array never matches.
        let bad = UaPattern {
            len: UA_PATTERN_MAX as u32 + 1,
            ..p
        };
        assert!(!matches(&buf, Span { start: 0, len: 100 }, &bad));
    }
}
