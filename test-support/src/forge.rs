//! Forged traffic for the hostile-network tests: frames with any source
//! address sent from a bed namespace through an `AF_PACKET` socket (the
//! kernel neither checks nor fills in anything: the frame goes out as built,
//! as an attacker's host would send it), a capture of what arrives at an
//! interface, and packet filter counters in a namespace.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::{sh, sh_out};
use crate::packet::Frame;
use crate::peers::enter_netns;

/// Runs `f` on a thread inside namespace `ns` (sockets it opens stay in that
/// namespace, whichever thread uses them later).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        f()
    })
    .join()
    .expect("thread in a namespace")
}

/// The MAC address of `dev` in namespace `ns`.
pub fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let v: serde_json::Value =
        serde_json::from_str(&sh_out(&format!("ip -n {ns} -j link show dev {dev}"))).unwrap();
    let text = v[0]["address"].as_str().expect("a MAC address");
    let mut mac = [0u8; 6];
    for (m, h) in mac.iter_mut().zip(text.split(':')) {
        *m = u8::from_str_radix(h, 16).unwrap();
    }
    mac
}

fn ifindex(ns: &str, dev: &str) -> i32 {
    let v: serde_json::Value =
        serde_json::from_str(&sh_out(&format!("ip -n {ns} -j link show dev {dev}"))).unwrap();
    v[0]["ifindex"].as_i64().expect("an ifindex") as i32
}

fn packet_socket(ns: &str, dev: &str) -> OwnedFd {
    let index = ifindex(ns, dev);
    in_netns(ns, move || {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index;
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        fd
    })
}

/// Sends frames out of one interface of a namespace to the host at the
/// other end of its link (the balancer host), with whatever IP source the
/// caller writes in them.
pub struct Injector {
    fd: OwnedFd,
    smac: [u8; 6],
    dmac: [u8; 6],
}

impl Injector {
    /// Out of `dev` in `ns`, to `peer_dev` in `peer_ns` (its MAC is the
    /// frames' destination).
    pub fn new(ns: &str, dev: &str, peer_ns: &str, peer_dev: &str) -> Injector {
        Injector {
            fd: packet_socket(ns, dev),
            smac: mac_of(ns, dev),
            dmac: mac_of(peer_ns, peer_dev),
        }
    }

    /// One UDP datagram from `src` to `dst`, checksums complete.
    pub fn udp(&self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        let mut f = Frame::udp(src.ip(), src.port(), dst.ip(), dst.port(), payload);
        f.smac = self.smac;
        f.dmac = self.dmac;
        self.frame(&f.build());
    }

    /// A whole Ethernet frame, retried while the device's queue is full.
    pub fn frame(&self, bytes: &[u8]) {
        loop {
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr() as *const libc::c_void,
                    bytes.len(),
                    0,
                )
            };
            if n == bytes.len() as isize {
                return;
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                _ => panic!("sending a forged frame: {e}"),
            }
        }
    }
}

/// A UDP datagram as it arrived at a captured interface.
#[derive(Clone, Debug)]
pub struct Captured {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

impl Captured {
    /// The Call-ID, found the simple way (see `peers::naive_call_id`).
    pub fn call_id(&self) -> Option<String> {
        crate::peers::naive_call_id(&self.payload)
    }
}

/// Every IPv4 UDP datagram arriving at an interface (not those it sends),
/// until dropped or [`Capture::stop`].
pub struct Capture {
    got: Arc<Mutex<Vec<Captured>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    pub fn start(ns: &str, dev: &str) -> Capture {
        let fd = packet_socket(ns, dev);
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            let size: libc::c_int = 8 << 20;
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                        &mut sll as *mut _ as *mut libc::sockaddr,
                        &mut len,
                    )
                };
                if n <= 0 || sll.sll_pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                if let Some(c) = udp4(&buf[..n as usize]) {
                    g.lock().unwrap().push(c);
                }
            }
        });
        Capture {
            got,
            stop,
            thread: Some(thread),
        }
    }

    /// What arrived so far.
    pub fn seen(&self) -> Vec<Captured> {
        self.got.lock().unwrap().clone()
    }

    /// Stops capturing; returns what arrived.
    pub fn stop(mut self) -> Vec<Captured> {
        self.halt();
        self.seen()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.halt();
    }
}

/// An untagged IPv4 UDP frame's addresses and payload (no checksum checks:
/// what matters here is who it claims to be from, not whether it is intact).
fn udp4(f: &[u8]) -> Option<Captured> {
    if f.len() < 14 + 20 + 8 || f[12..14] != [0x08, 0x00] || f[14 + 9] != 17 {
        return None;
    }
    let hl = (f[14] & 0x0f) as usize * 4;
    let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]));
    let (src, dst) = (ip(14 + 12), ip(14 + 16));
    let l4 = 14 + hl;
    let u = f.get(l4..l4 + 8)?;
    let port = |o: usize| u16::from_be_bytes([u[o], u[o + 1]]);
    let len = port(4) as usize;
    let payload = f.get(l4 + 8..l4 + len.max(8))?.to_vec();
    Some(Captured {
        src: SocketAddr::new(src, port(0)),
        dst: SocketAddr::new(dst, port(2)),
        payload,
    })
}

/// An nftables rule in namespace `ns` that drops, and counts, UDP datagrams
/// to port 5060 from `sources` (e.g. `10.0.3.2` or `10.0.1.100-10.0.1.249`)
/// before any socket sees them: a flood that must reach a backend host, but
/// not load its SIP server.
pub fn drop_udp_from(ns: &str, sources: &str) {
    sh(&format!(
        "ip netns exec {ns} nft -f - <<'EOF'
table inet flood {{
  chain input {{
    type filter hook input priority -10; policy accept;
    ip saddr {sources} udp dport 5060 counter drop
  }}
}}
EOF"
    ));
}

/// Datagrams the rule of [`drop_udp_from`] dropped in `ns`.
pub fn dropped_from(ns: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&sh_out(&format!(
        "ip netns exec {ns} nft -j list table inet flood"
    )))
    .expect("nft -j");
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
}
