//! The Call-ID found in place, line by line: the fast path of the Call-ID
//! search, in front of the byte machine of [`crate::callid`].
//!
//! The byte machine reads every byte of a copy of the datagram. Most lines
//! cannot be the Call-ID, and most Call-ID lines are plain, so this scan hops
//! from line end to line end over 8-byte words (SWAR), looks at a line only
//! when its first two bytes could begin `Call-ID`, `i` and a separator, or the
//! end of the headers (the byte machine's own skip test), and reads a plain
//! `Call-ID:`/`i:` line by whole words. Whatever it is not sure of makes it
//! answer [`Outcome::Defer`], and the byte machine then runs as it always did:
//! leading line ends longer than a word, whitespace or a fold between the name
//! and the colon, an empty or folded value, trailing whitespace longer than a
//! word, bytes the kernel cannot reach in place (a packet's non-linear part),
//! more than [`LINE_STEPS`] steps. Where it answers, it answers what the byte
//! machine does: the same span, so the same hash, or the same absence and the
//! same fallback reason (`tests/line_scan.rs`, the scanner properties and the
//! fuzz targets check this on adversarial messages).
//!
//! It reads the datagram through [`Words`]: the packet itself in the kernel
//! (no copy of the payload), a slice in user space ([`SliceWords`]). The same
//! steps give the same answers in both.

use crate::callid::{eq_bytes, first_byte, Span, ONES, SCAN_MAX};

/// Where the scan reads the datagram.
pub trait Words {
    /// [`RUN_BYTES`] bytes checked once, read word by word.
    type Run: Run;

    /// The `need` (1 to 8) bytes at offset `off` of the datagram in the low
    /// bytes of a word, the first lowest; the bytes above them may be
    /// anything (the scan masks them). `None` when they cannot be read where
    /// the scan runs: the scan then defers.
    fn word(&mut self, off: u32, need: u32) -> Option<u64>;

    /// The [`RUN_BYTES`] bytes at `off` (all inside the window), if they can
    /// all be read where the scan runs. In the kernel this is one bounds
    /// check for [`RUN_WORDS`] loads; `None` sends the scan to [`word`](Self::word).
    fn run(&mut self, off: u32) -> Option<Self::Run>;
}

/// Bytes a [`Words::run`] holds: [`RUN_WORDS`] words.
pub trait Run {
    /// The 8 bytes at the run's offset `8 * k` (`k < RUN_WORDS`), first lowest.
    fn word(&self, k: u32) -> u64;
}

/// A datagram held in a slice (user space).
pub struct SliceWords<'a>(pub &'a [u8]);

impl<'a> Words for SliceWords<'a> {
    type Run = &'a [u8];

    fn word(&mut self, off: u32, need: u32) -> Option<u64> {
        let off = off as usize;
        let bytes = self.0.get(off..off + need as usize)?;
        let mut w = [0u8; 8];
        w[..bytes.len()].copy_from_slice(bytes);
        Some(u64::from_le_bytes(w))
    }

    fn run(&mut self, off: u32) -> Option<&'a [u8]> {
        let off = off as usize;
        self.0.get(off..off + RUN_BYTES as usize)
    }
}

impl Run for &[u8] {
    fn word(&self, k: u32) -> u64 {
        let at = 8 * k as usize;
        u64::from_le_bytes(self[at..at + 8].try_into().unwrap())
    }
}

/// Words one step reads looking for the next line that may matter. The
/// verifier walks each of them in the kernel's step function: more cost
/// verifier work (32: 43k more instructions on 6.18, for a gain lost in the
/// bench's noise), fewer cost more `bpf_loop` calls (15-20 ns each here).
pub const SEEK_WORDS: u32 = 16;
/// Words one step reads looking for the end of the value.
pub const VALUE_WORDS: u32 = 8;
/// Words a step reads one by one near the window's end (where a run does
/// not fit).
pub const NEAR_END_WORDS: u32 = 8;
/// Words of a [`Words::run`]: a seeking step's, and the word after them.
pub const RUN_WORDS: u32 = SEEK_WORDS + 1;
pub const RUN_BYTES: u32 = 8 * RUN_WORDS;
const _: () = assert!(VALUE_WORDS <= RUN_WORDS);
/// Steps the scan may take (the kernel's `bpf_loop` count). A window of
/// `SCAN_MAX` bytes takes `SCAN_MAX / (8 * SEEK_WORDS)` seeking steps; the
/// rest is for lines looked at. A scan without an answer by then defers.
pub const LINE_STEPS: u32 = (SCAN_MAX as u32) / (8 * SEEK_WORDS) + 32;

/// What the scan says about the datagram's Call-ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The byte machine's span of the value.
    Found(Span),
    /// No Call-ID, and the datagram is not a keepalive (`keys::is_keepalive`).
    Absent,
    /// No Call-ID, and the datagram is a keepalive.
    Keepalive,
    /// Ask the byte machine.
    Defer,
}

// States; the last four are the answers. Plain integers: the state lives in
// the kernel's per-CPU scratch memory between steps.
const L_START: u32 = 0; // at the datagram's first byte
const L_SEEK: u32 = 1; // inside a line that cannot matter: find the next that may
const L_LINE: u32 = 2; // at the first byte of a line that may matter
const L_PREVALUE: u32 = 3; // right after the Call-ID's colon
const L_VALUE: u32 = 4; // inside the value: find its line end
const L_END: u32 = 5; // at the value's LF, or at the window's end
/// [`LineScan::code`]: the span is [`LineScan::span`].
pub const FOUND: u32 = 6;
/// [`LineScan::code`]: [`Outcome::Absent`].
pub const ABSENT: u32 = 7;
/// [`LineScan::code`]: [`Outcome::Keepalive`].
pub const KEEPALIVE: u32 = 8;
/// [`LineScan::code`]: [`Outcome::Defer`].
pub const DEFER: u32 = 9;

const CR: u8 = b'\r';
const LF: u8 = b'\n';
/// Bit 7 of every byte: where the SWAR masks mark a byte.
const HIGH: u64 = ONES * 0x80;
/// `Call-ID:` in lower case, and the bits that fold its letters' case.
const CALL_ID_COLON: u64 = u64::from_le_bytes(*b"call-id:");
const CALL_ID_FOLD: u64 = u64::from_le_bytes([0x20, 0x20, 0x20, 0x20, 0, 0x20, 0x20, 0]);
/// The name without the colon: the low seven bytes.
const NAME7: u64 = (1 << 56) - 1;

/// The scan's state. `#[repr(C)]` plain integers: the kernel keeps it in
/// per-CPU scratch memory between `bpf_loop` steps.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug)]
pub struct LineScan {
    state: u32,
    /// Where the current state goes on from.
    pos: u32,
    /// The window: the datagram's first `len` bytes, at most `SCAN_MAX`.
    len: u32,
    /// Non-zero: the window is the whole datagram.
    complete: u32,
    start: u32,
    end: u32,
}

impl LineScan {
    pub fn new(len: u32, complete: bool) -> Self {
        let mut s = LineScan {
            state: 0,
            pos: 0,
            len: 0,
            complete: 0,
            start: 0,
            end: 0,
        };
        s.reset(len, complete);
        s
    }

    /// Re-initialises a scan in place (the kernel's scratch memory): stores
    /// only, so the caller's verifier state does not split here.
    #[inline(always)]
    pub fn reset(&mut self, len: u32, complete: bool) {
        self.state = L_START;
        self.pos = 0;
        self.len = if len > SCAN_MAX as u32 {
            SCAN_MAX as u32
        } else {
            len
        };
        self.complete = complete as u32;
        self.start = 0;
        self.end = 0;
    }

    /// One step: from the current state on until it has to look further
    /// than a step may. Returns `true` once the scan has its answer
    /// ([`code`](Self::code)). The kernel runs one step per `bpf_loop` call.
    #[inline(always)]
    pub fn advance<W: Words>(&mut self, src: &mut W) -> bool {
        // Which phases share a step is the verifier's price (bench/NOTES.md,
        // issue 15): SEEK, with a way out per word of its run, ends the step
        // (whatever followed would be checked once per way); START+SEEK,
        // LINE+PREVALUE and VALUE+END are cheap together; PREVALUE into VALUE
        // made LLVM copy a register undefined on one path, which the
        // verifier refuses. The state is read back from memory before each
        // phase (volatile, or the compiler would carry it over).
        let s = self.state();
        if s == L_SEEK {
            self.seek(src);
        } else if s == L_START {
            self.start_line(src);
            if self.state() == L_SEEK {
                self.seek(src);
            }
        } else if s == L_VALUE {
            self.value(src);
            if self.state() == L_END {
                self.line_end(src);
            }
        } else if s == L_END {
            self.line_end(src);
        } else {
            if self.state() == L_LINE {
                self.line(src);
            }
            if self.state() == L_PREVALUE {
                self.prevalue(src);
            }
        }
        self.state() >= FOUND
    }

    /// The answer: [`FOUND`], [`ABSENT`], [`KEEPALIVE`] or [`DEFER`] (also for
    /// a scan that ran out of steps).
    #[inline(always)]
    pub fn code(&self) -> u32 {
        let s = self.state();
        if s >= FOUND {
            s
        } else {
            DEFER
        }
    }

    /// The value, once [`code`](Self::code) is [`FOUND`].
    #[inline(always)]
    pub fn span(&self) -> Span {
        let start = unsafe { core::ptr::read_volatile(&self.start) };
        let end = unsafe { core::ptr::read_volatile(&self.end) };
        Span {
            start,
            len: end.wrapping_sub(start),
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self.code() {
            FOUND => Outcome::Found(self.span()),
            ABSENT => Outcome::Absent,
            KEEPALIVE => Outcome::Keepalive,
            _ => Outcome::Defer,
        }
    }

    #[inline(always)]
    fn state(&self) -> u32 {
        unsafe { core::ptr::read_volatile(&self.state) }
    }

    #[inline(always)]
    fn set(&mut self, state: u32) {
        unsafe { core::ptr::write_volatile(&mut self.state, state) };
    }

    /// Where the state goes on from, read from memory: a position the
    /// verifier knows only as a number, not as the way it was computed (a
    /// byte index found by branches, a run's word), so the paths that led to
    /// different positions meet again.
    #[inline(always)]
    fn pos(&self) -> u32 {
        unsafe { core::ptr::read_volatile(&self.pos) }
    }

    /// The window's length and whether it is the whole datagram, read anew
    /// at each use for the same reason: the verifier would otherwise learn
    /// different bounds for them on different paths, decide later branches
    /// by them and keep the paths apart.
    #[inline(always)]
    fn len(&self) -> u32 {
        unsafe { core::ptr::read_volatile(&self.len) }
    }

    #[inline(always)]
    fn complete(&self) -> u32 {
        unsafe { core::ptr::read_volatile(&self.complete) }
    }

    #[inline(always)]
    fn go(&mut self, state: u32, pos: u32) {
        unsafe { core::ptr::write_volatile(&mut self.pos, pos) };
        self.set(state);
    }

    /// The window's 8 bytes at `off`, zero from the window's end on (as the
    /// byte machine's buffer is); `None`: they cannot be read here.
    #[inline(always)]
    fn load<W: Words>(&self, src: &mut W, off: u32) -> Option<u64> {
        let len = self.len();
        if off >= len {
            return Some(0);
        }
        let left = len - off;
        if left >= 8 {
            return src.word(off, 8);
        }
        Some(src.word(off, left)? & ((1u64 << (8 * left)) - 1))
    }

    /// Leading CR/LF (RFC 3261 7.5) within the first word are passed over; the
    /// start line is never a header, so the scan seeks from its first byte.
    #[inline(always)]
    fn start_line<W: Words>(&mut self, src: &mut W) {
        let Some(w) = self.load(src, 0) else {
            return self.set(DEFER);
        };
        let len = self.len();
        let bytes = if len >= 8 {
            !0
        } else {
            (1u64 << (8 * len)) - 1
        };
        let ends = eq_bytes(w, CR) | eq_bytes(w, LF);
        let other = bytes & HIGH & !ends;
        if other != 0 {
            return self.go(L_SEEK, first_byte(other) as u32);
        }
        // Line ends only, as far as the word goes.
        if len > 8 {
            self.set(DEFER);
        } else if len <= 4 {
            self.set(KEEPALIVE);
        } else {
            self.set(ABSENT);
        }
    }

    /// From `pos`, inside a line that cannot matter, to the first byte of the
    /// next line that may ([`line_may_matter`]). No such line in the window:
    /// no Call-ID.
    #[inline(always)]
    fn seek<W: Words>(&mut self, src: &mut W) {
        let p = self.pos();
        // Away from the window's end, the words are read as a run: one check
        // and no masking for the lot.
        if p + RUN_BYTES <= self.len() {
            if let Some(run) = src.run(p) {
                let mut w0 = run.word(0);
                let mut k = 0;
                while k < SEEK_WORDS {
                    let w1 = run.word(k + 1);
                    let m = line_may_matter(w0, w1);
                    if m != 0 {
                        return self.go(L_LINE, p + 8 * k + first_byte(m) as u32 + 1);
                    }
                    w0 = w1;
                    k += 1;
                }
                return self.go(L_SEEK, p + 8 * SEEK_WORDS);
            }
        }
        self.seek_near_end(src)
    }

    /// [`seek`](Self::seek) word by word, each masked to the window. The
    /// position goes through memory from word to word.
    #[inline(always)]
    fn seek_near_end<W: Words>(&mut self, src: &mut W) {
        let mut k = 0;
        while k < NEAR_END_WORDS {
            let p = self.pos();
            if p >= self.len() {
                return self.set(ABSENT);
            }
            let (Some(w0), Some(w1)) = (self.load(src, p), self.load(src, p + 8)) else {
                return self.set(DEFER);
            };
            let m = line_may_matter(w0, w1);
            if m != 0 {
                return self.go(L_LINE, p + first_byte(m) as u32 + 1);
            }
            self.go(L_SEEK, p + 8);
            k += 1;
        }
    }

    /// At the first byte of a line that may matter: the end of the headers,
    /// a plain `Call-ID:` or `i:` (case-insensitive), or a line to pass over.
    #[inline(always)]
    fn line<W: Words>(&mut self, src: &mut W) {
        let at = self.pos();
        let Some(w) = self.load(src, at) else {
            return self.set(DEFER);
        };
        let (b0, b1) = (w as u8, (w >> 8) as u8);
        if b0 == LF || (b0 == CR && b1 == LF) {
            return self.set(ABSENT);
        }
        let folded = w | CALL_ID_FOLD;
        if folded == CALL_ID_COLON {
            return self.go(L_PREVALUE, at + 8);
        }
        if (folded & NAME7) == (CALL_ID_COLON & NAME7) {
            // The whole name, then whitespace or a fold before the colon.
            if separates((w >> 56) as u8) {
                return self.set(DEFER);
            }
        } else if (b0 | 0x20) == b'i' {
            if b1 == b':' {
                return self.go(L_PREVALUE, at + 2);
            }
            if separates(b1) {
                return self.set(DEFER);
            }
        }
        // Another header (`Call-Info`, `Call-IDx`, `ix`) or a line beginning
        // with a lone CR: the byte machine passes over it to its next LF,
        // which may come right after its first byte.
        self.go(L_SEEK, at + 1)
    }

    /// Right after the colon: the value begins at the first byte that is not
    /// SP, HT or CR, within this word.
    #[inline(always)]
    fn prevalue<W: Words>(&mut self, src: &mut W) {
        let at = self.pos();
        let Some(w) = self.load(src, at) else {
            return self.set(DEFER);
        };
        let other = HIGH & !blank(w);
        if other == 0 {
            return self.set(DEFER);
        }
        let j = first_byte(other);
        let v = at + j as u32;
        if v >= self.len() {
            // The window ends before any value.
            return self.set(ABSENT);
        }
        if (w >> (8 * j)) as u8 == LF {
            // An empty value (the search goes on past it) or a folded one.
            return self.set(DEFER);
        }
        self.start = v;
        self.go(L_VALUE, v);
    }

    /// Inside the value, to its LF (or the window's end): [`L_END`] there.
    #[inline(always)]
    fn value<W: Words>(&mut self, src: &mut W) {
        let p = self.pos();
        if p + RUN_BYTES <= self.len() {
            if let Some(run) = src.run(p) {
                let mut k = 0;
                while k < VALUE_WORDS {
                    let nl = eq_bytes(run.word(k), LF);
                    if nl != 0 {
                        return self.go(L_END, p + 8 * k + first_byte(nl) as u32);
                    }
                    k += 1;
                }
                return self.go(L_VALUE, p + 8 * VALUE_WORDS);
            }
        }
        self.value_near_end(src)
    }

    /// [`value`](Self::value) word by word, each masked to the window.
    #[inline(always)]
    fn value_near_end<W: Words>(&mut self, src: &mut W) {
        let mut k = 0;
        while k < NEAR_END_WORDS {
            let p = self.pos();
            if p >= self.len() {
                return self.go(L_END, self.len());
            }
            let Some(w) = self.load(src, p) else {
                return self.set(DEFER);
            };
            let nl = eq_bytes(w, LF);
            if nl != 0 {
                return self.go(L_END, p + first_byte(nl) as u32);
            }
            self.go(L_VALUE, p + 8);
            k += 1;
        }
    }

    /// At the value's LF (`pos`), the byte after it says whether the value
    /// goes on (a fold: deferred) or ends; at the window's end, or an LF
    /// that is its last byte, only a whole datagram ends it. The value ends
    /// after the last byte before `pos` that is not SP, HT or CR, looked for
    /// in the word before `pos`.
    #[inline(always)]
    fn line_end<W: Words>(&mut self, src: &mut W) {
        let e = self.pos();
        let after = e + 1;
        if after < self.len() {
            let Some(w) = self.load(src, after) else {
                return self.set(DEFER);
            };
            if is_blank_space(w as u8) {
                return self.set(DEFER);
            }
        } else if self.complete() == 0 {
            return self.set(ABSENT);
        }
        if e < 8 {
            return self.set(DEFER);
        }
        let Some(w) = self.load(src, e - 8) else {
            return self.set(DEFER);
        };
        let other = HIGH & !blank(w);
        if other == 0 {
            return self.set(DEFER);
        }
        // The value's first byte is not blank, so the last non-blank byte of
        // the word is the value's when the word begins before the value.
        self.end = e - 8 + last_byte(other) as u32 + 1;
        self.set(FOUND);
    }
}

/// SP or HT.
#[inline(always)]
const fn is_blank_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// What may stand between a header's name and its colon: SP, HT, CR, LF.
#[inline(always)]
const fn separates(b: u8) -> bool {
    is_blank_space(b) || b == CR || b == LF
}

/// Bit 7 set in the bytes of `w` that are SP, HT or CR: what the byte machine
/// passes over around a value.
#[inline(always)]
const fn blank(w: u64) -> u64 {
    eq_bytes(w, b' ') | eq_bytes(w, b'\t') | eq_bytes(w, CR)
}

/// Bit 7 set at each LF of `w0` after which a line begins that may matter to
/// the Call-ID search (`w1`: the word after `w0`): its first two bytes are
/// `ca` (any case), or `i` (any case) and a separator, or it begins with CR or
/// LF (the end of the headers). The byte machine passes over every other line
/// without leaving its skip state (`HeaderScan::skippable`, the same test).
#[inline(always)]
pub const fn line_may_matter(w0: u64, w1: u64) -> u64 {
    let nl = eq_bytes(w0, LF);
    if nl == 0 {
        return 0;
    }
    let a = (w0 >> 8) | (w1 << 56); // the byte after each position
    let b = (w0 >> 16) | (w1 << 48); // the one after that
    let fold = ONES * 0x20;
    let (la, lb) = (a | fold, b | fold);
    let long = eq_bytes(la, b'c') & eq_bytes(lb, b'a');
    let sep = eq_bytes(b, b':')
        | eq_bytes(b, b' ')
        | eq_bytes(b, b'\t')
        | eq_bytes(b, CR)
        | eq_bytes(b, LF);
    let compact = eq_bytes(la, b'i') & sep;
    let end = eq_bytes(a, CR) | eq_bytes(a, LF);
    nl & (long | compact | end)
}

/// Index of the highest byte whose bit 7 is set in a non-zero `m` (three
/// tests: BPF has no count-leading-zeros instruction).
#[inline(always)]
const fn last_byte(mut m: u64) -> usize {
    let mut j = 7;
    if m >> 32 == 0 {
        j -= 4;
        m <<= 32;
    }
    if m >> 48 == 0 {
        j -= 2;
        m <<= 16;
    }
    if m >> 56 == 0 {
        j -= 1;
    }
    j
}

/// The whole scan of a datagram's first `len` bytes (`complete`: they are
/// all of it), as the kernel steps it.
pub fn line_scan<W: Words>(src: &mut W, len: u32, complete: bool) -> Outcome {
    let mut s = LineScan::new(len, complete);
    let mut i = 0;
    while i < LINE_STEPS {
        if s.advance(src) {
            break;
        }
        i += 1;
    }
    s.outcome()
}

/// [`line_scan`] of a whole datagram held in a slice.
pub fn line_scan_of(payload: &[u8]) -> Outcome {
    let len = payload.len().min(SCAN_MAX);
    line_scan(&mut SliceWords(payload), len as u32, len == payload.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_byte_finds_the_highest_marked_byte() {
        for i in 0..8 {
            let m = 0x80u64 << (8 * i);
            assert_eq!(last_byte(m), i);
            assert_eq!(last_byte(m | 0x80), i);
        }
    }

    #[test]
    fn the_name_constants_spell_call_id() {
        for name in [&b"Call-ID:"[..], b"CALL-ID:", b"call-id:", b"cAlL-iD:"] {
            let w = u64::from_le_bytes(name.try_into().unwrap());
            assert_eq!(w | CALL_ID_FOLD, CALL_ID_COLON, "{name:?}");
        }
        for other in [
            &b"Call_ID:"[..],
            b"Call-ID;",
            b"Call-Id\r",
            b"Cal\r-ID:",
            b"Call-IDx",
        ] {
            let w = u64::from_le_bytes(other.try_into().unwrap());
            assert_ne!(w | CALL_ID_FOLD, CALL_ID_COLON, "{other:?}");
        }
    }

    fn span(m: &[u8], v: &[u8]) -> Outcome {
        let start = m.windows(v.len()).position(|w| w == v).unwrap() as u32;
        Outcome::Found(Span {
            start,
            len: v.len() as u32,
        })
    }

    #[test]
    fn plain_lines_are_answered_in_place() {
        let m = b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\nCall-ID: abc@h\r\nCSeq: 1\r\n\r\n";
        assert_eq!(line_scan_of(m), span(m, b"abc@h"));
        let m = b"INVITE sip:a@b SIP/2.0\nCall-Info: x\ni:q  \t\r\n\n";
        assert_eq!(line_scan_of(m), span(m, b"q"));
        let m = b"SIP/2.0 200 OK\r\nVia: x\r\n\r\nCall-ID: body\r\n";
        assert_eq!(line_scan_of(m), Outcome::Absent);
        assert_eq!(line_scan_of(b"\r\n\r\n"), Outcome::Keepalive);
        assert_eq!(line_scan_of(b"\r\n\r\n\r\n"), Outcome::Absent);
    }

    #[test]
    fn hard_cases_are_deferred() {
        for m in [
            &b"INVITE x SIP/2.0\r\nCall-ID : abc\r\n"[..],
            b"INVITE x SIP/2.0\r\ni\t: abc\r\n",
            b"INVITE x SIP/2.0\r\nCall-ID: abc\r\n def\r\n",
            b"INVITE x SIP/2.0\r\nCall-ID:\r\n abc\r\n",
            b"INVITE x SIP/2.0\r\nCall-ID: \r\ni: abc\r\n",
            b"\r\n\r\n\r\n\r\nINVITE x SIP/2.0\r\nCall-ID: abc\r\n",
        ] {
            assert_eq!(line_scan_of(m), Outcome::Defer, "{m:?}");
        }
    }
}
