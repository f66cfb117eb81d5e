//! Real SIP peers for the bed: `sipp` (Debian's sip-tester) as backends (UAS,
//! scenario `sipp/uas.xml`, which also answers the balancer's OPTIONS) and
//! as callers (UAC: the built-in `uac` scenario, INVITE 100 180 200 ACK pause BYE
//! 200, or `uac_big.xml`). Backends log every message (`-trace_msg`), which the
//! tests read back per Call-ID; callers report their totals (`-trace_stat`) and
//! every failed call with its Call-ID (`-trace_calldebug`).
//!
//! Call-IDs are `TAG-N@HOST` for call number N = 1, 2, ... (`-cid_str`), so a
//! test knows every Call-ID before the calls start and can predict, with the
//! balancer's own code, which backend each one goes to.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A scenario file of `sipp/` beside this crate (an absolute path, fixed when
/// the crate is compiled, so it holds for tests, benches and the lab alike).
pub fn scenario(name: &str) -> String {
    format!("{}/sipp/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A directory for one test's sipp logs, removed on drop unless the test failed
/// (then it is kept and its path printed, for the post-mortem).
pub struct Logs {
    pub dir: PathBuf,
}

impl Logs {
    pub fn new(tag: &str) -> Logs {
        let dir = PathBuf::from(format!("/tmp/balancer-sipp-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Logs { dir }
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("sipp logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One message as a sipp backend logged it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub received: bool,
    pub bytes: usize,
    /// The request method or `SIP/2.0 NNN`.
    pub first: String,
    pub call_id: String,
    pub text: String,
}

impl Logged {
    pub fn method(&self) -> &str {
        self.first.split(' ').next().unwrap_or("")
    }
}

/// Reads a `-trace_msg` log: blocks that start with a line of dashes and the
/// time, then `UDP message received [N] bytes :` or `UDP message sent (N bytes):`.
pub fn read_message_log(path: &str) -> Vec<Logged> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    for block in text.split("\n----------------------------------------------- ") {
        let mut lines = block.splitn(3, '\n');
        let (_time, what, rest) = match (lines.next(), lines.next(), lines.next()) {
            (Some(t), Some(w), Some(r)) => (t, w, r),
            _ => continue,
        };
        let received = what.starts_with("UDP message received");
        if !received && !what.starts_with("UDP message sent") {
            continue;
        }
        let digits: String = what
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let msg = rest.trim_start_matches(['\r', '\n']);
        let first = msg.lines().next().unwrap_or("").trim().to_string();
        let call_id = msg
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                let name = name.trim();
                (name.eq_ignore_ascii_case("call-id") || name == "i")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        out.push(Logged {
            received,
            bytes: digits.parse().unwrap_or(0),
            first,
            call_id,
            text: msg.to_string(),
        });
    }
    out
}

/// A sipp process in a network namespace, stopped on drop.
pub struct Sipp {
    child: Option<Child>,
    pub name: String,
    pub log: String,
    stat: String,
    calldebug: String,
}

/// What a caller reports when it is done.
#[derive(Debug, Default)]
pub struct Outcome {
    pub exit: i32,
    pub successful: u64,
    pub failed: u64,
    pub failed_ids: HashSet<String>,
}

/// How a caller places its calls.
pub struct Calls<'a> {
    /// Call-IDs are `TAG-N@HOST`.
    pub tag: &'a str,
    pub calls: usize,
    /// New calls per second.
    pub rate: u32,
    /// Between ACK and BYE.
    pub pause_ms: u32,
    /// `None`: sipp's built-in `uac`.
    pub scenario: Option<&'a str>,
}

impl<'a> Calls<'a> {
    /// `calls` calls, `rate` new ones per second, each up for `pause_ms`,
    /// with sipp's built-in `uac` scenario.
    pub fn new(tag: &'a str, calls: usize, rate: u32, pause_ms: u32) -> Calls<'a> {
        Calls {
            tag,
            calls,
            rate,
            pause_ms,
            scenario: None,
        }
    }
}

impl Sipp {
    fn spawn(ns: &str, name: &str, logs: &Logs, args: &[String]) -> Sipp {
        let log = logs.file(&format!("{name}.msg"));
        let stat = logs.file(&format!("{name}.csv"));
        let calldebug = logs.file(&format!("{name}.calldebug"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "sipp"])
            .args(args)
            .args(["-nostdin", "-trace_msg", "-message_file", &log])
            .args(["-trace_stat", "-stf", &stat, "-fd", "1"])
            .args(["-trace_calldebug", "-calldebug_file", &calldebug])
            .args([
                "-trace_err",
                "-error_file",
                &logs.file(&format!("{name}.err")),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp (Debian package sip-tester; cargo xtask setup installs it)");
        Sipp {
            child: Some(child),
            name: name.to_string(),
            log,
            stat,
            calldebug,
        }
    }

    /// A backend on `ip:5060` answering calls and OPTIONS. `-nd`: a request
    /// that belongs to no call it knows (a misrouted BYE) gets no answer, where
    /// sipp would by default answer a BYE with 200 and hide the misrouting.
    pub fn uas(ns: &str, name: &str, ip: &str, logs: &Logs) -> Sipp {
        let args: Vec<String> = ["-sf", &scenario("uas.xml"), "-nd", "-i", ip, "-p", "5060"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let s = Sipp::spawn(ns, name, logs, &args);
        wait_for_port(ns, 5060);
        s
    }

    /// A caller from `ip:port` to `target` (`IP:PORT` or `[IPv6]:PORT`). `-aa`
    /// answers OPTIONS that are not part of a call, so a caller on a backend's
    /// SIP port passes the balancer's health checks.
    pub fn uac(
        ns: &str,
        name: &str,
        ip: &str,
        port: u16,
        target: &str,
        c: &Calls,
        logs: &Logs,
    ) -> Sipp {
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        let mut args: Vec<String> = Vec::new();
        match c.scenario {
            Some(s) => args.extend(["-sf".to_string(), scenario(s)]),
            None => args.extend(["-sn".to_string(), "uac".to_string()]),
        }
        let concurrent = (c.calls + 10).to_string();
        args.extend(
            [
                target,
                "-i",
                ip,
                "-p",
                &port.to_string(),
                "-aa",
                "-m",
                &c.calls.to_string(),
                "-r",
                &c.rate.to_string(),
                "-l",
                &concurrent,
                "-d",
                &c.pause_ms.to_string(),
                "-cid_str",
                &format!("{}-%u@{host}", c.tag),
                // A request nobody answers fails the call after 4 s (RFC
                // timers would wait 32 s).
                "-recv_timeout",
                "4000",
                "-timeout",
                "120s",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        Sipp::spawn(ns, name, logs, &args)
    }

    /// The Call-IDs a caller with this tag uses, in order.
    pub fn call_ids(tag: &str, host: &str, calls: usize) -> Vec<String> {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        (1..=calls).map(|n| format!("{tag}-{n}@{host}")).collect()
    }

    /// Waits for a caller to finish its calls (at most `limit`).
    pub fn wait(mut self, limit: Duration) -> Outcome {
        let mut child = self.child.take().unwrap();
        let end = Instant::now() + limit;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sipp {} still running after {limit:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut o = Outcome {
            exit: status.code().unwrap_or(-1),
            ..Outcome::default()
        };
        let (succ, fail) = last_stat(&self.stat);
        o.successful = succ;
        o.failed = fail;
        o.failed_ids = failed_call_ids(&self.calldebug);
        o
    }

    /// Current totals of a running sipp (written every second): created, current,
    /// successful and failed calls.
    pub fn progress(&self) -> Option<[u64; 4]> {
        stat_fields(
            &self.stat,
            &[
                "TotalCallCreated",
                "CurrentCall",
                "SuccessfulCall(C)",
                "FailedCall(C)",
            ],
        )
        .map(|v| [v[0], v[1], v[2], v[3]])
    }

    /// Stops a backend and returns what it logged. SIGUSR1 asks sipp to stop
    /// once its calls are over, a second one to abort them (misrouted requests
    /// leave calls that never end); either way it exits through its normal path,
    /// which flushes the logs.
    pub fn stop(mut self) -> Vec<Logged> {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGUSR1) };
            std::thread::sleep(Duration::from_millis(200));
            unsafe { libc::kill(c.id() as i32, libc::SIGUSR1) };
            let end = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        read_message_log(&self.log)
    }

    /// SIGKILL: the backend dies.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for_port(ns: &str, port: u16) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "ss",
                "-Hlun",
                &format!("sport = :{port}"),
            ])
            .output()
            .unwrap();
        if !o.stdout.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("sipp did not open port {port} in {ns}");
}

fn stat_fields(path: &str, names: &[&str]) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next()?.split(';').collect();
    let last: Vec<&str> = lines.next_back()?.split(';').collect();
    names
        .iter()
        .map(|n| {
            let i = header.iter().position(|h| h == n)?;
            last.get(i)?.trim().parse().ok()
        })
        .collect()
}

fn last_stat(path: &str) -> (u64, u64) {
    stat_fields(path, &["SuccessfulCall(C)", "FailedCall(C)"])
        .map(|v| (v[0], v[1]))
        .unwrap_or((0, 0))
}

fn failed_call_ids(path: &str) -> HashSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("Call debugging information for call "))
        .map(|s| s.trim_end_matches(':').to_string())
        .collect()
}

/// Per backend, the received requests of the dialogs with Call-IDs in `ids`:
/// Call-ID -> methods in arrival order.
pub fn dialogs(log: &[Logged], ids: &HashSet<String>) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for m in log
        .iter()
        .filter(|m| m.received && ids.contains(&m.call_id))
    {
        out.entry(m.call_id.clone())
            .or_default()
            .push(m.method().to_string());
    }
    out
}

/// A complete dialog as a backend sees it: the INVITE (retransmissions
/// allowed), the ACK, the BYE.
pub fn complete(methods: &[String]) -> bool {
    methods.iter().any(|m| m == "INVITE")
        && methods.iter().any(|m| m == "ACK")
        && methods.iter().any(|m| m == "BYE")
}
