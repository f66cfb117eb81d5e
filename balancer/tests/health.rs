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

// Not the defaults (interval 1 s, timeout 500 ms, fall 3, rise 2), so a daemon
// that ignored any of them would be seen to.
const INTERVAL: Duration = Duration::from_millis(250);
const TIMEOUT: Duration = Duration::from_millis(120);
const FALL: u32 = 4;
const RISE: u32 = 3;

/// One fresh Call-ID every `GAP` in the background stream.
const GAP: Duration = Duration::from_millis(1);

// Slack, each for something named; none of it is a past measurement.
/// How long before its verdict is counted a probe may have started: building
/// and sending it, the answer's round trip, and the daemon's event queue (probe
/// tasks and the loop that counts verdicts share one thread, on two shared cores).
const EARLY: Duration = Duration::from_millis(50);
/// How late probes and verdicts may run: a probe starts at `sleep_until(previous
/// start + interval)`, which never fires early but may fire late (millisecond
/// timer ticks, the daemon's one thread waiting for a core), and a verdict into
/// or out of `down` rebuilds the tables (an RCU grace period) before the CLI sees it.
const LATE: Duration = Duration::from_millis(120);
/// From a datagram's send to the XDP program reading it: veth queues and NAPI
/// threads on two shared cores.
const TRANSIT: Duration = Duration::from_millis(50);
/// How long before its death a killed Kamailio may have received datagrams it
/// never read: its workers wait for a core on a loaded machine.
const UNREAD: Duration = Duration::from_millis(200);
/// How far from the timeout a server answers to show which side of it the
/// daemon puts the answer: Kamailio's `usleep` and the prober's timer, each
/// late by a scheduling delay at most.
const MARGIN: Duration = Duration::from_millis(40);
/// Between two looks through the CLI (each look is a process and a request).
const POLL_PAUSE: Duration = Duration::from_millis(5);
/// Added to the limit of a wait whose duration is not what is tested: a
/// machine this loaded may stall the daemon for a while.
const STALL: Duration = Duration::from_secs(5);

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

/// One look at a backend's row through the CLI: the daemon read it somewhere
/// between `asked` and `answered`.
struct Look {
    asked: Instant,
    answered: Instant,
    row: Value,
}

impl Look {
    fn take(inst: &str, b: SocketAddr) -> Look {
        let asked = Instant::now();
        let (_, row) = state(inst, b);
        Look {
            asked,
            answered: Instant::now(),
            row,
        }
    }

    fn n(&self, field: &str) -> u64 {
        self.row[field].as_u64().unwrap_or(0)
    }

    fn state(&self) -> &str {
        self.row["state"].as_str().unwrap_or("absent")
    }

    fn successes(&self) -> u64 {
        self.n("probes") - self.n("probe_failures")
    }
}

/// When a condition on a backend's row came true, as closely as looking can
/// tell: after `after` (it still failed at a look asked then, or the caller
/// knew it failed then) and before `seen.answered`.
struct Change {
    after: Instant,
    /// The last look where it did not hold, if there was one.
    before: Option<Look>,
    seen: Look,
}

impl Change {
    fn by(&self) -> Instant {
        self.seen.answered
    }

    /// Asserts that this change happened `d` after the event `from` (whose own
    /// time is known as closely as `from` says), give or take [`EARLY`] and
    /// [`LATE`] and the looks' own widths.
    fn assert_after(&self, from: &Change, d: Duration, what: &str, died: Instant) {
        let earliest = from.after + d - EARLY;
        let latest = from.by() + d + LATE;
        let at = |t: Instant| t.saturating_duration_since(died).as_millis();
        eprintln!(
            "{what}: {}-{} ms after the death (allowed {}-{})",
            at(self.after),
            at(self.by()),
            at(earliest),
            at(latest)
        );
        assert!(
            self.by() >= earliest,
            "{what} too early: by {} ms after the death, not before {} ms: {}",
            at(self.by()),
            at(earliest),
            self.seen.row
        );
        assert!(
            self.after <= latest,
            "{what} too late: after {} ms after the death, due by {} ms: {}",
            at(self.after),
            at(latest),
            self.seen.row
        );
    }
}

/// Looks at `b` until `cond` holds on its row, failing after `limit`. `since`:
/// a moment the caller knows `cond` did not hold yet.
fn await_row(
    inst: &str,
    b: SocketAddr,
    since: Instant,
    limit: Duration,
    what: &str,
    cond: impl Fn(&Look) -> bool,
) -> Change {
    let t0 = Instant::now();
    let mut before: Option<Look> = None;
    loop {
        let l = Look::take(inst, b);
        if cond(&l) {
            return Change {
                after: before.as_ref().map_or(since, |b| b.asked),
                before,
                seen: l,
            };
        }
        assert!(
            l.answered - t0 < limit,
            "{b}: not {what} within {limit:?}: {}",
            l.row
        );
        before = Some(l);
        std::thread::sleep(POLL_PAUSE);
    }
}

/// Looks at `b`, down and about to answer again (`base` was taken while it was
/// down), until it is active, at most `limit` plus `rise` verdicts. Returns the
/// start of its last run of answers (the first answer after the last failure,
/// with the success count before it) and the change to `active`.
fn await_rise(inst: &str, b: SocketAddr, base: Look, limit: Duration) -> ((Change, u64), Change) {
    let t0 = Instant::now();
    let mut prev = base;
    let mut run: Option<(Change, u64)> = None;
    loop {
        let l = Look::take(inst, b);
        if l.n("probe_failures") > prev.n("probe_failures") {
            run = None;
        }
        let prev_asked = prev.asked;
        let prev_successes = prev.successes();
        if l.state() == "active" {
            // A look between the run's first answer and `active`: one answer
            // is not enough.
            let (start, n) = run.unwrap_or_else(|| {
                panic!("active with no look at it answering while down: {}", l.row)
            });
            return (
                (start, n),
                Change {
                    after: prev_asked,
                    before: Some(prev),
                    seen: l,
                },
            );
        }
        assert_eq!(l.state(), "down", "{}", l.row);
        if run.is_none() && l.successes() > prev_successes {
            run = Some((
                Change {
                    after: prev_asked,
                    before: None,
                    seen: Look {
                        asked: l.asked,
                        answered: l.answered,
                        row: l.row.clone(),
                    },
                },
                prev_successes,
            ));
        }
        assert!(
            t0.elapsed() < limit + patience(RISE),
            "{b}: not active within {limit:?}: {}",
            l.row
        );
        prev = l;
        std::thread::sleep(POLL_PAUSE);
    }
}

/// Waits until `b` is in `want`, at most `limit`.
fn wait_state(inst: &str, b: SocketAddr, want: &str, limit: Duration) {
    await_row(inst, b, Instant::now(), limit, want, |l| l.state() == want);
}

/// How long probes take to mark a backend down once it stops answering (from
/// any state), or up once it answers: `n` probes, one interval apart, the last
/// waiting out its timeout.
fn verdicts(n: u32) -> Duration {
    INTERVAL * n + TIMEOUT + LATE
}

/// The limit of a wait for `n` verdicts whose timing is not the claim.
fn patience(n: u32) -> Duration {
    verdicts(n) + STALL
}

fn stats(inst: &str) -> Value {
    serde_json::from_str(&cli_ok(inst, &["stats", "--json"])).unwrap()
}

/// Which backend saw each of `ids`, all answered, so each reached exactly one.
/// Kamailio logs a request before answering it, but the log reaches this
/// process through a pipe and a reader thread: the last ones are awaited.
fn holders(servers: &[&Kamailio], ids: &[String]) -> HashMap<String, usize> {
    let t0 = Instant::now();
    loop {
        let seen: Vec<HashMap<String, u32>> = servers.iter().map(|k| k.seen()).collect();
        let got: HashMap<String, usize> = ids
            .iter()
            .filter_map(|id| {
                let h: Vec<usize> = (0..seen.len())
                    .filter(|&b| seen[b].contains_key(id))
                    .collect();
                assert!(h.len() <= 1, "{id} reached backends {h:?}");
                h.first().map(|b| (id.clone(), *b))
            })
            .collect();
        if got.len() == ids.len() {
            return got;
        }
        assert!(
            t0.elapsed() < STALL,
            "{} answered Call-IDs in no backend's log",
            ids.len() - got.len()
        );
        std::thread::sleep(POLL_PAUSE);
    }
}

fn ids(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}@10.0.1.2")).collect()
}

/// The service's table over these backends (weight 1 each), built by the
/// balancer's own code: which backend a fresh Call-ID goes to.
fn table(backends: &[usize]) -> impl Fn(&str) -> usize {
    let specs: Vec<balancer::model::BackendConfig> = backends
        .iter()
        .map(|&i| balancer::model::BackendConfig::new(backend(i)))
        .collect();
    let sel = balancer::select::Selector::build(&specs, 65537).unwrap();
    move |id: &str| {
        let addr = sel.whereis(id.as_bytes()).expect("a backend").address;
        (0..bed::MAX_BACKENDS)
            .find(|&i| backend(i) == addr)
            .unwrap()
    }
}

#[test]
fn probes_move_traffic_within_the_configured_fall_rise_and_timeout() {
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
        wait_state(&inst, backend(i), "active", patience(1));
    }

    // Probes go out every `interval`: four verdicts after a first one, the
    // fifth verdict comes four intervals after the first (each probe starts one
    // interval after the previous one started; the verdicts' own delays differ
    // by at most EARLY).
    let base = Look::take(&inst, backend(0));
    let count = |c: &Change| c.seen.n("probes");
    let first = await_row(&inst, backend(0), base.asked, patience(1), "probed", |l| {
        l.n("probes") > base.n("probes")
    });
    let mut last = first;
    let first = (last.after, last.by());
    for _ in 0..4 {
        let n = count(&last);
        last = await_row(
            &inst,
            backend(0),
            last.seen.asked,
            patience(1),
            "probed",
            |l| l.n("probes") > n,
        );
        assert_eq!(
            count(&last),
            n + 1,
            "one probe at a time: {}",
            last.seen.row
        );
    }
    let (lo, hi) = (last.after - first.1, last.by() - first.0);
    eprintln!("four probe intervals: {lo:?}-{hi:?}");
    assert!(
        hi >= INTERVAL * 4 - EARLY && lo <= INTERVAL * 4 + LATE + EARLY,
        "four probe intervals took {lo:?}-{hi:?}, configured {:?}",
        INTERVAL * 4
    );
    let row2 = &last.seen.row;
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
        k[2].byes_seen() >= 1,
        "the answered test call was ended with a BYE"
    );
    assert!(
        k[2].seen().keys().any(|id| id.starts_with("bal-")),
        "probe INVITEs reached it"
    );

    let (dropped_before, _) = bed.drops(4);
    let stream = peers::Dialogs::start(&bed.ns("cli"), vip(), GAP, "bg");

    // 1. A backend dies.
    let before = ids("a", 600);
    let ans = peers::run_client(&bed.ns("cli"), vip(), &before, 1, 64);
    assert_eq!(ans.by_call_id.len(), 600);
    let first = holders(&[&k[0], &k[1], &k[2]], &before);

    // The prober starts a probe, waits at most `timeout` for its answer, then
    // sleeps until one `interval` after that probe started (prober.rs
    // `probe_loop`): probe j starts at s_j >= s_(j-1) + interval, a failure is
    // counted at s_j + timeout, and `fall` failures in a row make the backend
    // `down` (health.rs `Tracker::record`), which rebuilds the tables at once.
    // The backend is killed just after a probe k it answered and before probe
    // k+1 starts, so k+1 is the first failure and k+fall the one that marks
    // it down:
    //   trying at s_(k+1) + timeout    = s_k + interval + timeout
    //   down   at s_(k+fall) + timeout = s_k + fall * interval + timeout
    // each no earlier (timers never fire early) and at most LATE later. From
    // the death, which lies between s_k and s_(k+1):
    //   (fall - 1) * interval + timeout <= down - death <= fall * interval + timeout (+ LATE).
    // One failure more or fewer is one interval off; a timeout not applied, or
    // the default one, moves both verdicts by more than the slack.
    let base = Look::take(&inst, backend(1));
    let answered = await_row(&inst, backend(1), base.asked, patience(1), "probed", |l| {
        l.n("probes") > base.n("probes")
    });
    assert_eq!(
        (answered.seen.n("probe_failures"), answered.seen.state()),
        (base.n("probe_failures"), "active"),
        "the last probe before the death was answered: {}",
        answered.seen.row
    );
    let kill_at = Instant::now();
    k[1].stop();
    let died = Instant::now();
    assert!(
        died < answered.after + INTERVAL - EARLY,
        "killing took {:?}: probe k+1 may have started before the death",
        died - kill_at
    );
    let trying = await_row(
        &inst,
        backend(1),
        answered.seen.asked,
        patience(1),
        "failing",
        |l| l.state() != "active",
    );
    assert_eq!(trying.seen.state(), "trying", "{}", trying.seen.row);
    let down = await_row(
        &inst,
        backend(1),
        trying.seen.asked,
        patience(FALL),
        "down",
        |l| l.state() == "down",
    );
    trying.assert_after(&answered, INTERVAL + TIMEOUT, "first failure", died);
    down.assert_after(&answered, INTERVAL * FALL + TIMEOUT, "down", died);
    let (lo, hi) = (down.after - died, down.by() - kill_at);
    assert!(
        hi >= INTERVAL * (FALL - 1) + TIMEOUT && lo <= INTERVAL * FALL + TIMEOUT + LATE,
        "down {lo:?}-{hi:?} after the death: not {FALL} failures, {INTERVAL:?} apart, \
         each after {TIMEOUT:?}"
    );
    // Counted, not timed: fewer than `fall` failures left it up, `fall` took it down.
    let failures = |l: &Look| l.n("probe_failures") - base.n("probe_failures");
    let last_up = down.before.as_ref().expect("a look before it went down");
    assert!(
        failures(last_up) < u64::from(FALL) && failures(&down.seen) >= u64::from(FALL),
        "down after {} failures, still up after {}",
        failures(&down.seen),
        failures(last_up)
    );
    assert!(
        down.seen.row["last_probe"]
            .as_str()
            .unwrap()
            .contains("no answer"),
        "{}",
        down.seen.row
    );
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

    // 2. It comes back: active after `rise` answers in a row, and takes its
    // share. Probes keep going out every interval while it is down; the first
    // answered one after the last failure (r) starts the run, so
    //   active at s_(r+rise-1) + rtt = s_r + (rise - 1) * interval (+ rtt)
    // which one success too few or too many, or the default rise, misses by an
    // interval. (A server just started on a loaded machine may still answer a
    // probe too late: that failure starts the run over.) Watched from before
    // the restart.
    let base = Look::take(&inst, backend(1));
    assert_eq!(base.state(), "down");
    let (run, up) = std::thread::scope(|s| {
        let watch = s.spawn(|| await_rise(&inst, backend(1), base, Duration::from_secs(20)));
        k[1].restart();
        watch.join().unwrap()
    });
    up.assert_after(&run.0, INTERVAL * (RISE - 1), "back up", died);
    let successes = |l: &Look| l.successes() - run.1;
    let last_down = up.before.as_ref().unwrap_or(&run.0.seen);
    assert!(
        successes(last_down) < u64::from(RISE) && successes(&up.seen) >= u64::from(RISE),
        "up after {} successes in a row, still down after {}",
        successes(&up.seen),
        successes(last_down)
    );

    // Losses: the stream sends one fresh Call-ID every GAP; each is answered
    // once by the backend the table names, so a Call-ID is lost only if the
    // table still named backend 1 when it got there with backend 1 dead. That
    // is every Call-ID the full table gives backend 1 sent between the death
    // and the table's change (down), and no other: the upper bound is the send
    // rate times the detection window times backend 1's share, a third.
    let sent = stream.finish();
    let (dropped_after, where_dropped) = bed.drops(4);
    // The backends' logs caught up with every answer.
    let answered: Vec<String> = sent
        .ids
        .iter()
        .map(|(id, _)| id.clone())
        .filter(|id| sent.answers.contains_key(id))
        .collect();
    holders(&[&k[0], &k[1], &k[2]], &answered);

    let bed_lost = dropped_after - dropped_before;
    let full = table(&[0, 1, 2]);
    let window = |from: Instant, to: Instant| -> Vec<&String> {
        sent.ids
            .iter()
            .filter(|(id, t)| *t >= from && *t <= to && full(id) == 1)
            .map(|(id, _)| id)
            .collect()
    };
    let may_lose = window(kill_at - UNREAD, down.by());
    let must_lose = window(died, down.after - TRANSIT);
    let lost: Vec<&String> = sent
        .ids
        .iter()
        .map(|(id, _)| id)
        .filter(|id| !sent.answers.contains_key(*id))
        .collect();
    let rate = 1.0 / GAP.as_secs_f64();
    eprintln!(
        "background stream: {} sent, {} lost; expected {}-{} (at most about {:.0}: {rate}/s \
         for {:?}, a third of them to backend 1); the bed dropped {bed_lost}",
        sent.ids.len(),
        lost.len(),
        must_lose.len(),
        may_lose.len(),
        rate * (down.by() - kill_at + UNREAD).as_secs_f64() / 3.0,
        down.by() - kill_at + UNREAD,
    );
    assert!(sent.elsewhere.is_empty(), "{:?}", sent.elsewhere);
    let twice: Vec<_> = sent.answers.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "answered more than once: {twice:?}");
    let sent_at: HashMap<&String, Instant> = sent.ids.iter().map(|(id, t)| (id, *t)).collect();
    let when = |id: &String| -> String {
        let t = sent_at[id];
        match t.checked_duration_since(kill_at) {
            Some(d) => format!("{} ms after the kill", d.as_millis()),
            None => format!("{} ms before the kill", (kill_at - t).as_millis()),
        }
    };
    // Datagrams the bed's own veths dropped (the kernel counts them) are not
    // the balancer's: at most that many losses may be otherwise unexplained.
    // One sent before the kill is lost only if the server never read it.
    let read_by_1 = k[1].seen();
    let unexplained: Vec<String> = lost
        .iter()
        .filter(|id| {
            !may_lose.contains(id) || (sent_at[*id] < kill_at && read_by_1.contains_key(**id))
        })
        .map(|id| {
            format!(
                "{id}: sent {}, the table says backend {}",
                when(id),
                full(id)
            )
        })
        .collect();
    assert!(
        unexplained.len() as u64 <= bed_lost,
        "lost, but not sent to the dead backend before its detection (down {}-{} ms after \
         the kill), and the bed dropped only {bed_lost}:\n{}\n{where_dropped}",
        (down.after - kill_at).as_millis(),
        (down.by() - kill_at).as_millis(),
        unexplained.join("\n")
    );
    for id in &must_lose {
        assert!(
            lost.contains(id),
            "{id} answered, though sent to the dead backend before its detection: sent {}",
            when(id)
        );
    }
    assert!(!must_lose.is_empty(), "the stream reached the dead backend");
    // Per live backend: everything it received was answered (but for what the
    // bed dropped).
    for i in [0, 2] {
        let seen = k[i].seen();
        let unanswered: Vec<&&String> = lost.iter().filter(|id| seen.contains_key(**id)).collect();
        assert!(
            unanswered.len() as u64 <= bed_lost,
            "live backend {i} lost {unanswered:?}; the bed dropped {bed_lost}\n{where_dropped}"
        );
    }
    // While it was down nothing reached it; once back it took its share again.
    let seen1 = k[1].seen();
    for (id, t) in &sent.ids {
        if *t > down.by() && *t + TRANSIT < up.after {
            assert!(!seen1.contains_key(id), "{id} reached backend 1 while down");
        }
        if *t > up.by() && full(id) == 1 {
            assert!(
                seen1.contains_key(id),
                "{id} did not reach backend 1 once up"
            );
        }
    }

    k[1].clear();
    let later = ids("c", 1500);
    let ans = peers::run_client(&bed.ns("cli"), vip(), &later, 1, 64);
    assert_eq!(ans.by_call_id.len(), 1500);
    let got = holders(&[&k[0], &k[1], &k[2]], &later);
    for id in &later {
        assert_eq!(got[id], full(id), "{id} follows the full table again");
    }

    // 3. A backend that answers 503 is down.
    let mut k3 = Kamailio::start(&bed.backend_ns(3), backend(3), Behaviour::Reply(503));
    cli_ok(&inst, &["backend", "add", &backend(3).to_string()]);
    wait_state(&inst, backend(3), "down", patience(FALL));
    let (_, row) = state(&inst, backend(3));
    assert!(row["last_probe"].as_str().unwrap().contains("503"), "{row}");

    // 4. The timeout, to within MARGIN: a server answering MARGIN after it
    // fails (down after `fall` probes), one answering MARGIN before it succeeds
    // (back after `rise`).
    k3.stop();
    let mut k3 = Kamailio::start(&bed.backend_ns(3), backend(3), Behaviour::Normal);
    wait_state(&inst, backend(3), "active", patience(RISE));
    k3.stop();
    let mut slow = Kamailio::start(
        &bed.backend_ns(3),
        backend(3),
        Behaviour::Slow(TIMEOUT + MARGIN),
    );
    wait_state(&inst, backend(3), "down", patience(FALL));
    let (_, row) = state(&inst, backend(3));
    assert!(
        row["last_probe"].as_str().unwrap().contains("no answer"),
        "{row}"
    );
    slow.stop();
    let in_time = Kamailio::start(
        &bed.backend_ns(3),
        backend(3),
        Behaviour::Slow(TIMEOUT - MARGIN),
    );
    wait_state(&inst, backend(3), "active", patience(RISE));
    let (_, row) = state(&inst, backend(3));
    assert!(
        row["last_probe"].as_str().unwrap().contains("answered 200"),
        "{row}"
    );
    drop(in_time);

    // 5. A flapping one (every other probe answered) never reaches `down`
    // (fall > 1) and causes no table rebuilds, over 2 * fall probes: enough for
    // `fall` failures had they been counted in total rather than in a row.
    // (From `down` it would never come back either: rise > 1 needs answers in
    // a row.)
    // It is removed while its server is replaced (the probes would count the
    // gap as failures) and added again: a backend added starts up.
    cli_ok(&inst, &["backend", "remove", &backend(3).to_string()]);
    let flap = Kamailio::start(&bed.backend_ns(3), backend(3), Behaviour::Flap);
    cli_ok(&inst, &["backend", "add", &backend(3).to_string()]);
    let rebuilds = stats(&inst)["health_rebuilds"].as_u64().unwrap();
    let t0 = Instant::now();
    let mut seen_trying = false;
    while flap.options_seen() < 2 * FALL + 2 {
        let (s, _) = state(&inst, backend(3));
        assert!(
            s == "active" || s == "trying",
            "flapping backend went `{s}`"
        );
        seen_trying |= s == "trying";
        assert!(t0.elapsed() < patience(2 * FALL + 2), "probes stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(seen_trying, "the flapping backend's failures were seen");
    assert_eq!(
        stats(&inst)["health_rebuilds"].as_u64().unwrap(),
        rebuilds,
        "no table churn"
    );

    // 6. All backends down: the datagrams are dropped and counted.
    drop(flap);
    for s in k.iter_mut() {
        s.stop();
    }
    for i in 0..4 {
        wait_state(&inst, backend(i), "down", patience(FALL));
    }
    let drops = stats(&inst)["reasons"]["no_backend"].as_u64().unwrap();
    let lost = peers::run_client(&bed.ns("cli"), vip(), &ids("d", 50), 1, 50);
    assert!(lost.by_call_id.is_empty());
    let after = stats(&inst)["reasons"]["no_backend"].as_u64().unwrap();
    assert_eq!(after - drops, 50, "every datagram counted as no_backend");
    assert!(d.stop());
}
