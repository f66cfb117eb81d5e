//! Importing Kamailio's dispatcher list file (`ds_list_file`, usually
//! `dispatcher.list`), so that operators can migrate their destination sets.
//!
//! One destination per line: `setid destination [flags [priority [attrs]]]`,
//! fields separated by whitespace, `#` starts a comment, blank lines are
//! ignored. The destination must be a `sip:` URI with a literal IP address
//! (host names are refused: nothing here resolves DNS). Whatever Kamailio
//! would honour but the balancer does not is reported in
//! [`Destination::unsupported`], never dropped silently; whatever would make
//! the balancer send traffic somewhere else than Kamailio would (TCP/TLS/SCTP
//! transports, `maddr`) is an error. One bad line fails the whole file.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Port of a `sip:` URI that names none.
pub const DEFAULT_SIP_PORT: u16 = 5060;

/// Kamailio destination flags (dispatcher module, list file format).
const FLAG_INACTIVE: u32 = 1;
const FLAG_TRYING: u32 = 2;
/// Admin disabled: imported as the backend state `disabled`.
pub const FLAG_DISABLED: u32 = 4;
const FLAG_PROBING: u32 = 8;
const FLAG_NODNSARES: u32 = 16;
const FLAG_NOPING: u32 = 32;
const FLAGS_KNOWN: u32 = 63;

/// One line of the list file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// 1-based line number in the file.
    pub line: usize,
    pub setid: u32,
    pub addr: SocketAddr,
    /// Kamailio's flags, as written (they are not acted upon; see `unsupported`).
    pub flags: u32,
    /// Kamailio's priority (higher value = higher priority), 0 if absent.
    pub priority: i32,
    /// From the `weight=N` attribute, 1 if absent.
    pub weight: u32,
    /// Every attribute of the line, in order, as written.
    pub attrs: Vec<(String, String)>,
    /// Human-readable notes, one per thing of this line that the balancer ignores.
    pub unsupported: Vec<String>,
}

/// Why the file was refused: the line, the offending text and the reason.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: `{text}`: {kind}")]
pub struct DispatcherError {
    pub line: usize,
    pub text: String,
    pub kind: ErrorKind,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ErrorKind {
    #[error("the set id must be an integer from 0 to 4294967295")]
    SetId,
    #[error("a set id must be followed by a destination URI")]
    MissingDestination,
    #[error("not a SIP URI (expected sip:IP[:PORT])")]
    NotSipUri,
    #[error("scheme `{0}:` is not supported, only sip: URIs")]
    Scheme(String),
    #[error("sips: means TLS, only UDP is balanced")]
    Sips,
    #[error("the URI has no host")]
    MissingHost,
    #[error("host names are not supported, use an IP address")]
    HostName,
    #[error("not a valid IPv4 address")]
    BadIpv4,
    #[error("not a valid IPv6 address")]
    BadIpv6,
    #[error("IPv6 addresses must be in brackets: sip:[ADDR]:PORT")]
    UnbracketedIpv6,
    #[error("the port must be an integer from 1 to 65535")]
    Port,
    #[error("transport={0}: only UDP is balanced")]
    Transport(String),
    #[error("maddr sends requests to another address than the URI's host; not supported, put that address in the URI")]
    Maddr,
    #[error("flags must be a decimal or 0x-prefixed hexadecimal integer from 0 to 4294967295")]
    Flags,
    #[error("the priority must be an integer")]
    Priority,
    #[error("weight must be an integer from 0 to 65535")]
    Weight,
    #[error("weight is given more than once")]
    WeightTwice,
    #[error("destination {addr} is already in set {setid} (line {first_line})")]
    Duplicate {
        addr: SocketAddr,
        setid: u32,
        first_line: usize,
    },
    #[error("unexpected text after the attributes (attributes cannot contain whitespace)")]
    TrailingText,
}

/// Parses a whole list file. Either every line is good, or nothing is returned.
pub fn parse(text: &str) -> Result<Vec<Destination>, DispatcherError> {
    let mut out: Vec<Destination> = Vec::new();
    // (setid, addr) -> line where it first appeared
    let mut seen: HashMap<(u32, SocketAddr), usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or_default();
        let Some(d) = parse_line(line, content)? else {
            continue;
        };
        if let Some(&first_line) = seen.get(&(d.setid, d.addr)) {
            let uri = content.split_whitespace().nth(1).unwrap_or_default();
            return Err(err(
                line,
                uri,
                ErrorKind::Duplicate {
                    addr: d.addr,
                    setid: d.setid,
                    first_line,
                },
            ));
        }
        seen.insert((d.setid, d.addr), line);
        out.push(d);
    }
    Ok(out)
}

fn err(line: usize, text: &str, kind: ErrorKind) -> DispatcherError {
    DispatcherError {
        line,
        text: text.to_string(),
        kind,
    }
}

/// One line, comment already removed. `None` for a blank line.
fn parse_line(line: usize, content: &str) -> Result<Option<Destination>, DispatcherError> {
    let mut fields = content.split_whitespace();
    let Some(setid_s) = fields.next() else {
        return Ok(None);
    };
    let setid =
        parse_decimal::<u32>(setid_s).ok_or_else(|| err(line, setid_s, ErrorKind::SetId))?;
    let uri = fields
        .next()
        .ok_or_else(|| err(line, content.trim(), ErrorKind::MissingDestination))?;
    let mut unsupported = Vec::new();
    let addr = parse_uri(uri, &mut unsupported).map_err(|kind| err(line, uri, kind))?;

    let flags = match fields.next() {
        None => 0,
        Some(s) => parse_flags(s).ok_or_else(|| err(line, s, ErrorKind::Flags))?,
    };
    note_flags(flags, &mut unsupported);

    let priority = match fields.next() {
        None => 0,
        Some(s) => parse_decimal::<i32>(s).ok_or_else(|| err(line, s, ErrorKind::Priority))?,
    };

    let mut attrs = Vec::new();
    let mut weight = None;
    if let Some(s) = fields.next() {
        for item in split_attrs(s) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (name, value) = item.split_once('=').unwrap_or((item, ""));
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("weight") {
                if weight.is_some() {
                    return Err(err(line, item, ErrorKind::WeightTwice));
                }
                let w = parse_decimal::<u16>(value)
                    .ok_or_else(|| err(line, item, ErrorKind::Weight))?;
                weight = Some(u32::from(w));
            } else if let Some(note) = attr_note(name, value) {
                unsupported.push(note);
            }
            attrs.push((name.to_string(), value.to_string()));
        }
    }
    if let Some(extra) = fields.next() {
        // `extra` is a slice of `content`: its offset is exact.
        let at = extra.as_ptr() as usize - content.as_ptr() as usize;
        let rest = &content[at..];
        return Err(err(line, rest.trim(), ErrorKind::TrailingText));
    }

    Ok(Some(Destination {
        line,
        setid,
        addr,
        flags,
        priority,
        weight: weight.unwrap_or(1),
        attrs,
        unsupported,
    }))
}

/// A decimal integer, optionally signed (for signed types); nothing else.
fn parse_decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_flags(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u32::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None => parse_decimal::<u32>(s),
    }
}

fn note_flags(flags: u32, notes: &mut Vec<String>) {
    let known: [(u32, &str); 5] = [
        (
            FLAG_INACTIVE,
            "flag 0x1 (inactive) is ignored: the balancer sends this destination traffic from the start",
        ),
        (
            FLAG_TRYING,
            "flag 0x2 (trying) is ignored: health checks are configured in the balancer",
        ),
        (
            FLAG_PROBING,
            "flag 0x8 (probing) is ignored: health checks are configured in the balancer",
        ),
        (
            FLAG_NODNSARES,
            "flag 0x10 (no DNS resolution) is ignored: destinations are IP addresses, nothing is resolved",
        ),
        (
            FLAG_NOPING,
            "flag 0x20 (no ping) is ignored: health checks are configured in the balancer",
        ),
    ];
    for (bit, note) in known {
        if flags & bit != 0 {
            notes.push(note.to_string());
        }
    }
    let unknown = flags & !FLAGS_KNOWN;
    if unknown != 0 {
        notes.push(format!(
            "flags {unknown:#x} are unknown to Kamailio's dispatcher and ignored"
        ));
    }
}

/// Splits `a=1;b="x;y"` on the semicolons outside double quotes.
fn split_attrs(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The note for an attribute other than `weight`; `None` if it is harmless.
fn attr_note(name: &str, value: &str) -> Option<String> {
    let why = match name.to_ascii_lowercase().as_str() {
        // An identifier only; kept in `attrs`.
        "duid" => return None,
        "maxload" => Some("the balancer does not count calls per destination"),
        "rweight" => Some("relative (load-driven) weights are not supported, use weight"),
        "socket" | "sockname" => Some("the balancer forwards from the interface it is attached to"),
        "ping_socket" | "ping_from" | "obproxy" => {
            Some("health checks are configured in the balancer")
        }
        "latency" => Some("there is no latency-based selection"),
        "ocmin" | "ocrate" => Some("there is no overload control"),
        _ => None,
    };
    let mut note = if value.is_empty() {
        format!("attribute {name} is not supported (ignored)")
    } else {
        format!("attribute {name}={value} is not supported (ignored)")
    };
    if let Some(why) = why {
        note.push_str(": ");
        note.push_str(why);
    }
    Some(note)
}

/// `sip:[user@]host[:port][;params][?headers]` with host an IPv4 address or
/// a bracketed IPv6 address.
fn parse_uri(uri: &str, notes: &mut Vec<String>) -> Result<SocketAddr, ErrorKind> {
    let (scheme, rest) = uri.split_once(':').ok_or(ErrorKind::NotSipUri)?;
    if scheme.eq_ignore_ascii_case("sips") {
        return Err(ErrorKind::Sips);
    }
    if !scheme.eq_ignore_ascii_case("sip") {
        let scheme_like = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
        return Err(if !scheme_like {
            ErrorKind::NotSipUri
        } else {
            ErrorKind::Scheme(scheme.to_string())
        });
    }
    let rest = match rest.split_once('?') {
        Some((r, headers)) => {
            notes.push(format!("URI headers ?{headers} are ignored"));
            r
        }
        None => rest,
    };
    let rest = match rest.rsplit_once('@') {
        Some((user, r)) => {
            notes.push(format!(
                "URI user part {user}@ is ignored: the balancer forwards requests unchanged"
            ));
            r
        }
        None => rest,
    };

    // host and the remainder (":port;params" or ";params" or "")
    let (ip, after): (IpAddr, &str) = if let Some(v6) = rest.strip_prefix('[') {
        let (inside, after) = v6.split_once(']').ok_or(ErrorKind::BadIpv6)?;
        let ip: Ipv6Addr = inside.parse().map_err(|_| ErrorKind::BadIpv6)?;
        (IpAddr::V6(ip), after)
    } else {
        let end = rest.find([':', ';']).unwrap_or(rest.len());
        let host = &rest[..end];
        let hostport = rest.split(';').next().unwrap_or_default();
        if hostport.matches(':').count() > 1 {
            return Err(ErrorKind::UnbracketedIpv6);
        }
        if host.is_empty() {
            return Err(ErrorKind::MissingHost);
        }
        let ip: Ipv4Addr = match host.parse() {
            Ok(ip) => ip,
            Err(_) if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
                return Err(ErrorKind::BadIpv4)
            }
            Err(_) => return Err(ErrorKind::HostName),
        };
        (IpAddr::V4(ip), &rest[end..])
    };

    let (port, params) = if let Some(p) = after.strip_prefix(':') {
        let end = p.find(';').unwrap_or(p.len());
        let port = parse_decimal::<u16>(&p[..end])
            .filter(|&port| port != 0)
            .ok_or(ErrorKind::Port)?;
        (port, &p[end..])
    } else if after.is_empty() || after.starts_with(';') {
        (DEFAULT_SIP_PORT, after)
    } else {
        // e.g. "[::1]x"
        return Err(ErrorKind::BadIpv6);
    };

    for param in params.split(';').filter(|p| !p.is_empty()) {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        match name.to_ascii_lowercase().as_str() {
            "transport" if value.eq_ignore_ascii_case("udp") => {}
            "transport" => return Err(ErrorKind::Transport(value.to_string())),
            "maddr" => return Err(ErrorKind::Maddr),
            _ => notes.push(format!("URI parameter ;{param} is ignored")),
        }
    }
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REALISTIC: &str = "\
# Kamailio dispatcher list
# setid destination flags priority attrs

# set 1: media servers
1 sip:10.0.2.11:5060 0 0 duid=ms1;weight=50
1 sip:10.0.2.12:5060 0x8 0 duid=ms2;weight=30   # probed
1 sip:10.0.2.13      8   0 weight=20;maxload=20

# set 2: IPv6 registrars, failover by priority
2 sip:[2001:db8::1]:5070;transport=udp 0 10 weight=1
2 sip:[2001:db8::2] 0X0 5

\t# indented comment
3 sip:10.0.3.1:5080 0x2 0 socket=udp:10.0.0.5:5060;ping_from=sip:lb@example.com;rweight=50
";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn realistic_file() {
        let d = parse(REALISTIC).unwrap();
        assert_eq!(d.len(), 6);

        assert_eq!(d[0].line, 5);
        assert_eq!(d[0].setid, 1);
        assert_eq!(d[0].addr, addr("10.0.2.11:5060"));
        assert_eq!((d[0].flags, d[0].priority, d[0].weight), (0, 0, 50));
        assert_eq!(
            d[0].attrs,
            vec![
                ("duid".to_string(), "ms1".to_string()),
                ("weight".to_string(), "50".to_string())
            ]
        );
        assert!(d[0].unsupported.is_empty(), "{:?}", d[0].unsupported);

        assert_eq!((d[1].line, d[1].flags, d[1].weight), (6, 8, 30));
        assert_eq!(
            d[1].unsupported,
            vec!["flag 0x8 (probing) is ignored: health checks are configured in the balancer"]
        );

        assert_eq!(d[2].addr, addr("10.0.2.13:5060"));
        assert_eq!(d[2].flags, 8);
        assert_eq!(d[2].unsupported.len(), 2);
        assert!(d[2].unsupported[1].starts_with("attribute maxload=20 is not supported (ignored)"));

        assert_eq!(d[3].line, 10);
        assert_eq!(d[3].setid, 2);
        assert_eq!(d[3].addr, addr("[2001:db8::1]:5070"));
        assert_eq!((d[3].priority, d[3].weight), (10, 1));
        assert_eq!(d[4].addr, addr("[2001:db8::2]:5060"));
        assert_eq!((d[4].flags, d[4].priority, d[4].weight), (0, 5, 1));
        assert!(d[4].attrs.is_empty());
        // priorities are kept for the `priority` algorithm, not noted
        assert!(d[3].unsupported.is_empty());

        assert_eq!(d[5].line, 14);
        assert_eq!(d[5].addr, addr("10.0.3.1:5080"));
        assert_eq!(d[5].flags, 2);
        assert_eq!(d[5].attrs.len(), 3);
        assert_eq!(
            d[5].attrs[1],
            ("ping_from".to_string(), "sip:lb@example.com".to_string())
        );
        let notes = d[5].unsupported.join("\n");
        assert!(notes.contains("flag 0x2 (trying)"), "{notes}");
        assert!(notes.contains("attribute socket=udp:10.0.0.5:5060 is not supported (ignored)"));
        assert!(notes.contains("attribute ping_from=sip:lb@example.com is not supported"));
        assert!(notes.contains("attribute rweight=50 is not supported"));
        assert_eq!(d[5].unsupported.len(), 4);
    }

    #[test]
    fn empty_and_comment_only() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("\n  \n# nothing\n   # still nothing\n")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn crlf_and_tabs() {
        let d = parse("1\tsip:10.0.0.1\t0\t0\tweight=7\r\n2 sip:10.0.0.2:5062\r\n").unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].addr, d[0].weight), (addr("10.0.0.1:5060"), 7));
        assert_eq!(d[1].addr, addr("10.0.0.2:5062"));
        assert!(d[1].unsupported.is_empty());
    }

    #[test]
    fn same_priority_is_not_noted() {
        let d = parse("1 sip:10.0.0.1 0 7\n1 sip:10.0.0.2 0 7\n2 sip:10.0.0.3 0 -1\n").unwrap();
        assert!(d.iter().all(|d| d.unsupported.is_empty()));
        assert_eq!(d[2].priority, -1);
    }

    #[test]
    fn same_address_in_two_sets_is_fine() {
        let d = parse("1 sip:10.0.0.1:5060\n2 sip:10.0.0.1:5060\n").unwrap();
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn every_flag_is_noted() {
        let d = parse("1 sip:10.0.0.1 0xff\n").unwrap();
        let notes = &d[0].unsupported;
        // 0x4 (admin disabled) becomes the backend state `disabled`: no note.
        assert_eq!(notes.len(), 6, "{notes:?}");
        assert!(notes[0].starts_with("flag 0x1 (inactive)"));
        assert!(notes[3].starts_with("flag 0x10 (no DNS resolution)"));
        assert!(notes[4].starts_with("flag 0x20 (no ping)"));
        assert_eq!(
            notes[5],
            "flags 0xc0 are unknown to Kamailio's dispatcher and ignored"
        );
        assert_eq!(parse("1 sip:10.0.0.1 12\n").unwrap()[0].flags, 12);
    }

    #[test]
    fn attributes() {
        let d = parse(
            "1 sip:10.0.0.1 0 0 duid=a;my=xyz;flag;;obproxy=sip:10.0.0.9;ocrate=50;desc=\"a;b\"\n",
        )
        .unwrap();
        let names: Vec<&str> = d[0].attrs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["duid", "my", "flag", "obproxy", "ocrate", "desc"]);
        assert_eq!(d[0].attrs[5].1, "\"a;b\"");
        assert_eq!(d[0].weight, 1);
        let notes = &d[0].unsupported;
        assert_eq!(notes.len(), 5, "{notes:?}"); // all but duid
        assert_eq!(notes[0], "attribute my=xyz is not supported (ignored)");
        assert_eq!(notes[1], "attribute flag is not supported (ignored)");
        assert!(notes[2].starts_with("attribute obproxy=sip:10.0.0.9 is not supported"));
        let d = parse("1 sip:10.0.0.1 0 0 weight=0\n2 sip:10.0.0.2 0 0 WEIGHT=65535\n").unwrap();
        assert_eq!((d[0].weight, d[1].weight), (0, 65535));
    }

    #[test]
    fn uri_extras_are_noted() {
        let d = parse("1 sip:gw@10.0.0.1:5060;lr;transport=UDP?X-A=1\n").unwrap();
        assert_eq!(d[0].addr, addr("10.0.0.1:5060"));
        let notes = &d[0].unsupported;
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert_eq!(notes[0], "URI headers ?X-A=1 are ignored");
        assert!(notes[1].starts_with("URI user part gw@ is ignored"));
        assert_eq!(notes[2], "URI parameter ;lr is ignored");
        assert_eq!(
            parse("1 SIP:[::1];transport=udp\n").unwrap()[0].addr,
            addr("[::1]:5060")
        );
    }

    /// Parses `text`, expects an error on `line` that quotes `offending`.
    fn fails(text: &str, line: usize, offending: &str) -> ErrorKind {
        let e = parse(text).expect_err(text);
        let msg = e.to_string();
        assert_eq!(e.line, line, "{msg}");
        assert!(msg.starts_with(&format!("line {line}: ")), "{msg}");
        assert!(msg.contains(&format!("`{offending}`")), "{msg}");
        e.kind
    }

    const GOOD: &str = "# ok\n1 sip:10.0.0.1:5060\n";

    #[test]
    fn host_names_are_refused() {
        let text = format!("{GOOD}1 sip:foo.example.com\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 3: `sip:foo.example.com`: host names are not supported, use an IP address"
        );
        assert_eq!(
            fails("1 sip:gw@pbx:5060\n", 1, "sip:gw@pbx:5060"),
            ErrorKind::HostName
        );
        assert_eq!(fails("1 sip:10.0.0\n", 1, "sip:10.0.0"), ErrorKind::BadIpv4);
        assert_eq!(
            fails("1 sip:10.0.0.256\n", 1, "sip:10.0.0.256"),
            ErrorKind::BadIpv4
        );
    }

    #[test]
    fn bad_setid() {
        let text = format!("{GOOD}x sip:10.0.0.2\n");
        assert_eq!(fails(&text, 3, "x"), ErrorKind::SetId);
        assert_eq!(fails("-1 sip:10.0.0.2\n", 1, "-1"), ErrorKind::SetId);
        assert_eq!(
            fails("4294967296 sip:10.0.0.2\n", 1, "4294967296"),
            ErrorKind::SetId
        );
        assert_eq!(
            fails(&format!("{GOOD}  7   # no uri\n"), 3, "7"),
            ErrorKind::MissingDestination
        );
    }

    #[test]
    fn bad_uri() {
        assert_eq!(
            fails(
                &format!("{GOOD}1 http://10.0.0.2/\n"),
                3,
                "http://10.0.0.2/"
            ),
            ErrorKind::Scheme("http".into())
        );
        assert_eq!(
            fails("1 10.0.0.2:5060\n", 1, "10.0.0.2:5060"),
            ErrorKind::NotSipUri
        );
        assert_eq!(fails("1 10.0.0.2\n", 1, "10.0.0.2"), ErrorKind::NotSipUri);
        assert_eq!(
            fails("1 sips:10.0.0.2\n", 1, "sips:10.0.0.2"),
            ErrorKind::Sips
        );
        assert_eq!(fails("1 sip:\n", 1, "sip:"), ErrorKind::MissingHost);
        assert_eq!(
            fails("1 sip::5060\n", 1, "sip::5060"),
            ErrorKind::MissingHost
        );
        assert_eq!(
            fails("1 sip:gw@;lr\n", 1, "sip:gw@;lr"),
            ErrorKind::MissingHost
        );
        assert_eq!(
            fails("1 sip:2001:db8::1\n", 1, "sip:2001:db8::1"),
            ErrorKind::UnbracketedIpv6
        );
        assert_eq!(
            fails("1 sip:[2001:db8::1\n", 1, "sip:[2001:db8::1"),
            ErrorKind::BadIpv6
        );
        assert_eq!(
            fails("1 sip:[10.0.0.1]\n", 1, "sip:[10.0.0.1]"),
            ErrorKind::BadIpv6
        );
        assert_eq!(fails("1 sip:[::1]x\n", 1, "sip:[::1]x"), ErrorKind::BadIpv6);
        assert_eq!(
            fails(
                "1 sip:10.0.0.2;maddr=10.0.0.3\n",
                1,
                "sip:10.0.0.2;maddr=10.0.0.3"
            ),
            ErrorKind::Maddr
        );
    }

    #[test]
    fn bad_port() {
        for p in ["0", "65536", "abc", "", "+1"] {
            let uri = format!("sip:10.0.0.2:{p}");
            assert_eq!(fails(&format!("{GOOD}1 {uri}\n"), 3, &uri), ErrorKind::Port);
        }
        assert_eq!(
            fails("1 sip:[::1]:99999\n", 1, "sip:[::1]:99999"),
            ErrorKind::Port
        );
    }

    #[test]
    fn non_udp_transports_are_refused() {
        for t in ["tcp", "tls", "sctp", "ws"] {
            let uri = format!("sip:10.0.0.2:5060;transport={t}");
            let kind = fails(&format!("{GOOD}\n1 {uri} 0 0\n"), 4, &uri);
            assert_eq!(kind, ErrorKind::Transport(t.into()));
        }
        let e = parse("1 sip:10.0.0.2;transport=tcp\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1: `sip:10.0.0.2;transport=tcp`: transport=tcp: only UDP is balanced"
        );
    }

    #[test]
    fn bad_flags() {
        for f in ["0xZZ", "0x", "-1", "8a", "0x100000000"] {
            assert_eq!(
                fails(&format!("{GOOD}1 sip:10.0.0.2 {f}\n"), 3, f),
                ErrorKind::Flags
            );
        }
    }

    #[test]
    fn bad_priority() {
        for p in ["high", "1.5", "2147483648", "0x1"] {
            assert_eq!(
                fails(&format!("{GOOD}1 sip:10.0.0.2 0 {p}\n"), 3, p),
                ErrorKind::Priority
            );
        }
    }

    #[test]
    fn bad_weight() {
        for w in [
            "weight=65536",
            "weight=-1",
            "weight=",
            "weight=ten",
            "weight",
        ] {
            let text = format!("{GOOD}1 sip:10.0.0.2 0 0 duid=x;{w}\n");
            assert_eq!(fails(&text, 3, w), ErrorKind::Weight);
        }
        assert_eq!(
            fails("1 sip:10.0.0.2 0 0 weight=1;weight=2\n", 1, "weight=2"),
            ErrorKind::WeightTwice
        );
    }

    #[test]
    fn duplicates_within_a_set() {
        let text = "1 sip:10.0.0.1:5060\n2 sip:10.0.0.1\n1 sip:x@10.0.0.1;transport=udp\n";
        let kind = fails(text, 3, "sip:x@10.0.0.1;transport=udp");
        assert_eq!(
            kind,
            ErrorKind::Duplicate {
                addr: addr("10.0.0.1:5060"),
                setid: 1,
                first_line: 1
            }
        );
        let e = parse("5 sip:[::1]:5060\n5 sip:[0::1]\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 2: `sip:[0::1]`: destination [::1]:5060 is already in set 5 (line 1)"
        );
    }

    #[test]
    fn trailing_text() {
        let text = format!("{GOOD}1 sip:10.0.0.2 0 0 weight=1 description here # c\n");
        assert_eq!(fails(&text, 3, "description here"), ErrorKind::TrailingText);
    }
}
