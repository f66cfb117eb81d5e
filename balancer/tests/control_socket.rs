//! The control socket under bad clients and load: stalled and oversized
//! clients delay no one, concurrent changes are all applied and saved, and a
//! large import does not stall the probes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use balancer_test_support::daemon::{cli, cli_ok, Daemon};
use balancer_test_support::{bed, peers};
use serde_json::Value;

const VIP: &str = "10.0.0.10:5060";
/// A second service whose many backends are pinged but never marked down:
/// bulk, not subjects.
const BULK_VIP: &str = "10.0.0.11:5060";

/// These tests time answers and probes: one at a time, even when the harness
/// runs tests in parallel.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn require_root() -> std::sync::MutexGuard<'static, ()> {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "run as root (cargo xtask test)"
    );
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn backend(i: usize) -> String {
    format!("{}:5060", bed::backend_ip(i))
}

/// Backend-side addresses nobody answers on (ports without a server), spread
/// over the 200 IPs [`bulk_bed`] gives a host of their own.
fn bulk_backend(i: usize) -> String {
    format!("10.0.2.{}:{}", 20 + i % 200, 10000 + i / 200)
}

/// A bed with `real` backends and one more host holding the 200 bulk IPs.
/// Their neighbour entries resolve: probes to IPs nobody holds wait in the
/// kernel's neighbour queue, charged to the prober's one socket, until the
/// socket's send buffer is full and every probe waits (a prober matter, not
/// the control socket's).
fn bulk_bed(inst: &str, real: usize) -> bed::Bed {
    let bed = bed::Bed::new(inst, real + 1);
    let script: String = (20..220)
        .map(|i| format!("addr add 10.0.2.{i}/24 dev e0\n"))
        .collect();
    let ns = bed.backend_ns(real);
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf '{script}' | ip -n {ns} -batch -"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "adding the bulk addresses");
    bed
}

/// A SIP server that answers every request with a 200 after `delay`: its
/// probes are in flight most of the time, so a prober that stalls for a
/// moment misses their answers.
struct SlowUas {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlowUas {
    fn start(netns: &str, delay: Duration) -> SlowUas {
        let stop = Arc::new(AtomicBool::new(false));
        let (st, ns) = (stop.clone(), netns.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            peers::enter_netns(&ns);
            let sock = std::net::UdpSocket::bind("0.0.0.0:5060").expect("bind");
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.starts_with("SIP/2.0 ") {
                    continue;
                }
                let headers: String = msg
                    .split("\r\n")
                    .filter(|l| {
                        let l = l.to_ascii_lowercase();
                        ["via:", "from:", "to:", "call-id:", "cseq:"]
                            .iter()
                            .any(|h| l.starts_with(h))
                    })
                    .map(|l| format!("{l}\r\n"))
                    .collect();
                let reply = format!("SIP/2.0 200 OK\r\n{headers}Content-Length: 0\r\n\r\n");
                let sock = sock.try_clone().unwrap();
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    let _ = sock.send_to(reply.as_bytes(), from);
                });
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("slow UAS ready");
        SlowUas {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SlowUas {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn socket_path(inst: &str) -> String {
    format!("/run/balancer/{inst}.sock")
}

/// Probes every 200 ms with `fall = 1` (the README's advice for Kamailio
/// parity): a probe answered late is a backend marked down. `bulk` backends go
/// into a second service with health off.
fn write_config(inst: &str, real: usize, bulk: usize) -> String {
    let mut c = format!(
        "interfaces = [\"l0\"]\n\n[health]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nfall = 1\nrise = 1\n\n\
         [[service]]\nvip = \"{VIP}\"\n\n[service.limits]\ndatagrams = 0\ndialogs = 0\n"
    );
    for i in 0..real {
        c += &format!("\n[[service.backend]]\naddress = \"{}\"\n", backend(i));
    }
    c += &format!(
        "\n[[service]]\nvip = \"{BULK_VIP}\"\n\n[service.health]\nenabled = false\ninterval = \"5s\"\n"
    );
    for i in 0..bulk {
        c += &format!("\n[[service.backend]]\naddress = \"{}\"\n", bulk_backend(i));
    }
    let path = bed::config_path(inst);
    std::fs::write(&path, c).unwrap();
    path
}

fn start(bed: &bed::Bed, inst: &str, conf: &str) -> Daemon {
    Daemon::start(
        &bed.ns("lb"),
        &["run", "--config", conf, "--instance", inst].map(String::from),
    )
}

fn list(inst: &str, service: &str) -> Vec<Value> {
    let out = cli_ok(inst, &["backend", "list", "--service", service, "--json"]);
    let v: Value = serde_json::from_str(&out).expect("JSON output");
    v.as_array().unwrap().clone()
}

/// The slowest of `n` `backend list` runs, each a whole CLI process.
fn slowest_list(inst: &str, n: usize) -> Duration {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            list(inst, VIP);
            t.elapsed()
        })
        .max()
        .unwrap()
}

#[test]
fn stalled_and_oversized_clients_delay_no_one() {
    let _one = require_root();
    let inst = format!("cs{}", std::process::id());
    let bed = bulk_bed(&inst, 1);
    let _uas = peers::Uas::start(&bed.backend_ns(0), "0.0.0.0:5060");
    // 1,500 backends make a status answer far larger than a socket buffer.
    let conf = write_config(&inst, 1, 1500);
    let d = start(&bed, &inst, &conf);
    let path = socket_path(&inst);

    // Connected, sends nothing.
    let _idle = UnixStream::connect(&path).unwrap();
    // Half a request, never finished.
    let mut half = UnixStream::connect(&path).unwrap();
    half.write_all(br#"{"request":"sta"#).unwrap();
    // A request, and never reads the (large) answer.
    let mut deaf = UnixStream::connect(&path).unwrap();
    deaf.write_all(b"{\"request\":\"status\"}\n").unwrap();
    // 64 MB without a newline.
    let mut big = UnixStream::connect(&path).unwrap();
    let sent_big = Arc::new(AtomicBool::new(false));
    let flood = {
        let sent_big = sent_big.clone();
        std::thread::spawn(move || {
            let chunk = vec![b'a'; 1 << 20];
            let mut sent = 0usize;
            for _ in 0..64 {
                match big.write_all(&chunk) {
                    Ok(()) => sent += chunk.len(),
                    Err(_) => break,
                }
            }
            sent_big.store(sent == 64 << 20, Ordering::Relaxed);
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // The deaf client's answer is made; now the bulk goes, so that what is
    // timed below is the waiting on others, not the size of the answer. Before
    // each connection had its own task, this change waited for the deaf client
    // forever.
    let t = Instant::now();
    cli_ok(&inst, &["service", "remove", BULK_VIP]);
    eprintln!("removing 1,500 backends: {:?}", t.elapsed());

    let slowest = slowest_list(&inst, 10);
    eprintln!("backend list with four bad clients: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(100),
        "backend list took {slowest:?} with bad clients connected"
    );
    // A change goes through as well, and is seen at once.
    cli_ok(
        &inst,
        &["backend", "add", "--service", VIP, "10.0.2.11:5070"],
    );
    assert_eq!(list(&inst, VIP).len(), 2);

    // The oversized line was cut off at the limit, not read to its end.
    let sent = flood.join().unwrap();
    assert!(
        !sent_big.load(Ordering::Relaxed) && sent < 64 << 20,
        "the daemon read all of a 64 MB line ({sent} bytes)"
    );
    // The half-sent request is refused once its time is up.
    half.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut answer = String::new();
    let _ = half.read_to_string(&mut answer);
    assert!(
        answer.contains("bad request") && answer.contains("no whole line"),
        "half-sent request: `{answer}`"
    );
    // Still listening to signals: SIGTERM ends it cleanly.
    assert!(d.stop(), "the daemon stops on SIGTERM");
    drop(deaf);
}

#[test]
fn thirty_concurrent_changes_are_all_applied_and_saved() {
    let _one = require_root();
    let inst = format!("cc{}", std::process::id());
    let bed = bed::Bed::new(&inst, 1);
    let _uas = peers::Uas::start(&bed.backend_ns(0), "0.0.0.0:5060");
    let conf = write_config(&inst, 1, 0);
    let d = start(&bed, &inst, &conf);

    let added: Vec<String> = (0..30).map(|i| format!("10.0.2.11:{}", 6000 + i)).collect();
    let runs: Vec<_> = added
        .iter()
        .map(|a| {
            let (inst, a) = (inst.clone(), a.clone());
            std::thread::spawn(move || cli(&inst, &["backend", "add", "--service", VIP, &a]))
        })
        .collect();
    for (a, r) in added.iter().zip(runs) {
        let (ok, _, err) = r.join().unwrap();
        assert!(ok, "backend add {a}: {err}");
    }

    let listed: Vec<String> = list(&inst, VIP)
        .iter()
        .map(|r| r["address"].as_str().unwrap().to_string())
        .collect();
    let file = std::fs::read_to_string(&conf).unwrap();
    for a in &added {
        assert!(listed.contains(a), "{a} is not served: {listed:?}");
        assert!(file.contains(&format!("\"{a}\"")), "{a} is not in {conf}");
    }
    assert_eq!(listed.len(), 31);
    assert!(d.stop());
}

#[test]
fn importing_4000_backends_marks_no_backend_down() {
    let _one = require_root();
    let inst = format!("im{}", std::process::id());
    let bed = bulk_bed(&inst, 2);
    // Answers take 60 ms of the 150 ms timeout: a probe is in flight almost a
    // third of the time, so a stall of the prober while the import runs
    // (half a second and more) would catch some in flight.
    let _uas: Vec<SlowUas> = (0..2)
        .map(|i| SlowUas::start(&bed.backend_ns(i), Duration::from_millis(60)))
        .collect();
    let conf = write_config(&inst, 2, 0);
    let d = start(&bed, &inst, &conf);

    let dispatcher = format!("/tmp/{inst}-dispatcher.list");
    let lines: String = (0..4000)
        .map(|i| format!("1 sip:{} 0 0\n", bulk_backend(i)))
        .collect();
    std::fs::write(&dispatcher, lines).unwrap();
    let import = {
        let (inst, dispatcher) = (inst.clone(), dispatcher.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = cli(
                &inst,
                &["import-dispatcher", &dispatcher, "--service", BULK_VIP],
            );
            (r, t.elapsed())
        })
    };
    // Watch the real backends while the import runs and for a while after
    // (the probes of the first seconds with 4,000 more backends).
    let until = Instant::now() + Duration::from_secs(60);
    let mut done: Option<Instant> = None;
    while done.is_none_or(|t| t.elapsed() < Duration::from_secs(3)) {
        assert!(Instant::now() < until, "the import did not finish in time");
        for r in list(&inst, VIP) {
            assert_eq!(r["health"], "up", "{} during the import: {r}", r["address"]);
        }
        if done.is_none() && import.is_finished() {
            done = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ((ok, _, err), took) = import.join().unwrap();
    let _ = std::fs::remove_file(&dispatcher);
    assert!(ok, "import: {err}");
    eprintln!("importing 4,000 backends took {took:?}");
    assert_eq!(list(&inst, BULK_VIP).len(), 4000);
    for r in list(&inst, VIP) {
        assert_eq!(r["probe_failures"], 0, "a probe failed: {r}");
        assert!(r["probes"].as_u64().unwrap() > 5, "probes went on: {r}");
    }
    assert!(d.stop());
}
