//! Addresses as words: 16-byte addresses moved as four, an IPv4 address read as
//! one. A `[u8; 16]` assignment is a byte copy in BPF (the array's alignment is
//! 1): sixteen loads, sixteen stores and, under register pressure, sixteen stack
//! spills. Every address this program copies sits 4-aligned in its struct
//! (`Endpoint`, the map keys and values).

/// The address as four words, as they lie in memory.
#[inline(always)]
pub fn words(a: &[u8; 16]) -> [u32; 4] {
    // SAFETY: the callers' addresses are 4-aligned fields (see the module doc).
    unsafe { core::ptr::read(a as *const [u8; 16] as *const [u32; 4]) }
}

/// `*dst = *src`, word by word.
#[inline(always)]
pub fn copy(dst: &mut [u8; 16], src: &[u8; 16]) {
    let w = words(src);
    // SAFETY: as in `words`.
    unsafe { core::ptr::write(dst as *mut [u8; 16] as *mut [u32; 4], w) };
}

/// `a == b`, word by word.
#[inline(always)]
pub fn eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (x, y) = (words(a), words(b));
    (x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) == 0
}

/// The IPv4 address in the first four bytes, as the packet holds it.
#[inline(always)]
pub fn word4(a: &[u8; 16]) -> u32 {
    u32::from_ne_bytes([a[0], a[1], a[2], a[3]])
}
