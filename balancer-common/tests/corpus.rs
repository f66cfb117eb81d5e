//! The scanner against the RFC 4475 torture messages and generated variations.

mod oracle;

use balancer_common::callid::{call_id, header_value, Header, SCAN_MAX};
use balancer_common::hash::{hash_addr, hash_bytes};
use balancer_common::keys::{
    from_uri, message_dispatch, message_hash, request_user, to_uri, Dispatch,
};
use balancer_common::maps::{
    reason, ALG_CALL_ID, ALG_FROM_URI, ALG_REQUEST_URI, ALG_SOURCE, ALG_TO_URI,
};
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
        // The oracle's header reading agrees with this independent list too.
        assert_eq!(oracle::call_id(&msg).as_deref(), got, "{} oracle", cols[0]);
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

/// The User-Agent scan (the scanner filter's) reads the torture messages'
/// headers as the grammar does.
#[test]
fn rfc4475_user_agents_match_the_oracle() {
    let mut found = 0;
    for (name, msg) in corpus_messages() {
        let got = header_value(&msg, Header::USER_AGENT);
        assert_eq!(oracle::user_agent(&msg).as_deref(), got, "{name}");
        found += got.is_some() as usize;
    }
    assert!(found >= 1, "the corpus has a User-Agent");
}

fn corpus_messages() -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir();
    let tsv = std::fs::read_to_string(dir.join("expected.tsv")).unwrap();
    tsv.lines()
        .skip(1)
        .map(|line| {
            let name = line.split('\t').next().unwrap().to_string();
            let msg = std::fs::read(dir.join(&name)).unwrap();
            (name, msg)
        })
        .collect()
}

/// Keys where RFC 3261's grammar rejects the part they come from, so the
/// oracle has no answer: (file, key, expected, why). Each expectation is derived
/// by hand from the message text and the extractor's specification in `keys.rs`.
const BY_HAND: &[(&str, Key, Option<&str>, &str)] = &[
    (
        "quotbal.dat",
        Key::To,
        Some("sip:j.user@example.com"),
        "`\"Mr. J. User <sip:j.user@example.com>`: the quote never closes; the \
         extractor does not read quotes, the first `<...>` pair is the URI",
    ),
    (
        "baddn.dat",
        Key::From,
        Some("sip:a.g.bell@example.com"),
        "`Bell, Alexander <sip:...>`: `,` is no token character, so no display-name; \
         the extractor takes what is between `<` and `>`",
    ),
    (
        "baddn.dat",
        Key::To,
        Some("sip:t.watson@example.org"),
        "`Watson, Thomas <sip:...>`: as for its From",
    ),
    (
        "test.dat",
        Key::From,
        Some("ralph@example.com"),
        "`ralph@example.com` has no scheme; without `<` the value is taken as an \
         addr-spec up to `;` or whitespace: here all of it",
    ),
    (
        "test.dat",
        Key::To,
        Some("alan@jasomi.com"),
        "`TO : alan@jasomi.com`: as for its From",
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    From,
    To,
    User,
}

/// What the extractor is expected to find for `key` in message `name`: the
/// oracle's answer, or the hand-derived one where the grammar has none.
fn expected(name: &str, msg: &[u8], key: Key) -> Option<Vec<u8>> {
    let verdict = match key {
        Key::From => oracle::from_uri(msg),
        Key::To => oracle::to_uri(msg),
        Key::User => oracle::request_user(msg),
    };
    let by_hand = BY_HAND.iter().find(|(f, k, _, _)| *f == name && *k == key);
    match (verdict, by_hand) {
        (oracle::Verdict::Key(k), None) => k,
        (oracle::Verdict::Invalid(why), Some((_, _, want, _))) => {
            eprintln!("{name} {key:?}: grammar says {why}; by hand");
            want.map(|w| w.as_bytes().to_vec())
        }
        (v, h) => panic!(
            "{name} {key:?}: oracle {v:?}, hand-derived entry {h:?}: exactly one must answer"
        ),
    }
}

/// The oracle on a few messages, each worked out by hand from the RFC 4475 text:
/// the oracle must not be vacuous where the corpus is hard.
#[test]
fn oracle_spot_checks() {
    let msgs = corpus_messages();
    let msg = |n: &str| &msgs.iter().find(|(m, _)| m == n).unwrap().1[..];
    let key = |k: &str| oracle::Verdict::Key(Some(k.as_bytes().to_vec()));
    // `from   : "J Rosenberg \\\""       <sip:jdrosen@example.com>`: a quoted-string
    // with quoted-pairs (`\\`, `\"`), then LWS, then the name-addr's URI.
    assert_eq!(
        oracle::from_uri(msg("wsinv.dat")),
        key("sip:jdrosen@example.com")
    );
    // `TO :` then a fold, then `sip:vivekg@chair-dnrc.example.com ;   tag = ...`:
    // an addr-spec, cut at the LWS before its parameter.
    assert_eq!(
        oracle::to_uri(msg("wsinv.dat")),
        key("sip:vivekg@chair-dnrc.example.com")
    );
    // `To: "Watson, Thomas" < sip:t.watson@example.org >`: what the brackets hold.
    assert_eq!(
        oracle::to_uri(msg("badaspec.dat")),
        key(" sip:t.watson@example.org ")
    );
    // longreq's To `"I have a user name of ... proportion"<sip:user@...` closes its
    // `>` well past the 256th byte of the value: no key.
    assert_eq!(
        oracle::to_uri(msg("longreq.dat")),
        oracle::Verdict::Key(None)
    );
    // `INVITE sip:sips%3Auser%40example.com@example.net`: escapes stay as they are.
    assert_eq!(
        oracle::request_user(msg("esc01.dat")),
        key("sips%3Auser%40example.com")
    );
    // intmeth's user holds `?` and `;` (user-unreserved): specified as none.
    assert_eq!(
        oracle::request_user(msg("intmeth.dat")),
        oracle::Verdict::Key(None)
    );
    // `INVITE  sip:user@example.com  SIP/2.0`: two SPs, the Request-URI is empty.
    assert_eq!(
        oracle::request_user(msg("lwsstart.dat")),
        oracle::Verdict::Key(None)
    );
    // A Status-Line (RFC 4475 has no response) has no Request-URI.
    assert_eq!(
        oracle::request_user(b"SIP/2.0 200 OK\r\n"),
        oracle::Verdict::Key(None)
    );
    // insuf has no From and no To at all.
    assert_eq!(
        oracle::from_uri(msg("insuf.dat")),
        oracle::Verdict::Key(None)
    );
    // Every hand-derived entry stands where the grammar has no answer.
    for (file, k, _, why) in BY_HAND {
        let v = match k {
            Key::From => oracle::from_uri(msg(file)),
            Key::To => oracle::to_uri(msg(file)),
            Key::User => oracle::request_user(msg(file)),
        };
        assert!(
            matches!(v, oracle::Verdict::Invalid(_)),
            "{file} {k:?} ({why}): {v:?}"
        );
    }
}

#[test]
fn rfc4475_from_to_and_request_uri_keys() {
    let msgs = corpus_messages();
    let mut bad = Vec::new();
    for (name, msg) in &msgs {
        // The oracle does not model the 4096-byte scan window.
        assert!(msg.len() < SCAN_MAX, "{name}");
        let got = [from_uri(msg), to_uri(msg), request_user(msg)];
        for (key, got) in [Key::From, Key::To, Key::User].into_iter().zip(got) {
            let want = expected(name, msg, key);
            if got.map(<[u8]>::to_vec) != want {
                bad.push(format!(
                    "{name} {key:?}: extractor {:?}, oracle {:?}",
                    got.map(String::from_utf8_lossy),
                    want.as_deref().map(String::from_utf8_lossy)
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// `message_hash` per algorithm over the corpus: the key's hash when there is one,
/// the documented fallbacks otherwise.
#[test]
fn rfc4475_message_hash_per_algorithm() {
    let src = [192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let by_source = hash_addr(&src, 2);
    let key = |k: Option<Vec<u8>>, fallback: Dispatch| match k {
        Some(k) => Dispatch {
            hash: hash_bytes(&k),
            reason: reason::URI,
        },
        None => fallback,
    };
    // Messages with and without each key (From, To, R-URI user), by the oracle.
    let mut with = [0; 3];
    let msgs = corpus_messages();
    for (name, msg) in &msgs {
        let [from, to, user] = [Key::From, Key::To, Key::User].map(|k| expected(name, msg, k));
        for (i, k) in [&from, &to, &user].iter().enumerate() {
            with[i] += k.is_some() as usize;
        }
        let no_key = Dispatch {
            hash: by_source,
            reason: reason::FALLBACK_NO_CALLID,
        };
        let by_cid = match oracle::call_id(msg) {
            Some(c) => Dispatch {
                hash: hash_bytes(&c),
                reason: reason::CALLID,
            },
            None => no_key,
        };
        let d = |alg| message_dispatch(msg, alg, &src, 2);
        assert_eq!(d(ALG_CALL_ID), by_cid, "{name}");
        assert_eq!(d(ALG_FROM_URI), key(from, no_key), "{name}");
        assert_eq!(d(ALG_TO_URI), key(to, no_key), "{name}");
        // No Request-URI user: the Call-ID, then the source.
        assert_eq!(d(ALG_REQUEST_URI), key(user, by_cid), "{name}");
        assert_eq!(
            d(ALG_SOURCE),
            Dispatch {
                hash: by_source,
                reason: reason::SOURCE
            },
            "{name}"
        );
        for alg in [ALG_CALL_ID, ALG_FROM_URI, ALG_TO_URI, ALG_REQUEST_URI] {
            assert_eq!(message_hash(msg, alg, &src, 2), d(alg).hash);
        }
    }
    // The corpus exercises both the key and the fallback of every algorithm.
    for (alg, n) in ["From", "To", "R-URI user"].iter().zip(with) {
        assert!(
            0 < n && n < msgs.len(),
            "{alg}: {n} of {} messages have one",
            msgs.len()
        );
    }
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
