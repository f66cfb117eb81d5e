//! Runs the balancer daemon in the bed's balancer namespace and stops it on drop.
//!
//! `nsenter --net` rather than `ip netns exec`: the latter also gives the process
//! a private mount namespace with a fresh /sys, where bpffs pins would vanish with
//! the process and hitless restarts could not be tested.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The balancer binary: `BALANCER_BIN` if set; else `CARGO_BIN_EXE_balancer`,
/// which cargo sets when it runs an integration test or a bench (`cargo test`,
/// `cargo bench`), naming the binary it built for that very run; else the
/// `balancer` in the profile directory of the running executable, which is
/// where cargo puts it beside the test and bench executables (`deps/`) and
/// examples (`examples/`): that covers a test binary run by itself (the VMs of
/// `cargo xtask kernels`) and the lab example (`cargo xtask lab` builds the
/// binary first). This crate cannot use `env!("CARGO_BIN_EXE_balancer")`: cargo
/// only sets it when compiling the balancer package's own tests.
pub fn balancer_bin() -> PathBuf {
    let bin = std::env::var_os("BALANCER_BIN")
        .or_else(|| std::env::var_os("CARGO_BIN_EXE_balancer"))
        .map(PathBuf::from)
        .unwrap_or_else(beside_this_executable);
    assert!(
        bin.is_file(),
        "no balancer binary at {} (build it with `cargo build -p balancer`, or set BALANCER_BIN)",
        bin.display()
    );
    bin
}

/// `target/<profile>/balancer` for an executable in `target/<profile>/deps/`
/// or `target/<profile>/examples/` (or in `target/<profile>/` itself).
fn beside_this_executable() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("the executable's directory");
    if matches!(
        dir.file_name().and_then(|n| n.to_str()),
        Some("deps" | "examples")
    ) {
        dir = dir.parent().expect("the profile directory");
    }
    dir.join("balancer")
}

pub struct Daemon {
    child: Option<Child>,
    pub lines: mpsc::Receiver<String>,
}

impl Daemon {
    /// Starts `balancer <args>` inside `netns` and waits for its `ready` line.
    pub fn start(netns: &str, args: &[String]) -> Daemon {
        let mut cmd = in_netns(netns);
        cmd.args(args);
        Daemon::start_cmd(cmd, None)
    }

    /// [`Daemon::start`] with each line of the daemon's log (its stderr)
    /// written as `LABEL: line`, for beds with several daemons.
    pub fn start_labelled(netns: &str, args: &[String], label: &str) -> Daemon {
        let mut cmd = in_netns(netns);
        cmd.args(args);
        Daemon::start_cmd(cmd, Some(label.to_string()))
    }

    /// Starts `cmd` (a balancer daemon command) and waits for its `ready`
    /// line; with a `label`, its log lines are written as `LABEL: line`.
    pub fn start_cmd(mut cmd: Command, label: Option<String>) -> Daemon {
        cmd.stdout(Stdio::piped());
        if label.is_some() {
            cmd.stderr(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("spawn balancer");
        if let (Some(label), Some(err)) = (label, child.stderr.take()) {
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("{label}: {l}");
                }
            });
        }
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

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
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

    /// SIGTERM, then waits (a minute at most); returns whether it exited 0
    /// and the lines it printed since `ready`.
    pub fn terminate(mut self) -> (bool, Vec<String>) {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let t0 = std::time::Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("balancer did not exit within a minute of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (status.success(), self.lines.iter().collect())
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
