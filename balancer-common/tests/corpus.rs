//! The scanner against the RFC 4475 torture messages and generated variations.

use balancer_common::callid::{call_id, SCAN_MAX};
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

/// File, From URI, To URI, Request-URI user.
type KeyRow = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
);

/// From URI, To URI and Request-URI user of every corpus message (`None`: the
/// extractor finds none). Pinned from the extractors and checked by hand against
/// RFC 4475; notable: `intmeth` has `?`/`;` in its R-URI user (none), `badaspec`
/// keeps the spaces inside `< ... >`, `longreq`'s To is not closed within the
/// 256-byte window, `insuf` has no From/To, `inv2543` keeps `;user=phone`
/// (inside the angle brackets).
const KEYS: [KeyRow; 50] = [
    ("wsinv.dat", Some("sip:jdrosen@example.com"), Some("sip:vivekg@chair-dnrc.example.com"), Some("vivekg")),
    ("intmeth.dat", Some("sip:mundane@example.com"), Some("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com"), None),
    ("esc01.dat", Some("sip:I%20have%20spaces@example.net"), Some("sip:%75se%72@example.com"), Some("sips%3Auser%40example.com")),
    ("escnull.dat", Some("sip:null-%00-null@example.com"), Some("sip:null-%00-null@example.com"), None),
    ("esc02.dat", Some("sip:resource@example.com"), Some("sip:resource@example.com"), None),
    ("lwsdisp.dat", Some("sip:caller@example.com"), Some("sip:user@example.com"), Some("user")),
    ("longreq.dat", Some("sip:amazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylongcallername@example.net"), None, Some("user")),
    ("dblreq.dat", Some("sip:j.user@example.com"), Some("sip:j.user@example.com"), None),
    ("semiuri.dat", Some("sip:caller@example.org"), Some("sip:j_user@example.com"), None),
    ("transports.dat", Some("sip:caller@example.com"), Some("sip:user@example.com"), Some("user")),
    ("mpart01.dat", Some("sip:fluffy@example.com"), Some("sip:kumiko@example.org"), Some("kumiko")),
    ("unreason.dat", Some("sip:user@example.com"), Some("sip:user@example.edu"), None),
    ("noreason.dat", Some("sip:user@example.com"), Some("sip:user@example.edu"), None),
    ("badinv01.dat", Some("sip:caller@example.net"), Some("sip:j.user@example.com"), Some("user")),
    ("clerr.dat", Some("sip:caller@example.net"), Some("sip:j.user@example.com"), Some("user")),
    ("ncl.dat", Some("sip:caller@example.net"), Some("sip:j.user@example.com"), Some("user")),
    ("scalar02.dat", Some("sip:user@example.com"), Some("sip:user@example.com"), None),
    ("scalarlg.dat", Some("sip:other@example.net"), Some("sip:user@example.com"), None),
    ("quotbal.dat", Some("sip:caller@example.net"), Some("sip:j.user@example.com"), Some("user")),
    ("ltgtruri.dat", Some("sip:caller@example.net"), Some("sip:user@example.com"), Some("user")),
    ("lwsruri.dat", Some("sip:caller@example.net"), Some("sip:user@example.com"), Some("user")),
    ("lwsstart.dat", Some("sip:caller@example.net"), Some("sip:user@example.com"), None),
    ("trws.dat", Some("sip:local-resource@example.com"), Some("sip:remote-target@example.com"), Some("remote-target")),
    ("escruri.dat", Some("sip:caller@example.net"), Some("sip:user@example.com"), Some("user")),
    ("baddate.dat", Some("sip:caller@example.net"), Some("sip:user@example.com"), Some("user")),
    ("regbadct.dat", Some("sip:user@example.com"), Some("sip:user@example.com"), None),
    ("badaspec.dat", Some("sip:a.g.bell@example.com"), Some(" sip:t.watson@example.org "), Some("user")),
    ("baddn.dat", Some("sip:a.g.bell@example.com"), Some("sip:t.watson@example.org"), Some("t.watson")),
    ("badvers.dat", Some("sip:a.g.bell@example.com"), Some("sip:t.watson@example.org"), Some("t.watson")),
    ("mismatch01.dat", Some("sip:caller@example.net"), Some("sip:j.user@example.com"), Some("user")),
    ("mismatch02.dat", Some("sip:caller@example.net"), Some("sip:j.user@example.com"), Some("user")),
    ("bigcode.dat", Some("sip:user@example.com"), Some("sip:user@example.edu"), None),
    ("badbranch.dat", Some("sip:caller@example.org"), Some("sip:user@example.com"), Some("user")),
    ("insuf.dat", None, None, Some("user")),
    ("unkscm.dat", Some("sip:caller@example.net"), Some("sip:user@example.com"), None),
    ("novelsc.dat", Some("sip:caller@example.net"), Some("sip:user@example.com"), None),
    ("unksm2.dat", Some("http://www.example.com"), Some("isbn:2983792873"), None),
    ("bext01.dat", Some("sip:caller@example.net"), Some("sip:j_user@example.com"), Some("user")),
    ("invut.dat", Some("sip:caller@example.net"), Some("sip:j.user@example.com"), Some("user")),
    ("regaut01.dat", Some("sip:j.user@example.com"), Some("sip:j.user@example.com"), None),
    ("multi01.dat", Some("sip:caller@example.com"), Some("sip:user@example.com"), Some("user")),
    ("mcl01.dat", Some("sip:other@example.net"), Some("sip:user@example.com"), Some("user")),
    ("bcast.dat", Some("sip:user@example.com"), Some("sip:user@example.edu"), None),
    ("zeromf.dat", Some("sip:caller@example.net"), Some("sip:user@example.com"), Some("user")),
    ("cparam01.dat", Some("sip:watson@example.com"), Some("sip:watson@example.com"), None),
    ("cparam02.dat", Some("sip:watson@example.com"), Some("sip:watson@example.com"), None),
    ("regescrt.dat", Some("sip:user@example.com"), Some("sip:user@example.com"), None),
    ("sdp01.dat", Some("sip:caller@example.net"), Some("sip:j_user@example.com"), Some("user")),
    ("inv2543.dat", Some("sip:+13035551111@ift.client.example.net;user=phone"), Some("sip:+16505552222@ss1.example.net"), Some("UserB")),
    ("test.dat", Some("ralph@example.com"), Some("alan@jasomi.com"), Some("alan")),

];

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

#[test]
fn rfc4475_from_to_and_request_uri_keys() {
    let msgs = corpus_messages();
    assert_eq!(msgs.len(), KEYS.len());
    for ((name, msg), (file, from, to, user)) in msgs.iter().zip(KEYS) {
        assert_eq!(name, file);
        let s = |o: Option<&[u8]>| o.map(|b| String::from_utf8(b.to_vec()).unwrap());
        assert_eq!(s(from_uri(msg)).as_deref(), from, "{name} From");
        assert_eq!(s(to_uri(msg)).as_deref(), to, "{name} To");
        assert_eq!(s(request_user(msg)).as_deref(), user, "{name} R-URI user");
    }
}

/// `message_hash` per algorithm over the corpus: the key's hash when there is one,
/// the documented fallbacks otherwise.
#[test]
fn rfc4475_message_hash_per_algorithm() {
    let src = [192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let by_source = hash_addr(&src, 2);
    let key = |k: Option<&str>, fallback: Dispatch| match k {
        Some(k) => Dispatch {
            hash: hash_bytes(k.as_bytes()),
            reason: reason::URI,
        },
        None => fallback,
    };
    let mut by_alg = [0; 3];
    for ((name, msg), (_, from, to, user)) in corpus_messages().iter().zip(KEYS) {
        let no_key = Dispatch {
            hash: by_source,
            reason: reason::FALLBACK_NO_CALLID,
        };
        let by_cid = match call_id(msg) {
            Some(c) => Dispatch {
                hash: hash_bytes(c),
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
        for (i, k) in [from, to, user].iter().enumerate() {
            by_alg[i] += k.is_some() as u32;
        }
    }
    // The corpus exercises both the keys and the fallbacks (From, To, R-URI user).
    assert_eq!(by_alg, [49, 48, 30]);
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
