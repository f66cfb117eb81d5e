//! Safe on a hostile network: attacks with real traffic through real XDP on
//! veth. The bed's balancer host has a second client-facing interface (`l2`)
//! with an attacker behind it (`atk`, 10.0.3.2) that forges source addresses
//! at will (frames built byte by byte and sent through an `AF_PACKET` socket),
//! and a one-armed variant. Each test says what the attack is, and checks
//! where every datagram went by what the backends themselves received.
//!
//! - toll fraud by spoofing: INVITEs to the VIP from a backend's address;
//! - reflection and hijack: a backend's address towards a client;
//! - flushing dialogs: fresh Call-IDs by the hundred thousand;
//! - the block list and allow-lists; a busy trunk never limited;
//! - dialogs the backends started, under a flood of client dialogs;
//! - a one-armed host still reverse-NATs its backends' real replies.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use balancer::{model::BackendConfig, select::Selector};
use balancer_test_support::bed::{self, Bed};
use balancer_test_support::daemon::{cli_ok, Daemon};
use balancer_test_support::forge::{self, Capture, Injector};
use balancer_test_support::netns::require_root;
use balancer_test_support::peers::{self, Uas};
use balancer_test_support::sipp::{self, Calls, Logged, Logs, Sipp};
use serde_json::Value;

fn vip() -> SocketAddr {
    format!("{}:5060", bed::VIP).parse().unwrap()
}

fn backend(i: usize) -> SocketAddr {
    SocketAddr::new(bed::backend_ip(i).into(), 5060)
}

fn client() -> SocketAddr {
    format!("{}:5060", bed::CLIENT).parse().unwrap()
}

fn attacker() -> SocketAddr {
    format!("{}:5060", bed::ATTACKER).parse().unwrap()
}

/// A configuration file: the client-facing `interfaces`, top-level `top`,
/// then `services` (whole `[[service]]` tables, see [`service`]).
fn config(interfaces: &[&str], top: &str, services: &str) -> String {
    let list: Vec<String> = interfaces.iter().map(|i| format!("\"{i}\"")).collect();
    format!("interfaces = [{}]\n{top}\n{services}", list.join(", "))
}

/// One `[[service]]` table on `vip` with backends `members` (indices) and
/// service keys `extra`.
fn service(vip: &str, members: &[usize], extra: &str) -> String {
    let mut s = format!("[[service]]\nvip = \"{vip}\"\n{extra}\n");
    for &i in members {
        s += &format!("[[service.backend]]\naddress = \"{}\"\n", backend(i));
    }
    s
}

/// The balancer, run from a configuration file in the bed's balancer
/// namespace as an operator would; stopped on drop.
struct Balancer {
    inst: String,
    lb: String,
    daemon: Option<Daemon>,
}

impl Balancer {
    fn start(bed: &Bed, config: &str) -> Balancer {
        let inst = bed.prefix.clone();
        std::fs::write(bed::config_path(&inst), config).unwrap();
        let mut b = Balancer {
            inst,
            lb: bed.ns("lb"),
            daemon: None,
        };
        b.restart();
        b
    }

    /// Starts the daemon (again) from the configuration file as it is now.
    fn restart(&mut self) {
        assert!(self.daemon.is_none());
        let path = bed::config_path(&self.inst);
        let args: Vec<String> = ["--instance", &self.inst, "run", "--config", &path]
            .iter()
            .map(|s| s.to_string())
            .collect();
        self.daemon = Some(Daemon::start(&self.lb, &args));
    }

    /// SIGTERM; the daemon must detach cleanly.
    fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            assert!(d.stop(), "balancer detaches cleanly on SIGTERM");
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        cli_ok(&self.inst, args)
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// The verdict counters.
    fn reasons(&self) -> Reasons {
        Reasons(self.json(&["stats", "--json"])["reasons"].clone())
    }

    /// Where the kernel sends `call_id` now: (backend, `affinity` or `table`).
    fn whereis(&self, call_id: &str) -> (String, String) {
        let w = self.json(&["whereis", "--json", call_id]);
        (
            w["backend"].as_str().unwrap_or("none").to_string(),
            w["via"].as_str().unwrap_or("?").to_string(),
        )
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            let ok = d.stop();
            if !std::thread::panicking() {
                assert!(ok, "balancer detaches cleanly on SIGTERM");
            }
        }
    }
}

/// A snapshot of `stats --json`'s reasons.
struct Reasons(Value);

impl Reasons {
    fn get(&self, name: &str) -> u64 {
        self.0[name].as_u64().unwrap_or(0)
    }

    /// The counters that grew since `before`, for failure messages.
    fn grown(&self, before: &Reasons) -> String {
        let names: Vec<String> = self
            .0
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        names
            .iter()
            .filter(|n| self.since(before, n) > 0)
            .map(|n| format!("{n} +{}", self.since(before, n)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How much `name` grew since `before`.
    fn since(&self, before: &Reasons, name: &str) -> u64 {
        self.get(name).saturating_sub(before.get(name))
    }
}

/// A request with nothing but what routing it needs: `Call-ID` on a line of its
/// own (as [`peers::naive_call_id`] reads it).
fn request(method: &str, call_id: &str, from: SocketAddr, to: SocketAddr) -> Vec<u8> {
    format!(
        "{method} sip:x@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-{}\r\n\
Max-Forwards: 70\r\nFrom: <sip:a@{from}>;tag=1\r\nTo: <sip:b@{to}>\r\nCall-ID: {call_id}\r\n\
CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n",
        balancer_common::hash::hash_bytes(call_id.as_bytes())
    )
    .into_bytes()
}

/// The backends that received a Call-ID, with how many datagrams each.
type Reached = Vec<(SocketAddr, u32)>;

/// Which backends received `id`.
fn holders(uas: &[Uas], id: &str) -> Reached {
    uas.iter()
        .enumerate()
        .filter_map(|(i, u)| Some((backend(i), u.count(id))).filter(|(_, n)| *n > 0))
        .collect()
}

/// The Maglev table over backends `members` (indices), built by the
/// balancer's own code: the backend index a fresh Call-ID goes to.
fn table(members: &[usize]) -> impl Fn(&str) -> usize {
    let specs: Vec<BackendConfig> = members
        .iter()
        .map(|&i| BackendConfig::new(backend(i)))
        .collect();
    let sel = Selector::build(&specs, 65537).unwrap();
    move |id: &str| {
        let a = sel.whereis(id.as_bytes()).expect("a backend").address;
        (0..bed::MAX_BACKENDS).find(|&i| backend(i) == a).unwrap()
    }
}

/// The first few of a list, for failure messages.
fn some<T: std::fmt::Debug>(v: &[T]) -> String {
    format!(
        "{:?}{}",
        &v[..v.len().min(8)],
        if v.len() > 8 { " ..." } else { "" }
    )
}

/// A bed with the attacker, `n` minimal SIP backends (they answer every
/// request with a 200 and count what arrives) and the balancer attached to
/// both client-facing interfaces, its service on backends `0..serving`.
fn attacked(tag: &str, n: usize, serving: usize, extra: &str) -> (Bed, Vec<Uas>, Balancer) {
    require_root();
    let bed = Bed::new(&format!("{tag}{}", std::process::id()), n);
    bed.add_attacker();
    let uas: Vec<Uas> = (0..n)
        .map(|i| Uas::start(&bed.backend_ns(i), "0.0.0.0:5060"))
        .collect();
    let members: Vec<usize> = (0..serving).collect();
    let conf = config(
        &["l0", "l2"],
        "",
        &service(&vip().to_string(), &members, extra),
    );
    let lb = Balancer::start(&bed, &conf);
    (bed, uas, lb)
}

/// Toll fraud by spoofing: a backend trusts what comes from its peers, so an
/// INVITE that claims to come from one is an INVITE for free. 60 of them from
/// the attacker's network to the VIP, each with a backend's address: none may
/// reach a backend, all are counted `spoofed`, and the client's calls go on.
/// (Forwarded, one whose Call-ID the table puts on the very backend it claims
/// to come from would be dropped by that backend's kernel, a martian source;
/// the others arrive, and the backend's answer goes to the forged one.)
#[test]
fn invites_to_the_vip_with_a_backends_address_reach_no_backend() {
    let (bed, uas, lb) = attacked("ha", 3, 3, "");
    let inj = Injector::new(&bed.ns("atk"), "a0", &bed.ns("lb"), "l2");
    // The same frames with the attacker's own address are served: what is
    // dropped below is dropped for its source, not lost on the way.
    let own: Vec<String> = (0..10).map(|i| format!("own-{i}@10.0.3.2")).collect();
    for id in &own {
        inj.udp(attacker(), vip(), &peers::invite(id));
    }
    let (dropped_before, _) = bed.drops(3);
    let before = lb.reasons();
    let calls = peers::Dialogs::start(&bed.ns("cli"), vip(), Duration::from_millis(2), "legit");
    calls.await_more(200);
    let spoofed: Vec<(String, SocketAddr)> = (0..60)
        .map(|i| {
            let src = backend(i % 3);
            (format!("spoof-{i}@{}", src.ip()), src)
        })
        .collect();
    for (id, src) in &spoofed {
        inj.udp(*src, vip(), &peers::invite(id));
        std::thread::sleep(Duration::from_millis(5));
    }
    calls.await_more(200);
    let sent = calls.finish();
    std::thread::sleep(Duration::from_millis(300));
    let after = lb.reasons();
    let (dropped_after, where_dropped) = bed.drops(3);

    let reached: Vec<(&String, SocketAddr, Reached)> = spoofed
        .iter()
        .map(|(id, src)| (id, *src, holders(&uas, id)))
        .filter(|(_, _, h)| !h.is_empty())
        .collect();
    assert!(
        reached.is_empty(),
        "{} of {} INVITEs to the VIP from a backend's address (sent from the attacker's network) \
         reached a backend: (Call-ID, forged source, [(backend, datagrams with that Call-ID)]) {}",
        reached.len(),
        spoofed.len(),
        some(&reached)
    );
    let own_missing: Vec<&String> = own
        .iter()
        .filter(|id| holders(&uas, id).is_empty())
        .collect();
    assert!(
        own_missing.is_empty(),
        "INVITEs with the attacker's own address were not served, so the test cannot tell a \
         dropped spoofed INVITE from a lost one: {own_missing:?}"
    );
    assert_eq!(
        after.since(&before, "spoofed"),
        spoofed.len() as u64,
        "`spoofed` counts each forged INVITE once"
    );
    let unanswered: Vec<&String> = sent
        .ids
        .iter()
        .map(|(id, _)| id)
        .filter(|id| !sent.answers.contains_key(*id))
        .collect();
    let bed_lost = dropped_after - dropped_before;
    assert!(
        unanswered.len() as u64 <= bed_lost && sent.elsewhere.is_empty(),
        "the client's INVITEs during the attack: {} sent, {} unanswered ({}), {} answers not \
         from the VIP; the bed itself dropped {bed_lost}\n{where_dropped}",
        sent.ids.len(),
        unanswered.len(),
        some(&unanswered),
        sent.elsewhere.len()
    );
    eprintln!(
        "{} forged INVITEs dropped as spoofed; the client's {} INVITEs meanwhile all answered",
        spoofed.len(),
        sent.ids.len()
    );
}

/// Reflection and hijack: datagrams from the attacker's network with a
/// backend's address, sent to the client. Reverse NAT must not turn them into
/// datagrams from the VIP (a reflector, and a way to inject into the client's
/// dialogs), and learning must not take their Call-IDs as dialogs that backend
/// started (the client's own requests with them would then go to it).
#[test]
fn a_backends_address_towards_a_client_is_neither_reflected_nor_learned() {
    let (bed, uas, lb) = attacked("hb", 3, 3, "");
    let inj = Injector::new(&bed.ns("atk"), "a0", &bed.ns("lb"), "l2");
    let victim = 0;
    // Call-IDs the table puts on another backend than the forged one, as
    // `whereis` says before the attack.
    let picks: Vec<(String, String)> = (0..)
        .map(|n| format!("hijack-{n}@10.0.1.2"))
        .map(|id| {
            let (b, via) = lb.whereis(&id);
            assert_eq!(via, "table", "{id}: a fresh Call-ID follows the table");
            (id, b)
        })
        .filter(|(_, b)| *b != backend(victim).to_string())
        .take(40)
        .collect();
    let capture = Capture::start(&bed.ns("cli"), "c0");
    let before = lb.reasons();
    for (id, _) in &picks {
        inj.udp(
            backend(victim),
            client(),
            &request("INVITE", id, backend(victim), client()),
        );
        inj.udp(
            backend(victim),
            client(),
            &request("BYE", id, backend(victim), client()),
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let arrived = capture.stop();
    let after = lb.reasons();

    let from_vip: Vec<(SocketAddr, Option<String>)> = arrived
        .iter()
        .filter(|c| c.src == vip())
        .map(|c| (c.dst, c.call_id()))
        .collect();
    assert!(
        from_vip.is_empty(),
        "{} of {} datagrams forged with backend {}'s address reached the client from the VIP \
         (reflected through reverse NAT): (to, Call-ID) {}",
        from_vip.len(),
        2 * picks.len(),
        backend(victim),
        some(&from_vip)
    );
    let ids: HashSet<&String> = picks.iter().map(|(id, _)| id).collect();
    let passed: Vec<SocketAddr> = arrived
        .iter()
        .filter(|c| c.call_id().is_some_and(|id| ids.contains(&id)))
        .map(|c| c.src)
        .collect();
    assert!(
        after.since(&before, "spoofed") >= 2 * picks.len() as u64,
        "`spoofed` grew by {} for {} forged datagrams; {} of them reached the client (from {})",
        after.since(&before, "spoofed"),
        2 * picks.len(),
        passed.len(),
        some(&passed)
    );
    let learned = after.since(&before, "affinity_learned");
    let moved: Vec<(&String, String, String)> = picks
        .iter()
        .filter_map(|(id, b)| {
            let (now, via) = lb.whereis(id);
            (now != *b || via != "table").then_some((id, now, via))
        })
        .collect();
    assert!(
        moved.is_empty(),
        "after the forged requests `whereis` sends {} of {} Call-IDs elsewhere \
         (affinity_learned grew by {learned}): (Call-ID, backend, via) {}",
        moved.len(),
        picks.len(),
        some(&moved)
    );

    // The client's own requests with those Call-IDs go where the table says.
    let call_ids: Vec<String> = picks.iter().map(|(id, _)| id.clone()).collect();
    let answers = peers::run_client(&bed.ns("cli"), vip(), &call_ids, 1, 40);
    let wrong: Vec<(&String, &String, Reached)> = picks
        .iter()
        .map(|(id, b)| (id, b, holders(&uas, id)))
        .filter(|(_, b, h)| !(h.len() == 1 && h[0].0.to_string() == **b))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} of the client's INVITEs did not reach the backend the table names \
         (the forged backend is {}): (Call-ID, table's backend, [(backend, copies)]) {}",
        wrong.len(),
        picks.len(),
        backend(victim),
        some(&wrong)
    );
    assert_eq!(answers.by_call_id.len(), picks.len(), "every one answered");
    assert!(answers.wrong_source.is_empty());
    eprintln!(
        "{} forged datagrams dropped as spoofed, none reflected, none learned",
        2 * picks.len()
    );
}

/// Waits until a sipp caller has started all its calls.
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
    let mut failed: Vec<&String> = o.failed_ids.iter().collect();
    failed.sort();
    assert!(
        o.failed == 0 && o.successful == calls as u64 && o.exit == 0,
        "{tag}: sipp reports {} successful, {} failed of {calls} (exit {}), failed: {}",
        o.successful,
        o.failed,
        o.exit,
        some(&failed)
    );
}

/// Call-ID -> [(backend, requests it received)] for the Call-IDs in `ids`.
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

/// `sipp` backends on every backend host of `bed`, logging every message.
fn sipp_backends(bed: &Bed, logs: &Logs, n: usize) -> Vec<Sipp> {
    (0..n)
        .map(|i| {
            Sipp::uas(
                &bed.backend_ns(i),
                &format!("b{i}"),
                &bed::backend_ip(i).to_string(),
                logs,
            )
        })
        .collect()
}

/// Stops sipp backends and returns their message logs.
fn stop_all(uas: Vec<Sipp>) -> Vec<Vec<Logged>> {
    uas.into_iter().map(Sipp::stop).collect()
}

/// Sends `count` requests with fresh Call-IDs from a plain UDP socket on `from`
/// in `ns` to `to`, paced to take about `over`; returns how long it took.
fn flood(ns: &str, from: SocketAddr, to: SocketAddr, count: usize, over: Duration) -> Duration {
    forge::in_netns(ns, move || {
        let sock = UdpSocket::bind(from).unwrap();
        let t0 = Instant::now();
        for n in 0..count {
            let msg = request("OPTIONS", &format!("flood-{n}@{}", from.ip()), from, to);
            loop {
                match sock.send_to(&msg, to) {
                    Ok(_) => break,
                    // ENOBUFS: the device queue is full for a moment.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        std::thread::sleep(Duration::from_micros(100))
                    }
                    Err(e) => panic!("flooding {to}: {e}"),
                }
            }
            if n % 256 == 255 {
                let due = over.mul_f64((n + 1) as f64 / count as f64);
                if let Some(wait) = due.checked_sub(t0.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        t0.elapsed()
    })
}

/// Flushing dialogs: 600 calls up, a backend added (the table now sends about
/// a quarter of their Call-IDs elsewhere: only dialog affinity keeps them), then
/// 400,000 requests with fresh Call-IDs from one source in about 10 s. Requests
/// that start no dialog must not push the established ones out of the affinity
/// map: every call's BYE reaches the backend that took its INVITE. The map is
/// small (4,096 dialogs) so that the flood outnumbers it a hundred times over;
/// with these same parameters, a map that every request enters loses the
/// moved dialogs.
#[test]
fn a_flood_of_fresh_call_ids_moves_no_established_dialog() {
    require_root();
    const CALLS: usize = 600;
    const FLOOD: usize = 400_000;
    const PAUSE_MS: u32 = 25_000;
    let inst = format!("hc{}", std::process::id());
    let bed = Bed::new(&inst, 4);
    bed.add_attacker();
    let logs = Logs::new(&inst);
    let uas = sipp_backends(&bed, &logs, 4);
    // The flood reaches the backend hosts but not their SIP servers.
    for i in 0..4 {
        forge::drop_udp_from(&bed.backend_ns(i), bed::ATTACKER);
    }
    let conf = config(
        &["l0", "l2"],
        "affinity_entries = 4096",
        &service(&vip().to_string(), &[0, 1, 2], ""),
    );
    let mut lb = Balancer::start(&bed, &conf);
    let (before, after) = (table(&[0, 1, 2]), table(&[0, 1, 2, 3]));

    let t0 = Instant::now();
    let c = Calls::new("dlg", CALLS, 300, PAUSE_MS);
    let caller = Sipp::uac(
        &bed.ns("cli"),
        "dlg",
        bed::CLIENT,
        5070,
        &vip().to_string(),
        &c,
        &logs,
    );
    all_started(&caller, CALLS);
    lb.cli(&["backend", "add", &backend(3).to_string()]);
    let r0 = lb.reasons();
    let took = flood(
        &bed.ns("atk"),
        attacker(),
        vip(),
        FLOOD,
        Duration::from_secs(10),
    );
    let r1 = lb.reasons();
    assert!(
        t0.elapsed() < Duration::from_millis(PAUSE_MS as u64 - 1000),
        "too slow: the flood must be over before the first BYE ({:?} after the first INVITE)",
        t0.elapsed()
    );
    let out = caller.wait(Duration::from_secs(90));
    lb.stop();
    let delivered: u64 = (0..4)
        .map(|i| forge::dropped_from(&bed.backend_ns(i)))
        .sum();
    let logs = stop_all(uas);

    let ids = Sipp::call_ids("dlg", bed::CLIENT, CALLS);
    let movable: HashSet<&String> = ids.iter().filter(|id| before(id) != after(id)).collect();
    let seen = where_seen(&logs, &ids);
    let (mut moved, mut lost) = (Vec::new(), Vec::new());
    for id in &ids {
        let at = seen.get(id).map(Vec::as_slice).unwrap_or(&[]);
        let on: Vec<usize> = at.iter().map(|(b, _)| *b).collect();
        if on != [before(id)] {
            moved.push((
                id,
                backend(before(id)),
                on.into_iter().map(backend).collect::<Vec<_>>(),
            ));
        } else if !sipp::complete(&at[0].1) {
            lost.push((id, backend(at[0].0), at[0].1.clone()));
        }
    }
    let summary = format!(
        "the flood: {FLOOD} OPTIONS in {took:?}, {delivered} delivered to the backend hosts; \
         affinity_new +{}, rate_limited +{}, blocked +{}; {} of {CALLS} dialogs' Call-IDs are \
         on another backend in the new table",
        r1.since(&r0, "affinity_new"),
        r1.since(&r0, "rate_limited"),
        r1.since(&r0, "blocked"),
        movable.len()
    );
    assert!(
        moved.is_empty() && lost.is_empty(),
        "{} of {CALLS} established dialogs had requests on another backend than their INVITE's \
         (Call-ID, INVITE's backend, backends reached) {}; {} were incomplete (Call-ID, backend, requests) \
         {}; sipp: {} calls failed; {summary}",
        moved.len(),
        some(&moved),
        lost.len(),
        some(&lost),
        out.failed
    );
    assert_all_completed("established dialogs", &out, CALLS);
    // The flood must have been big enough to flush the map many times over,
    // or the test shows nothing.
    assert!(
        delivered >= 100_000,
        "only {delivered} flood datagrams reached the backends: {summary}"
    );
    eprintln!("every established dialog kept its backend; {summary}");
}

/// Sends `n` INVITEs from the attacker's own address (an ordinary socket) to
/// `to`; returns how many reached the backends.
fn burst(bed: &Bed, uas: &[Uas], to: SocketAddr, tag: &str, n: usize) -> usize {
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}@10.0.3.2")).collect();
    let sent = ids.clone();
    forge::in_netns(&bed.ns("atk"), move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        for id in &sent {
            sock.send_to(&peers::invite(id), to).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    ids.iter().filter(|id| !holders(uas, id).is_empty()).count()
}

/// Whether one INVITE from the attacker's address to the VIP reaches a
/// backend within 50 ms.
fn probe(bed: &Bed, uas: &[Uas], id: &str) -> bool {
    let id = format!("{id}@10.0.3.2");
    let msg = peers::invite(&id);
    forge::in_netns(&bed.ns("atk"), move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.send_to(&msg, vip()).unwrap();
    });
    std::thread::sleep(Duration::from_millis(50));
    !holders(uas, &id).is_empty()
}

/// Whether some string anywhere in `v` is `s`.
fn mentions(v: &Value, s: &str) -> bool {
    match v {
        Value::String(x) => x == s,
        Value::Array(a) => a.iter().any(|v| mentions(v, s)),
        Value::Object(o) => o.values().any(|v| mentions(v, s)),
        _ => false,
    }
}

/// The block list: a network blocked for 2 s is dropped (counted `blocked`)
/// and listed, then served again once the entry expires; a permanent entry until `block remove`; an
/// entry kept in the configuration file and in force after a restart.
#[test]
fn the_block_list_drops_a_source_until_it_expires_or_is_removed_and_survives_a_restart() {
    let (bed, uas, mut lb) = attacked("hl", 3, 3, "");
    let net = "10.0.3.0/24";
    assert_eq!(
        burst(&bed, &uas, vip(), "open", 20),
        20,
        "the attacker's INVITEs are served before any block"
    );

    let r0 = lb.reasons();
    let t0 = Instant::now();
    lb.cli(&["block", "add", net, "--for", "2s"]);
    let list = lb.json(&["block", "list", "--json"]);
    assert!(mentions(&list, net), "block list --json: {list}");
    let got = burst(&bed, &uas, vip(), "blocked", 20);
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "too slow: the burst must end before the block expires"
    );
    assert_eq!(got, 0, "INVITEs from a blocked source reached the backends");
    assert_eq!(
        lb.reasons().since(&r0, "blocked"),
        20,
        "`blocked` counts them"
    );

    // The file keeps whole seconds, rounded up: `--for 2s` blocks for 2 to 3 s.
    let mut probes = 0;
    let resumed = loop {
        let at = t0.elapsed();
        assert!(
            // 3 s, and room for a probe delayed on a busy machine.
            at < Duration::from_secs(4),
            "still blocked {at:?} after `block add {net} --for 2s` ({probes} INVITEs dropped since the burst)"
        );
        if probe(&bed, &uas, &format!("probe-{probes}")) {
            break at;
        }
        probes += 1;
    };
    assert!(
        resumed >= Duration::from_secs(2),
        "served again {resumed:?} after `block add {net} --for 2s`"
    );
    assert_eq!(
        burst(&bed, &uas, vip(), "expired", 20),
        20,
        "INVITEs after the block expired were not all served"
    );

    let one = "10.0.3.2/32";
    lb.cli(&["block", "add", one, "--reason", "a test"]);
    assert_eq!(burst(&bed, &uas, vip(), "again", 20), 0, "blocked again");
    lb.cli(&["block", "remove", one]);
    let list = lb.json(&["block", "list", "--json"]);
    assert!(!mentions(&list, one), "removed, yet listed: {list}");
    assert_eq!(
        burst(&bed, &uas, vip(), "removed", 20),
        20,
        "INVITEs after `block remove` were not all served"
    );

    // Kept in the configuration file, like every change: a restart keeps it.
    // (Another prefix than the expired entry's, which the daemon may or may
    // not have removed by now.)
    let net = "10.0.3.0/28";
    lb.cli(&["block", "add", net, "--reason", "persisted"]);
    let saved = std::fs::read_to_string(bed::config_path(&lb.inst)).unwrap();
    assert!(
        saved.contains(net),
        "not in the configuration file:\n{saved}"
    );
    lb.stop();
    lb.restart();
    let list = lb.json(&["block", "list", "--json"]);
    assert!(
        mentions(&list, net),
        "after a restart, block list --json: {list}"
    );
    let r1 = lb.reasons();
    assert_eq!(
        burst(&bed, &uas, vip(), "restarted", 20),
        0,
        "after a restart, INVITEs from the blocked network reached the backends"
    );
    assert_eq!(lb.reasons().since(&r1, "blocked"), 20);
    let ids: Vec<String> = (0..50).map(|i| format!("cl-{i}@10.0.1.2")).collect();
    let answers = peers::run_client(&bed.ns("cli"), vip(), &ids, 1, 50);
    assert_eq!(answers.by_call_id.len(), 50, "the client is still served");
    eprintln!("a block for 2 s lifted after {resumed:?}; removal and a restart as configured");
}

/// An allow-list: the service admits the client's network, drops the
/// attacker's (counted `not_allowed`), and serves its client as before.
#[test]
fn an_allow_list_serves_its_clients_and_drops_everyone_else() {
    // The service on the VIP admits the client's network only; a second one,
    // open to all, shows that the attacker's INVITEs get through otherwise.
    let (bed, uas, lb) = {
        require_root();
        let bed = Bed::new(&format!("hw{}", std::process::id()), 4);
        bed.add_attacker();
        let uas: Vec<Uas> = (0..4)
            .map(|i| Uas::start(&bed.backend_ns(i), "0.0.0.0:5060"))
            .collect();
        let services = service(&vip().to_string(), &[0, 1, 2], "allow = [\"10.0.1.0/24\"]")
            + &service("10.0.0.11:5060", &[3], "");
        let lb = Balancer::start(&bed, &config(&["l0", "l2"], "", &services));
        (bed, uas, lb)
    };
    let open: SocketAddr = "10.0.0.11:5060".parse().unwrap();
    let r0 = lb.reasons();
    let got = burst(&bed, &uas, vip(), "denied", 30);
    let r1 = lb.reasons();
    assert_eq!(
        got, 0,
        "INVITEs from outside the allow-list reached the backends"
    );
    assert_eq!(
        r1.since(&r0, "not_allowed"),
        30,
        "`not_allowed` counts them"
    );
    assert_eq!(
        burst(&bed, &uas, open, "elsewhere", 30),
        30,
        "the attacker's INVITEs to the open service are served"
    );
    let ids: Vec<String> = (0..300).map(|i| format!("ok-{i}@10.0.1.2")).collect();
    let answers = peers::run_client(&bed.ns("cli"), vip(), &ids, 1, 50);
    let unanswered: Vec<&String> = ids
        .iter()
        .filter(|id| !answers.by_call_id.contains_key(*id))
        .collect();
    assert!(
        unanswered.is_empty() && answers.wrong_source.is_empty(),
        "the allowed client: {} of {} unanswered {}",
        unanswered.len(),
        ids.len(),
        some(&unanswered)
    );
    assert_eq!(lb.reasons().since(&r1, "not_allowed"), 0);
}

/// A trunk: one source (a carrier's SBC) placing 500 calls a second. The
/// default per-source limits (20,000 datagrams/s, 2,000 new dialogs/s) are
/// far above it: no call may fail, nothing may be limited or blocked.
#[test]
fn a_trunk_of_500_calls_a_second_from_one_source_is_never_limited() {
    require_root();
    const CALLS: usize = 3000;
    let inst = format!("ht{}", std::process::id());
    let bed = Bed::new(&inst, 3);
    let logs = Logs::new(&inst);
    let uas = sipp_backends(&bed, &logs, 3);
    let lb = Balancer::start(
        &bed,
        &config(&["l0"], "", &service(&vip().to_string(), &[0, 1, 2], "")),
    );
    let r0 = lb.reasons();
    let c = Calls::new("trunk", CALLS, 500, 200);
    let out = Sipp::uac(
        &bed.ns("cli"),
        "trunk",
        bed::CLIENT,
        5070,
        &vip().to_string(),
        &c,
        &logs,
    )
    .wait(Duration::from_secs(120));
    let r1 = lb.reasons();
    drop(lb);
    drop(uas);
    let limited: Vec<(&str, u64)> = ["rate_limited", "dialog_limited", "auto_blocked", "blocked"]
        .into_iter()
        .map(|r| (r, r1.since(&r0, r)))
        .collect();
    assert!(
        limited.iter().all(|(_, n)| *n == 0),
        "a 500 calls/s trunk was limited: {limited:?}; sipp: {} successful, {} failed",
        out.successful,
        out.failed
    );
    assert_all_completed("trunk", &out, CALLS);
    eprintln!(
        "{CALLS} calls at 500/s from one source: all completed, {} datagrams by Call-ID, none limited",
        r1.since(&r0, "callid")
    );
}

/// Dialogs a backend starts (it calls the client) are learned from its INVITE.
/// A flood of new dialogs from the client side (INVITEs from 150 addresses of
/// the client's network, none of them over any limit) must not push them out:
/// the client's requests in them (its BYE) reach the backend that called.
/// Call-IDs are chosen so that the table would send each to another backend,
/// and the affinity map is small (4,096) so that the flood outnumbers it.
#[test]
fn dialogs_backends_started_survive_a_flood_of_client_dialogs() {
    require_root();
    const PER_BACKEND: usize = 50;
    const SOURCES: u8 = 150;
    const FLOOD_PER_SOURCE: usize = 400;
    let bed = Bed::new(&format!("hd{}", std::process::id()), 3);
    let uas: Vec<Uas> = (0..3)
        .map(|i| Uas::start(&bed.backend_ns(i), "0.0.0.0:5060"))
        .collect();
    let sources = format!("10.0.1.100-10.0.1.{}", 100 + SOURCES - 1);
    for i in 0..3 {
        forge::drop_udp_from(&bed.backend_ns(i), &sources);
    }
    let conf = config(
        &["l0"],
        "affinity_entries = 4096",
        &service(&vip().to_string(), &[0, 1, 2], ""),
    );
    let lb = Balancer::start(&bed, &conf);
    let phone = forge::in_netns(&bed.ns("cli"), || {
        let s = UdpSocket::bind(client()).unwrap();
        peers::big_rcvbuf(&s);
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    });

    let to_table = table(&[0, 1, 2]);
    let dialogs: Vec<(usize, String)> = (0..3)
        .flat_map(|b| {
            (0..)
                .map(move |n| (b, format!("out-{b}-{n}@{}", bed::backend_ip(b))))
                .filter(|(b, id)| to_table(id) != *b)
                .take(PER_BACKEND)
        })
        .collect();
    let r0 = lb.reasons();
    for (b, id) in &dialogs {
        uas[*b].send_to(&request("INVITE", id, backend(*b), client()), client());
    }
    let mut rang: HashMap<String, SocketAddr> = HashMap::new();
    let mut buf = [0u8; 65536];
    while rang.len() < dialogs.len() {
        let Ok((n, from)) = phone.recv_from(&mut buf) else {
            break;
        };
        if let Some(id) = peers::naive_call_id(&buf[..n]) {
            rang.insert(id, from);
        }
    }
    let not_via_vip: Vec<(&String, &SocketAddr)> =
        rang.iter().filter(|(_, from)| **from != vip()).collect();
    assert!(
        rang.len() == dialogs.len() && not_via_vip.is_empty(),
        "the backends' INVITEs: {} of {} reached the client, from other than the VIP: {}",
        rang.len(),
        dialogs.len(),
        some(&not_via_vip)
    );
    let r1 = lb.reasons();

    // The flood: every source well under the default limits (2,000 new
    // dialogs/s), together 20,000 INVITEs a second.
    let inj = Injector::new(&bed.ns("cli"), "c0", &bed.ns("lb"), "l0");
    let t0 = Instant::now();
    let total = SOURCES as usize * FLOOD_PER_SOURCE;
    for n in 0..total {
        let src = SocketAddr::new(
            std::net::Ipv4Addr::new(10, 0, 1, 100 + (n % SOURCES as usize) as u8).into(),
            5060,
        );
        inj.udp(src, vip(), &peers::invite(&format!("fl-{n}@{}", src.ip())));
        if n % 200 == 199 {
            let due = Duration::from_secs(3).mul_f64((n + 1) as f64 / total as f64);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let r2 = lb.reasons();
    let delivered: u64 = (0..3)
        .map(|i| forge::dropped_from(&bed.backend_ns(i)))
        .sum();

    // The client hangs up every call.
    for (_, id) in &dialogs {
        phone
            .send_to(&request("BYE", id, client(), vip()), vip())
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let wrong: Vec<(&String, SocketAddr, Reached)> = dialogs
        .iter()
        .map(|(b, id)| (id, backend(*b), holders(&uas, id)))
        .filter(|(_, b, h)| *h != [(*b, 1)])
        .collect();
    let summary = format!(
        "learned +{}; the flood: {total} INVITEs from {SOURCES} sources in {:?}, {delivered} \
         delivered to the backend hosts, affinity_new +{}, dialog_limited +{}, rate_limited +{}",
        r1.since(&r0, "affinity_learned"),
        t0.elapsed(),
        r2.since(&r1, "affinity_new"),
        r2.since(&r1, "dialog_limited"),
        r2.since(&r1, "rate_limited"),
    );
    assert!(
        wrong.is_empty(),
        "{} of {} dialogs the backends started lost their backend: the client's BYE went \
         elsewhere (Call-ID, caller, [(backend, copies)]) {}; {summary}",
        wrong.len(),
        dialogs.len(),
        some(&wrong)
    );
    assert!(
        delivered as usize >= total * 9 / 10,
        "the flood did not get through, so it shows nothing: {summary}"
    );
    eprintln!("every backend-started dialog kept its backend; {summary}");
}

/// One arm: clients and backends behind the one interface the balancer is
/// attached to. Backends' replies come in where clients' requests do, and
/// where the route to the backends goes: the strict reverse-path check must
/// let them through, and they must leave from the VIP.
#[test]
fn a_one_armed_balancer_reverse_nats_real_backend_replies() {
    require_root();
    const CALLS: usize = 600;
    let bed = Bed::one_armed(&format!("h1{}", std::process::id()), 3);
    let uas: Vec<Uas> = (0..3)
        .map(|i| Uas::start(&bed.backend_ns(i), "0.0.0.0:5060"))
        .collect();
    let lb = Balancer::start(
        &bed,
        &config(&["l0"], "", &service(&vip().to_string(), &[0, 1, 2], "")),
    );
    let r0 = lb.reasons();
    let ids: Vec<String> = (0..CALLS).map(|i| format!("arm-{i}@10.0.1.2")).collect();
    let answers = peers::run_client(&bed.ns("cli"), vip(), &ids, 2, 32);
    let r1 = lb.reasons();
    let to_table = table(&[0, 1, 2]);
    let misrouted: Vec<(&String, SocketAddr, Reached)> = ids
        .iter()
        .map(|id| (id, backend(to_table(id)), holders(&uas, id)))
        .filter(|(_, b, h)| *h != [(*b, 2)])
        .collect();
    assert!(
        misrouted.is_empty(),
        "{} of {CALLS} Call-IDs did not reach their backend twice: (Call-ID, table's backend, \
         [(backend, copies)]) {}; the balancer's counters: {}\n{}",
        misrouted.len(),
        some(&misrouted),
        r1.grown(&r0),
        bed.diagnose()
    );
    let unanswered: Vec<&String> = ids
        .iter()
        .filter(|id| answers.by_call_id.get(*id) != Some(&2))
        .collect();
    assert!(
        unanswered.is_empty() && answers.wrong_source.is_empty(),
        "{} of {CALLS} Call-IDs not answered twice {}; {} answers not from the VIP {}; \
         spoofed +{}, reverse_nat +{}\n{}",
        unanswered.len(),
        some(&unanswered),
        answers.wrong_source.len(),
        some(&answers.wrong_source),
        r1.since(&r0, "spoofed"),
        r1.since(&r0, "reverse_nat"),
        bed.diagnose()
    );
    assert_eq!(
        r1.since(&r0, "spoofed"),
        0,
        "real replies counted as spoofed"
    );
    assert!(
        r1.since(&r0, "reverse_nat") >= 2 * CALLS as u64,
        "reverse_nat +{}",
        r1.since(&r0, "reverse_nat")
    );
    eprintln!(
        "{CALLS} Call-IDs twice through one arm: all on their backend, all answered from the VIP \
         ({} sent back out of the interface they came in on)",
        r1.since(&r0, "tx")
    );
}
