//! `cargo xtask lab --balancers N` (2-4): the several-balancer lab, on the bed
//! of `balancer/tests/ha.rs` (`balancer_test_support::ha`, ECMP mode): a
//! router running BIRD with a BGP session and BFD (100 ms x 3) to each
//! balancer host, ECMP over them with L4 hashing; each host runs the balancer
//! (`[announce]`, `[sync]` with the others) and BIRD. A `sipp` caller on the
//! client places calls from a source port each, so the router spreads them;
//! a backend host calls a phone on the client side (dialogs the balancer they
//! pass learns). Midway a backend joins (the table moves some running
//! dialogs, which only affinity keeps on their backend), then one balancer
//! is cut off (its link down in its namespace), and the lab measures how
//! long the router takes to drop it. Tables per balancer and per backend
//! every `--every` seconds; a summary at the end; `--no-sync` to compare.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use balancer::control::protocol::Peers;
use balancer_test_support::daemon;
use balancer_test_support::ha::{self, HaBed, Mode};
use balancer_test_support::sipp::{self, Calls, Logged, Logs, Outcome, Sipp};

use super::{Args, LogCounter};

/// Namespaces `labha-*`, instances `labha-lb0`...
const PREFIX: &str = "labha";
/// As the failover tests: fast enough for a demo, slow enough for two cores.
const HEALTH: &str = "[health]\ninterval = \"500ms\"\ntimeout = \"300ms\"\nfall = 2\nrise = 1\n";
/// From the first BIRD start to BGP and BFD up everywhere.
const CONVERGE: Duration = Duration::from_secs(40);
/// Call-ID tags of the client's calls and of the backend host's.
const CLIENT_TAG: &str = "call";
const BACKEND_TAG: &str = "fromb";

/// Set on Ctrl-C: the main thread then stops where it is (see `on_ctrl_c`).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn run(a: &Args) {
    assert!(
        a.mode == "dnat",
        "several balancers: dnat mode only (the bed's backends answer through the balancers)"
    );
    assert!(
        a.weights.is_empty(),
        "several balancers: no --weights (all 1)"
    );
    // The host that places calls to the client is one more backend (weight 0,
    // not probed: its SIP port is a caller), after the serving ones.
    let caller_host = (a.backend_calls > 0).then_some(a.backends);
    let hosts = a.backends + usize::from(caller_host.is_some());
    assert!(
        a.backends >= 2 && hosts <= ha::MAX_BACKENDS,
        "--backends 2 to {} with several balancers ({} with --backend-calls 0)",
        ha::MAX_BACKENDS - 1,
        ha::MAX_BACKENDS
    );
    let sync = !a.no_sync;
    let n = a.balancers;
    let logs = Logs::new("lab-ha");
    on_ctrl_c(logs.dir.display().to_string());

    let addrs: Vec<String> = (0..a.backends).map(ha::backend).collect();
    // The last serving backend joins midway, unless --add-after 0.
    let add_after = a.add_after.unwrap_or(a.cut_after.saturating_sub(2));
    let joining = (add_after > 0).then_some(a.backends - 1);
    let first: Vec<usize> = (0..a.backends).filter(|b| Some(*b) != joining).collect();
    let balancer_ips: Vec<String> = (0..n).map(|i| ha::balancer_ip(i).to_string()).collect();
    println!("topology (network namespaces {PREFIX}-*):");
    println!(
        "  client {} (sipp caller, a source port per call{})",
        ha::CLIENT,
        if caller_host.is_some() {
            "; a phone for the backend's calls"
        } else {
            ""
        }
    );
    println!(
        "  router {} (BIRD: BGP + BFD 100 ms x 3 with each balancer; ECMP over them for {}, L4 hash)",
        ha::ROUTER_CLIENT_SIDE,
        ha::VIP
    );
    println!(
        "  {n} balancers {} (XDP one-armed, [announce], BIRD{})",
        balancer_ips.join(", "),
        if sync {
            ", [sync] with each other"
        } else {
            "; no [sync]"
        }
    );
    println!(
        "  backends {} (sipp servers){}",
        addrs.join(", "),
        caller_host
            .map(|h| format!("; {} calls the client's phone", ha::backend_ip(h)))
            .unwrap_or_default()
    );

    let mut bed = HaBed::new(PREFIX, Mode::Ecmp, n, hosts);
    let mut servers: Vec<Option<Sipp>> = (0..a.backends)
        .map(|i| {
            Some(Sipp::uas(
                &bed.backend_ns(i),
                &format!("b{i}"),
                &ha::backend_ip(i).to_string(),
                &logs,
            ))
        })
        .collect();
    let mut list: String = first
        .iter()
        .map(|b| ha::backend_toml(&addrs[*b], 1, true))
        .collect();
    if let Some(h) = caller_host {
        list += &ha::backend_toml(&ha::backend(h), 0, false);
    }
    bed.start_balancers(HEALTH, &list, sync);
    let path = balancer_test_support::bed::config_path(&bed.instance(0));
    println!(
        "\nbalancer 0's configuration ({path}{}):\n{}",
        if sync {
            "; the others differ in [sync] listen and peers"
        } else {
            "; the others' are the same"
        },
        std::fs::read_to_string(&path).unwrap_or_default()
    );
    println!(
        "$ balancer --instance {} run --config {path}   (and so on, on each balancer host)",
        bed.instance(0)
    );
    let t = bed.wait_converged(CONVERGE);
    println!(
        "router: BGP and BFD up with all {n} balancers, the VIP routed through each, {:.1} s after their start\n",
        t.as_secs_f64()
    );

    let calls = (a.rate as u64 * a.duration) as usize;
    let vip = ha::vip();
    println!(
        "placing {calls} calls ({} per second for {} s, {} ms each) from {} to {vip}",
        a.rate,
        a.duration,
        a.call_length,
        ha::CLIENT
    );
    // The backend's calls: placed in the first seconds, up until after the cut.
    let (b_rate, b_length) = (5, (a.cut_after.max(4) as u32 + 6) * 1000);
    if let Some(h) = caller_host {
        println!(
            "backend host {} places {} calls ({b_rate} per second, {b_length} ms each) to the phone {}:5060",
            ha::backend_ip(h),
            a.backend_calls,
            ha::CLIENT
        );
    }
    if let Some(j) = joining {
        println!(
            "t={add_after}s: backend {} joins (`backend add` on every balancer)",
            addrs[j]
        );
    }
    if a.cut_after > 0 {
        println!(
            "t={}s: a balancer is cut off{}",
            a.cut_after,
            if caller_host.is_some() {
                " (the one the backend's calls pass)"
            } else {
                ""
            }
        );
    }
    println!();
    let phone = caller_host
        .map(|_| Sipp::uas_scenario(&bed.client_ns(), "phone", ha::CLIENT, "phone.xml", &logs));
    let c = Calls::new(CLIENT_TAG, calls, a.rate, a.call_length);
    let caller = Sipp::uac_per_call_ports(
        &bed.client_ns(),
        "client",
        ha::CLIENT,
        5070,
        &vip,
        &c,
        &logs,
    );
    let b_calls = Calls::new(BACKEND_TAG, a.backend_calls, b_rate, b_length);
    let b_caller = caller_host.map(|h| {
        Sipp::uac(
            &bed.backend_ns(h),
            "backend-caller",
            &ha::backend_ip(h).to_string(),
            5060,
            &format!("{}:5060", ha::CLIENT),
            &b_calls,
            &logs,
        )
    });
    let mut counters: Vec<LogCounter> = servers
        .iter()
        .map(|s| LogCounter::new(&s.as_ref().unwrap().log))
        .collect();

    let start = Instant::now();
    let (mut added, mut killed) = (joining.is_none(), false);
    let kill_after = a.kill_after.unwrap_or(0);
    let mut cut: Option<Cut> = None;
    let mut next = Duration::from_secs(a.every);
    let end = Duration::from_secs(a.duration + 30 + (a.call_length.max(b_length) / 1000) as u64);
    let done = |s: &Sipp, calls: usize| {
        s.progress()
            .is_some_and(|p| p[0] >= calls as u64 && p[1] == 0)
    };
    while start.elapsed() < end {
        std::thread::sleep(Duration::from_millis(100));
        let now = start.elapsed();
        if !added && now >= Duration::from_secs(add_after) {
            let j = joining.unwrap();
            for i in 0..n {
                bed.cli(i, &["backend", "add", "--service", &vip, &addrs[j]]);
            }
            added = true;
            println!(
                "\n*** t={}s: backend {} added on every balancer: the table moves some running dialogs to it; affinity keeps them on their backend\n",
                now.as_secs(),
                addrs[j]
            );
        }
        if !killed && kill_after > 0 && now >= Duration::from_secs(kill_after) {
            if let Some(s) = servers[first[0]].take() {
                s.kill();
            }
            killed = true;
            println!(
                "\n*** t={}s: killed the SIP server on {}\n",
                now.as_secs(),
                addrs[first[0]]
            );
        }
        if cut.is_none() && a.cut_after > 0 && now >= Duration::from_secs(a.cut_after) {
            cut = Some(cut_one(&bed, caller_host.is_some(), now));
        }
        if start.elapsed() >= next {
            next += Duration::from_secs(a.every);
            table(
                start.elapsed(),
                &bed,
                &caller,
                b_caller.as_ref(),
                &mut counters,
                cut.as_ref(),
            );
        }
        if done(&caller, calls) && b_caller.as_ref().is_none_or(|b| done(b, a.backend_calls)) {
            break;
        }
    }
    if next - Duration::from_secs(a.every) + Duration::from_millis(500) < start.elapsed() {
        table(
            start.elapsed(),
            &bed,
            &caller,
            b_caller.as_ref(),
            &mut counters,
            cut.as_ref(),
        );
    }
    let out = caller.wait(Duration::from_secs(30));
    let b_out = b_caller.map(|b| b.wait(Duration::from_secs(30)));
    // The balancers go first: stopped servers would otherwise be marked down.
    bed.stop_balancers();
    // At once: a sipp server with dialogs that never ended (a BYE that went
    // elsewhere) takes up to 10 s to stop.
    let logs_b: Vec<Vec<Logged>> = std::thread::scope(|sc| {
        let phone = phone.map(|p| sc.spawn(move || p.stop()));
        let hs: Vec<_> = servers
            .into_iter()
            .map(|s| sc.spawn(move || s.map(Sipp::stop).unwrap_or_default()))
            .collect();
        let logs = hs.into_iter().map(|h| h.join().unwrap()).collect();
        if let Some(p) = phone {
            let _ = p.join();
        }
        logs
    });
    summary(
        a,
        calls,
        &out,
        b_out.as_ref(),
        caller_host,
        &logs_b,
        cut.as_ref(),
    );
    drop(bed);
}

/// A balancer cut off, and when the router stopped using it.
struct Cut {
    victim: usize,
    /// From the cut to the router's VIP route without it.
    vip: Option<Duration>,
    /// From the cut to the router's return route (backends to clients) without it.
    back: Option<Duration>,
}

/// Cuts a balancer off: the one the backend's calls pass (it learned them),
/// else the last; waits until the router's routes leave it (at most 5 s).
fn cut_one(bed: &HaBed, learned: bool, now: Duration) -> Cut {
    let n = bed.balancers;
    let victim = learned
        .then(|| (0..n).find(|i| stats(bed, *i).learned > 0))
        .flatten()
        .unwrap_or(n - 1);
    let survivors: Vec<usize> = (0..n).filter(|i| *i != victim).collect();
    println!(
        "\n*** t={}s: balancer {victim} ({}) cut off: its link down in its namespace; the router's link stays up, only BFD can tell",
        now.as_secs(),
        ha::balancer_ip(victim)
    );
    let t = bed.cut(victim);
    let vip = bed
        .wait_vip_next_hops(&survivors, Duration::from_secs(5))
        .map(|_| t.elapsed());
    let back = bed
        .wait_return_without(victim, Duration::from_secs(5))
        .map(|_| t.elapsed());
    match (vip, back) {
        (Some(v), Some(b)) => println!(
            "*** failover: the router's VIP route lost balancer {victim} {} ms after the cut (its return route {} ms); its calls go on through the others\n",
            v.as_millis(),
            b.as_millis()
        ),
        _ => println!(
            "*** the router still routes through balancer {victim} 5 s after the cut: VIP via {:?}, answers via {:?}\n",
            bed.vip_next_hops(),
            bed.return_next_hops()
        ),
    }
    Cut { victim, vip, back }
}

/// `balancer --instance INSTANCE ARGS --json` on balancer `i`, parsed; null
/// if it fails.
fn json(bed: &HaBed, i: usize, args: &[&str]) -> serde_json::Value {
    daemon::in_netns(&bed.balancer_ns(i))
        .arg("--instance")
        .arg(bed.instance(i))
        .args(args)
        .arg("--json")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or_default()
}

/// A balancer's counters (`stats --json`).
#[derive(Default)]
struct Stats {
    to_vip: u64,
    forwarded: u64,
    hits: u64,
    learned: u64,
}

fn stats(bed: &HaBed, i: usize) -> Stats {
    let s = json(bed, i, &["stats"]);
    let r = |n: &str| s["reasons"][n].as_u64().unwrap_or(0);
    let to_vip = s["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["vip"] == ha::vip().as_str())
        .and_then(|v| v["packets"].as_u64())
        .unwrap_or(0);
    Stats {
        to_vip,
        forwarded: r("tx") + r("redirect"),
        hits: r("affinity_hit"),
        learned: r("affinity_learned"),
    }
}

fn progress(s: &Sipp) -> String {
    let p = s.progress().unwrap_or_default();
    format!(
        "{} placed, {} up, {} completed, {} failed",
        p[0], p[1], p[2], p[3]
    )
}

fn table(
    t: Duration,
    bed: &HaBed,
    caller: &Sipp,
    b_caller: Option<&Sipp>,
    counters: &mut [LogCounter],
    cut: Option<&Cut>,
) {
    for c in counters.iter_mut() {
        c.update();
    }
    let (split, astray) = split_so_far(counters);
    println!(
        "t={:>3}s  client: {}; dialogs split so far: {split}",
        t.as_secs(),
        progress(caller)
    );
    if let Some(b) = b_caller {
        println!(
            "        backend's calls: {}; at a serving backend instead: {astray}",
            progress(b)
        );
    }
    let n = bed.balancers;
    let hops = bed.vip_next_hops();
    println!(
        "  {:<17} {:<9} {:>8} {:>9} {:>8} {:>7} {:>9} {:>9}",
        "balancer",
        "VIP route",
        "to VIP",
        "forwarded",
        "aff.hits",
        "learned",
        "sync sent",
        "sync recv"
    );
    let mut health: Vec<HashMap<String, String>> = Vec::new();
    for i in 0..n {
        let s = stats(bed, i);
        let p: Option<Peers> = serde_json::from_value(json(bed, i, &["peers"])).ok();
        let (sent, recv) = match p.filter(|p| p.listen.is_some()) {
            Some(p) => (
                p.totals.sent_entries.to_string(),
                p.totals.received_entries.to_string(),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        let ip = ha::balancer_ip(i).to_string();
        let name = if cut.is_some_and(|c| c.victim == i) {
            format!("{ip} (cut)")
        } else {
            ip.clone()
        };
        let route = if hops.contains(&ip) { "via" } else { "-" };
        println!(
            "  {name:<17} {route:<9} {:>8} {:>9} {:>8} {:>7} {sent:>9} {recv:>9}",
            s.to_vip, s.forwarded, s.hits, s.learned
        );
        let list = json(bed, i, &["backend", "list"]);
        health.push(
            list.as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    let addr = b["address"].as_str().unwrap_or("").to_string();
                    let packets = b["packets"].as_u64().unwrap_or(0);
                    let state = b["state"].as_str().unwrap_or("?").to_string();
                    (addr, format!("{state} {packets}"))
                })
                .collect(),
        );
    }
    let lbs: String = (0..n)
        .map(|i| format!(" {:<8}", format!("lb{i}")))
        .collect();
    println!(
        "  {:<17}{lbs} {:>6} {:>5} {:>8}",
        "backend", "calls", "up", "packets"
    );
    let total: usize = counters.iter().map(|c| c.invites.len()).sum();
    for (b, c) in counters.iter().enumerate() {
        let addr = ha::backend(b);
        let mut packets = 0;
        let states: String = health
            .iter()
            .map(|h| {
                let (state, p) = h
                    .get(&addr)
                    .and_then(|v| v.split_once(' '))
                    .unwrap_or(("-", "0"));
                packets += p.parse::<u64>().unwrap_or(0);
                format!(" {state:<8}")
            })
            .collect();
        let calls = c.invites.len();
        let up = c.invites.difference(&c.byes).count();
        let share = if total > 0 {
            calls as f64 / total as f64
        } else {
            0.0
        };
        println!(
            "  {addr:<17}{states} {calls:>6} {up:>5} {packets:>8}  {}",
            "#".repeat((share * 30.0) as usize)
        );
    }
}

/// From the backends' logs so far: the client's dialogs seen on more than one
/// backend, and the backend's dialogs seen on a serving backend.
fn split_so_far(counters: &[LogCounter]) -> (usize, usize) {
    let mut on: HashMap<&str, usize> = HashMap::new();
    for c in counters {
        for id in &c.seen {
            *on.entry(id.as_str()).or_default() += 1;
        }
    }
    let client = format!("{CLIENT_TAG}-");
    let backend = format!("{BACKEND_TAG}-");
    let split = on
        .iter()
        .filter(|(id, k)| id.starts_with(&client) && **k > 1)
        .count();
    let astray = on.keys().filter(|id| id.starts_with(&backend)).count();
    (split, astray)
}

fn summary(
    a: &Args,
    calls: usize,
    out: &Outcome,
    b_out: Option<&Outcome>,
    caller_host: Option<usize>,
    logs: &[Vec<Logged>],
    cut: Option<&Cut>,
) {
    let ids: HashSet<String> = Sipp::call_ids(CLIENT_TAG, ha::CLIENT, calls)
        .into_iter()
        .collect();
    let split = sipp::where_seen(logs, &ids)
        .values()
        .filter(|v| v.len() > 1)
        .count();
    println!(
        "\nsummary ({} balancers, {}):",
        a.balancers,
        if a.no_sync {
            "without [sync]"
        } else {
            "with [sync]"
        }
    );
    if let Some(c) = cut {
        let ms = |d: Option<Duration>| {
            d.map_or("more than 5 s".to_string(), |d| {
                format!("{} ms", d.as_millis())
            })
        };
        println!(
            "  failover: the router's VIP route lost balancer {} {} after the cut (return route: {})",
            c.victim,
            ms(c.vip),
            ms(c.back)
        );
    }
    println!(
        "  client's calls: {calls} placed, {} succeeded, {} failed; dialogs split over two backends: {split}",
        out.successful, out.failed
    );
    if let (Some(o), Some(h)) = (b_out, caller_host) {
        let ids: HashSet<String> =
            Sipp::call_ids(BACKEND_TAG, &ha::backend_ip(h).to_string(), a.backend_calls)
                .into_iter()
                .collect();
        // Split: a message of it went to a serving backend instead of its caller.
        let astray = sipp::where_seen(logs, &ids).len();
        println!(
            "  backend's calls: {} placed, {} succeeded, {} failed; dialogs split (a message at a serving backend): {astray}",
            a.backend_calls, o.successful, o.failed
        );
    }
    if a.no_sync {
        println!(
            "  (the default, with [sync], keeps these dialogs whole: run without --no-sync to compare)"
        );
    } else {
        println!("  (--no-sync runs the same without [sync], to compare)");
    }
}

/// Ctrl-C: the main thread stops where it is (a panic there, from a peer
/// that got the signal too, waits instead of unwinding), every process in
/// the bed's namespaces is killed, the namespaces and files are removed,
/// then the lab exits.
fn on_ctrl_c(logs: String) {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if INTERRUPTED.load(Ordering::SeqCst) {
            loop {
                std::thread::park();
            }
        }
        hook(info);
    }));
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("\ninterrupted: cleaning up");
        ha::cleanup(PREFIX);
        let _ = std::fs::remove_dir_all(&logs);
        std::process::exit(130);
    });
}
