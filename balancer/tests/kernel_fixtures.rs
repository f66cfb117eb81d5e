//! Katran-style fixture tests: frames go through the loaded XDP program with
//! BPF_PROG_TEST_RUN. Each case is data: a sequence of steps, mostly frames in
//! (built by small builders) with the expected verdict, the expected output
//! (MACs, addresses, ports, TTL, payload, IP and UDP checksums recomputed from
//! scratch) and exactly which counters move; a few steps change the set-up
//! between frames. One driver ([`run_table`]) runs a table of cases and reports
//! every failing case by name. The program runs in a network namespace of its
//! own whose routes and static neighbours make the FIB answers (and so the MACs)
//! known.
//!
//! Dialog affinity has its own tests further down: their expectations depend on
//! the kernel's earlier answers (which backend a dialog began on).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::Duration;

use balancer::{
    kernel::{Dataplane, PROGRAM},
    model::{Mode, ServiceConfig},
    select::Selector,
};
use balancer_common::callid::{call_id, SCAN_MAX};
use balancer_common::hash::{hash_addr, hash_bytes, HASH_MAX};
use balancer_common::keys::{from_uri, message_dispatch, request_user, to_uri, KEY_MAX};
use balancer_common::maps::{
    reason, Affinity, AffinityKey, Endpoint, Service, UaPattern, ALG_CALL_ID, ALG_FROM_URI,
    ALG_REQUEST_URI, ALG_ROUND_ROBIN, ALG_SOURCE, ALG_TO_URI, SERVICE_SCANNERS,
};
use balancer_common::useragent::{is_scanner, patterns, DEFAULT_SCANNERS};
use balancer_test_support::{netns::*, packet::*, sip::*, xdp::*};
use rand::{distributions::Alphanumeric, Rng, SeedableRng};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const CLI_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xff, 0x01]; // balancer, client side
const BK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfe, 0x01]; // balancer, backend side
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];

const V4_VIP: &str = "10.0.0.10:5060";
const V6_VIP: &str = "[fd00::10]:5060";
const DSR_VIP: &str = "10.0.0.20:5060";

fn backend_mac(ip: IpAddr) -> [u8; 6] {
    match ip {
        IpAddr::V4(v) => [0x02, 0, 0, 0, 0x02, v.octets()[3]],
        IpAddr::V6(v) => [0x02, 0, 0, 0, 0x06, v.octets()[15]],
    }
}

// ---- the bed ----

struct Bed {
    dp: Dataplane,
    cli: u32,
    bk: u32,
    /// Set once the program is attached (generic XDP) to `cli0`: frames then
    /// travel as real packets instead of through BPF_PROG_TEST_RUN.
    wire: Option<Wire>,
    /// The configuration as set up, restored between cases sharing the bed.
    base: balancer::model::Config,
    _ns: Netns,
}

fn spec(vip: &str, mode: Mode, backends: &[&str]) -> ServiceConfig {
    ServiceConfig {
        mode,
        ..ServiceConfig::with_backends(
            vip.parse().unwrap(),
            backends.iter().map(|b| b.parse().unwrap()).collect(),
        )
    }
}

fn bed() -> Bed {
    bed_with(balancer_common::maps::AFFINITY_ENTRIES)
}

/// The fixture bed with an affinity map of `entries` dialogs.
fn bed_with(entries: u32) -> Bed {
    require_root();
    let (ns, cli, bk) = fixture_net("fx");

    let mut dp = Dataplane::open_with(None, entries).unwrap_or_else(|e| {
        // A refusal is one line; the whole log is what a fix needs.
        match e.downcast_ref::<balancer::kernel::requirements::Rejected>() {
            Some(r) => panic!("{r}\n{}", r.log),
            None => panic!("loading the data plane: {e:#}"),
        }
    });
    dp.install_service(spec(
        V4_VIP,
        Mode::Dnat,
        &["10.0.2.11:5060", "10.0.2.12:5060", "10.0.2.13:5060"],
    ))
    .unwrap();
    dp.install_service(spec(
        V6_VIP,
        Mode::Dnat,
        &[
            "[fd00:2::11]:5060",
            "[fd00:2::12]:5060",
            "[fd00:2::13]:5060",
        ],
    ))
    .unwrap();
    dp.install_service(spec(
        DSR_VIP,
        Mode::Dsr,
        &["10.0.2.21:5060", "10.0.2.22:5060"],
    ))
    .unwrap();
    // These fixtures check parsing, keys and rewrites with exact counters:
    // dialog affinity (tested on its own below) stays out of their way.
    let mut c = dp.config().clone();
    for s in &mut c.services {
        s.affinity = false;
    }
    dp.sync(&c).unwrap();
    dp.add_tx_port(cli).unwrap();
    dp.add_tx_port(bk).unwrap();
    Bed {
        dp,
        cli,
        bk,
        wire: None,
        base: c,
        _ns: ns,
    }
}

impl Bed {
    fn run(&mut self, frame: &[u8], ingress: u32) -> (u32, Vec<u8>) {
        if let Some(w) = &self.wire {
            assert_eq!(
                ingress, self.cli,
                "on the wire, frames enter from the client side"
            );
            return w.exchange(frame);
        }
        let mut out = Vec::new();
        let r = run_xdp(&mut self.dp, PROGRAM, frame, ingress, &mut out);
        (r.return_value, out)
    }

    fn ns(&self) -> &Netns {
        &self._ns
    }

    fn counters(&self) -> HashMap<&'static str, u64> {
        self.dp.stats().unwrap().into_iter().collect()
    }

    /// Runs a frame and returns the verdict, output and the counters that moved.
    fn run_counted(&mut self, frame: &[u8], ingress: u32) -> (u32, Vec<u8>, Vec<&'static str>) {
        let before = self.counters();
        let (v, out) = self.run(frame, ingress);
        let after = self.counters();
        let mut moved: Vec<&str> = after
            .iter()
            .filter(|(k, n)| before[*k] != **n)
            .map(|(k, _)| *k)
            .collect();
        moved.sort();
        (v, out, moved)
    }

    /// Undoes what the [`Act::shared`] acts of a case changed: the
    /// configuration as set up and no dialogs remembered, every service back
    /// to the Call-ID.
    fn reset<'a>(&mut self, acts: impl Iterator<Item = &'a Act> + Clone) {
        if acts.clone().any(|a| matches!(a, Act::Affinity(_))) {
            self.dp.sync(&self.base.clone()).unwrap();
            let mut m: aya::maps::HashMap<aya::maps::MapData, AffinityKey, Affinity> =
                program_map(&mut self.dp, "AFFINITY").try_into().unwrap();
            let keys: Vec<AffinityKey> = m.keys().map(|k| k.unwrap()).collect();
            for k in keys {
                m.remove(&k).unwrap();
            }
        }
        if acts.clone().any(|a| matches!(a, Act::Algorithm(..))) {
            for vip in [V4_VIP, V6_VIP, DSR_VIP] {
                set_algorithm(&mut self.dp, vip.parse().unwrap(), ALG_CALL_ID);
            }
        }
    }

    /// The live table of the service at `vip`.
    fn table(&self, vip: &str) -> &Selector {
        &self.dp.live()[&vip.parse().unwrap()].selector
    }

    /// The SERVICES entry of `vip` (its id keys the per-service maps).
    fn service(&mut self, vip: &str) -> Service {
        let m: aya::maps::HashMap<aya::maps::MapData, Endpoint, Service> =
            program_map(&mut self.dp, "SERVICES").try_into().unwrap();
        m.get(
            &balancer_common::maps::Endpoint::from(vip.parse::<SocketAddr>().unwrap()),
            0,
        )
        .unwrap()
    }
}

/// Frames as real packets: written to `cli0p` (so they arrive on `cli0`, where
/// the program runs in generic mode) and read back where the program sends
/// them, at `bk0p`. Generic XDP linearises the packet, so the program sees
/// datagrams larger than BPF_PROG_TEST_RUN's one page.
struct Wire {
    tx: std::os::fd::OwnedFd,
    rx: std::os::fd::OwnedFd,
}

fn packet_socket(ifindex: u32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let all = (libc::ETH_P_ALL as u16).to_be();
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, all as i32);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = all;
        sll.sll_ifindex = ifindex as i32;
        let rc = libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        // An upper bound on the wait, not a pause: a datagram normally
        // arrives in microseconds.
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        let rc = libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        assert_eq!(rc, 0);
        fd
    }
}

impl Wire {
    /// Sends `frame` and awaits the packet the program sent to the backend
    /// side: the same UDP ports and length (router solicitations and the like
    /// are skipped). Reported as redirected; nothing within the bound, as passed.
    fn exchange(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        use std::os::fd::AsRawFd;
        let n = unsafe {
            libc::send(
                self.tx.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
        let mut buf = vec![0u8; 65536];
        loop {
            let n = unsafe {
                libc::recv(
                    self.rx.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                return (XDP_PASS, Vec::new());
            }
            let got = &buf[..n as usize];
            if got.len() == frame.len() && got[12..14] == frame[12..14] {
                return (XDP_REDIRECT, got.to_vec());
            }
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn client_v4(payload: &[u8]) -> Frame {
    Frame::udp(ip("10.0.1.2"), 5060, ip("10.0.0.10"), 5060, payload)
}

fn client_v6(payload: &[u8]) -> Frame {
    Frame::udp(ip("fd00:1::2"), 5060, ip("fd00::10"), 5060, payload)
}

fn src_key(a: IpAddr) -> ([u8; 16], u8) {
    match a {
        IpAddr::V4(v) => {
            let mut k = [0; 16];
            k[..4].copy_from_slice(&v.octets());
            (k, 2)
        }
        IpAddr::V6(v) => (v.octets(), 10),
    }
}

// ---- what a case is ----

/// A case: a name and its steps, run in order on one bed.
struct Case {
    name: String,
    steps: Vec<Step>,
}

fn case(name: impl Into<String>, steps: Vec<Step>) -> Case {
    Case {
        name: name.into(),
        steps,
    }
}

enum Step {
    /// A frame through the program.
    Send(Box<Packet>),
    /// A change of the set-up between frames (see [`Act::shared`] for which
    /// cases share a bed).
    Do(Act),
    /// The outputs of the last `n` sends are IP fragments: reassembled, they are
    /// `sent` as `out` says.
    Reassembled { n: usize, sent: Frame, out: Out },
    /// The round-robin counter of the service advanced by `n` since [`Act::PinCpu`].
    RoundRobinAdvanced { vip: &'static str, n: u32 },
    /// The kernel's key hash, observed as the AFFINITY map's key (service, hash):
    /// the entry for `hash` points at the slot of the backend user space predicts.
    AffinityHash { vip: &'static str, hash: u32 },
    /// User space's reading of a payload, the documented rules checked on the
    /// data: its Call-ID, and the reason `message_dispatch` gives.
    UserSpace {
        payload: Vec<u8>,
        call_id: Option<Vec<u8>>,
        reason: &'static str,
    },
    /// User space's picks for these destinations cover at least `n` backends:
    /// the sends checked against them are not all about one backend.
    Spread { tos: Vec<To>, n: usize },
}

enum Act {
    /// Rewrites the SERVICES entry's algorithm (`maps::ALG_*`).
    Algorithm(&'static str, u32),
    Install(Box<ServiceConfig>),
    /// The service at the VIP passes datagrams it has no backend for.
    NoBackendPass(&'static str),
    /// Dialog affinity on for the service at the VIP.
    Affinity(&'static str),
    /// The service at the VIP drops scanners (`SERVICE_SCANNERS`), and
    /// `SCANNERS` holds these prefixes (for every service).
    Scanners(&'static str, &'static [&'static str]),
    /// `ip ARGS` in the bed's namespace.
    Ip(String),
    /// Replaces the neighbour entry of the backend user space picks for `to`.
    Neighbour {
        to: To,
        mac: [u8; 6],
    },
    /// Lets time pass: the next-hop cache's one-second lifetime is the subject.
    Wait(Duration),
    /// Pins the thread to its CPU (per-CPU state stays put) and notes the
    /// round-robin counter of the service.
    PinCpu(&'static str),
    /// Attaches the program (generic XDP) to `cli0` with both sides' MTU at
    /// `mtu`: later frames travel as real packets ([`Wire`]).
    Wire {
        mtu: u32,
    },
}

impl Act {
    /// Whether cases with this act can share a bed: [`Bed::reset`] undoes it,
    /// or (the wire) every case that has it wants it.
    fn shared(&self) -> bool {
        matches!(
            self,
            Act::Algorithm(..) | Act::Affinity(_) | Act::PinCpu(_) | Act::Wire { .. }
        )
    }
}

/// Where user space says a client's datagram goes: always a backend of the
/// service at the VIP, through its live Maglev table.
#[derive(Clone)]
enum To {
    /// `Selector::whereis` of these key bytes.
    Key(&'static str, Vec<u8>),
    /// The source-address fallback of the frame's source.
    Source(&'static str),
    /// `message_dispatch` of the frame's payload and source under the algorithm.
    Dispatch(&'static str, u32),
    /// The `k`-th datagram since [`Act::PinCpu`] under round-robin.
    RoundRobin(&'static str, u32),
}

fn key(vip: &'static str, k: impl AsRef<[u8]>) -> To {
    To::Key(vip, k.as_ref().to_vec())
}

/// What comes out.
enum Out {
    /// Redirected to the backend side: MACs from the FIB, the destination the
    /// backend, TTL one less, everything else as sent.
    Dnat(To),
    /// Like `Dnat`, the neighbour's MAC being this one.
    DnatVia(To, [u8; 6]),
    /// Rewritten for the backend and handed to the kernel (which fragments or
    /// answers ICMP): verdict pass, MACs and TTL as sent.
    Kernel(To),
    /// Redirected to the backend with only the MACs changed.
    Dsr(To),
    /// A backend's message rewritten to come from the VIP, redirected to the client.
    FromVip(&'static str),
    /// Passed, byte for byte as sent.
    Untouched,
    Drop,
    /// Redirected; the output is checked later ([`Step::Reassembled`]).
    Redirected,
}

/// The counters a frame moves.
enum Moved {
    /// Exactly these counters (sorted by the driver).
    Exactly(Vec<&'static str>),
    /// The reason `message_dispatch` predicts for the payload under the
    /// algorithm, `redirect`, and these.
    Predicted(u32, Vec<&'static str>),
}

/// One frame in, and what must come out.
struct Packet {
    /// Names the frame in a failure (beside the case's name and step number).
    note: String,
    input: Input,
    side: Side,
    out: Out,
    moved: Moved,
    /// Exact bytes of the output at an offset, beyond the field checks.
    bytes: Vec<(usize, Vec<u8>)>,
}

enum Input {
    Frame(Frame),
    /// Bytes that are not a whole UDP datagram (ARP, cut frames, fragments).
    Raw(Vec<u8>),
}

#[derive(Clone, Copy)]
enum Side {
    Client,
    Backend,
}

impl Packet {
    fn client(f: Frame) -> Packet {
        Packet::new(Input::Frame(f), Side::Client)
    }

    fn backend(f: Frame) -> Packet {
        Packet::new(Input::Frame(f), Side::Backend)
    }

    fn raw(bytes: Vec<u8>, side: Side) -> Packet {
        Packet::new(Input::Raw(bytes), side)
    }

    fn new(input: Input, side: Side) -> Packet {
        Packet {
            note: String::new(),
            input,
            side,
            out: Out::Untouched,
            moved: Moved::Exactly(vec![]),
            bytes: vec![],
        }
    }

    fn out(mut self, out: Out) -> Self {
        self.out = out;
        self
    }

    fn moved(mut self, m: &[&'static str]) -> Self {
        self.moved = Moved::Exactly(m.to_vec());
        self
    }

    fn predicted(mut self, alg: u32) -> Self {
        self.moved = Moved::Predicted(alg, vec![]);
        self
    }

    fn predicted_with(mut self, alg: u32, also: &'static str) -> Self {
        self.moved = Moved::Predicted(alg, vec![also]);
        self
    }

    fn bytes_at(mut self, off: usize, b: &[u8]) -> Self {
        self.bytes.push((off, b.to_vec()));
        self
    }

    fn note(mut self, n: impl Into<String>) -> Self {
        self.note = n.into();
        self
    }

    fn step(self) -> Step {
        Step::Send(Box::new(self))
    }
}

// ---- the driver ----

/// Runs every case and fails listing each failing case by name. Cases whose
/// acts can be undone share a bed (reset between them); any other case gets
/// its own. Beds are independent (a namespace and a program each), so a few
/// run at once: most of a bed's cost is waiting for `ip` and the verifier.
fn run_table(table: Vec<Case>) {
    const WORKERS: usize = 4;
    let total = table.len();
    // Jobs: the cases that can share a bed, grouped by the environment they
    // need (on the wire or not); every other case alone.
    let mut jobs: Vec<Vec<(usize, &Case)>> = vec![];
    let mut groups: HashMap<Option<u32>, usize> = HashMap::new();
    for (i, c) in table.iter().enumerate() {
        let acts = c.steps.iter().filter_map(|s| match s {
            Step::Do(a) => Some(a),
            _ => None,
        });
        if acts.clone().all(Act::shared) {
            let wire = acts
                .filter_map(|a| match a {
                    Act::Wire { mtu } => Some(*mtu),
                    _ => None,
                })
                .next();
            let j = *groups.entry(wire).or_insert_with(|| {
                jobs.push(vec![]);
                jobs.len() - 1
            });
            jobs[j].push((i, c));
        } else {
            jobs.push(vec![(i, c)]);
        }
    }
    let jobs = std::sync::Mutex::new(jobs.into_iter());
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                while let Some(job) = {
                    let next = jobs.lock().unwrap().next();
                    next
                } {
                    let mut b = None;
                    for (i, c) in job {
                        let t0 = std::time::Instant::now();
                        let r = catch_unwind(AssertUnwindSafe(|| {
                            run_case(b.get_or_insert_with(bed), c)
                        }));
                        // Failed or not, the next case starts from the set-up;
                        // a bed that cannot be reset is replaced.
                        let acts = c.steps.iter().filter_map(|s| match s {
                            Step::Do(a) => Some(a),
                            _ => None,
                        });
                        if let Some(bed) = b.as_mut() {
                            if catch_unwind(AssertUnwindSafe(|| bed.reset(acts))).is_err() {
                                b = None;
                            }
                        }
                        eprintln!("case {:?}: {:.1?}", c.name, t0.elapsed());
                        if let Err(e) = r {
                            let m = format!("{}: {}", c.name, panic_text(&*e));
                            failures.lock().unwrap().push((i, m));
                        }
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    let names: Vec<String> = failures.into_iter().map(|(_, m)| m).collect();
    assert!(
        names.is_empty(),
        "{} of {total} cases failed:\n{}",
        names.len(),
        names.join("\n")
    );
    eprintln!("{total} cases passed");
}

fn panic_text(e: &(dyn std::any::Any + std::marker::Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// State of one case's run.
struct Run<'a> {
    bed: &'a mut Bed,
    outs: Vec<Vec<u8>>,
    rr: Option<(usize, u32)>,
}

fn run_case(bed: &mut Bed, c: &Case) {
    let mut run = Run {
        bed,
        outs: vec![],
        rr: None,
    };
    for (i, step) in c.steps.iter().enumerate() {
        let r = catch_unwind(AssertUnwindSafe(|| run.step(step)));
        if let Err(e) = r {
            let note = match step {
                Step::Send(s) if !s.note.is_empty() => format!(" ({})", s.note),
                _ => String::new(),
            };
            resume_unwind(Box::new(format!("step {i}{note}: {}", panic_text(&*e))));
        }
    }
}

impl Run<'_> {
    fn step(&mut self, step: &Step) {
        match step {
            Step::Send(s) => self.send(s),
            Step::Do(a) => self.act(a),
            Step::Reassembled { n, sent, out } => {
                let outs = &self.outs[self.outs.len() - n..];
                let (p, macs) = reassemble(outs);
                assert_eq!(
                    p.payload, sent.payload,
                    "intact, UDP checksum right over the whole"
                );
                match out {
                    Out::Dnat(to) => {
                        let want = self.resolve(to, sent);
                        assert_eq!(SocketAddr::new(p.dst, p.dport), want, "destination");
                        assert_eq!((p.src, p.sport), (sent.src, sent.sport), "source");
                        assert_eq!(p.ttl, sent.ttl - 1, "TTL");
                        assert!(
                            macs.iter().all(|m| *m == backend_mac(want.ip())),
                            "MACs {macs:?}"
                        );
                    }
                    Out::FromVip(vip) => {
                        let vip: SocketAddr = vip.parse().unwrap();
                        assert_eq!((p.src, p.sport), (vip.ip(), vip.port()), "source");
                        assert_eq!((p.dst, p.dport), (sent.dst, sent.dport), "destination");
                        assert!(macs.iter().all(|m| *m == CLIENT_MAC), "MACs {macs:?}");
                    }
                    _ => unreachable!("reassembled outputs are checked as Dnat or FromVip"),
                }
            }
            Step::RoundRobinAdvanced { vip, n } => {
                let (cpu, c0) = self.rr.expect("PinCpu first");
                let id = self.bed.service(vip).id;
                assert_eq!(rr_counter(&mut self.bed.dp, id, cpu), c0.wrapping_add(*n));
            }
            Step::UserSpace {
                payload,
                call_id: want,
                reason: why,
            } => {
                assert_eq!(call_id(payload), want.as_deref(), "user space's Call-ID");
                let (k, family) = src_key(ip("10.0.1.2"));
                let d = message_dispatch(payload, ALG_CALL_ID, &k, family);
                assert_eq!(
                    reason::NAMES[d.reason as usize],
                    *why,
                    "user space's reason"
                );
            }
            Step::Spread { tos, n } => {
                let f = client_v4(b"");
                let seen: std::collections::HashSet<SocketAddr> =
                    tos.iter().map(|t| self.resolve(t, &f)).collect();
                assert!(seen.len() >= *n, "backends used: {seen:?}");
            }
            Step::AffinityHash { vip, hash } => {
                let svc = self.bed.service(vip);
                let want = self.bed.table(vip).pick(*hash).unwrap().address;
                let m: aya::maps::HashMap<aya::maps::MapData, AffinityKey, Affinity> =
                    program_map(&mut self.bed.dp, "AFFINITY")
                        .try_into()
                        .unwrap();
                let k = AffinityKey {
                    service: svc.id,
                    hash: *hash,
                };
                let e = m.get(&k, 0).unwrap_or_else(|_| {
                    let held: Vec<u32> = m.keys().map(|k| k.unwrap().hash).collect();
                    panic!("no affinity entry for hash {hash:#010x}; the kernel's: {held:x?}")
                });
                assert_eq!(
                    Some(e.slot),
                    self.bed.dp.slot_of(want),
                    "entry points at {want}"
                );
            }
        }
    }

    fn act(&mut self, a: &Act) {
        let dp = &mut self.bed.dp;
        match a {
            Act::Algorithm(vip, alg) => set_algorithm(dp, vip.parse().unwrap(), *alg),
            Act::Install(s) => {
                dp.install_service((**s).clone()).unwrap();
            }
            Act::NoBackendPass(vip) | Act::Affinity(vip) => {
                let mut c = dp.config().clone();
                let s = c
                    .services
                    .iter_mut()
                    .find(|s| s.vip.to_string() == *vip)
                    .unwrap();
                match a {
                    Act::NoBackendPass(_) => s.no_backend = balancer::model::NoBackend::Pass,
                    _ => s.affinity = true,
                }
                dp.sync(&c).unwrap();
            }
            Act::Scanners(vip, list) => {
                let mut m: aya::maps::Array<aya::maps::MapData, UaPattern> =
                    program_map(dp, "SCANNERS").try_into().unwrap();
                for (i, p) in patterns(list).unwrap().iter().enumerate() {
                    m.set(i as u32, p, 0).unwrap();
                }
                let mut m: aya::maps::HashMap<aya::maps::MapData, Endpoint, Service> =
                    program_map(dp, "SERVICES").try_into().unwrap();
                let key = Endpoint::from(vip.parse::<SocketAddr>().unwrap());
                let mut s = m.get(&key, 0).unwrap();
                s.flags |= SERVICE_SCANNERS;
                m.insert(key, s, 0).unwrap();
            }
            Act::Ip(args) => self.bed.ns().ip(args),
            Act::Neighbour { to, mac } => {
                let want = self.resolve(to, &client_v4(b""));
                let m: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
                self.bed.ns().ip(&format!(
                    "neigh replace {} lladdr {} dev bk0 nud permanent",
                    want.ip(),
                    m.join(":")
                ));
            }
            Act::Wait(d) => std::thread::sleep(*d),
            Act::PinCpu(vip) => {
                let cpu = pin_to_current_cpu();
                let id = self.bed.service(vip).id;
                self.rr = Some((cpu, rr_counter(&mut self.bed.dp, id, cpu)));
            }
            Act::Wire { .. } if self.bed.wire.is_some() => {}
            Act::Wire { mtu } => {
                for d in ["cli0", "cli0p", "bk0", "bk0p"] {
                    self.bed.ns().ip(&format!("link set {d} mtu {mtu}"));
                }
                // Only the frames sent here may reach the program: no router
                // solicitations or MLD reports from the client side.
                self.bed
                    .ns()
                    .exec("sysctl -qw net.ipv6.conf.cli0p.disable_ipv6=1");
                self.bed
                    .dp
                    .attach("cli0", aya::programs::XdpMode::Skb)
                    .unwrap();
                let ns = self.bed.ns();
                self.bed.wire = Some(Wire {
                    tx: packet_socket(ns.ifindex("cli0p")),
                    rx: packet_socket(ns.ifindex("bk0p")),
                });
            }
        }
    }

    fn resolve(&self, to: &To, f: &Frame) -> SocketAddr {
        let (vip, hash) = match to {
            To::Key(vip, k) => (vip, hash_bytes(k)),
            To::Source(vip) => {
                let (k, family) = src_key(f.src);
                (vip, hash_addr(&k, family))
            }
            To::Dispatch(vip, alg) => {
                let (k, family) = src_key(f.src);
                (vip, message_dispatch(&f.payload, *alg, &k, family).hash)
            }
            To::RoundRobin(vip, k) => (vip, self.rr.expect("PinCpu first").1.wrapping_add(*k)),
        };
        let sel = self.bed.table(vip);
        if let To::Key(_, k) = to {
            // The same as `whereis`, said once here so a change to either shows.
            assert_eq!(
                sel.whereis(k).unwrap().address,
                sel.pick(hash).unwrap().address
            );
        }
        sel.pick(hash).unwrap().address
    }

    fn send(&mut self, s: &Packet) {
        let bytes = match &s.input {
            Input::Frame(f) => f.build(),
            Input::Raw(b) => b.clone(),
        };
        let ingress = match s.side {
            Side::Client => self.bed.cli,
            Side::Backend => self.bed.bk,
        };
        let (v, out, moved) = self.bed.run_counted(&bytes, ingress);
        let frame = || match &s.input {
            Input::Frame(f) => f,
            Input::Raw(_) => panic!("this expectation needs a Frame input"),
        };
        match &s.out {
            Out::Dnat(to) => {
                let f = frame();
                let want = self.resolve(to, f);
                assert_dnat(f, v, &out, want, backend_mac(want.ip()));
            }
            Out::DnatVia(to, mac) => {
                let f = frame();
                let want = self.resolve(to, f);
                assert_dnat(f, v, &out, want, *mac);
            }
            Out::Kernel(to) => {
                let f = frame();
                let want = self.resolve(to, f);
                assert_eq!(v, XDP_PASS, "verdict");
                let p = parse(&out);
                assert_eq!((p.dst, p.dport), (want.ip(), want.port()), "destination");
                assert_eq!((p.dmac, p.smac), (f.dmac, f.smac), "MACs");
                assert_eq!((p.src, p.sport), (f.src, f.sport), "source");
                assert_eq!(p.ttl, f.ttl, "TTL");
                assert_eq!(p.payload, f.payload, "payload");
            }
            Out::Dsr(to) => {
                let want = self.resolve(to, frame());
                assert_eq!(v, XDP_REDIRECT, "verdict");
                assert_eq!(&out[0..6], &backend_mac(want.ip()), "destination MAC");
                assert_eq!(&out[6..12], &BK_MAC, "source MAC");
                assert_eq!(&out[12..], &bytes[12..], "IP and UDP untouched");
            }
            Out::FromVip(vip) => {
                let f = frame();
                let vip: SocketAddr = vip.parse().unwrap();
                assert_eq!(v, XDP_REDIRECT, "verdict");
                let p = parse(&out);
                assert_eq!((p.src, p.sport), (vip.ip(), vip.port()), "source");
                assert_eq!((p.dst, p.dport), (f.dst, f.dport), "destination");
                assert_eq!((p.dmac, p.smac), (CLIENT_MAC, CLI_MAC), "MACs");
                assert_eq!(p.ttl, f.ttl - 1, "TTL");
                assert_eq!(p.payload, f.payload, "payload");
                assert_eq!(out.len(), bytes.len(), "length");
            }
            Out::Untouched => {
                assert_eq!(v, XDP_PASS, "verdict");
                assert_eq!(out, bytes, "passed untouched");
            }
            Out::Drop => assert_eq!(v, XDP_DROP, "verdict"),
            Out::Redirected => assert_eq!(v, XDP_REDIRECT, "verdict"),
        }
        let mut want_moved = match &s.moved {
            Moved::Exactly(m) => m.clone(),
            Moved::Predicted(alg, also) => {
                let f = frame();
                let (k, family) = src_key(f.src);
                let d = message_dispatch(&f.payload, *alg, &k, family);
                let mut m = vec![reason::NAMES[d.reason as usize], "redirect"];
                m.extend(also);
                m
            }
        };
        want_moved.sort();
        assert_eq!(moved, want_moved, "counters that moved");
        for (off, b) in &s.bytes {
            assert_eq!(&out[*off..*off + b.len()], &b[..], "output bytes at {off}");
        }
        self.outs.push(out);
    }
}

/// Checks a dispatched frame: redirected to the backend side, MACs from the FIB,
/// destination = `want`, TTL decremented, everything else as sent.
fn assert_dnat(sent: &Frame, verdict: u32, out: &[u8], want: SocketAddr, dmac: [u8; 6]) {
    assert_eq!(verdict, XDP_REDIRECT, "verdict");
    let p = parse(out);
    assert_eq!((p.dst, p.dport), (want.ip(), want.port()), "destination");
    assert_eq!((p.dmac, p.smac), (dmac, BK_MAC), "MACs");
    assert_eq!((p.src, p.sport), (sent.src, sent.sport), "source");
    assert_eq!(p.ttl, sent.ttl - 1, "TTL");
    assert_eq!(p.vlans, sent.vlans, "VLAN tags");
    assert_eq!(p.payload, sent.payload, "payload");
    assert_eq!(out.len(), sent.build().len(), "length");
}

// ---- the tables ----

const DISPATCHED: &[&str] = &["callid", "redirect"];

/// A client's INVITE to the IPv4 VIP carrying `header`, dispatched by `id`.
fn by_call_id(f: Frame, vip: &'static str, id: &str) -> Step {
    Packet::client(f)
        .out(Out::Dnat(key(vip, id)))
        .moved(DISPATCHED)
        .note(id)
        .step()
}

/// Parsing, keys and rewrites of single datagrams on the default set-up.
fn dispatch_cases() -> Vec<Case> {
    let mut t = vec![];
    let id = "a84b4c76e66710@pc33.atlanta.com";
    t.push(case(
        "ipv4 INVITE is dispatched by its Call-ID",
        vec![by_call_id(
            client_v4(&invite(&format!("Call-ID: {id}"), 0)),
            V4_VIP,
            id,
        )],
    ));
    let mut f = client_v4(&invite("Call-ID: nocsum@x", 0));
    f.zero_csum = true;
    t.push(case(
        "ipv4 without UDP checksum stays without",
        vec![Packet::client(f)
            .out(Out::Dnat(key(V4_VIP, "nocsum@x")))
            .moved(DISPATCHED)
            .bytes_at(40, &[0, 0])
            .step()],
    ));
    // Router Alert (4 bytes) and NOP padding up to 12 bytes of options: IHL 8.
    let mut f = client_v4(&invite("Call-ID: with-options", 0));
    f.ip_options = vec![0x94, 0x04, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0];
    assert_eq!(f.build()[14], 0x48);
    let options = f.ip_options.clone();
    t.push(case(
        "ipv4 with options is dispatched, options kept",
        vec![Packet::client(f)
            .out(Out::Dnat(key(V4_VIP, "with-options")))
            .moved(DISPATCHED)
            .bytes_at(34, &options)
            .step()],
    ));
    let id = "v6call@[fd00:1::2]";
    t.push(case(
        "ipv6 INVITE is dispatched by its Call-ID",
        vec![by_call_id(
            client_v6(&invite(&format!("Call-ID: {id}"), 0)),
            V6_VIP,
            id,
        )],
    ));
    for tags in [vec![(0x8100, 100)], vec![(0x88a8, 7), (0x8100, 100)]] {
        let mut f = client_v4(&invite("Call-ID: tagged-1", 0));
        f.vlans = tags.clone();
        t.push(case(
            format!("VLAN tags {tags:x?} are kept"),
            vec![by_call_id(f, V4_VIP, "tagged-1")],
        ));
    }
    for h in [
        "i: fold-me@host",
        "CALL-ID:fold-me@host",
        "Call-ID\r\n :\r\n\tfold-me@host  ",
    ] {
        t.push(case(
            format!("{h:?} goes where the long form goes"),
            vec![by_call_id(client_v4(&invite(h, 0)), V4_VIP, "fold-me@host")],
        ));
    }
    let id = "far-away-call-id@example.com";
    let msg = invite(&format!("Call-ID: {id}"), 1400);
    assert!(msg.len() >= 1400 && msg.len() < 1472, "{}", msg.len());
    t.push(case(
        "Call-ID at the end of a 1400-byte INVITE",
        vec![by_call_id(client_v4(&msg), V4_VIP, id)],
    ));

    // Datagrams without a usable Call-ID go by the source address, and say so.
    let stun = [
        0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    let fallbacks: [(&str, &[u8], &str); 5] = [
        (
            "OPTIONS without Call-ID",
            b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n",
            "fallback_no_callid",
        ),
        ("CRLFCRLF keepalive", b"\r\n\r\n", "fallback_keepalive"),
        ("empty datagram", b"", "fallback_keepalive"),
        ("STUN", &stun, "fallback_no_callid"),
        ("not SIP", b"hello, not sip at all", "fallback_no_callid"),
    ];
    for (name, payload, counter) in fallbacks {
        t.push(case(
            format!("{name}: by the source address, counted {counter}"),
            vec![Packet::client(client_v4(payload))
                .out(Out::Dnat(To::Source(V4_VIP)))
                .moved(&[counter, "redirect"])
                .step()],
        ));
    }

    let mut tcp = client_v4(b"INVITE");
    tcp.proto = 6;
    let not_ours = [
        (
            "another port of the VIP",
            Frame::udp(
                ip("10.0.1.2"),
                5060,
                ip("10.0.0.10"),
                5061,
                &invite("i: x", 0),
            ),
            "pass_no_service",
        ),
        ("TCP to the VIP", tcp, "pass_not_udp"),
        (
            "another host",
            Frame::udp(
                ip("10.0.1.2"),
                5060,
                ip("10.0.0.99"),
                5060,
                &invite("i: x", 0),
            ),
            "pass_no_service",
        ),
    ];
    for (name, f, counter) in not_ours {
        t.push(case(
            format!("{name} passes untouched"),
            vec![Packet::client(f).moved(&[counter]).step()],
        ));
    }
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    t.push(case(
        "ARP passes untouched",
        vec![Packet::raw(arp, Side::Client)
            .moved(&["pass_not_ip"])
            .step()],
    ));

    let reply = b"SIP/2.0 200 OK\r\nCall-ID: abc\r\nContent-Length: 0\r\n\r\n";
    for (name, from, to, vip) in [
        ("ipv4", "10.0.2.12", "10.0.1.2", V4_VIP),
        ("ipv6", "fd00:2::13", "fd00:1::2", V6_VIP),
    ] {
        t.push(case(
            format!("{name} backend reply is reverse-NATed to the VIP"),
            vec![
                Packet::backend(Frame::udp(ip(from), 5060, ip(to), 5060, reply))
                    .out(Out::FromVip(vip))
                    .moved(&["redirect", "reverse_nat"])
                    .step(),
            ],
        ));
    }
    // E.g. the 200 to our own OPTIONS probe, sent to the balancer's address.
    t.push(case(
        "a backend's answer to this host is left alone",
        vec![Packet::backend(Frame::udp(
            ip("10.0.2.11"),
            5060,
            ip("10.0.2.1"),
            40000,
            b"SIP/2.0 200 OK\r\ni: probe\r\n\r\n",
        ))
        .moved(&["pass_local"])
        .step()],
    ));
    t.push(case(
        "DSR changes only the MACs",
        vec![Packet::client(Frame::udp(
            ip("10.0.1.2"),
            5060,
            ip("10.0.0.20"),
            5060,
            &invite("Call-ID: dsr-1", 0),
        ))
        .out(Out::Dsr(key(DSR_VIP, "dsr-1")))
        .moved(DISPATCHED)
        .step()],
    ));
    // A DSR backend answers from the VIP itself: its traffic is not reverse-NATed.
    t.push(case(
        "a DSR backend's own traffic passes",
        vec![Packet::backend(Frame::udp(
            ip("10.0.2.21"),
            5060,
            ip("10.0.1.2"),
            5060,
            b"SIP/2.0 200 OK\r\n\r\n",
        ))
        .moved(&["pass_no_service"])
        .step()],
    ));
    let mut f = client_v4(&invite("i: ttl", 0));
    f.ttl = 1;
    t.push(case(
        "an expiring TTL is left to the kernel",
        vec![Packet::client(f).moved(&["callid", "ttl_exceeded"]).step()],
    ));
    for (name, full) in [
        ("ipv4", client_v4(&invite("Call-ID: trunc", 0)).build()),
        ("ipv6", client_v6(&invite("i: t6", 0)).build()),
    ] {
        t.push(case(
            format!("{name} frames cut at every length pass untouched, counted"),
            (14..full.len())
                .map(|len| {
                    Packet::raw(full[..len].to_vec(), Side::Client)
                        .moved(&["malformed"])
                        .note(format!("cut at {len}"))
                        .step()
                })
                .collect(),
        ));
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(4475);
    let ids: Vec<String> = (0..1000)
        .map(|_| {
            let n = rng.gen_range(1..120);
            word(&mut rng, n)
        })
        .collect();
    let mut steps: Vec<Step> = ids
        .iter()
        .map(|id| by_call_id(client_v4(&invite(&format!("Call-ID: {id}"), 0)), V4_VIP, id))
        .collect();
    steps.push(Step::Spread {
        tos: ids.iter().map(|id| key(V4_VIP, id)).collect(),
        n: 3,
    });
    t.push(case(
        "1000 random Call-IDs go where user space predicts",
        steps,
    ));
    t.extend(fragment_cases());
    t
}

fn word(rng: &mut rand::rngs::StdRng, n: usize) -> String {
    rng.sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

// IP fragments (README, "What the data plane does"): the first fragment is dispatched as
// usual and its decision remembered by (source, destination, identification);
// the later ones, which carry no UDP header, follow it.
fn fragment_cases() -> Vec<Case> {
    let mut t = vec![];
    for (v6, id) in [(false, "frag4@10.0.1.2"), (true, "frag6@[fd00:1::2]")] {
        let payload = big_invite(id);
        let (f, vip) = if v6 {
            (client_v6(&payload), V6_VIP)
        } else {
            (client_v4(&payload), V4_VIP)
        };
        let frags = fragments(&f.build(), 1448, 0x1234_5678);
        assert_eq!(frags.len(), 3);
        let mut steps: Vec<Step> = frags
            .into_iter()
            .enumerate()
            .map(|(i, fr)| {
                let moved: &[&str] = if i == 0 {
                    DISPATCHED
                } else {
                    &["fragment_follow", "redirect"]
                };
                Packet::raw(fr, Side::Client)
                    .out(Out::Redirected)
                    .moved(moved)
                    .note(format!("fragment {i}"))
                    .step()
            })
            .collect();
        steps.push(Step::Reassembled {
            n: 3,
            sent: f,
            out: Out::Dnat(key(vip, id)),
        });
        t.push(case(
            format!("fragmented datagram (v6={v6}) follows its first fragment"),
            steps,
        ));
    }
    let frags = fragments(&client_v4(&big_invite("orphan@x")).build(), 1448, 77);
    t.push(case(
        "a later fragment without its first passes, counted",
        vec![Packet::raw(frags[1].clone(), Side::Client)
            .moved(&["fragment_miss"])
            .step()],
    ));
    let f = Frame::udp(
        ip("10.0.2.12"),
        5060,
        ip("10.0.1.2"),
        5060,
        &big_invite("back@10.0.2.12"),
    );
    let mut steps: Vec<Step> = fragments(&f.build(), 1448, 9)
        .into_iter()
        .enumerate()
        .map(|(i, fr)| {
            let moved: &[&str] = if i == 0 {
                &["redirect", "reverse_nat"]
            } else {
                &["fragment_follow", "redirect"]
            };
            Packet::raw(fr, Side::Backend)
                .out(Out::Redirected)
                .moved(moved)
                .note(format!("fragment {i}"))
                .step()
        })
        .collect();
    steps.push(Step::Reassembled {
        n: 3,
        sent: f,
        out: Out::FromVip(V4_VIP),
    });
    t.push(case(
        "a backend's fragmented message comes from the VIP",
        steps,
    ));
    t
}

/// Every algorithm over a set of payloads: each datagram, to both VIPs, goes
/// to the backend `message_dispatch` and the Maglev table predict and counts
/// the predicted reason. `min` is how many must be dispatched by the
/// algorithm's own key (so the fallbacks do not carry the table), checked on
/// the data; with `mixed`, the fallbacks must be exercised too (except where
/// every message has the key: `source`, and `from-uri` on generated messages).
fn algorithm_cases(
    set: &str,
    payloads: &[(String, Vec<u8>)],
    algs: &[u32],
    min: usize,
    mixed: bool,
) -> Vec<Case> {
    algs.iter()
        .map(|&alg| {
            let main = match alg {
                ALG_FROM_URI | ALG_TO_URI | ALG_REQUEST_URI => "uri",
                ALG_SOURCE => "source",
                _ => "callid",
            };
            let mut seen: HashMap<&str, usize> = HashMap::new();
            let mut steps = vec![
                Step::Do(Act::Algorithm(V4_VIP, alg)),
                Step::Do(Act::Algorithm(V6_VIP, alg)),
            ];
            for (name, payload) in payloads {
                for (f, vip) in [(client_v4(payload), V4_VIP), (client_v6(payload), V6_VIP)] {
                    let (k, family) = src_key(f.src);
                    let why = message_dispatch(payload, alg, &k, family).reason;
                    *seen.entry(reason::NAMES[why as usize]).or_default() += 1;
                    steps.push(
                        Packet::client(f)
                            .out(Out::Dnat(To::Dispatch(vip, alg)))
                            .predicted(alg)
                            .note(format!("{name} to {vip}"))
                            .step(),
                    );
                }
            }
            eprintln!("{set}, algorithm {alg}: {seen:?}");
            assert!(
                seen.get(main).copied().unwrap_or(0) >= min,
                "{set}, algorithm {alg}: {seen:?}"
            );
            if mixed && alg != ALG_SOURCE && alg != ALG_FROM_URI {
                assert!(seen.len() >= 2, "{set}, algorithm {alg}: {seen:?}");
            }
            case(format!("{set} under algorithm {alg}"), steps)
        })
        .collect()
}

/// The algorithm cases, the per-algorithm behaviours and the cases whose
/// set-up changes between frames.
fn algorithm_and_set_up_cases() -> Vec<Case> {
    let mut t = algorithm_cases(
        "the RFC 4475 corpus",
        &corpus_payloads(),
        &[
            ALG_CALL_ID,
            ALG_FROM_URI,
            ALG_TO_URI,
            ALG_REQUEST_URI,
            ALG_SOURCE,
        ],
        40,
        false,
    );
    let generated: Vec<(String, Vec<u8>)> = generated_payloads(210)
        .into_iter()
        .enumerate()
        .map(|(i, m)| (format!("generated #{i}"), m))
        .collect();
    // 99 is no algorithm: it goes by the Call-ID.
    t.extend(algorithm_cases(
        "generated messages",
        &generated,
        &[
            ALG_CALL_ID,
            ALG_FROM_URI,
            ALG_TO_URI,
            ALG_REQUEST_URI,
            ALG_SOURCE,
            99,
        ],
        150,
        // To values include unclosed '<', Call-IDs are sometimes missing, a
        // fifth are responses.
        true,
    ));

    // Same From URI, different Call-IDs and source ports: one backend.
    let mut steps = vec![Step::Do(Act::Algorithm(V4_VIP, ALG_FROM_URI))];
    for i in 0..20 {
        let mut f = client_v4(&invite(&format!("Call-ID: call-{i}"), 0));
        f.sport = 5060 + i;
        steps.push(
            Packet::client(f)
                .out(Out::Dnat(key(V4_VIP, "sip:alice@example.com")))
                .moved(&["redirect", "uri"])
                .note(format!("call-{i}"))
                .step(),
        );
    }
    t.push(case("from-uri keeps a caller's dialogs together", steps));

    // The per-CPU counter of the service is the hash: consecutive datagrams
    // (the same payload every time) walk consecutive Maglev table entries.
    let mut steps = vec![
        Step::Do(Act::PinCpu(V4_VIP)),
        Step::Do(Act::Algorithm(V4_VIP, ALG_ROUND_ROBIN)),
    ];
    for k in 0..40 {
        steps.push(
            Packet::client(client_v4(&invite("Call-ID: same-call", 0)))
                .out(Out::Dnat(To::RoundRobin(V4_VIP, k)))
                .moved(&["redirect", "round_robin"])
                .note(format!("datagram {k}"))
                .step(),
        );
    }
    steps.push(Step::RoundRobinAdvanced { vip: V4_VIP, n: 40 });
    steps.push(Step::Spread {
        tos: (0..40).map(|k| To::RoundRobin(V4_VIP, k)).collect(),
        n: 2,
    });
    t.push(case("round-robin walks the table", steps));

    // Weight 0 everywhere: the table is empty; then configured to pass.
    let empty = ServiceConfig {
        table_size: 7,
        ..spec("10.0.0.30:5060", Mode::Dnat, &["10.0.2.99:5060,weight=0"])
    };
    let f = Frame::udp(
        ip("10.0.1.2"),
        5060,
        ip("10.0.0.30"),
        5060,
        &invite("i: x", 0),
    );
    t.push(case(
        "a service without backends drops, or passes when told to",
        vec![
            Step::Do(Act::Install(Box::new(empty))),
            Packet::client(f.clone())
                .out(Out::Drop)
                .moved(&["callid", "no_backend"])
                .step(),
            Step::Do(Act::NoBackendPass("10.0.0.30:5060")),
            Packet::client(f)
                .moved(&["callid", "no_backend_pass"])
                .step(),
        ],
    ));

    // Next hops are cached for a second: a neighbour's new MAC is used within it.
    let id = "cache-me";
    let new_mac = [0x02, 0, 0, 0, 0x0e, 0x0e];
    t.push(case(
        "the next-hop cache follows a changed neighbour within a second",
        vec![
            by_call_id(client_v4(&invite(&format!("Call-ID: {id}"), 0)), V4_VIP, id),
            Step::Do(Act::Neighbour {
                to: key(V4_VIP, id),
                mac: new_mac,
            }),
            Step::Do(Act::Wait(Duration::from_millis(1100))),
            Packet::client(client_v4(&invite(&format!("Call-ID: {id}"), 0)))
                .out(Out::DnatVia(key(V4_VIP, id), new_mac))
                .moved(DISPATCHED)
                .step(),
        ],
    ));

    // A cached next hop is only used for datagrams no larger than one the FIB
    // has accepted: a larger one is asked about again, and one over the MTU
    // goes to the kernel (which fragments or answers ICMP). One Call-ID, so the
    // big datagram goes to the backend whose next hop the small one cached.
    let id = "mtu-one-dialog";
    let small = client_v4(&invite(&format!("Call-ID: {id}"), 0));
    let big = client_v4(&invite(&format!("Call-ID: {id}"), 1400));
    let mtu = 1000;
    assert!(small.build().len() - 14 <= mtu && big.build().len() - 14 > mtu);
    t.push(case(
        "the next-hop cache respects the MTU",
        vec![
            Step::Do(Act::Ip(format!("link set bk0 mtu {mtu}"))),
            by_call_id(small, V4_VIP, id),
            Packet::client(big)
                .out(Out::Kernel(key(V4_VIP, id)))
                .moved(&["callid", "fib_fail"])
                .step(),
        ],
    ));
    t
}

/// `n` bytes: `tag`, a dash, then letters and digits.
fn long_key(tag: &str, n: usize) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
    let k = format!("{tag}-{}", word(&mut rng, n - tag.len() - 1));
    assert_eq!(k.len(), n);
    k
}

/// A request whose From URI, To URI and Request-URI user are given.
fn uri_request(ruri_user: &str, from: &str, to: &str) -> Vec<u8> {
    format!(
        "INVITE sip:{ruri_user}@b.example SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bK1\r\n\
From: \"Alice\" <{from}>;tag=1\r\n\
To: <{to}>\r\n\
Call-ID: uri-keys@10.0.1.2\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// An INVITE of `total` bytes whose Call-ID value `id` ends at byte `end`
/// (exclusive), padded before it by one header and after it by a body.
fn call_id_ending_at(id: &str, end: usize, total: usize) -> Vec<u8> {
    let head =
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bK7\r\n";
    let pad = end - id.len() - head.len() - "X-Pad: \r\nCall-ID: ".len();
    let mut m = format!("{head}X-Pad: {}\r\nCall-ID: {id}", "p".repeat(pad));
    assert_eq!(m.len(), end);
    if total > end {
        let rest = "\r\nContent-Length: 00000\r\n\r\n".len();
        let body = total - end - rest;
        m.push_str(&format!(
            "\r\nContent-Length: {body:05}\r\n\r\n{}",
            "b".repeat(body)
        ));
    }
    assert_eq!(m.len(), total);
    m.into_bytes()
}

/// Long keys: the kernel hashes the first [`HASH_MAX`] bytes of a key as user
/// space does, observed both as the backend and as the hash itself (the
/// affinity map's key).
fn long_key_cases() -> Vec<Case> {
    let mut t = vec![];
    let new: &[&str] = &["affinity_new", "callid", "redirect"];
    for n in [200, 256, 300] {
        let id = long_key("cid", n);
        let hash = hash_bytes(id.as_bytes());
        let msg = invite(&format!("Call-ID: {id}"), 0);
        t.push(case(
            format!("a Call-ID of {n} bytes"),
            vec![
                Step::Do(Act::Affinity(V4_VIP)),
                Step::Do(Act::Affinity(V6_VIP)),
                Packet::client(client_v4(&msg))
                    .out(Out::Dnat(key(V4_VIP, &id)))
                    .moved(new)
                    .step(),
                Step::AffinityHash { vip: V4_VIP, hash },
                Packet::client(client_v6(&msg))
                    .out(Out::Dnat(key(V6_VIP, &id)))
                    .moved(new)
                    .step(),
                Step::AffinityHash { vip: V6_VIP, hash },
            ],
        ));
    }
    // Past the hashed prefix nothing counts; its last byte does.
    let a = long_key("cid", 300);
    let mut b = a.as_bytes().to_vec();
    b[HASH_MAX..].fill(b'z');
    let mut c = a.as_bytes().to_vec();
    c[HASH_MAX - 1] ^= 1;
    let (b, c) = (String::from_utf8(b).unwrap(), String::from_utf8(c).unwrap());
    assert_eq!(hash_bytes(a.as_bytes()), hash_bytes(b.as_bytes()));
    let send = |id: &str, moved: &[&'static str]| {
        Packet::client(client_v4(&invite(&format!("Call-ID: {id}"), 0)))
            .out(Out::Dnat(key(V4_VIP, id)))
            .moved(moved)
            .step()
    };
    t.push(case(
        format!(
            "Call-IDs that differ only past byte {HASH_MAX} are one dialog, at byte {HASH_MAX} two"
        ),
        vec![
            Step::Do(Act::Affinity(V4_VIP)),
            send(&a, new),
            send(&b, &["affinity_hit", "callid", "redirect"]),
            send(&c, new),
            Step::AffinityHash {
                vip: V4_VIP,
                hash: hash_bytes(c.as_bytes()),
            },
        ],
    ));
    // From/To URIs and the Request-URI user are looked for in the first
    // KEY_MAX bytes of their value (start line): keys up to the longest that
    // fits are hashed whole, longer ones fall back as user space predicts.
    let (alice, bob) = ("sip:alice@a.example", "sip:bob@b.example");
    let uri = |tag: &str, n: usize| format!("sip:{}@a.example", long_key(tag, n - 14));
    // The longest key that fits: `"Alice" <` and `>` around the From URI, `<`
    // and `>` around the To URI, `INVITE sip:` and `@` around the user.
    for (alg, edge) in [
        (ALG_FROM_URI, KEY_MAX - 10),
        (ALG_TO_URI, KEY_MAX - 2),
        (ALG_REQUEST_URI, KEY_MAX - 12),
    ] {
        for n in [200, edge, edge + 1, 256, 300] {
            let (msg, k) = match alg {
                ALG_FROM_URI => {
                    let k = uri("from", n);
                    (uri_request("bob", &k, bob), k)
                }
                ALG_TO_URI => {
                    let k = uri("to", n);
                    (uri_request("bob", alice, &k), k)
                }
                _ => {
                    let k = long_key("user", n);
                    (uri_request(&k, alice, bob), k)
                }
            };
            let found = match alg {
                ALG_FROM_URI => from_uri(&msg),
                ALG_TO_URI => to_uri(&msg),
                _ => request_user(&msg),
            };
            let (k_src, family) = src_key(ip("10.0.1.2"));
            let d = message_dispatch(&msg, alg, &k_src, family);
            let mut steps = vec![
                Step::Do(Act::Affinity(V4_VIP)),
                Step::Do(Act::Algorithm(V4_VIP, alg)),
            ];
            if n <= edge {
                assert_eq!(found, Some(k.as_bytes()), "alg {alg}, {n} bytes");
                assert_eq!(d.hash, hash_bytes(k.as_bytes()));
                steps.push(
                    Packet::client(client_v4(&msg))
                        .out(Out::Dnat(key(V4_VIP, &k)))
                        .moved(&["affinity_new", "redirect", "uri"])
                        .step(),
                );
                steps.push(Step::AffinityHash {
                    vip: V4_VIP,
                    hash: d.hash,
                });
            } else {
                assert_eq!(found, None, "alg {alg}, {n} bytes");
                assert_ne!(reason::NAMES[d.reason as usize], "uri");
                // A fallback follows the table and creates no dialog state.
                let fallback = reason::NAMES[d.reason as usize].starts_with("fallback");
                let p = Packet::client(client_v4(&msg)).out(Out::Dnat(To::Dispatch(V4_VIP, alg)));
                steps.push(if fallback {
                    p.predicted(alg).step()
                } else {
                    p.predicted_with(alg, "affinity_new").step()
                });
                if !fallback {
                    steps.push(Step::AffinityHash {
                        vip: V4_VIP,
                        hash: d.hash,
                    });
                }
            }
            let what = if n <= edge {
                "hashed whole"
            } else {
                "falls back"
            };
            t.push(case(
                format!("a key of {n} bytes under algorithm {alg} ({what})"),
                steps,
            ));
        }
    }

    t
}

/// A request whose headers are `lines` (the Call-ID's among them), each
/// ended by `eol`, after `lead` and a start line.
fn request_with(lead: &str, eol: &str, lines: &[&str]) -> Vec<u8> {
    let mut m = format!("{lead}INVITE sip:bob@example.com SIP/2.0{eol}");
    for l in lines {
        m.push_str(l);
        m.push_str(eol);
    }
    m.push_str(&format!("Content-Length: 0{eol}{eol}"));
    m.into_bytes()
}

/// The Call-ID search in place (`line_scan`) and its hand-over to the byte
/// machine: the kernel's backend and key hash (the affinity entry an INVITE
/// creates) against the byte machine's Call-ID (`call_id`), which user space
/// reads without the in-place scan, over IPv4 and IPv6 (another payload
/// offset). Each payload says whether the scan answers it in place.
fn in_place_cases() -> Vec<Case> {
    use balancer_common::line_scan::{line_scan_of, Outcome};
    let via = "Via: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bK776asdhds;rport";
    let other = [
        "Max-Forwards: 70",
        "To: Bob <sip:bob@example.com>",
        "From: Alice <sip:alice@example.com>;tag=1928301774",
        "CSeq: 314159 INVITE",
        "Contact: <sip:alice@10.0.1.2>",
    ];
    let with = |cid: &'static str, at: usize| {
        let mut v: Vec<&str> = vec![via];
        v.extend(other);
        v.insert(at.min(v.len()), cid);
        v
    };
    let crlf = |lines: Vec<&str>| request_with("", "\r\n", &lines);
    let payloads: Vec<(&str, Vec<u8>, bool)> = vec![
        ("Call-ID first", crlf(with("Call-ID: first@h", 0)), true),
        ("Call-ID second", crlf(with("Call-ID: second@h", 1)), true),
        (
            "Call-ID in the middle",
            crlf(with("Call-ID: middle@h", 4)),
            true,
        ),
        ("Call-ID last", crlf(with("Call-ID: last@h", 9)), true),
        (
            "Call-ID last of 1400 bytes",
            invite("Call-ID: far-away-in-place@example.com", 1400),
            true,
        ),
        ("compact i", crlf(with("i: compact@h", 3)), true),
        ("compact I, no space", crlf(with("I:compact-2@h", 3)), true),
        ("mixed case", crlf(with("cALL-iD: mixed-case@h", 2)), true),
        (
            "decoys that begin like Call-ID",
            crlf(vec![
                via,
                "Call-Info: <sip:x>",
                "Call-IDx: no",
                "ix: no",
                "Ca",
                "i: after-decoys@h",
            ]),
            true,
        ),
        (
            "trailing blanks",
            crlf(with("Call-ID: trailing@h \t ", 2)),
            true,
        ),
        (
            "LF line ends",
            request_with("", "\n", &with("Call-ID: lf@h", 3)),
            true,
        ),
        (
            "leading CRLF",
            request_with("\r\n", "\r\n", &with("Call-ID: lead@h", 3)),
            true,
        ),
        (
            "folded value",
            crlf(with("Call-ID: fold\r\n ed@h", 2)),
            false,
        ),
        (
            "whitespace before the colon",
            crlf(with("Call-ID : ws@h", 2)),
            false,
        ),
        (
            "compact form folded before the colon",
            crlf(with("i\r\n : ws-fold@h", 2)),
            false,
        ),
        (
            "an empty Call-ID first",
            crlf(with("Call-ID: \r\ni: second-one@h", 2)),
            false,
        ),
    ];
    let mut t = vec![];
    for (name, payload, in_place) in payloads {
        let id = call_id(&payload)
            .expect("each payload has a Call-ID")
            .to_vec();
        let answered = matches!(line_scan_of(&payload), Outcome::Found(_));
        assert_eq!(answered, in_place, "{name}: answered in place");
        let hash = hash_bytes(&id);
        let mut steps = vec![
            Step::Do(Act::Affinity(V4_VIP)),
            Step::Do(Act::Affinity(V6_VIP)),
            Step::UserSpace {
                payload: payload.clone(),
                call_id: Some(id.clone()),
                reason: "callid",
            },
        ];
        // Leading line ends hide the method from the dialog check: no
        // affinity entry then, and the backend alone shows the key.
        let mut first = [0u8; 10];
        first.copy_from_slice(&payload[..10]);
        let dialog = balancer_common::sip::starts_dialog(&first);
        for (f, vip) in [(client_v4(&payload), V4_VIP), (client_v6(&payload), V6_VIP)] {
            let moved: &[&str] = if dialog {
                &["affinity_new", "callid", "redirect"]
            } else {
                DISPATCHED
            };
            steps.push(
                Packet::client(f)
                    .out(Out::Dnat(key(vip, &id)))
                    .moved(moved)
                    .step(),
            );
            if dialog {
                steps.push(Step::AffinityHash { vip, hash });
            }
        }
        let how = if in_place {
            "in place"
        } else {
            "by the byte machine"
        };
        t.push(case(format!("{name}: found {how}"), steps));
    }
    // No Call-ID in the headers (the body's does not count), answered in place.
    let no_id = request_with("", "\r\n", &[via, "Call-Info: <sip:x>"]);
    let mut body = no_id.clone();
    body.extend_from_slice(b"Call-ID: body@h\r\n");
    for payload in [no_id, body] {
        assert_eq!(line_scan_of(&payload), Outcome::Absent);
        t.push(case(
            format!(
                "no Call-ID in the headers of {} bytes: by the source",
                payload.len()
            ),
            vec![
                Step::UserSpace {
                    payload: payload.clone(),
                    call_id: None,
                    reason: "fallback_no_callid",
                },
                Packet::client(client_v4(&payload))
                    .out(Out::Dnat(To::Source(V4_VIP)))
                    .moved(&["fallback_no_callid", "redirect"])
                    .step(),
            ],
        ));
    }
    t
}

/// A 300-byte Call-ID at the edge of the scan window, either side of it.
/// BPF_PROG_TEST_RUN gives the program one page, less than the window: these
/// travel as real jumbo packets. `reaching_end`: only the cases whose value
/// fills the window's last word, else only the others.
fn window_edge_cases(reaching_end: bool) -> Vec<Case> {
    let mut t = vec![];
    let id = long_key("edge", 300);
    // A value's end is known only once the byte after its line end is seen
    // (that line could be a folded continuation): the last Call-ID that counts
    // in a longer datagram ends 3 bytes before the window does.
    let fallback: &[&str] = &["fallback_no_callid", "redirect"];
    let edges = [
        (
            "its CRLF and one more byte end the window",
            SCAN_MAX - 3,
            SCAN_MAX + 300,
            true,
        ),
        (
            "its CRLF the window's last bytes",
            SCAN_MAX - 2,
            SCAN_MAX + 300,
            false,
        ),
        (
            "its last byte the window's",
            SCAN_MAX,
            SCAN_MAX + 300,
            false,
        ),
        (
            "a datagram of exactly the window ending with it",
            SCAN_MAX,
            SCAN_MAX,
            true,
        ),
        ("past the window", SCAN_MAX + 100, SCAN_MAX + 300, false),
    ];
    for (name, end, total, counts) in edges {
        if (end >= SCAN_MAX) != reaching_end {
            continue;
        }
        let msg = call_id_ending_at(&id, end, total);
        let (to, moved) = if counts {
            (key(V4_VIP, &id), DISPATCHED)
        } else {
            (To::Source(V4_VIP), fallback)
        };
        t.push(case(
            format!("a 300-byte Call-ID at the window's edge, {name}"),
            vec![
                Step::UserSpace {
                    payload: msg.clone(),
                    call_id: counts.then(|| id.as_bytes().to_vec()),
                    reason: moved[0],
                },
                Step::Do(Act::Wire { mtu: 9000 }),
                Packet::client(client_v4(&msg))
                    .out(Out::Dnat(to))
                    .moved(moved)
                    .step(),
            ],
        ));
    }
    t
}

/// A request from a scanner to a service that drops them: the Call-ID
/// search runs first (the filter sits in front of the backend choice), then
/// the datagram is dropped.
const SCANNER_DROPPED: &[&str] = &["callid", "scanner"];

/// The scanner filter (`useragent.rs`): services with `SERVICE_SCANNERS` drop
/// requests whose User-Agent begins with a `SCANNERS` prefix, counted; other
/// User-Agents, responses and services without the flag go on as ever. User
/// space's `is_scanner` agrees on every payload.
fn scanner_cases() -> Vec<Case> {
    let defaults = patterns(DEFAULT_SCANNERS).unwrap();
    let mut steps = vec![
        Step::Do(Act::Scanners(V4_VIP, DEFAULT_SCANNERS)),
        Step::Do(Act::Scanners(V6_VIP, DEFAULT_SCANNERS)),
    ];
    let options = |ua: &str, id: &str| {
        format!(
            "OPTIONS sip:100@10.0.0.10 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bK-1\r\n\
{ua}\r\nCall-ID: {id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    };
    let scanners = [
        (
            "friendly-scanner after the Call-ID",
            invite("Call-ID: s1@x\r\nUser-Agent: friendly-scanner", 0),
        ),
        (
            "upper case, folded around the colon",
            invite("Call-ID: s2@x\r\nUSER-AGENT\r\n :\r\n\tSIPVicious 0.3.4", 0),
        ),
        (
            "an OPTIONS, before the Call-ID",
            options("user-agent:sipcli/v1.8", "s3@x"),
        ),
        (
            "late in a 3000-byte INVITE",
            invite("Call-ID: s4@x\r\nUser-Agent: friendly-scanner", 3000),
        ),
    ];
    for (name, p) in &scanners {
        assert!(is_scanner(p, &defaults), "user space: {name}");
        for (f, vip) in [(client_v4(p), V4_VIP), (client_v6(p), V6_VIP)] {
            steps.push(
                Packet::client(f)
                    .out(Out::Drop)
                    .moved(SCANNER_DROPPED)
                    .note(format!("{name} to {vip}"))
                    .step(),
            );
        }
    }
    let others = [
        (
            "Friendly",
            invite("Call-ID: p1@x\r\nUser-Agent: Friendly", 0),
        ),
        (
            "a PBX",
            invite("Call-ID: p2@x\r\nUser-Agent: Asterisk PBX 20.5.0", 0),
        ),
        (
            "a scanner's name in other headers",
            invite(
                "Call-ID: p3@x\r\nServer: friendly-scanner\r\nX-User-Agent: sipvicious",
                0,
            ),
        ),
        (
            "a value shorter than the pattern",
            options("User-Agent: friendly-scanne", "p4@x"),
        ),
        ("no User-Agent", invite("Call-ID: p5@x", 0)),
        (
            "a response",
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.10:5060;branch=z9hG4bK-2\r\n\
User-Agent: friendly-scanner\r\nCall-ID: p6@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        ),
    ];
    for (name, p) in &others {
        assert!(!is_scanner(p, &defaults), "user space: {name}");
        let id = call_id(p).unwrap();
        let id = std::str::from_utf8(id).unwrap();
        for (f, vip) in [(client_v4(p), V4_VIP), (client_v6(p), V6_VIP)] {
            steps.push(
                Packet::client(f)
                    .out(Out::Dnat(key(vip, id)))
                    .moved(DISPATCHED)
                    .note(format!("{name} to {vip}"))
                    .step(),
            );
        }
    }
    // The DSR service has no flag: a scanner goes on.
    let (_, p) = &scanners[0];
    steps.push(
        Packet::client(Frame::udp(ip("10.0.1.2"), 5060, ip("10.0.0.20"), 5060, p))
            .out(Out::Dsr(key(DSR_VIP, "s1@x")))
            .moved(DISPATCHED)
            .note("a scanner to a service without the flag")
            .step(),
    );
    // Another list replaces the prefixes: the old ones are gone.
    steps.push(Step::Do(Act::Scanners(V4_VIP, &["asterisk"])));
    let (_, pbx) = &others[1];
    assert!(is_scanner(pbx, &patterns(&["asterisk"]).unwrap()));
    steps.push(
        Packet::client(client_v4(pbx))
            .out(Out::Drop)
            .moved(SCANNER_DROPPED)
            .note("a configured prefix")
            .step(),
    );
    steps.push(
        Packet::client(client_v4(p))
            .out(Out::Dnat(key(V4_VIP, "s1@x")))
            .moved(DISPATCHED)
            .note("a default prefix no longer listed")
            .step(),
    );
    vec![case("scanners are dropped by their User-Agent", steps)]
}

#[test]
fn scanners_are_dropped_by_their_user_agent() {
    run_table(scanner_cases());
}

#[test]
fn single_datagrams() {
    run_table(dispatch_cases());
}

#[test]
fn call_ids_found_in_place_and_handed_over() {
    run_table(in_place_cases());
}

#[test]
fn algorithms_and_set_up_changes() {
    run_table(algorithm_and_set_up_cases());
}

#[test]
fn long_keys_hash_alike_in_kernel_and_user_space() {
    let mut t = long_key_cases();
    t.extend(window_edge_cases(false));
    run_table(t);
}

/// A value that fills the window's last word (the whole word skipped at once):
/// the scanner once bounded the index after masking it into the window and
/// wrapped around to the window's first bytes, so the kernel dispatched by a
/// garbage span where the README promises the source-address fallback, and
/// user space's `call_id` panicked.
#[test]
fn call_ids_reaching_the_windows_last_word() {
    run_table(window_edge_cases(true));
}

/// The RFC 4475 torture messages that fit one unfragmented datagram.
fn corpus_payloads() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../balancer-common/tests/rfc4475");
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "dat"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .filter(|(_, m)| m.len() <= 1400)
        .collect();
    v.sort();
    assert!(v.len() >= 45, "{}", v.len());
    v
}

/// Requests and responses with varied From/To/Request-URI forms: name-addr and
/// addr-spec, compact headers, parameters, user-less URIs, long values.
fn generated_payloads(n: usize) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3263);
    let word = |rng: &mut rand::rngs::StdRng, max: usize| -> String {
        let n = rng.gen_range(1..max);
        rng.sample_iter(&Alphanumeric)
            .take(n)
            .map(char::from)
            .collect()
    };
    (0..n)
        .map(|i| {
            let user = word(&mut rng, 20);
            let host = word(&mut rng, 20);
            let ruri = match i % 4 {
                0 => format!("sip:{user}@{host}.example.com"),
                1 => format!("sip:{host}.example.com"),
                2 => format!("tel:+1{}@{host};user=phone", rng.gen_range(1000..99999)),
                _ => format!("sips:{user}@{host}:5061;transport=tls"),
            };
            let start = if i % 5 == 4 {
                "SIP/2.0 200 OK".to_string()
            } else {
                format!("INVITE {ruri} SIP/2.0")
            };
            let name = word(&mut rng, 12);
            let fuser = word(&mut rng, 40);
            let from = match i % 3 {
                0 => format!("From: \"{name}\" <sip:{fuser}@a.example>;tag={}", word(&mut rng, 10)),
                1 => format!("f: sip:{fuser}@a.example;tag=1"),
                _ => format!("From:<sip:{fuser}@a.example>"),
            };
            let tuser = word(&mut rng, 200);
            let to = match i % 4 {
                0 => format!("To: {name} <sip:{tuser}@b.example>"),
                1 => format!("t: sip:{tuser}@b.example"),
                2 => "To: <sip:unclosed@b.example".to_string(),
                _ => format!("To:\r\n  <sip:{tuser}@b.example>;tag=9"),
            };
            let cid = if i % 7 == 6 {
                String::new()
            } else {
                format!("Call-ID: {}@h\r\n", word(&mut rng, 60))
            };
            format!(
                "{start}\r\nVia: SIP/2.0/UDP 10.0.1.2;branch=z9hG4bK{i}\r\n{from}\r\n{to}\r\n{cid}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            )
            .into_bytes()
        })
        .collect()
}

/// The verifier walks every path of the program; keep well clear of its
/// 1,000,000-instruction budget so a kernel with a less clever verifier, or the
/// next feature, still loads.
#[test]
fn verifier_budget_has_headroom() {
    // The verifier gives up at 1,000,000 processed instructions; each kernel
    // walks the program differently (6.12 once took 800k where 6.18 took
    // 427k). At least 30% below the limit on every tested kernel: `cargo
    // xtask kernels` runs this in a VM per kernel.
    const LIMIT: u32 = 1_000_000;
    let mut bed = bed();
    let n = bed
        .dp
        .program(PROGRAM)
        .unwrap()
        .info()
        .unwrap()
        .verified_instruction_count()
        .expect("kernel reports verified instructions");
    let release = balancer::kernel::requirements::release();
    eprintln!("kernel {release}: the verifier processed {n} instructions");
    assert!(
        n <= LIMIT / 10 * 7,
        "kernel {release}: the verifier processed {n} instructions, less than 30% below its limit of {LIMIT}"
    );
}

// Dialog affinity (README, "What the data plane does"). The fixture bed's services start
// with affinity off; these tests turn it on for the IPv4 service.

/// Changes the IPv4 service's configuration (affinity on) and syncs.
fn change(bed: &mut Bed, f: impl Fn(&mut balancer::model::ServiceConfig)) {
    let mut c = bed.dp.config().clone();
    let s = c
        .services
        .iter_mut()
        .find(|s| s.vip.to_string() == V4_VIP)
        .unwrap();
    s.affinity = true;
    f(s);
    bed.dp.sync(&c).unwrap();
}

/// The backend a client message with Call-ID `id` is sent to now.
fn sent_to(bed: &mut Bed, id: &str) -> SocketAddr {
    let f = client_v4(&invite(&format!("Call-ID: {id}"), 0));
    let (v, out) = bed.run(&f.build(), bed.cli);
    // Redirected, or (a backend with no neighbour entry yet) handed to the kernel.
    assert!(v == XDP_REDIRECT || v == XDP_PASS, "verdict {v}");
    let p = parse(&out);
    SocketAddr::new(p.dst, p.dport)
}

/// What the live table (not affinity) picks for `id`.
fn table_pick(bed: &Bed, id: &str) -> SocketAddr {
    let vip: SocketAddr = V4_VIP.parse().unwrap();
    bed.dp.live()[&vip]
        .selector
        .whereis(id.as_bytes())
        .unwrap()
        .address
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ids(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}@10.0.1.2")).collect()
}

fn set_state(bed: &mut Bed, a: &str, st: balancer::model::AdminState) {
    change(bed, |s| s.backend_mut(addr(a)).unwrap().state = st);
}

#[test]
fn dialogs_stay_on_their_backend_when_one_is_added() {
    let mut bed = bed();
    change(&mut bed, |_| {});
    let calls = ids("add", 400);
    let first: Vec<SocketAddr> = calls.iter().map(|id| sent_to(&mut bed, id)).collect();
    change(&mut bed, |s| {
        s.backends
            .push(balancer::model::BackendConfig::new(addr("10.0.2.14:5060")))
    });
    let moved_by_table = calls
        .iter()
        .zip(&first)
        .filter(|(id, b)| table_pick(&bed, id) != **b)
        .count();
    assert!(
        moved_by_table > 60,
        "the new table moves many keys: {moved_by_table}"
    );
    let before = bed.counters();
    for (id, b) in calls.iter().zip(&first) {
        assert_eq!(sent_to(&mut bed, id), *b, "{id} stays on its backend");
    }
    let after = bed.counters();
    assert_eq!(after["affinity_hit"] - before["affinity_hit"], 400);
    // New dialogs follow the new table, over four backends.
    let fresh = ids("fresh", 400);
    let mut on_new = 0;
    for id in &fresh {
        let b = sent_to(&mut bed, id);
        assert_eq!(b, table_pick(&bed, id));
        on_new += (b == addr("10.0.2.14:5060")) as usize;
    }
    assert!(on_new > 60, "the added backend takes new dialogs: {on_new}");
}

/// Where a request starting with `start_line` and carrying `id` is sent.
fn request_sent_to(bed: &mut Bed, start_line: &str, id: &str) -> SocketAddr {
    let msg = format!(
        "{start_line}\r\nVia: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bK-{id}\r\n\
         From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n\
         Call-ID: {id}\r\nCSeq: 1 X\r\nContent-Length: 0\r\n\r\n"
    );
    let f = client_v4(msg.as_bytes());
    let (v, out) = bed.run(&f.build(), bed.cli);
    assert!(v == XDP_REDIRECT || v == XDP_PASS, "verdict {v}");
    let p = parse(&out);
    SocketAddr::new(p.dst, p.dport)
}

#[test]
fn registrations_and_publications_skip_affinity() {
    let mut bed = bed();
    change(&mut bed, |_| {});
    // Dialogs started, then a backend added: the table moves some of their
    // Call-IDs, affinity keeps the dialogs where they were.
    let calls = ids("reg", 300);
    let first: Vec<SocketAddr> = calls.iter().map(|id| sent_to(&mut bed, id)).collect();
    change(&mut bed, |s| {
        s.backends
            .push(balancer::model::BackendConfig::new(addr("10.0.2.14:5060")))
    });
    let held: Vec<(&String, &SocketAddr)> = calls
        .iter()
        .zip(&first)
        .filter(|(id, b)| table_pick(&bed, id) != **b)
        .collect();
    assert!(
        held.len() > 40,
        "the new table moves many keys: {}",
        held.len()
    );
    let before = bed.counters();
    for (id, _) in &held {
        // Never in a dialog: the table's choice, no affinity entry read.
        for start in [
            "REGISTER sip:example.com SIP/2.0",
            "PUBLISH sip:alice@example.com SIP/2.0",
        ] {
            assert_eq!(
                request_sent_to(&mut bed, start, id),
                table_pick(&bed, id),
                "{start} {id}"
            );
        }
    }
    let after = bed.counters();
    assert_eq!(after["affinity_hit"], before["affinity_hit"]);
    // The dialogs' own requests still follow them.
    for (id, b) in &held {
        assert_eq!(
            request_sent_to(&mut bed, "BYE sip:bob@10.0.2.11 SIP/2.0", id),
            **b,
            "BYE {id}"
        );
    }
    let last = bed.counters();
    assert_eq!(
        last["affinity_hit"] - after["affinity_hit"],
        held.len() as u64
    );
}

#[test]
fn draining_keeps_dialogs_down_and_disabled_replace_them() {
    use balancer::model::AdminState;
    let mut bed = bed();
    change(&mut bed, |_| {});
    let calls = ids("drain", 300);
    let first: Vec<SocketAddr> = calls.iter().map(|id| sent_to(&mut bed, id)).collect();
    let (d, x) = ("10.0.2.11:5060", "10.0.2.12:5060");
    assert!(first.contains(&addr(d)) && first.contains(&addr(x)));

    set_state(&mut bed, d, AdminState::Draining);
    for (id, b) in calls.iter().zip(&first) {
        assert_eq!(sent_to(&mut bed, id), *b, "draining honours {id}");
    }
    // A new dialog never lands on the draining backend.
    for id in ids("new", 200) {
        assert_ne!(sent_to(&mut bed, &id), addr(d));
    }

    set_state(&mut bed, d, AdminState::Disabled);
    bed.dp.set_down([addr(x)].into());
    change(&mut bed, |_| {});
    let before = bed.counters();
    let mut replaced = 0;
    for (id, b) in calls.iter().zip(&first) {
        let now = sent_to(&mut bed, id);
        if *b == addr(d) || *b == addr(x) {
            assert_eq!(
                now,
                table_pick(&bed, id),
                "{id} leaves a backend that is out"
            );
            assert!(now != addr(d) && now != addr(x));
            replaced += 1;
        } else {
            assert_eq!(now, *b, "{id} stays");
        }
    }
    let after = bed.counters();
    assert_eq!(
        after["affinity_replaced"] - before["affinity_replaced"],
        replaced
    );
    // Replaced entries stick to their new backend.
    for id in &calls {
        assert_eq!(sent_to(&mut bed, id), table_pick(&bed, id));
    }
}

#[test]
fn dialogs_a_backend_starts_are_learned_from_its_messages() {
    let mut bed = bed();
    change(&mut bed, |_| {});
    let origin = addr("10.0.2.12:5060");
    // Call-IDs the table would send elsewhere: only learning brings them back.
    let calls: Vec<String> = ids("out", 200)
        .into_iter()
        .filter(|id| table_pick(&bed, id) != origin)
        .take(50)
        .collect();
    assert_eq!(calls.len(), 50);
    // A response teaches nothing: it belongs to a dialog the client started.
    let resp = "SIP/2.0 200 OK\r\nCall-ID: resp-only@x\r\nCSeq: 1 INVITE\r\n\r\n";
    let f = Frame::udp(ip("10.0.2.12"), 5060, ip("10.0.1.2"), 5060, resp.as_bytes());
    let (v, _, moved) = bed.run_counted(&f.build(), bed.bk);
    assert_eq!((v, moved), (XDP_REDIRECT, vec!["redirect", "reverse_nat"]));
    let before = bed.counters();
    for id in &calls {
        let invite = format!(
            "INVITE sip:alice@10.0.1.2 SIP/2.0\r\nCall-ID: {id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
        let f = Frame::udp(
            ip("10.0.2.12"),
            5060,
            ip("10.0.1.2"),
            5060,
            invite.as_bytes(),
        );
        let (v, out) = bed.run(&f.build(), bed.bk);
        assert_eq!(v, XDP_REDIRECT);
        assert_eq!(parse(&out).src, ip("10.0.0.10"), "still reverse-NATed");
    }
    let after = bed.counters();
    assert_eq!(after["affinity_learned"] - before["affinity_learned"], 50);
    // The phone's answers reach the backend that called it.
    for id in &calls {
        assert_eq!(sent_to(&mut bed, id), origin, "{id}");
    }
    // Its own further messages refresh the entry without learning anew.
    let f = Frame::udp(
        ip("10.0.2.12"),
        5060,
        ip("10.0.1.2"),
        5060,
        format!(
            "BYE sip:alice@10.0.1.2 SIP/2.0\r\nCall-ID: {}\r\n\r\n",
            calls[0]
        )
        .as_bytes(),
    );
    let before = bed.counters();
    bed.run(&f.build(), bed.bk);
    assert_eq!(
        bed.counters()["affinity_learned"],
        before["affinity_learned"]
    );
}

#[test]
fn a_full_affinity_map_degrades_to_the_table_never_elsewhere() {
    // One CPU: an entry another CPU entered stays on that CPU's pending list,
    // out of eviction's reach, until that CPU enters another: an unpinned run
    // keeps a few dialogs wherever the thread happened to migrate.
    pin_to_current_cpu();
    let mut bed = bed_with(64);
    change(&mut bed, |_| {});
    let calls = ids("evict", 1000);
    let first: Vec<SocketAddr> = calls.iter().map(|id| sent_to(&mut bed, id)).collect();
    change(&mut bed, |s| {
        s.backends
            .push(balancer::model::BackendConfig::new(addr("10.0.2.14:5060")))
    });
    let (mut kept, mut table) = (0, 0);
    for (id, b) in calls.iter().zip(&first) {
        let now = sent_to(&mut bed, id);
        let t = table_pick(&bed, id);
        assert!(
            now == *b || now == t,
            "{id}: {now} is neither its backend {b} nor the table's {t}"
        );
        if now == *b && *b != t {
            kept += 1;
        } else if now == t && *b != t {
            table += 1;
        }
    }
    eprintln!(
        "with 64 entries for 1000 dialogs: {kept} kept by affinity, {table} moved by the table"
    );
    // The dialogs come back in the order they began: by the time one does, the
    // 999 others have each entered the 64-entry map since its own last message,
    // so its entry is gone and it follows the table. Exactly the dialogs the new
    // table moves move; none is kept.
    let moved = calls
        .iter()
        .zip(&first)
        .filter(|(id, b)| table_pick(&bed, id) != **b)
        .count();
    assert_eq!((kept, table), (0, moved), "(kept, moved by the table)");
}

#[test]
fn idle_affinity_entries_expire() {
    let mut bed = bed();
    change(&mut bed, |s| {
        s.affinity_idle = Some(std::time::Duration::from_secs(1))
    });
    let calls = ids("idle", 200);
    let first: Vec<SocketAddr> = calls.iter().map(|id| sent_to(&mut bed, id)).collect();
    change(&mut bed, |s| {
        s.backends
            .push(balancer::model::BackendConfig::new(addr("10.0.2.14:5060")))
    });
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut moved = 0;
    for (id, b) in calls.iter().zip(&first) {
        let now = sent_to(&mut bed, id);
        assert_eq!(
            now,
            table_pick(&bed, id),
            "{id}: an expired entry yields to the table"
        );
        moved += (now != *b) as usize;
    }
    assert!(moved > 20, "{moved}");
}

// IP fragments (README, "What the data plane does"): the first fragment is dispatched as
// usual and its decision remembered by (source, destination, identification);
// the later ones, which carry no UDP header, follow it.

/// Splits a whole datagram built by `Frame` (no VLAN tags) into IP fragments
/// carrying at most `chunk` bytes of IP payload each (a multiple of 8).
fn fragments(frame: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0);
    let v4 = frame[12..14] == [0x08, 0x00];
    let l3 = 14;
    let hl = if v4 { 20 } else { 40 };
    let payload = &frame[l3 + hl..];
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let end = (off + chunk).min(payload.len());
        let more = end < payload.len();
        let mut f = frame[..l3].to_vec();
        let mut h = frame[l3..l3 + hl].to_vec();
        if v4 {
            h[2..4].copy_from_slice(&((hl + end - off) as u16).to_be_bytes());
            h[4..6].copy_from_slice(&(id as u16).to_be_bytes());
            let fo = (off / 8) as u16 | if more { 0x2000 } else { 0 };
            h[6..8].copy_from_slice(&fo.to_be_bytes());
            h[10..12].copy_from_slice(&[0, 0]);
            let c = checksum(&h, 0);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
        } else {
            h[4..6].copy_from_slice(&((8 + end - off) as u16).to_be_bytes());
            h[6] = 44;
            f.extend_from_slice(&h);
            let fo = ((off / 8) as u16) << 3 | more as u16;
            f.extend_from_slice(&[17, 0]);
            f.extend_from_slice(&fo.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        f.extend_from_slice(&payload[off..end]);
        out.push(f);
        off = end;
    }
    out
}

/// Reassembles fragments that went through the program (in order): checks each
/// IPv4 header checksum and that all share addresses, then parses the whole
/// datagram (UDP checksum checked over it).
fn reassemble(frags: &[Vec<u8>]) -> (Parsed, Vec<[u8; 6]>) {
    let v4 = frags[0][12..14] == [0x08, 0x00];
    let (hl, skip) = if v4 { (20, 0) } else { (40, 8) };
    let mut whole = frags[0][..14 + hl].to_vec();
    let mut data = Vec::new();
    let mut macs = Vec::new();
    for f in frags {
        let h = &f[14..14 + hl];
        if v4 {
            assert_eq!(checksum(h, 0), 0, "IPv4 header checksum of a fragment");
        }
        assert_eq!(
            h[12..hl.min(40)],
            whole[14 + 12..14 + hl.min(40)],
            "addresses agree"
        );
        macs.push(f[0..6].try_into().unwrap());
        data.extend_from_slice(&f[14 + hl + skip..]);
    }
    if v4 {
        whole[14 + 2..14 + 4].copy_from_slice(&((hl + data.len()) as u16).to_be_bytes());
        whole[14 + 6..14 + 8].copy_from_slice(&[0, 0]);
        whole[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let c = checksum(&whole[14..14 + hl], 0);
        whole[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    } else {
        whole[14 + 4..14 + 6].copy_from_slice(&(data.len() as u16).to_be_bytes());
        whole[14 + 6] = 17;
    }
    whole.extend_from_slice(&data);
    (parse(&whole), macs)
}

fn big_invite(id: &str) -> Vec<u8> {
    // The Call-ID near the top, then padding: about 4,000 bytes.
    invite_early(id, 4000)
}
