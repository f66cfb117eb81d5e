//! Several balancers (issue 16), end to end in network namespaces
//! (`balancer_test_support::ha`): three balancer hosts announcing the VIP by
//! BGP with BFD to a router that spreads calls over them by ECMP (L4 hash),
//! or two sharing it by VRRP (keepalived); real BIRD 2, keepalived and sipp.
//!
//! - `ecmp`: calls from many source ports are spread over every balancer,
//!   each dialog whole on one backend;
//! - `withdrawal`: a balancer left without a usable backend withdraws its
//!   route, the router drops it as next hop, new calls avoid it;
//! - `failover_*`: a balancer host cut off while long calls are up (after a
//!   backend was added, so the table moved some of them, and with dialogs a
//!   backend started, which only the balancer that saw them learned); with
//!   `[sync]` no call fails or splits, without it some must;
//! - `vrrp`: the master's link cut, the backup takes the VIP, calls go on.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use balancer_test_support::ha::{self, HaBed, Mode};
use balancer_test_support::sipp::{self, Calls, Logged, Logs, Outcome, Sipp};

/// Health checks fast enough for a test, slow enough for two shared cores.
const HEALTH: &str = "[health]\ninterval = \"500ms\"\ntimeout = \"300ms\"\nfall = 2\nrise = 1\n";
/// A service only balancer 0 has in the failover tests, and its backend.
const OTHER_VIP: &str = "10.1.0.9";
const OTHER_BACKEND: &str = "10.1.2.10:5060";
/// From the first BIRD start to BGP and BFD up everywhere.
const CONVERGE: Duration = Duration::from_secs(40);
/// From a change on a balancer to the router's kernel route (announce thread,
/// BIRD's kernel scan and BGP update, on two shared cores).
const PROPAGATE: Duration = Duration::from_secs(10);

/// Each test builds a bed of a dozen namespaces with BIRDs, three XDP
/// programs and sipp processes: one at a time, whatever the harness does.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    balancer_test_support::netns::require_root();
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// `[[service.backend]]` tables for backends `ids`, weight 1, probed.
fn backends(ids: impl IntoIterator<Item = usize>) -> String {
    ids.into_iter()
        .map(|i| ha::backend_toml(&ha::backend(i), 1, true))
        .collect()
}

/// sipp backends (`uas.xml`, answering calls and OPTIONS) on hosts `ids`.
fn servers(bed: &HaBed, logs: &Logs, ids: impl IntoIterator<Item = usize>) -> Vec<Sipp> {
    ids.into_iter()
        .map(|i| {
            Sipp::uas(
                &bed.backend_ns(i),
                &format!("b{i}"),
                &ha::backend_ip(i).to_string(),
                logs,
            )
        })
        .collect()
}

/// A caller on the client, one source port per call, from main port `port`.
fn caller(bed: &HaBed, logs: &Logs, port: u16, c: &Calls) -> Sipp {
    Sipp::uac_per_call_ports(
        &bed.client_ns(),
        c.tag,
        ha::CLIENT,
        port,
        &ha::vip(),
        c,
        logs,
    )
}

/// Waits until a caller has placed all its `calls` and has no call in
/// progress it has not yet sent the INVITE's ACK for, roughly: all created,
/// then one second for the last ones to be answered.
fn wait_placed(s: &Sipp, calls: u64, limit: Duration) {
    let ok = ha::until(limit, Duration::from_millis(100), || {
        s.progress().is_some_and(|p| p[0] >= calls)
    });
    assert!(
        ok,
        "{}: not all {calls} calls placed within {limit:?}",
        s.name
    );
    std::thread::sleep(Duration::from_secs(1));
}

/// The dialogs of `ids` whose requests reached more than one backend, and
/// those that did not reach one backend whole (INVITE, ACK, BYE).
fn split_and_incomplete(logs: &[Vec<Logged>], ids: &[String]) -> (Vec<String>, Vec<String>) {
    let set: HashSet<String> = ids.iter().cloned().collect();
    let per: Vec<HashMap<String, Vec<String>>> =
        logs.iter().map(|l| sipp::dialogs(l, &set)).collect();
    let (mut split, mut incomplete) = (Vec::new(), Vec::new());
    for id in ids {
        let on: Vec<&Vec<String>> = per.iter().filter_map(|p| p.get(id)).collect();
        if on.len() > 1 {
            split.push(id.clone());
        }
        if on.len() != 1 || !sipp::complete(on[0]) {
            incomplete.push(id.clone());
        }
    }
    (split, incomplete)
}

fn stop_all(servers: Vec<Sipp>) -> Vec<Vec<Logged>> {
    servers
        .into_iter()
        .map(|s| {
            let (name, path) = (s.name.clone(), s.log.clone());
            let log = s.stop();
            assert!(
                !log.is_empty(),
                "backend {name} ran, yet its message log {path} holds no message"
            );
            log
        })
        .collect()
}

fn assert_all_completed(what: &str, o: &Outcome, calls: usize) {
    assert_eq!(
        (o.successful, o.failed),
        (calls as u64, 0),
        "{what}: successful and failed calls (failed: {:?})",
        o.failed_ids
    );
}

/// Three balancers, three backends: the router spreads calls over all three,
/// every dialog whole on one backend.
#[test]
fn ecmp() {
    let _one = serial();
    if !ha::tools_present(&["bird", "birdc", "sipp"]) {
        return;
    }
    const CALLS: usize = 150;
    let mut bed = HaBed::new("hae", Mode::Ecmp, 3, 3);
    let logs = Logs::new("ha-ecmp");
    let uas = servers(&bed, &logs, 0..3);
    bed.start_balancers(HEALTH, &backends(0..3), false);
    let t = bed.wait_converged(CONVERGE);
    eprintln!("router converged {t:?} after the balancers' start");
    let before: Vec<ha::Counters> = (0..3).map(|i| bed.counters(i)).collect();

    let c = Calls::new("ecmp", CALLS, 50, 500);
    let o = caller(&bed, &logs, 5070, &c).wait(Duration::from_secs(90));
    let after: Vec<ha::Counters> = (0..3).map(|i| bed.counters(i)).collect();
    bed.stop_balancers();
    let logs_b = stop_all(uas);

    assert_all_completed("ecmp", &o, CALLS);
    let ids = Sipp::call_ids("ecmp", ha::CLIENT, CALLS);
    let (split, incomplete) = split_and_incomplete(&logs_b, &ids);
    assert!(split.is_empty(), "dialogs on two backends: {split:?}");
    assert!(incomplete.is_empty(), "dialogs not whole: {incomplete:?}");
    let seen = sipp::where_seen(&logs_b, &ids.iter().cloned().collect());
    let per_backend: Vec<usize> = (0..3)
        .map(|b| seen.values().filter(|v| v.contains(&b)).count())
        .collect();
    let per_balancer: Vec<(u64, u64)> = (0..3)
        .map(|i| {
            (
                after[i].service - before[i].service,
                after[i].forwarded - before[i].forwarded,
            )
        })
        .collect();
    eprintln!(
        "{CALLS} calls: per backend {per_backend:?}; per balancer (datagrams to the VIP, forwarded) {per_balancer:?}"
    );
    for (i, (to_vip, fwd)) in per_balancer.iter().enumerate() {
        assert!(
            *to_vip > 0 && *fwd > 0,
            "balancer {i} got no calls: the router did not spread them ({per_balancer:?})"
        );
    }
}

/// A balancer whose backends are all disabled withdraws the VIP: the router
/// drops it as next hop and new calls go through the two others only.
#[test]
fn withdrawal() {
    let _one = serial();
    if !ha::tools_present(&["bird", "birdc", "sipp"]) {
        return;
    }
    const CALLS: usize = 90;
    let mut bed = HaBed::new("haw", Mode::Ecmp, 3, 3);
    let logs = Logs::new("ha-withdrawal");
    let uas = servers(&bed, &logs, 0..3);
    bed.start_balancers(HEALTH, &backends(0..3), false);
    bed.wait_converged(CONVERGE);

    let t = Instant::now();
    for b in 0..3 {
        bed.cli(2, &["backend", "disable", &ha::backend(b)]);
    }
    let gone = bed.wait_vip_next_hops(&[0, 1], PROPAGATE);
    assert!(
        gone.is_some(),
        "the router kept balancer 2 as next hop: {:?}\n{}",
        bed.vip_next_hops(),
        bed.diagnose()
    );
    eprintln!(
        "withdrawn: the router's VIP route lost balancer 2 {:?} after the last disable",
        t.elapsed()
    );
    assert!(
        !bed.balancer_birdc(2, "show route export uplink")
            .contains(ha::VIP),
        "balancer 2's BIRD still exports the VIP"
    );
    // Backends' answers may still go through it: it rewrites them as well as
    // any (its BGP and BFD sessions are up).
    assert_eq!(bed.return_next_hops(), bed.hops(&[0, 1, 2]));

    let before: Vec<ha::Counters> = (0..3).map(|i| bed.counters(i)).collect();
    let c = Calls::new("wd", CALLS, 45, 500);
    let o = caller(&bed, &logs, 5070, &c).wait(Duration::from_secs(90));
    let after: Vec<ha::Counters> = (0..3).map(|i| bed.counters(i)).collect();
    let to_vip: Vec<u64> = (0..3)
        .map(|i| after[i].service - before[i].service)
        .collect();
    eprintln!("{CALLS} calls after the withdrawal: datagrams to the VIP per balancer {to_vip:?}");
    assert_all_completed("after the withdrawal", &o, CALLS);
    assert_eq!(to_vip[2], 0, "balancer 2 still got calls");
    assert!(to_vip[0] > 0 && to_vip[1] > 0, "{to_vip:?}");

    // Back in: enabled again, announced again.
    bed.cli(2, &["backend", "enable", &ha::backend(0)]);
    assert!(
        bed.wait_vip_next_hops(&[0, 1, 2], PROPAGATE).is_some(),
        "balancer 2 not back: {:?}",
        bed.vip_next_hops()
    );

    bed.stop_balancers();
    let logs_b = stop_all(uas);
    let ids = Sipp::call_ids("wd", ha::CLIENT, CALLS);
    let (split, incomplete) = split_and_incomplete(&logs_b, &ids);
    assert!(
        split.is_empty() && incomplete.is_empty(),
        "{split:?} {incomplete:?}"
    );
}

/// What a failover run counted.
struct Failover {
    failed: u64,
    split: usize,
    learned_failed: u64,
    learned_split: usize,
}

/// Long calls up through three balancers; a fourth backend added on every
/// balancer (the table moves some running dialogs, which only the affinity
/// map keeps); a backend (`b4`, weight 0: it takes no calls, its SIP port is
/// a caller) calls a phone on the client side, dialogs the balancer they
/// pass learns; then the host that learned them is cut off.
fn failover(tag: &str, sync: bool) -> Failover {
    const LONG: usize = 90;
    const LEARNED: usize = 30;
    const AFTER: usize = 60;
    let mut bed = HaBed::new(tag, Mode::Ecmp, 3, 5);
    let logs = Logs::new(&format!("ha-{tag}"));
    let uas = servers(&bed, &logs, 0..4);
    let caller_host = 4;
    let list = backends(0..3) + &ha::backend_toml(&ha::backend(caller_host), 0, false);
    // Balancer 0 numbers its services and backends unlike the others (as a
    // host with another history would): one more service first in its file
    // (service ids go by file order) with a backend whose address sorts
    // first (new backend slots go by address), never used. Shared affinity
    // must name services and backends, not this host's numbers for them.
    let other = format!(
        "[[service]]\nvip = \"{OTHER_VIP}:5060\"\n\n{}",
        ha::backend_toml(OTHER_BACKEND, 1, false)
    );
    bed.start_balancers_each(sync, |i| {
        let top = if i == 0 {
            format!("{HEALTH}\n{other}")
        } else {
            HEALTH.to_string()
        };
        (top, list.clone())
    });
    bed.wait_converged(CONVERGE);
    // It answers after 300 ms: [sync] is asynchronous, an answer faster than
    // it would reach a balancer that has not heard of the dialog yet.
    let phone = Sipp::uas_scenario(&bed.client_ns(), "phone", ha::CLIENT, "phone.xml", &logs);

    let long = caller(&bed, &logs, 5070, &Calls::new("long", LONG, 30, 15_000));
    wait_placed(&long, LONG as u64, Duration::from_secs(20));

    for i in 0..3 {
        let vip = ha::vip();
        bed.cli(i, &["backend", "add", "--service", &vip, &ha::backend(3)]);
    }
    let active = |i: usize| {
        let v: serde_json::Value =
            serde_json::from_str(&bed.cli(i, &["backend", "list", "--json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .any(|r| r["address"] == ha::backend(3).as_str() && r["state"] == "active")
    };
    assert!(
        ha::until(Duration::from_secs(10), Duration::from_millis(100), || {
            (0..3).all(active)
        }),
        "backend 3 not active everywhere"
    );

    let host = ha::backend_ip(caller_host).to_string();
    let learned = Sipp::uac(
        &bed.backend_ns(caller_host),
        "fromb4",
        &host,
        5060,
        &format!("{}:5060", ha::CLIENT),
        &Calls::new("fromb4", LEARNED, 30, 10_000),
        &logs,
    );
    wait_placed(&learned, LEARNED as u64, Duration::from_secs(10));
    let counters: Vec<ha::Counters> = (0..3).map(|i| bed.counters(i)).collect();
    let victim = (0..3).find(|i| counters[*i].learned > 0).unwrap_or(0);
    eprintln!("before the cut: {counters:?}; cutting balancer {victim}");

    let cut = bed.cut(victim);
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    // Both measured from the cut.
    let vip = bed
        .wait_vip_next_hops(&survivors, Duration::from_secs(5))
        .map(|_| cut.elapsed());
    let back = bed
        .wait_return_without(victim, Duration::from_secs(5))
        .map(|_| cut.elapsed());
    let (Some(vip), Some(back)) = (vip, back) else {
        panic!(
            "the router did not drop balancer {victim}: VIP via {:?}, answers via {:?}\n{}",
            bed.vip_next_hops(),
            bed.return_next_hops(),
            bed.diagnose()
        );
    };
    let after = caller(&bed, &logs, 5071, &Calls::new("after", AFTER, 30, 1000));
    eprintln!(
        "failover: the router's VIP route lost balancer {victim} {vip:?} after the cut, \
         its return route {back:?} after it"
    );

    let o_long = long.wait(Duration::from_secs(90));
    let o_learned = learned.wait(Duration::from_secs(60));
    let o_after = after.wait(Duration::from_secs(60));
    let _ = phone.stop();
    bed.stop_balancers();
    let logs_b = stop_all(uas);

    let long_ids = Sipp::call_ids("long", ha::CLIENT, LONG);
    let (split, _) = split_and_incomplete(&logs_b, &long_ids);
    // A backend-started dialog is split when any message of it reached one
    // of the serving backends instead of its caller.
    let learned_ids: HashSet<String> = Sipp::call_ids("fromb4", &host, LEARNED)
        .into_iter()
        .collect();
    let learned_split = sipp::where_seen(&logs_b, &learned_ids).len();
    let after_ids = Sipp::call_ids("after", ha::CLIENT, AFTER);
    let (after_split, after_incomplete) = split_and_incomplete(&logs_b, &after_ids);

    eprintln!(
        "{tag}: failover {vip:?} (VIP route), {back:?} (return route); \
         long calls: {} ok, {} failed, {} split; backend-started: {} ok, {} failed, {} split; \
         calls after the cut: {} ok, {} failed",
        o_long.successful,
        o_long.failed,
        split.len(),
        o_learned.successful,
        o_learned.failed,
        learned_split,
        o_after.successful,
        o_after.failed
    );
    assert!(
        vip < Duration::from_secs(1),
        "failover took {vip:?} (BFD 100 ms x 3 should take ~300 ms)"
    );
    // New calls after the switch work either way: the tables are the same.
    assert_all_completed("calls after the cut", &o_after, AFTER);
    assert!(
        after_split.is_empty() && after_incomplete.is_empty(),
        "calls after the cut: split {after_split:?}, not whole {after_incomplete:?}"
    );
    Failover {
        failed: o_long.failed,
        split: split.len(),
        learned_failed: o_learned.failed,
        learned_split,
    }
}

#[test]
fn failover_keeps_dialogs_with_sync() {
    let _one = serial();
    if !ha::tools_present(&["bird", "birdc", "sipp"]) {
        return;
    }
    let f = failover("hafs", true);
    assert_eq!(
        (f.failed, f.split, f.learned_failed, f.learned_split),
        (0, 0, 0, 0),
        "with [sync]: failed calls, split dialogs; backend-started: failed, split"
    );
}

#[test]
fn failover_splits_dialogs_without_sync() {
    let _one = serial();
    if !ha::tools_present(&["bird", "birdc", "sipp"]) {
        return;
    }
    let f = failover("hafn", false);
    let harm = f.failed + f.split as u64 + f.learned_failed + f.learned_split as u64;
    eprintln!(
        "without [sync]: {} failed and {} split of the client's calls, {} failed and {} split of the backend's",
        f.failed, f.split, f.learned_failed, f.learned_split
    );
    assert!(
        harm > 0,
        "no call failed and no dialog split without [sync]: the test would not see what sync fixes"
    );
}

/// Two balancers and the router on one segment, keepalived on both: the
/// master's link is cut while calls run; the backup takes the VIP (address
/// and gratuitous ARP) and the calls go on through it.
#[test]
fn vrrp() {
    let _one = serial();
    if !ha::tools_present(&["keepalived", "sipp"]) {
        return;
    }
    const RUNNING: usize = 100;
    const AFTER: usize = 40;
    let mut bed = HaBed::new("hav", Mode::Vrrp, 2, 3);
    let logs = Logs::new("ha-vrrp");
    let uas = servers(&bed, &logs, 0..3);
    bed.start_balancers(HEALTH, &backends(0..3), false);
    // keepalived's check passes once the daemons announce the VIP.
    bed.start_keepalived(0, 150);
    bed.start_keepalived(1, 100);
    bed.wait_converged(Duration::from_secs(20));
    assert_eq!(
        bed.vip_holder_seen_by_router(),
        Some(0),
        "{}",
        bed.diagnose()
    );

    // keepalived follows balancer-carries: the master without a usable
    // backend gives the VIP to the backup (150 - 60 < 100), and takes it
    // back once it has one again.
    let moved = |to: usize| {
        ha::until(Duration::from_secs(15), Duration::from_millis(50), || {
            bed.poke_vip();
            bed.vip_holder_seen_by_router() == Some(to)
        })
    };
    for b in 0..3 {
        bed.cli(0, &["backend", "disable", &ha::backend(b)]);
    }
    let t = Instant::now();
    assert!(
        moved(1),
        "the VIP stayed on the master without backends\n{}",
        bed.diagnose()
    );
    eprintln!(
        "vrrp: the VIP moved to the backup {:?} after the master's withdrawal",
        t.elapsed()
    );
    for b in 0..3 {
        bed.cli(0, &["backend", "enable", &ha::backend(b)]);
    }
    assert!(
        moved(0),
        "the master did not take the VIP back\n{}",
        bed.diagnose()
    );

    let running = caller(&bed, &logs, 5070, &Calls::new("vrrp", RUNNING, 20, 4000));
    assert!(ha::until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || running.progress().is_some_and(|p| p[0] >= 40)
    ));
    let cut = bed.cut(0);
    let ok = ha::until(Duration::from_secs(10), Duration::from_millis(5), || {
        bed.vip_holder_seen_by_router() == Some(1)
    });
    let switched = cut.elapsed();
    assert!(
        ok,
        "the backup did not take the VIP: holders {:?}\n{}",
        bed.vip_holders(),
        bed.diagnose()
    );
    eprintln!("vrrp: the router's ARP for the VIP names the backup {switched:?} after the cut");
    let after = caller(&bed, &logs, 5071, &Calls::new("vafter", AFTER, 20, 500));

    let o_running = running.wait(Duration::from_secs(90));
    let o_after = after.wait(Duration::from_secs(60));
    assert!(bed.keepalived_running(1), "the backup's keepalived died");
    bed.stop_balancers();
    let logs_b = stop_all(uas);
    let running_ids = Sipp::call_ids("vrrp", ha::CLIENT, RUNNING);
    let (split, _) = split_and_incomplete(&logs_b, &running_ids);
    let after_ids = Sipp::call_ids("vafter", ha::CLIENT, AFTER);
    let (after_split, after_incomplete) = split_and_incomplete(&logs_b, &after_ids);
    eprintln!(
        "vrrp: switch {switched:?}; calls running across it: {} ok, {} failed, {} split; after: {} ok, {} failed",
        o_running.successful,
        o_running.failed,
        split.len(),
        o_after.successful,
        o_after.failed
    );
    assert!(split.is_empty(), "running dialogs split: {split:?}");
    assert_all_completed("calls after the switch", &o_after, AFTER);
    assert!(
        after_split.is_empty() && after_incomplete.is_empty(),
        "{after_split:?} {after_incomplete:?}"
    );
}
