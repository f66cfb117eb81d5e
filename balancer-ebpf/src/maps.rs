//! The program's maps. User space finds them by these names.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use balancer_common::{
    callid::ScanBuf,
    keys::KeyScan,
    maglev::MAX_TABLE,
    maps::{
        reason, Affinity, AffinityKey, Backend, Endpoint, FragEntry, FragKey, Reverse, Service,
        Traffic, TrivialTarget, AFFINITY_ENTRIES, MAX_BACKENDS, MAX_PORTS, MAX_SERVICES,
    },
};

/// VIP -> service.
#[map]
pub static SERVICES: HashMap<Endpoint, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Backend address:port -> the VIP its replies must appear to come from.
#[map]
pub static REVERSE: HashMap<Endpoint, Reverse> = HashMap::with_max_entries(MAX_BACKENDS, 0);

/// Dialog affinity, (service, key hash) -> backend: consulted before the table,
/// least recently used entries evicted when full. User space may resize it at
/// load time.
#[map]
pub static AFFINITY: LruHashMap<AffinityKey, Affinity> =
    LruHashMap::with_max_entries(AFFINITY_ENTRIES, 0);

/// Backend slots.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Two Maglev tables per service (double buffer), flat: see `maglev::table_base`.
/// Mappable, so user space writes a whole table with a memory copy.
#[map]
pub static MAGLEV: Array<u32> =
    Array::with_max_entries(MAX_SERVICES * 2 * MAX_TABLE, BPF_F_MMAPABLE);

/// `BPF_F_MMAPABLE` (include/uapi/linux/bpf.h).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Fragmented datagrams in flight: the first fragment's decision, which the
/// later ones (no UDP header, no Call-ID) follow.
#[map]
pub static FRAGS: LruHashMap<FragKey, FragEntry> = LruHashMap::with_max_entries(65536, 0);

/// Egress interfaces for redirects, keyed by ifindex.
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_PORTS, 0);

/// Next-hop cache: `bpf_fib_lookup` costs several hundred ns per call, so its
/// answers are kept for a second per (destination, ingress interface). A changed
/// neighbour MAC reaches the data plane within that second; an entry is used only
/// for datagrams no larger than one the FIB has already accepted (MTU).
#[repr(C, align(8))]
pub struct NhKey {
    pub addr: [u8; 16],
    pub ingress: u32,
    /// Address family; a whole word so building the key needs no byte-wise padding.
    pub family: u32,
}

#[repr(C)]
pub struct NhEntry {
    pub expires: u64,
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub max_len: u16,
    pub _pad: [u8; 2],
}

pub const NEXTHOP_TTL_NS: u64 = 1_000_000_000;

/// A backend slot's next hop: a copy of the NEXTHOP entry for the slot's
/// address, found by an array lookup where NEXTHOP costs a hash lookup. Used
/// while `addr` and `ingress` still match and the copied entry is valid, so it
/// is never fresher or staler than NEXTHOP. Per CPU: written without locks.
#[repr(C)]
pub struct SlotHop {
    pub addr: [u8; 16],
    pub ingress: u32,
    pub _pad: u32,
    pub nh: NhEntry,
}

#[map]
pub static NEXTHOP: LruHashMap<NhKey, NhEntry> = LruHashMap::with_max_entries(65536, 0);

#[map]
pub static SLOT_HOPS: PerCpuArray<SlotHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Verdict/reason counters.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(reason::COUNT, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Round-robin counters (`ALG_ROUND_ROBIN`), per CPU, indexed by service id: the
/// counter is the key hash, post-incremented per datagram.
#[map]
pub static RR: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// The parse's results that differ by path (see `parse::join`).
#[repr(C)]
pub struct Joined {
    pub l3: u32,
    pub l4: u32,
    pub family: u32,
    pub payload_len: u32,
    pub avail: u32,
    pub first_fragment: u32,
}

/// Per-CPU working memory for the scanners: too big for the 512-byte BPF stack.
#[repr(C)]
pub struct Scratch {
    /// The key search (Request-URI user, header scan, From/To URI).
    pub key: KeyScan,
    /// `bpf_fib_lookup` parameters (64 bytes: too much for the stack next to the rest).
    pub fib: [u64; 8],
    /// Fragment bookkeeping, here for the same reason: key, entry, and a later
    /// fragment's addresses.
    pub frag_key: FragKey,
    pub frag_entry: FragEntry,
    pub frag_src: Endpoint,
    pub frag_dst: Endpoint,
    /// `next_hop`'s cache key and new entry, off its stack frame.
    pub nh_key: NhKey,
    pub nh_entry: NhEntry,
    /// Where `parse::join` passes the parse's results through.
    pub joined: Joined,
    pub buf: ScanBuf,
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Target of the benchmark baseline program (`xdp_trivial`): slot 0 only.
#[map]
pub static TRIVIAL: Array<TrivialTarget> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn count(r: u32) {
    if let Some(c) = STATS.get_ptr_mut(r) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn add_traffic(map: &PerCpuArray<Traffic>, idx: u32, bytes: u64) {
    if let Some(t) = map.get_ptr_mut(idx) {
        unsafe {
            (*t).packets += 1;
            (*t).bytes += bytes;
        }
    }
}
