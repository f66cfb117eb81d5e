//! Runs the balancer daemon in the bed's balancer namespace and stops it on drop.
//!
//! `nsenter --net` rather than `ip netns exec`: the latter also gives the process
//! a private mount namespace with a fresh /sys, where bpffs pins would vanish with
//! the process and hitless restarts could not be tested.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// `BALANCER_BIN`, else the binary cargo built for these tests, else the one next
/// to the running example (`target/<profile>/examples/..`).
pub fn balancer_bin() -> String {
    if let Ok(b) = std::env::var("BALANCER_BIN") {
        return b;
    }
    if let Some(b) = option_env!("CARGO_BIN_EXE_balancer") {
        return b.to_string();
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("balancer").display().to_string())
        .expect("target dir")
}

pub struct Daemon {
    child: Option<Child>,
    pub lines: mpsc::Receiver<String>,
}

impl Daemon {
    /// Starts `balancer <args>` inside `netns` and waits for its `ready` line.
    pub fn start(netns: &str, args: &[String]) -> Daemon {
        let mut child = in_netns(netns)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn balancer");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut d = Daemon {
            child: Some(child),
            lines: rx,
        };
        loop {
            match d.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l.starts_with("ready") => break,
                Ok(_) => {}
                Err(_) => {
                    d.kill();
                    panic!("balancer did not print `ready`");
                }
            }
        }
        d
    }

    /// SIGKILL: a crash, as far as the daemon can tell.
    pub fn crash(mut self) {
        self.kill();
    }

    /// SIGTERM, then waits; returns whether it said `detached` and exited 0.
    pub fn stop(mut self) -> bool {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let ok = child.wait().map(|s| s.success()).unwrap_or(false);
        let said = self.lines.iter().any(|l| l == "detached");
        ok && said
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `balancer` inside `netns` (network namespace only).
pub fn in_netns(netns: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{netns}"))
        .arg("--")
        .arg(balancer_bin());
    c
}

/// Runs a CLI command against an instance; returns (success, stdout, stderr).
pub fn cli(instance: &str, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(balancer_bin())
        .arg("--instance")
        .arg(instance)
        .args(args)
        .output()
        .expect("run balancer");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Like [`cli`], but the command must succeed; returns stdout.
pub fn cli_ok(instance: &str, args: &[&str]) -> String {
    let (ok, out, err) = cli(instance, args);
    assert!(ok, "balancer {args:?} failed: {err}");
    out
}
