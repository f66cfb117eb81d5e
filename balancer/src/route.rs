//! Which interface leads to an address, per the kernel's routing table.

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
    fn loopback_is_not_a_veth() {
        assert!(!super::is_veth("lo"));
        assert_eq!(super::driver("no-such-if0"), None);
    }
}
