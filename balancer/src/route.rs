//! Which interface leads to an address, per the kernel's routing table.

pub mod announce;
pub mod announced;
mod lookup;

use std::collections::HashMap;
use std::net::IpAddr;

use anyhow::{bail, Context, Result};

/// The egress interface for `addr`, as the kernel's routing answers it
/// (`RTM_GETROUTE`, what `ip route get` asks): policy routing and VRFs count.
pub fn egress_interface(addr: IpAddr) -> Result<String> {
    let mut r = lookup::egress_indexes(&[addr]).context("asking the kernel for a route")?;
    match r.remove(&addr) {
        Some(Ok(idx)) => ifname(idx),
        Some(Err(errno)) => bail!(
            "no route to backend {addr}: {}",
            std::io::Error::from_raw_os_error(errno)
        ),
        None => bail!("no route to backend {addr}: the kernel did not answer"),
    }
}

/// The egress interface of each address, over one netlink socket: after a
/// routing change every backend is looked up again. An address without a
/// route is missing from the answer.
pub fn egress_interfaces(addrs: &[IpAddr]) -> Result<HashMap<IpAddr, String>> {
    let found = lookup::egress_indexes(addrs).context("asking the kernel for routes")?;
    let mut names: HashMap<u32, String> = HashMap::new();
    let mut out = HashMap::with_capacity(found.len());
    for (addr, outcome) in found {
        let Ok(idx) = outcome else { continue };
        let name = match names.get(&idx) {
            Some(n) => n.clone(),
            // Gone since the answer: the notification of its removal brings
            // another lookup.
            None => match ifname(idx) {
                Ok(n) => {
                    names.insert(idx, n.clone());
                    n
                }
                Err(_) => continue,
            },
        };
        out.insert(addr, name);
    }
    Ok(out)
}

/// The egress interface of every address, over one netlink socket; an error
/// names the first address without a route.
pub fn every_egress_interface(addrs: &[IpAddr]) -> Result<HashMap<IpAddr, String>> {
    let found = lookup::egress_indexes(addrs).context("asking the kernel for routes")?;
    let mut out = HashMap::with_capacity(addrs.len());
    for addr in addrs {
        match found.get(addr) {
            Some(Ok(idx)) => out.insert(*addr, ifname(*idx)?),
            Some(Err(errno)) => bail!(
                "no route to backend {addr}: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            None => bail!("no route to backend {addr}: the kernel did not answer"),
        };
    }
    Ok(out)
}

/// The name of the interface with index `idx`.
pub fn ifname(idx: u32) -> Result<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes, NUL-terminated.
    let p = unsafe { libc::if_indextoname(idx, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        bail!("no interface with index {idx}");
    }
    let end = memchr::memchr(0, &buf).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
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
    fn the_host_has_its_loopback_address_and_a_route_to_it() {
        let local = super::local_addresses().unwrap();
        assert!(local.contains(&"127.0.0.1".parse().unwrap()), "{local:?}");
        let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let r = super::egress_interfaces(&[lo]).unwrap();
        assert_eq!(r.get(&lo).map(String::as_str), Some("lo"));
        assert_eq!(super::egress_interface(lo).unwrap(), "lo");
        // IPv6 too, where the host has it.
        let lo6: std::net::IpAddr = "::1".parse().unwrap();
        if local.contains(&lo6) {
            assert_eq!(super::egress_interface(lo6).unwrap(), "lo");
        }
    }

    #[test]
    fn loopback_is_not_a_veth() {
        assert!(!super::is_veth("lo"));
        assert_eq!(super::driver("no-such-if0"), None);
    }
}
