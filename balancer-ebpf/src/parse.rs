//! Header parsing: Ethernet (+ up to two VLAN tags), IPv4 (any IHL) or IPv6, UDP;
//! a later fragment's addresses; and the join of the parse's paths.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::programs::XdpContext;
use balancer_common::maps::{reason, Endpoint, FragKey, AF_INET, AF_INET6, IPPROTO_UDP};

use crate::{bounds::ptr_at, maps::SCRATCH};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV6_LEN: usize = 40;
const NEXTHDR_FRAGMENT: u8 = 44;

/// Offsets and addresses of a parsed UDP datagram. Addresses are as in the
/// packet; IPv4 addresses in the first 4 bytes.
pub struct Udp {
    pub family: u8,
    pub l3: usize,
    pub l4: usize,
    pub src: Endpoint,
    pub dst: Endpoint,
    /// UDP payload length from the UDP header (checked against the frame).
    pub payload_len: u32,
    /// Payload bytes in this frame: less than `payload_len` in a first fragment.
    pub avail: u32,
    /// Non-zero: this is the first fragment of a fragmented datagram.
    pub first_fragment: u32,
    /// IP identification (IPv4, 16 bits) or fragment identification (IPv6).
    pub frag_id: u32,
}

#[inline(always)]
fn be16(p: *const u8) -> u16 {
    unsafe { u16::from_be_bytes([*p, *p.add(1)]) }
}

/// An all-zero endpoint, built with word stores (a plain `[0; 16]` becomes a
/// byte-wise memset call in BPF).
#[inline(always)]
fn zeroed_endpoint() -> Endpoint {
    let mut words = core::mem::MaybeUninit::<[u32; 5]>::uninit();
    let p = words.as_mut_ptr() as *mut u32;
    let mut i = 0;
    while i < 5 {
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
    // SAFETY: Endpoint is 20 bytes of plain integers, 4-aligned, all zero is valid.
    unsafe { core::mem::transmute::<[u32; 5], Endpoint>(words.assume_init()) }
}

/// Ethernet and up to two VLAN tags: the EtherType and where L3 starts.
#[inline(always)]
fn l2(ctx: &XdpContext) -> Result<(u16, usize), u32> {
    let mut off = 12;
    let mut proto = be16(ptr_at::<[u8; 2]>(ctx, off)? as *const u8);
    off += 2;
    let mut tags = 0;
    while tags < 2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        // The tag is TCI (2 bytes) then the inner EtherType.
        proto = be16(unsafe { (ptr_at::<[u8; 4]>(ctx, off)? as *const u8).add(2) });
        off += 4;
        tags += 1;
    }
    Ok((proto, off))
}

#[inline(always)]
fn be32(p: *const u8) -> u32 {
    unsafe { u32::from_be_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]) }
}

/// Parses down to UDP. A first fragment parses like a datagram (its UDP header
/// is there; `avail` says how much payload). `Err(FRAGMENT)` for a later
/// fragment (see [`parse_fragment`]); other errors for everything that is not
/// UDP or is cut short: the caller passes it untouched.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Udp, u32> {
    let (proto, l3) = l2(ctx)?;
    let mut first_fragment = 0;
    let mut frag_id = 0;
    let (family, l4, ip_payload_end) = match proto {
        ETH_P_IP => {
            let ip = ptr_at::<[u8; 20]>(ctx, l3)? as *const u8;
            let ihl = unsafe { (*ip & 0x0f) as usize * 4 };
            if unsafe { *ip >> 4 } != 4 || ihl < 20 {
                return Err(reason::MALFORMED);
            }
            if unsafe { *ip.add(9) } != IPPROTO_UDP {
                return Err(reason::PASS_NOT_UDP);
            }
            let frag = be16(unsafe { ip.add(6) });
            if frag & 0x1fff != 0 {
                return Err(reason::FRAGMENT);
            }
            if frag & 0x2000 != 0 {
                first_fragment = 1;
                frag_id = be16(unsafe { ip.add(4) }) as u32;
            }
            let tot = be16(unsafe { ip.add(2) }) as usize;
            (AF_INET, l3 + ihl, l3 + tot)
        }
        ETH_P_IPV6 => {
            let ip = ptr_at::<[u8; IPV6_LEN]>(ctx, l3)? as *const u8;
            let mut next = unsafe { *ip.add(6) };
            let plen = be16(unsafe { ip.add(4) }) as usize;
            let mut l4 = l3 + IPV6_LEN;
            if next == NEXTHDR_FRAGMENT {
                let fh = ptr_at::<[u8; 8]>(ctx, l4)? as *const u8;
                let fo = be16(unsafe { fh.add(2) });
                if fo & 0xfff8 != 0 {
                    return Err(reason::FRAGMENT);
                }
                next = unsafe { *fh };
                if fo & 1 != 0 {
                    first_fragment = 1;
                    frag_id = be32(unsafe { fh.add(4) });
                }
                l4 += 8;
            }
            if next != IPPROTO_UDP {
                return Err(reason::PASS_NOT_UDP);
            }
            (AF_INET6, l4, l3 + IPV6_LEN + plen)
        }
        _ => return Err(reason::PASS_NOT_IP),
    };
    let udp = ptr_at::<[u8; 8]>(ctx, l4)? as *const u8;
    let ulen = be16(unsafe { udp.add(4) }) as usize;
    let frame_len = ctx.data_end() - ctx.data();
    if ulen < 8 || ip_payload_end > frame_len || l4 + 8 > ip_payload_end {
        return Err(reason::MALFORMED);
    }
    // A whole datagram must hold its UDP length; a first fragment holds a part.
    let here = ip_payload_end - l4;
    if (first_fragment == 0 && ulen > here) || (first_fragment != 0 && ulen <= here) {
        return Err(reason::MALFORMED);
    }
    let avail = if first_fragment != 0 {
        here - 8
    } else {
        ulen - 8
    };
    let mut src = zeroed_endpoint();
    src.port = unsafe { *(udp as *const u16) };
    src.family = family;
    src.proto = IPPROTO_UDP;
    let mut dst = zeroed_endpoint();
    dst.port = unsafe { *(udp.add(2) as *const u16) };
    dst.family = family;
    dst.proto = IPPROTO_UDP;
    if family == AF_INET {
        let a = ptr_at::<[u8; 8]>(ctx, l3 + 12)?;
        unsafe {
            src.addr[..4].copy_from_slice(&(&*a)[..4]);
            dst.addr[..4].copy_from_slice(&(&*a)[4..]);
        }
    } else {
        let a = ptr_at::<[u8; 32]>(ctx, l3 + 8)?;
        unsafe {
            src.addr.copy_from_slice(&(&*a)[..16]);
            dst.addr.copy_from_slice(&(&*a)[16..]);
        }
    }
    Ok(Udp {
        family,
        l3,
        l4,
        src,
        dst,
        payload_len: (ulen - 8) as u32,
        avail: avail as u32,
        first_fragment,
        frag_id,
    })
}

/// The parse's results that differ by path, as `join` passes them through
/// per-CPU memory (`Scratch::joined`).
#[repr(C)]
pub struct Joined {
    pub l3: u32,
    pub l4: u32,
    pub family: u32,
    pub payload_len: u32,
    pub avail: u32,
    pub first_fragment: u32,
}

/// Largest L3 offset: Ethernet and two VLAN tags.
const L3_MAX: usize = 14 + 2 * 4;
/// Largest L4 offset: IPv4 with options (IHL 15), or IPv6 with a fragment header.
const L4_MAX: usize = L3_MAX + 60;

/// Joins the parse's paths into one verifier state. The parse ends on up to
/// 3 (VLAN tags) x 3 (IPv4, IPv6, IPv6 fragment) x 2 (first fragment) paths,
/// and the verifier knows the offsets on each exactly; since later packet
/// accesses need them, it keeps the paths apart and checks everything after
/// the parse, the key search too, once per path (36 times on 6.12, 800k
/// instructions). Written to per-CPU memory and read back, the values are
/// only known by their masks, which are no-ops on every value the parse can
/// produce, and the paths meet again here (about 100k instructions on every
/// kernel). Volatile, or the compiler would keep the exact values. (The
/// trivial baseline program, with no key search, goes without.)
#[inline(always)]
pub fn join(mut u: Udp) -> Result<Udp, u32> {
    const _: () = assert!(L3_MAX < 32 && L4_MAX < 128);
    let s = SCRATCH.get_ptr_mut(0).ok_or(reason::MALFORMED)?;
    unsafe {
        let j = &mut (*s).joined;
        write_volatile(&mut j.l3, u.l3 as u32);
        write_volatile(&mut j.l4, u.l4 as u32);
        write_volatile(&mut j.family, u.family as u32);
        write_volatile(&mut j.payload_len, u.payload_len);
        write_volatile(&mut j.avail, u.avail);
        write_volatile(&mut j.first_fragment, u.first_fragment);
        u.l3 = read_volatile(&j.l3) as usize & 31;
        u.l4 = read_volatile(&j.l4) as usize & 127;
        u.family = read_volatile(&j.family) as u8;
        u.payload_len = read_volatile(&j.payload_len) & 0xffff;
        u.avail = read_volatile(&j.avail) & 0xffff;
        u.first_fragment = read_volatile(&j.first_fragment) & 1;
    }
    Ok(u)
}

/// A later fragment: fills `key` (addresses and identification, IPv4 or IPv6
/// with the fragment header right after the fixed header) and `src`/`dst` (the
/// addresses, ports zero); returns the family and where L3 starts. Written into
/// per-CPU scratch memory: the stack has no room left.
#[inline(always)]
pub fn parse_fragment(
    ctx: &XdpContext,
    key: &mut FragKey,
    src: &mut Endpoint,
    dst: &mut Endpoint,
) -> Result<(u8, usize), u32> {
    let (proto, l3) = l2(ctx)?;
    let family = if proto == ETH_P_IP {
        let ip = ptr_at::<[u8; 20]>(ctx, l3)? as *const u8;
        key.id = be16(unsafe { ip.add(4) }) as u32;
        let a = ptr_at::<[u32; 2]>(ctx, l3 + 12)?;
        let w = [0u32; 4];
        let (mut s4, mut d4) = (w, w);
        unsafe {
            s4[0] = (*a)[0];
            d4[0] = (*a)[1];
        }
        key.src = unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(s4) };
        key.dst = unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(d4) };
        AF_INET
    } else {
        let fh = ptr_at::<[u8; 8]>(ctx, l3 + IPV6_LEN)? as *const u8;
        key.id = be32(unsafe { fh.add(4) });
        let a = ptr_at::<[u8; 32]>(ctx, l3 + 8)?;
        unsafe {
            key.src.copy_from_slice(&(&*a)[..16]);
            key.dst.copy_from_slice(&(&*a)[16..]);
        }
        AF_INET6
    };
    key.family = family as u32;
    *src = zeroed_endpoint();
    *dst = zeroed_endpoint();
    src.addr = key.src;
    dst.addr = key.dst;
    src.family = family;
    dst.family = family;
    src.proto = IPPROTO_UDP;
    dst.proto = IPPROTO_UDP;
    Ok((family, l3))
}
