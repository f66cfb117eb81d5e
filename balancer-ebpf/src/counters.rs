//! Counters: verdicts and reasons (`reason::*`), traffic per backend and per service.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use balancer_common::maps::{reason, Traffic, MAX_BACKENDS, MAX_SERVICES};

/// Verdict/reason counters.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(reason::COUNT, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

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
