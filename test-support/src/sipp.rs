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

    /// The method of the CSeq header (`INVITE` in `CSeq: 1 INVITE`).
    pub fn cseq_method(&self) -> Option<&str> {
        header(&self.text, &["CSeq"]).and_then(|v| v.split_whitespace().nth(1))
    }
}

/// The value of the first header of the message's head named one of `names`.
fn header<'a>(msg: &'a str, names: &[&str]) -> Option<&'a str> {
    msg.lines()
        .take_while(|l| !l.trim().is_empty())
        .find_map(|l| {
            let (n, value) = l.split_once(':')?;
            let n = n.trim();
            names
                .iter()
                .any(|want| n.eq_ignore_ascii_case(want))
                .then(|| value.trim())
        })
}

/// The line that opens each block of a `-trace_msg` log, before the time.
const SEPARATOR: &str = "----------------------------------------------- ";

/// Reads a `-trace_msg` log: blocks that start with a line of dashes and the
/// time, then `UDP message received [N] bytes :` or `UDP message sent (N
/// bytes):`, then the message. A missing file or a block that is not that
/// fails the test, naming the file: skipping what does not parse would show
/// a test fewer messages than there were, and a check of where they went
/// could pass on nothing.
pub fn read_message_log(path: &str) -> Vec<Logged> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("sipp message log {path}: {e}"));
    parse_message_log(&text).unwrap_or_else(|e| panic!("sipp message log {path}: {e}"))
}

fn parse_message_log(text: &str) -> Result<Vec<Logged>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let body = text
        .strip_prefix(SEPARATOR)
        .ok_or_else(|| format!("does not start with a separator line: {:?}", opening(text)))?;
    body.split(&format!("\n{SEPARATOR}"))
        .enumerate()
        .map(|(i, block)| {
            parse_block(block).map_err(|e| format!("message {}: {e}: {:?}", i + 1, opening(block)))
        })
        .collect()
}

fn parse_block(block: &str) -> Result<Logged, String> {
    let mut lines = block.splitn(3, '\n');
    let (Some(time), Some(what), Some(rest)) = (lines.next(), lines.next(), lines.next()) else {
        return Err("fewer than three lines".into());
    };
    if !time.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("no time after the separator: {time:?}"));
    }
    let (received, bytes) = if let Some(r) = what.strip_prefix("UDP message received [") {
        (true, r.strip_suffix("] bytes :"))
    } else if let Some(r) = what.strip_prefix("UDP message sent (") {
        (false, r.strip_suffix(" bytes):"))
    } else {
        return Err(format!(
            "neither a received nor a sent UDP message: {what:?}"
        ));
    };
    let bytes = bytes
        .and_then(|b| b.parse().ok())
        .ok_or_else(|| format!("no byte count in {what:?}"))?;
    let msg = rest.trim_start_matches(['\r', '\n']);
    let first = msg.lines().next().unwrap_or("").trim().to_string();
    if first.is_empty() {
        return Err("an empty message".into());
    }
    let call_id = header(msg, &["Call-ID", "i"])
        .filter(|v| !v.is_empty())
        .ok_or("no Call-ID")?
        .to_string();
    Ok(Logged {
        received,
        bytes,
        first,
        call_id,
        text: msg.to_string(),
    })
}

/// The first line or so of `text`, for error messages.
fn opening(text: &str) -> &str {
    let end = text
        .char_indices()
        .map(|(i, _)| i)
        .nth(120)
        .unwrap_or(text.len());
    &text[..end]
}

/// A sipp process in a network namespace, stopped on drop.
pub struct Sipp {
    child: Option<Child>,
    pub name: String,
    pub log: String,
    stat: String,
    calldebug: String,
    /// A caller's Call-ID tag: its own calls are `TAG-N@HOST`.
    tag: Option<String>,
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
            // Socket buffers of 4 MiB (as far as net.core.rmem_max allows): a
            // sipp without CPU for a moment (the bed shares two cores) finds
            // what arrived meanwhile instead of the kernel dropping it.
            .args(["-buff_size", "4194304"])
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
            tag: None,
        }
    }

    /// A backend on `ip:5060` answering calls and OPTIONS. `-nd`: a request
    /// that belongs to no call it knows (a misrouted BYE) gets no answer, where
    /// sipp would by default answer a BYE with 200 and hide the misrouting.
    pub fn uas(ns: &str, name: &str, ip: &str, logs: &Logs) -> Sipp {
        Sipp::uas_scenario(ns, name, ip, "uas.xml", logs)
    }

    /// [`Sipp::uas`] with another scenario of `sipp/` (`phone.xml`).
    pub fn uas_scenario(ns: &str, name: &str, ip: &str, file: &str, logs: &Logs) -> Sipp {
        let args: Vec<String> = ["-sf", &scenario(file), "-nd", "-i", ip, "-p", "5060"]
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
        Sipp::uac_with(ns, name, ip, port, target, c, logs, &[])
    }

    /// A caller that opens a UDP socket of its own for each call (`-t un`):
    /// every call leaves from another source port, so a router hashing on
    /// ports (ECMP with L4 hashing) spreads the calls of this one caller over
    /// its paths, while all messages of one call keep one path. `port` is the
    /// caller's main socket (answers to OPTIONS).
    pub fn uac_per_call_ports(
        ns: &str,
        name: &str,
        ip: &str,
        port: u16,
        target: &str,
        c: &Calls,
        logs: &Logs,
    ) -> Sipp {
        let extra = ["-t", "un", "-max_socket", "4096"].map(String::from);
        Sipp::uac_with(ns, name, ip, port, target, c, logs, &extra)
    }

    /// [`Sipp::uac`] with more sipp arguments.
    #[allow(clippy::too_many_arguments)]
    pub fn uac_with(
        ns: &str,
        name: &str,
        ip: &str,
        port: u16,
        target: &str,
        c: &Calls,
        logs: &Logs,
        extra: &[String],
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
        args.extend(extra.iter().cloned());
        let mut s = Sipp::spawn(ns, name, logs, &args);
        s.tag = Some(c.tag.to_string());
        s
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
        let v = stat_fields(&self.stat, &["SuccessfulCall(C)", "FailedCall(C)"])
            .unwrap_or_else(|e| panic!("sipp {}: statistics {}: {e}", self.name, self.stat));
        (o.successful, o.failed) = (v[0], v[1]);
        let text = std::fs::read_to_string(&self.calldebug).unwrap_or_else(|e| {
            panic!(
                "sipp {}: call-debug file {}: {e}",
                self.name, self.calldebug
            )
        });
        o.failed_ids = failed_call_ids(&text).unwrap_or_else(|e| {
            panic!(
                "sipp {}: call-debug file {}: {e}",
                self.name, self.calldebug
            )
        });
        // A caller on a backend's SIP port also answers the balancer's
        // OPTIONS (`-aa`), and once calls fail sipp lists those exchanges in
        // the file too: only the caller's own Call-IDs are its calls.
        if let Some(tag) = &self.tag {
            let own = format!("{tag}-");
            o.failed_ids.retain(|id| id.starts_with(&own));
        }
        // The file names each failed call once: fewer names than failures
        // means it was not read right, and "which calls failed" would be
        // answered with fewer than there were.
        assert_eq!(
            o.failed_ids.len() as u64,
            o.failed,
            "sipp {}: {} failed calls in its statistics, {} named in its call-debug file {}",
            self.name,
            o.failed,
            o.failed_ids.len(),
            self.calldebug
        );
        o
    }

    /// Current totals of a running sipp (written every second): created, current,
    /// successful and failed calls.
    pub fn progress(&self) -> Option<[u64; 4]> {
        // None until sipp has written its first line.
        stat_fields(
            &self.stat,
            &[
                "TotalCallCreated",
                "CurrentCall",
                "SuccessfulCall(C)",
                "FailedCall(C)",
            ],
        )
        .ok()
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

/// The named columns of the last line of a `-trace_stat` file (`;`-separated,
/// a header line first).
fn stat_fields(path: &str, names: &[&str]) -> Result<Vec<u64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().ok_or("empty")?.split(';').collect();
    let last: Vec<&str> = lines
        .next_back()
        .ok_or("no line after the header")?
        .split(';')
        .collect();
    names
        .iter()
        .map(|n| {
            let i = header
                .iter()
                .position(|h| h == n)
                .ok_or_else(|| format!("no column {n}"))?;
            let v = last.get(i).ok_or_else(|| format!("no value for {n}"))?;
            v.trim().parse().map_err(|_| format!("{n} is {v:?}"))
        })
        .collect()
}

const CALLDEBUG_HEAD: &str = "Call debugging information for call ";

/// The Call-IDs a `-trace_calldebug` file names: one entry per failed call, a
/// line of dashes, then `Call debugging information for call ID:`, then the
/// call's history. An entry of another shape is an error, not a call that did
/// not fail.
fn failed_call_ids(text: &str) -> Result<HashSet<String>, String> {
    let is_rule = |l: &str| l.len() >= 40 && l.bytes().all(|b| b == b'-');
    let mut ids = HashSet::new();
    let mut lines = text.lines();
    let mut entries = 0;
    while let Some(l) = lines.next() {
        if is_rule(l) {
            let next = lines.next().unwrap_or("");
            let id = next
                .strip_prefix(CALLDEBUG_HEAD)
                .and_then(|s| s.strip_suffix(':'))
                .filter(|id| !id.is_empty())
                .ok_or_else(|| format!("a rule followed by {next:?}, not `{CALLDEBUG_HEAD}ID:`"))?;
            ids.insert(id.to_string());
            entries += 1;
        } else if l.starts_with(CALLDEBUG_HEAD) {
            return Err(format!("{l:?} without the rule before it"));
        }
    }
    if entries == 0 && !text.trim().is_empty() {
        return Err(format!("no entry in {:?}", opening(text)));
    }
    Ok(ids)
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

/// Over several backends' logs: Call-ID (of `ids`) -> the backends (index
/// into `logs`) that received a request of it.
pub fn where_seen(logs: &[Vec<Logged>], ids: &HashSet<String>) -> HashMap<String, Vec<usize>> {
    let mut out: HashMap<String, Vec<usize>> = HashMap::new();
    for (b, log) in logs.iter().enumerate() {
        for id in dialogs(log, ids).into_keys() {
            out.entry(id).or_default().push(b);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two blocks as sipp 3.6 writes them with `-trace_msg`.
    const LOG: &str =
        "----------------------------------------------- 2026-11-30 04:40:57.049547\n\
UDP message received [497] bytes :\n\n\
INVITE sip:service@127.0.0.1:5060 SIP/2.0\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-18985-1-0\n\
Call-ID: t-1@h\n\
CSeq: 1 INVITE\n\
Content-Length: 0\n\n\n\
----------------------------------------------- 2026-11-30 04:40:57.049673\n\
UDP message sent (231 bytes):\n\n\
SIP/2.0 100 Trying\n\
i: t-1@h\n\
CSeq: 1 INVITE\n\
Content-Length: 0\n\n\n";

    #[test]
    fn a_message_log_is_read_block_by_block() {
        let m = parse_message_log(LOG).unwrap();
        assert_eq!(m.len(), 2);
        assert!(m[0].received && m[0].bytes == 497 && m[0].method() == "INVITE");
        assert!(!m[1].received && m[1].bytes == 231 && m[1].first == "SIP/2.0 100 Trying");
        assert!(m.iter().all(|m| m.call_id == "t-1@h"));
        assert_eq!(m[1].cseq_method(), Some("INVITE"));
        assert!(parse_message_log("").unwrap().is_empty());
    }

    #[test]
    fn a_message_log_of_another_shape_is_an_error() {
        for bad in [
            LOG.replace("UDP message sent (231 bytes):", "UDP msg sent 231:"),
            LOG.replace("[497] bytes :", "[497 bytes]:"),
            LOG.replace("i: t-1@h\n", ""),
            format!("sipp v3.7\n{LOG}"),
        ] {
            assert!(parse_message_log(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_call_debug_file_names_each_failed_call() {
        let entry = |id: &str| {
            format!(
                "{}\n{CALLDEBUG_HEAD}{id}:\n2026-11-30\t04:40:57.463357\t1796013657.463357 Starting call {id}\n\n",
                "-".repeat(79)
            )
        };
        let text = entry("f-1@h") + &entry("f-2@h");
        let ids = failed_call_ids(&text).unwrap();
        assert_eq!(
            ids,
            HashSet::from(["f-1@h".to_string(), "f-2@h".to_string()])
        );
        assert!(failed_call_ids("").unwrap().is_empty());
        for bad in [
            text.replace(CALLDEBUG_HEAD, "Debugging call "),
            text.replace(&"-".repeat(79), ""),
            "something else\n".to_string(),
        ] {
            assert!(failed_call_ids(&bad).is_err(), "{bad}");
        }
    }
}
