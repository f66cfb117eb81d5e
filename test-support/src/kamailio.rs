//! A real SIP server as a backend of the netns bed: Debian's `kamailio` (5.6),
//! run in the foreground inside a backend's namespace, stateless only (`sl`), no
//! database, no DNS. It answers every INVITE with a 200 carrying the same
//! Call-ID, CANCEL (and BYE) with 200, ignores ACK, and answers OPTIONS as its
//! [`Behaviour`] says. Every request is logged (xlog to stderr) and counted by a
//! reader thread, so a test can ask which Call-IDs reached it.
//!
//! Pitfalls this module takes care of:
//! - kamailio forks its workers; SIGKILL to the main process alone leaves them
//!   running and still answering on the socket. The server therefore runs in a
//!   process group of its own and [`Kamailio::stop`] kills the whole group.
//! - the readiness probe is an OPTIONS to `sip:kamailio-ready@...`, answered at
//!   once with 200 and neither logged nor counted, so it does not advance the
//!   [`Behaviour::Flap`] counter nor wait out [`Behaviour::Slow`].
//! - replies go to the source IP and port only if the top Via carries `rport`;
//!   without it kamailio answers the Via port (5060 when there is none), so a
//!   probe from an ephemeral port hears nothing. Probes should put `;rport` in Via.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the server answers OPTIONS. INVITE, CANCEL, BYE and ACK are handled the
/// same way in every mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 OK.
    Normal,
    /// This status code (with a fitting reason phrase).
    Reply(u16),
    /// 200 OK after this delay (the worker sleeps: with 4 workers, a fifth
    /// concurrent request waits for one of them to wake).
    Slow(Duration),
    /// 200 OK to the 1st, 3rd, 5th... OPTIONS since (re)start, nothing to the
    /// others (a shared counter in shared memory, under a lock).
    Flap,
}

/// The UDP workers kamailio forks (`children=`).
pub const WORKERS: u32 = 4;

/// What the reader thread found in kamailio's stderr (across restarts).
#[derive(Default)]
struct Log {
    /// Every line, for panic messages.
    lines: Vec<String>,
    /// INVITE Call-ID -> how many INVITEs carried it.
    invites: HashMap<String, u32>,
    options: u32,
    cancels: u32,
    acks: u32,
    byes: u32,
}

const MARK: &str = "KTEST ";

pub struct Kamailio {
    netns: String,
    listen: SocketAddr,
    dir: String,
    cfg: String,
    child: Option<Child>,
    readers: Vec<JoinHandle<()>>,
    log: Arc<Mutex<Log>>,
    /// How long the last start took until the server answered.
    pub started_in: Duration,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A UDP socket bound to `bind` inside `netns` (a socket stays in the namespace
/// it was made in, whichever thread uses it later).
pub fn udp_socket_in(netns: &str, bind: &str) -> UdpSocket {
    let (ns, bind) = (netns.to_string(), bind.to_string());
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns");
        assert_eq!(
            unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
            0,
            "setns {ns}"
        );
        UdpSocket::bind(&bind).expect("bind")
    })
    .join()
    .unwrap()
}

/// An OPTIONS from `from` (put in Via with `rport`) to `to`, Request-URI user
/// `user`.
pub fn options(user: &str, from: SocketAddr, to: SocketAddr, call_id: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:{user}@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-{call_id};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:probe@{from}>;tag=p1\r\nTo: <sip:{user}@{to}>\r\nCall-ID: {call_id}\r\n\
CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The status code of a SIP response (`SIP/2.0 200 OK` -> 200).
pub fn status_code(msg: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(msg).ok()?;
    s.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

fn reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        480 => "Temporarily Unavailable",
        486 => "Busy Here",
        500 => "Server Internal Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => "Test Reply",
    }
}

/// The configuration file for `listen` and `behaviour`.
pub fn config(listen: SocketAddr, behaviour: &Behaviour) -> String {
    let options = match behaviour {
        Behaviour::Normal => "sl_send_reply(\"200\", \"OK\");".to_string(),
        Behaviour::Reply(c) => {
            assert!((100..700).contains(c), "SIP status code {c}");
            format!("sl_send_reply(\"{c}\", \"{}\");", reason(*c))
        }
        Behaviour::Slow(d) => format!(
            "usleep(\"{}\");\n        sl_send_reply(\"200\", \"OK\");",
            d.as_micros().max(1)
        ),
        Behaviour::Flap => "lock(\"flap\");\n        $var(n) = $shv(n);\n        $shv(n) = $shv(n) + 1;\n        unlock(\"flap\");\n        if ($var(n) mod 2 == 0) {\n            sl_send_reply(\"200\", \"OK\");\n        }"
            .to_string(),
    };
    let SocketAddr::V4(l) = listen else {
        panic!("IPv4 listen address expected, got {listen}")
    };
    format!(
        r#"#!KAMAILIO
# Written by test-support/src/kamailio.rs
debug=0
log_stderror=yes
log_color=no
memdbg=5
memlog=5
children={WORKERS}
dns=no
rev_dns=no
use_dns_cache=no
disable_tcp=yes
disable_sctp=yes
auto_aliases=no
listen=udp:{ip}:{port}
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"

loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "cfgutils.so"

modparam("pv", "shvset", "n=i:0")
modparam("cfgutils", "lock_set_size", 4)

request_route {{
    if ($rU == "kamailio-ready") {{
        sl_send_reply("200", "Ready");
        exit;
    }}
    xlog("L_ALERT", "{MARK}$rm $ci\n");
    if (method == "OPTIONS") {{
        {options}
        exit;
    }}
    if (method == "ACK") {{
        exit;
    }}
    if (method == "INVITE" || method == "CANCEL" || method == "BYE") {{
        sl_send_reply("200", "OK");
        exit;
    }}
    sl_send_reply("405", "Method Not Allowed");
    exit;
}}

reply_route {{
    drop;
}}
"#,
        ip = l.ip(),
        port = l.port()
    )
}

impl Kamailio {
    /// Starts kamailio listening on `listen` (UDP, IPv4) inside `netns` and waits
    /// (at most 10 s) until it answers a probe from inside the namespace.
    pub fn start(netns: &str, listen: SocketAddr, behaviour: Behaviour) -> Kamailio {
        let dir = format!(
            "/tmp/kamailio-test-{netns}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(format!("{dir}/run")).expect("kamailio dir");
        let cfg = format!("{dir}/kamailio.cfg");
        std::fs::write(&cfg, config(listen, &behaviour)).expect("kamailio cfg");
        let mut k = Kamailio {
            netns: netns.to_string(),
            listen,
            dir,
            cfg,
            child: None,
            readers: vec![],
            log: Arc::new(Mutex::new(Log::default())),
            started_in: Duration::ZERO,
        };
        k.spawn();
        k
    }

    /// The command line, as run.
    pub fn command_line(&self) -> String {
        format!(
            "nsenter --net=/run/netns/{} -- kamailio -f {} -DD -E -m 32 -M 4 -Y {}/run -P {}/kamailio.pid",
            self.netns, self.cfg, self.dir, self.dir
        )
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "kamailio already running");
        let t0 = Instant::now();
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args([
                "--", "kamailio", "-f", &self.cfg, "-DD", "-E", "-m", "32", "-M", "4",
            ])
            .arg("-Y")
            .arg(format!("{}/run", self.dir))
            .arg("-P")
            .arg(format!("{}/kamailio.pid", self.dir))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: stop() kills the workers too.
            .process_group(0)
            .spawn()
            .expect("spawn nsenter kamailio");
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let log = self.log.clone();
        self.readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                log.lock().unwrap().lines.push(line);
            }
        }));
        let log = self.log.clone();
        self.readers.push(std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut l = log.lock().unwrap();
                if let Some(rest) = line.split_once(MARK).map(|(_, r)| r.to_string()) {
                    let (method, ci) = rest.split_once(' ').unwrap_or((rest.as_str(), ""));
                    match method {
                        "INVITE" => *l.invites.entry(ci.to_string()).or_insert(0) += 1,
                        "OPTIONS" => l.options += 1,
                        "CANCEL" => l.cancels += 1,
                        "ACK" => l.acks += 1,
                        "BYE" => l.byes += 1,
                        _ => {}
                    }
                }
                l.lines.push(line);
            }
        }));
        self.child = Some(child);
        self.wait_ready(t0);
    }

    fn wait_ready(&mut self, t0: Instant) {
        let sock = udp_socket_in(&self.netns, "0.0.0.0:0");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let from = SocketAddr::new(self.listen.ip(), sock.local_addr().unwrap().port());
        let deadline = t0 + Duration::from_secs(10);
        let mut buf = [0u8; 65536];
        let mut n = 0;
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "kamailio in {} exited ({st}) before answering:\n{}",
                    self.netns,
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                self.stop();
                panic!(
                    "kamailio in {} did not answer within 10 s:\n{}",
                    self.netns,
                    self.log_text()
                );
            }
            let id = format!("kamailio-ready-{n}");
            n += 1;
            let _ = sock.send_to(
                &options("kamailio-ready", from, self.listen, &id),
                self.listen,
            );
            let until = Instant::now() + Duration::from_millis(100);
            while Instant::now() < until {
                if let Ok((len, _)) = sock.recv_from(&mut buf) {
                    let msg = &buf[..len];
                    if status_code(msg) == Some(200)
                        && String::from_utf8_lossy(msg).contains("Call-ID: kamailio-ready-")
                    {
                        self.started_in = t0.elapsed();
                        return;
                    }
                }
            }
        }
    }

    /// Call-IDs of the INVITEs it received, with counts (since [`Kamailio::start`],
    /// across restarts).
    pub fn seen(&self) -> HashMap<String, u32> {
        self.log.lock().unwrap().invites.clone()
    }

    /// How many OPTIONS it received (readiness probes not counted).
    pub fn options_seen(&self) -> u32 {
        self.log.lock().unwrap().options
    }

    pub fn cancels_seen(&self) -> u32 {
        self.log.lock().unwrap().cancels
    }

    pub fn acks_seen(&self) -> u32 {
        self.log.lock().unwrap().acks
    }

    pub fn byes_seen(&self) -> u32 {
        self.log.lock().unwrap().byes
    }

    /// Forgets what was seen so far.
    pub fn clear(&self) {
        let mut l = self.log.lock().unwrap();
        l.invites.clear();
        l.options = 0;
        l.cancels = 0;
        l.acks = 0;
        l.byes = 0;
    }

    /// Everything kamailio wrote so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().lines.join("\n")
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL to the main process and every worker, as a crashed server;
    /// returns once they are gone. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pgid = child.id() as i32;
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
        // Every process of the group holds the stderr pipe: the readers see EOF
        // once all have exited (and closed the SIP socket, so a restart can bind).
        // Waiting for the group to vanish would also wait for init to reap the
        // orphaned workers (about a second here).
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// Starts again with the same configuration and behaviour (the Flap counter
    /// starts over), and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
