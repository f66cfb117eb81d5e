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
}
