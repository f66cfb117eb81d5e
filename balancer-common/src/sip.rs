//! Small SIP byte classes shared by the scanners.

#[inline(always)]
pub const fn is_lws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

#[inline(always)]
pub const fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() {
        b + 32
    } else {
        b
    }
}
