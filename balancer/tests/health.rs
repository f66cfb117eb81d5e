//! Health checks end to end: real SIP servers (Kamailio) as backends in the netns
//! bed, the daemon probing them, traffic flowing. One bed, the scenarios in turn:
//! a backend dies and comes back, answers 503, answers too late, flaps; then all
//! die.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use balancer_test_support::daemon::{cli_ok, Daemon};
use balancer_test_support::kamailio::{Behaviour, Kamailio};
use balancer_test_support::{bed, peers};
use serde_json::Value;

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(100);
const FALL: u32 = 3;
const RISE: u32 = 2;

fn vip() -> SocketAddr {
    format!("{}:5060", bed::VIP).parse().unwrap()
}

fn backend(i: usize) -> SocketAddr {
    format!("{}:5060", bed::backend_ip(i)).parse().unwrap()
}

fn state(inst: &str, b: SocketAddr) -> (String, Value) {
    let v: Value = serde_json::from_str(&cli_ok(inst, &["backend", "list", "--json"])).unwrap();
    let row = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == b.to_string())
        .cloned()
        .unwrap_or(Value::Null);
    (row["state"].as_str().unwrap_or("absent").to_string(), row)
}

/// Polls until `b` is in `want`; returns how long that took.
fn wait_state(inst: &str, b: SocketAddr, want: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let (s, row) = state(inst, b);
        if s == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "{b} still `{s}` after {limit:?}, wanted `{want}`: {row}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stats(inst: &str) -> Value {
    serde_json::from_str(&cli_ok(inst, &["stats", "--json"])).unwrap()
}

/// Which backend saw each Call-ID (each must have reached exactly one).
fn holders(servers: &[&Kamailio], ids: &[String]) -> HashMap<String, usize> {
    let seen: Vec<HashMap<String, u32>> = servers.iter().map(|k| k.seen()).collect();
    ids.iter()
        .filter_map(|id| {
            let h: Vec<usize> = (0..seen.len())
                .filter(|&b| seen[b].contains_key(id))
                .collect();
            assert!(h.len() <= 1, "{id} reached backends {h:?}");
            h.first().map(|b| (id.clone(), *b))
        })
        .collect()
}

fn ids(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}@10.0.1.2")).collect()
}

#[test]
fn probes_move_traffic_within_one_interval() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "run as root (cargo xtask test)"
    );
    let inst = format!("hc{}", std::process::id());
    let bed = bed::Bed::new(&inst, 4);
    let mut k: Vec<Kamailio> = (0..3)
        .map(|i| Kamailio::start(&bed.backend_ns(i), backend(i), Behaviour::Normal))
        .collect();
    let conf = bed::config_path(&inst);
    std::fs::write(
        &conf,
        format!(
            "interfaces = [\"l0\"]\n\n[health]\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nfall = {FALL}\nrise = {RISE}\n\n\
             [[service]]\nvip = \"{}\"\n{}",
            INTERVAL.as_millis(),
            TIMEOUT.as_millis(),
            vip(),
            (0..3)
                .map(|i| format!("\n[[service.backend]]\naddress = \"{}\"\n", backend(i)))
                .collect::<String>()
                // Backend 2 gets the deep check: a call, ended as soon as it is answered.
                + "\n[service.backend.health]\nmethod = \"INVITE\"\nuri = \"sip:healthcheck@10.0.2.13:5060\"\n"
        ),
    )
    .unwrap();
    let d = Daemon::start(
        &bed.ns("lb"),
        &["run", "--config", &conf, "--instance", &inst].map(String::from),
    );
    for i in 0..3 {
        wait_state(&inst, backend(i), "active", Duration::from_secs(2));
    }
    let (_, row) = state(&inst, backend(0));
    std::thread::sleep(INTERVAL * 2);
    let (_, row2) = state(&inst, backend(0));
    assert!(
        row2["probes"].as_u64() > row["probes"].as_u64(),
        "probing: {row2}"
    );
    assert!(
        row2["rtt_avg_ms"].as_f64().unwrap() > 0.0,
        "latency shown: {row2}"
    );
    assert!(row2["rtt_max_ms"].as_f64().unwrap() >= row2["rtt_avg_ms"].as_f64().unwrap());
    // The deep check's calls reach Kamailio and are ended (ACK and BYE).
    let (_, deep) = state(&inst, backend(2));
    assert!(
        deep["probes"].as_u64().unwrap() >= 2 && deep["probe_failures"] == 0,
        "{deep}"
    );
    assert!(k[2].acks_seen() >= 1, "the answered test call was ACKed");
    assert!(
        k[2].seen().keys().any(|id| id.starts_with("bal-")),
        "probe INVITEs reached it"
    );

    let stream = peers::Stream::start(&bed.ns("cli"), vip(), Duration::from_millis(1), "bg");

    // 1. A backend dies: down within interval * fall + timeout.
    let before = ids("a", 600);
    let ans = peers::run_client(&bed.ns("cli"), vip(), &before, 1, 64);
    assert_eq!(ans.by_call_id.len(), 600);
    let first = holders(&[&k[0], &k[1], &k[2]], &before);
    k[1].stop();
    let died = Instant::now();
    let took = wait_state(&inst, backend(1), "down", Duration::from_secs(5));
    let bound = INTERVAL * FALL + TIMEOUT;
    eprintln!("detected dead in {took:?} (bound {bound:?})");
    assert!(
        took <= bound + Duration::from_millis(250),
        "{took:?} > {bound:?}"
    );
    assert!(
        took >= INTERVAL * (FALL - 1),
        "{took:?}: not before {FALL} failures"
    );
    let (_, row) = state(&inst, backend(1));
    assert!(
        row["last_probe"].as_str().unwrap().contains("no answer"),
        "{row}"
    );
    let _ = died;
    // Afterwards no new Call-ID goes to it (every one is answered), and the
    // others' Call-IDs stayed where they were.
    let again = peers::run_client(&bed.ns("cli"), vip(), &before, 1, 64);
    assert_eq!(
        again.by_call_id.len(),
        600,
        "every Call-ID answered with one backend down"
    );
    let fresh = ids("b", 600);
    let ans = peers::run_client(&bed.ns("cli"), vip(), &fresh, 1, 64);
    assert_eq!(ans.by_call_id.len(), 600);
    for id in &before {
        if first[id] != 1 {
            let w = cli_ok(&inst, &["whereis", id]);
            assert_eq!(w.trim(), backend(first[id]).to_string(), "{id} moved");
        }
    }
    for id in fresh.iter().step_by(20) {
        let w = cli_ok(&inst, &["whereis", id]);
        assert_ne!(w.trim(), backend(1).to_string());
    }

    // 2. It comes back: active after `rise` good answers, and takes its share.
    k[1].restart();
    let took = wait_state(&inst, backend(1), "active", Duration::from_secs(3));
    eprintln!("back up in {took:?}");
    assert!(took <= INTERVAL * (RISE + 1) + TIMEOUT, "{took:?}");
    k[1].clear();
    let later = ids("c", 1500);
    let ans = peers::run_client(&bed.ns("cli"), vip(), &later, 1, 64);
    assert_eq!(ans.by_call_id.len(), 1500);
    let got = holders(&[&k[0], &k[1], &k[2]], &later);
    let share = got.values().filter(|&&b| b == 1).count() as f64 / 1500.0;
    assert!(
        (share - 1.0 / 3.0).abs() < 0.05,
        "share after recovery {share}"
    );

    // 3. A backend that answers 503 is down.
    let mut k3 = Kamailio::start(&bed.backend_ns(3), backend(3), Behaviour::Reply(503));
    cli_ok(&inst, &["backend", "add", &backend(3).to_string()]);
    wait_state(&inst, backend(3), "down", Duration::from_secs(3));
    let (_, row) = state(&inst, backend(3));
    assert!(row["last_probe"].as_str().unwrap().contains("503"), "{row}");

    // 4. One that answers after the timeout counts as failing.
    k3.stop();
    let mut k3 = Kamailio::start(&bed.backend_ns(3), backend(3), Behaviour::Normal);
    wait_state(&inst, backend(3), "active", Duration::from_secs(3));
    k3.stop();
    let slow = Kamailio::start(
        &bed.backend_ns(3),
        backend(3),
        Behaviour::Slow(TIMEOUT + Duration::from_millis(100)),
    );
    wait_state(&inst, backend(3), "down", Duration::from_secs(3));
    let (_, row) = state(&inst, backend(3));
    assert!(
        row["last_probe"].as_str().unwrap().contains("no answer"),
        "{row}"
    );
    drop(slow);

    // 5. A flapping one (every other probe answered) never reaches `down` with
    // fall = 3 and causes no table rebuilds. (From `down` it would never come
    // back either: rise = 2 needs two good answers in a row.)
    let mut k3 = Kamailio::start(&bed.backend_ns(3), backend(3), Behaviour::Normal);
    wait_state(&inst, backend(3), "active", Duration::from_secs(3));
    k3.stop();
    let _flap = Kamailio::start(&bed.backend_ns(3), backend(3), Behaviour::Flap);
    let rebuilds = stats(&inst)["health_rebuilds"].as_u64().unwrap();
    let t0 = Instant::now();
    let mut seen_trying = false;
    while t0.elapsed() < INTERVAL * 12 {
        let (s, _) = state(&inst, backend(3));
        assert!(
            s == "active" || s == "trying",
            "flapping backend went `{s}`"
        );
        seen_trying |= s == "trying";
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(seen_trying, "the flapping backend's failures were seen");
    assert_eq!(
        stats(&inst)["health_rebuilds"].as_u64().unwrap(),
        rebuilds,
        "no table churn"
    );

    let (sent, answered, wrong) = stream.finish();
    eprintln!("background stream: {sent} sent, {answered} answered, {wrong} from elsewhere");
    // Datagrams sent to backend 1 between its death and its detection are lost:
    // at most detection time at one per millisecond.
    assert!(sent - answered <= 1000, "{sent} sent, {answered} answered");

    // 6. All backends down: the datagrams are dropped and counted.
    drop(_flap);
    for s in k.iter_mut() {
        s.stop();
    }
    for i in 0..4 {
        wait_state(&inst, backend(i), "down", Duration::from_secs(3));
    }
    let drops = stats(&inst)["reasons"]["no_backend"].as_u64().unwrap();
    let lost = peers::run_client(&bed.ns("cli"), vip(), &ids("d", 50), 1, 50);
    assert!(lost.by_call_id.is_empty());
    let after = stats(&inst)["reasons"]["no_backend"].as_u64().unwrap();
    assert_eq!(after - drops, 50, "every datagram counted as no_backend");
    assert!(d.stop());
}
