//! Which interface leads to an address, per the kernel's routing table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The egress interface for `addr` (`ip route get`). iproute2 is on every Linux
/// host this runs on; asking it keeps policy routing and VRFs right.
pub fn egress_interface(addr: IpAddr) -> Result<String> {
    let out = Command::new("ip")
        .args(["-o", "route", "get", &addr.to_string()])
        .output()
        .context("running `ip route get` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "no route to backend {addr}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    parse_dev(&text).with_context(|| format!("no `dev` in `ip route get {addr}`: {text}"))
}

/// The egress interface of each address, with one `ip` process for all of
/// them (`ip -batch`): after a routing change every backend is looked up
/// again. An address without a route is missing from the answer.
pub fn egress_interfaces(addrs: &[IpAddr]) -> Result<HashMap<IpAddr, String>> {
    use std::io::Write;
    use std::process::Stdio;
    if addrs.is_empty() {
        return Ok(HashMap::new());
    }
    let mut child = Command::new("ip")
        .args(["-o", "-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running `ip -batch` (iproute2)")?;
    let mut script = String::new();
    for a in addrs {
        script += &format!("route get {a}\n");
    }
    let mut stdin = child.stdin.take().expect("piped");
    // Written from a thread: ip answers while it reads, and a full pipe
    // either way would stall both.
    let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
    let out = child.wait_with_output().context("reading `ip -batch`")?;
    let _ = writer.join();
    Ok(parse_batch(&String::from_utf8_lossy(&out.stdout)))
}

/// `ip -o route get` lines: each names its destination first (after a route
/// type such as `local`), then `dev`.
fn parse_batch(text: &str) -> HashMap<IpAddr, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let dst = line
            .split_whitespace()
            .take(2)
            .find_map(|w| w.parse::<IpAddr>().ok());
        if let (Some(dst), Some(dev)) = (dst, parse_dev(line)) {
            out.insert(dst, dev);
        }
    }
    out
}

/// Every address of this host (in this network namespace), `getifaddrs`.
pub fn local_addresses() -> Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below; each entry's
    // address is read according to its own family.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return Err(std::io::Error::last_os_error()).context("getifaddrs");
        }
        let mut out = Vec::new();
        let mut p = head;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() {
                match (*a).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(a as *const libc::sockaddr_in);
                        out.push(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(a as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
        out.sort();
        out.dedup();
        Ok(out)
    }
}

fn parse_dev(text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "dev" {
            return words.next().map(str::to_string);
        }
    }
    None
}

pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!("no interface named `{name}`");
    }
    Ok(i)
}

/// Whether `name` is a veth, by its driver name (ETHTOOL_GDRVINFO).
pub fn is_veth(name: &str) -> bool {
    driver(name).as_deref() == Some("veth")
}

/// The interface's driver name, as `ethtool -i` shows it.
pub fn driver(name: &str) -> Option<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    if name.len() >= 16 {
        return None;
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut info,
        _pad: [0; 16],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: a datagram socket for the ioctl, closed below; the request points at
    // live, correctly sized structures.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL, &mut req);
        libc::close(fd);
        if rc != 0 {
            return None;
        }
    }
    let end = memchr::memchr(0, &info.driver).unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_dev() {
        let t = "10.0.2.11 dev lb1 src 10.0.2.1 uid 0 \\    cache ";
        assert_eq!(super::parse_dev(t).as_deref(), Some("lb1"));
        assert_eq!(
            super::parse_dev("local 10.0.0.1 dev lo table local"),
            Some("lo".into())
        );
    }

    #[test]
    fn parses_a_batch_by_destination() {
        let t = "local 127.0.0.1 dev lo src 127.0.0.1 uid 0 \\    cache <local> \n\
                 10.255.255.1 via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0 \\    cache \n\
                 fd00:2::11 from :: dev l1 proto kernel src fd00:2::1 metric 256 pref medium\n";
        let m = super::parse_batch(t);
        assert_eq!(m.len(), 3);
        assert_eq!(m[&"127.0.0.1".parse().unwrap()], "lo");
        assert_eq!(m[&"10.255.255.1".parse().unwrap()], "eth0");
        assert_eq!(m[&"fd00:2::11".parse().unwrap()], "l1");
    }

    #[test]
    fn the_host_has_its_loopback_address_and_a_route_to_it() {
        let local = super::local_addresses().unwrap();
        assert!(local.contains(&"127.0.0.1".parse().unwrap()), "{local:?}");
        let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let r = super::egress_interfaces(&[lo]).unwrap();
        assert_eq!(r.get(&lo).map(String::as_str), Some("lo"));
    }

    #[test]
    fn loopback_is_not_a_veth() {
        assert!(!super::is_veth("lo"));
        assert_eq!(super::driver("no-such-if0"), None);
    }
}
