//! `message_dispatch` at the edges its specification names: short datagrams that
//! are or are not keepalives, a value ending with the datagram, and the step
//! budget of the whole key search on the longest searches.

use balancer_common::hash::{hash_addr, hash_bytes};
use balancer_common::keys::{message_dispatch, Dispatch};
use balancer_common::maps::{reason, ALG_CALL_ID, ALG_FROM_URI};

const SRC: [u8; 16] = [198, 51, 100, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn d(m: &[u8], alg: u32) -> Dispatch {
    message_dispatch(m, alg, &SRC, 2)
}

#[test]
fn only_empty_or_line_end_datagrams_are_keepalives() {
    let by = |reason| Dispatch {
        hash: hash_addr(&SRC, 2),
        reason,
    };
    for ka in [&b""[..], b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"\n\n\n\n"] {
        assert_eq!(d(ka, ALG_CALL_ID), by(reason::FALLBACK_KEEPALIVE), "{ka:?}");
    }
    for not in [
        &b"x"[..],
        b"\r\nx",
        b"ab",
        b"\r\n\r\nx",
        b"\r\n\r\n\r",
        b"abcd",
    ] {
        assert_eq!(
            d(not, ALG_CALL_ID),
            by(reason::FALLBACK_NO_CALLID),
            "{not:?}"
        );
    }
}

#[test]
fn a_value_may_end_with_the_datagram() {
    // A whole datagram ends the last header's value; a truncated one does not.
    let m = b"INVITE sip:u@h SIP/2.0\r\nCall-ID: abc";
    let key = Dispatch {
        hash: hash_bytes(b"abc"),
        reason: reason::CALLID,
    };
    assert_eq!(d(m, ALG_CALL_ID), key);
    let m = b"INVITE sip:u@h SIP/2.0\r\nFrom: sip:a@b";
    let key = Dispatch {
        hash: hash_bytes(b"sip:a@b"),
        reason: reason::URI,
    };
    assert_eq!(d(m, ALG_FROM_URI), key);
}

#[test]
fn the_longest_search_fits_the_step_budget() {
    // Lines that begin like "From" cannot be skipped word by word, so the header
    // scan takes a step per word; the From at the end holds a URI as long as the
    // window, which takes URI_STEPS more.
    let mut m = b"INVITE sip:u@h SIP/2.0\r\n".to_vec();
    while m.len() < 3600 {
        m.extend_from_slice(b"fr:1\r\n");
    }
    let mut uri = b"sip:".to_vec();
    uri.resize(250, b'a');
    m.extend_from_slice(b"From: ");
    m.extend_from_slice(&uri);
    m.extend_from_slice(b";tag=1\r\n\r\n");
    let key = Dispatch {
        hash: hash_bytes(&uri),
        reason: reason::URI,
    };
    assert_eq!(d(&m, ALG_FROM_URI), key);
}
