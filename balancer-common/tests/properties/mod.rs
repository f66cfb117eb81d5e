//! What must hold for the stepped scanners on any datagram, whatever its bytes:
//! the checks `scanner_properties.rs` runs on generated messages and the fuzz
//! targets (`fuzz/fuzz_targets/callid.rs`, `keys.rs`) run on libFuzzer's.
//!
//! For every header scan ([`HeaderScan`]) and every key search ([`KeyScan`]):
//! no panic; a span inside the window (`start + len <= min(len, SCAN_MAX)`);
//! the same answer when the scan buffer holds junk past the window (the
//! kernel's per-CPU buffer keeps the last datagram's bytes there), so nothing
//! past it is read; done within the step count the kernel's `bpf_loop` gets;
//! the answer of a plain (unstepped) reference; and, where it applies, the
//! RFC 3261 oracle's answer (`tests/oracle`).

#[allow(dead_code)]
#[path = "../oracle/mod.rs"]
mod oracle;

use balancer_common::callid::{
    call_id, scan, Header, HeaderScan, ScanBuf, Span, SCAN_BUF, SCAN_MAX, SCAN_WORDS,
};
use balancer_common::hash::{hash_addr, hash_span};
use balancer_common::keys::{is_keepalive, key_span, message_dispatch, Dispatch, KeyScan, KEY_MAX};
use balancer_common::line_scan::{line_scan, Outcome, SliceWords, Words};
use balancer_common::maps::{
    reason, ALG_CALL_ID, ALG_FROM_URI, ALG_REQUEST_URI, ALG_ROUND_ROBIN, ALG_SOURCE, ALG_TO_URI,
};
use balancer_common::sip::is_lws;

/// Longest datagram the checks are meant for: a jumbo frame's payload.
pub const MAX_MESSAGE: usize = 9000;

/// The headers the scanner looks for: its name for them, and the oracle's.
const HEADERS: [(Header, &[u8], &[u8]); 3] = [
    (Header::CALL_ID, b"call-id", b"i"),
    (Header::FROM, b"from", b"f"),
    (Header::TO, b"to", b"t"),
];

/// The payload-dependent algorithms, and one the kernel does not know (it
/// searches for the Call-ID).
const ALGORITHMS: [u32; 5] = [ALG_CALL_ID, ALG_FROM_URI, ALG_TO_URI, ALG_REQUEST_URI, 99];

const SRC: [u8; 16] = [203, 0, 113, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// What the kernel leaves in its buffer past the window: an earlier datagram's
/// bytes. Every header and line end a scan could take for its own.
const JUNK: &[u8] = b"\r\ni: junk\r\nf: <sip:junk>\r\nt: sip:junk\r\n\r\n \t;<>@:";

/// Which oracle comparisons applied: a run that never compares proves little.
#[derive(Default, Debug, Clone, Copy)]
pub struct Applied {
    pub headers: usize,
    pub keys: usize,
}

/// The datagram's window as the kernel fills it, and the same window with junk
/// after it instead of zeros.
struct Window {
    clean: Box<ScanBuf>,
    junk: Box<ScanBuf>,
    len: u32,
    complete: bool,
}

fn window(data: &[u8]) -> Window {
    // Built once: the fuzz targets call this some 10^4 times a second.
    static JUNK_BUF: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let junk_buf = JUNK_BUF.get_or_init(|| JUNK.iter().copied().cycle().take(SCAN_BUF).collect());
    let mut clean = Box::new(ScanBuf::zeroed());
    let (len, complete) = clean.fill(data);
    let mut junk = clean.clone();
    let n = len as usize;
    junk.bytes[n..].copy_from_slice(&junk_buf[..SCAN_BUF - n]);
    Window {
        clean,
        junk,
        len,
        complete,
    }
}

/// Every check on one datagram; what the oracle could be compared on.
pub fn check(data: &[u8]) -> Applied {
    check_line_scan(data);
    Applied {
        headers: check_header_scans(data),
        keys: check_keys(data),
    }
}

/// A datagram read as the kernel reads its packet: the bytes above those
/// asked for are whatever follows (here junk that looks like line starts).
struct JunkAbove<'a>(&'a [u8]);

impl<'a> Words for JunkAbove<'a> {
    type Run = &'a [u8];

    fn run(&mut self, off: u32) -> Option<&'a [u8]> {
        SliceWords(self.0).run(off)
    }

    fn word(&mut self, off: u32, need: u32) -> Option<u64> {
        let w = SliceWords(self.0).word(off, need)?;
        let junk = u64::from_le_bytes(*b"\nCa\ni:\r\n");
        Some(if need >= 8 {
            w
        } else {
            w | (junk << (8 * need))
        })
    }
}

/// A datagram read word by word only, as near the end of a packet.
struct NoRuns<'a>(&'a [u8]);

impl<'a> Words for NoRuns<'a> {
    type Run = &'a [u8];

    fn run(&mut self, _off: u32) -> Option<&'a [u8]> {
        None
    }

    fn word(&mut self, off: u32, need: u32) -> Option<u64> {
        SliceWords(self.0).word(off, need)
    }
}

/// The in-place Call-ID scan (`line_scan`): wherever it answers, it answers
/// what the byte machine does (the same span, or no Call-ID and the same
/// keepalive verdict); it never reads past the window; and where only part of
/// the window can be read in place (a packet whose linear part ends first)
/// it answers the same or defers. Returns whether it answered.
pub fn check_line_scan(data: &[u8]) -> bool {
    let w = window(data);
    if w.len == 0 {
        // The kernel does not search an empty payload.
        return false;
    }
    let slow = scan(&w.clean, w.len, w.complete, Header::CALL_ID);
    let keepalive = is_keepalive(&w.clean, w.len);
    let got = line_scan(&mut SliceWords(data), w.len, w.complete);
    match got {
        Outcome::Found(s) => assert_eq!(Some(s), slow, "in place against the byte machine"),
        Outcome::Absent => assert!(
            slow.is_none() && !keepalive,
            "in place: absent; byte machine: {slow:?}, keepalive {keepalive}"
        ),
        Outcome::Keepalive => assert!(
            slow.is_none() && keepalive,
            "in place: keepalive; byte machine: {slow:?}, keepalive {keepalive}"
        ),
        Outcome::Defer => {}
    }
    let window_only = &data[..w.len as usize];
    assert_eq!(
        line_scan(&mut JunkAbove(window_only), w.len, w.complete),
        got,
        "in place: the bytes past those asked for changed the answer"
    );
    // Word by word takes more steps, and may run out of them.
    let by_word = line_scan(&mut NoRuns(data), w.len, w.complete);
    assert!(
        by_word == got || by_word == Outcome::Defer,
        "in place word by word: {by_word:?}, with runs: {got:?}"
    );
    let n = w.len as usize;
    for reach in [0, n / 3, n / 2, n.saturating_sub(9), n - 1] {
        let part = line_scan(&mut SliceWords(&data[..reach]), w.len, w.complete);
        assert!(
            part == got || part == Outcome::Defer,
            "in place with {reach} of {n} bytes readable: {part:?}, whole: {got:?}"
        );
    }
    got != Outcome::Defer
}

fn assert_in_window(s: Span, len: u32, what: &str) {
    assert!(
        s.start as u64 + s.len as u64 <= len as u64 && len as usize <= SCAN_MAX,
        "{what}: span {s:?} outside the window of {len} bytes"
    );
}

/// A header scan driven like the kernel drives it: one `advance` per step.
/// Returns the steps taken and the answer; panics past the kernel's count.
fn stepped_header(buf: &ScanBuf, len: u32, complete: bool, h: Header) -> (u32, Option<Span>) {
    let mut s = HeaderScan::new(h, len, complete);
    let mut steps = 1;
    while !s.advance(buf) {
        steps += 1;
        assert!(
            steps <= SCAN_WORDS,
            "{h:?}: no answer after {SCAN_WORDS} steps on a window of {len} bytes"
        );
    }
    (steps, s.result())
}

/// Header scans: Call-ID, From and To. Returns how many the oracle checked.
pub fn check_header_scans(data: &[u8]) -> usize {
    let w = window(data);
    let read = (!has_bare_cr(data)).then(|| oracle::read(data));
    let mut applied = 0;
    for (h, long, compact) in HEADERS {
        let (steps, r) = stepped_header(&w.clean, w.len, w.complete, h);
        // Every step consumes at least a word; the last may find the window's end.
        assert!(
            steps <= w.len.div_ceil(8).max(1),
            "{h:?}: {steps} steps for {} bytes",
            w.len
        );
        assert_eq!(r, scan(&w.clean, w.len, w.complete, h), "{h:?}: scan()");
        assert_eq!(
            stepped_header(&w.junk, w.len, w.complete, h).1,
            r,
            "{h:?}: the bytes past the window changed the answer"
        );
        if let Some(s) = r {
            assert_in_window(s, w.len, "header");
            assert!(s.len > 0, "{h:?}: empty value {s:?}");
            let ws = |b: u8| is_lws(b) || b == b'\r' || b == b'\n';
            let (first, last) = (data[s.start as usize], data[(s.start + s.len - 1) as usize]);
            assert!(!ws(first) && !ws(last), "{h:?}: untrimmed value {s:?}");
        }
        if h == Header::CALL_ID {
            let want = r.map(|s| &data[s.start as usize..(s.start + s.len) as usize]);
            assert_eq!(call_id(data), want, "call_id()");
        }
        if let Some(o) = &read {
            header_oracle(o, data, r, long, compact);
            applied += 1;
        }
    }
    applied
}

/// A CR not followed by LF: the oracle reads CR only as part of a line end,
/// the scanner as whitespace too, so the two readings part there.
fn has_bare_cr(data: &[u8]) -> bool {
    data.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && data.get(i + 1) != Some(&b'\n'))
}

/// Where a scan learns that the value ending at `last` is complete: the first
/// line start after it that is no folded continuation.
fn decided_at(data: &[u8], last: usize) -> Option<usize> {
    (last + 2..data.len()).find(|&j| data[j - 1] == b'\n' && !is_lws(data[j]))
}

/// The scan's answer against the oracle's header reading (of a message without
/// a bare CR). In a datagram longer than the window, a value counts when the
/// byte that shows it is complete lies in the window, and no other does (the
/// kernel falls back).
fn header_oracle(o: &oracle::Message, data: &[u8], got: Option<Span>, long: &[u8], compact: &[u8]) {
    let got = got.map(|s| {
        let (a, b) = (s.start as usize, (s.start + s.len) as usize);
        (a, data[a..b].to_vec())
    });
    let mut want = o.header(long, compact);
    if data.len() > SCAN_MAX {
        want =
            want.filter(|(a, v)| decided_at(data, a + v.len() - 1).is_some_and(|j| j < SCAN_MAX));
    }
    assert_eq!(
        got.as_ref().map(|(a, v)| (a, String::from_utf8_lossy(v))),
        want.as_ref().map(|(a, v)| (a, String::from_utf8_lossy(v))),
        "{}: scanner against the oracle",
        String::from_utf8_lossy(long)
    );
}

/// A key search driven like the kernel drives it, with the kernel's step
/// count: the steps it took and its answer.
fn stepped_key(buf: &ScanBuf, len: u32, complete: bool, alg: u32) -> (u32, Option<(Span, u32)>) {
    let mut s = KeyScan::new(alg, len, complete);
    let mut steps = 1;
    while !s.advance(buf) {
        steps += 1;
        assert!(
            steps <= KeyScan::steps(len),
            "algorithm {alg}: no answer within KeyScan::steps({len}) = {}",
            KeyScan::steps(len)
        );
    }
    (steps, s.result())
}

/// Key searches for every algorithm, and `message_dispatch` for all of them.
/// Returns how many the oracle checked.
pub fn check_keys(data: &[u8]) -> usize {
    let w = window(data);
    // The oracle reads datagrams the window holds whole, without a bare CR.
    let read = (data.len() <= SCAN_MAX && !has_bare_cr(data)).then(|| oracle::read(data));
    let mut applied = 0;
    for alg in ALGORITHMS {
        let r = if w.len == 0 {
            None
        } else {
            let (_, r) = stepped_key(&w.clean, w.len, w.complete, alg);
            assert_eq!(
                stepped_key(&w.junk, w.len, w.complete, alg).1,
                r,
                "algorithm {alg}: the bytes past the window changed the answer"
            );
            r
        };
        assert_eq!(
            key_span(&w.clean, w.len, w.complete, alg),
            r,
            "key_span({alg})"
        );
        assert_eq!(
            r,
            reference::key(&w.clean, w.len, w.complete, alg),
            "algorithm {alg}: stepped search against the plain reference"
        );
        if let Some((s, why)) = r {
            assert_in_window(s, w.len, "key");
            let expected = match alg {
                ALG_FROM_URI | ALG_TO_URI => [reason::URI, reason::URI],
                ALG_REQUEST_URI => [reason::URI, reason::CALLID],
                _ => [reason::CALLID, reason::CALLID],
            };
            assert!(expected.contains(&why), "algorithm {alg}: reason {why}");
        }
        let fallback = if data.len() <= 4 && data.iter().all(|&b| b == b'\r' || b == b'\n') {
            reason::FALLBACK_KEEPALIVE
        } else {
            reason::FALLBACK_NO_CALLID
        };
        assert_eq!(
            is_keepalive(&w.clean, w.len),
            fallback == reason::FALLBACK_KEEPALIVE
        );
        let want = match r {
            Some((s, why)) => Dispatch {
                hash: hash_span(&w.clean, s),
                reason: why,
            },
            None => Dispatch {
                hash: hash_addr(&SRC, 2),
                reason: fallback,
            },
        };
        assert_eq!(
            message_dispatch(data, alg, &SRC, 2),
            want,
            "dispatch, {alg}"
        );
        if let Some(o) = &read {
            applied += key_oracle(o, data, r, alg) as usize;
        }
    }
    assert_eq!(
        message_dispatch(data, ALG_SOURCE, &SRC, 2),
        Dispatch {
            hash: hash_addr(&SRC, 2),
            reason: reason::SOURCE
        }
    );
    assert_eq!(
        message_dispatch(data, ALG_ROUND_ROBIN, &SRC, 2).reason,
        reason::ROUND_ROBIN
    );
    applied
}

/// The key against the oracle where the extractors' specification and the
/// oracle's reading of the grammar agree.
fn key_oracle(o: &oracle::Message, data: &[u8], got: Option<(Span, u32)>, alg: u32) -> bool {
    let verdict = match alg {
        ALG_FROM_URI => uri_verdict(o, b"from", b"f"),
        ALG_TO_URI => uri_verdict(o, b"to", b"t"),
        ALG_REQUEST_URI => {
            if has_password(data) {
                return false;
            }
            match oracle::request_user(data) {
                oracle::Verdict::Key(None) => Some(o.call_id()),
                v => verdict_key(v),
            }
        }
        _ => Some(o.call_id()),
    };
    let Some(want) = verdict else {
        return false;
    };
    let got = got.map(|(s, _)| data[s.start as usize..(s.start + s.len) as usize].to_vec());
    assert_eq!(
        got.as_deref().map(String::from_utf8_lossy),
        want.as_deref().map(String::from_utf8_lossy),
        "algorithm {alg}: key against the oracle"
    );
    true
}

fn verdict_key(v: oracle::Verdict) -> Option<Option<Vec<u8>>> {
    match v {
        oracle::Verdict::Key(k) => Some(k),
        oracle::Verdict::Invalid(_) => None,
    }
}

/// The oracle's From/To URI where the extractor is specified to read the value
/// as the grammar does: no quotes (the extractor does not read them), and a
/// `<` only after a display name of tokens, within the key window and with no
/// other `<` before its `>`.
fn uri_verdict(o: &oracle::Message, long: &[u8], compact: &[u8]) -> Option<Option<Vec<u8>>> {
    if let Some((_, v)) = o.header(long, compact) {
        if v.contains(&b'"') {
            return None;
        }
        if let Some(l) = v.iter().position(|&b| b == b'<') {
            let name_ok = v[..l]
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~ \t\r\n".contains(&b));
            let inner = &v[l + 1..];
            let close = inner.iter().position(|&b| b == b'>').unwrap_or(inner.len());
            if !name_ok || l >= KEY_MAX || inner[..close].contains(&b'<') {
                return None;
            }
        }
    }
    verdict_key(o.header_uri(long, compact))
}

/// A Request-URI with a password (`sip:user:password@host`): the oracle's user
/// stops at its `:`, the extractor's at `@` (specified so, see
/// `tests/request_line.rs`).
fn has_password(data: &[u8]) -> bool {
    let line = data
        .iter()
        .skip_while(|&&b| b == b'\r' || b == b'\n')
        .take_while(|&&b| b != b'\r' && b != b'\n')
        .copied()
        .collect::<Vec<u8>>();
    let uri = line.split(|&b| b == b' ').nth(1).unwrap_or(&[]);
    let Some(colon) = uri.iter().position(|&b| b == b':') else {
        return false;
    };
    let rest = &uri[colon + 1..];
    rest.iter()
        .position(|&b| b == b'@')
        .is_some_and(|at| rest[..at].contains(&b':'))
}

/// The key searches written plainly, one whole extractor after the other
/// instead of interleaved steps: the URI and Request-URI extractors as they were
/// before the single-pass rewrite (`keys.rs` unit tests keep the same ones).
mod reference {
    use super::*;

    pub fn key(buf: &ScanBuf, len: u32, complete: bool, alg: u32) -> Option<(Span, u32)> {
        if len == 0 {
            return None;
        }
        let header = |h| scan(buf, len, complete, h);
        match alg {
            ALG_FROM_URI => header(Header::FROM).and_then(|v| uri_of(buf, v)),
            ALG_TO_URI => header(Header::TO).and_then(|v| uri_of(buf, v)),
            ALG_REQUEST_URI => match ruri_user(buf, len) {
                Some(u) => Some(u),
                None => return header(Header::CALL_ID).map(|v| (v, reason::CALLID)),
            },
            _ => return header(Header::CALL_ID).map(|v| (v, reason::CALLID)),
        }
        .map(|u| (u, reason::URI))
    }

    fn uri_of(buf: &ScanBuf, v: Span) -> Option<Span> {
        let n = (v.len as usize).min(KEY_MAX);
        let base = v.start as usize;
        let has_angle = |from: usize, n: usize| (0..n).any(|k| buf.at(from + k) == b'<');
        let mut open = None;
        for k in 0..n {
            let b = buf.at(base + k);
            if b == b'<' {
                open = Some(k + 1);
            } else if b == b'>' {
                if let Some(s) = open {
                    return Some(Span {
                        start: (base + s) as u32,
                        len: (k - s) as u32,
                    });
                }
            } else if open.is_none()
                && (b == b';' || is_lws(b) || b == b'\r' || b == b'\n')
                && k > 0
                && !has_angle(base + k, n - k)
            {
                return Some(Span {
                    start: base as u32,
                    len: k as u32,
                });
            }
        }
        if open.is_none() && n > 0 && n == v.len as usize {
            return Some(Span {
                start: base as u32,
                len: n as u32,
            });
        }
        None
    }

    fn ruri_user(buf: &ScanBuf, len: u32) -> Option<Span> {
        let len = len as usize;
        let mut i = 0;
        while i < len && i < 8 && (buf.at(i) == b'\r' || buf.at(i) == b'\n') {
            i += 1;
        }
        if len >= i + 4 && &buf.bytes[i..i + 4] == b"SIP/" {
            return None;
        }
        let mut state = 0;
        let mut user_start = 0;
        let mut k = i;
        while k < i + KEY_MAX && k < len {
            let b = buf.at(k);
            if b == b'\r' || b == b'\n' {
                return None;
            }
            match state {
                0 if b == b' ' => state = 1,
                1 if b == b':' => {
                    state = 2;
                    user_start = k + 1;
                }
                1 if b == b' ' || b == b'@' => return None,
                2 if b == b'@' => {
                    if k == user_start {
                        return None;
                    }
                    return Some(Span {
                        start: user_start as u32,
                        len: (k - user_start) as u32,
                    });
                }
                2 if b == b' ' || b == b';' || b == b'?' || b == b'>' => return None,
                _ => {}
            }
            k += 1;
        }
        None
    }
}
