//! The maps more than one part of the program reads, and its scratch memory.
//! The others sit beside the code that uses them. User space finds every map by
//! its name (`balancer_common::maps::names`).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use balancer_common::{
    callid::ScanBuf,
    keys::KeyScan,
    line_scan::LineScan,
    maglev::MAX_TABLE,
    maps::{
        Backend, Endpoint, FragEntry, FragKey, Reverse, Service, TrivialTarget, MAX_BACKENDS,
        MAX_SERVICES,
    },
};

use crate::{
    events::Event,
    fib::{NhEntry, NhKey},
    parse::Joined,
};

/// VIP -> service.
#[map]
pub static SERVICES: HashMap<Endpoint, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Backend address:port -> the VIP its replies must appear to come from.
#[map]
pub static REVERSE: HashMap<Endpoint, Reverse> = HashMap::with_max_entries(MAX_BACKENDS, 0);

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

/// Per-CPU working memory: too big for the 512-byte BPF stack.
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
    /// `fib::next_hop`'s cache key and new entry, off its stack frame.
    pub nh_key: NhKey,
    pub nh_entry: NhEntry,
    /// Where `parse::join` passes the parse's results through.
    pub joined: Joined,
    pub buf: ScanBuf,
    /// A rare event for the exit's log (`events`); after `buf`, so adding it
    /// moved no other field.
    pub event: Event,
    /// `policy::admit`'s input and keys.
    pub policy: crate::policy::Admission,
    /// The in-place Call-ID search (`lines.rs`).
    pub lines: LineScan,
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Target of the benchmark baseline program (`xdp_trivial`): slot 0 only.
#[map]
pub static TRIVIAL: Array<TrivialTarget> = Array::with_max_entries(1, 0);
