//! `sink`: counts the datagrams that reach a backend, with `recvmmsg`, until
//! SIGTERM/SIGINT or the duration ends. Datagrams from `ignore` (the balancer
//! host's own health probes) are not counted as delivered load.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::sys;

pub struct SinkArgs {
    pub bind: SocketAddr,
    pub seconds: Option<f64>,
    pub rcvbuf: i32,
    pub ignore: Vec<IpAddr>,
    pub batch: usize,
}

pub fn run(a: &SinkArgs) -> Result<serde_json::Value> {
    let sock = UdpSocket::bind(a.bind).with_context(|| format!("binding {}", a.bind))?;
    let fd = sock.as_raw_fd();
    let _ = sys::set_rcvbuf(fd, a.rcvbuf);
    // Wake up now and then to see the end of the duration.
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    sys::stop_on_signals();
    println!("ready {}", sock.local_addr()?);

    const BUF: usize = 2048;
    let n = a.batch.clamp(1, 1024);
    let mut bufs = vec![[0u8; BUF]; n];
    let mut names: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; n];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: BUF,
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = (0..n)
        .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
        .collect();
    let ignore: Vec<u32> = a
        .ignore
        .iter()
        .filter_map(|i| match i {
            IpAddr::V4(v4) => Some(u32::from_ne_bytes(v4.octets())),
            IpAddr::V6(_) => None,
        })
        .collect();

    let (mut received, mut bytes, mut ignored, mut first_byte) = (0u64, 0u64, 0u64, [0u64; 4]);
    let start = sys::now_ns();
    let end = a.seconds.map(|s| start + (s * 1e9) as u64);
    let mut first_at = None;
    let mut last_at = start;
    while !sys::stopped() && end.is_none_or(|e| sys::now_ns() < e) {
        for i in 0..n {
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_hdr.msg_name = &mut names[i] as *mut _ as *mut libc::c_void;
            hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        }
        let got = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if got <= 0 {
            continue;
        }
        let t = sys::now_ns();
        for i in 0..got as usize {
            if ignore.contains(&names[i].sin_addr.s_addr) {
                ignored += 1;
                continue;
            }
            received += 1;
            let len = hdrs[i].msg_len as usize;
            bytes += len as u64;
            // I(NVITE), O(PTIONS), B(YE), S(IP/2.0 ...)
            let k = match bufs[i].first() {
                Some(b'I') => 0,
                Some(b'O') => 1,
                Some(b'B') => 2,
                _ => 3,
            };
            first_byte[k] += 1;
        }
        first_at.get_or_insert(t);
        last_at = t;
    }
    let span = first_at.map_or(0.0, |f| (last_at - f) as f64 / 1e9);
    Ok(serde_json::json!({
        "received": received,
        "bytes": bytes,
        "ignored": ignored,
        "seconds": (sys::now_ns() - start) as f64 / 1e9,
        "active_seconds": span,
        "invite": first_byte[0],
        "options": first_byte[1],
        "bye": first_byte[2],
        "responses": first_byte[3],
    }))
}
