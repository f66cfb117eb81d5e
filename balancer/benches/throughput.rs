//! Delivered SIP datagrams per second through the netns bed
//! (`test-support/src/bed.rs`), for every contender on the same bed, with the same generator, in the
//! same run: `sip-loadgen send` in the client namespace (pinned to CPU 0) offers
//! a mix of INVITE/OPTIONS/BYE/200 OK at a few rates and flat out; a
//! `sip-loadgen sink` in each backend namespace (also on CPU 0) counts what
//! arrives. The balancer host's work (the ingress veth's threaded NAPI, where
//! XDP and the forwarding path run, and Kamailio) is pinned to CPU 1; its CPU
//! cost is the on-CPU time of those threads and processes (and the balancer
//! daemon's), from the scheduler's accounting.
//!
//! Knobs: BENCH_SECONDS (per run, default 3), BENCH_REPS (3), BENCH_RATES
//! (comma-separated datagrams/s, 0 = flat out), BENCH_CONTENDERS (trivial, dnat,
//! dsr, nftables, kamailio), BENCH_KAMAILIO_CHILDREN (1), LOADGEN_BIN.
//! BENCH_THROUGHPUT and BENCH_SVG name the Markdown section and the plot,
//! BENCH_FIGURES the file of CPU ratios for `cargo xtask bench`'s goals summary.
//! A benchmark: it measures, it does not judge.

#[path = "throughput/contenders.rs"]
mod contenders;
#[path = "throughput/report.rs"]
mod report;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use balancer_test_support::{bed, daemon};
use contenders::{Contender, BACKENDS};

/// CPU the generator and the sinks run on (the "other machines").
const GEN_CPU: usize = 0;
/// CPU the balancer host's work is pinned to.
const LB_CPU: usize = 1;

pub struct Knobs {
    pub seconds: f64,
    pub reps: usize,
    pub rates: Vec<u64>,
    pub contenders: Vec<Contender>,
    pub kamailio_children: u32,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Knobs {
    fn from_env() -> Knobs {
        let rates = std::env::var("BENCH_RATES")
            .unwrap_or_else(|_| "25000,50000,100000,200000,0".into())
            .split(',')
            .map(|r| r.trim().parse().expect("BENCH_RATES: numbers"))
            .collect();
        let contenders = match std::env::var("BENCH_CONTENDERS") {
            Ok(v) => v
                .split(',')
                .map(|k| {
                    *Contender::ALL
                        .iter()
                        .find(|c| c.key() == k.trim())
                        .unwrap_or_else(|| panic!("unknown contender {k}"))
                })
                .collect(),
            Err(_) => Contender::ALL.to_vec(),
        };
        Knobs {
            seconds: env_or("BENCH_SECONDS", 3.0),
            reps: env_or("BENCH_REPS", 3),
            rates,
            contenders,
            kamailio_children: env_or("BENCH_KAMAILIO_CHILDREN", 1),
        }
    }
}

/// One run of the generator.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub sent: u64,
    pub offered_pps: f64,
    pub delivered: u64,
    pub delivered_pps: f64,
    /// What left the balancer host towards the backends: delivered, plus what
    /// the switch port then refused (the contender's own throughput).
    pub forwarded_pps: f64,
    pub per_backend: Vec<u64>,
    /// Busy seconds of the balancer's CPU over the run and the drain after it.
    pub cpu_busy: f64,
    /// The same as a share of that CPU's time.
    pub cpu_share: f64,
    /// Dropped by the client's veth because the balancer's ingress ring was
    /// full (the balancer host did not poll fast enough).
    pub ingress_drops: u64,
    /// Dropped at the sinks' sockets (receive buffer full: a bed limit).
    pub sink_drops: u64,
    /// Dropped on the way from the balancer host to the switch: the switch
    /// port's ring was full (its NAPI thread shares the CPUs with the
    /// generator and the sinks: a bed limit, past the balancer).
    pub switch_drops: u64,
}

impl Sample {
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        1.0 - self.delivered as f64 / self.sent as f64
    }

    pub fn us_per_packet(&self) -> f64 {
        if self.delivered == 0 {
            return f64::NAN;
        }
        self.cpu_busy * 1e6 / self.delivered as f64
    }
}

fn loadgen_bin() -> String {
    if let Ok(b) = std::env::var("LOADGEN_BIN") {
        return b;
    }
    // target/<profile>/deps/throughput-<hash> -> target/<profile>/sip-loadgen
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("sip-loadgen");
    assert!(
        bin.exists(),
        "{} missing: build it first (cargo build --release -p loadgen) or set LOADGEN_BIN",
        bin.display()
    );
    bin.display().to_string()
}

fn in_ns(ns: &str, bin: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(bin);
    c
}

/// Processes (pids) whose work is the balancer host's: Kamailio's, and the
/// balancer daemon's (idle while traffic flows, counted all the same).
fn host_processes() -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if matches!(comm.trim(), "kamailio" | "balancer") {
            out.push(pid);
        }
    }
    out
}

/// Nanoseconds on a CPU, from the scheduler's own accounting
/// (/proc/TID/schedstat), of the given kernel threads and of every thread of
/// the given processes. Precise where /proc/stat counts 10 ms ticks, and blind
/// to whatever else the machine runs on the same CPU.
fn on_cpu_ns(threads: &[u32], processes: &[u32]) -> u64 {
    let read = |path: String| -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let mut ns: u64 = threads
        .iter()
        .map(|t| read(format!("/proc/{t}/schedstat")))
        .sum();
    for pid in processes {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            ns += read(format!("{}/schedstat", t.path().display()));
        }
    }
    ns
}

/// Kernel threads named `napi/<dev>-<id>` for `devs` (every namespace's).
fn napi_threads(devs: &[&str]) -> HashSet<u32> {
    let mut out = HashSet::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if devs
            .iter()
            .any(|d| comm.trim().starts_with(&format!("napi/{d}-")))
        {
            out.insert(pid);
        }
    }
    out
}

/// Pins the NAPI threads of this bed's `devs` (those that did not exist
/// before the bed: other beds on the machine keep theirs) to `cpu`.
fn pin_napi(devs: &[&str], before: &HashSet<u32>, cpu: usize) -> Vec<u32> {
    let mine: Vec<u32> = napi_threads(devs).difference(before).copied().collect();
    for pid in &mine {
        let _ = Command::new("taskset")
            .args(["-p", "-c", &cpu.to_string(), &pid.to_string()])
            .stdout(Stdio::null())
            .status();
    }
    mine
}

struct Sinks(Vec<Child>);

impl Sinks {
    fn start(bed: &bed::Bed, loadgen: &str) -> Sinks {
        let mut v = Vec::new();
        for i in 0..BACKENDS {
            let mut c = in_ns(&bed.backend_ns(i), loadgen)
                .args(["sink", "--bind", "0.0.0.0:5060", "--cpu"])
                .arg(GEN_CPU.to_string())
                .args(["--ignore", bed::LB_BACKEND_SIDE])
                .stdout(Stdio::piped())
                .spawn()
                .expect("sink");
            let mut line = String::new();
            BufReader::new(c.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert!(line.starts_with("ready"), "sink said {line:?}");
            v.push(c);
        }
        Sinks(v)
    }

    /// SIGTERM; what each counted.
    fn stop(mut self) -> Vec<u64> {
        let children = std::mem::take(&mut self.0);
        children
            .into_iter()
            .map(|c| {
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                let o = c.wait_with_output().unwrap();
                let text = String::from_utf8_lossy(&o.stdout);
                let json = text.lines().last().unwrap_or("{}");
                let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
                v["received"].as_u64().unwrap_or(0)
            })
            .collect()
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn send(bed: &bed::Bed, loadgen: &str, rate: u64, seconds: f64) -> serde_json::Value {
    let o = in_ns(&bed.ns("cli"), loadgen)
        .args(["send", "--target", &format!("{}:5060", bed::VIP)])
        .args(["--rate", &rate.to_string()])
        .args(["--duration", &seconds.to_string()])
        .args(["--cpu", &GEN_CPU.to_string()])
        // 200 OKs answer a request of the first backend (Kamailio forwards
        // replies by Via; the balancers by Call-ID).
        .args(["--origin", &format!("{}:5060", bed::backend_ip(0))])
        .output()
        .expect("loadgen send");
    assert!(
        o.status.success(),
        "loadgen send failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("loadgen JSON");
    let z = &v["sizes"];
    let _ = MESSAGES.set(format!(
        "INVITE with SDP and the Call-ID as second header, {} B; INVITE with the Call-ID as last header, {} B; \
OPTIONS, {} B; BYE, {} B; 200 OK to a BYE, {} B; in equal parts, {:.0} B on average",
        z["invite"], z["invite-late"], z["options"], z["bye"], z["ok"],
        v["bytes"].as_f64().unwrap_or(0.0) / v["sent"].as_f64().unwrap_or(1.0).max(1.0)
    ));
    v
}

/// The generator's message shapes, as it reported them.
pub static MESSAGES: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Where datagrams were lost, so far: (client veth TX drops, i.e. the balancer's
/// ingress ring was full; UDP receive-buffer errors in the backends).
fn drop_counters(bed: &bed::Bed) -> (u64, u64, u64) {
    let read = |ns: &str, cmd: &str| -> String {
        let o = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", cmd])
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let ingress = read(
        &bed.ns("cli"),
        "cat /sys/class/net/c0/statistics/tx_dropped",
    )
    .trim()
    .parse()
    .unwrap_or(0);
    let mut sink = 0;
    for i in 0..BACKENDS {
        let snmp = read(&bed.backend_ns(i), "cat /proc/net/snmp");
        let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
        if udp.len() == 2 {
            let names: Vec<&str> = udp[0].split_whitespace().collect();
            let vals: Vec<&str> = udp[1].split_whitespace().collect();
            if let Some(i) = names.iter().position(|n| *n == "RcvbufErrors") {
                sink += vals[i].parse::<u64>().unwrap_or(0);
            }
        }
    }
    // Frames the switch port refused: veth's tx_dropped counts both the
    // redirected frames its peer's ring had no room for (xdp_xmit_errors in
    // `ethtool -S`) and routed ones it dropped.
    let switch = read(&bed.ns("lb"), "cat /sys/class/net/l1/statistics/tx_dropped")
        .trim()
        .parse()
        .unwrap_or(0);
    (ingress, sink, switch)
}

/// A backend's weight changed 42 times (between 1 and 2): the wall time of
/// the `balancer backend set-weight` command (it returns once the change is
/// live and saved), and, asked through the control socket directly, how long
/// the daemon took until the new table was live in the kernel and until the
/// RCU grace period was over. Milliseconds.
fn cli_change_ms(instance: &str, backend: &str) -> [Vec<f64>; 3] {
    let mut out = [Vec::new(), Vec::new(), Vec::new()];
    // Spaced out: a change right after another first waits for the previous
    // one's RCU grace period before it may reuse the idle table half.
    let settle = || std::thread::sleep(Duration::from_millis(100));
    // Every call is a change: the command sets weight 2, the socket call 1.
    for _ in 0..21 {
        settle();
        let t = std::time::Instant::now();
        let o = Command::new(daemon::balancer_bin())
            .args(["--instance", instance, "backend", "set-weight", backend])
            .arg("2")
            .output()
            .expect("balancer CLI");
        assert!(
            o.status.success(),
            "set-weight: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out[0].push(t.elapsed().as_secs_f64() * 1e3);
        settle();
        let r: balancer::control::protocol::Applied = balancer::control::call(
            instance,
            &balancer::control::Request::Apply {
                ops: vec![balancer::model::Op::BackendWeight {
                    service: None,
                    address: backend.parse().unwrap(),
                    weight: 1,
                }],
            },
        )
        .expect("control socket");
        out[1].push(r.to_kernel_us as f64 / 1e3);
        out[2].push(r.total_us as f64 / 1e3);
    }
    out
}

/// One run at `rate` (0: flat out). `host`: the balancer host's kernel threads
/// and processes, whose CPU time is the run's cost.
fn measure(
    bed: &bed::Bed,
    loadgen: &str,
    rate: u64,
    seconds: f64,
    host: (&[u32], &[u32]),
) -> Sample {
    let sinks = Sinks::start(bed, loadgen);
    let (i0, s0, w0) = drop_counters(bed);
    let started = std::time::Instant::now();
    let b0 = on_cpu_ns(host.0, host.1);
    let out = send(bed, loadgen, rate, seconds);
    // What is still in rings and queues arrives (or is dropped) meanwhile.
    std::thread::sleep(Duration::from_millis(250));
    let b1 = on_cpu_ns(host.0, host.1);
    let wall = started.elapsed().as_secs_f64();
    let per_backend = sinks.stop();
    let (i1, s1, w1) = drop_counters(bed);
    let sent = out["sent"].as_u64().unwrap();
    let secs = out["seconds"].as_f64().unwrap();
    let delivered: u64 = per_backend.iter().sum();
    Sample {
        sent,
        offered_pps: sent as f64 / secs,
        delivered,
        delivered_pps: delivered as f64 / secs,
        forwarded_pps: (delivered + (w1 - w0)) as f64 / secs,
        per_backend,
        cpu_busy: (b1 - b0) as f64 / 1e9,
        cpu_share: (b1 - b0) as f64 / 1e9 / wall,
        ingress_drops: i1 - i0,
        sink_drops: s1 - s0,
        switch_drops: w1 - w0,
    }
}

fn main() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the throughput bench makes network namespaces and attaches XDP: run it as root"
    );
    let knobs = Knobs::from_env();
    let loadgen = loadgen_bin();
    let before = napi_threads(&["l0", "l1"]);
    let bed = bed::Bed::new("sipbench", BACKENDS);
    // The switch side (bridge, and from there the backends' receive path) gets
    // a NAPI thread of its own: a veth transmit would otherwise run its peer's
    // receive inside the balancer's NAPI thread, and every contender's CPU
    // figure would carry the bed's forwarding and the backends' socket delivery.
    // Unpinned: the scheduler puts it where there is room.
    let st = Command::new("ip")
        .args([
            "netns",
            "exec",
            &bed.ns("sw"),
            "sh",
            "-c",
            "echo 1 > /sys/class/net/s0/threaded",
        ])
        .status()
        .unwrap();
    assert!(st.success(), "threaded NAPI on the switch port");
    let mut results: Vec<report::Row> = Vec::new();
    let mut cli_change: [Vec<f64>; 3] = Default::default();
    for &c in &knobs.contenders {
        let running = contenders::start(c, &bed, knobs.kamailio_children);
        let pinned = pin_napi(&["l0", "l1"], &before, LB_CPU);
        let processes = host_processes();
        eprintln!(
            "{}: NAPI threads {:?} on CPU {LB_CPU}, processes {:?}",
            c.title(),
            pinned,
            processes
        );
        // Neighbours resolved (the XDP programs pass frames to the kernel until
        // then), affinity and conntrack warm, before anything is counted.
        send(&bed, &loadgen, 10_000, 0.5);
        std::thread::sleep(Duration::from_millis(200));
        for &rate in &knobs.rates {
            let samples: Vec<Sample> = (0..knobs.reps)
                .map(|_| {
                    let s = measure(
                        &bed,
                        &loadgen,
                        rate,
                        knobs.seconds,
                        (&pinned, &processes),
                    );
                    eprintln!(
                        "{} rate {}: offered {:.0}/s delivered {:.0}/s loss {:.3}% cpu{LB_CPU} {:.0}% {:.2} us/pkt backends {:?} lost at ingress {} at the switch {} at sinks {}",
                        c.key(),
                        if rate == 0 { "max".to_string() } else { rate.to_string() },
                        s.offered_pps,
                        s.delivered_pps,
                        s.loss() * 100.0,
                        s.cpu_share * 100.0,
                        s.us_per_packet(),
                        s.per_backend,
                        s.ingress_drops,
                        s.switch_drops,
                        s.sink_drops
                    );
                    s
                })
                .collect();
            results.push(report::Row {
                contender: c,
                rate,
                samples,
            });
        }
        if c == Contender::Dnat {
            cli_change = cli_change_ms(&bed.prefix, &format!("{}:5060", bed::backend_ip(0)));
        }
        drop(running);
    }
    let mut md = report::markdown(&knobs, &results);
    balancer_test_support::figures::write(&report::figures(&results));
    if !cli_change[0].is_empty() {
        let m = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            format!(
                "{:.1} ms ({:.1}-{:.1})",
                v[v.len() / 2],
                v[0],
                v[v.len() - 1]
            )
        };
        let [wall, kernel, total] = &mut cli_change;
        md.push_str(&format!(
            "\nA backend change from the command line (`balancer backend set-weight`, 65537-entry table, {} changes, median (min-max)): the command returns after {}; the daemon has the new table live in the kernel {} after the request reaches it, and the old one free for reuse {} after (the RCU grace period); the rest of the command's time is the configuration written with fsync, the process start and the socket round trip.\n",
            wall.len(),
            m(wall),
            m(kernel),
            m(total)
        ));
    }
    println!("{md}");
    if let Ok(path) = std::env::var("BENCH_THROUGHPUT") {
        std::fs::write(&path, &md).unwrap();
        eprintln!("wrote {path}");
    }
    if let Ok(path) = std::env::var("BENCH_SVG") {
        std::fs::write(&path, report::svg(&results)).unwrap();
        eprintln!("wrote {path}");
    }
}
