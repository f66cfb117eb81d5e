//! `send`: SIP datagrams to one target, in batches of `sendmmsg`, at a paced
//! rate or flat out, from several sockets (several source ports, as many
//! phones or trunks would use, so a source-port hash has something to spread).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use anyhow::{bail, Context, Result};

use crate::sip::{self, Kind, CALL_ID_LEN};
use crate::sys;

pub struct SendArgs {
    pub target: SocketAddr,
    /// Datagrams per second; 0 = as fast as the sockets take them.
    pub rate: u64,
    pub seconds: f64,
    pub pool: u64,
    pub mix: Vec<(Kind, u32)>,
    pub batch: usize,
    pub sockets: usize,
    pub origin: SocketAddr,
}

const BUF: usize = 2048;

pub fn run(a: &SendArgs) -> Result<serde_json::Value> {
    if a.batch == 0 || a.batch > 1024 || a.sockets == 0 || a.pool == 0 {
        bail!("--batch must be 1..=1024, --sockets and --pool at least 1");
    }
    let socks: Vec<UdpSocket> = (0..a.sockets)
        .map(|_| -> Result<UdpSocket> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(a.target)
                .with_context(|| format!("no route to {}", a.target))?;
            let _ = sys::set_sndbuf(s.as_raw_fd(), 4 << 20);
            Ok(s)
        })
        .collect::<Result<_>>()?;
    // The source address as the target sees it (for Via and Contact).
    let local = socks[0].local_addr()?;
    let templates: Vec<sip::Template> = Kind::ALL
        .iter()
        .map(|k| sip::template(*k, a.target, local, a.origin))
        .collect();
    let order: Vec<&sip::Template> = sip::schedule(&a.mix)
        .into_iter()
        .map(|k| &templates[Kind::ALL.iter().position(|x| *x == k).unwrap()])
        .collect();
    let ids: Vec<[u8; CALL_ID_LEN]> = (0..a.pool).map(sip::call_id).collect();

    let mut bufs = vec![[0u8; BUF]; a.batch];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: 0,
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = (0..a.batch)
        .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
        .collect();
    for (h, iov) in hdrs.iter_mut().zip(iovs.iter_mut()) {
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
    }

    let mut by_kind = [0u64; 5];
    let (mut sent, mut bytes, mut errors, mut seq) = (0u64, 0u64, 0u64, 0u64);
    let interval_ns = if a.rate > 0 {
        a.batch as f64 * 1e9 / a.rate as f64
    } else {
        0.0
    };
    let start = sys::now_ns();
    let end = start + (a.seconds * 1e9) as u64;
    let mut batches = 0u64;
    let mut lens = vec![0usize; a.batch];
    let mut kinds = vec![0usize; a.batch];
    loop {
        let mut now = sys::now_ns();
        if now >= end {
            break;
        }
        if a.rate > 0 {
            // Batch k leaves at start + k * interval: the average rate holds even
            // when a sleep oversleeps (the next batch then goes at once).
            let due = start + (batches as f64 * interval_ns) as u64;
            if due > end {
                break;
            }
            if due > now {
                std::thread::sleep(std::time::Duration::from_nanos(due - now));
                now = sys::now_ns();
                if now >= end {
                    break;
                }
            }
        }
        for i in 0..a.batch {
            let t = order[(seq as usize + i) % order.len()];
            let id = &ids[((seq + i as u64) % a.pool) as usize];
            lens[i] = t.fill(id, &mut bufs[i]);
            kinds[i] = t.kind as usize;
            iovs[i].iov_len = lens[i];
        }
        let fd = socks[(batches % a.sockets as u64) as usize].as_raw_fd();
        let mut off = 0;
        while off < a.batch {
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs[off..].as_mut_ptr(),
                    (a.batch - off) as libc::c_uint,
                    0,
                )
            };
            if n <= 0 {
                // ENOBUFS and the like: the datagram was not offered; count it
                // and move on rather than spin.
                errors += 1;
                off += 1;
                continue;
            }
            for i in off..off + n as usize {
                bytes += lens[i] as u64;
                by_kind[kinds[i]] += 1;
            }
            sent += n as u64;
            off += n as usize;
        }
        seq += a.batch as u64;
        batches += 1;
    }
    let seconds = (sys::now_ns() - start) as f64 / 1e9;
    let kinds: serde_json::Map<String, serde_json::Value> = Kind::ALL
        .iter()
        .zip(by_kind)
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k.name().to_string(), n.into()))
        .collect();
    Ok(serde_json::json!({
        "sent": sent,
        "bytes": bytes,
        "errors": errors,
        "seconds": seconds,
        "rate": sent as f64 / seconds,
        "target_rate": a.rate,
        "batch": a.batch,
        "sockets": a.sockets,
        "pool": a.pool,
        "by_kind": kinds,
        "sizes": templates
            .iter()
            .map(|t| (t.kind.name().to_string(), t.bytes.len().into()))
            .collect::<serde_json::Map<String, serde_json::Value>>(),
    }))
}
