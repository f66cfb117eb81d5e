//! The prober: one tokio task per backend sends a SIP probe every `interval`
//! and reports what came back within `timeout`.
//!
//! Probes go out from this host's address on the route towards the backend
//! (the backend-side address): one UDP socket per such local address, bound to
//! it, so answers addressed to any other address of the host never reach it.
//! An answer counts only if it comes from the probed backend's address and
//! port and echoes the probe's Call-ID and branch, each with 128 random bits: a
//! forgery must come from the backend's own address and know what only someone
//! who saw the probe knows. Sockets are shared by all probes from an address,
//! not opened per probe: thousands of backends need no more file descriptors
//! or ephemeral ports than a handful.
//!
//! Probes also keep the backends' neighbour (ARP/ND) entries fresh, which direct
//! server return needs: nothing else on the host talks to a backend.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::health::{parse_response, Ids, Outcome, Params, Probe, Response};

/// One probe's result.
#[derive(Debug)]
pub struct Event {
    pub backend: SocketAddr,
    pub outcome: Outcome,
}

/// A probe waiting for its answer.
struct Waiter {
    backend: SocketAddr,
    branch: String,
    tx: mpsc::UnboundedSender<(Response, Instant)>,
}

/// The socket of one local address, and the probes sent from it, by Call-ID.
struct Endpoint {
    sock: UdpSocket,
    pending: Mutex<HashMap<String, Waiter>>,
}

#[derive(Default)]
struct Shared {
    /// By local address, port 0 (an IPv6 link-local one keeps its scope).
    endpoints: Mutex<HashMap<SocketAddr, Arc<Endpoint>>>,
    receivers: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    /// The socket bound to `local` (port ignored), bound and read from the
    /// first time.
    fn endpoint(&self, mut local: SocketAddr) -> std::io::Result<Arc<Endpoint>> {
        local.set_port(0);
        let mut endpoints = self.endpoints.lock().unwrap();
        if let Some(e) = endpoints.get(&local) {
            return Ok(e.clone());
        }
        let s = StdUdpSocket::bind(local)?;
        s.set_nonblocking(true)?;
        let e = Arc::new(Endpoint {
            sock: UdpSocket::from_std(s)?,
            pending: Mutex::new(HashMap::new()),
        });
        endpoints.insert(local, e.clone());
        self.receivers
            .lock()
            .unwrap()
            .push(tokio::spawn(receive(e.clone())));
        Ok(e)
    }
}

pub struct Prober {
    shared: Arc<Shared>,
    tasks: HashMap<SocketAddr, (Params, JoinHandle<()>)>,
    events: mpsc::UnboundedSender<Event>,
}

impl Prober {
    /// Probing starts with [`update`](Self::update).
    pub async fn new(events: mpsc::UnboundedSender<Event>) -> Result<Prober> {
        Ok(Prober {
            shared: Arc::default(),
            tasks: HashMap::new(),
            events,
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
        for r in self.shared.receivers.lock().unwrap().iter() {
            r.abort();
        }
    }
}

/// Hands each answer to the probe it answers: from the probed backend's
/// address and port, with the probe's Call-ID and branch. Anything else
/// (malformed, a control character in its headers, from anyone else, unknown
/// identifiers) is dropped.
async fn receive(e: Arc<Endpoint>) {
    // Headers of an answer fit; a longer datagram is read truncated.
    let mut buf = vec![0u8; 16384];
    loop {
        let Ok((n, from)) = e.sock.recv_from(&mut buf).await else {
            continue;
        };
        deliver(&e, &buf[..n], from, Instant::now());
    }
}

/// Hands an answer to the probe it answers, if it is one (see `receive`).
fn deliver(e: &Endpoint, datagram: &[u8], from: SocketAddr, at: Instant) {
    let Some(resp) = parse_response(datagram) else {
        return;
    };
    let pending = e.pending.lock().unwrap();
    let Some(w) = pending.get(&resp.call_id) else {
        return;
    };
    if w.backend == from && resp.branch.as_deref() == Some(w.branch.as_str()) {
        let _ = w.tx.send((resp, at));
    }
}

/// Delivers the answers already in the socket without waiting. A probe whose
/// timer fires does this before it gives up: when many tasks are ready at once
/// (thousands of backends just added), the receiving task may not have run
/// since an answer arrived, and the backend must not pay for our scheduling.
fn drain(e: &Endpoint) {
    let mut buf = vec![0u8; 16384];
    while let Ok((n, from)) = e.sock.try_recv_from(&mut buf) {
        deliver(e, &buf[..n], from, Instant::now());
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
    let mut cseq = 0u32;
    loop {
        let start = tokio::time::Instant::now();
        cseq = cseq % 1_000_000 + 1;
        let outcome = probe(&shared, backend, &params, cseq).await;
        if events.send(Event { backend, outcome }).is_err() {
            return;
        }
        tokio::time::sleep_until(start + params.interval).await;
    }
}

/// The local address the kernel uses towards `backend` (the route's source).
fn local_towards(backend: SocketAddr) -> std::io::Result<SocketAddr> {
    let any: SocketAddr = if backend.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        // IPv6 may be disabled on the host; then IPv6 backends fail their probes.
        "[::]:0".parse().unwrap()
    };
    let s = StdUdpSocket::bind(any)?;
    s.connect(backend)?;
    s.local_addr()
}

/// The probe's answer, removed from the pending ones when dropped.
struct Registration {
    endpoint: Arc<Endpoint>,
    call_id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.endpoint.pending.lock().unwrap().remove(&self.call_id);
    }
}

async fn probe(shared: &Shared, backend: SocketAddr, params: &Params, cseq: u32) -> Outcome {
    let setup = || -> std::io::Result<(Arc<Endpoint>, SocketAddr, Ids)> {
        let mut local = local_towards(backend)?;
        let endpoint = shared.endpoint(local)?;
        local.set_port(endpoint.sock.local_addr()?.port());
        let ids = Ids::new().map_err(std::io::Error::other)?;
        Ok((endpoint, local, ids))
    };
    let (endpoint, local, ids) = match setup() {
        Ok(x) => x,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let p = Probe {
        params,
        backend,
        local,
        tag: &ids.tag,
        branch: &ids.branch,
        cseq,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let call_id = p.call_id();
    endpoint.pending.lock().unwrap().insert(
        call_id.clone(),
        Waiter {
            backend,
            branch: p.branch(),
            tx,
        },
    );
    let registration = Registration {
        endpoint: endpoint.clone(),
        call_id,
    };
    // Waiting for room in the socket's send buffer is ours, not the backend's:
    // after a burst (thousands of backends added at once) it can take longer
    // than the timeout. The clock starts when the probe has left.
    if let Err(e) = endpoint.sock.send_to(p.request().as_bytes(), backend).await {
        return Outcome::Error(e.to_string());
    }
    let sent = Instant::now();
    let deadline = tokio::time::Instant::from_std(sent + params.timeout);
    let answer = loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((r, at))) if r.answers(&p, &params.method) => {
                // 100 Trying says nothing about the server; keep waiting.
                if r.code == 100 || (!params.deep() && r.code < 200) {
                    continue;
                }
                break Some((r, at));
            }
            Ok(Some(_)) => continue,
            Ok(None) => break None,
            Err(_) => {
                drain(&endpoint);
                let mut late = None;
                while let Ok((r, at)) = rx.try_recv() {
                    if r.answers(&p, &params.method)
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
        let params = params.clone();
        let first = answer.map(|(r, _)| (r.code, r.to));
        tokio::spawn(async move {
            let p = Probe {
                params: &params,
                backend,
                local,
                tag: &ids.tag,
                branch: &ids.branch,
                cseq,
            };
            finish_call(&registration.endpoint.sock, &p, first, rx).await;
            drop(registration);
        });
    }
    outcome
}

/// Ends the deep check's call: CANCEL while it rings (then ACK the 487), ACK and
/// BYE if it was answered, ACK a final error.
async fn finish_call(
    sock: &UdpSocket,
    p: &Probe<'_>,
    first: Option<(u16, String)>,
    mut rx: mpsc::UnboundedReceiver<(Response, Instant)>,
) {
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
            let _ = sock.send_to(p.cancel().as_bytes(), p.backend).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            let mut msgs = Vec::new();
            while let Ok(Some((r, _))) = tokio::time::timeout_at(deadline, rx.recv()).await {
                if r.answers(p, "INVITE") && r.code >= 200 {
                    msgs = finals(r.code, &r.to);
                    break;
                }
            }
            msgs
        }
    };
    for m in msgs {
        let _ = sock.send_to(m.as_bytes(), p.backend).await;
    }
}
