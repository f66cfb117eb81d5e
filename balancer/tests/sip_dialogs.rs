//! Every message of every dialog on the right backend, with real SIP peers:
//! `sipp` callers in the client namespace (or on the backends), `sipp` backends
//! that answer calls and the balancer's OPTIONS, the balancer started from a
//! configuration file as an operator would. Each test reads the backends' own
//! message logs back and checks, Call-ID by Call-ID, where every request went.
//! Expected backends come from the balancer's own code (`Selector`), so a
//! misrouted message is found even when the call happens to survive it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use balancer::{model::BackendConfig, select::Selector};
use balancer_common::hash::hash_bytes;
use balancer_test_support::sipp::{self, Calls, Logged, Logs, Sipp};
use balancer_test_support::{bed, binomial, daemon};

const VIP: &str = "10.0.0.10:5060";

/// A bed of `hosts` backend namespaces, the first `serving` of them in the
/// service, `sipp` backends on all of them (unless `backends` is false), and the
/// balancer running from a configuration file that adds `top` (top-level keys
/// and tables, e.g. `[health]`) and `services` (more `[[service]]` tables).
struct Lab {
    bed: bed::Bed,
    logs: Logs,
    inst: String,
    uas: Vec<Option<Sipp>>,
    daemon: Option<daemon::Daemon>,
    callers: AtomicU32,
}

fn v4(i: usize) -> String {
    format!("{}:5060", bed::backend_ip(i))
}

impl Lab {
    fn new(tag: &str, hosts: usize, serving: usize, top: &str, backends: bool) -> Lab {
        Lab::with(tag, hosts, serving, top, "", backends, |_| {})
    }

    fn with(
        tag: &str,
        hosts: usize,
        serving: usize,
        top: &str,
        services: &str,
        backends: bool,
        prepare: impl FnOnce(&bed::Bed),
    ) -> Lab {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "run as root (cargo xtask test)"
        );
        let inst = format!("{tag}{}", std::process::id());
        let bed = bed::Bed::new(&inst, hosts);
        prepare(&bed);
        let logs = Logs::new(&inst);
        let uas = (0..hosts)
            .map(|i| {
                backends.then(|| {
                    Sipp::uas(
                        &bed.backend_ns(i),
                        &format!("b{i}"),
                        &bed::backend_ip(i).to_string(),
                        &logs,
                    )
                })
            })
            .collect();
        let mut config = format!("interfaces = [\"l0\"]\n{top}\n[[service]]\nvip = \"{VIP}\"\n");
        for i in 0..serving {
            config.push_str(&format!("[[service.backend]]\naddress = \"{}\"\n", v4(i)));
        }
        config.push_str(services);
        let path = bed::config_path(&inst);
        std::fs::write(&path, config).unwrap();
        let args: Vec<String> = ["--instance", &inst, "run", "--config", &path]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let daemon = Some(daemon::Daemon::start(&bed.ns("lb"), &args));
        Lab {
            bed,
            logs,
            inst,
            uas,
            daemon,
            callers: AtomicU32::new(0),
        }
    }

    /// A sipp caller in the client namespace, on a port of its own.
    fn caller(&self, c: &Calls) -> Sipp {
        let port = 5070 + self.callers.fetch_add(1, Ordering::Relaxed) as u16;
        Sipp::uac(
            &self.bed.ns("cli"),
            c.tag,
            bed::CLIENT,
            port,
            VIP,
            c,
            &self.logs,
        )
    }

    fn cli(&self, args: &[&str]) -> String {
        daemon::cli_ok(&self.inst, args)
    }

    fn reason(&self, name: &str) -> u64 {
        let s: serde_json::Value = serde_json::from_str(&self.cli(&["stats", "--json"])).unwrap();
        s["reasons"][name].as_u64().unwrap_or(0)
    }

    /// Stops the balancer (first: stopped backends would be probed down), then
    /// every backend still running, and returns their logs (empty for ones
    /// that were killed or never ran). A backend that ran logged at least the
    /// balancer's health checks: an empty log means it was not read.
    fn backend_logs(&mut self) -> Vec<Vec<Logged>> {
        if let Some(d) = self.daemon.take() {
            assert!(d.stop(), "balancer detaches cleanly");
        }
        self.uas
            .iter_mut()
            .map(|u| {
                let Some(u) = u.take() else {
                    return Vec::new();
                };
                let (name, path) = (u.name.clone(), u.log.clone());
                let log = u.stop();
                assert!(
                    !log.is_empty(),
                    "backend {name} ran, yet its message log {path} holds no message"
                );
                log
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            let ok = d.stop();
            if !std::thread::panicking() {
                assert!(ok, "balancer detaches cleanly");
            }
        }
    }
}

/// Checks that `count` of `n` keys is what probability `p` predicts (see
/// `binomial`).
fn assert_share(what: &str, count: usize, n: usize, p: f64) {
    let want = binomial::range(n, p);
    assert!(
        want.contains(&count),
        "{what}: {count} of {n}, where p = {p:.4} gives {want:?}"
    );
}

fn selector(backends: &[String]) -> Selector {
    let specs: Vec<BackendConfig> = backends.iter().map(|b| b.parse().unwrap()).collect();
    Selector::build(&specs, 65537).unwrap()
}

/// Index of the backend the table sends `id` to.
fn predict(sel: &Selector, backends: &[String], id: &str) -> usize {
    let a = sel.whereis(id.as_bytes()).unwrap().address.to_string();
    backends.iter().position(|b| *b == a).unwrap()
}

/// Call-ID -> [(backend, requests it received, in order)] for the given Call-IDs.
fn where_seen(logs: &[Vec<Logged>], ids: &[String]) -> HashMap<String, Vec<(usize, Vec<String>)>> {
    let set: HashSet<String> = ids.iter().cloned().collect();
    let mut out: HashMap<String, Vec<(usize, Vec<String>)>> = HashMap::new();
    for (b, log) in logs.iter().enumerate() {
        for (id, methods) in sipp::dialogs(log, &set) {
            out.entry(id).or_default().push((b, methods));
        }
    }
    out
}

/// Checks that each Call-ID's requests all reached one backend, a complete
/// dialog, the `expect`ed one; returns calls per backend.
fn check_dialogs(
    seen: &HashMap<String, Vec<(usize, Vec<String>)>>,
    ids: &[String],
    expect: impl Fn(&str) -> usize,
) -> HashMap<usize, usize> {
    let mut per = HashMap::new();
    for id in ids {
        let at = seen.get(id).map(Vec::as_slice).unwrap_or(&[]);
        let backends: Vec<usize> = at.iter().map(|(b, _)| *b).collect();
        assert_eq!(
            backends.len(),
            1,
            "{id}: requests reached backends {backends:?}"
        );
        let (b, methods) = &at[0];
        assert!(
            sipp::complete(methods),
            "{id}: backend {b} saw only {methods:?}"
        );
        assert_eq!(*b, expect(id), "{id}: on backend {b}, not the expected one");
        *per.entry(*b).or_insert(0) += 1;
    }
    per
}

/// Three backends in service and the fourth that a test adds, with the tables
/// before and after.
struct Growth {
    three: Vec<String>,
    four: Vec<String>,
    sel3: Selector,
    sel4: Selector,
}

impl Growth {
    fn new() -> Growth {
        let three: Vec<String> = (0..3).map(v4).collect();
        let four: Vec<String> = (0..4).map(v4).collect();
        Growth {
            sel3: selector(&three),
            sel4: selector(&four),
            three,
            four,
        }
    }

    fn before(&self, id: &str) -> usize {
        predict(&self.sel3, &self.three, id)
    }

    fn after(&self, id: &str) -> usize {
        predict(&self.sel4, &self.four, id)
    }

    /// The share of the table whose backend changes when the fourth backend
    /// comes: the probability that a key moves (about a quarter, what the new
    /// backend takes, plus Maglev's small extra disruption).
    fn moved_share(&self) -> f64 {
        let at = |sel: &Selector, e: &Option<usize>| e.map(|i| sel.backends[i].address);
        let changed = (self.sel3.table.iter().zip(&self.sel4.table))
            .filter(|(a, b)| at(&self.sel3, a) != at(&self.sel4, b))
            .count();
        changed as f64 / self.sel3.table.len() as f64
    }

    /// Adds the fourth backend.
    fn add(&self, lab: &mut Lab) {
        lab.cli(&["backend", "add", &self.four[3]]);
    }

    /// Places the calls and adds the fourth backend while all are up.
    fn add_mid_call(&self, lab: &mut Lab, c: &Calls) -> Sipp {
        mid_call(lab, c, |lab| self.add(lab))
    }
}

/// `calls` calls tagged `before`, each up for `pause_ms`; `act` while all are
/// up; then as many short calls tagged `after`. Every call of both must
/// complete. Returns the backends' logs.
fn change_under_calls(
    lab: &mut Lab,
    calls: usize,
    pause_ms: u32,
    act: impl FnOnce(&mut Lab),
) -> Vec<Vec<Logged>> {
    let early = mid_call(lab, &Calls::new("before", calls, 300, pause_ms), act);
    let late = lab
        .caller(&Calls::new("after", calls, 300, 200))
        .wait(Duration::from_secs(60));
    let early = early.wait(Duration::from_secs(60));
    let logs = lab.backend_logs();
    assert_all_completed("calls in progress", &early, calls);
    assert_all_completed("new calls", &late, calls);
    logs
}

/// Places the calls and, once all are up and before the first of them ends,
/// does `act`; returns the caller, still running.
fn mid_call(lab: &mut Lab, c: &Calls, act: impl FnOnce(&mut Lab)) -> Sipp {
    let t0 = Instant::now();
    let caller = lab.caller(c);
    all_started(&caller, c.calls);
    act(lab);
    assert!(
        t0.elapsed() < Duration::from_millis(c.pause_ms as u64 - 500),
        "too slow: the change must come while every call is still up (before the first BYE)"
    );
    caller
}

/// Waits until a caller has started all its calls (their INVITEs are out).
fn all_started(c: &Sipp, calls: usize) {
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        if c.progress().is_some_and(|p| p[0] >= calls as u64) {
            // The last INVITEs' answers, one scheduling slice later.
            std::thread::sleep(Duration::from_millis(300));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} did not start its {calls} calls within 60 s", c.name);
}

fn assert_all_completed(tag: &str, o: &sipp::Outcome, calls: usize) {
    assert!(
        o.failed == 0 && o.failed_ids.is_empty() && o.successful == calls as u64 && o.exit == 0,
        "{tag}: sipp reports {} successful, {} failed of {calls} (exit {}), failed: {:?}",
        o.successful,
        o.failed,
        o.exit,
        o.failed_ids.iter().take(5).collect::<Vec<_>>()
    );
}

#[test]
fn every_message_of_thousands_of_sipp_calls_reaches_one_backend() {
    const CALLS: usize = 3000;
    let mut lab = Lab::new("sd", 3, 3, "", true);
    let c = Calls::new("integrity", CALLS, 500, 200);
    let out = lab.caller(&c).wait(Duration::from_secs(120));
    let logs = lab.backend_logs();
    assert_all_completed("integrity", &out, CALLS);

    let backends: Vec<String> = (0..3).map(v4).collect();
    let sel = selector(&backends);
    let ids = Sipp::call_ids(c.tag, bed::CLIENT, CALLS);
    let per = check_dialogs(&where_seen(&logs, &ids), &ids, |id| {
        predict(&sel, &backends, id)
    });
    // Equal weights: a third each.
    for b in 0..3 {
        let n = per.get(&b).copied().unwrap_or(0);
        assert_share(&format!("backend {b}'s calls"), n, CALLS, 1.0 / 3.0);
    }
    eprintln!("{CALLS} sipp calls, every request of each on one backend: {per:?}");
}

#[test]
fn calls_in_progress_stay_on_their_backend_when_one_is_added() {
    const CALLS: usize = 600;
    let mut lab = Lab::new("sa", 4, 3, "", true);
    let g = Growth::new();
    let logs = change_under_calls(&mut lab, CALLS, 8000, |lab| g.add(lab));

    let ids = Sipp::call_ids("before", bed::CLIENT, CALLS);
    // The dialogs the table alone would move: what affinity must keep.
    let moved = ids.iter().filter(|id| g.before(id) != g.after(id)).count();
    assert_share(
        "dialogs whose table entry moves",
        moved,
        CALLS,
        g.moved_share(),
    );
    check_dialogs(&where_seen(&logs, &ids), &ids, |id| g.before(id));
    let new_ids = Sipp::call_ids("after", bed::CLIENT, CALLS);
    let per = check_dialogs(&where_seen(&logs, &new_ids), &new_ids, |id| g.after(id));
    // Four equal weights: the new backend takes a quarter of the new calls.
    let on_new = per.get(&3).copied().unwrap_or(0);
    assert_share("new calls on the added backend", on_new, CALLS, 0.25);
    eprintln!("{moved} of {CALLS} dialogs in progress kept by affinity; new calls {per:?}");
}

#[test]
fn a_drained_backend_finishes_its_calls_and_gets_no_new_ones() {
    const CALLS: usize = 600;
    let mut lab = Lab::new("sn", 3, 3, "", true);
    let g = Growth::new();
    let logs = change_under_calls(&mut lab, CALLS, 7000, |lab| {
        lab.cli(&["backend", "drain", &v4(0)]);
    });

    let ids = Sipp::call_ids("before", bed::CLIENT, CALLS);
    let per = check_dialogs(&where_seen(&logs, &ids), &ids, |id| g.before(id));
    let drained = per.get(&0).copied().unwrap_or(0);
    assert_share("calls on the backend to drain", drained, CALLS, 1.0 / 3.0);
    let new_ids = Sipp::call_ids("after", bed::CLIENT, CALLS);
    let seen = where_seen(&logs, &new_ids);
    let on_drained = new_ids
        .iter()
        .filter(|id| {
            seen.get(*id)
                .is_some_and(|at| at.iter().any(|(b, _)| *b == 0))
        })
        .count();
    assert_eq!(on_drained, 0, "new calls reached the draining backend");
    check_dialogs(&seen, &new_ids, |id| {
        predict(&selector(&g.three[1..]), &g.three, id)
    });
    eprintln!("draining backend finished its {drained} calls, took no new ones");
}

#[test]
fn a_backend_dying_mid_call_leaves_the_other_calls_alone() {
    const CALLS: usize = 900;
    let fast_health = "[health]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nfall = 2\n";
    let mut lab = Lab::new("sk", 3, 3, fast_health, true);
    let g = Growth::new();
    let before = Calls::new("before", CALLS, 300, 8000);
    let early = mid_call(&mut lab, &before, |lab| lab.uas[2].take().unwrap().kill());
    // The balancer notices (two failed probes 200 ms apart) ...
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let list: serde_json::Value =
            serde_json::from_str(&lab.cli(&["backend", "list", "--json"])).unwrap();
        let down = list
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["address"] == v4(2).as_str() && b["health"] == "down");
        if down {
            break;
        }
        assert!(Instant::now() < end, "the dead backend was not marked down");
        std::thread::sleep(Duration::from_millis(100));
    }
    // ... and new calls go to the living.
    let after = Calls::new("after", 300, 300, 200);
    let late = lab.caller(&after).wait(Duration::from_secs(60));
    let early = early.wait(Duration::from_secs(60));
    let logs = lab.backend_logs();

    let ids = Sipp::call_ids("before", bed::CLIENT, CALLS);
    let victims: HashSet<String> = ids.iter().filter(|id| g.before(id) == 2).cloned().collect();
    assert_share(
        "calls on the backend to die",
        victims.len(),
        CALLS,
        1.0 / 3.0,
    );
    assert_eq!(
        early.failed_ids, victims,
        "exactly the dead backend's calls failed"
    );
    let survivors: Vec<String> = ids
        .iter()
        .filter(|id| !victims.contains(*id))
        .cloned()
        .collect();
    check_dialogs(&where_seen(&logs, &survivors), &survivors, |id| {
        g.before(id)
    });
    assert_all_completed("calls after the failure", &late, 300);
    let new_ids = Sipp::call_ids("after", bed::CLIENT, 300);
    let per = check_dialogs(&where_seen(&logs, &new_ids), &new_ids, |id| {
        predict(&selector(&g.three[..2]), &g.three, id)
    });
    for b in 0..2 {
        let n = per.get(&b).copied().unwrap_or(0);
        assert_share(&format!("new calls on living backend {b}"), n, 300, 0.5);
    }
    eprintln!(
        "{} calls on the dead backend failed, {} on the others completed; new calls {per:?}",
        victims.len(),
        survivors.len()
    );
}

#[test]
fn calls_placed_by_backends_get_their_answers_back() {
    const CALLS: usize = 200;
    let mut lab = Lab::new("so", 3, 3, "", false);
    // A phone behind the client side answers; each backend calls it at once.
    let phone = Sipp::uas(&lab.bed.ns("cli"), "phone", bed::CLIENT, &lab.logs);
    let target = format!("{}:5060", bed::CLIENT);
    let tags: Vec<String> = (0..3).map(|i| format!("from-b{i}")).collect();
    let callers: Vec<Sipp> = (0..3)
        .map(|i| {
            let c = Calls::new(&tags[i], CALLS, 100, 500);
            let ip = bed::backend_ip(i).to_string();
            Sipp::uac(
                &lab.bed.backend_ns(i),
                &tags[i],
                &ip,
                5060,
                &target,
                &c,
                &lab.logs,
            )
        })
        .collect();
    let logs: Vec<Vec<Logged>> = callers
        .into_iter()
        .zip(&tags)
        .map(|(c, tag)| {
            let log = c.log.clone();
            let o = c.wait(Duration::from_secs(60));
            assert_all_completed(tag, &o, CALLS);
            sipp::read_message_log(&log)
        })
        .collect();
    let phone_log = phone.stop();
    let learned = lab.reason("affinity_learned");
    let hits = lab.reason("affinity_hit");

    // What the phone answers each call with (uas.xml): 100, 180 and 200 to the
    // INVITE, 200 to the BYE; the 200 again if the ACK is late. The finals
    // must reach the caller (it completed the call); a provisional one may
    // have been dropped at a caller's full socket, which the kernel counts.
    let pair = |c: &str, m: &str| (c.to_string(), m.to_string());
    let finals: HashSet<(String, String)> = [pair("200", "INVITE"), pair("200", "BYE")].into();
    let mut answers = finals.clone();
    answers.extend([pair("100", "INVITE"), pair("180", "INVITE")]);
    let mut delivered = 0;
    for (i, log) in logs.iter().enumerate() {
        let host = bed::backend_ip(i).to_string();
        let ids: HashSet<String> = Sipp::call_ids(&tags[i], &host, CALLS).into_iter().collect();
        let mut got: HashMap<&str, HashSet<(String, String)>> = HashMap::new();
        for m in log.iter().filter(|m| m.received && m.method() == "SIP/2.0") {
            assert!(
                ids.contains(&m.call_id),
                "backend {i} got a response of another's call: {}",
                m.call_id
            );
            let code = m.first.split(' ').nth(1).unwrap_or("").to_string();
            let method = m.cseq_method().unwrap_or("").to_string();
            got.entry(&m.call_id).or_default().insert((code, method));
            delivered += 1;
        }
        assert_eq!(got.len(), CALLS, "backend {i}: calls with responses");
        for (id, codes) in &got {
            assert!(
                codes.is_subset(&answers) && codes.is_superset(&finals),
                "backend {i}, {id}: responses {codes:?}"
            );
        }
    }
    let dropped: u64 = (0..3)
        .map(|i| bed::udp_counter(&lab.bed.backend_ns(i), "RcvbufErrors"))
        .sum();
    // The phone saw every call (from the VIP: its answers came back through
    // the balancer, which learned where each dialog lives).
    let invites = phone_log
        .iter()
        .filter(|m| m.received && m.method() == "INVITE")
        .map(|m| &m.call_id)
        .collect::<HashSet<_>>()
        .len();
    assert_eq!(invites, 3 * CALLS);
    // Everything the phone sent is a response to one of these calls, sent to
    // the VIP: each went on by what the balancer learned (an affinity hit), and
    // reached the backend whose call it was (a phone answering the backends
    // directly would not count here).
    let sent = phone_log.iter().filter(|m| !m.received).count() as u64;
    assert_eq!(hits, sent, "affinity_hit: one per response the phone sent");
    // Each reached its caller, or the caller's socket was full when it came.
    assert!(
        delivered as u64 <= sent && sent - delivered as u64 <= dropped,
        "{delivered} responses delivered of {sent} sent, {dropped} datagrams dropped at the callers' sockets"
    );
    // A dialog is learned once, from its INVITE: its ACK and BYE find their
    // own entry. Two Call-IDs of the same hash would share an entry, so the
    // count is exact only if the hashes differ, which is checked first.
    let hashes: HashSet<u32> = (0..3)
        .flat_map(|i| Sipp::call_ids(&tags[i], &bed::backend_ip(i).to_string(), CALLS))
        .map(|id| hash_bytes(id.as_bytes()))
        .collect();
    assert_eq!(hashes.len(), 3 * CALLS, "distinct Call-ID hashes");
    assert_eq!(
        learned,
        3 * CALLS as u64,
        "affinity_learned: one per dialog"
    );
    let _ = lab.backend_logs();
}

/// The later fragments of `bytes` of UDP payload sent over a 1500-byte link:
/// the kernel cuts the IP payload (UDP header and data) into pieces of at most
/// 1480 bytes over IPv4 (1500 - 20), 1448 over IPv6 (1500 - 40 - the 8-byte
/// fragment header, rounded down to a multiple of 8); all but the first
/// follow their first fragment's decision.
fn later_fragments(bytes: usize, ipv6: bool) -> u64 {
    let piece = if ipv6 { 1448 } else { 1480 };
    (bytes + 8).div_ceil(piece) as u64 - 1
}

#[test]
fn fragmented_sipp_invites_reach_one_backend_whole_ipv4_and_ipv6() {
    const CALLS: usize = 100;
    let mut v6 = format!("[[service]]\nvip = \"[{}]:5060\"\n", bed::VIP6);
    for i in 0..3 {
        v6.push_str(&format!(
            "[[service.backend]]\naddress = \"[{}]:5060\"\n",
            bed::backend_ip6(i)
        ));
    }
    let mut lab = Lab::with("sf", 3, 3, "", &v6, true, |b| b.add_ipv6(3));
    let uas6: Vec<Sipp> = (0..3)
        .map(|i| {
            Sipp::uas(
                &lab.bed.backend_ns(i),
                &format!("b{i}v6"),
                &bed::backend_ip6(i),
                &lab.logs,
            )
        })
        .collect();
    let c4 = Calls {
        tag: "big4",
        calls: CALLS,
        rate: 50,
        pause_ms: 200,
        scenario: Some("uac_big.xml"),
    };
    let c6 = Calls { tag: "big6", ..c4 };
    let vip6 = format!("[{}]:5060", bed::VIP6);
    let u4 = lab.caller(&c4);
    let u6 = Sipp::uac(
        &lab.bed.ns("cli"),
        "big6",
        bed::CLIENT6,
        5062,
        &vip6,
        &c6,
        &lab.logs,
    );
    let sent_logs = [u4.log.clone(), u6.log.clone()];
    let (o4, o6) = (
        u4.wait(Duration::from_secs(60)),
        u6.wait(Duration::from_secs(60)),
    );
    let follow = lab.reason("fragment_follow");
    let logs4 = lab.backend_logs();
    let logs6: Vec<Vec<Logged>> = uas6.into_iter().map(Sipp::stop).collect();
    assert_all_completed("IPv4", &o4, CALLS);
    assert_all_completed("IPv6", &o6, CALLS);

    for (logs, tag, host, backends) in [
        (
            &logs4,
            "big4",
            bed::CLIENT.to_string(),
            (0..3).map(v4).collect::<Vec<_>>(),
        ),
        (
            &logs6,
            "big6",
            bed::CLIENT6.to_string(),
            (0..3)
                .map(|i| format!("[{}]:5060", bed::backend_ip6(i)))
                .collect(),
        ),
    ] {
        let sel = selector(&backends);
        let ids = Sipp::call_ids(tag, &host, CALLS);
        check_dialogs(&where_seen(logs, &ids), &ids, |id| {
            predict(&sel, &backends, id)
        });
        for m in logs
            .iter()
            .flatten()
            .filter(|m| m.received && m.method() == "INVITE")
        {
            assert!(m.bytes > 3500, "{}: INVITE of {} bytes", m.call_id, m.bytes);
            let (head, body) = m
                .text
                .split_once("\r\n\r\n")
                .or_else(|| m.text.split_once("\n\n"))
                .expect("headers and body");
            let declared: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap();
            assert!(
                body.trim_end().ends_with("a=end-of-offer"),
                "{}: SDP cut",
                m.call_id
            );
            assert!(
                body.len() + 1 >= declared,
                "{}: body {} of {declared}",
                m.call_id,
                body.len()
            );
        }
    }
    // Every INVITE the callers sent (retransmissions included) was cut by the
    // client's kernel; each later fragment followed its first one, and nothing
    // else through the balancer is fragmented: about 4,000 bytes make 2 later
    // fragments on either family, 4 * CALLS without retransmissions.
    let mut expected = 0;
    for (path, ipv6) in [(&sent_logs[0], false), (&sent_logs[1], true)] {
        let log = sipp::read_message_log(path);
        let invites: Vec<&Logged> = log
            .iter()
            .filter(|m| !m.received && m.method() == "INVITE")
            .collect();
        assert!(
            invites.len() >= CALLS,
            "{path}: {} INVITEs sent",
            invites.len()
        );
        expected += invites
            .iter()
            .map(|m| later_fragments(m.bytes, ipv6))
            .sum::<u64>();
    }
    assert_eq!(follow, expected, "fragment_follow");
}

#[test]
fn evicted_dialogs_fall_back_to_the_table_and_only_moved_ones_break() {
    // 2,500 dialogs live at once, affinity room for 1,024 (the minimum).
    const CALLS: usize = 2500;
    let mut lab = Lab::new("se", 4, 3, "affinity_entries = 1024\n", true);
    let g = Growth::new();
    let c = Calls::new("evict", CALLS, 500, 10000);
    let caller = g.add_mid_call(&mut lab, &c);
    let out = caller.wait(Duration::from_secs(90));
    let logs = lab.backend_logs();

    let ids = Sipp::call_ids("evict", bed::CLIENT, CALLS);
    let moving: HashSet<&String> = ids
        .iter()
        .filter(|id| g.before(id) != g.after(id))
        .collect();
    let seen = where_seen(&logs, &ids);
    let mut split = 0;
    for id in &ids {
        let (p3, p4) = (g.before(id), g.after(id));
        for (b, _) in &seen[id] {
            assert!(
                *b == p3 || *b == p4,
                "{id} reached backend {b}: neither affinity nor table"
            );
        }
        if seen[id].len() > 1 {
            split += 1;
            assert!(
                moving.contains(id),
                "{id}: split although its table entry did not change"
            );
        }
        if !moving.contains(id) {
            assert!(
                !out.failed_ids.contains(id),
                "{id} failed although its table entry did not change"
            );
        }
    }
    assert!(
        split > 0,
        "with more dialogs than affinity entries some moved dialogs must lose theirs"
    );
    eprintln!(
        "{} of {CALLS} dialogs had their table entry moved; {split} of them lost affinity (evicted), {} calls failed, all others intact",
        moving.len(),
        out.failed
    );
}
