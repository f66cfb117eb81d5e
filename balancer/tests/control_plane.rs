//! The daemon and its CLI, end to end in the netns bed: changes while traffic
//! flows, a crash and hitless restart, bad input refused whole.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use balancer_test_support::daemon::{cli, cli_ok, Daemon};
use balancer_test_support::{bed, daemon, peers};
use serde_json::Value;

fn require_root() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "run as root (cargo xtask test)"
    );
}

fn vip() -> SocketAddr {
    format!("{}:5060", bed::VIP).parse().unwrap()
}

fn backend(i: usize) -> String {
    format!("{}:5060", bed::backend_ip(i))
}

fn json(instance: &str, args: &[&str]) -> Value {
    serde_json::from_str(&cli_ok(instance, args)).expect("JSON output")
}

/// Sends `n` fresh Call-IDs once each; returns, per backend index, the Call-IDs
/// it received, after checking each went to exactly the backend `whereis` names.
fn phase(bed: &bed::Bed, inst: &str, uas: &[peers::Uas], tag: &str, n: usize) -> Vec<usize> {
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}@10.0.1.2")).collect();
    let answers = peers::run_client(&bed.ns("cli"), vip(), &ids, 1, 64);
    assert_eq!(
        answers.by_call_id.len(),
        n,
        "{tag}: every Call-ID answered\n{}",
        bed.diagnose()
    );
    let seen: Vec<HashMap<String, u32>> =
        uas.iter().map(|u| u.seen.lock().unwrap().clone()).collect();
    let mut per = vec![0usize; uas.len()];
    for (k, id) in ids.iter().enumerate() {
        let holders: Vec<usize> = (0..uas.len())
            .filter(|&b| seen[b].contains_key(id))
            .collect();
        assert_eq!(holders.len(), 1, "{id} reached {holders:?}");
        per[holders[0]] += 1;
        // `whereis` reads the live kernel table: it must name the same backend.
        if k % 10 == 0 {
            let w = cli_ok(inst, &["whereis", id]);
            assert_eq!(w.trim(), backend(holders[0]), "{id}: whereis agrees");
        }
    }
    per
}

fn assert_shares(per: &[usize], want: &[f64], what: &str) {
    let total: usize = per.iter().sum();
    for (b, (&n, &w)) in per.iter().zip(want).enumerate() {
        let share = n as f64 / total as f64;
        assert!(
            (share - w).abs() < 0.04,
            "{what}: backend {b} got {share:.3}, expected {w:.3}: {per:?}"
        );
    }
}

#[test]
fn backends_change_while_traffic_flows() {
    require_root();
    let inst = format!("cp{}", std::process::id());
    let bed = bed::Bed::new(&inst, 4);
    let uas: Vec<peers::Uas> = (0..4)
        .map(|i| peers::Uas::start(&bed.backend_ns(i), "0.0.0.0:5060"))
        .collect();
    let args = bed::Bed::attach_args("dnat", &inst, &[backend(0), backend(1), backend(2)]);
    let d = Daemon::start(&bed.ns("lb"), &args);

    // Only root may talk to the daemon.
    let sock = format!("/run/balancer/{inst}.sock");
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{sock} is 0600");
    let as_nobody = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(daemon::balancer_bin())
        .args(["--instance", &inst, "service", "list"])
        .output()
        .unwrap();
    assert!(!as_nobody.status.success());
    let err = String::from_utf8_lossy(&as_nobody.stderr);
    assert!(err.contains("ermission denied"), "{err}");

    let stream = peers::Stream::start(&bed.ns("cli"), vip(), Duration::from_micros(500), "bg");

    let per = phase(&bed, &inst, &uas, "p0", 3000);
    assert_shares(&per[..3], &[1.0 / 3.0; 3], "three backends");
    assert_eq!(per[3], 0);

    let out = cli_ok(&inst, &["backend", "add", &backend(3)]);
    assert!(out.contains("added"), "{out}");
    let per = phase(&bed, &inst, &uas, "p1", 4000);
    assert_shares(&per, &[0.25; 4], "backend 3 added");

    cli_ok(&inst, &["backend", "drain", &backend(1)]);
    let per = phase(&bed, &inst, &uas, "p2", 3000);
    assert_eq!(per[1], 0, "a draining backend takes no new dialogs");
    assert_shares(
        &[per[0], per[2], per[3]],
        &[1.0 / 3.0; 3],
        "backend 1 draining",
    );

    cli_ok(&inst, &["backend", "remove", &backend(2)]);
    cli_ok(&inst, &["backend", "set-weight", &backend(0), "3"]);
    let per = phase(&bed, &inst, &uas, "p3", 4000);
    assert_eq!(per[1] + per[2], 0);
    assert_shares(&[per[0], per[3]], &[0.75, 0.25], "weights 3:1");

    let (sent, answered, wrong) = stream.finish();
    eprintln!("background stream: {sent} sent, {answered} answered, {wrong} from elsewhere");
    assert!(sent > 1000);
    // Datagrams already at backend 2 when it was removed may answer after its
    // reverse-NAT entry is gone; nothing else may be lost.
    assert!(
        sent - answered <= 3,
        "{sent} sent, {answered} answered\n{}",
        bed.diagnose()
    );

    // The state as the CLI shows it, and as the file holds it.
    let list = json(&inst, &["backend", "list", "--json"]);
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let row = |a: &str| rows.iter().find(|r| r["address"] == a).unwrap().clone();
    assert_eq!(row(&backend(0))["weight"], 3);
    assert_eq!(row(&backend(1))["state"], "draining");
    assert_eq!(row(&backend(3))["state"], "active");
    assert!(row(&backend(0))["packets"].as_u64().unwrap() > 3000);
    assert!(row(&backend(0))["bytes"].as_u64().unwrap() > 300_000);
    assert_eq!(row(&backend(0))["service"], vip().to_string());
    let svc = json(&inst, &["service", "list", "--json"]);
    assert_eq!(svc[0]["vip"], vip().to_string());
    assert_eq!(svc[0]["backends"], 3);
    assert_eq!(svc[0]["algorithm"], "call-id");
    let stats = json(&inst, &["stats", "--json"]);
    assert!(stats["reasons"]["callid"].as_u64().unwrap() >= 14000);
    assert!(stats["reasons"]["reverse_nat"].as_u64().unwrap() >= 14000);
    let w = json(&inst, &["whereis", "--json", "abc@host"]);
    assert_eq!(w["service"], vip().to_string());
    assert!(w["backend"].is_string());

    let saved = std::fs::read_to_string(bed::config_path(&inst)).unwrap();
    assert!(
        saved.contains(&backend(3)) && !saved.contains(&backend(2)),
        "{saved}"
    );
    assert!(
        saved.contains("state = \"draining\"") && saved.contains("weight = 3"),
        "{saved}"
    );

    assert!(d.stop(), "detaches cleanly on SIGTERM");
    assert!(!std::path::Path::new(&sock).exists(), "socket removed");
}

#[test]
fn a_crashed_daemon_restarts_without_losing_a_datagram() {
    require_root();
    let inst = format!("rs{}", std::process::id());
    let bed = bed::Bed::new(&inst, 2);
    let _uas: Vec<peers::Uas> = (0..2)
        .map(|i| peers::Uas::start(&bed.backend_ns(i), "0.0.0.0:5060"))
        .collect();
    let conf = bed::config_path(&inst);
    std::fs::write(
        &conf,
        format!(
            "interfaces = [\"l0\"]\n\n[[service]]\nvip = \"{}\"\n\n[[service.backend]]\naddress = \"{}\"\n\n[[service.backend]]\naddress = \"{}\"\nweight = 2\n",
            vip(),
            backend(0),
            backend(1)
        ),
    )
    .unwrap();
    let run = ["run", "--config", &conf, "--persist", "--instance", &inst].map(String::from);
    let d = Daemon::start(&bed.ns("lb"), &run);
    cli_ok(&inst, &["backend", "drain", &backend(0)]);
    cli_ok(&inst, &["backend", "enable", &backend(0)]);
    cli_ok(&inst, &["backend", "set-weight", &backend(0), "3"]);
    let before = json(&inst, &["backend", "list", "--json"]);

    let stream = peers::Stream::start(&bed.ns("cli"), vip(), Duration::from_micros(200), "rs");
    std::thread::sleep(Duration::from_millis(700));
    d.crash();
    std::thread::sleep(Duration::from_millis(700));
    let d = Daemon::start(&bed.ns("lb"), &run);
    std::thread::sleep(Duration::from_millis(700));
    let (sent, answered, wrong) = stream.finish();
    eprintln!(
        "across the crash and restart: {sent} sent, {answered} answered, {wrong} from elsewhere"
    );
    assert!(sent > 3000, "the stream ran ({sent})");
    assert_eq!(
        (answered, wrong),
        (sent, 0),
        "zero datagrams lost\n{}",
        bed.diagnose()
    );

    let after = json(&inst, &["backend", "list", "--json"]);
    let strip = |v: &Value| -> Vec<(String, String, u64)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["address"].as_str().unwrap().to_string(),
                    r["state"].as_str().unwrap().to_string(),
                    r["weight"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        strip(&before),
        strip(&after),
        "same state after the restart"
    );
    // Counters live in the pinned maps: they carried on.
    let total = |v: &Value| -> u64 {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["packets"].as_u64().unwrap())
            .sum()
    };
    assert!(total(&after) >= sent as u64, "{after}");

    // With --persist, SIGTERM leaves the data plane; `detach` removes it all.
    drop(d);
    let pins = format!("/sys/fs/bpf/balancer/{inst}");
    assert!(std::path::Path::new(&pins).exists());
    let out = cli_ok(&inst, &["detach"]);
    assert!(out.contains("detached"), "{out}");
    assert!(!std::path::Path::new(&pins).exists(), "pins removed");
    let link = std::process::Command::new("ip")
        .args(["-n", &bed.ns("lb"), "-d", "link", "show", "l0"])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("prog/xdp"), "XDP detached from l0: {link}");
}

#[test]
fn bad_input_is_refused_whole() {
    require_root();
    let inst = format!("bad{}", std::process::id());
    let bed = bed::Bed::new(&inst, 2);
    let conf = bed::config_path(&inst);

    // A malformed configuration: the daemon does not start, and says where.
    std::fs::write(
        &conf,
        "interfaces = [\"l0\"]\n[[service]]\nvip = 10.0.0.10:5060\n",
    )
    .unwrap();
    let o = daemon::in_netns(&bed.ns("lb"))
        .args(["run", "--config", &conf, "--instance", &inst])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 3"), "{err}");

    std::fs::remove_file(&conf).unwrap();
    let args = bed::Bed::attach_args("dnat", &inst, &[backend(0)]);
    let d = Daemon::start(&bed.ns("lb"), &args);
    // What a refused command must not change: the configuration as the daemon
    // holds it and as the file says (health comes and goes on its own).
    let state = || {
        let v = json(&inst, &["backend", "list", "--json"]);
        let rows: Vec<(String, String, u64)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["address"].as_str().unwrap().to_string(),
                    r["service"].as_str().unwrap().to_string(),
                    r["weight"].as_u64().unwrap(),
                )
            })
            .collect();
        (rows, std::fs::read(&conf).unwrap())
    };
    let before = state();

    let refused = |args: &[&str], says: &str| {
        let (ok, _, err) = cli(&inst, args);
        assert!(!ok, "{args:?} must fail");
        assert!(err.contains(says), "{args:?}: `{err}` should say `{says}`");
        assert_eq!(state(), before, "{args:?} changed nothing");
    };
    refused(&["backend", "add", &backend(0)], "already");
    refused(
        &["backend", "add", "--service", "10.0.0.99:5060", &backend(1)],
        "no service 10.0.0.99:5060",
    );
    refused(&["backend", "add", "[fd00::1]:5060"], "IPv6");
    refused(&["backend", "add", "10.0.2.12"], "IP:PORT");
    refused(&["backend", "set-weight", &backend(0), "70000"], "65535");
    refused(
        &["service", "add", "10.0.0.11:5060", "--table-size", "100"],
        "prime",
    );

    let list = format!("/tmp/{inst}-dispatcher.list");
    std::fs::write(
        &list,
        format!(
            "# set 1\n1 sip:{} 0 0 weight=2\n1 sip:asterisk.example.com 0\n",
            backend(1)
        ),
    )
    .unwrap();
    refused(&["import-dispatcher", &list], "line 3");
    std::fs::write(
        &list,
        format!("1 sip:{} 0x8 0 weight=2;maxload=20\n", backend(1)),
    )
    .unwrap();
    let (ok, out, err) = cli(&inst, &["import-dispatcher", &list]);
    let _ = std::fs::remove_file(&list);
    assert!(ok, "{err}");
    assert!(out.contains(&backend(1)), "{out}");
    assert!(
        err.contains("maxload") && err.contains("0x8"),
        "unsupported parts are reported: {err}"
    );
    let rows = json(&inst, &["backend", "list", "--json"]);
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert!(d.stop());
}
