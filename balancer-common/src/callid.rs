//! The Call-ID scanner (and, with another header name, the From/To scanner).
//!
//! Rules, identical in the kernel and in user space:
//! - leading CR/LF before the start line are ignored (RFC 3261 7.5), the start line
//!   itself is never a header;
//! - header names compare case-insensitively; the compact form (`i` for Call-ID)
//!   counts;
//! - any SP/HT, and line folding (CRLF followed by SP/HT), is allowed on both sides
//!   of the colon; bare LF line ends are accepted like CRLF;
//! - the value runs to the end of the header (folded continuation lines included)
//!   and is trimmed of leading and trailing whitespace; an empty value is ignored
//!   and the search goes on;
//! - only the headers of the first message count: the first empty line ends the
//!   search, so a second message in the same datagram is never looked at;
//! - the first matching header wins;
//! - only the first [`SCAN_MAX`] bytes of the datagram are examined. A value that
//!   is still open at the end of a truncated window does not count (its end is
//!   unknown), so the caller falls back to the source-address hash.
//!
//! The scanner is a byte state machine driven one 8-byte word at a time
//! ([`HeaderScan::step_word`]). The kernel runs the word steps from `bpf_loop`, so
//! the verifier checks one step instead of thousands of unrolled iterations;
//! user space runs the same steps in a plain loop ([`scan`]).

use crate::sip::{is_lws, lower};

/// Bytes of UDP payload the scanner examines. A power of two: indices are masked.
pub const SCAN_MAX: usize = 4096;
const SCAN_MASK: usize = SCAN_MAX - 1;
/// Slack after the window so an 8-byte word load at any masked index stays inside.
pub const SCAN_BUF: usize = SCAN_MAX + 16;
/// Most 8-byte words one scan can take: the `bpf_loop` count.
pub const SCAN_WORDS: u32 = (SCAN_MAX / 8) as u32;

/// The datagram's first bytes, zero-padded. In the kernel this lives in a per-CPU
/// array; in user space on the heap or stack.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ScanBuf {
    pub bytes: [u8; SCAN_BUF],
}

impl ScanBuf {
    pub const fn zeroed() -> Self {
        Self {
            bytes: [0; SCAN_BUF],
        }
    }

    /// Copies the start of `payload` in; returns the window length and whether the
    /// whole datagram fitted.
    pub fn fill(&mut self, payload: &[u8]) -> (u32, bool) {
        let n = payload.len().min(SCAN_MAX);
        self.bytes[..n].copy_from_slice(&payload[..n]);
        self.bytes[n..].fill(0);
        (n as u32, n == payload.len())
    }

    #[inline(always)]
    pub fn at(&self, i: usize) -> u8 {
        self.bytes[i & SCAN_MASK]
    }

    #[inline(always)]
    fn word(&self, i: usize) -> u64 {
        let i = i & SCAN_MASK;
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.bytes[i..i + 8]);
        u64::from_le_bytes(w)
    }
}

/// Where a value lies in the [`ScanBuf`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub len: u32,
}

/// The header a scan looks for: lower-case long name and compact letter (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    name: [u8; 8],
    len: u32,
    compact: u8,
}

impl Header {
    pub const CALL_ID: Header = Header::new(b"call-id", b'i');
    pub const FROM: Header = Header::new(b"from", b'f');
    pub const TO: Header = Header::new(b"to", b't');

    const fn new(long: &[u8], compact: u8) -> Header {
        let mut name = [0u8; 8];
        let mut i = 0;
        while i < long.len() {
            name[i] = long[i];
            i += 1;
        }
        Header {
            name,
            len: long.len() as u32,
            compact,
        }
    }
}

// States. Plain integers: the state lives in BPF map memory between steps.
const S_LEAD: u32 = 0; // leading CR/LF before the start line
const S_SKIP: u32 = 1; // inside a line that does not interest us
const S_LINE: u32 = 2; // at the first byte of a line
const S_EMPTY_CR: u32 = 3; // a line that began with CR
const S_NAME: u32 = 4; // matching the long header name
const S_COMPACT: u32 = 5; // saw the compact letter at line start
const S_COLON: u32 = 6; // after the name, before ':'
const S_COLON_NL: u32 = 7; // newline before ':' (folding?)
const S_PREVAL: u32 = 8; // after ':', before the value
const S_PREVAL_NL: u32 = 9; // newline before any value (folding?)
const S_VALUE: u32 = 10; // inside the value
const S_VALUE_NL: u32 = 11; // newline inside the value (folding?)
const S_FOUND: u32 = 12; // value complete
const S_DONE: u32 = 13; // end of headers, nothing found

/// Scanner state. `#[repr(C)]` and plain integers so the kernel can keep it in a
/// per-CPU map between `bpf_loop` steps.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HeaderScan {
    header: Header,
    state: u32,
    idx: u32,
    start: u32,
    end: u32,
    len: u32,
    complete: u32,
    compact_ok: u32,
    _pad: u32,
}

impl HeaderScan {
    /// A scan of the first `len` bytes of a buffer; `complete` says whether those
    /// bytes are the whole datagram.
    #[inline(always)]
    pub const fn new(header: Header, len: u32, complete: bool) -> Self {
        HeaderScan {
            header,
            state: S_LEAD,
            idx: 0,
            start: 0,
            end: 0,
            len,
            complete: complete as u32,
            compact_ok: 0,
            _pad: 0,
        }
    }

    /// Feeds the 8 bytes of word `w` (bytes `8w..8w+8`). Returns `true` when the
    /// scan has its answer and no more words are needed.
    #[inline(always)]
    pub fn step_word(&mut self, buf: &ScanBuf, w: u32) -> bool {
        let base = (w as usize * 8) & SCAN_MASK;
        let len = self.len as usize;
        if self.state == S_SKIP && base + 8 <= len && !has_newline(buf.word(base)) {
            // Most bytes are the inside of lines we do not want: skip them a word at a time.
            return false;
        }
        let mut k = 0;
        while k < 8 {
            let i = base + k;
            if i >= len {
                self.finish();
                return true;
            }
            self.step(buf.at(i), i as u32);
            if self.state >= S_FOUND {
                return true;
            }
            k += 1;
        }
        if base + 8 >= len {
            self.finish();
            return true;
        }
        false
    }

    /// The value, if the scan found one. Meaningful once `step_word` returned true.
    #[inline(always)]
    pub fn result(&self) -> Option<Span> {
        if self.state == S_FOUND {
            Some(Span {
                start: self.start,
                len: self.end - self.start,
            })
        } else {
            None
        }
    }

    #[inline(always)]
    fn finish(&mut self) {
        if (self.state == S_VALUE || self.state == S_VALUE_NL) && self.complete != 0 {
            self.state = S_FOUND;
        } else if self.state != S_FOUND {
            self.state = S_DONE;
        }
    }

    #[inline(always)]
    fn skip(&mut self, b: u8) {
        self.state = if b == b'\n' { S_LINE } else { S_SKIP };
    }

    #[inline(always)]
    fn line_start(&mut self, b: u8) {
        let l = lower(b);
        if b == b'\r' {
            self.state = S_EMPTY_CR;
        } else if b == b'\n' {
            self.state = S_DONE;
        } else if l == self.header.name[0] {
            self.state = S_NAME;
            self.idx = 1;
            self.compact_ok = (l == self.header.compact) as u32;
        } else if l == self.header.compact && l != 0 {
            self.state = S_COMPACT;
        } else {
            self.state = S_SKIP;
        }
    }

    #[inline(always)]
    fn colon(&mut self, b: u8) {
        if is_lws(b) || b == b'\r' {
            self.state = S_COLON;
        } else if b == b':' {
            self.state = S_PREVAL;
        } else if b == b'\n' {
            self.state = S_COLON_NL;
        } else {
            self.skip(b);
        }
    }

    #[inline(always)]
    fn step(&mut self, b: u8, i: u32) {
        match self.state {
            S_LEAD if b != b'\r' && b != b'\n' => self.state = S_SKIP,
            S_SKIP => self.skip(b),
            S_LINE => self.line_start(b),
            S_EMPTY_CR => {
                if b == b'\n' {
                    self.state = S_DONE;
                } else {
                    self.skip(b);
                }
            }
            S_NAME => {
                let idx = self.idx as usize & 7;
                if idx < self.header.len as usize && lower(b) == self.header.name[idx] {
                    self.idx += 1;
                    if self.idx == self.header.len {
                        self.state = S_COLON;
                    }
                } else if idx == 1 && self.compact_ok != 0 {
                    // The first letter was also the compact form ("f" of "from").
                    self.colon_first(b);
                } else {
                    self.skip(b);
                }
            }
            S_COMPACT => self.colon_first(b),
            S_COLON => self.colon(b),
            S_COLON_NL => {
                if is_lws(b) {
                    self.state = S_COLON;
                } else {
                    self.line_start(b);
                }
            }
            S_PREVAL => {
                if is_lws(b) || b == b'\r' {
                } else if b == b'\n' {
                    self.state = S_PREVAL_NL;
                } else {
                    self.state = S_VALUE;
                    self.start = i;
                    self.end = i + 1;
                }
            }
            S_PREVAL_NL => {
                if is_lws(b) {
                    self.state = S_PREVAL;
                } else {
                    self.line_start(b);
                }
            }
            S_VALUE => {
                if is_lws(b) || b == b'\r' {
                } else if b == b'\n' {
                    self.state = S_VALUE_NL;
                } else {
                    self.end = i + 1;
                }
            }
            S_VALUE_NL => {
                if is_lws(b) {
                    self.state = S_VALUE;
                } else {
                    self.state = S_FOUND;
                }
            }
            _ => {}
        }
    }

    /// Right after a complete name: only whitespace, a newline or ':' may follow.
    #[inline(always)]
    fn colon_first(&mut self, b: u8) {
        if is_lws(b) || b == b':' || b == b'\r' || b == b'\n' {
            self.colon(b);
        } else {
            self.skip(b);
        }
    }
}

/// SWAR test for a `\n` byte in a little-endian word.
#[inline(always)]
const fn has_newline(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let x = w ^ (ONES * b'\n' as u64);
    (x.wrapping_sub(ONES) & !x & HIGHS) != 0
}

/// Runs a whole scan over the first `len` bytes of `buf` (user-space driver; the
/// kernel drives [`HeaderScan::step_word`] from `bpf_loop`).
pub fn scan(buf: &ScanBuf, len: u32, complete: bool, header: Header) -> Option<Span> {
    let mut s = HeaderScan::new(header, len, complete);
    let mut w = 0;
    while w < SCAN_WORDS {
        if s.step_word(buf, w) {
            break;
        }
        w += 1;
    }
    if len == 0 {
        s.finish();
    }
    s.result()
}

/// Convenience for user space: the Call-ID of a whole datagram, as a byte slice.
pub fn call_id(payload: &[u8]) -> Option<&[u8]> {
    header_value(payload, Header::CALL_ID)
}

/// The trimmed value of the first `header` in a datagram's first message.
pub fn header_value(payload: &[u8], header: Header) -> Option<&[u8]> {
    let mut buf = ScanBuf::zeroed();
    let (len, complete) = buf.fill(payload);
    let span = scan(&buf, len, complete, header)?;
    let start = span.start as usize;
    Some(&payload[start..start + span.len as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(m: &[u8]) -> Option<&[u8]> {
        call_id(m)
    }

    #[test]
    fn basic_forms() {
        assert_eq!(
            cid(b"INVITE x SIP/2.0\r\nCall-ID: abc@h\r\n\r\n"),
            Some(&b"abc@h"[..])
        );
        assert_eq!(cid(b"INVITE x SIP/2.0\r\ni:abc\r\n\r\n"), Some(&b"abc"[..]));
        assert_eq!(
            cid(b"INVITE x SIP/2.0\r\nCALL-id \t: abc  \r\n"),
            Some(&b"abc"[..])
        );
        assert_eq!(
            cid(b"INVITE x SIP/2.0\r\nCall-ID\r\n : abc\r\n"),
            Some(&b"abc"[..])
        );
        assert_eq!(
            cid(b"INVITE x SIP/2.0\r\nCall-ID:\r\n\tabc\r\n"),
            Some(&b"abc"[..])
        );
        assert_eq!(
            cid(b"INVITE x SIP/2.0\nCall-ID: abc\nX: y\n"),
            Some(&b"abc"[..])
        );
        assert_eq!(cid(b"INVITE x SIP/2.0\r\nCall-ID: abc"), Some(&b"abc"[..]));
        assert_eq!(
            cid(b"\r\n\r\nINVITE x SIP/2.0\r\nCall-ID: abc\r\n"),
            Some(&b"abc"[..])
        );
    }

    #[test]
    fn non_matches() {
        assert_eq!(cid(b"Call-ID: start-line-is-not-a-header\r\n\r\n"), None);
        assert_eq!(cid(b"INVITE x SIP/2.0\r\nCall-IDx: abc\r\n"), None);
        assert_eq!(cid(b"INVITE x SIP/2.0\r\nix: abc\r\n"), None);
        assert_eq!(cid(b"INVITE x SIP/2.0\r\nCall: abc\r\n"), None);
        assert_eq!(cid(b"INVITE x SIP/2.0\r\n\r\nCall-ID: body\r\n"), None);
        assert_eq!(cid(b"\r\n\r\n"), None);
        assert_eq!(cid(b""), None);
        assert_eq!(
            cid(b"INVITE x SIP/2.0\r\nVia: x\r\n Call-ID: continuation\r\n"),
            None
        );
    }

    #[test]
    fn empty_value_is_skipped_and_first_wins() {
        let m = b"INVITE x SIP/2.0\r\nCall-ID:   \r\ni: second\r\nCall-ID: third\r\n";
        assert_eq!(cid(m), Some(&b"second"[..]));
    }

    #[test]
    fn folded_value_keeps_inner_text() {
        let m = b"INVITE x SIP/2.0\r\nCall-ID: a\r\n b \r\nX: y\r\n";
        assert_eq!(cid(m), Some(&b"a\r\n b"[..]));
    }

    #[test]
    fn from_and_compact_from() {
        let m = b"INVITE x SIP/2.0\r\nf: <sip:a@b>;tag=1\r\nTo: sip:c@d\r\n";
        assert_eq!(header_value(m, Header::FROM), Some(&b"<sip:a@b>;tag=1"[..]));
        assert_eq!(header_value(m, Header::TO), Some(&b"sip:c@d"[..]));
        let m = b"INVITE x SIP/2.0\r\nFrom : x\r\nt:y\r\n";
        assert_eq!(header_value(m, Header::FROM), Some(&b"x"[..]));
        assert_eq!(header_value(m, Header::TO), Some(&b"y"[..]));
    }

    #[test]
    fn truncated_window_open_value_does_not_count() {
        let mut m = b"INVITE x SIP/2.0\r\nX: ".to_vec();
        m.resize(SCAN_MAX - 10, b'a');
        m.extend_from_slice(b"\r\ni: abcdefghijklmnop\r\n");
        assert_eq!(cid(&m), None);
        m.truncate(SCAN_MAX - 10 + 9);
        assert_eq!(cid(&m), Some(&b"abcd"[..]));
    }

    #[test]
    fn newline_swar() {
        for i in 0..8 {
            let mut w = [b'a'; 8];
            w[i] = b'\n';
            assert!(has_newline(u64::from_le_bytes(w)));
        }
        assert!(!has_newline(u64::from_le_bytes(*b"abcdefgh")));
        assert!(!has_newline(u64::from_le_bytes([
            0x0b,
            0x8a,
            0x0a ^ 0x80,
            0,
            0xff,
            9,
            11,
            13
        ])));
    }
}
