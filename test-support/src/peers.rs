//! Minimal SIP/UDP peers for the bed: a backend that answers every request with
//! a 200 carrying the same Call-ID and records what it saw, and a client that
//! sends INVITEs and collects the answers.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub fn enter_netns(name: &str) {
    let f = std::fs::File::open(format!("/run/netns/{name}")).expect("netns");
    assert_eq!(
        unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns {name}"
    );
}

/// The Call-ID a peer sees, found the simple way (these peers only ever see
/// messages this bed wrote, which put it on its own line as `Call-ID: `).
pub fn naive_call_id(msg: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(msg);
    s.lines()
        .find_map(|l| l.strip_prefix("Call-ID: "))
        .map(|v| v.trim().to_string())
}

pub struct Uas {
    pub seen: Arc<Mutex<HashMap<String, u32>>>,
    sock: UdpSocket,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Uas {
    /// Listens on `bind` (e.g. `0.0.0.0:5060`, or the VIP for direct server
    /// return, so answers leave from the VIP) inside `netns`.
    pub fn start(netns: &str, bind: &str) -> Uas {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (s2, st2, ns, bind) = (
            seen.clone(),
            stop.clone(),
            netns.to_string(),
            bind.to_string(),
        );
        let thread = std::thread::spawn(move || {
            enter_netns(&ns);
            let sock = UdpSocket::bind(&bind).expect("bind");
            big_rcvbuf(&sock);
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            ready_tx.send(sock.try_clone().unwrap()).unwrap();
            let mut buf = [0u8; 65536];
            while !st2.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Some(id) = naive_call_id(&buf[..n]) else {
                    continue;
                };
                *s2.lock().unwrap().entry(id.clone()).or_insert(0) += 1;
                let msg = String::from_utf8_lossy(&buf[..n]);
                // Answering a response would start an endless exchange with
                // another UAS, should a request come with its address forged.
                if msg.starts_with("SIP/2.0 ") {
                    continue;
                }
                let cseq = msg
                    .lines()
                    .find_map(|l| l.strip_prefix("CSeq: "))
                    .unwrap_or("1 INVITE")
                    .trim()
                    .to_string();
                // The request's Vias, copied as RFC 3261 (8.2.6.2) requires:
                // the balancer's health probes count an answer only if it
                // carries their branch.
                let mut via: String = msg
                    .lines()
                    .filter(|l| l.starts_with("Via: "))
                    .map(|l| format!("{l}\r\n"))
                    .collect();
                if via.is_empty() {
                    via = format!("Via: SIP/2.0/UDP {from}\r\n");
                }
                let reply = format!(
                    "SIP/2.0 200 OK\r\n{via}Call-ID: {id}\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n"
                );
                let _ = sock.send_to(reply.as_bytes(), from);
            }
        });
        let sock = ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("UAS ready");
        Uas {
            seen,
            sock,
            stop,
            thread: Some(thread),
        }
    }
}

impl Uas {
    /// Sends from the UAS's own socket (its address and port), as a backend
    /// starting a dialog does.
    pub fn send_to(&self, msg: &[u8], to: SocketAddr) {
        self.sock.send_to(msg, to).expect("send from the UAS");
    }

    /// How many datagrams with this Call-ID arrived.
    pub fn count(&self, call_id: &str) -> u32 {
        self.seen.lock().unwrap().get(call_id).copied().unwrap_or(0)
    }
}

impl Drop for Uas {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An INVITE of about `total` bytes: the SDP grows with attribute lines (a
/// video offer with many codecs is this big), the Call-ID stays near the top.
pub fn invite_sized(call_id: &str, total: usize) -> Vec<u8> {
    let mut sdp = String::from(
        "v=0\r\no=- 1 1 IN IP4 10.0.1.2\r\ns=-\r\nc=IN IP4 10.0.1.2\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\n",
    );
    let mut n = 0;
    while sdp.len() + 400 < total {
        sdp.push_str(&format!("a=x-pad{n}:{}\r\n", "p".repeat(60)));
        n += 1;
    }
    format!(
        "INVITE sip:bob@10.0.0.10 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.2;branch=z9hG4bK-{call_id};rport\r\n\
Call-ID: {call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@10.0.1.2>;tag=1\r\nTo: <sip:bob@10.0.0.10>\r\n\
CSeq: 1 INVITE\r\nContact: <sip:alice@10.0.1.2>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

pub fn invite(call_id: &str) -> Vec<u8> {
    let sdp = "v=0\r\no=- 1 1 IN IP4 10.0.1.2\r\ns=-\r\nc=IN IP4 10.0.1.2\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\n";
    format!(
        "INVITE sip:bob@10.0.0.10 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.2;branch=z9hG4bK-{call_id};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@10.0.1.2>;tag=1\r\nTo: <sip:bob@10.0.0.10>\r\nCall-ID: {call_id}\r\n\
CSeq: 1 INVITE\r\nContact: <sip:alice@10.0.1.2>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

/// What the client got back.
#[derive(Default, Debug)]
pub struct Answers {
    /// Call-ID -> number of 200s received.
    pub by_call_id: HashMap<String, u32>,
    /// Answers whose source was not the VIP.
    pub wrong_source: Vec<SocketAddr>,
}

/// Sends each Call-ID `repeats` times from inside `netns`, at most `window`
/// requests in flight, and collects the answers.
pub fn run_client(
    netns: &str,
    vip: SocketAddr,
    call_ids: &[String],
    repeats: u32,
    window: usize,
) -> Answers {
    let (ns, ids) = (netns.to_string(), call_ids.to_vec());
    std::thread::spawn(move || {
        enter_netns(&ns);
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        big_rcvbuf(&sock);
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut ans = Answers::default();
        let mut buf = [0u8; 65536];
        let sends: Vec<&String> = (0..repeats).flat_map(|_| ids.iter()).collect();
        let total = sends.len();
        let mut got = 0;
        for chunk in sends.chunks(window) {
            for id in chunk {
                sock.send_to(&invite(id), vip).unwrap();
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            let want = got + chunk.len();
            while got < want && Instant::now() < deadline {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if from != vip {
                    ans.wrong_source.push(from);
                }
                if let Some(id) = naive_call_id(&buf[..n]) {
                    *ans.by_call_id.entry(id).or_insert(0) += 1;
                    got += 1;
                }
            }
        }
        let _ = total;
        ans
    })
    .join()
    .unwrap()
}

/// A steady stream of fresh INVITEs, one every `gap`, from a client in `netns`,
/// until [`Stream::finish`].
pub struct Stream {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u32, u32, u32)>>,
}

impl Stream {
    pub fn start(netns: &str, vip: SocketAddr, gap: Duration, tag: &str) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let (st, ns, tag) = (stop.clone(), netns.to_string(), tag.to_string());
        let thread = std::thread::spawn(move || {
            enter_netns(&ns);
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.set_nonblocking(true).unwrap();
            // A big receive buffer, so a moment without CPU for this thread (the
            // verifier runs on the same two cores) does not drop answers here.
            big_rcvbuf(&sock);
            let mut buf = [0u8; 65536];
            let (mut sent, mut answered, mut wrong) = (0u32, 0u32, 0u32);
            let mut next = Instant::now();
            let mut drain_until = None;
            loop {
                if drain_until.is_none() && st.load(Ordering::Relaxed) {
                    drain_until = Some(Instant::now() + Duration::from_secs(1));
                }
                match drain_until {
                    Some(t) if Instant::now() > t || answered == sent => break,
                    Some(_) => {}
                    None if Instant::now() >= next => {
                        match sock.send_to(&invite(&format!("{tag}-{sent}@10.0.1.2")), vip) {
                            Ok(_) => {
                                sent += 1;
                                next += gap;
                            }
                            // The socket buffer is full for a moment: try again.
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) => panic!("sending to {vip}: {e}"),
                        }
                    }
                    None => {}
                }
                match sock.recv_from(&mut buf) {
                    Ok((_, from)) if from == vip => answered += 1,
                    Ok(_) => wrong += 1,
                    Err(_) => std::thread::sleep(Duration::from_micros(100)),
                }
            }
            (sent, answered, wrong)
        });
        Stream {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sending, waits up to a second for the last answers; returns
    /// (sent, answered from the VIP, answered from elsewhere).
    pub fn finish(mut self) -> (u32, u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Raises a socket's receive buffer to 8 MiB (root may exceed rmem_max).
pub fn big_rcvbuf(sock: &UdpSocket) {
    let size: libc::c_int = 8 << 20;
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// A steady stream of INVITEs from the client, each with a fresh Call-ID, that
/// remembers when each went out and how often each was answered.
pub struct Dialogs {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    gap: Duration,
    thread: Option<std::thread::JoinHandle<Sent>>,
}

/// What a [`Dialogs`] stream sent and got back.
pub struct Sent {
    /// Call-IDs in the order sent, with the moment each went out.
    pub ids: Vec<(String, std::time::Instant)>,
    /// Answers from the VIP, per Call-ID.
    pub answers: HashMap<String, u32>,
    /// Sources of answers that did not come from the VIP.
    pub elsewhere: Vec<SocketAddr>,
}

impl Dialogs {
    pub fn start(netns: &str, vip: SocketAddr, gap: Duration, tag: &str) -> Dialogs {
        use std::sync::atomic::Ordering;
        use std::time::Instant;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (st, count, ns, tag) = (
            stop.clone(),
            sent.clone(),
            netns.to_string(),
            tag.to_string(),
        );
        let thread = std::thread::spawn(move || {
            enter_netns(&ns);
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.set_nonblocking(true).unwrap();
            big_rcvbuf(&sock);
            let mut out = Sent {
                ids: Vec::new(),
                answers: HashMap::new(),
                elsewhere: Vec::new(),
            };
            let mut buf = [0u8; 65536];
            let mut next = Instant::now();
            let mut drain_until = None;
            loop {
                let now = Instant::now();
                if drain_until.is_none() && st.load(Ordering::Relaxed) {
                    // Answers take milliseconds; a second is plenty for the last ones.
                    drain_until = Some(now + Duration::from_secs(1));
                }
                match drain_until {
                    Some(t) if now > t || out.answers.len() == out.ids.len() => break,
                    Some(_) => {}
                    None if now >= next => {
                        let id = format!("{tag}-{}@10.0.1.2", out.ids.len());
                        match sock.send_to(&invite(&id), vip) {
                            Ok(_) => {
                                out.ids.push((id, now));
                                count.store(out.ids.len(), Ordering::Relaxed);
                                next += gap;
                            }
                            // The socket buffer is full for a moment: try again.
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) => panic!("sending to {vip}: {e}"),
                        }
                    }
                    None => {}
                }
                match sock.recv_from(&mut buf) {
                    Ok((_, from)) if from != vip => out.elsewhere.push(from),
                    Ok((n, _)) => {
                        if let Some(id) = naive_call_id(&buf[..n]) {
                            *out.answers.entry(id).or_insert(0) += 1;
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_micros(100)),
                }
            }
            out
        });
        Dialogs {
            stop,
            sent,
            gap,
            thread: Some(thread),
        }
    }

    pub fn sent(&self) -> usize {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Returns once `n` more Call-IDs went out.
    pub fn await_more(&self, n: usize) {
        let want = self.sent() + n;
        // The stream's own pace, plus as long as a stalled sender may be forgiven.
        let limit = self.gap * n as u32 + Duration::from_secs(5);
        let t0 = std::time::Instant::now();
        while self.sent() < want {
            assert!(
                t0.elapsed() < limit,
                "the stream stalled at {}",
                self.sent()
            );
            std::thread::sleep(self.gap);
        }
    }

    /// Stops sending and returns once every Call-ID is answered, or a second
    /// after the last was sent.
    pub fn finish(mut self) -> Sent {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}
