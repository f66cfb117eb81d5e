//! Test support: network namespaces that clean up after themselves, frames built
//! byte by byte with checksums computed from scratch (independently of the code
//! under test), and SIP messages.
#![allow(dead_code)]

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "command failed: {cmd}");
}

pub fn sh_out(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        o.status.success(),
        "command failed: {cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn require_root() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "these tests load XDP programs and make network namespaces: run them as root (cargo xtask test)"
    );
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A named network namespace, deleted (with everything in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!(
            "bt{}-{}-{}",
            tag,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        sh(&format!("ip netns add {name}"));
        sh(&format!("ip -n {name} link set lo up"));
        Netns { name }
    }

    pub fn exec(&self, cmd: &str) {
        sh(&format!("ip netns exec {} {cmd}", self.name));
    }

    pub fn ip(&self, args: &str) {
        sh(&format!("ip -n {} {args}", self.name));
    }

    /// Moves the calling thread into this namespace.
    pub fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("netns file");
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {}", self.name);
    }

    pub fn ifindex(&self, dev: &str) -> u32 {
        let out = sh_out(&format!("ip -n {} -o link show {dev}", self.name));
        out.split(':').next().unwrap().trim().parse().unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The balancer host of the fixture tests and the benchmark, in a namespace of
/// its own that the calling thread enters: client side `cli0` (10.0.1.1,
/// fd00:1::1, MAC 02:00:00:00:ff:01), backend side `bk0` (10.0.2.1, fd00:2::1,
/// MAC 02:00:00:00:fe:01), forwarding on, and static neighbours so FIB answers
/// are known: the client 10.0.1.2/fd00:1::2 at 02:00:00:00:01:02, backends
/// 10.0.2.H at 02:00:00:00:02:HH (H in hex) and fd00:2::H at 02:00:00:00:06:H
/// for H in 11, 12, 13, 21, 22. Returns the namespace and the two ifindexes.
pub fn fixture_net(tag: &str) -> (Netns, u32, u32) {
    let ns = Netns::new(tag);
    ns.ip("link add cli0 address 02:00:00:00:ff:01 type veth peer name cli0p");
    ns.ip("link add bk0 address 02:00:00:00:fe:01 type veth peer name bk0p");
    for d in ["cli0", "cli0p", "bk0", "bk0p"] {
        ns.ip(&format!("link set {d} up"));
    }
    ns.ip("addr add 10.0.1.1/24 dev cli0");
    ns.ip("addr add 10.0.2.1/24 dev bk0");
    ns.ip("addr add fd00:1::1/64 dev cli0 nodad");
    ns.ip("addr add fd00:2::1/64 dev bk0 nodad");
    ns.ip("neigh add 10.0.1.2 lladdr 02:00:00:00:01:02 dev cli0 nud permanent");
    ns.ip("neigh add fd00:1::2 lladdr 02:00:00:00:01:02 dev cli0 nud permanent");
    for h in [11, 12, 13, 21, 22] {
        ns.ip(&format!(
            "neigh add 10.0.2.{h} lladdr 02:00:00:00:02:{h:02x} dev bk0 nud permanent"
        ));
        ns.ip(&format!(
            "neigh add fd00:2::{h} lladdr 02:00:00:00:06:{h} dev bk0 nud permanent"
        ));
    }
    ns.exec("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1");
    let cli = ns.ifindex("cli0");
    let bk = ns.ifindex("bk0");
    ns.enter();
    (ns, cli, bk)
}

/// Runs `prog` once on `frame` as received on `ingress` (BPF_PROG_TEST_RUN with
/// an `xdp_md` context); the output frame lands in `out`.
pub fn run_xdp(
    dp: &mut balancer::kernel::Dataplane,
    prog: &str,
    frame: &[u8],
    ingress: u32,
    out: &mut Vec<u8>,
) -> aya::programs::TestRunResult {
    use aya::programs::{TestRun, TestRunOptions};
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
    out.resize(frame.len() + 256, 0);
    let r = dp
        .program(prog)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            ctx_in: Some(&ctx),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    r
}

// ---- frames ----

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

#[derive(Clone, Debug)]
pub struct Frame {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// (TPID, VLAN id) outermost first.
    pub vlans: Vec<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
    /// Send a zero UDP checksum (IPv4 only: "no checksum").
    pub zero_csum: bool,
    /// IPv4 options (a multiple of 4 bytes): a header longer than 20 bytes.
    pub ip_options: Vec<u8>,
}

impl Frame {
    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, payload: &[u8]) -> Frame {
        Frame {
            dmac: [0x02, 0, 0, 0, 0xff, 0x01],
            smac: [0x02, 0, 0, 0, 0x01, 0x02],
            vlans: vec![],
            src,
            dst,
            ttl: 64,
            proto: 17,
            sport,
            dport,
            payload: payload.to_vec(),
            zero_csum: false,
            ip_options: vec![],
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dmac);
        f.extend_from_slice(&self.smac);
        for (tpid, id) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        let l4 = self.l4();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&ETH_P_IP.to_be_bytes());
                assert_eq!(self.ip_options.len() % 4, 0);
                let hl = 20 + self.ip_options.len();
                let tot = (hl + l4.len()) as u16;
                let mut h = vec![0x40 | (hl / 4) as u8, 0];
                h.extend_from_slice(&tot.to_be_bytes());
                h.extend_from_slice(&[0x12, 0x34, 0x40, 0, self.ttl, self.proto, 0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&self.ip_options);
                let c = checksum(&h, 0);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                f.extend_from_slice(&[self.proto, self.ttl]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => panic!("mixed families"),
        }
        f.extend_from_slice(&l4);
        f
    }

    fn l4(&self) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&self.sport.to_be_bytes());
        u.extend_from_slice(&self.dport.to_be_bytes());
        if self.proto == 17 {
            u.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            u.extend_from_slice(&[0, 0]);
            u.extend_from_slice(&self.payload);
            if !(self.zero_csum && self.src.is_ipv4()) {
                let c = l4_checksum(self.src, self.dst, 17, &u);
                u[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
            }
        } else {
            // A minimal TCP header (SYN), enough to be "not UDP".
            u.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
            u.extend_from_slice(&self.payload);
        }
        u
    }
}

/// One's-complement sum of `data` (big-endian words) plus `init`, complemented.
pub fn checksum(data: &[u8], init: u32) -> u16 {
    let mut sum = init;
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => panic!(),
    }
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    let mut sum = 0u32;
    for c in p.chunks(2) {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    sum
}

pub fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, seg: &[u8]) -> u16 {
    checksum(seg, pseudo(src, dst, proto, seg.len()))
}

/// A parsed output frame, with its checksums verified from scratch.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub vlans: Vec<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
}

pub fn parse(f: &[u8]) -> Parsed {
    let mut off = 12;
    let mut vlans = vec![];
    let mut et = u16::from_be_bytes([f[off], f[off + 1]]);
    while et == 0x8100 || et == 0x88a8 {
        vlans.push((et, u16::from_be_bytes([f[off + 2], f[off + 3]])));
        off += 4;
        et = u16::from_be_bytes([f[off], f[off + 1]]);
    }
    off += 2;
    let (src, dst, ttl, l4): (IpAddr, IpAddr, u8, usize) = if et == ETH_P_IP {
        let hl = (f[off] & 0x0f) as usize * 4;
        let h = &f[off..off + hl];
        assert_eq!(checksum(h, 0), 0, "IPv4 header checksum");
        let s: [u8; 4] = h[12..16].try_into().unwrap();
        let d: [u8; 4] = h[16..20].try_into().unwrap();
        (s.into(), d.into(), h[8], off + hl)
    } else {
        let h = &f[off..off + 40];
        let s: [u8; 16] = h[8..24].try_into().unwrap();
        let d: [u8; 16] = h[24..40].try_into().unwrap();
        (s.into(), d.into(), h[7], off + 40)
    };
    let seg = &f[l4..];
    let ulen = u16::from_be_bytes([seg[4], seg[5]]) as usize;
    let seg = &seg[..ulen];
    let csum = u16::from_be_bytes([seg[6], seg[7]]);
    if !(csum == 0 && src.is_ipv4()) {
        assert_eq!(l4_checksum(src, dst, 17, seg), 0, "UDP checksum");
    }
    Parsed {
        dmac: f[0..6].try_into().unwrap(),
        smac: f[6..12].try_into().unwrap(),
        vlans,
        src,
        dst,
        ttl,
        sport: u16::from_be_bytes([seg[0], seg[1]]),
        dport: u16::from_be_bytes([seg[2], seg[3]]),
        payload: seg[8..].to_vec(),
    }
}

// ---- SIP ----

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

// ---- maps of the loaded program, beside the Dataplane API ----

/// A map of the loaded main program, found by name among the maps it uses.
pub fn program_map(dp: &mut balancer::kernel::Dataplane, name: &str) -> aya::maps::Map {
    let ids = dp
        .program(balancer::kernel::PROGRAM)
        .unwrap()
        .info()
        .unwrap()
        .map_ids()
        .unwrap()
        .expect("the kernel reports the program's maps");
    for id in ids {
        let md = aya::maps::MapData::from_id(id).unwrap();
        if md.info().unwrap().name_as_str() == Some(name) {
            return aya::maps::Map::from_map_data(md).unwrap();
        }
    }
    panic!("the program uses no map {name}");
}

/// Sets the hashing algorithm (`maps::ALG_*`) of the installed service at `vip`
/// by rewriting its SERVICES entry (`install_service` writes `ALG_CALL_ID` as
/// long as `ServiceSpec` carries no algorithm).
pub fn set_algorithm(
    dp: &mut balancer::kernel::Dataplane,
    vip: std::net::SocketAddr,
    algorithm: u32,
) {
    use balancer_common::maps::{Endpoint, Service};
    let mut m: aya::maps::HashMap<aya::maps::MapData, Endpoint, Service> =
        program_map(dp, "SERVICES").try_into().unwrap();
    let key = balancer::kernel::endpoint(vip);
    let mut s = m.get(&key, 0).expect("service installed");
    s.algorithm = algorithm;
    m.insert(key, s, 0).unwrap();
}

/// The round-robin counter of service `id` on `cpu`.
pub fn rr_counter(dp: &mut balancer::kernel::Dataplane, id: u32, cpu: usize) -> u32 {
    let m: aya::maps::PerCpuArray<aya::maps::MapData, u32> =
        program_map(dp, "RR").try_into().unwrap();
    m.get(&id, 0).unwrap()[cpu]
}

/// Pins the calling thread to the CPU it runs on (BPF_PROG_TEST_RUN runs the
/// program there, so per-CPU state stays put); returns that CPU.
pub fn pin_to_current_cpu() -> usize {
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0);
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
        cpu as usize
    }
}
