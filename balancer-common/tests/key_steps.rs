//! The step contracts of the key extractors. The kernel runs each extractor from
//! one `bpf_loop` of `URI_STEPS` / `RURI_STEPS` iterations, one `advance` each, and
//! the verifier's work grows with the bytes one `advance` examines: so a step
//! examines exactly `STEP_BYTES` bytes, and the loop counts are what the longest
//! window needs (a smaller count would cut keys short in the kernel only, where
//! user space, looping until done, would not notice).

use balancer_common::keys::{
    ruri_user, uri_of, RuriScan, UriScan, KEY_MAX, RURI_STEPS, STEP_BYTES, URI_STEPS,
};
use balancer_common::{ScanBuf, Span};

/// Leading CR/LF the Request-URI scan skips (`RuriScan`'s docs; keys.rs tests
/// show 8 skipped and 10 not).
const LEAD_MAX: usize = 8;

fn buf(m: &[u8]) -> (ScanBuf, u32) {
    let mut b = ScanBuf::zeroed();
    let (n, _) = b.fill(m);
    (b, n)
}

/// `advance` calls until a URI scan of `v` is done, and its result.
fn uri_steps(b: &ScanBuf, v: Span) -> (usize, Option<Span>) {
    let mut s = UriScan::new(v);
    let mut n = 1;
    while !s.advance(b) {
        n += 1;
        assert!(n < 100_000, "the scan never ends");
    }
    (n, s.result())
}

fn ruri_steps(b: &ScanBuf, len: u32) -> (usize, Option<Span>) {
    let mut s = RuriScan::new(len);
    let mut n = 1;
    while !s.advance(b) {
        n += 1;
        assert!(n < 100_000, "the scan never ends");
    }
    (n, s.result())
}

#[test]
fn a_uri_step_examines_step_bytes() {
    // A value without `<`, `>` or a stop character is read to its end (or the
    // window's): STEP_BYTES bytes a step, then one step that finds the end.
    let m = vec![b'a'; 400];
    let (b, _) = buf(&m);
    for len in 0..400u32 {
        let (steps, r) = uri_steps(&b, Span { start: 0, len });
        let examined = (len as usize).min(KEY_MAX);
        assert_eq!(steps, examined / STEP_BYTES + 1, "len {len}");
        let whole = len > 0 && len as usize <= KEY_MAX;
        assert_eq!(r, whole.then_some(Span { start: 0, len }), "len {len}");
    }
    // The longest is the kernel's loop count, no more and no less.
    assert_eq!(URI_STEPS as usize, KEY_MAX / STEP_BYTES + 1);
}

#[test]
fn a_request_line_step_examines_step_bytes() {
    // A start line without a space is read to the end of the window, the leading
    // CR/LF included: STEP_BYTES bytes a step, then one step that finds the end.
    let mut worst = 0;
    for lead in 0..=LEAD_MAX {
        for len in [1, 3, 4, 5, 100, 255, 256, 257, 300] {
            let mut m = b"\r\n".repeat(lead / 2);
            m.extend(b"\r".repeat(lead % 2));
            m.extend(vec![b'X'; len]);
            let (b, n) = buf(&m);
            let (steps, r) = ruri_steps(&b, n);
            assert_eq!(r, None);
            let examined = lead + len.min(KEY_MAX);
            assert_eq!(steps, examined / STEP_BYTES + 1, "lead {lead} len {len}");
            worst = worst.max(steps);
        }
    }
    assert_eq!(worst, (LEAD_MAX + KEY_MAX) / STEP_BYTES + 1);
    assert!(RURI_STEPS as usize >= worst);
}

#[test]
fn the_request_uri_window_ends_where_specified() {
    // The `@` must lie within the first KEY_MAX bytes of the start line, which
    // begins after up to LEAD_MAX CR/LF: with the most leading bytes, an `@` on
    // the window's last byte counts through the kernel's loop count, one byte
    // later it does not.
    for lead in [0, LEAD_MAX] {
        for (at, found) in [(KEY_MAX - 1, true), (KEY_MAX, false)] {
            let mut m = b"\r\n".repeat(lead / 2);
            m.extend_from_slice(b"INVITE sip:");
            let user_start = m.len();
            m.resize(lead + at, b'u');
            m.extend_from_slice(b"@example.com SIP/2.0\r\n\r\n");
            let (b, n) = buf(&m);
            let want = found.then(|| Span {
                start: user_start as u32,
                len: (lead + at - user_start) as u32,
            });
            assert_eq!(ruri_user(&b, n), want, "lead {lead}, @ at {at}");
        }
    }
}

#[test]
fn the_uri_window_ends_where_specified() {
    // A name-addr's `>` on the value's last examined byte counts, one byte later
    // it does not; the same for an addr-spec's terminator.
    for (close, found) in [(KEY_MAX - 1, true), (KEY_MAX, false)] {
        let mut m = b"<sip:".to_vec();
        m.resize(close, b'a');
        m.extend_from_slice(b">;tag=1");
        let (b, n) = buf(&m);
        let want = found.then(|| Span {
            start: 1,
            len: close as u32 - 1,
        });
        assert_eq!(uri_of(&b, Span { start: 0, len: n }), want, "> at {close}");
        let mut m = b"sip:".to_vec();
        m.resize(close, b'a');
        m.extend_from_slice(b";tag=1");
        let (b, n) = buf(&m);
        let want = found.then_some(Span {
            start: 0,
            len: close as u32,
        });
        assert_eq!(uri_of(&b, Span { start: 0, len: n }), want, "; at {close}");
    }
}

#[test]
fn at_most_lead_max_leading_line_ends() {
    // RFC 3261 7.5 lets a stream carry CRLFs before a start line; the scan skips
    // up to LEAD_MAX of them (CR or LF alike), and sees no request after more.
    for lead in 0..=LEAD_MAX + 2 {
        let mut m: Vec<u8> = (0..lead)
            .map(|i| if i % 2 == 0 { b'\r' } else { b'\n' })
            .collect();
        m.extend_from_slice(b"INVITE sip:u@h SIP/2.0\r\n\r\n");
        let (b, n) = buf(&m);
        let want = (lead <= LEAD_MAX).then_some(Span {
            start: lead as u32 + 11,
            len: 1,
        });
        assert_eq!(ruri_user(&b, n), want, "{lead} leading bytes");
    }
}
