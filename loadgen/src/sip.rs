//! The SIP datagrams the generator sends: realistic shapes and sizes, each built
//! once as a template with a fixed-width slot for the Call-ID, so a datagram
//! costs one copy and one small write at send time.

use std::net::SocketAddr;

/// What a datagram is. INVITEs come in two shapes, because where the Call-ID
/// sits decides how far a Call-ID balancer must scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// INVITE with SDP (~900 bytes), Call-ID the second header.
    Invite,
    /// INVITE with SDP (~950 bytes), Call-ID the last header.
    InviteLate,
    /// Out-of-dialog OPTIONS (keepalive/qualify), ~330 bytes.
    Options,
    /// In-dialog BYE, ~280 bytes.
    Bye,
    /// 200 OK to a BYE the backend sent: passes back through the proxy at the
    /// target (its Via on top, the originating backend's below), ~330 bytes.
    Ok,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Invite,
        Kind::InviteLate,
        Kind::Options,
        Kind::Bye,
        Kind::Ok,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Invite => "invite",
            Kind::InviteLate => "invite-late",
            Kind::Options => "options",
            Kind::Bye => "bye",
            Kind::Ok => "ok",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// Every Call-ID in the pool has this many bytes, so templates have one slot size.
pub const CALL_ID_LEN: usize = 32;
const SLOT: &[u8; CALL_ID_LEN] = b"@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@";

/// Call-ID number `i` of the pool: 24 hex digits that look random (a mixing
/// function of `i`, so pools are the same on every run) and a host part.
pub fn call_id(i: u64) -> [u8; CALL_ID_LEN] {
    let a = mix(i);
    let b = mix(a ^ 0x9e37_79b9_7f4a_7c15);
    let s = format!("{:016x}{:08x}@lg.test", a, b as u32);
    let mut out = [0u8; CALL_ID_LEN];
    out.copy_from_slice(s.as_bytes());
    out
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A message with its Call-ID slot.
#[derive(Clone, Debug)]
pub struct Template {
    pub kind: Kind,
    pub bytes: Vec<u8>,
    /// Where the Call-ID value starts.
    pub slot: usize,
}

impl Template {
    /// Writes the message with `call_id` into `out` (cleared first).
    pub fn fill(&self, call_id: &[u8; CALL_ID_LEN], out: &mut [u8]) -> usize {
        let n = self.bytes.len();
        out[..n].copy_from_slice(&self.bytes);
        out[self.slot..self.slot + CALL_ID_LEN].copy_from_slice(call_id);
        n
    }
}

const SDP: &str = "v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 10.0.1.2\r\n\
s=Session SDP\r\n\
c=IN IP4 10.0.1.2\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 9 18 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:18 G729/8000\r\n\
a=fmtp:18 annexb=no\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

/// The template of `kind`, addressed to `target`, from `local` (the address
/// put in Via and Contact), with `origin` the backend whose request a 200 OK
/// answers.
pub fn template(kind: Kind, target: SocketAddr, local: SocketAddr, origin: SocketAddr) -> Template {
    let slot = std::str::from_utf8(SLOT).unwrap();
    let via = format!("Via: SIP/2.0/UDP {local};branch=z9hG4bK776asdhds;rport\r\n");
    let common = "Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n";
    let text = match kind {
        Kind::Invite | Kind::InviteLate => {
            let headers = format!(
                "{common}CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@{local};transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY\r\n\
Supported: replaces, timer, 100rel\r\n\
Session-Expires: 1800;refresher=uac\r\n\
User-Agent: sip-loadgen/0.1\r\n\
P-Asserted-Identity: <sip:+15551234567@atlanta.example.com>\r\n\
Content-Type: application/sdp\r\n"
            );
            let body = SDP;
            let (first, last) = if kind == Kind::Invite {
                (format!("Call-ID: {slot}\r\n"), String::new())
            } else {
                (
                    String::new(),
                    format!(
                        "Record-Route: <sip:proxy1.example.com;lr>, <sip:proxy2.example.com;lr>\r\n\
Call-ID: {slot}\r\n"
                    ),
                )
            };
            format!(
                "INVITE sip:bob@{target} SIP/2.0\r\n{via}{first}{headers}{last}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
        Kind::Options => format!(
            "OPTIONS sip:{target} SIP/2.0\r\n{via}{common}Call-ID: {slot}\r\n\
CSeq: 63104 OPTIONS\r\nContact: <sip:alice@{local}>\r\nAccept: application/sdp\r\n\
User-Agent: sip-loadgen/0.1\r\nContent-Length: 0\r\n\r\n"
        ),
        Kind::Bye => format!(
            "BYE sip:bob@{target} SIP/2.0\r\n{via}{common}Call-ID: {slot}\r\n\
CSeq: 314160 BYE\r\nUser-Agent: sip-loadgen/0.1\r\nContent-Length: 0\r\n\r\n"
        ),
        Kind::Ok => format!(
            "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP {target};branch=z9hG4bKproxy8a9s\r\n\
Via: SIP/2.0/UDP {origin};branch=z9hG4bKbackend71k;received={ip}\r\n\
From: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n\
To: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: {slot}\r\nCSeq: 2 BYE\r\nUser-Agent: sip-loadgen/0.1\r\nContent-Length: 0\r\n\r\n",
            ip = origin.ip()
        ),
    };
    let bytes = text.into_bytes();
    let slot = memchr::memmem::find(&bytes, SLOT).expect("template has a Call-ID slot");
    Template { kind, bytes, slot }
}

/// A weighted message mix, e.g. `invite=2,options=1` or `invite,bye` (weight 1).
pub fn parse_mix(s: &str) -> Result<Vec<(Kind, u32)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, w) = match part.split_once('=') {
            Some((n, w)) => (n, w.parse().map_err(|_| format!("bad weight in {part}"))?),
            None => (part, 1),
        };
        let kind = Kind::parse(name).ok_or_else(|| {
            format!("unknown message kind {name} (invite, invite-late, options, bye, ok)")
        })?;
        out.push((kind, w));
    }
    if out.iter().all(|(_, w)| *w == 0) {
        return Err("the mix sends nothing".into());
    }
    Ok(out)
}

/// The order messages are sent in: weights interleaved round by round, so a
/// batch holds a mix rather than a run of one kind.
pub fn schedule(mix: &[(Kind, u32)]) -> Vec<Kind> {
    let max = mix.iter().map(|(_, w)| *w).max().unwrap_or(0);
    let mut out = Vec::new();
    for round in 0..max {
        for (k, w) in mix {
            if round < *w {
                out.push(*k);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> (SocketAddr, SocketAddr, SocketAddr) {
        (
            "10.0.0.10:5060".parse().unwrap(),
            "10.0.1.2:40000".parse().unwrap(),
            "10.0.2.11:5060".parse().unwrap(),
        )
    }

    #[test]
    fn the_balancer_finds_each_call_id() {
        let (t, l, o) = addrs();
        for kind in Kind::ALL {
            let tpl = template(kind, t, l, o);
            let mut buf = vec![0u8; 2048];
            let id = call_id(7);
            let n = tpl.fill(&id, &mut buf);
            let got = balancer_common::callid::call_id(&buf[..n]);
            assert_eq!(got, Some(&id[..]), "{}", kind.name());
        }
    }

    #[test]
    fn sizes_are_realistic() {
        let (t, l, o) = addrs();
        let len = |k| template(k, t, l, o).bytes.len();
        assert!(
            (850..1000).contains(&len(Kind::Invite)),
            "{}",
            len(Kind::Invite)
        );
        assert!(len(Kind::InviteLate) > len(Kind::Invite));
        for k in [Kind::Options, Kind::Bye, Kind::Ok] {
            assert!((200..450).contains(&len(k)), "{} {}", k.name(), len(k));
        }
    }

    #[test]
    fn late_call_id_is_late() {
        let (t, l, o) = addrs();
        let early = template(Kind::Invite, t, l, o);
        let late = template(Kind::InviteLate, t, l, o);
        assert!(early.slot < 150, "{}", early.slot);
        assert!(late.slot > 500);
    }

    #[test]
    fn call_ids_are_distinct_and_fixed_width() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(call_id).collect();
        assert_eq!(ids.len(), 10_000);
        // The array type fixes the byte count; fixed width means more: the
        // whole slot is Call-ID, in the same layout for every number (24 hex
        // digits, zero-padded, then the host), never a shorter id padded out.
        let mut zero_led = 0;
        for id in &ids {
            let (hex, host) = id.split_at(24);
            assert!(
                hex.iter().all(|b| b.is_ascii_hexdigit()) && host == b"@lg.test",
                "{}",
                String::from_utf8_lossy(id)
            );
            zero_led += (hex[0] == b'0') as usize;
        }
        // A sixteenth of the ids start with a zero digit: the padding is used.
        assert!(zero_led > 0, "no id needed padding");
        // And the balancer reads all of it wherever the slot sits.
        let (t, l, o) = addrs();
        let mut buf = vec![0u8; 2048];
        for kind in Kind::ALL {
            let tpl = template(kind, t, l, o);
            for id in &ids {
                let n = tpl.fill(id, &mut buf);
                assert_eq!(n, tpl.bytes.len(), "{}", kind.name());
                let got = balancer_common::callid::call_id(&buf[..n]);
                assert_eq!(got, Some(&id[..]), "{}", kind.name());
            }
        }
    }

    #[test]
    fn mix_and_schedule() {
        let m = parse_mix("invite=2,ok").unwrap();
        assert_eq!(schedule(&m), vec![Kind::Invite, Kind::Ok, Kind::Invite]);
        assert!(parse_mix("register").is_err());
        assert!(parse_mix("invite=0").is_err());
    }
}
