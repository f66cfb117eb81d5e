//! The prober against scripted SIP servers on loopback: what it sends, how it
//! reads answers, and how the deep check ends its test calls.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use balancer::{
    health::Prober,
    health::{HealthConfig, Outcome, Params},
};

/// Every request a scripted server got, in order.
type Log = Arc<Mutex<Vec<String>>>;

/// How a scripted server's answers differ from honest ones.
#[derive(Clone, Copy)]
enum Answers {
    Honest,
    /// Sent from another socket (another port of the same address).
    FromElsewhere,
    /// With a bare LF and a header of the sender's choosing in the To value
    /// of 2xx answers.
    LfInTo,
}

/// A server on loopback that answers each request with `script(method, msg)`
/// (a list of status lines to send back) and records every request it got.
fn server(script: fn(&str) -> Vec<u16>) -> (SocketAddr, Log) {
    server_with(script, Answers::Honest)
}

fn server_with(script: fn(&str) -> Vec<u16>, answers: Answers) -> (SocketAddr, Log) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let elsewhere = UdpSocket::bind("127.0.0.1:0").unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l2 = log.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                return;
            };
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let method = msg.split(' ').next().unwrap_or("").to_string();
            l2.lock().unwrap().push(msg.clone());
            let h = |name: &str| {
                msg.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            for code in script(&method) {
                // A final answer to the INVITE after a CANCEL is 487, with CSeq INVITE.
                let cseq = if code == 487 {
                    h("CSeq:").replace("CANCEL", "INVITE")
                } else {
                    h("CSeq:")
                };
                let to = match answers {
                    Answers::LfInTo if code / 100 == 2 => {
                        format!("{};tag=srv\nX-Injected: yes", h("To:"))
                    }
                    _ => format!("{};tag=srv", h("To:")),
                };
                let reply = format!(
                    "SIP/2.0 {code} X\r\nVia: {}\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n",
                    h("Via:"),
                    h("From:"),
                    h("Call-ID:")
                );
                let out = match answers {
                    Answers::FromElsewhere => &elsewhere,
                    _ => &sock,
                };
                out.send_to(reply.as_bytes(), from).unwrap();
            }
        }
    });
    (addr, log)
}

/// One probe of `backend` with `params`; returns its outcome once the prober
/// is done with it and `log` holds the `requests` requests of its call.
///
/// The deep check ends its call in a task of its own after the verdict: done
/// when the runtime is back to the prober's own tasks (the probe loop and
/// the receiver). The requests are then sent; their arrival at the server is
/// awaited too. Both with a deadline, polled: no sleep long enough "usually".
fn probe_once(backend: SocketAddr, params: Params, log: &Log, requests: usize) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut p = Prober::new(tx).await.unwrap();
        let metrics = tokio::runtime::Handle::current().metrics();
        // The probe loop `update` starts, and the receiver of the one local
        // address it probes from.
        let own_tasks = metrics.num_alive_tasks() + 2;
        p.update(&[(backend, params)]);
        let ev = rx.recv().await.unwrap();
        assert_eq!(ev.backend, backend);
        let deadline = Instant::now() + Duration::from_secs(5);
        while metrics.num_alive_tasks() > own_tasks || call(log).len() < requests {
            assert!(
                Instant::now() < deadline,
                "after 5 s, {} tasks of the prober are alive ({own_tasks} when idle) and the server got {:?} of {requests} requests",
                metrics.num_alive_tasks(),
                call(log)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ev.outcome
    })
}

fn params(method: &str) -> Params {
    HealthConfig {
        method: Some(method.into()),
        timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    }
    .params()
    .unwrap()
}

/// The requests of the first call the server saw (a later probe, one interval
/// on, is another call).
fn call(log: &Log) -> Vec<String> {
    let log = log.lock().unwrap();
    let call_id = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("Call-ID:"))
            .map(|v| v.trim().to_string())
    };
    let Some(first) = log.first().and_then(|m| call_id(m)) else {
        return Vec::new();
    };
    log.iter()
        .filter(|m| call_id(m).as_ref() == Some(&first))
        .cloned()
        .collect()
}

/// The methods of [`call`]'s requests.
fn methods(log: &Log) -> Vec<String> {
    call(log)
        .iter()
        .map(|m| m.split(' ').next().unwrap().to_string())
        .collect()
}

#[test]
fn options_answered_and_refused() {
    let (ok, log) = server(|_| vec![200]);
    let o = probe_once(ok, params("OPTIONS"), &log, 1);
    assert!(matches!(o, Outcome::Reply { code: 200, .. }), "{o:?}");
    let req = log.lock().unwrap()[0].clone();
    assert!(
        req.starts_with(&format!("OPTIONS sip:{ok} SIP/2.0\r\n")),
        "{req}"
    );
    assert!(req.contains(";rport\r\n") && req.contains("\r\nCSeq: "));

    let (busy, log) = server(|_| vec![503]);
    let o = probe_once(busy, params("OPTIONS"), &log, 1);
    assert!(matches!(o, Outcome::Reply { code: 503, .. }), "{o:?}");

    let (silent, log) = server(|_| vec![]);
    assert_eq!(
        probe_once(silent, params("OPTIONS"), &log, 1),
        Outcome::Timeout
    );
}

#[test]
fn the_deep_check_cancels_a_ringing_call() {
    let (addr, log) = server(|m| match m {
        "INVITE" => vec![100, 180],
        "CANCEL" => vec![200, 487],
        _ => vec![],
    });
    let o = probe_once(addr, params("INVITE"), &log, 3);
    assert!(matches!(o, Outcome::Reply { code: 180, .. }), "{o:?}");
    assert_eq!(methods(&log), ["INVITE", "CANCEL", "ACK"]);
    let m = call(&log);
    assert!(m[0].contains("Content-Type: application/sdp\r\n"));
    assert!(
        m[2].contains("To: <") && m[2].contains(";tag=srv"),
        "ACK carries the To tag: {}",
        m[2]
    );
}

#[test]
fn the_deep_check_hangs_up_an_answered_call_and_fails_a_dead_dialplan() {
    let (addr, log) = server(|m| match m {
        "INVITE" | "BYE" => vec![200],
        _ => vec![],
    });
    let o = probe_once(addr, params("INVITE"), &log, 3);
    assert!(matches!(o, Outcome::Reply { code: 200, .. }), "{o:?}");
    assert_eq!(methods(&log), ["INVITE", "ACK", "BYE"]);

    let (dead, log) = server(|m| match m {
        "INVITE" => vec![100, 503],
        _ => vec![],
    });
    let o = probe_once(dead, params("INVITE"), &log, 2);
    assert!(matches!(o, Outcome::Reply { code: 503, .. }), "{o:?}");
    assert!(!params("INVITE").accepts(503));
    assert_eq!(methods(&log), ["INVITE", "ACK"]);
}

#[test]
fn answers_from_another_port_do_not_count() {
    let (addr, log) = server_with(|_| vec![200], Answers::FromElsewhere);
    assert_eq!(
        probe_once(addr, params("OPTIONS"), &log, 1),
        Outcome::Timeout
    );
}

#[test]
fn identifiers_are_random_and_an_answer_must_echo_both() {
    let (addr, log) = server(|_| vec![200]);
    probe_once(addr, params("OPTIONS"), &log, 1);
    let req = log.lock().unwrap()[0].clone();
    let hex_after = |prefix: &str| {
        let v = req.split(prefix).nth(1).unwrap_or("");
        v.chars().take_while(|c| c.is_ascii_hexdigit()).count()
    };
    // 128 bits each, in hex.
    assert_eq!(hex_after(";branch=z9hG4bK-bal-"), 32, "{req}");
    assert_eq!(hex_after("Call-ID: bal-"), 32, "{req}");
    let (addr2, log2) = server(|_| vec![200]);
    probe_once(addr2, params("OPTIONS"), &log2, 1);
    let other = log2.lock().unwrap()[0].clone();
    let call_id = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("Call-ID:"))
            .unwrap()
            .to_string()
    };
    assert_ne!(call_id(&req), call_id(&other));
}

#[test]
fn a_line_feed_in_an_answer_never_reaches_our_messages() {
    // The INVITE's 200 carries a bare LF in To: not SIP, so not an answer;
    // the call is cancelled (and its 487 ACKed) instead of ACKed and ended
    // with the sender's header.
    let (addr, log) = server_with(
        |m| match m {
            "INVITE" => vec![200],
            "CANCEL" => vec![200, 487],
            _ => vec![],
        },
        Answers::LfInTo,
    );
    assert_eq!(
        probe_once(addr, params("INVITE"), &log, 3),
        Outcome::Timeout
    );
    assert_eq!(methods(&log), ["INVITE", "CANCEL", "ACK"]);
    for m in call(&log) {
        assert!(!m.contains("X-Injected"), "{m}");
        assert!(
            !m.replace("\r\n", "").contains('\n'),
            "a bare LF in what we sent: {m:?}"
        );
    }
}
