//! The prober: one tokio task per backend sends a SIP probe every `interval` from
//! this host's own address and reports what came back within `timeout`. Answers
//! arrive on one UDP socket per address family and are matched to their probe by
//! Call-ID (unique per probe).
//!
//! Probes also keep the backends' neighbour (ARP/ND) entries fresh, which direct
//! server return needs: nothing else on the host talks to a backend.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::health::{parse_response, Outcome, Params, Probe, Response};

/// One probe's result.
#[derive(Debug)]
pub struct Event {
    pub backend: SocketAddr,
    pub outcome: Outcome,
}

type Pending = Mutex<HashMap<String, mpsc::UnboundedSender<(Response, Instant)>>>;

struct Shared {
    v4: UdpSocket,
    v6: Option<UdpSocket>,
    pending: Pending,
    seq: AtomicU64,
}

pub struct Prober {
    shared: Arc<Shared>,
    tasks: HashMap<SocketAddr, (Params, JoinHandle<()>)>,
    events: mpsc::UnboundedSender<Event>,
    receivers: Vec<JoinHandle<()>>,
}

impl Prober {
    /// Binds the sockets and starts receiving; probing starts with [`update`](Self::update).
    pub async fn new(events: mpsc::UnboundedSender<Event>) -> Result<Prober> {
        let v4 = UdpSocket::bind("0.0.0.0:0")
            .await
            .context("binding the health-check socket")?;
        // IPv6 may be disabled on the host; then IPv6 backends fail their probes.
        let v6 = UdpSocket::bind("[::]:0").await.ok();
        let shared = Arc::new(Shared {
            v4,
            v6,
            pending: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(1),
        });
        let mut receivers = vec![tokio::spawn(receive(shared.clone(), false))];
        if shared.v6.is_some() {
            receivers.push(tokio::spawn(receive(shared.clone(), true)));
        }
        Ok(Prober {
            shared,
            tasks: HashMap::new(),
            events,
            receivers,
        })
    }

    /// Probes exactly these backends with these parameters: new ones start,
    /// removed ones stop, changed ones restart.
    pub fn update(&mut self, want: &[(SocketAddr, Params)]) {
        let wanted: HashMap<SocketAddr, &Params> = want.iter().map(|(a, p)| (*a, p)).collect();
        self.tasks.retain(|addr, (params, task)| {
            let keep = wanted.get(addr) == Some(&&*params);
            if !keep {
                task.abort();
            }
            keep
        });
        for (addr, params) in want {
            if self.tasks.contains_key(addr) {
                continue;
            }
            let task = tokio::spawn(probe_loop(
                self.shared.clone(),
                *addr,
                params.clone(),
                self.events.clone(),
            ));
            self.tasks.insert(*addr, (params.clone(), task));
        }
    }

    pub fn params(&self, addr: SocketAddr) -> Option<&Params> {
        self.tasks.get(&addr).map(|(p, _)| p)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for (_, (_, t)) in self.tasks.drain() {
            t.abort();
        }
        for r in &self.receivers {
            r.abort();
        }
    }
}

async fn receive(shared: Arc<Shared>, v6: bool) {
    let mut buf = vec![0u8; 65536];
    loop {
        let sock = if v6 {
            shared.v6.as_ref().unwrap()
        } else {
            &shared.v4
        };
        let Ok((n, _from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        deliver(&shared, &buf[..n], Instant::now());
    }
}

/// Hands an answer to the probe waiting for it, if any.
fn deliver(shared: &Shared, datagram: &[u8], at: Instant) {
    let Some(resp) = parse_response(datagram) else {
        return;
    };
    let tx = shared.pending.lock().unwrap().get(&resp.call_id).cloned();
    if let Some(tx) = tx {
        let _ = tx.send((resp, at));
    }
}

/// Delivers the answers already in the socket without waiting. A probe whose
/// timer fires does this before it gives up: when many tasks are ready at once
/// (thousands of backends just added), the receiving task may not have run
/// since an answer arrived, and the backend must not pay for our scheduling.
fn drain(shared: &Shared, v6: bool) {
    let sock = if v6 {
        shared.v6.as_ref()
    } else {
        Some(&shared.v4)
    };
    let Some(sock) = sock else { return };
    let mut buf = vec![0u8; 65536];
    while let Ok((n, _from)) = sock.try_recv_from(&mut buf) {
        deliver(shared, &buf[..n], Instant::now());
    }
}

async fn probe_loop(
    shared: Arc<Shared>,
    backend: SocketAddr,
    params: Params,
    events: mpsc::UnboundedSender<Event>,
) {
    // The first probe goes out at once: it also resolves the backend's
    // neighbour entry, which direct server return needs before any traffic.
    loop {
        let start = tokio::time::Instant::now();
        let outcome = probe(&shared, backend, &params).await;
        if events.send(Event { backend, outcome }).is_err() {
            return;
        }
        tokio::time::sleep_until(start + params.interval).await;
    }
}

/// The local address the kernel uses towards `backend`, with our socket's port.
fn local_towards(shared: &Shared, backend: SocketAddr) -> std::io::Result<SocketAddr> {
    let bind: SocketAddr = if backend.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let s = StdUdpSocket::bind(bind)?;
    s.connect(backend)?;
    let mut local = s.local_addr()?;
    let sock = if backend.is_ipv4() {
        Some(&shared.v4)
    } else {
        shared.v6.as_ref()
    };
    let port = sock
        .ok_or_else(|| std::io::Error::other("no IPv6 socket on this host"))?
        .local_addr()?
        .port();
    local.set_port(port);
    Ok(local)
}

async fn probe(shared: &Arc<Shared>, backend: SocketAddr, params: &Params) -> Outcome {
    let local = match local_towards(shared, backend) {
        Ok(l) => l,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let n = shared.seq.fetch_add(1, Ordering::Relaxed);
    let tag = format!("{:x}-{n:x}", std::process::id());
    let p = Probe {
        params,
        backend,
        local,
        tag: &tag,
        cseq: (n % 1_000_000) as u32 + 1,
    };
    let call_id = p.call_id();
    let (tx, mut rx) = mpsc::unbounded_channel();
    shared.pending.lock().unwrap().insert(call_id.clone(), tx);
    let sock = if backend.is_ipv4() {
        &shared.v4
    } else {
        shared.v6.as_ref().unwrap()
    };
    let request = p.request();
    // Waiting for room in the socket's send buffer is ours, not the backend's:
    // after a burst (thousands of backends added at once) it can take longer
    // than the timeout. The clock starts when the probe has left.
    if let Err(e) = sock.send_to(request.as_bytes(), backend).await {
        shared.pending.lock().unwrap().remove(&call_id);
        return Outcome::Error(e.to_string());
    }
    let sent = Instant::now();
    let deadline = tokio::time::Instant::from_std(sent + params.timeout);
    let answer = loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((r, at))) if r.cseq_method == params.method => {
                // 100 Trying says nothing about the server; keep waiting.
                if r.code == 100 || (!params.deep() && r.code < 200) {
                    continue;
                }
                break Some((r, at));
            }
            Ok(Some(_)) => continue,
            Ok(None) => break None,
            Err(_) => {
                drain(shared, backend.is_ipv6());
                let mut late = None;
                while let Ok((r, at)) = rx.try_recv() {
                    if r.cseq_method == params.method
                        && r.code != 100
                        && (params.deep() || r.code >= 200)
                    {
                        late = Some((r, at));
                        break;
                    }
                }
                break late;
            }
        }
    };
    let outcome = match &answer {
        Some((r, at)) => Outcome::Reply {
            code: r.code,
            rtt: at.duration_since(sent),
        },
        None => Outcome::Timeout,
    };
    if params.deep() {
        // End the test call whatever happened, without holding up the verdict.
        let (shared, params) = (shared.clone(), params.clone());
        let to = answer.as_ref().map(|(r, _)| (r.code, r.to.clone()));
        tokio::spawn(async move {
            finish_call(&shared, &params, backend, local, &tag, to, rx).await;
            shared.pending.lock().unwrap().remove(&call_id);
        });
    } else {
        shared.pending.lock().unwrap().remove(&call_id);
    }
    outcome
}

/// Ends the deep check's call: CANCEL while it rings (then ACK the 487), ACK and
/// BYE if it was answered, ACK a final error.
async fn finish_call(
    shared: &Shared,
    params: &Params,
    backend: SocketAddr,
    local: SocketAddr,
    tag: &str,
    first: Option<(u16, String)>,
    mut rx: mpsc::UnboundedReceiver<(Response, Instant)>,
) {
    let p = Probe {
        params,
        backend,
        local,
        tag,
        cseq: 1,
    };
    let sock = if backend.is_ipv4() {
        &shared.v4
    } else {
        shared.v6.as_ref().unwrap()
    };
    let finals = |code: u16, to: &str| -> Vec<String> {
        if (200..300).contains(&code) {
            vec![p.ack(to, true), p.bye(to)]
        } else {
            vec![p.ack(to, false)]
        }
    };
    let msgs = match first {
        Some((code, to)) if code >= 200 => finals(code, &to),
        // Ringing, or no answer yet: cancel, then answer whatever final comes.
        _ => {
            let _ = sock.send_to(p.cancel().as_bytes(), backend).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            let mut msgs = Vec::new();
            while let Ok(Some((r, _))) = tokio::time::timeout_at(deadline, rx.recv()).await {
                if r.cseq_method == "INVITE" && r.code >= 200 {
                    msgs = finals(r.code, &r.to);
                    break;
                }
            }
            msgs
        }
    };
    for m in msgs {
        let _ = sock.send_to(m.as_bytes(), backend).await;
    }
}
