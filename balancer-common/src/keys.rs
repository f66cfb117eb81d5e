//! Key extractors for the other hashing algorithms of Kamailio's dispatcher:
//! From URI (1), To URI (2) and Request-URI user (3), and [`message_dispatch`] /
//! [`message_hash`], the whole per-algorithm key choice the kernel makes.
//!
//! Both extractors are small state machines fed [`STEP_BYTES`] bytes per call
//! ([`UriScan::advance`], [`RuriScan::advance`]), like the Call-ID scanner.
//! [`KeyScan`] chains them with the header scan; the kernel drives it from one
//! `bpf_loop` (the verifier checks one step function, not a 256-iteration loop
//! with every position tracked), user space from a plain loop ([`key_span`],
//! [`uri_of`], [`ruri_user`]). Same code, same answers.

use crate::callid::{scan, Header, HeaderScan, ScanBuf, Span};
use crate::hash::{hash_addr, hash_span};
use crate::line_scan::{line_scan, Outcome, SliceWords};
use crate::maps::{reason, ALG_FROM_URI, ALG_REQUEST_URI, ALG_ROUND_ROBIN, ALG_SOURCE, ALG_TO_URI};
use crate::sip::is_lws;

/// Longest start line or header value the extractors look into.
pub const KEY_MAX: usize = 256;
/// Bytes one `advance` step examines. Each is unrolled in the kernel's step
/// function, whose verification grows faster than linearly with it: 8 took the
/// program from ~370k to ~620k verified instructions; 4 costs a few more
/// `bpf_loop` iterations per key instead.
pub const STEP_BYTES: usize = 4;
/// Most steps a [`UriScan`] needs: the `bpf_loop` count.
pub const URI_STEPS: u32 = (KEY_MAX / STEP_BYTES) as u32 + 1;
/// Leading CR/LF bytes [`RuriScan`] skips before the start line.
const LEAD_MAX: u32 = 8;
/// Most steps a [`RuriScan`] needs: the `bpf_loop` count.
pub const RURI_STEPS: u32 = ((KEY_MAX + LEAD_MAX as usize) / STEP_BYTES) as u32 + 2;

const NONE: u32 = u32::MAX;

/// The URI inside a From/To value: between `<` and `>` when present, otherwise up
/// to the first `;` (header parameters) or whitespace. Only the first
/// [`KEY_MAX`] bytes of the value are examined.
///
/// One pass: the first `<...>` pair wins (the last `<` before the first `>` that
/// follows one); without any `<` in the window the value is an addr-spec, cut at
/// the first `;`, SP, HT, CR or LF (a fold: the header scan takes a bare LF
/// for a line end) after its first byte, or taken whole when it fits
/// the window.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug)]
pub struct UriScan {
    base: u32,
    /// Bytes of the value examined: `min(len, KEY_MAX)`.
    n: u32,
    /// The whole value fits the window.
    whole: u32,
    /// Next offset to examine.
    k: u32,
    /// Offset just after the last `<` seen, or `NONE`.
    open: u32,
    /// First stop character (`;`, SP, HT, CR, LF) at an offset > 0, or `NONE`.
    stop: u32,
    /// 0 running, 1 found, 2 nothing.
    done: u32,
    res_start: u32,
    res_len: u32,
    _pad: u32,
}

impl UriScan {
    #[inline(always)]
    pub fn new(v: Span) -> Self {
        let mut s = UriScan {
            base: 0,
            n: 0,
            whole: 0,
            k: 0,
            open: 0,
            stop: 0,
            done: 0,
            res_start: 0,
            res_len: 0,
            _pad: 0,
        };
        s.reset(v);
        s
    }

    /// Re-initialises a scan in place (the kernel's scratch memory). Field by field
    /// so no memset appears.
    #[inline(always)]
    pub fn reset(&mut self, v: Span) {
        let n = if v.len > KEY_MAX as u32 {
            KEY_MAX as u32
        } else {
            v.len
        };
        self.base = v.start;
        self.n = n;
        self.whole = (n == v.len) as u32;
        self.k = 0;
        self.open = NONE;
        self.stop = NONE;
        self.done = 0;
        self.res_start = 0;
        self.res_len = 0;
    }

    /// Examines the next [`STEP_BYTES`] bytes; `true` when the answer is known.
    /// [`URI_STEPS`] calls always suffice.
    #[inline(always)]
    pub fn advance(&mut self, buf: &ScanBuf) -> bool {
        if self.done != 0 {
            return true;
        }
        let mut j = 0;
        while j < STEP_BYTES {
            let k = self.k;
            if k >= self.n || k >= KEY_MAX as u32 {
                self.finish();
                return true;
            }
            let b = buf.at(self.base as usize + k as usize);
            if b == b'<' {
                self.open = k + 1;
            } else if b == b'>' {
                if self.open != NONE && self.open <= k {
                    self.res_start = self.base + self.open;
                    self.res_len = k - self.open;
                    self.done = 1;
                    return true;
                }
            } else if (b == b';' || is_lws(b) || b == b'\r' || b == b'\n')
                && k > 0
                && self.stop == NONE
            {
                self.stop = k;
            }
            self.k = k + 1;
            j += 1;
        }
        false
    }

    #[inline(always)]
    fn finish(&mut self) {
        self.done = 2;
        if self.open != NONE {
            // A '<' without its '>' in the window.
            return;
        }
        // A name-addr always has '<', so without one this is an addr-spec.
        if self.stop != NONE {
            self.res_start = self.base;
            self.res_len = self.stop;
            self.done = 1;
        } else if self.n > 0 && self.whole != 0 {
            self.res_start = self.base;
            self.res_len = self.n;
            self.done = 1;
        }
    }

    /// The URI, once `advance` returned `true`.
    #[inline(always)]
    pub fn result(&self) -> Option<Span> {
        if self.done == 1 {
            Some(Span {
                start: self.res_start,
                len: self.res_len,
            })
        } else {
            None
        }
    }
}

/// The URI inside a From/To value (user-space driver of [`UriScan`]).
pub fn uri_of(buf: &ScanBuf, v: Span) -> Option<Span> {
    let mut s = UriScan::new(v);
    let mut i = 0;
    while i < URI_STEPS {
        if s.advance(buf) {
            break;
        }
        i += 1;
    }
    s.result()
}

// RuriScan states.
const R_LEAD: u32 = 0; // leading CR/LF
const R_METHOD: u32 = 1;
const R_SCHEME: u32 = 2;
const R_USER: u32 = 3;

/// The user part of the Request-URI (`sip:USER@host`, `tel:USER@host`), for
/// requests only: up to [`LEAD_MAX`] leading CR/LF are skipped, a start line
/// beginning with `SIP/` (a response) has none, and the method, one space, the
/// scheme up to `:` and the user up to `@` must all lie in the first
/// [`KEY_MAX`] bytes of the start line. An empty user, or a space, `;`, `?` or `>`
/// before the `@`, means none.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug)]
pub struct RuriScan {
    len: u32,
    /// Where the start line begins (after leading CR/LF).
    lead: u32,
    /// End of the examined window: `min(len, lead + KEY_MAX)`.
    end: u32,
    k: u32,
    state: u32,
    user_start: u32,
    /// 0 running, 1 found, 2 nothing.
    done: u32,
    res_len: u32,
}

impl RuriScan {
    #[inline(always)]
    pub fn new(len: u32) -> Self {
        let mut s = RuriScan {
            len: 0,
            lead: 0,
            end: 0,
            k: 0,
            state: 0,
            user_start: 0,
            done: 0,
            res_len: 0,
        };
        s.reset(len);
        s
    }

    #[inline(always)]
    pub fn reset(&mut self, len: u32) {
        self.len = len;
        self.lead = 0;
        self.end = len;
        self.k = 0;
        self.state = R_LEAD;
        self.user_start = 0;
        self.done = 0;
        self.res_len = 0;
    }

    /// Examines the next [`STEP_BYTES`] bytes; `true` when the answer is known.
    /// [`RURI_STEPS`] calls always suffice.
    #[inline(always)]
    pub fn advance(&mut self, buf: &ScanBuf) -> bool {
        if self.done != 0 {
            return true;
        }
        let mut j = 0;
        while j < STEP_BYTES {
            let k = self.k;
            if k >= self.end || k >= self.len {
                self.done = 2;
                return true;
            }
            let b = buf.at(k as usize);
            if self.state == R_LEAD {
                if k < LEAD_MAX && (b == b'\r' || b == b'\n') {
                    self.k = k + 1;
                    j += 1;
                    continue;
                }
                // The start line begins here.
                self.lead = k;
                let e = k + KEY_MAX as u32;
                if e < self.len {
                    self.end = e;
                }
                // Responses start with the SIP version, requests with a method.
                if self.len >= k + 4
                    && b == b'S'
                    && buf.at(k as usize + 1) == b'I'
                    && buf.at(k as usize + 2) == b'P'
                    && buf.at(k as usize + 3) == b'/'
                {
                    self.done = 2;
                    return true;
                }
                self.state = R_METHOD;
            }
            if b == b'\r' || b == b'\n' {
                self.done = 2;
                return true;
            }
            if self.state == R_METHOD {
                if b == b' ' {
                    self.state = R_SCHEME;
                }
            } else if self.state == R_SCHEME {
                if b == b':' {
                    self.state = R_USER;
                    self.user_start = k + 1;
                } else if b == b' ' || b == b'@' {
                    self.done = 2;
                    return true;
                }
            } else if b == b'@' {
                if k == self.user_start {
                    self.done = 2;
                } else {
                    self.res_len = k - self.user_start;
                    self.done = 1;
                }
                return true;
            } else if b == b' ' || b == b';' || b == b'?' || b == b'>' {
                self.done = 2;
                return true;
            }
            self.k = k + 1;
            j += 1;
        }
        false
    }

    /// The user part, once `advance` returned `true`.
    #[inline(always)]
    pub fn result(&self) -> Option<Span> {
        if self.done == 1 {
            Some(Span {
                start: self.user_start,
                len: self.res_len,
            })
        } else {
            None
        }
    }
}

/// The user part of the Request-URI of the first `len` bytes of `buf`
/// (user-space driver of [`RuriScan`]).
pub fn ruri_user(buf: &ScanBuf, len: u32) -> Option<Span> {
    let mut s = RuriScan::new(len);
    let mut i = 0;
    while i < RURI_STEPS {
        if s.advance(buf) {
            break;
        }
        i += 1;
    }
    s.result()
}

// KeyScan phases.
const P_INIT: u32 = 4;
const P_RURI: u32 = 0;
const P_HEADER: u32 = 1;
const P_URI: u32 = 2;
const P_DONE: u32 = 3;

/// The whole key search of a payload-dependent algorithm as one state machine:
/// the Request-URI user (`ALG_REQUEST_URI`), then the header scan (From, To or
/// Call-ID, see [`key_header`]), then the URI inside a From/To value. The kernel
/// runs it from a single `bpf_loop` call (one step function for the verifier to
/// check, one call site), user space from a plain loop ([`key_span`]).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug)]
pub struct KeyScan {
    pub scan: HeaderScan,
    pub uri: UriScan,
    pub ruri: RuriScan,
    phase: u32,
    algorithm: u32,
    len: u32,
    complete: u32,
    found: u32,
    reason: u32,
    res_start: u32,
    res_len: u32,
}

impl KeyScan {
    /// `bpf_loop` count for a window of `len` bytes: enough for every phase.
    #[inline(always)]
    pub const fn steps(len: u32) -> u32 {
        1 + RURI_STEPS + len.div_ceil(8) + URI_STEPS + 1
    }

    pub fn new(algorithm: u32, len: u32, complete: bool) -> Self {
        let mut s = KeyScan {
            scan: HeaderScan::new(Header::CALL_ID, 0, false),
            uri: UriScan::new(Span { start: 0, len: 0 }),
            ruri: RuriScan::new(0),
            phase: 0,
            algorithm: 0,
            len: 0,
            complete: 0,
            found: 0,
            reason: 0,
            res_start: 0,
            res_len: 0,
        };
        s.reset(algorithm, len, complete);
        s
    }

    /// Re-initialises the search in place (the kernel's scratch memory). Stores
    /// only: the choice by algorithm is the first step's work, so the caller's
    /// verifier state does not split by algorithm before `bpf_loop` (the callback
    /// would be verified once per split).
    #[inline(always)]
    pub fn reset(&mut self, algorithm: u32, len: u32, complete: bool) {
        self.algorithm = algorithm;
        self.len = len;
        self.complete = complete as u32;
        self.found = 0;
        self.phase = P_INIT;
    }

    #[inline(always)]
    fn start(&mut self) {
        if self.algorithm == ALG_REQUEST_URI {
            self.ruri.reset(self.len);
            self.phase = P_RURI;
        } else {
            self.start_header();
        }
    }

    #[inline(always)]
    fn start_header(&mut self) {
        let header = key_header(self.algorithm);
        self.scan.reset(header, self.len, self.complete != 0);
        self.phase = P_HEADER;
    }

    #[inline(always)]
    fn found(&mut self, span: Span, reason: u32) {
        self.res_start = span.start;
        self.res_len = span.len;
        self.reason = reason;
        self.found = 1;
        self.phase = P_DONE;
    }

    /// One step of the current phase; `true` when the search is over.
    /// [`KeyScan::steps`] calls always suffice.
    #[inline(always)]
    pub fn advance(&mut self, buf: &ScanBuf) -> bool {
        if self.phase == P_INIT {
            self.start();
            return false;
        }
        if self.phase == P_RURI {
            if self.ruri.advance(buf) {
                match self.ruri.result() {
                    Some(user) => {
                        self.found(user, reason::URI);
                        return true;
                    }
                    // Responses and user-less Request-URIs: the Call-ID.
                    None => self.start_header(),
                }
            }
            false
        } else if self.phase == P_HEADER {
            if !self.scan.advance(buf) {
                return false;
            }
            match self.scan.result() {
                None => {
                    self.phase = P_DONE;
                    true
                }
                Some(v) => {
                    if self.algorithm == ALG_FROM_URI || self.algorithm == ALG_TO_URI {
                        self.uri.reset(v);
                        self.phase = P_URI;
                        false
                    } else {
                        self.found(v, reason::CALLID);
                        true
                    }
                }
            }
        } else if self.phase == P_URI {
            if !self.uri.advance(buf) {
                return false;
            }
            match self.uri.result() {
                Some(u) => self.found(u, reason::URI),
                None => self.phase = P_DONE,
            }
            true
        } else {
            true
        }
    }

    /// The key and its reason counter, once `advance` returned `true`.
    #[inline(always)]
    pub fn result(&self) -> Option<(Span, u32)> {
        if self.found != 0 {
            Some((
                Span {
                    start: self.res_start,
                    len: self.res_len,
                },
                self.reason,
            ))
        } else {
            None
        }
    }
}

/// Empty or CR/LF-only datagrams (RFC 5626 keepalives) among the first `n` bytes.
#[inline(always)]
pub fn is_keepalive(buf: &ScanBuf, n: u32) -> bool {
    if n > 4 {
        return false;
    }
    let mut i = 0;
    while i < 4 {
        let b = buf.at(i);
        if (i as u32) < n && b != b'\r' && b != b'\n' {
            return false;
        }
        i += 1;
    }
    true
}

/// Where a service's key comes from, by its algorithm: the one decision the
/// kernel (`key_of`) and [`message_dispatch`] both take first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `ALG_SOURCE`: the source address; the payload is not looked at.
    Source,
    /// `ALG_ROUND_ROBIN`: a per-CPU, per-service counter.
    RoundRobin,
    /// Every other value: searched for in the message ([`KeyScan`]), the source
    /// address when it has none.
    Message,
}

impl KeySource {
    #[inline(always)]
    pub const fn of(algorithm: u32) -> KeySource {
        match algorithm {
            ALG_SOURCE => KeySource::Source,
            ALG_ROUND_ROBIN => KeySource::RoundRobin,
            _ => KeySource::Message,
        }
    }
}

/// What the kernel hashes for one datagram, and the `reason` counter it bumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dispatch {
    pub hash: u32,
    pub reason: u32,
}

/// The key hash the XDP program computes for a datagram to a service with
/// `algorithm` (an `ALG_*` value) from `src_addr` (16 bytes, IPv4 in the first
/// four) of `family`. Select the backend with `maglev::index(hash, table_size)`.
///
/// - `ALG_CALL_ID` (and any unknown value): the Call-ID; none: the source address.
/// - `ALG_FROM_URI` / `ALG_TO_URI`: the URI of the first From / To header
///   ([`uri_of`]); no header or no URI in it: the source address.
/// - `ALG_REQUEST_URI`: the Request-URI user ([`ruri_user`]). Responses and
///   requests without a user part fall back to the Call-ID, and without one to the
///   source address: the Call-ID keeps a dialog's user-less requests and its
///   responses together, which the source address would not (it puts everything a
///   proxy sends on one backend).
/// - `ALG_SOURCE`: the source address, the payload is not looked at.
/// - `ALG_ROUND_ROBIN`: not applicable. The kernel hashes a per-CPU, per-service
///   counter (post-incremented per datagram), which no message determines; this
///   returns hash 0 (the first datagram on a fresh CPU) with reason `ROUND_ROBIN`.
///
/// Source-address fallbacks are counted as `FALLBACK_KEEPALIVE` for empty or
/// CR/LF-only datagrams and `FALLBACK_NO_CALLID` otherwise, whatever the algorithm.
pub fn message_dispatch(
    payload: &[u8],
    algorithm: u32,
    src_addr: &[u8; 16],
    family: u8,
) -> Dispatch {
    let by_source = |reason| Dispatch {
        hash: hash_addr(src_addr, family),
        reason,
    };
    match KeySource::of(algorithm) {
        KeySource::Source => return by_source(reason::SOURCE),
        KeySource::RoundRobin => {
            return Dispatch {
                hash: 0,
                reason: reason::ROUND_ROBIN,
            }
        }
        KeySource::Message => {}
    }
    let mut buf = ScanBuf::zeroed();
    let (len, complete) = buf.fill(payload);
    // The kernel's order: in place first, the byte machine when that defers.
    if len > 0 && scans_in_place(algorithm) {
        match line_scan(&mut SliceWords(payload), len, complete) {
            Outcome::Found(span) => {
                return Dispatch {
                    hash: hash_span(&buf, span),
                    reason: reason::CALLID,
                }
            }
            Outcome::Absent => return by_source(reason::FALLBACK_NO_CALLID),
            Outcome::Keepalive => return by_source(reason::FALLBACK_KEEPALIVE),
            Outcome::Defer => {}
        }
    }
    if let Some((span, reason)) = key_span(&buf, len, complete, algorithm) {
        return Dispatch {
            hash: hash_span(&buf, span),
            reason,
        };
    }
    by_source(if is_keepalive(&buf, len) {
        reason::FALLBACK_KEEPALIVE
    } else {
        reason::FALLBACK_NO_CALLID
    })
}

/// [`message_dispatch`]'s hash.
pub fn message_hash(payload: &[u8], algorithm: u32, src_addr: &[u8; 16], family: u8) -> u32 {
    message_dispatch(payload, algorithm, src_addr, family).hash
}

/// The key span of a payload-dependent algorithm and its reason counter
/// (user-space driver of [`KeyScan`]; the kernel runs the same steps).
pub fn key_span(buf: &ScanBuf, len: u32, complete: bool, algorithm: u32) -> Option<(Span, u32)> {
    if len == 0 {
        return None;
    }
    let mut s = KeyScan::new(algorithm, len, complete);
    let mut i = 0;
    while i < KeyScan::steps(len) {
        if s.advance(buf) {
            break;
        }
        i += 1;
    }
    s.result()
}

/// Whether the kernel looks for an algorithm's key in place first
/// ([`crate::line_scan`]): the Call-ID's (`ALG_CALL_ID` and unknown values).
/// The others take the byte machine's path alone.
#[inline(always)]
pub const fn scans_in_place(algorithm: u32) -> bool {
    matches!(KeySource::of(algorithm), KeySource::Message)
        && !matches!(algorithm, ALG_FROM_URI | ALG_TO_URI | ALG_REQUEST_URI)
}

/// The header an algorithm scans for: From, To, or the Call-ID (`ALG_CALL_ID`,
/// the Request-URI fallback and unknown values).
#[inline(always)]
pub fn key_header(algorithm: u32) -> Header {
    match algorithm {
        ALG_FROM_URI => Header::FROM,
        ALG_TO_URI => Header::TO,
        _ => Header::CALL_ID,
    }
}

/// User-space helpers on whole datagrams.
pub fn from_uri(payload: &[u8]) -> Option<&[u8]> {
    header_uri(payload, Header::FROM)
}

pub fn to_uri(payload: &[u8]) -> Option<&[u8]> {
    header_uri(payload, Header::TO)
}

fn header_uri(payload: &[u8], header: Header) -> Option<&[u8]> {
    let mut buf = ScanBuf::zeroed();
    let (len, complete) = buf.fill(payload);
    let v = scan(&buf, len, complete, header)?;
    let u = uri_of(&buf, v)?;
    Some(&payload[u.start as usize..(u.start + u.len) as usize])
}

pub fn request_user(payload: &[u8]) -> Option<&[u8]> {
    let mut buf = ScanBuf::zeroed();
    let (len, _) = buf.fill(payload);
    let u = ruri_user(&buf, len)?;
    Some(&payload[u.start as usize..(u.start + u.len) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hash_bytes;
    use crate::maps::ALG_CALL_ID;

    #[test]
    fn key_source_by_algorithm() {
        use crate::maps::{ALG_FROM_URI, ALG_REQUEST_URI, ALG_TO_URI};
        assert_eq!(KeySource::of(ALG_SOURCE), KeySource::Source);
        assert_eq!(KeySource::of(ALG_ROUND_ROBIN), KeySource::RoundRobin);
        for alg in [ALG_CALL_ID, ALG_FROM_URI, ALG_TO_URI, ALG_REQUEST_URI, 99] {
            assert_eq!(KeySource::of(alg), KeySource::Message, "algorithm {alg}");
        }
    }

    const INVITE: &[u8] = b"INVITE sip:bob@biloxi.com SIP/2.0\r\n\
From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n\
t: sip:bob@biloxi.com;tag=x\r\n\
Call-ID: a84b4c76e66710\r\n\r\n";

    #[test]
    fn from_to_ruri() {
        assert_eq!(from_uri(INVITE), Some(&b"sip:alice@atlanta.com"[..]));
        assert_eq!(to_uri(INVITE), Some(&b"sip:bob@biloxi.com"[..]));
        assert_eq!(request_user(INVITE), Some(&b"bob"[..]));
    }

    #[test]
    fn no_user_or_response() {
        assert_eq!(request_user(b"OPTIONS sip:biloxi.com SIP/2.0\r\n"), None);
        assert_eq!(request_user(b"SIP/2.0 200 OK\r\nTo: sip:a@b\r\n"), None);
        assert_eq!(request_user(b"INVITE sip:@h SIP/2.0\r\n"), None);
        assert_eq!(
            request_user(b"INVITE tel:+15551234@h;user=phone SIP/2.0\r\n"),
            Some(&b"+15551234"[..])
        );
        assert_eq!(
            request_user(b"\r\n\r\nINVITE sip:u@h SIP/2.0\r\n"),
            Some(&b"u"[..])
        );
        assert_eq!(
            request_user(b"\r\n\r\n\r\n\r\n\r\nINVITE sip:u@h SIP/2.0\r\n"),
            None
        );
    }

    #[test]
    fn quoted_display_name_and_bare_uri() {
        let m = b"INVITE sip:x@y SIP/2.0\r\nFrom: \"A <b>\" <sip:q@r>\r\nTo: <sip:t@u>\r\n";
        // A display name with '<' inside quotes is rare; quotes are not read, the
        // first '<...>' pair is the URI: here the display name's "b".
        assert_eq!(from_uri(m), Some(&b"b"[..]));
        assert_eq!(to_uri(m), Some(&b"sip:t@u"[..]));
        let m = b"INVITE sip:x@y SIP/2.0\r\nFrom: sip:q@r\r\n";
        assert_eq!(from_uri(m), Some(&b"sip:q@r"[..]));
    }

    #[test]
    fn dispatch_per_algorithm() {
        let src = [10, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let by_src = hash_addr(&src, 2);
        let d = |m: &[u8], alg| message_dispatch(m, alg, &src, 2);
        let k = |key: &[u8], reason| Dispatch {
            hash: hash_bytes(key),
            reason,
        };
        assert_eq!(d(INVITE, ALG_CALL_ID), k(b"a84b4c76e66710", reason::CALLID));
        assert_eq!(d(INVITE, 77), k(b"a84b4c76e66710", reason::CALLID));
        assert_eq!(
            d(INVITE, ALG_FROM_URI),
            k(b"sip:alice@atlanta.com", reason::URI)
        );
        assert_eq!(d(INVITE, ALG_TO_URI), k(b"sip:bob@biloxi.com", reason::URI));
        assert_eq!(d(INVITE, ALG_REQUEST_URI), k(b"bob", reason::URI));
        assert_eq!(
            d(INVITE, ALG_SOURCE),
            Dispatch {
                hash: by_src,
                reason: reason::SOURCE
            }
        );
        assert_eq!(d(INVITE, ALG_ROUND_ROBIN).reason, reason::ROUND_ROBIN);
        // A response has no Request-URI: its Call-ID counts.
        let ok = b"SIP/2.0 200 OK\r\ni: cid-1\r\nf: <sip:a@b>\r\n\r\n";
        assert_eq!(d(ok, ALG_REQUEST_URI), k(b"cid-1", reason::CALLID));
        assert_eq!(d(ok, ALG_FROM_URI), k(b"sip:a@b", reason::URI));
        let no_cid = b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n";
        for alg in [ALG_CALL_ID, ALG_FROM_URI, ALG_TO_URI, ALG_REQUEST_URI] {
            let fb = Dispatch {
                hash: by_src,
                reason: reason::FALLBACK_NO_CALLID,
            };
            assert_eq!(d(no_cid, alg), fb);
            let ka = Dispatch {
                hash: by_src,
                reason: reason::FALLBACK_KEEPALIVE,
            };
            assert_eq!(d(b"\r\n\r\n", alg), ka);
            assert_eq!(d(b"", alg), ka);
        }
        // A From value with '<' but no '>' has no URI.
        let m = b"INVITE sip:u@h SIP/2.0\r\nFrom: <sip:a@b\r\n\r\n";
        assert_eq!(d(m, ALG_FROM_URI).reason, reason::FALLBACK_NO_CALLID);
    }

    // The extractors as they were before the single-pass rewrite: the reference.
    fn ref_uri_of(buf: &ScanBuf, v: Span) -> Option<Span> {
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

    fn ref_ruri_user(buf: &ScanBuf, len: u32) -> Option<Span> {
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

    fn sipish() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        proptest::collection::vec(
            prop_oneof![
                Just(b'<'),
                Just(b'>'),
                Just(b';'),
                Just(b' '),
                Just(b'\t'),
                Just(b'\r'),
                Just(b'\n'),
                Just(b':'),
                Just(b'@'),
                Just(b'?'),
                Just(b'S'),
                Just(b'I'),
                Just(b'P'),
                Just(b'/'),
                Just(b'a'),
                any::<u8>(),
            ],
            0..600,
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        #[test]
        fn single_pass_uri_equals_reference(m in sipish(), start in 0u32..40, len in 0u32..600) {
            let mut buf = ScanBuf::zeroed();
            let (n, _) = buf.fill(&m);
            let start = start.min(n);
            let v = Span { start, len: len.min(n - start) };
            proptest::prop_assert_eq!(uri_of(&buf, v), ref_uri_of(&buf, v));
        }

        #[test]
        fn stepped_ruri_equals_reference(m in sipish(), prefix in 0usize..12) {
            let mut p = b"\r\n".repeat(prefix / 2);
            if prefix % 2 == 1 {
                p.extend_from_slice(b"INVITE sip:");
            }
            p.extend_from_slice(&m);
            let mut buf = ScanBuf::zeroed();
            let (n, _) = buf.fill(&p);
            proptest::prop_assert_eq!(ruri_user(&buf, n), ref_ruri_user(&buf, n));
        }
    }

    #[test]
    fn uri_edge_cases_equal_reference() {
        let vals: [&[u8]; 11] = [
            b"sip:a@b;tag=1",
            b"sip:a@b\n ;tag=1",
            b";sip:a@b",
            b"sip:a@b ;x <sip:c@d>",
            b"A <sip:a@b> <sip:c@d>",
            b"a>b<c>",
            b"<<x>",
            b"<x",
            b"x>",
            b"",
            b"sip:a@b",
        ];
        for v in vals {
            let mut buf = ScanBuf::zeroed();
            buf.fill(v);
            for len in 0..=v.len() as u32 {
                let s = Span { start: 0, len };
                assert_eq!(uri_of(&buf, s), ref_uri_of(&buf, s), "{v:?} {len}");
            }
        }
        // A fold with a bare LF (a line end to the header scan) ends an
        // addr-spec as a CRLF fold does.
        for v in [&b"sip:a@b\n ;tag=1"[..], b"sip:a@b\r\n ;tag=1"] {
            let mut buf = ScanBuf::zeroed();
            let (n, _) = buf.fill(v);
            let s = Span { start: 0, len: n };
            assert_eq!(uri_of(&buf, s), Some(Span { start: 0, len: 7 }), "{v:?}");
        }
        // Longer than the window: a bare URI must end inside it.
        let mut long = b"sip:".to_vec();
        long.resize(300, b'a');
        let mut buf = ScanBuf::zeroed();
        buf.fill(&long);
        let s = Span { start: 0, len: 300 };
        assert_eq!(uri_of(&buf, s), None);
        assert_eq!(ref_uri_of(&buf, s), None);
        long[200] = b';';
        buf.fill(&long);
        assert_eq!(uri_of(&buf, s), Some(Span { start: 0, len: 200 }));
    }
}
