//! The header scanner works a word (8 bytes) at a time and passes whole runs of
//! words in bursts, so a line start, a separator or the end of the headers can
//! fall at any byte of a word, on a word boundary, or at the edge of a burst.
//! These tests move every form of the header across all those positions, check
//! that what the kernel's buffer holds beyond the datagram is never read, and
//! check the step contract the kernel's `bpf_loop` relies on.

#[allow(dead_code)]
mod oracle;

use balancer_common::callid::{
    call_id, header_value, scan, Header, SCAN_MAX, SCAN_WORDS, SKIP_BURST,
};
use balancer_common::useragent::{is_scanner, patterns, DEFAULT_SCANNERS};
use balancer_common::{HeaderScan, ScanBuf, Span};

/// Pads before the line under test: every byte offset within a word, over more
/// than two skip bursts of the line before it.
const PADS: std::ops::Range<usize> = 0..(2 * SKIP_BURST * 8 + 24);

/// A request whose Via line is `pad` bytes longer than minimal, then `lines`,
/// then the end of the headers and a body that carries decoy headers.
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
        "CSeq: 1 INVITE{eol}{eol}Call-ID: body{eol}i: body{eol}From: body{eol}To: body{eol}"
    ));
    m.into_bytes()
}

/// Call-ID lines (and the lines before them) with the value each message must
/// give.
const CALL_ID_CASES: &[(&[&str], Option<&str>)] = &[
    (&["Call-ID: v1@h"], Some("v1@h")),
    (&["call-id:v2"], Some("v2")),
    (&["CALL-ID \t: v3 "], Some("v3")),
    (&["cALL-iD\t:\tv4\t"], Some("v4")),
    (&["i: v5"], Some("v5")),
    (&["I:v6"], Some("v6")),
    (&["i :v7"], Some("v7")),
    (&["i\t:v8"], Some("v8")),
    // The compact letter followed by a fold: CR, or a bare LF.
    (&["i", " :v9"], Some("v9")),
    (&["i\n :v10"], Some("v10")),
    (&["Call-ID", " : v11"], Some("v11")),
    (&["Call-ID:", "\tv12"], Some("v12")),
    // Decoys that share a prefix with the header, then the header.
    (&["Cab: x", "Call-ID: v13"], Some("v13")),
    (&["Call: x", "i: v14"], Some("v14")),
    (
        &["Call-IDx: x", "ix: y", "C: z", "c:z", "Ca", "Call-ID: v15"],
        Some("v15"),
    ),
    (
        &["I-x: y", "Call-I: z", "call-i:v16", "Call-ID:v16"],
        Some("v16"),
    ),
    (&["Call-ID:  ", "i:\t", "Call-ID: v17"], Some("v17")),
    (&["X: y", "  Call-ID: continued", "i: v18"], Some("v18")),
    // A line that begins with a CR not followed by LF is no end of the headers.
    (&["\rX: y", "Call-ID: v19"], Some("v19")),
    // No Call-ID in the headers: the body's does not count.
    (&["Cab: x"], None),
    (&["Call-ID:"], None),
    (&["i"], None),
];

#[test]
fn call_id_at_every_alignment() {
    for eol in ["\r\n", "\n"] {
        for pad in PADS {
            for &(lines, want) in CALL_ID_CASES {
                let m = request(pad, eol, lines);
                let got = call_id(&m);
                assert_eq!(
                    got,
                    want.map(str::as_bytes),
                    "{:?}",
                    String::from_utf8_lossy(&m)
                );
                assert_eq!(
                    oracle::call_id(&m).as_deref(),
                    got,
                    "oracle: {:?}",
                    String::from_utf8_lossy(&m)
                );
            }
        }
    }
}

/// The end of the headers (an empty line, CRLF or bare LF) at every alignment:
/// nothing after it is a header, however the line before it ends.
#[test]
fn empty_line_at_every_alignment() {
    for pad in PADS {
        for (before, empty) in [
            ("\r\n", "\r\n"),
            ("\n", "\n"),
            ("\r\n", "\n"),
            ("\n", "\r\n"),
        ] {
            let m = format!(
                "INVITE sip:b@h SIP/2.0\r\nVia: x{}{before}{empty}Call-ID: body\r\ni: body\r\n",
                "a".repeat(pad)
            );
            assert_eq!(call_id(m.as_bytes()), None, "{m:?}");
            assert_eq!(oracle::call_id(m.as_bytes()), None, "{m:?}");
        }
    }
}

/// The start line is never a header, not even after leading CR/LF and in a
/// datagram that ends inside a line: the scan is over at the datagram's end,
/// it does not go on into the zeros after it and round to the first word.
#[test]
fn start_line_is_never_a_header_however_the_datagram_ends() {
    for start in [
        "\r\ni: start-line",
        "\n\nCall-ID: start-line",
        "\r\n\r\nI:x",
    ] {
        for pad in PADS {
            let m = format!("{start}\r\nX: {}", "a".repeat(pad));
            assert_eq!(call_id(m.as_bytes()), None, "{m:?}");
            assert_eq!(oracle::call_id(m.as_bytes()), None, "{m:?}");
        }
    }
}

/// Values of every length from every alignment, with whitespace inside, trailing
/// whitespace and folds: the value burst stops at whitespace only to look at it.
#[test]
fn folded_values() {
    for pad in 0..(SKIP_BURST * 8 + 16) {
        for len in [1, 7, 8, 9, 15, 16, 17, 127, 128, 129, 200] {
            let word: String = (0..len).map(|k| (b'a' + (k % 26) as u8) as char).collect();
            for (value, trail) in [
                (word.clone(), ""),
                (word.clone(), " \t "),
                (format!("{word} {word}"), "  "),
                (format!("{word}\t{word}"), "\t"),
                (format!("{word}\r\n {word}"), " "),
                (format!("{word}\r\n\t{word}\r\n  x"), ""),
            ] {
                let line = format!("Call-ID: {value}{trail}");
                let m = request(pad, "\r\n", &[&line]);
                let got = call_id(&m);
                assert_eq!(
                    got,
                    Some(value.as_bytes()),
                    "{:?}",
                    String::from_utf8_lossy(&m)
                );
                assert_eq!(oracle::call_id(&m).as_deref(), got);
            }
        }
    }
}

/// The From/To scans at every alignment: the long and compact names of another
/// header, and decoys that share their prefixes.
#[test]
fn from_and_to_at_every_alignment() {
    let cases: &[(&[&str], Header, Option<&str>)] = &[
        (
            &["From: <sip:a@h>;tag=1"],
            Header::FROM,
            Some("<sip:a@h>;tag=1"),
        ),
        (&["f: a"], Header::FROM, Some("a")),
        (&["F :b"], Header::FROM, Some("b")),
        (
            &["fr: x", "Fromx: y", "Fro: z", "f", " : c"],
            Header::FROM,
            Some("c"),
        ),
        (&["Frm: x"], Header::FROM, None),
        (&["To: <sip:b@h>"], Header::TO, Some("<sip:b@h>")),
        (&["t: d"], Header::TO, Some("d")),
        (&["T\t:e"], Header::TO, Some("e")),
        (&["Tx: y", "To-: z", "tO:f"], Header::TO, Some("f")),
        (&["Ta: x"], Header::TO, None),
    ];
    for pad in PADS {
        for &(lines, header, want) in cases {
            let m = request(pad, "\r\n", lines);
            assert_eq!(
                header_value(&m, header),
                want.map(str::as_bytes),
                "{:?}",
                String::from_utf8_lossy(&m)
            );
        }
    }
}

/// The User-Agent scan (the scanner filter's, `useragent.rs`) at every
/// alignment: a name longer than a word, no compact form, decoys that share
/// its prefixes; and the filter's verdict with the default prefixes.
#[test]
fn user_agent_at_every_alignment() {
    let cases: &[(&[&str], Option<&str>)] = &[
        (&["User-Agent: friendly-scanner"], Some("friendly-scanner")),
        (&["user-agent:v2"], Some("v2")),
        (
            &["USER-AGENT \t: Friendly-Scanner 1.0 "],
            Some("Friendly-Scanner 1.0"),
        ),
        (&["User-Agent", " : v4"], Some("v4")),
        (&["User-Agent:", "\tsipvicious"], Some("sipvicious")),
        (
            &[
                "User: x",
                "User-Agen: y",
                "User-Agentx: z",
                "Us",
                "u: c",
                "U-Agent: q",
                "User-Agent: v6",
            ],
            Some("v6"),
        ),
        (&["Call-ID: c", "User-Agent: sipcli"], Some("sipcli")),
        (&["User-Agent:  ", "User-Agent: v8"], Some("v8")),
        (&["u: compact-is-not-user-agent"], None),
        (&["X: y", "  User-Agent: continued"], None),
        (&["Server: friendly-scanner"], None),
    ];
    let defaults = patterns(DEFAULT_SCANNERS).unwrap();
    for eol in ["\r\n", "\n"] {
        for pad in PADS {
            for &(lines, want) in cases {
                let m = request(pad, eol, lines);
                let got = header_value(&m, Header::USER_AGENT);
                assert_eq!(
                    got,
                    want.map(str::as_bytes),
                    "{:?}",
                    String::from_utf8_lossy(&m)
                );
                assert_eq!(oracle::user_agent(&m).as_deref(), got, "oracle");
                let scanner = want.is_some_and(|v| {
                    let v = v.to_ascii_lowercase();
                    DEFAULT_SCANNERS.iter().any(|p| v.starts_with(p))
                });
                assert_eq!(is_scanner(&m, &defaults), scanner, "{want:?}");
            }
        }
    }
}

/// A scan of `m` with the buffer beyond `len` full of another datagram.
fn scan_over(m: &[u8], len: usize, complete: bool, header: Header, rest: &[u8]) -> Option<Span> {
    let mut b = ScanBuf::zeroed();
    b.fill(m);
    for (k, &x) in rest.iter().cycle().take(SCAN_MAX - len).enumerate() {
        b.bytes[len + k] = x;
    }
    scan(&b, len as u32, complete, header)
}

/// The kernel copies each datagram into a per-CPU buffer that still holds the
/// bytes of earlier, longer ones: a scan must read nothing at or beyond `len`.
#[test]
fn bytes_beyond_the_window_are_never_read() {
    let rests: [&[u8]; 4] = [
        b"\r\nCall-ID: stale\r\n",
        b"x\r\ni: stale\r\n",
        b"stale-value-without-whitespace-",
        b"\n",
    ];
    let msgs: Vec<Vec<u8>> = [
        &["Call-ID: abcdefghijklmnopqrstuvwxyz0123456789"][..],
        &["X: y"][..],
        &["i: a b c d e f g h"][..],
    ]
    .iter()
    .map(|lines| request(40, "\r\n", lines))
    .collect();
    for m in &msgs {
        for len in 0..=m.len() {
            for complete in [true, false] {
                let mut b = ScanBuf::zeroed();
                b.fill(&m[..len]);
                let clean = scan(&b, len as u32, complete, Header::CALL_ID);
                for rest in rests {
                    assert_eq!(
                        scan_over(&m[..len], len, complete, Header::CALL_ID, rest),
                        clean,
                        "{:?} then {:?}",
                        String::from_utf8_lossy(&m[..len]),
                        String::from_utf8_lossy(rest)
                    );
                }
            }
        }
    }
}

/// A datagram longer than the window: a Call-ID whose line ends inside the
/// window counts; one still open at the window's end does not (its end, or a
/// fold, is beyond it), nor one whose name or colon is cut. The value has
/// whitespace in every word, so the value burst never passes the window's last
/// word whole (the known wrap-around of a full window, which these tests stay
/// clear of).
#[test]
fn window_end_at_every_alignment() {
    let value = "ab cd ef gh ij kl mn op qr st uv wx yz";
    let head = "INVITE sip:b@h SIP/2.0\r\n";
    let line = format!("Call-ID: {value}\r\n");
    for line_end in SCAN_MAX - 40..SCAN_MAX + 56 {
        // Short lines that each begin like the header: no word before the Call-ID
        // is one the skip burst passes.
        let filler_len = line_end - head.len() - line.len();
        let k = (filler_len - 5) / 7;
        let mut filler = "Ca: x\r\n".repeat(k);
        filler.push_str(&format!("Ca:{}\r\n", "x".repeat(filler_len - 7 * k - 5)));
        let mut m = format!("{head}{filler}{line}").into_bytes();
        assert_eq!(m.len(), line_end);
        m.extend_from_slice(b"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
        assert!(m.len() > SCAN_MAX);
        // Found once the byte after the line's LF, which rules out a fold, is in
        // the window.
        let want = (line_end < SCAN_MAX).then_some(value.as_bytes());
        assert_eq!(call_id(&m), want, "line ends at {line_end}");
    }
}

/// `advance` calls until the scan of `m` is done, and its result.
fn steps(m: &[u8]) -> (u32, Option<Span>) {
    let mut b = ScanBuf::zeroed();
    let (len, complete) = b.fill(m);
    let mut s = HeaderScan::new(Header::CALL_ID, len, complete);
    let mut n = 1;
    while !s.advance(&b) {
        n += 1;
        assert!(n <= SCAN_WORDS, "not done within SCAN_WORDS steps");
    }
    (n, s.result())
}

/// The kernel runs one `bpf_loop` iteration per `advance` and stops when it
/// says the scan is done; user space loops the same way. `advance` says so as
/// soon as it has the answer: at most one step per word of the datagram, and
/// one more that finds its end.
#[test]
fn advance_is_done_with_the_datagram() {
    for pad in PADS {
        for lines in [&["X: y"][..], &["Call-ID: v"][..], &["i: a b c"][..]] {
            let m = request(pad, "\r\n", lines);
            let (n, got) = steps(&m);
            let mut b = ScanBuf::zeroed();
            let (len, complete) = b.fill(&m);
            assert_eq!(got, scan(&b, len, complete, Header::CALL_ID));
            let words = m.len().div_ceil(8) as u32;
            assert!(n <= words + 1, "{n} steps for {words} words");
        }
    }
    // One call per word at most, even where nothing is skipped.
    let m = b"\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nINVITE x SIP/2.0\r\nCa:1\r\nCa:2\r\ni: z";
    let (n, got) = steps(m);
    assert_eq!(
        got.map(|s| &m[s.start as usize..][..s.len as usize]),
        Some(&b"z"[..])
    );
    assert!(n <= m.len().div_ceil(8) as u32 + 1);
}

/// Ordinary headers, compact ones included, are lines no Call-ID can start in:
/// the skip burst passes them `SKIP_BURST` words per step, and a long value
/// passes the same way. Without the bursts a 4 kB request would take one
/// `bpf_loop` iteration per word.
#[test]
fn bursts_pass_ordinary_headers_and_long_values() {
    let headers = [
        "Via: SIP/2.0/UDP proxy.example.com:5060;branch=z9hG4bK776asdhds;received=192.0.2.1",
        "v: SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bKnashds8;rport=5060;received=192.0.2.2",
        "Max-Forwards: 70",
        "Contact: <sip:alice@pc33.example.com;transport=udp>;expires=3600;+sip.instance=\"x\"",
        "m: <sip:alice@pc33.example.com>",
        "CSeq: 314159 INVITE",
        "l: 0",
        "Record-Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>,<sip:p3.example.com;lr>",
        "Accept: application/sdp, application/pidf+xml, text/plain",
    ];
    let mut filler = Vec::new();
    while filler.iter().map(|h: &&str| h.len() + 2).sum::<usize>() < 2000 {
        filler.extend_from_slice(&headers);
    }
    let value = "x".repeat(1024);
    let call = format!("Call-ID: {value}");
    let mut lines = filler.clone();
    lines.push(&call);
    let m = request(0, "\r\n", &lines);
    let (n, got) = steps(&m);
    let s = got.expect("a Call-ID");
    assert_eq!(&m[s.start as usize..][..s.len as usize], value.as_bytes());
    // A burst per SKIP_BURST words before the Call-ID line and in its value,
    // and the words fed byte by byte: the start line's first, the Call-ID
    // line's name (two), the value's last, and the end of a burst cut short
    // where the line before the Call-ID and the value begin (a few, not one per
    // header: each of those would add a step per line).
    let before = m.len()
        - (call.len() + 2)
        - "CSeq: 1 INVITE\r\n\r\nCall-ID: body\r\ni: body\r\nFrom: body\r\nTo: body\r\n".len();
    let bursts = (before / 8).div_ceil(SKIP_BURST) + (value.len() / 8).div_ceil(SKIP_BURST);
    let fed = 8;
    assert!(
        (n as usize) <= bursts + fed,
        "{n} steps, expected at most {} bursts and {fed} fed words",
        bursts
    );
}
