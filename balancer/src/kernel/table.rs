//! Writing Maglev tables into the kernel's pages, and waiting until no program
//! run still reads what was replaced.

use std::time::Duration;

use balancer_common::maglev;
use balancer_common::maps::MAX_SERVICES;

/// Waits until every XDP program run that started before now has finished (XDP
/// runs inside RCU read-side sections; `membarrier(MEMBARRIER_CMD_GLOBAL)` is
/// `synchronize_rcu()`). Falls back to a pause far longer than any program run.
pub(super) fn grace_period() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(super) fn maglev_entries() -> usize {
    (MAX_SERVICES * 2 * maglev::MAX_TABLE) as usize
}

/// The `MAGLEV` array mapped into this process. Array map elements are 8-byte
/// aligned in the kernel's layout (`round_up(value_size, 8)`), so a `u32` entry
/// takes 8 bytes.
pub(super) struct TableMap {
    ptr: *mut u8,
    len: usize,
}

impl TableMap {
    const STRIDE: usize = 8;

    pub(super) fn map(fd: i32, entries: usize) -> std::io::Result<TableMap> {
        let len = entries * Self::STRIDE;
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(TableMap {
            ptr: ptr as *mut u8,
            len,
        })
    }

    pub(super) fn write(&mut self, base: usize, table: &[u32]) {
        assert!((base + table.len()) * Self::STRIDE <= self.len);
        for (i, v) in table.iter().enumerate() {
            // Volatile: these are the kernel's pages, read by XDP programs.
            unsafe {
                std::ptr::write_volatile(self.ptr.add((base + i) * Self::STRIDE) as *mut u32, *v)
            };
        }
        // The service entry update that makes the half live is a syscall, which
        // orders these stores before it.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
}

// The mapping is owned like a Vec: moving it across threads is fine.
unsafe impl Send for TableMap {}

impl Drop for TableMap {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}
