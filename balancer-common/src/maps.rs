//! Map keys and values shared by the XDP program and user space. Every field is
//! a plain integer or byte array so the layout is the same on both sides, and
//! every type derives `bytemuck::Pod`: a field order that leaves padding (bytes
//! the kernel would compare or hash, uninitialised) does not compile. Fill such
//! gaps with explicit `_pad` fields.

use bytemuck::{Pod, Zeroable};

/// Services (VIPs) one program serves; also the number of Maglev table pairs.
pub const MAX_SERVICES: u32 = 64;
/// Backend slots, over all services.
pub const MAX_BACKENDS: u32 = 4096;
/// Interfaces the program may redirect to.
pub const MAX_PORTS: u32 = 64;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_UDP: u8 = 17;

/// An IP endpoint. IPv4 addresses sit in the first four bytes of `addr`, the rest
/// zero; `port` is in network byte order as in the packet. 4-aligned so copies and
/// zeroing are word moves in BPF, not byte loops.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Endpoint {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub proto: u8,
}

/// The kernel's key for a socket address: IPv4 in the first four bytes, port in
/// network order, UDP.
#[cfg(any(feature = "user", test))]
impl From<std::net::SocketAddr> for Endpoint {
    fn from(a: std::net::SocketAddr) -> Self {
        let mut addr = [0u8; 16];
        let family = match a.ip() {
            std::net::IpAddr::V4(v4) => {
                addr[..4].copy_from_slice(&v4.octets());
                AF_INET
            }
            std::net::IpAddr::V6(v6) => {
                addr = v6.octets();
                AF_INET6
            }
        };
        Endpoint {
            addr,
            port: a.port().to_be(),
            family,
            proto: IPPROTO_UDP,
        }
    }
}

/// The socket address of a kernel key. Anything but `AF_INET6` reads as IPv4
/// (an empty backend slot has family 0).
#[cfg(any(feature = "user", test))]
impl From<Endpoint> for std::net::SocketAddr {
    fn from(e: Endpoint) -> Self {
        let port = u16::from_be(e.port);
        match e.family {
            AF_INET6 => std::net::SocketAddr::from((e.addr, port)),
            _ => std::net::SocketAddr::from(([e.addr[0], e.addr[1], e.addr[2], e.addr[3]], port)),
        }
    }
}

/// `Service::mode` values.
pub const MODE_DNAT: u32 = 0;
pub const MODE_DSR: u32 = 1;

/// `Service::algorithm` values: what the kernel hashes to pick a backend. The
/// user-space algorithms `priority` and `weighted` are tables built from a subset
/// or with weights and hash the Call-ID (`ALG_CALL_ID`).
pub const ALG_CALL_ID: u32 = 0;
/// The URI of the From header (Kamailio dispatcher algorithm 1).
pub const ALG_FROM_URI: u32 = 1;
/// The URI of the To header (algorithm 2).
pub const ALG_TO_URI: u32 = 2;
/// The user part of the Request-URI (algorithm 3).
pub const ALG_REQUEST_URI: u32 = 3;
/// The source address (algorithm 4 hashes Contact; the source is what XDP sees).
pub const ALG_SOURCE: u32 = 4;
/// A per-CPU counter per datagram (algorithm 5).
pub const ALG_ROUND_ROBIN: u32 = 5;

/// A service, keyed by its VIP [`Endpoint`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Service {
    /// Index of the service's table pair in `MAGLEV`, `< MAX_SERVICES`.
    pub id: u32,
    /// Maglev table size (a prime `<= maglev::MAX_TABLE`).
    pub table_size: u32,
    /// Which of the two tables is live (0 or 1); user space writes the other one
    /// and then flips this field with one map update.
    pub active: u32,
    pub mode: u32,
    /// One of the `ALG_*` values.
    pub algorithm: u32,
    /// `SERVICE_*` flags.
    pub flags: u32,
    /// Dialog affinity: entries idle longer than this many seconds are ignored.
    pub affinity_idle: u32,
    /// Per source (`RateKey`): ns between datagrams at the limit
    /// (`limits::interval` of the rate; 0: no limit) and the burst.
    pub interval: u32,
    pub burst: u32,
    /// Per source: the same for new dialogs (affinity entries).
    pub dialog_interval: u32,
    pub dialog_burst: u32,
    /// A source over either limit is dropped for this many seconds (0: only
    /// what is over the limit is dropped).
    pub block_s: u32,
    /// Largest UDP payload accepted, bytes (0: any).
    pub max_size: u32,
}

/// `Service::flags`: with no usable backend, pass datagrams to the local stack
/// (counted `no_backend_pass`) instead of dropping them (counted `no_backend`).
pub const SERVICE_PASS_NO_BACKEND: u32 = 1;
/// `Service::flags`: dialog affinity on.
pub const SERVICE_AFFINITY: u32 = 2;
/// `Service::flags`: only sources in the service's allow-list (`ALLOWED`) are served.
pub const SERVICE_ALLOW_LIST: u32 = 4;
/// `Service::flags`: requests whose User-Agent begins with a `SCANNERS` entry are dropped.
pub const SERVICE_SCANNERS: u32 = 8;
/// `Service::flags`: the affinity entries the program makes for this service
/// are queued in `AFFINITY_EVENTS` for the daemon to tell its peers (`[sync]`).
pub const SERVICE_SYNC: u32 = 16;

/// `Reverse::learn` bits: learn the backend's dialogs.
pub const REVERSE_LEARN: u32 = 1;
/// `Reverse::learn` bits: and queue what is learned in `AFFINITY_EVENTS`.
pub const REVERSE_SYNC: u32 = 2;

/// An affinity entry the program made, on its way to the daemon through the
/// `AFFINITY_EVENTS` ring buffer: the daemon names service and backend by
/// address and sends it to the peers of `[sync]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct AffinityEvent {
    /// [`EVENT_CLIENT`] (`AFFINITY`) or [`EVENT_LEARNED`] (`LEARNED`).
    pub map: u32,
    pub service: u32,
    pub hash: u32,
    pub slot: u32,
}

/// [`AffinityEvent::map`]: an entry of `AFFINITY` (a client started the dialog).
pub const EVENT_CLIENT: u32 = 0;
/// [`AffinityEvent::map`]: an entry of `LEARNED` (a backend started it).
pub const EVENT_LEARNED: u32 = 1;
/// Size of `AFFINITY_EVENTS`, bytes (a power of two): 16,384 events of 16
/// bytes plus the ring's 8-byte headers, about a second of dialog starts at
/// 10,000/s however late the daemon reads.
pub const AFFINITY_EVENTS_BYTES: u32 = 512 * 1024;

/// A backend slot. `family == 0` marks an empty slot.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Backend {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    /// `BACKEND_*` flags.
    pub flags: u8,
}

/// `Backend::flags`: dialogs pinned to this backend stay on it (it is active or
/// draining, and not down). Without it, an affinity entry naming it is replaced.
pub const BACKEND_STICKY: u8 = 1;

/// What a backend's messages on their way to a client become, keyed by the
/// backend's address: the service VIP they must appear to come from, and what
/// dialog-affinity learning needs.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Reverse {
    pub vip: Endpoint,
    /// The service's id (`Service::id`).
    pub service: u32,
    /// The backend's slot.
    pub slot: u32,
    /// The service's algorithm (`ALG_*`), for the key of what is learned.
    pub algorithm: u32,
    /// Non-zero: learn the dialogs this backend's messages belong to.
    pub learn: u32,
}

/// Dialog affinity: (service, key hash) -> backend slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AffinityKey {
    pub service: u32,
    pub hash: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Affinity {
    pub slot: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_coarse_ns` of the last message of the dialog, written
    /// at most once a second ([`Affinity::touch`]).
    pub seen: u64,
}

impl Affinity {
    /// Whether the entry still holds its dialog at `now_ns` (the kernel's
    /// monotonic clock): its last message is less than `idle_s` seconds old.
    /// Wrapping, as the data plane has always computed it: an entry stamped
    /// after `now_ns` (another CPU touched it after this one read the clock)
    /// counts as idle, not fresh. User space applies the same rule, so what it
    /// predicts is what the data plane does.
    #[inline(always)]
    pub fn is_fresh(&self, now_ns: u64, idle_s: u32) -> bool {
        now_ns.wrapping_sub(self.seen) < idle_s as u64 * 1_000_000_000
    }

    /// Records a message of the dialog at `now_ns`, at most once per
    /// [`AFFINITY_TOUCH_NS`]: most messages of a busy dialog then only read
    /// the entry, and its cache line is not written on every packet (or
    /// bounced between CPUs). An entry so ages up to that much early, against
    /// idle times of minutes.
    #[inline(always)]
    pub fn touch(&mut self, now_ns: u64) {
        if now_ns.wrapping_sub(self.seen) >= AFFINITY_TOUCH_NS {
            self.seen = now_ns;
        }
    }
}

/// How stale [`Affinity::seen`] may get before a message of its dialog
/// writes it again.
pub const AFFINITY_TOUCH_NS: u64 = 1_000_000_000;

/// A fragmented datagram: addresses as the first fragment arrived, and its IP
/// identification.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub family: u32,
}

/// What the first fragment's decision was, for the later fragments to follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FragEntry {
    /// The address written into the later fragments (`FRAG_*` says which side),
    /// or, with `FRAG_KEEP`, the backend whose MAC they go to (DSR).
    pub addr: [u8; 16],
    pub how: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns` of the first fragment: older than the reassembly
    /// timeout, the entry is stale.
    pub seen: u64,
}

/// `FragEntry::how`: rewrite the destination (DNAT to a backend).
pub const FRAG_DST: u32 = 1;
/// Rewrite the source (a backend's message made to come from the VIP).
pub const FRAG_SRC: u32 = 2;
/// Rewrite nothing, send to `addr`'s MAC (DSR).
pub const FRAG_KEEP: u32 = 3;
/// Fragments of one datagram arrive within this many seconds (Linux's
/// `ipfrag_time` default is 30).
pub const FRAG_TIMEOUT_S: u64 = 30;

/// A source address the balancer knows (a backend's, a VIP, one of this host's):
/// the key of `GUARD`.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SourceAddr {
    pub addr: [u8; 16],
    pub family: u32,
}

/// Strict reverse path: datagrams from a `GUARD` address are accepted only on
/// `ifindex`, the interface the route to that address uses; 0 (a VIP, an
/// address of this host) means never from the outside.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Guard {
    pub ifindex: u32,
}

/// The data of an LPM trie key for the block list (`BLOCKED`): family, then the
/// address. The prefix length counts the family's 32 bits too.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Cidr {
    pub family: u32,
    pub addr: [u8; 16],
}

/// Bits of a [`Cidr`] key before the address.
pub const CIDR_FAMILY_BITS: u32 = 32;

/// A block-list entry: dropped until `until` (the kernel's monotonic clock, ns;
/// 0: until removed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Block {
    pub until: u64,
}

/// The data of an LPM trie key for a service's allow-list (`ALLOWED`): the
/// service id, family, address. The prefix length counts 64 bits before the address.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AllowCidr {
    pub service: u32,
    pub family: u32,
    pub addr: [u8; 16],
}

/// Bits of an [`AllowCidr`] key before the address.
pub const ALLOW_PREFIX_BITS: u32 = 64;

/// Per-source rate state key: the service and the source, IPv4 whole (/32),
/// IPv6 by its /64 (one subscriber's prefix).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct RateKey {
    pub addr: [u8; 16],
    pub family: u32,
    pub service: u32,
}

/// User-Agent prefixes a service with `SERVICE_SCANNERS` drops (`SCANNERS`
/// array, lower case; `len == 0` ends the list).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct UaPattern {
    pub len: u32,
    pub bytes: [u8; UA_PATTERN_MAX],
}

/// Longest User-Agent prefix in `SCANNERS`.
pub const UA_PATTERN_MAX: usize = 28;
/// Entries of `SCANNERS`.
pub const MAX_UA_PATTERNS: u32 = 16;
/// Capacity of the block-list and allow-list tries.
pub const BLOCK_ENTRIES: u32 = 16_384;
pub const ALLOW_ENTRIES: u32 = 16_384;
/// Capacity of `LEARNED`, the affinity entries backends teach (a map of their
/// own: client traffic cannot evict them).
pub const LEARNED_ENTRIES: u32 = 65_536;

/// Default capacity of the affinity map (live dialogs over all services).
pub const AFFINITY_ENTRIES: u32 = 262_144;

/// Per-CPU packet and byte counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

/// Target of the benchmark baseline program `xdp_trivial` (slot 0 of `TRIVIAL`):
/// IPv4 address and port (network order), MACs, egress interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TrivialTarget {
    pub addr: [u8; 4],
    pub port: u16,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub _pad: [u8; 2],
    pub ifindex: u32,
}

/// Table entry meaning "no backend" (an empty service).
pub const NO_BACKEND: u32 = u32::MAX;

/// The names of the program's maps, as user space looks them up and pins them.
/// The eBPF program's `#[map]` statics carry the same names (the attribute takes
/// the static's identifier); `balancer/tests/map_names.rs` checks the built
/// object's maps against [`names::ALL`].
pub mod names {
    pub const SERVICES: &str = "SERVICES";
    pub const REVERSE: &str = "REVERSE";
    pub const AFFINITY: &str = "AFFINITY";
    pub const BACKENDS: &str = "BACKENDS";
    pub const MAGLEV: &str = "MAGLEV";
    pub const FRAGS: &str = "FRAGS";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const NEXTHOP: &str = "NEXTHOP";
    pub const SLOT_HOPS: &str = "SLOT_HOPS";
    pub const STATS: &str = "STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const RR: &str = "RR";
    pub const SCRATCH: &str = "SCRATCH";
    pub const TRIVIAL: &str = "TRIVIAL";
    pub const GUARD: &str = "GUARD";
    pub const BLOCKED: &str = "BLOCKED";
    pub const ALLOWED: &str = "ALLOWED";
    pub const RATES: &str = "RATES";
    pub const LEARNED: &str = "LEARNED";
    pub const SCANNERS: &str = "SCANNERS";
    pub const HINTS: &str = "HINTS";
    /// The seed of `RATES`' hash (`limits::rate_slot`), drawn at first load.
    pub const SEED: &str = "SEED";
    /// aya-log's ring buffer: the program's log records (`balancer::kernel::program_log`).
    pub const AYA_LOGS: &str = "AYA_LOGS";
    /// New affinity entries for the peers (`AffinityEvent`, a ring buffer).
    pub const AFFINITY_EVENTS: &str = "AFFINITY_EVENTS";
    /// Maps that hold nothing worth keeping across a restart (per-datagram
    /// working memory): never pinned, so a new build may change their layout
    /// without making the pins of a running data plane unfit to adopt.
    pub const UNPINNED: &[&str] = &[SCRATCH];

    /// Every map of the object.
    pub const ALL: &[&str] = &[
        SERVICES,
        REVERSE,
        AFFINITY,
        BACKENDS,
        MAGLEV,
        FRAGS,
        TX_PORTS,
        NEXTHOP,
        SLOT_HOPS,
        STATS,
        BACKEND_STATS,
        SERVICE_STATS,
        RR,
        SCRATCH,
        TRIVIAL,
        AYA_LOGS,
        GUARD,
        BLOCKED,
        ALLOWED,
        RATES,
        LEARNED,
        SCANNERS,
        HINTS,
        SEED,
        AFFINITY_EVENTS,
    ];

    /// The maps a pin directory holds: [`ALL`] but [`UNPINNED`].
    pub fn pinned() -> impl Iterator<Item = &'static str> {
        ALL.iter().copied().filter(|m| !UNPINNED.contains(m))
    }
}

/// Verdict/reason counters, indices into the `STATS` per-CPU array.
pub mod reason {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed untouched.
    pub const PASS_NOT_IP: u32 = 0;
    /// IP but not UDP: passed untouched.
    pub const PASS_NOT_UDP: u32 = 1;
    /// UDP not addressed to a service and not from a backend: passed untouched.
    pub const PASS_NO_SERVICE: u32 = 2;
    /// Dispatched by Call-ID.
    pub const CALLID: u32 = 3;
    /// A SIP-looking datagram without a usable Call-ID: source-address hash.
    pub const FALLBACK_NO_CALLID: u32 = 4;
    /// Empty or CR/LF-only datagram (keepalive): source-address hash.
    pub const FALLBACK_KEEPALIVE: u32 = 5;
    /// Backend reply rewritten to come from the VIP.
    pub const REVERSE_NAT: u32 = 6;
    /// Backend reply addressed to this host itself (probe answers): untouched.
    pub const PASS_LOCAL: u32 = 7;
    /// A later IP fragment that followed its first fragment's decision.
    pub const FRAGMENT: u32 = 8;
    /// The service has no backend: dropped.
    pub const NO_BACKEND: u32 = 9;
    /// Headers shorter than they claim, bad lengths: passed untouched.
    pub const MALFORMED: u32 = 10;
    /// Next hop not resolved yet: rewritten packet handed to the kernel to resolve.
    pub const FIB_NO_NEIGH: u32 = 11;
    /// No route, or the route is not forwardable: handed to the kernel.
    pub const FIB_FAIL: u32 = 12;
    /// TTL/hop limit would expire: handed to the kernel (it answers ICMP).
    pub const TTL_EXCEEDED: u32 = 13;
    /// Sent back out of the receiving interface.
    pub const TX: u32 = 14;
    /// Redirected to another interface.
    pub const REDIRECT: u32 = 15;
    /// Dispatched by the source address: the service's algorithm is `ALG_SOURCE`.
    pub const SOURCE: u32 = 16;
    /// Dispatched by the per-CPU counter: the service's algorithm is `ALG_ROUND_ROBIN`.
    pub const ROUND_ROBIN: u32 = 17;
    /// Dispatched by the From/To URI or the Request-URI user (`ALG_FROM_URI`,
    /// `ALG_TO_URI`, `ALG_REQUEST_URI`). Messages of those services without the key
    /// count under `callid` or the fallbacks, as `keys::message_dispatch` says.
    pub const URI: u32 = 18;
    /// The service has no usable backend and is set to pass: to the local stack.
    pub const NO_BACKEND_PASS: u32 = 19;
    /// Dialog affinity: the dialog's backend, from the affinity map.
    pub const AFFINITY_HIT: u32 = 20;
    /// Dialog affinity: a new dialog, entered into the map.
    pub const AFFINITY_NEW: u32 = 21;
    /// Dialog affinity: the entry named a backend that is down, disabled or
    /// gone, or was idle too long; replaced by the table's choice.
    pub const AFFINITY_REPLACED: u32 = 22;
    /// Dialog affinity: learned from a backend's message (it started the dialog).
    pub const AFFINITY_LEARNED: u32 = 23;
    /// A later IP fragment with no (or a stale) first-fragment decision: passed
    /// to the kernel untouched.
    pub const FRAGMENT_MISS: u32 = 24;
    /// The source is a backend, a VIP or an address of this host, and the
    /// datagram came in on an interface the route to it does not use: dropped.
    pub const SPOOFED: u32 = 25;
    /// The source is in the block list (or blocked for going over a limit): dropped.
    pub const BLOCKED: u32 = 26;
    /// The service has an allow-list and the source is not in it: dropped.
    pub const NOT_ALLOWED: u32 = 27;
    /// The source sent more datagrams than the service's per-source rate: dropped.
    pub const RATE_LIMITED: u32 = 28;
    /// The source started more dialogs than the service's per-source rate: dropped.
    pub const DIALOG_LIMITED: u32 = 29;
    /// A source went over a limit and is now blocked for the service's block time.
    pub const AUTO_BLOCKED: u32 = 30;
    /// Larger than the service's maximum datagram size: dropped.
    pub const TOO_BIG: u32 = 31;
    /// A request from a known scanner's User-Agent: dropped.
    pub const SCANNER: u32 = 32;
    /// IPv6 UDP with a zero checksum (not allowed, RFC 8200): dropped.
    pub const ZERO_CHECKSUM: u32 = 33;
    pub const COUNT: u32 = 34;

    pub const NAMES: [&str; COUNT as usize] = [
        "pass_not_ip",
        "pass_not_udp",
        "pass_no_service",
        "callid",
        "fallback_no_callid",
        "fallback_keepalive",
        "reverse_nat",
        "pass_local",
        "fragment_follow",
        "no_backend",
        "malformed",
        "fib_no_neigh",
        "fib_fail",
        "ttl_exceeded",
        "tx",
        "redirect",
        "source",
        "round_robin",
        "uri",
        "no_backend_pass",
        "affinity_hit",
        "affinity_new",
        "affinity_replaced",
        "affinity_learned",
        "fragment_miss",
        "spoofed",
        "blocked",
        "not_allowed",
        "rate_limited",
        "dialog_limited",
        "auto_blocked",
        "too_big",
        "scanner",
        "zero_checksum",
    ];
}

/// `aya::Pod` (aya's own trait, which its map accessors require) for types
/// whose layout `bytemuck::Pod` has already checked: no padding, every bit
/// pattern valid, which is what aya's trait asks too.
#[cfg(feature = "user")]
macro_rules! aya_pod {
    ($($t:ty),* $(,)?) => {$(
        const _: () = {
            const fn checked<T: bytemuck::Pod>() {}
            checked::<$t>()
        };
        // SAFETY: `bytemuck::Pod`, asserted just above.
        unsafe impl aya::Pod for $t {}
    )*};
}

#[cfg(feature = "user")]
aya_pod!(
    Endpoint,
    Service,
    Backend,
    Reverse,
    AffinityKey,
    Affinity,
    FragKey,
    FragEntry,
    Traffic,
    TrivialTarget,
    SourceAddr,
    Guard,
    Cidr,
    Block,
    AllowCidr,
    RateKey,
    UaPattern,
    crate::limits::Bucket,
    crate::limits::RateSlot,
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn endpoint_holds_ipv4_in_the_first_bytes_and_the_port_in_network_order() {
        let a: SocketAddr = "10.0.0.10:5060".parse().unwrap();
        let e = Endpoint::from(a);
        assert_eq!(&e.addr[..4], &[10, 0, 0, 10]);
        assert_eq!(&e.addr[4..], &[0; 12]);
        assert_eq!(e.port.to_ne_bytes(), 5060u16.to_be_bytes());
        assert_eq!((e.family, e.proto), (AF_INET, IPPROTO_UDP));
        assert_eq!(SocketAddr::from(e), a);
    }

    #[test]
    fn endpoint_round_trips_ipv6() {
        let a: SocketAddr = "[2001:db8::10]:5062".parse().unwrap();
        let e = Endpoint::from(a);
        assert_eq!(e.family, AF_INET6);
        assert_eq!(SocketAddr::from(e), a);
    }

    #[test]
    fn affinity_is_fresh_until_idle_and_not_when_stamped_later() {
        let e = Affinity {
            slot: 1,
            _pad: 0,
            seen: 5_000_000_000,
        };
        assert!(e.is_fresh(e.seen, 2));
        assert!(e.is_fresh(e.seen + 1_999_999_999, 2));
        assert!(!e.is_fresh(e.seen + 2_000_000_000, 2));
        assert!(!e.is_fresh(e.seen, 0));
        // Stamped after `now`: the kernel's wrapping difference is huge, not zero.
        assert!(!e.is_fresh(e.seen - 1, 2));
    }
}
