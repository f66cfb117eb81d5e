//! The in-place Call-ID scan (`line_scan`) against the byte machine: on
//! messages built to hit what the scan must get right or hand over (folding,
//! whitespace before the colon, mixed case, `i:` against `Call-ID:`, names
//! that begin like `Call-ID`, CR-only and LF-only line ends, trailing
//! whitespace, very long lines, a Call-ID across the window's end), at every
//! byte offset within a word. `properties::check_line_scan` says what must
//! hold; the other property tests and the fuzz targets run it too.

#[allow(dead_code)]
mod properties;

use balancer_common::callid::{call_id, SCAN_MAX};
use balancer_common::line_scan::{line_scan_of, Outcome, LINE_STEPS, SEEK_WORDS};
use balancer_common::Span;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

/// A request with `pad` more bytes in its Via line (every offset within a
/// word and across a seek step), then `lines`, then the end of the headers
/// and a body with decoy Call-IDs.
fn request(pad: usize, eol: &str, lines: &[&str]) -> Vec<u8> {
    let mut m = format!(
        "INVITE sip:bob@example.com SIP/2.0{eol}Via: SIP/2.0/UDP h;branch=z9hG4bK{}{eol}",
        "a".repeat(pad)
    );
    for l in lines {
        m.push_str(l);
        m.push_str(eol);
    }
    m.push_str(&format!(
        "CSeq: 1 INVITE{eol}{eol}Call-ID: body{eol}i: body{eol}"
    ));
    m.into_bytes()
}

fn found(m: &[u8], v: &str) -> Outcome {
    let start = m
        .windows(v.len())
        .position(|w| w == v.as_bytes())
        .expect("the value is in the message") as u32;
    Outcome::Found(Span {
        start,
        len: v.len() as u32,
    })
}

/// Lines the scan answers in place, and the value they give (`None`: no
/// Call-ID in the headers).
const IN_PLACE: &[(&[&str], Option<&str>)] = &[
    (&["Call-ID: v1@h"], Some("v1@h")),
    (&["call-id:v2"], Some("v2")),
    (&["CALL-ID:  \t v3 \t "], Some("v3")),
    (&["cALL-iD:\tv4"], Some("v4")),
    (&["i: v5"], Some("v5")),
    (&["I:v6"], Some("v6")),
    (
        &[
            "Call-Info: <x>",
            "Call-IDx: y",
            "ix: z",
            "Ca",
            "c",
            "Call-ID: v7",
        ],
        Some("v7"),
    ),
    (
        &["\rX: y", "Cseq: 2", "Contact: c", "i:v8 with spaces inside"],
        Some("v8 with spaces inside"),
    ),
    (&["X: y", "  Call-ID: continued", "i: v9"], Some("v9")),
    (&["Call-ID: a\rb"], Some("a\rb")),
    (&["Call-Info: x"], None),
    (&["I-x: y", "call-i: z"], None),
];

/// Lines the scan hands to the byte machine.
const DEFERRED: &[&[&str]] = &[
    &["Call-ID : v"],
    &["i\t:v"],
    &["Call-ID\r\n : v"],
    &["Call-ID:", " v"],
    &["Call-ID: v", " w"],
    &["Call-ID:  ", "i: v"],
    &["Call-ID: v         "],
];

#[test]
fn plain_lines_at_every_alignment_are_answered_in_place() {
    for eol in ["\r\n", "\n"] {
        for pad in 0..(2 * SEEK_WORDS as usize * 8 + 16) {
            for &(lines, want) in IN_PLACE {
                let m = request(pad, eol, lines);
                let got = line_scan_of(&m);
                let want = match want {
                    Some(v) => found(&m, v),
                    None => Outcome::Absent,
                };
                assert_eq!(got, want, "{eol:?} pad {pad}: {lines:?}");
                assert!(properties::check_line_scan(&m));
            }
            for &lines in DEFERRED {
                let m = request(pad, eol, lines);
                assert_eq!(
                    line_scan_of(&m),
                    Outcome::Defer,
                    "{eol:?} pad {pad}: {lines:?}"
                );
                properties::check(&m);
            }
        }
    }
}

/// Line ends of CR alone end no line for the byte machine (nor for the scan):
/// such a message is one start line.
#[test]
fn cr_only_line_ends_hold_no_header() {
    let m = b"INVITE sip:a@b SIP/2.0\rCall-ID: x\r\r";
    assert_eq!(line_scan_of(m), Outcome::Absent);
    assert_eq!(call_id(m), None);
    let m = b"INVITE sip:a@b SIP/2.0\r\nCall-ID: x\rVia: y\r\n\r\n";
    assert_eq!(line_scan_of(m), found(m, "x\rVia: y"));
}

/// The bench's and most user agents' messages: the scan answers them in a
/// handful of steps, and a Call-ID near the window's end within the budget.
#[test]
fn long_messages_are_answered_within_the_step_budget() {
    let mut m = b"INVITE sip:a@b SIP/2.0\r\n".to_vec();
    while m.len() < SCAN_MAX - 200 {
        m.extend_from_slice(b"X-Pad: ");
        m.resize(m.len() + 90, b'p');
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b"Call-ID: late@h\r\n\r\n");
    assert_eq!(line_scan_of(&m), found(&m, "late@h"));
    assert!(LINE_STEPS >= SCAN_MAX as u32 / (8 * SEEK_WORDS) + 16);
    properties::check(&m);
}

/// A Call-ID ending at every offset around the window's end, in a datagram
/// that ends with the window and in one that goes on.
#[test]
fn a_call_id_across_the_windows_end() {
    for end in SCAN_MAX - 24..SCAN_MAX + 8 {
        for total in [end, end + 2, SCAN_MAX, SCAN_MAX + 300] {
            if total < end {
                continue;
            }
            let mut m = b"INVITE sip:u@h SIP/2.0\r\nX-Pad: ".to_vec();
            m.resize(end - 30, b'p');
            m.extend_from_slice(b"\r\nCall-ID: ");
            m.resize(end, b'v');
            let rest = b"\r\nX-More: x\r\n\r\n";
            m.extend_from_slice(&rest[..(total - end).min(rest.len())]);
            m.resize(total, b'b');
            properties::check(&m);
        }
    }
}

/// A line end, as senders write them or get them wrong.
fn eol() -> impl Strategy<Value = &'static str> {
    prop_oneof![6 => Just("\r\n"), 3 => Just("\n"), 1 => Just("\r")]
}

/// Blanks that may trail a value or stand around a colon.
fn blanks() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![Just(' '), Just('\t'), Just('\r')], 0..12)
        .prop_map(|v| v.into_iter().collect())
}

fn token(max: usize) -> impl Strategy<Value = String> {
    prop::string::string_regex(&format!("[A-Za-z0-9@._~+-]{{1,{max}}}")).unwrap()
}

/// A name the scan must read right: the Call-ID's forms, and names that
/// begin like them.
fn name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(
        &[
            "Call-ID",
            "call-id",
            "CALL-ID",
            "cAlL-Id",
            "i",
            "I",
            "Call-Info",
            "Call-IDx",
            "Call-I",
            "Call",
            "Ca",
            "c",
            "ix",
            "CSeq",
            "Contact",
        ][..],
    )
}

/// A few blanks, as most senders write them.
fn few_blanks() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![3 => Just(' '), 1 => Just('\t')], 0..3)
        .prop_map(|v| v.into_iter().collect())
}

/// One header line, without its line end, whose parts may be folded.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (name(), few_blanks(), token(90), few_blanks())
            .prop_map(|(n, b, v, t)| format!("{n}:{b}{v}{t}")),
        3 => (name(), blanks(), prop_oneof![Just(":"), Just(";"), Just("")], blanks(), token(90), blanks(), eol(), any::<u8>())
            .prop_map(|(n, a, colon, b, v, t, eol, fold)| {
                // Now and then a fold before or after the colon, or inside the value.
                let f = |i: u8| if fold % 7 == i { format!("{eol} ") } else { String::new() };
                format!("{n}{}{a}{colon}{}{b}{v}{}{t}", f(1), f(2), f(3))
            }),
        1 => (0usize..5000).prop_map(|n| format!("X-Pad: {}", "p".repeat(n))),
        1 => prop::collection::vec(
                prop_oneof![3 => any::<u8>(), 1 => prop::sample::select(&b"\r\n \t:iIcCaA"[..])],
                0..40,
            )
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => Just(String::new()),
    ]
}

/// A request with leading line ends, headers of mixed line ends, maybe a
/// body, cut anywhere now and then.
fn message() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(prop_oneof![Just("\r\n"), Just("\n"), Just("\r")], 0..6),
        prop::collection::vec((line(), eol()), 0..12),
        any::<bool>(),
        prop::option::weighted(0.2, any::<prop::sample::Index>()),
    )
        .prop_map(|(lead, lines, body, cut)| {
            let mut m = lead.concat() + "INVITE sip:u@h SIP/2.0\r\n";
            for (l, eol) in lines {
                m += &l;
                m += eol;
            }
            if body {
                m += "\r\nCall-ID: body\r\n";
            }
            let mut m = m.into_bytes();
            m.truncate(properties::MAX_MESSAGE);
            if let Some(cut) = cut {
                m.truncate(cut.index(m.len() + 1));
            }
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn in_place_answers_are_the_byte_machines(m in message()) {
        properties::check_line_scan(&m);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The whole set of checks (header scans, keys, dispatch) on the same
    /// messages: `message_dispatch` now asks the scan first.
    #[test]
    fn every_check_holds_on_them(m in message()) {
        properties::check(&m);
    }
}

/// The generator reaches what the property is about: answers in place, found
/// and absent, and deferrals.
#[test]
fn the_generator_covers_the_cases() {
    let mut runner = TestRunner::deterministic();
    let (mut found, mut absent, mut deferred) = (0, 0, 0);
    let n = 600;
    for _ in 0..n {
        let m = message().new_tree(&mut runner).unwrap().current();
        match line_scan_of(&m) {
            Outcome::Found(_) => found += 1,
            Outcome::Absent | Outcome::Keepalive => absent += 1,
            Outcome::Defer => deferred += 1,
        }
    }
    eprintln!("{found} found, {absent} absent, {deferred} deferred of {n}");
    assert!(
        found > n / 5 && absent > n / 20 && deferred > n / 20,
        "{found} found, {absent} absent, {deferred} deferred of {n}"
    );
}
