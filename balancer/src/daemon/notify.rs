//! systemd's service notifications (`sd_notify`): readiness, reloads, the
//! watchdog, stopping. Datagrams to `$NOTIFY_SOCKET`, which systemd sets for
//! a `Type=notify` unit; without it (not under systemd) nothing is sent.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends `state` (e.g. `READY=1`); whether it went.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let path = path.to_string_lossy().into_owned();
    // `@name` is an abstract socket (systemd's own is a path).
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let Ok(addr) = addr else { return false };
    let Ok(sock) = UnixDatagram::unbound() else {
        return false;
    };
    sock.send_to_addr(state.as_bytes(), &addr).is_ok()
}

/// How often to pet the watchdog: half of `WatchdogSec=` (`$WATCHDOG_USEC`),
/// when it is meant for this process (`$WATCHDOG_PID`, if set).
pub fn watchdog() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
