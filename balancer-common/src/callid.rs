//! The Call-ID scanner (and, with another header name, the From/To and
//! User-Agent scanners).
//!
//! Rules, identical in the kernel and in user space:
//! - leading CR/LF before the start line are ignored (RFC 3261 7.5), the start line
//!   itself is never a header;
//! - header names compare case-insensitively; the compact form (`i` for Call-ID)
//!   counts, for the headers that have one;
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
//! ([`HeaderScan::advance`]). The kernel runs the steps from `bpf_loop`, so
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
/// Words of a line's inside that one [`HeaderScan::advance`] may skip. Longer
/// bursts cost verifier work (each is unrolled), shorter ones more `bpf_loop` calls.
pub const SKIP_BURST: usize = 16;

/// The datagram's first bytes, zero-padded. In the kernel this lives in a per-CPU
/// array; in user space on the heap or stack. 8-aligned so a word is one load.
#[repr(C, align(8))]
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

    /// The word after the one at `i` (inside the slack, never wrapping).
    #[inline(always)]
    fn word_after(&self, i: usize) -> u64 {
        let i = (i & SCAN_MASK & !7) + 8;
        // SAFETY: i + 8 <= SCAN_MAX + 8 < SCAN_BUF, a multiple of 8 in an 8-aligned array.
        u64::from_le(unsafe { core::ptr::read(self.bytes.as_ptr().add(i) as *const u64) })
    }

    /// The 8 bytes at `i & !7`, first byte in the low bits.
    #[inline(always)]
    fn word(&self, i: usize) -> u64 {
        let i = i & SCAN_MASK & !7;
        // SAFETY: i + 8 <= SCAN_BUF and i is a multiple of 8 in an 8-aligned array.
        u64::from_le(unsafe { core::ptr::read(self.bytes.as_ptr().add(i) as *const u64) })
    }
}

/// Where a value lies in the [`ScanBuf`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub len: u32,
}

/// Longest header name a scan can look for. A power of two: the name index is
/// masked.
const NAME_MAX: usize = 16;
const _: () = assert!(NAME_MAX.is_power_of_two());

/// The header a scan looks for: lower-case long name and compact letter (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    name: [u8; NAME_MAX],
    len: u32,
    compact: u8,
}

impl Header {
    pub const CALL_ID: Header = Header::new(b"call-id", b'i');
    pub const FROM: Header = Header::new(b"from", b'f');
    pub const TO: Header = Header::new(b"to", b't');
    /// No compact form (RFC 3261, section 20, gives it none).
    pub const USER_AGENT: Header = Header::new(b"user-agent", 0);

    const fn new(long: &[u8], compact: u8) -> Header {
        // Two letters at least: `skippable` tells a line's header by its first two.
        assert!(long.len() >= 2 && long.len() <= NAME_MAX);
        let mut name = [0u8; NAME_MAX];
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
const S_LEAD: u32 = 0; // leading CR/LF before the start line (must be 0: see reset)
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
/// per-CPU map between `bpf_loop` steps; 8-aligned so initialising it is a few
/// word stores in BPF rather than a byte-wise memset call.
#[repr(C, align(8))]
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
    /// The next word `advance` feeds.
    next: u32,
}

impl HeaderScan {
    /// A scan of the first `len` bytes of a buffer; `complete` says whether those
    /// bytes are the whole datagram.
    #[inline(always)]
    pub fn new(header: Header, len: u32, complete: bool) -> Self {
        let mut s = HeaderScan {
            header,
            state: S_LEAD,
            idx: 0,
            start: 0,
            end: 0,
            len,
            complete: 0,
            compact_ok: 0,
            next: 0,
        };
        s.reset(header, len, complete);
        s
    }

    /// Re-initialises a scan in place (the kernel's scratch memory).
    #[inline(always)]
    pub fn reset(&mut self, header: Header, len: u32, complete: bool) {
        self.header = header;
        self.len = len;
        // Field by field, volatile: LLVM would merge the zero stores into a memset
        // call, which BPF runs as a byte loop.
        for f in [
            &mut self.state,
            &mut self.idx,
            &mut self.start,
            &mut self.end,
            &mut self.compact_ok,
            &mut self.next,
        ] {
            unsafe { core::ptr::write_volatile(f, 0) };
        }
        unsafe { core::ptr::write_volatile(&mut self.complete, complete as u32) };
    }

    /// One step of the scan: first skips (up to [`SKIP_BURST`]) whole words that lie
    /// inside an uninteresting line or inside the value, then feeds one word byte
    /// by byte (unless the burst ran its full length). Returns `true`
    /// when the scan has its answer. Every call consumes at least one word, so
    /// [`SCAN_WORDS`] calls always suffice. In the kernel each call is one `bpf_loop`
    /// iteration; a call costs several ns there, so the skip burst matters.
    #[inline(always)]
    pub fn advance(&mut self, buf: &ScanBuf) -> bool {
        let mut w = self.next as usize;
        let mut n = 0;
        if self.state == S_SKIP {
            while n < SKIP_BURST {
                // The bound is checked on the unmasked offset: masked, a word at
                // the window's end would wrap around to its start.
                let base = (w * 8) & SCAN_MASK;
                if w * 8 + 8 > self.len as usize
                    || !self.skippable(buf.word(base), buf.word_after(base))
                {
                    break;
                }
                w += 1;
                n += 1;
            }
        } else if self.state == S_VALUE {
            // Inside the value only whitespace matters: a word without any just moves
            // the value's end (what feeding its bytes one by one would do).
            while n < SKIP_BURST {
                let base = (w * 8) & SCAN_MASK;
                if w * 8 + 8 > self.len as usize {
                    break;
                }
                let x = buf.word(base);
                if eq_bytes(x, b' ') | eq_bytes(x, b'\t') | eq_bytes(x, b'\r') | eq_bytes(x, b'\n')
                    != 0
                {
                    break;
                }
                self.end = (base + 8) as u32;
                w += 1;
                n += 1;
            }
        }
        if n == SKIP_BURST {
            // A whole burst passed: the next step goes on skipping; feeding a word
            // through the byte machine is only worth it where something happens.
            self.next = w as u32;
            return false;
        }
        self.next = w as u32 + 1;
        self.step_word(buf, w as u32)
    }

    /// In state `S_SKIP`, can word `w0` (followed by `w1`) be passed over without
    /// feeding its bytes? Yes when no line starting in it can begin the header we
    /// want or end the headers: after every `\n`, the next two bytes are neither
    /// the name's first two letters, nor the compact letter and a separator, and the
    /// next byte is not CR/LF. Byte by byte, such a line only ever leads back to
    /// `S_SKIP` (the tests check the two drivers agree). Branch-free SWAR.
    #[inline(always)]
    fn skippable(&self, w0: u64, w1: u64) -> bool {
        let nl = eq_bytes(w0, b'\n');
        if nl == 0 {
            return true;
        }
        let a = (w0 >> 8) | (w1 << 56); // the byte after each position
        let b = (w0 >> 16) | (w1 << 48); // the one after that
        let fold = ONES * 0x20; // ASCII letters folded to lower case
        let (la, lb) = (a | fold, b | fold);
        let h = &self.header;
        let long = eq_bytes(la, h.name[0]) & eq_bytes(lb, h.name[1]);
        let sep = eq_bytes(b, b':')
            | eq_bytes(b, b' ')
            | eq_bytes(b, b'\t')
            | eq_bytes(b, b'\r')
            | eq_bytes(b, b'\n');
        let compact = eq_bytes(la, h.compact) & sep;
        let end = eq_bytes(a, b'\r') | eq_bytes(a, b'\n');
        nl & (long | compact | end) == 0
    }

    /// Feeds the 8 bytes of word `w` (bytes `8w..8w+8`). Returns `true` when the
    /// scan has its answer and no more words are needed.
    #[inline(always)]
    fn step_word(&mut self, buf: &ScanBuf, w: u32) -> bool {
        let len = self.len as usize;
        // Past the window: done (the masked offset below would wrap to its start).
        if w as usize * 8 >= len {
            self.finish();
            return true;
        }
        let base = (w as usize * 8) & SCAN_MASK;
        let word = buf.word(base);
        let mut k = 0;
        while k < 8 {
            let i = base + k;
            if i >= len {
                self.finish();
                return true;
            }
            if self.state == S_SKIP {
                // Inside a line we do not want only '\n' matters: jump to it. (Equal to
                // feeding the bytes one by one, just cheaper.)
                let m = eq_bytes(word >> (8 * k), b'\n');
                if m == 0 {
                    break;
                }
                let j = first_byte(m);
                if i + j >= len {
                    self.finish();
                    return true;
                }
                k += j + 1;
                self.state = S_LINE;
                continue;
            }
            self.step((word >> (8 * k)) as u8, i as u32);
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

    /// The value, if the scan found one. Meaningful once `advance` returned true.
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
                let idx = self.idx as usize & (NAME_MAX - 1);
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

pub(crate) const ONES: u64 = 0x0101_0101_0101_0101;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// Bit 7 set in exactly the zero bytes of `x` (no borrow between bytes).
#[inline(always)]
const fn zero_bytes(x: u64) -> u64 {
    !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7)
}

/// Bit 7 set in exactly the bytes of `x` equal to `c`.
#[inline(always)]
pub(crate) const fn eq_bytes(x: u64, c: u8) -> u64 {
    zero_bytes(x ^ (ONES * c as u64))
}

/// Index of the lowest byte whose bit 7 is set in a non-zero `m` (BPF has no
/// count-trailing-zeros instruction; three tests do it).
#[inline(always)]
pub(crate) const fn first_byte(mut m: u64) -> usize {
    let mut j = 0;
    if m & 0xffff_ffff == 0 {
        j += 4;
        m >>= 32;
    }
    if m & 0xffff == 0 {
        j += 2;
        m >>= 16;
    }
    if m & 0xff == 0 {
        j += 1;
    }
    j
}

/// Runs a whole scan over the first `len` bytes of `buf` (user-space driver; the
/// kernel drives [`HeaderScan::advance`] from `bpf_loop`).
pub fn scan(buf: &ScanBuf, len: u32, complete: bool, header: Header) -> Option<Span> {
    let mut s = HeaderScan::new(header, len, complete);
    let mut w = 0;
    while w < SCAN_WORDS {
        if s.advance(buf) {
            break;
        }
        w += 1;
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

    /// A Call-ID that runs to the end of a full window and beyond: the value is
    /// still open where the window ends, so there is no Call-ID (the kernel
    /// falls back to the source address), and nothing wraps around to the
    /// window's start. Lengths around the window's end, whole words and not.
    #[test]
    fn a_value_open_at_the_end_of_the_window_is_none() {
        for total in [4090, 4095, 4096, 4097, 4100, 4104, 5000, 9000] {
            let mut m = b"INVITE sip:a@b SIP/2.0\r\nX: ".to_vec();
            m.resize(3000, b'a');
            m.extend_from_slice(b"\r\ni: ");
            m.resize(total, b'c');
            let got = call_id(&m);
            if total <= SCAN_MAX {
                // The whole datagram is in the window: the value ends with it.
                assert_eq!(got.map(<[u8]>::len), Some(total - 3005), "{total}");
            } else {
                assert_eq!(got, None, "{total}");
            }
        }
    }

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
            // A '\v' right after the '\n' trips the borrowing SWAR variant; not this one.
            if i < 7 {
                w[i + 1] = 0x0b;
            }
            let m = eq_bytes(u64::from_le_bytes(w), b'\n');
            assert_eq!(first_byte(m), i);
        }
        assert_eq!(eq_bytes(u64::from_le_bytes(*b"abcdefgh"), b'\n'), 0);
        let odd = [0x0b, 0x8a, 0x0a ^ 0x80, 0, 0xff, 9, 11, 13];
        assert_eq!(eq_bytes(u64::from_le_bytes(odd), b'\n'), 0);
    }

    /// Byte-at-a-time reference driver: `step` on every byte, then `finish`.
    fn byte_driver(m: &[u8]) -> Option<Span> {
        byte_driver_for(m, Header::CALL_ID)
    }

    fn byte_driver_for(m: &[u8], header: Header) -> Option<Span> {
        let mut buf = ScanBuf::zeroed();
        let (len, complete) = buf.fill(m);
        let mut b = HeaderScan::new(header, len, complete);
        let mut i = 0;
        while i < len && b.state < S_FOUND {
            b.step(buf.at(i as usize), i);
            i += 1;
        }
        if b.state < S_FOUND {
            b.finish();
        }
        b.result()
    }

    fn word_driver(m: &[u8]) -> Option<Span> {
        word_driver_for(m, Header::CALL_ID)
    }

    fn word_driver_for(m: &[u8], header: Header) -> Option<Span> {
        let mut buf = ScanBuf::zeroed();
        let (len, complete) = buf.fill(m);
        scan(&buf, len, complete, header)
    }

    #[test]
    fn swar_masks_are_exact() {
        let w = u64::from_le_bytes([0, 1, 0x80, 0xff, 0, b'\n', 0x0b, b'\n']);
        assert_eq!(zero_bytes(w), 0x0000_0080_0000_0080);
        assert_eq!(eq_bytes(w, b'\n'), 0x8000_8000_0000_0000);
    }

    /// The word-at-a-time driver (with its newline jumps) equals feeding every byte
    /// through `step`.
    #[test]
    fn word_steps_equal_byte_steps() {
        let msgs: [&[u8]; 4] = [
            b"INVITE x SIP/2.0\r\nVia: a\r\n\x0bi: x\r\nCall-ID: y\r\n",
            b"\n\n\nA\nB\nC\nCall-ID:\n z\n\n",
            b"INVITE x SIP/2.0\r\nX: \n\n\n\ni:q",
            b"x\ni\n:\n v",
        ];
        for m in msgs {
            for cut in 0..=m.len() {
                assert_eq!(
                    word_driver(&m[..cut]),
                    byte_driver(&m[..cut]),
                    "{:?}",
                    &m[..cut]
                );
            }
        }
    }

    /// The scan at the first step that begins in `state`.
    fn scan_until(buf: &ScanBuf, len: u32, state: u32) -> HeaderScan {
        let mut s = HeaderScan::new(Header::CALL_ID, len, true);
        while s.state != state {
            assert!(!s.advance(buf), "done before reaching state {state}");
        }
        s
    }

    /// The verifier unrolls one burst per `bpf_loop` step, so a step passes at
    /// most `SKIP_BURST` words; where they can all be passed it passes exactly
    /// that many and feeds none (`bursts_pass_ordinary_headers_and_long_values`
    /// in tests/callid_words.rs shows the bursts are taken at all).
    #[test]
    fn a_step_passes_one_burst() {
        let mut m = b"INVITE x SIP/2.0\r\nX: ".to_vec();
        m.resize(1000, b'a');
        m.extend_from_slice(b"\r\nCall-ID: ");
        m.resize(2000, b'b');
        m.extend_from_slice(b"\r\n\r\n");
        let mut buf = ScanBuf::zeroed();
        let (len, _) = buf.fill(&m);
        for state in [S_SKIP, S_VALUE] {
            let mut s = scan_until(&buf, len, state);
            let w = s.next;
            assert!(!s.advance(&buf));
            assert_eq!((s.state, s.next), (state, w + SKIP_BURST as u32));
            if state == S_VALUE {
                assert_eq!(s.end, 8 * s.next);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        #[test]
        fn word_driver_equals_byte_driver(m in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just(b'\n'), proptest::strategy::Just(b'\r'),
                proptest::strategy::Just(b' '), proptest::strategy::Just(b':'),
                proptest::strategy::Just(b'i'), proptest::strategy::Just(0x0bu8),
                proptest::strategy::Just(b'c'), proptest::strategy::Just(b'C'),
                proptest::strategy::Just(b'a'), proptest::strategy::Just(b'I'),
                proptest::strategy::Just(b'\t'), proptest::prelude::any::<u8>()],
            0..300)) {
            proptest::prop_assert_eq!(word_driver(&m), byte_driver(&m));
        }

        /// The same for a header without a compact form and with a name longer
        /// than a word: the skip test must not take a 0 compact letter for one.
        #[test]
        fn user_agent_word_driver_equals_byte_driver(m in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just(b'\n'), proptest::strategy::Just(b'\r'),
                proptest::strategy::Just(b' '), proptest::strategy::Just(b':'),
                proptest::strategy::Just(b'u'), proptest::strategy::Just(b'U'),
                proptest::strategy::Just(b's'), proptest::strategy::Just(b'e'),
                proptest::strategy::Just(b'r'), proptest::strategy::Just(b'-'),
                proptest::strategy::Just(b'a'), proptest::strategy::Just(b'g'),
                proptest::strategy::Just(b'n'), proptest::strategy::Just(b't'),
                proptest::strategy::Just(0u8), proptest::strategy::Just(b'\t'),
                proptest::prelude::any::<u8>()],
            0..300)) {
            proptest::prop_assert_eq!(
                word_driver_for(&m, Header::USER_AGENT),
                byte_driver_for(&m, Header::USER_AGENT)
            );
        }
    }

    /// Structured messages for the User-Agent scan: the random ones above
    /// rarely spell the whole name.
    #[test]
    fn user_agent_word_steps_equal_byte_steps() {
        let msgs: [&[u8]; 4] = [
            b"INVITE x SIP/2.0\r\nUser-Agen: a\r\nUser-Agentx: b\r\nuser-agent:\r\n c\r\n",
            b"INVITE x SIP/2.0\nUs\nU\n\0: z\nUSER-AGENT  :  d e \n\n",
            b"SIP/2.0 200 OK\r\nUser-Agent\r\n : v\r\nUser-Agent: w",
            b"x\nuser-agent-user-agent: q\nuser-agent:\n\n",
        ];
        for m in msgs {
            for cut in 0..=m.len() {
                assert_eq!(
                    word_driver_for(&m[..cut], Header::USER_AGENT),
                    byte_driver_for(&m[..cut], Header::USER_AGENT),
                    "{:?}",
                    &m[..cut]
                );
            }
        }
        let m = msgs[0];
        let v = word_driver_for(m, Header::USER_AGENT).unwrap();
        assert_eq!(&m[v.start as usize..][..v.len as usize], b"c");
    }
}
