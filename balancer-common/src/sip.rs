//! Small SIP byte classes shared by the scanners.

#[inline(always)]
pub const fn is_lws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

#[inline(always)]
pub const fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() {
        b + 32
    } else {
        b
    }
}

/// Whether a request begins a dialog (or a subscription) and so may create
/// dialog-affinity state: INVITE, SUBSCRIBE, REFER. Everything else (in-dialog
/// requests, OPTIONS, REGISTER, keepalives, responses) only follows state that
/// exists. `start` is the payload's first bytes (fewer when it is shorter);
/// methods are case-sensitive (RFC 3261, 7.1).
#[inline(always)]
pub fn starts_dialog(start: &[u8; 10]) -> bool {
    start[..7] == *b"INVITE " || start[..6] == *b"REFER " || start[..] == *b"SUBSCRIBE "
}

/// Whether a message starting with `start` is a request that never belongs
/// to a dialog (RFC 3261 10, RFC 3903 4): REGISTER, PUBLISH. Its key looks
/// up no affinity entry: a phone's re-registrations, often most of a
/// registrar's traffic, skip both affinity maps.
#[inline(always)]
pub fn never_in_dialog(start: &[u8; 10]) -> bool {
    start[..9] == *b"REGISTER " || start[..8] == *b"PUBLISH "
}

#[cfg(test)]
mod tests {
    use super::{never_in_dialog, starts_dialog};

    #[test]
    fn requests_outside_any_dialog() {
        let f = |s: &str| never_in_dialog(&first10(s.as_bytes()));
        assert!(f("REGISTER sip:a SIP/2.0"));
        assert!(f("PUBLISH sip:a@b SIP/2.0"));
        for m in [
            "INVITE sip:a@b SIP/2.0",
            "OPTIONS sip:a SIP/2.0",
            "register sip:a",
            "REGISTERX",
            "SIP/2.0 200 OK",
            "",
        ] {
            assert!(!f(m), "{m}");
        }
    }

    fn first10(s: &[u8]) -> [u8; 10] {
        let mut a = [0u8; 10];
        let n = s.len().min(10);
        a[..n].copy_from_slice(&s[..n]);
        a
    }

    #[test]
    fn dialog_starting_methods() {
        for m in [
            "INVITE sip:a@b SIP/2.0",
            "SUBSCRIBE sip:a@b SIP/2.0",
            "REFER sip:x SIP/2.0",
        ] {
            assert!(starts_dialog(&first10(m.as_bytes())), "{m}");
        }
        for m in [
            "OPTIONS sip:a@b SIP/2.0",
            "REGISTER sip:b SIP/2.0",
            "ACK sip:a@b SIP/2.0",
            "BYE sip:a@b SIP/2.0",
            "SIP/2.0 200 OK",
            "\r\n\r\n",
            "",
            "invite sip:a@b SIP/2.0",
            "INVITEX sip:a SIP/2.0",
            "SUBSCRIBED",
            "REFERENCE",
        ] {
            assert!(!starts_dialog(&first10(m.as_bytes())), "{m}");
        }
    }
}
