//! Forged answers to health probes never keep a dead backend up (issue 14).
//!
//! The netns bed with one backend whose SIP server (Kamailio) is killed: its
//! host stays up, so probes reach it and nothing answers. An attacker that sees
//! every probe as it arrives at the backend (a capture on the backend's own
//! interface: more than an off-path attacker knows) answers each one at once
//! with `200 OK`:
//!
//! - with the probe's own Call-ID, branch and CSeq, from a client-side address
//!   (to the balancer's backend-side and client-side addresses, the probe's port);
//! - from the backend's own address and port (spoofed), with identifiers it
//!   does not know: the old `pid-seq` scheme guessed around the probe count,
//!   the right Call-ID with another branch, the right branch with another Call-ID.
//!
//! None may count as a success. Then, as the control that shows the forger is
//! fast enough for the above to mean something, the exact answer from the
//! backend's address (what only someone who sees the probes can send) does
//! bring it back up.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use balancer_test_support::bed;
use balancer_test_support::daemon::{cli_ok, Daemon};
use balancer_test_support::forge::{in_netns, Capture, Captured, Injector};
use balancer_test_support::kamailio::{Behaviour, Kamailio};
use serde_json::Value;

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(150);
const FALL: u32 = 2;
/// One accepted answer is enough to bring the backend up: the most sensitive
/// setting for forgeries.
const RISE: u32 = 1;
/// How long the attacker forges answers of one kind to every probe.
const FORGING: Duration = Duration::from_secs(2);
/// Added to the limit of a wait whose duration is not what is tested.
const STALL: Duration = Duration::from_secs(5);

fn backend() -> SocketAddr {
    format!("{}:5060", bed::backend_ip(0)).parse().unwrap()
}

fn row(inst: &str) -> Value {
    let v: Value = serde_json::from_str(&cli_ok(inst, &["backend", "list", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == backend().to_string())
        .cloned()
        .unwrap_or(Value::Null)
}

fn successes(r: &Value) -> u64 {
    r["probes"].as_u64().unwrap() - r["probe_failures"].as_u64().unwrap()
}

fn wait_state(inst: &str, want: &str, limit: Duration) {
    let t0 = Instant::now();
    loop {
        let r = row(inst);
        if r["state"] == want {
            return;
        }
        assert!(t0.elapsed() < limit, "not {want} within {limit:?}: {r}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn header(msg: &str, name: &str) -> String {
    msg.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// A `200 OK` to `probe` with its Via's branch replaced by `branch` and its
/// Call-ID by `call_id` (when given).
fn ok(probe: &str, branch: Option<&str>, call_id: Option<&str>) -> Vec<u8> {
    let mut via = header(probe, "Via:");
    if let Some(b) = branch {
        let start = via.find("branch=").unwrap() + "branch=".len();
        let end = via[start..].find(';').map_or(via.len(), |e| start + e);
        via.replace_range(start..end, b);
    }
    format!(
        "SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: {}\r\nTo: {};tag=forged\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
        header(probe, "From:"),
        header(probe, "To:"),
        call_id.map_or_else(|| header(probe, "Call-ID:"), str::to_string),
        header(probe, "CSeq:"),
    )
    .into_bytes()
}

/// Answers every probe that arrives at the backend for `d` with `forge(probe,
/// its number, its source)`; returns the number of probes answered.
fn forge_for(cap: &Capture, d: Duration, mut forge: impl FnMut(&str, usize, SocketAddr)) -> usize {
    let (mut done, end) = (cap.seen().len(), Instant::now() + d);
    let mut answered = 0;
    while Instant::now() < end {
        let seen = cap.seen();
        for c in &seen[done..] {
            let Captured { src, dst, payload } = c;
            let msg = String::from_utf8_lossy(payload);
            if *dst == backend() && msg.starts_with("OPTIONS ") {
                answered += 1;
                forge(&msg, answered, *src);
            }
        }
        done = seen.len();
        std::thread::sleep(Duration::from_micros(500));
    }
    answered
}

/// Forges answers to every probe for [`FORGING`] with `forge`; asserts that
/// the backend stays down throughout and that no probe counted as a success.
fn never_counted(
    inst: &str,
    cap: &Capture,
    what: &str,
    mut forge: impl FnMut(&str, usize, SocketAddr),
) {
    let before = row(inst);
    let probes = forge_for(cap, FORGING, |probe, n, src| {
        forge(probe, n, src);
        let r = row(inst);
        assert_eq!(r["state"], "down", "{what}, probe {n}: {r}");
    });
    let after = row(inst);
    eprintln!("{what}: {probes} probes answered, none counted");
    let min_probes = (FORGING.as_millis() / INTERVAL.as_millis()) as usize / 2;
    assert!(
        probes >= min_probes,
        "{what}: only {probes} probes seen in {FORGING:?}"
    );
    assert_eq!(after["state"], "down", "{what}: {after}");
    assert_eq!(
        successes(&after),
        successes(&before),
        "{what}: counted as an answer: {before} then {after}"
    );
}

#[test]
fn forged_answers_never_keep_a_dead_backend_up() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "run as root (cargo xtask test)"
    );
    let inst = format!("fa{}", std::process::id());
    let bed = bed::Bed::new(&inst, 1);
    let mut k = Kamailio::start(&bed.backend_ns(0), backend(), Behaviour::Normal);
    let conf = bed::config_path(&inst);
    std::fs::write(
        &conf,
        format!(
            "interfaces = [\"l0\"]\n\n[health]\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nfall = {FALL}\nrise = {RISE}\n\n\
             [[service]]\nvip = \"{}:5060\"\n\n[[service.backend]]\naddress = \"{}\"\n",
            INTERVAL.as_millis(),
            TIMEOUT.as_millis(),
            bed::VIP,
            backend(),
        ),
    )
    .unwrap();
    let d = Daemon::start(
        &bed.ns("lb"),
        &["run", "--config", &conf, "--instance", &inst].map(String::from),
    );
    let verdicts = |n: u32| INTERVAL * n + TIMEOUT + STALL;
    wait_state(&inst, "active", verdicts(RISE));

    // The SIP server dies; its host answers probes with nothing at all.
    k.stop();
    wait_state(&inst, "down", verdicts(FALL));

    let cap = Capture::start(&bed.backend_ns(0), "e0");
    let spoof = Injector::new(&bed.backend_ns(0), "e0", &bed.ns("lb"), "l1");
    let client = in_netns(&bed.ns("cli"), || {
        UdpSocket::bind(format!("{}:5060", bed::CLIENT)).unwrap()
    });

    // Each kind of forgery on its own, so that each is seen to fail by itself.
    // Answers to the client-side address find no socket at all (the probes'
    // is bound to the backend-side address); the prober drops the others,
    // which the backend's state shows.
    let mut to_client_side = 0u64;
    let no_ports = bed::udp_counter(&bed.ns("lb"), "NoPorts");
    never_counted(
        &inst,
        &cap,
        "the right identifiers from a client-side address",
        |probe, _, src| {
            let exact = ok(probe, None, None);
            for lb in [bed::LB_BACKEND_SIDE, bed::LB_CLIENT_SIDE] {
                let to: SocketAddr = format!("{lb}:{}", src.port()).parse().unwrap();
                client.send_to(&exact, to).unwrap();
                to_client_side += u64::from(lb == bed::LB_CLIENT_SIDE);
            }
        },
    );
    let refused = bed::udp_counter(&bed.ns("lb"), "NoPorts") - no_ports;
    assert!(
        refused >= to_client_side,
        "answers to the client-side address are refused by the kernel: {refused} of {to_client_side}"
    );

    let pid = d.pid();
    never_counted(
        &inst,
        &cap,
        "the old pid-seq identifiers from the backend's address",
        |probe, n, src| {
            let host = header(probe, "Call-ID:")
                .split('@')
                .nth(1)
                .unwrap_or("")
                .to_string();
            // `bal-<pid>-<seq>@<host>` and `z9hG4bK-bal-<pid>-<seq>`, seq counting
            // the prober's probes since its start: guessed around the probes seen.
            for seq in n.saturating_sub(30)..n + 60 {
                let tag = format!("{pid:x}-{seq:x}");
                let f = ok(
                    probe,
                    Some(&format!("z9hG4bK-bal-{tag}")),
                    Some(&format!("bal-{tag}@{host}")),
                );
                spoof.udp(backend(), src, &f);
            }
        },
    );
    never_counted(
        &inst,
        &cap,
        "the right Call-ID with another branch, from the backend's address",
        |probe, _, src| {
            spoof.udp(
                backend(),
                src,
                &ok(probe, Some("z9hG4bK-bal-0123456789abcdef"), None),
            );
        },
    );
    never_counted(
        &inst,
        &cap,
        "the right branch with another Call-ID, from the backend's address",
        |probe, _, src| {
            let host = header(probe, "Call-ID:")
                .split('@')
                .nth(1)
                .unwrap_or("")
                .to_string();
            let f = ok(probe, None, Some(&format!("bal-0123456789abcdef@{host}")));
            spoof.udp(backend(), src, &f);
        },
    );
    let after = row(&inst);

    // The control: the exact answer from the backend's own address counts, so
    // the forgeries above arrived in time to be judged.
    let exact = forge_for(&cap, INTERVAL * 5, |probe, _, src| {
        spoof.udp(backend(), src, &ok(probe, None, None));
    });
    let control = row(&inst);
    assert!(exact >= 2, "only {exact} probes in the control");
    assert!(
        successes(&control) > successes(&after) && control["state"] == "active",
        "the exact answer from the backend's address counts: {after} then {control}"
    );
    drop(cap);
    drop(d);
    bed.cleanup();
    let _ = std::fs::remove_file(&conf);
}
