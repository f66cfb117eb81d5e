//! Incremental Internet checksum updates (RFC 1624), for IPv4 header and UDP
//! checksums after address, port and TTL rewrites.

/// One's-complement fold of a 32-bit accumulator.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New checksum after a 16-bit field changed from `old` to `new`. All values are
/// as they sit in the packet (network order read as native `u16`); the arithmetic
/// is byte-order independent.
#[inline(always)]
pub const fn replace16(check: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    let sum = (!check) as u32 + (!old) as u32 + new as u32;
    !fold(sum)
}

/// New checksum after a 32-bit field (an IPv4 address) changed.
#[inline(always)]
pub const fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let sum =
        (!check) as u32 + (!(old >> 16) & 0xffff) + (!old & 0xffff) + (new >> 16) + (new & 0xffff);
    !fold(sum)
}

/// New checksum after a 16-byte field (an IPv6 address) changed.
#[inline(always)]
pub fn replace128(mut check: u16, old: &[u8; 16], new: &[u8; 16]) -> u16 {
    let mut i = 0;
    while i < 16 {
        let o = u32::from_ne_bytes([old[i], old[i + 1], old[i + 2], old[i + 3]]);
        let n = u32::from_ne_bytes([new[i], new[i + 1], new[i + 2], new[i + 3]]);
        check = replace32(check, o, n);
        i += 4;
    }
    check
}

/// UDP over IPv4 writes a computed zero as 0xffff (0 means "no checksum").
#[inline(always)]
pub const fn udp_nonzero(check: u16) -> u16 {
    if check == 0 {
        0xffff
    } else {
        check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(data: &[u8]) -> u16 {
        let mut sum = 0u32;
        for c in data.chunks(2) {
            let w = u16::from_ne_bytes([c[0], *c.get(1).unwrap_or(&0)]);
            sum += w as u32;
        }
        !fold(sum)
    }

    #[test]
    fn incremental_equals_full() {
        let mut hdr = [
            0x45u8, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0, 0, 192, 168, 0, 1, 192, 168, 0, 199,
        ];
        let c = full(&hdr);
        hdr[10..12].copy_from_slice(&c.to_ne_bytes());
        let old = u32::from_ne_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]);
        let new = u32::from_ne_bytes([10, 0, 2, 11]);
        let inc = replace32(c, old, new);
        hdr[16..20].copy_from_slice(&new.to_ne_bytes());
        hdr[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(inc, full(&hdr));
        let old_ttl = u16::from_ne_bytes([hdr[8], hdr[9]]);
        hdr[8] -= 1;
        let new_ttl = u16::from_ne_bytes([hdr[8], hdr[9]]);
        assert_eq!(replace16(inc, old_ttl, new_ttl), full(&hdr));
    }
}
