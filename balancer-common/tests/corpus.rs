//! The scanner against the RFC 4475 torture messages and generated variations.

use balancer_common::callid::{call_id, SCAN_MAX};
use balancer_common::hash::hash_bytes;
use proptest::prelude::*;
use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/rfc4475")
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn rfc4475_corpus_matches_expected() {
    let dir = corpus_dir();
    let tsv = std::fs::read_to_string(dir.join("expected.tsv")).unwrap();
    let mut checked = 0;
    for line in tsv.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let msg = std::fs::read(dir.join(cols[0])).unwrap();
        let got = call_id(&msg);
        let n: usize = cols[3].parse().unwrap();
        if n == 0 {
            assert_eq!(got, None, "{}", cols[0]);
        } else {
            // With several Call-IDs the first one wins.
            let first = cols[5].split(" || ").next().unwrap();
            assert_eq!(got, Some(&unhex(first)[..]), "{}", cols[0]);
        }
        checked += 1;
    }
    assert_eq!(checked, 50);
}

/// The repo keeps a copy of the shared corpus; when the shared one is beside the
/// checkout, make sure the copy has not drifted.
#[test]
fn corpus_copy_matches_shared() {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/rfc4475");
    if !shared.is_dir() {
        eprintln!("no shared corpus beside the checkout; skipping the comparison");
        return;
    }
    for e in std::fs::read_dir(&shared).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            std::fs::read(corpus_dir().join(name)).unwrap(),
            "{name:?}"
        );
    }
}

fn message(name: &str, pre: &str, post: &str, value: &str, eol: &str) -> Vec<u8> {
    format!(
        "INVITE sip:bob@example.com SIP/2.0{eol}Via: SIP/2.0/UDP h;branch=z9hG4bK1{eol}\
         Max-Forwards: 70{eol}{name}{pre}:{post}{value}{eol}CSeq: 1 INVITE{eol}{eol}v=0{eol}"
    )
    .into_bytes()
}

fn name_variant() -> impl Strategy<Value = String> {
    prop_oneof![
        "[cC][aA][lL][lL]-[iI][dD]".prop_map(|s| s),
        Just("i".to_string()),
        Just("I".to_string()),
    ]
}

fn lws() -> impl Strategy<Value = String> {
    // Spaces, tabs, and line folding (CRLF + at least one SP/HT).
    prop::collection::vec(
        prop_oneof![Just(" "), Just("\t"), Just("\r\n "), Just("\r\n\t")],
        0..4,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_or_escape(data in prop::collection::vec(any::<u8>(), 0..6000)) {
        if let Some(v) = call_id(&data) {
            // call_id returns a subslice of the input: it cannot point outside it, and it
            // is never longer than the scan window.
            prop_assert!(v.len() <= SCAN_MAX);
            prop_assert!(!v.is_empty());
        }
    }

    #[test]
    fn sip_like_bytes_never_panic(data in prop::collection::vec(
        prop_oneof![Just(b'\r'), Just(b'\n'), Just(b' '), Just(b':'), Just(b'i'), Just(b'C'), any::<u8>()], 0..600)) {
        let mut m = b"INVITE sip:a@b SIP/2.0\r\n".to_vec();
        m.extend_from_slice(&data);
        let _ = call_id(&m);
    }

    #[test]
    fn variations_give_the_same_call_id(
        name in name_variant(),
        pre in lws(),
        post in lws(),
        value in "[A-Za-z0-9.@_~!%*+'`-]{1,200}",
        trailing in "[ \t]{0,3}",
        lf_only in any::<bool>(),
    ) {
        let eol = if lf_only { "\n" } else { "\r\n" };
        let pre = if lf_only { pre.replace("\r\n", "\n") } else { pre };
        let post = if lf_only { post.replace("\r\n", "\n") } else { post };
        let canonical = message("Call-ID", "", " ", &value, "\r\n");
        let varied = message(&name, &pre, &post, &format!("{value}{trailing}"), eol);
        let a = call_id(&canonical).map(<[u8]>::to_vec);
        let b = call_id(&varied).map(<[u8]>::to_vec);
        prop_assert_eq!(a.as_deref(), Some(value.as_bytes()));
        prop_assert_eq!(b.as_deref(), Some(value.as_bytes()));
        prop_assert_eq!(hash_bytes(&a.unwrap()), hash_bytes(&b.unwrap()));
    }
}
