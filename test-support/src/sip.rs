//! SIP messages for the kernel fixtures and the data plane benchmark, shaped to
//! put the Call-ID where a case needs it.

pub fn invite(call_id_header: &str, pad_to: usize) -> Vec<u8> {
    let head = "INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@example.com>\r\n\
From: Alice <sip:alice@example.com>;tag=1928301774\r\n";
    let tail_hdrs =
        "CSeq: 314159 INVITE\r\nContact: <sip:alice@10.0.1.2>\r\nContent-Type: application/sdp\r\n";
    let sdp = "v=0\r\no=alice 2890844526 2890844526 IN IP4 10.0.1.2\r\ns=-\r\nc=IN IP4 10.0.1.2\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 97\r\na=rtpmap:0 PCMU/8000\r\n";
    let mut filler = String::new();
    let fixed = head.len() + tail_hdrs.len() + call_id_header.len() + 2 + 24 + sdp.len();
    if pad_to > fixed {
        // Padding headers before the Call-ID push it towards the end of the message.
        let mut need = pad_to - fixed;
        while need > 0 {
            let n = need.clamp(12, 200);
            filler.push_str(&format!("X-Pad: {}\r\n", "p".repeat(n - 9)));
            need = need.saturating_sub(n);
        }
    }
    format!(
        "{head}{tail_hdrs}{filler}{call_id_header}\r\nContent-Length: {:>5}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

/// An INVITE of about `total` bytes whose Call-ID is the second header (as most
/// user agents send it), grown by SDP attribute lines.
pub fn invite_early(call_id: &str, total: usize) -> Vec<u8> {
    let head = format!(
        "INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bK776asdhds;rport\r\n\
Call-ID: {call_id}\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@example.com>\r\n\
From: Alice <sip:alice@example.com>;tag=1928301774\r\n\
CSeq: 314159 INVITE\r\nContact: <sip:alice@10.0.1.2>\r\nContent-Type: application/sdp\r\n"
    );
    let mut sdp = String::from(
        "v=0\r\no=alice 2890844526 2890844526 IN IP4 10.0.1.2\r\ns=-\r\nc=IN IP4 10.0.1.2\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 97\r\n",
    );
    let mut pt = 96;
    while head.len() + sdp.len() + 26 < total {
        sdp.push_str(&format!("a=rtpmap:{pt} opus/48000/2\r\n"));
        pt += 1;
    }
    format!("{head}Content-Length: {:>5}\r\n\r\n{sdp}", sdp.len()).into_bytes()
}
