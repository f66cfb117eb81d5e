//! Key extractors for the other hashing algorithms of Kamailio's dispatcher:
//! From URI (1), To URI (2) and Request-URI user (3). Same bounded style as the
//! Call-ID scanner so the kernel can run them.

use crate::callid::{scan, Header, ScanBuf, Span};
use crate::sip::is_lws;

/// Longest start line or header value the extractors look into.
pub const KEY_MAX: usize = 256;

/// The URI inside a From/To value: between `<` and `>` when present, otherwise up
/// to the first `;` (header parameters) or whitespace.
pub fn uri_of(buf: &ScanBuf, v: Span) -> Option<Span> {
    let n = (v.len as usize).min(KEY_MAX);
    let base = v.start as usize;
    let mut open = None;
    let mut k = 0;
    while k < KEY_MAX {
        if k >= n {
            break;
        }
        let b = buf.at(base + k);
        if b == b'<' {
            open = Some(k + 1);
        } else if b == b'>' {
            if let Some(s) = open {
                return Some(Span {
                    start: (base + s) as u32,
                    len: (k - s) as u32,
                });
            }
        } else if open.is_none() && (b == b';' || is_lws(b) || b == b'\r') && k > 0 {
            // A name-addr always has '<', so without one this is an addr-spec.
            if !has_angle(buf, base + k, n - k) {
                return Some(Span {
                    start: base as u32,
                    len: k as u32,
                });
            }
        }
        k += 1;
    }
    if open.is_none() && n > 0 && n == v.len as usize {
        return Some(Span {
            start: base as u32,
            len: n as u32,
        });
    }
    None
}

fn has_angle(buf: &ScanBuf, from: usize, n: usize) -> bool {
    let mut k = 0;
    while k < KEY_MAX {
        if k >= n {
            break;
        }
        if buf.at(from + k) == b'<' {
            return true;
        }
        k += 1;
    }
    false
}

/// The user part of the Request-URI (`sip:USER@host`), for requests only.
pub fn ruri_user(buf: &ScanBuf, len: u32) -> Option<Span> {
    let len = len as usize;
    let mut i = 0;
    while i < len && i < 8 && (buf.at(i) == b'\r' || buf.at(i) == b'\n') {
        i += 1;
    }
    // Responses start with the SIP version, requests with a method.
    if len >= i + 4 && &buf.bytes[i..i + 4] == b"SIP/" {
        return None;
    }
    let mut state = 0; // 0 method, 1 scheme, 2 user
    let mut user_start = 0;
    let mut k = i;
    while k < i + KEY_MAX {
        if k >= len {
            break;
        }
        let b = buf.at(k);
        if b == b'\r' || b == b'\n' {
            return None;
        }
        match state {
            0 if b == b' ' => state = 1,
            1 if b == b':' => {
                state = 2;
                user_start = k + 1;
            }
            1 if b == b' ' || b == b'@' => return None,
            2 if b == b'@' => {
                if k == user_start {
                    return None;
                }
                return Some(Span {
                    start: user_start as u32,
                    len: (k - user_start) as u32,
                });
            }
            2 if b == b' ' || b == b';' || b == b'?' || b == b'>' => return None,
            _ => {}
        }
        k += 1;
    }
    None
}

/// User-space helpers on whole datagrams.
pub fn from_uri(payload: &[u8]) -> Option<&[u8]> {
    header_uri(payload, Header::FROM)
}

pub fn to_uri(payload: &[u8]) -> Option<&[u8]> {
    header_uri(payload, Header::TO)
}

fn header_uri(payload: &[u8], header: Header) -> Option<&[u8]> {
    let mut buf = ScanBuf::zeroed();
    let (len, complete) = buf.fill(payload);
    let v = scan(&buf, len, complete, header)?;
    let u = uri_of(&buf, v)?;
    Some(&payload[u.start as usize..(u.start + u.len) as usize])
}

pub fn request_user(payload: &[u8]) -> Option<&[u8]> {
    let mut buf = ScanBuf::zeroed();
    let (len, _) = buf.fill(payload);
    let u = ruri_user(&buf, len)?;
    Some(&payload[u.start as usize..(u.start + u.len) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@biloxi.com SIP/2.0\r\n\
From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n\
t: sip:bob@biloxi.com;tag=x\r\n\
Call-ID: a84b4c76e66710\r\n\r\n";

    #[test]
    fn from_to_ruri() {
        assert_eq!(from_uri(INVITE), Some(&b"sip:alice@atlanta.com"[..]));
        assert_eq!(to_uri(INVITE), Some(&b"sip:bob@biloxi.com"[..]));
        assert_eq!(request_user(INVITE), Some(&b"bob"[..]));
    }

    #[test]
    fn no_user_or_response() {
        assert_eq!(request_user(b"OPTIONS sip:biloxi.com SIP/2.0\r\n"), None);
        assert_eq!(request_user(b"SIP/2.0 200 OK\r\nTo: sip:a@b\r\n"), None);
        assert_eq!(request_user(b"INVITE sip:@h SIP/2.0\r\n"), None);
        assert_eq!(
            request_user(b"INVITE tel:+15551234@h;user=phone SIP/2.0\r\n"),
            Some(&b"+15551234"[..])
        );
    }

    #[test]
    fn quoted_display_name_and_bare_uri() {
        let m = b"INVITE sip:x@y SIP/2.0\r\nFrom: \"A <b>\" <sip:q@r>\r\nTo: <sip:t@u>\r\n";
        // A display name with '<' inside quotes is rare; we take the first '<...>'.
        assert!(from_uri(m).is_some());
        assert_eq!(to_uri(m), Some(&b"sip:t@u"[..]));
        let m = b"INVITE sip:x@y SIP/2.0\r\nFrom: sip:q@r\r\n";
        assert_eq!(from_uri(m), Some(&b"sip:q@r"[..]));
    }
}
