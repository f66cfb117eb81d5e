//! Frames built byte by byte, with checksums computed from scratch
//! (independently of the code under test), and output frames parsed back with
//! their checksums verified.

use std::net::IpAddr;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

#[derive(Clone, Debug)]
pub struct Frame {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// (TPID, VLAN id) outermost first.
    pub vlans: Vec<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
    /// Send a zero UDP checksum (IPv4 only: "no checksum").
    pub zero_csum: bool,
    /// IPv4 options (a multiple of 4 bytes): a header longer than 20 bytes.
    pub ip_options: Vec<u8>,
}

impl Frame {
    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, payload: &[u8]) -> Frame {
        Frame {
            dmac: [0x02, 0, 0, 0, 0xff, 0x01],
            smac: [0x02, 0, 0, 0, 0x01, 0x02],
            vlans: vec![],
            src,
            dst,
            ttl: 64,
            proto: 17,
            sport,
            dport,
            payload: payload.to_vec(),
            zero_csum: false,
            ip_options: vec![],
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dmac);
        f.extend_from_slice(&self.smac);
        for (tpid, id) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        let l4 = self.l4();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&ETH_P_IP.to_be_bytes());
                assert_eq!(self.ip_options.len() % 4, 0);
                let hl = 20 + self.ip_options.len();
                let tot = (hl + l4.len()) as u16;
                let mut h = vec![0x40 | (hl / 4) as u8, 0];
                h.extend_from_slice(&tot.to_be_bytes());
                h.extend_from_slice(&[0x12, 0x34, 0x40, 0, self.ttl, self.proto, 0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&self.ip_options);
                let c = checksum(&h, 0);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                f.extend_from_slice(&[self.proto, self.ttl]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => panic!("mixed families"),
        }
        f.extend_from_slice(&l4);
        f
    }

    fn l4(&self) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&self.sport.to_be_bytes());
        u.extend_from_slice(&self.dport.to_be_bytes());
        if self.proto == 17 {
            u.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            u.extend_from_slice(&[0, 0]);
            u.extend_from_slice(&self.payload);
            if !(self.zero_csum && self.src.is_ipv4()) {
                let c = l4_checksum(self.src, self.dst, 17, &u);
                u[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
            }
        } else {
            // A minimal TCP header (SYN), enough to be "not UDP".
            u.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
            u.extend_from_slice(&self.payload);
        }
        u
    }
}

/// One's-complement sum of `data` (big-endian words) plus `init`, complemented.
pub fn checksum(data: &[u8], init: u32) -> u16 {
    let mut sum = init;
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => panic!(),
    }
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    let mut sum = 0u32;
    for c in p.chunks(2) {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    sum
}

pub fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, seg: &[u8]) -> u16 {
    checksum(seg, pseudo(src, dst, proto, seg.len()))
}

/// A parsed output frame, with its checksums verified from scratch.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub vlans: Vec<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
}

pub fn parse(f: &[u8]) -> Parsed {
    let mut off = 12;
    let mut vlans = vec![];
    let mut et = u16::from_be_bytes([f[off], f[off + 1]]);
    while et == 0x8100 || et == 0x88a8 {
        vlans.push((et, u16::from_be_bytes([f[off + 2], f[off + 3]])));
        off += 4;
        et = u16::from_be_bytes([f[off], f[off + 1]]);
    }
    off += 2;
    let (src, dst, ttl, l4): (IpAddr, IpAddr, u8, usize) = if et == ETH_P_IP {
        let hl = (f[off] & 0x0f) as usize * 4;
        let h = &f[off..off + hl];
        assert_eq!(checksum(h, 0), 0, "IPv4 header checksum");
        let s: [u8; 4] = h[12..16].try_into().unwrap();
        let d: [u8; 4] = h[16..20].try_into().unwrap();
        (s.into(), d.into(), h[8], off + hl)
    } else {
        let h = &f[off..off + 40];
        let s: [u8; 16] = h[8..24].try_into().unwrap();
        let d: [u8; 16] = h[24..40].try_into().unwrap();
        (s.into(), d.into(), h[7], off + 40)
    };
    let seg = &f[l4..];
    let ulen = u16::from_be_bytes([seg[4], seg[5]]) as usize;
    let seg = &seg[..ulen];
    let csum = u16::from_be_bytes([seg[6], seg[7]]);
    if !(csum == 0 && src.is_ipv4()) {
        assert_eq!(l4_checksum(src, dst, 17, seg), 0, "UDP checksum");
    }
    Parsed {
        dmac: f[0..6].try_into().unwrap(),
        smac: f[6..12].try_into().unwrap(),
        vlans,
        src,
        dst,
        ttl,
        sport: u16::from_be_bytes([seg[0], seg[1]]),
        dport: u16::from_be_bytes([seg[2], seg[3]]),
        payload: seg[8..].to_vec(),
    }
}
