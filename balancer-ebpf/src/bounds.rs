//! The one bounds check every packet access goes through.

use aya_ebpf::programs::XdpContext;
use balancer_common::maps::reason;

/// A pointer to a `T` at `off`, if the packet holds it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return Err(reason::MALFORMED);
    }
    Ok((start + off) as *mut T)
}
