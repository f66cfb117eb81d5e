//! The systemd unit and the daemon's side of it: `systemd-analyze verify`
//! finds nothing to say about dist/balancer@.service; under `Type=notify`
//! the daemon says READY once it serves, pets the watchdog at half its
//! period, says RELOADING/READY around a SIGHUP, and STOPPING on its way out;
//! `detach` exits 0, which `Restart=on-failure` does not restart.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use balancer_test_support::bed::{self, Bed};
use balancer_test_support::daemon::{balancer_bin, cli_ok, Daemon};
use balancer_test_support::netns::require_root;
use balancer_test_support::peers::Uas;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/balancer@.service");

#[test]
fn the_unit_verifies_clean() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=",
    ] {
        assert!(unit.contains(line), "the unit lacks {line}");
    }
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if analyze.is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI needs systemd-analyze");
        eprintln!("skipped: no systemd-analyze");
        return;
    }
    // systemd-analyze wants the binary the unit names to exist: this build's.
    let dir = std::env::temp_dir().join(format!("balancer-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = balancer_bin();
    let text = unit.replace("/usr/local/bin/balancer", bin.to_str().unwrap());
    let path = dir.join("balancer@edge.service");
    std::fs::write(&path, text).unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.trim().is_empty(), "{err}");
}

/// Messages on the test's notify socket within `limit`.
fn messages(
    sock: &UnixDatagram,
    limit: Duration,
    until: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < end && !until(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

#[test]
fn the_daemon_notifies_systemd() {
    require_root();
    let bed = Bed::new("sdn", 1);
    let inst = "test-notify";
    let _uas = Uas::start(&bed.backend_ns(0), &format!("{}:5060", bed::backend_ip(0)));
    let dir = std::env::temp_dir().join(format!("balancer-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    // Inherited by the daemon (this file's only test that starts one).
    std::env::set_var("NOTIFY_SOCKET", &path);
    std::env::set_var("WATCHDOG_USEC", "400000");
    let args = Bed::attach_args("dnat", inst, &[format!("{}:5060", bed::backend_ip(0))]);
    let d = Daemon::start(&bed.ns("lb"), &args);
    std::env::remove_var("NOTIFY_SOCKET");
    std::env::remove_var("WATCHDOG_USEC");

    let got = messages(&sock, Duration::from_secs(2), |g| {
        g.iter().filter(|m| m.as_str() == "WATCHDOG=1").count() >= 3
    });
    assert!(got[0].starts_with("READY=1"), "{got:?}");
    let pets = got.iter().filter(|m| m.as_str() == "WATCHDOG=1").count();
    assert!(
        pets >= 3,
        "the watchdog was petted {pets} times in 2 s at 200 ms: {got:?}"
    );

    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    let got = messages(&sock, Duration::from_secs(3), |g| {
        g.iter().any(|m| m.starts_with("READY=1"))
    });
    let reloading = got.iter().position(|m| m == "RELOADING=1");
    let ready = got.iter().position(|m| m.starts_with("READY=1"));
    assert!(
        matches!((reloading, ready), (Some(a), Some(b)) if a < b),
        "{got:?}"
    );

    // `detach` ends it with exit status 0 (not a failure to restart).
    cli_ok(inst, &["detach"]);
    let got = messages(&sock, Duration::from_secs(5), |g| {
        g.iter().any(|m| m == "STOPPING=1")
    });
    assert!(got.iter().any(|m| m == "STOPPING=1"), "{got:?}");
    assert!(d.stop(), "the daemon did not exit 0 after detach");
    let _ = std::fs::remove_dir_all(&dir);
}
