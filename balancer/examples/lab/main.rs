//! `cargo xtask lab`: the demo. Builds the netns bed (a client, the balancer host
//! as gateway, a switch, N backends), runs real SIP peers (a `sipp` caller on the
//! client placing calls: INVITE, 100, 180, 200, ACK, pause, BYE, 200; a `sipp`
//! server answering calls and health checks on every backend), starts the
//! balancer from a configuration file, prints a per-backend table while the
//! calls run, kills one backend midway to show failover, and cleans everything
//! up on exit or Ctrl-C.
//!
//! `--balancers 2` to `4`: the several-balancer variant instead (`ha.rs`).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use balancer_test_support::sipp::{self, Calls, Logs, Sipp};
use balancer_test_support::{bed, daemon};
use clap::Parser;

mod ha;

/// SIP XDP balancer lab: a whole gateway in network namespaces, real SIP calls.
#[derive(Parser)]
struct Args {
    /// Number of backends (1-8), each a sipp server in its own namespace.
    #[arg(long, default_value_t = 3)]
    backends: usize,
    /// New calls per second from the client.
    #[arg(long, default_value_t = 40)]
    rate: u32,
    /// How long new calls are placed, in seconds.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// How long each call lasts (ACK to BYE), in milliseconds.
    #[arg(long, default_value_t = 4000)]
    call_length: u32,
    /// Kill the last backend's SIP server this many seconds in (0: never;
    /// default 12 with one balancer, never with several).
    #[arg(long)]
    kill_after: Option<u64>,
    /// Weights, comma-separated, one per backend (default all 1).
    #[arg(long, value_delimiter = ',')]
    weights: Vec<u32>,
    /// dnat, or dsr (the lab then puts the VIP on the backends' loopback and
    /// runs a second sipp server there for the calls).
    #[arg(long, default_value = "dnat")]
    mode: String,
    /// Seconds between two tables.
    #[arg(long, default_value_t = 2)]
    every: u64,
    /// Balancers: 1, the gateway above; 2-4, balancer hosts behind a router
    /// (BIRD: BGP with BFD, ECMP), sharing dialogs by [sync], one cut off
    /// midway (dnat mode).
    #[arg(long, default_value_t = 1)]
    balancers: usize,
    /// Several balancers: cut one off (its link down) this many seconds in
    /// (0: never).
    #[arg(long, default_value_t = 12)]
    cut_after: u64,
    /// Several balancers: the last backend joins (`backend add` on every
    /// balancer) this many seconds in (0: it serves from the start; default
    /// 2 s before the cut).
    #[arg(long)]
    add_after: Option<u64>,
    /// Several balancers: without [sync], to see what it saves.
    #[arg(long)]
    no_sync: bool,
    /// Several balancers: calls a backend host places to a phone on the
    /// client side, which only the balancer they pass learns (0: none).
    #[arg(long, default_value_t = 20)]
    backend_calls: usize,
}

const INSTANCE: &str = "lab";

fn main() {
    let a = Args::parse();
    assert!((1..=4).contains(&a.balancers), "--balancers 1 to 4");
    if a.balancers > 1 {
        ha::run(&a);
        return;
    }
    let kill_after = a.kill_after.unwrap_or(12);
    assert!((1..=8).contains(&a.backends), "--backends 1 to 8");
    assert!(a.mode == "dnat" || a.mode == "dsr", "--mode dnat or dsr");
    let bed = bed::Bed::new(INSTANCE, a.backends);
    let logs = Logs::new(INSTANCE);
    on_ctrl_c(bed.prefix.clone(), logs.dir.display().to_string());

    println!(
        "topology: client {} -> balancer {} | {} -> switch -> {} backends ({} mode)",
        bed::CLIENT,
        bed::LB_CLIENT_SIDE,
        bed::LB_BACKEND_SIDE,
        a.backends,
        a.mode
    );
    let addrs: Vec<String> = (0..a.backends)
        .map(|i| format!("{}:5060", bed::backend_ip(i)))
        .collect();
    if a.mode == "dsr" {
        bed.vip_on_backends(a.backends);
    }
    // Health checks go to each backend's own address; in dsr mode the calls
    // arrive for the VIP, which a second server holds.
    let mut servers: Vec<Vec<Sipp>> = (0..a.backends)
        .map(|i| {
            let ns = bed.backend_ns(i);
            let mut s = vec![Sipp::uas(
                &ns,
                &format!("b{i}"),
                &bed::backend_ip(i).to_string(),
                &logs,
            )];
            if a.mode == "dsr" {
                s.push(Sipp::uas(&ns, &format!("b{i}vip"), bed::VIP, &logs));
            }
            s
        })
        .collect();
    let config = config(&a, &addrs);
    let path = bed::config_path(INSTANCE);
    std::fs::write(&path, &config).unwrap();
    println!("balancer configuration ({path}):\n{config}");
    let args: Vec<String> = ["--instance", INSTANCE, "run", "--config", &path]
        .iter()
        .map(|s| s.to_string())
        .collect();
    println!("$ balancer {}", args.join(" "));
    let d = daemon::Daemon::start(&bed.ns("lb"), &args);

    let calls = (a.rate as u64 * a.duration) as usize;
    let c = Calls::new("lab", calls, a.rate, a.call_length);
    let vip = format!("{}:5060", bed::VIP);
    println!(
        "placing {calls} calls ({} per second for {} s, {} ms each) from {} to {vip}; backend {} dies after {} s\n",
        a.rate,
        a.duration,
        a.call_length,
        bed::CLIENT,
        addrs[a.backends - 1],
        kill_after
    );
    let caller = Sipp::uac(&bed.ns("cli"), "client", bed::CLIENT, 5070, &vip, &c, &logs);
    let mut counters: Vec<LogCounter> = servers
        .iter()
        .map(|s| LogCounter::new(&s[s.len() - 1].log))
        .collect();
    let start = Instant::now();
    let mut killed = false;
    let mut next = Duration::from_secs(a.every);
    let end = Duration::from_secs(a.duration + 30 + a.call_length as u64 / 1000);
    while start.elapsed() < end {
        std::thread::sleep(Duration::from_millis(100));
        if !killed && kill_after > 0 && start.elapsed() >= Duration::from_secs(kill_after) {
            for s in servers[a.backends - 1].drain(..) {
                s.kill();
            }
            killed = true;
            println!(
                "\n*** t={}s: killed the SIP server on {} (its calls in progress fail; new calls must go elsewhere)\n",
                start.elapsed().as_secs(),
                addrs[a.backends - 1]
            );
        }
        if start.elapsed() >= next {
            next += Duration::from_secs(a.every);
            table(start.elapsed(), &caller, &mut counters, &addrs);
        }
        let done = caller
            .progress()
            .is_some_and(|p| p[0] >= calls as u64 && p[1] == 0);
        if done {
            break;
        }
    }
    if next - Duration::from_secs(a.every) + Duration::from_millis(500) < start.elapsed() {
        table(start.elapsed(), &caller, &mut counters, &addrs);
    }
    let out = caller.wait(Duration::from_secs(30));
    println!("\n$ balancer --instance {INSTANCE} backend list");
    print!("{}", daemon::cli_ok(INSTANCE, &["backend", "list"]));
    // The balancer goes first: stopped servers would otherwise be marked down.
    assert!(d.stop(), "balancer did not detach cleanly");
    let survivors: Vec<Vec<sipp::Logged>> = servers
        .into_iter()
        .map(|s| s.into_iter().flat_map(Sipp::stop).collect())
        .collect();
    summary(&a, &out, &survivors, &addrs, calls);
}

fn config(a: &Args, addrs: &[String]) -> String {
    let mut c = String::from(
        "interfaces = [\"l0\"]\n\n[health]          # quicker than the defaults (1s, 500ms, 3), for the demo\ninterval = \"500ms\"\ntimeout = \"300ms\"\nfall = 2\n\n",
    );
    c.push_str(&format!(
        "[[service]]\nvip = \"{}:5060\"\nmode = \"{}\"\n",
        bed::VIP,
        a.mode
    ));
    for (i, b) in addrs.iter().enumerate() {
        c.push_str(&format!("\n[[service.backend]]\naddress = \"{b}\"\n"));
        if let Some(w) = a.weights.get(i) {
            c.push_str(&format!("weight = {w}\n"));
        }
    }
    c
}

/// Counts the INVITEs and BYEs a sipp server has logged so far (and the
/// Call-IDs of every message it received), reading only what was appended
/// since the last call.
struct LogCounter {
    path: String,
    offset: u64,
    tail: String,
    invites: HashSet<String>,
    byes: HashSet<String>,
    seen: HashSet<String>,
}

impl LogCounter {
    fn new(path: &str) -> LogCounter {
        LogCounter {
            path: path.to_string(),
            offset: 0,
            tail: String::new(),
            invites: HashSet::new(),
            byes: HashSet::new(),
            seen: HashSet::new(),
        }
    }

    fn update(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.offset += buf.len() as u64;
        self.tail.push_str(&String::from_utf8_lossy(&buf));
        // Whole blocks only; the last one may still be growing.
        let Some(cut) = self.tail.rfind("\n-----") else {
            return;
        };
        let done: String = self.tail.drain(..cut).collect();
        for block in done.split("\n-----") {
            if !block.contains("message received") {
                continue;
            }
            let Some(id) = block.lines().find_map(|l| l.strip_prefix("Call-ID: ")) else {
                continue;
            };
            let id = id.trim().to_string();
            self.seen.insert(id.clone());
            if block.contains(":\n\nINVITE ") {
                self.invites.insert(id);
            } else if block.contains(":\n\nBYE ") {
                self.byes.insert(id);
            }
        }
    }
}

fn table(t: Duration, caller: &Sipp, counters: &mut [LogCounter], addrs: &[String]) {
    let p = caller.progress().unwrap_or_default();
    println!(
        "t={:>3}s  client: {} calls placed, {} up, {} completed, {} failed",
        t.as_secs(),
        p[0],
        p[1],
        p[2],
        p[3]
    );
    let list: serde_json::Value = daemon::cli(INSTANCE, &["backend", "list", "--json"])
        .0
        .then(|| {
            serde_json::from_str(&daemon::cli_ok(INSTANCE, &["backend", "list", "--json"])).ok()
        })
        .flatten()
        .unwrap_or_default();
    let by_addr: HashMap<String, &serde_json::Value> = list
        .as_array()
        .map(|v| {
            v.iter()
                .map(|b| (b["address"].as_str().unwrap_or("").to_string(), b))
                .collect()
        })
        .unwrap_or_default();
    let total: usize = counters
        .iter_mut()
        .map(|c| {
            c.update();
            c.invites.len()
        })
        .sum();
    println!(
        "  {:<16} {:<9} {:>6} {:>6} {:>9}",
        "backend", "state", "calls", "up", "packets"
    );
    for (c, addr) in counters.iter().zip(addrs) {
        let b = by_addr.get(addr);
        let state = b.and_then(|b| b["state"].as_str()).unwrap_or("?");
        let packets = b.and_then(|b| b["packets"].as_u64()).unwrap_or(0);
        let calls = c.invites.len();
        let up = c.invites.difference(&c.byes).count();
        let share = if total > 0 {
            calls as f64 / total as f64
        } else {
            0.0
        };
        println!(
            "  {addr:<16} {state:<9} {calls:>6} {up:>6} {packets:>9}  {}",
            "#".repeat((share * 40.0) as usize)
        );
    }
}

fn summary(
    a: &Args,
    out: &sipp::Outcome,
    logs: &[Vec<sipp::Logged>],
    addrs: &[String],
    calls: usize,
) {
    // Where each call's INVITE went, among the backends that lived.
    let mut home: HashMap<&str, usize> = HashMap::new();
    let mut split = 0;
    for (b, log) in logs.iter().enumerate() {
        for m in log.iter().filter(|m| m.received && m.method() == "INVITE") {
            if let Some(other) = home.insert(m.call_id.as_str(), b) {
                if other != b {
                    split += 1;
                }
            }
        }
    }
    let failed_on_living = out
        .failed_ids
        .iter()
        .filter(|id| home.contains_key(id.as_str()))
        .count();
    println!(
        "\n{calls} calls placed: {} completed, {} failed",
        out.successful, out.failed
    );
    if a.kill_after.unwrap_or(12) > 0 {
        println!(
            "failed calls that were on a backend still alive: {failed_on_living} (the others were up on {} when it died)",
            addrs[a.backends - 1]
        );
    }
    println!("calls whose INVITE reached two backends: {split}");
}

/// Ctrl-C: stop the SIP peers, remove the namespaces (which detaches the
/// balancer's programs), then exit.
fn on_ctrl_c(prefix: String, logs: String) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
        eprintln!("\ninterrupted: cleaning up");
        let _ = std::process::Command::new("pkill")
            .args(["-f", &format!("sipp .*{logs}")])
            .status();
        let _ = std::process::Command::new(daemon::balancer_bin())
            .args(["--instance", INSTANCE, "detach"])
            .output();
        bed::Bed { prefix }.cleanup();
        let _ = std::fs::remove_dir_all(&logs);
        std::process::exit(130);
    });
}
