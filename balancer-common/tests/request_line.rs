//! The Request-URI user extractor on start lines the RFC 4475 corpus does not
//! have, each expectation read from `RuriScan`'s specification.

use balancer_common::keys::request_user;

#[test]
fn only_sip_slash_starts_a_response() {
    // "A start line beginning with `SIP/` (a response) has none": any start line
    // that differs from it in one of those four bytes is read as a request.
    assert_eq!(request_user(b"SIP/2.0 200 OK\r\n\r\n"), None);
    assert_eq!(request_user(b"SIP/ sip:u@h SIP/2.0\r\n\r\n"), None);
    for method in ["XIP/", "SXP/", "SIX/", "SIPX", "sip/", "SI", "S", "SIP"] {
        let m = format!("{method} sip:u@h SIP/2.0\r\n\r\n");
        assert_eq!(request_user(m.as_bytes()), Some(&b"u"[..]), "{method}");
    }
    // Shorter than four bytes, it cannot be a version.
    assert_eq!(request_user(b"S :u@"), Some(&b"u"[..]));
    // The same after leading line ends, in short datagrams.
    for lead in ["\r\n", "\r\n\r\n\r\n\r\n"] {
        let m = format!("{lead}SIP/ s:u@h");
        assert_eq!(request_user(m.as_bytes()), None, "{m:?}");
        let m = format!("{lead}SIPX s:u@h");
        assert_eq!(request_user(m.as_bytes()), Some(&b"u"[..]), "{m:?}");
    }
}

#[test]
fn what_ends_the_user_or_voids_it() {
    // The user runs from after the scheme's `:` to `@`; a space, `;`, `?` or `>`
    // before the `@`, an `@` or space in the scheme, or a line end: none.
    let u =
        |line: &str| request_user(line.as_bytes()).map(|u| String::from_utf8(u.to_vec()).unwrap());
    assert_eq!(
        u("INVITE sip:alice@h SIP/2.0\r\n").as_deref(),
        Some("alice")
    );
    assert_eq!(
        u("INVITE sip:alice:secret@h SIP/2.0\r\n").as_deref(),
        Some("alice:secret")
    );
    for none in [
        "INVITE sip:al ice@h SIP/2.0\r\n",
        "INVITE sip:al;ice@h SIP/2.0\r\n",
        "INVITE sip:al?ice@h SIP/2.0\r\n",
        "INVITE sip:al>ice@h SIP/2.0\r\n",
        "INVITE s@p:alice@h SIP/2.0\r\n",
        "INVITE sip alice@h SIP/2.0\r\n",
        "INVITE sip:alice\r\n@h SIP/2.0\r\n",
        "INVITE sip:alice\n@h SIP/2.0\r\n",
        "INVITE\r\n sip:alice@h SIP/2.0\r\n",
        "INVITE sip:@h SIP/2.0\r\n",
        "INVITE sip:alice",
    ] {
        assert_eq!(u(none), None, "{none:?}");
    }
}
