//! The SIP messages a probe sends, and parsing the answer.

use std::net::SocketAddr;

use super::Params;

/// A probe request. `tag` (in the Call-ID and the From tag) and `branch` are
/// what an answer must echo to count: each must carry enough random bits that
/// nobody who has not seen the probe can guess it (see [`Ids`]).
pub struct Probe<'a> {
    pub params: &'a Params,
    pub backend: SocketAddr,
    pub local: SocketAddr,
    pub tag: &'a str,
    pub branch: &'a str,
    pub cseq: u32,
}

/// Random bits per identifier: far beyond the 64 an off-path attacker would
/// have to guess within one probe's timeout.
const ID_BYTES: usize = 16;

/// The identifiers of one probe, from the kernel's random source: a Call-ID
/// or branch an attacker could predict (a pid and a counter) would let forged
/// answers keep a dead backend up.
pub struct Ids {
    pub tag: String,
    pub branch: String,
}

impl Ids {
    pub fn new() -> Result<Ids, getrandom::Error> {
        let mut b = [0u8; 2 * ID_BYTES];
        getrandom::getrandom(&mut b)?;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        Ok(Ids {
            tag: hex(&b[..ID_BYTES]),
            branch: hex(&b[ID_BYTES..]),
        })
    }
}

fn host(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.to_string(),
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    }
}

fn host_ip(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.ip().to_string(),
        SocketAddr::V6(v) => format!("[{}]", v.ip()),
    }
}

impl Probe<'_> {
    pub fn branch(&self) -> String {
        format!("z9hG4bK-bal-{}", self.branch)
    }

    pub fn call_id(&self) -> String {
        format!("bal-{}@{}", self.tag, host_ip(self.local))
    }

    pub fn ruri(&self) -> String {
        self.params
            .uri
            .clone()
            .unwrap_or_else(|| format!("sip:{}", host(self.backend)))
    }

    fn from(&self) -> String {
        self.params
            .from
            .clone()
            .unwrap_or_else(|| format!("sip:balancer@{}", host_ip(self.local)))
    }

    /// The request: OPTIONS (or the configured method), or the deep check's INVITE.
    pub fn request(&self) -> String {
        let body = if self.params.deep() {
            let (net, ip) = match self.local {
                SocketAddr::V4(v) => ("IP4", v.ip().to_string()),
                SocketAddr::V6(v) => ("IP6", v.ip().to_string()),
            };
            // A real offer (PCMU to the discard port) so servers that refuse
            // INVITEs without SDP still run their dialplan.
            format!(
                "v=0\r\no=balancer 1 1 IN {net} {ip}\r\ns=health check\r\nc=IN {net} {ip}\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
            )
        } else {
            String::new()
        };
        let to = format!("<{}>", self.ruri());
        self.message(&self.params.method, &to, &self.branch(), self.cseq, &body)
    }

    /// CANCEL for the deep check's INVITE (same branch, Call-ID, From, CSeq number).
    pub fn cancel(&self) -> String {
        let to = format!("<{}>", self.ruri());
        self.message("CANCEL", &to, &self.branch(), self.cseq, "")
    }

    /// ACK for a final response to the INVITE (`to` is the response's To value,
    /// with its tag). A 2xx ACK is a new transaction; for a non-2xx it reuses the
    /// INVITE's branch (RFC 3261 17.1.1.3).
    pub fn ack(&self, to: &str, success: bool) -> String {
        let branch = if success {
            format!("{}-ack", self.branch())
        } else {
            self.branch()
        };
        self.message("ACK", to, &branch, self.cseq, "")
    }

    /// BYE after a 2xx to the deep check's INVITE.
    pub fn bye(&self, to: &str) -> String {
        let branch = format!("{}-bye", self.branch());
        self.message("BYE", to, &branch, self.cseq + 1, "")
    }

    /// Every message of a probe: the same Via host, From, Call-ID; a Contact
    /// on requests that may set up a dialog; Content-Type with a body.
    fn message(&self, method: &str, to: &str, branch: &str, cseq: u32, body: &str) -> String {
        let via = host(self.local);
        let contact = if ["CANCEL", "ACK", "BYE"].contains(&method) {
            String::new()
        } else {
            format!("Contact: <sip:balancer@{via}>\r\n")
        };
        let ctype = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        format!(
            "{method} {ruri} SIP/2.0\r\n\
Via: SIP/2.0/UDP {via};branch={branch};rport\r\n\
Max-Forwards: 70\r\n\
From: <{from}>;tag={tag}\r\n\
To: {to}\r\n\
Call-ID: {call_id}\r\n\
CSeq: {cseq} {method}\r\n\
{contact}User-Agent: sip-xdp-balancer health check\r\n\
{ctype}Content-Length: {len}\r\n\r\n{body}",
            ruri = self.ruri(),
            from = self.from(),
            tag = self.tag,
            call_id = self.call_id(),
            len = body.len(),
        )
    }
}

/// The parts of a response the prober needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    pub call_id: String,
    /// The `branch` parameter of the topmost Via, if it has one.
    pub branch: Option<String>,
    pub cseq_method: String,
    /// Free of control characters (the deep check copies it into its ACK and BYE).
    pub to: String,
}

impl Response {
    /// Whether this answers `probe`'s request (or its CANCEL, which shares
    /// the branch): the same Call-ID, the same branch, and the same method.
    pub fn answers(&self, probe: &Probe, method: &str) -> bool {
        self.call_id == probe.call_id()
            && self.branch.as_deref() == Some(probe.branch().as_str())
            && self.cseq_method == method
    }
}

/// A header line as RFC 3261 allows it: no CR, LF or other control
/// characters but HTAB. Anything else is not SIP, and a bare CR or LF in a
/// value we echo would add headers of the sender's choosing to our messages.
fn clean(line: &str) -> bool {
    !line.chars().any(|c| c.is_control() && c != '\t')
}

/// The `branch` parameter of a Via value's first entry.
fn via_branch(value: &str) -> Option<String> {
    let first = value.split(',').next()?;
    first.split(';').skip(1).find_map(|param| {
        let (name, v) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("branch")
            .then(|| v.trim().to_string())
    })
}

/// A response's status and the headers the prober matches on; `None` for a
/// request, or for a header section that is not well formed (a control
/// character anywhere in it).
pub fn parse_response(msg: &[u8]) -> Option<Response> {
    let head = match memchr::memmem::find(msg, b"\r\n\r\n") {
        Some(end) => &msg[..end],
        None => msg,
    };
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?;
    if !clean(status) {
        return None;
    }
    let code = status
        .strip_prefix("SIP/2.0 ")?
        .get(..3)?
        .parse::<u16>()
        .ok()?;
    let (mut call_id, mut branch, mut cseq_method, mut to) = (None, None, None, None);
    for l in lines {
        if !clean(l) {
            return None;
        }
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "call-id" | "i" => call_id = Some(value.to_string()),
            "cseq" => cseq_method = value.split_whitespace().nth(1).map(str::to_string),
            "to" | "t" => to = Some(value.to_string()),
            // Only the topmost Via is ours.
            "via" | "v" if branch.is_none() => branch = Some(via_branch(value)),
            _ => {}
        }
    }
    Some(Response {
        code,
        call_id: call_id?,
        branch: branch.flatten(),
        cseq_method: cseq_method?,
        to: to.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::config::params;
    use crate::health::HealthConfig;

    #[test]
    fn probes_are_well_formed_and_answers_parse() {
        let p = params(3, 2);
        let probe = Probe {
            params: &p,
            backend: "10.0.2.11:5060".parse().unwrap(),
            local: "10.0.2.1:40000".parse().unwrap(),
            tag: "7a",
            branch: "b7",
            cseq: 7,
        };
        let m = probe.request();
        assert!(m.starts_with("OPTIONS sip:10.0.2.11:5060 SIP/2.0\r\n"));
        for h in [
            "Via: SIP/2.0/UDP 10.0.2.1:40000;branch=z9hG4bK-bal-b7;rport\r\n",
            "Max-Forwards: 70\r\n",
            "From: <sip:balancer@10.0.2.1>;tag=7a\r\n",
            "To: <sip:10.0.2.11:5060>\r\n",
            "Call-ID: bal-7a@10.0.2.1\r\n",
            "CSeq: 7 OPTIONS\r\n",
            "Contact: <sip:balancer@10.0.2.1:40000>\r\n",
            "User-Agent: ",
        ] {
            assert!(m.contains(h), "{h} in {m}");
        }
        assert!(m.ends_with("Content-Length: 0\r\n\r\n"));
        assert_eq!(
            balancer_common::callid::call_id(m.as_bytes()),
            Some(&b"bal-7a@10.0.2.1"[..])
        );
        let r = parse_response(b"SIP/2.0 503 Service Unavailable\r\nVia: SIP/2.0/UDP 10.0.2.1:40000;rport=40000;branch=z9hG4bK-bal-b7;received=10.0.2.1\r\nVia: SIP/2.0/UDP x;branch=other\r\nTo: <sip:a>;tag=9\r\nCall-ID: bal-7a@10.0.2.1\r\nCSeq: 7 OPTIONS\r\n\r\n").unwrap();
        assert_eq!(r.code, 503);
        assert_eq!(r.branch.as_deref(), Some("z9hG4bK-bal-b7"));
        assert!(r.answers(&probe, "OPTIONS") && !r.answers(&probe, "INVITE"));
        assert_eq!(r.call_id, "bal-7a@10.0.2.1");
        assert_eq!(r.cseq_method, "OPTIONS");
        assert_eq!(r.to, "<sip:a>;tag=9");
        assert!(parse_response(b"INVITE sip:a SIP/2.0\r\n\r\n").is_none());

        let deep = HealthConfig {
            method: Some("invite".into()),
            uri: Some("sip:health@10.0.2.11:5060".into()),
            ..Default::default()
        }
        .params()
        .unwrap();
        assert!(deep.deep() && deep.accepts(180) && !deep.accepts(100) && !deep.accepts(503));
        let probe = Probe {
            params: &deep,
            ..probe
        };
        let m = probe.request();
        assert!(m.starts_with("INVITE sip:health@10.0.2.11:5060 SIP/2.0\r\n"));
        assert!(
            m.contains("Content-Type: application/sdp\r\n") && m.contains("m=audio 9 RTP/AVP 0")
        );
        let body = m.split("\r\n\r\n").nth(1).unwrap();
        assert!(m.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(probe
            .cancel()
            .starts_with("CANCEL sip:health@10.0.2.11:5060 SIP/2.0\r\n"));
        assert!(probe.cancel().contains("CSeq: 7 CANCEL\r\n"));
        assert!(probe
            .ack("<sip:x>;tag=1", false)
            .contains("branch=z9hG4bK-bal-b7;"));
    }

    #[test]
    fn answers_must_echo_call_id_and_branch_and_carry_no_control_characters() {
        let p = params(3, 2);
        let probe = Probe {
            params: &p,
            backend: "10.0.2.11:5060".parse().unwrap(),
            local: "10.0.2.1:40000".parse().unwrap(),
            tag: "7a",
            branch: "b7",
            cseq: 7,
        };
        let reply = |via: &str, call_id: &str, to: &str| {
            format!("SIP/2.0 200 OK\r\nVia: {via}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 7 OPTIONS\r\n\r\nbody\r\nwith\x01anything")
        };
        let ok_via = "SIP/2.0/UDP 10.0.2.1:40000;BRANCH=z9hG4bK-bal-b7";
        let r = parse_response(reply(ok_via, "bal-7a@10.0.2.1", "<sip:a>\t;tag=1").as_bytes());
        assert!(
            r.unwrap().answers(&probe, "OPTIONS"),
            "the body is not checked"
        );
        for (via, call_id) in [
            (
                "SIP/2.0/UDP 10.0.2.1:40000;branch=z9hG4bK-bal-b8",
                "bal-7a@10.0.2.1",
            ),
            ("SIP/2.0/UDP 10.0.2.1:40000", "bal-7a@10.0.2.1"),
            (
                "SIP/2.0/UDP x;branch=y, SIP/2.0/UDP 10.0.2.1:40000;branch=z9hG4bK-bal-b7",
                "bal-7a@10.0.2.1",
            ),
            (ok_via, "bal-7b@10.0.2.1"),
        ] {
            let r = parse_response(reply(via, call_id, "<sip:a>").as_bytes()).unwrap();
            assert!(!r.answers(&probe, "OPTIONS"), "{via} {call_id}");
        }
        for to in [
            "<sip:a>\n;tag=1",
            "<sip:a>\rX: y",
            "<sip:a>\0",
            "<sip:a>\x7f",
        ] {
            assert_eq!(
                parse_response(reply(ok_via, "bal-7a@10.0.2.1", to).as_bytes()),
                None,
                "{to:?}"
            );
        }

        let (a, b) = (Ids::new().unwrap(), Ids::new().unwrap());
        for id in [&a.tag, &a.branch] {
            assert_eq!(id.len(), 2 * ID_BYTES);
            assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        }
        assert!(a.tag != a.branch && a.tag != b.tag && a.branch != b.branch);
    }
}
