//! The daemon's log: under systemd's journal (`JOURNAL_STREAM` set) every
//! line carries its syslog priority (`<6>` information, `<4>` warning...);
//! `--log-level warn` leaves information out; elsewhere a warning says so.

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::Duration;

use balancer_test_support::bed::{self, Bed};
use balancer_test_support::daemon::{cli_ok, in_netns};
use balancer_test_support::netns::require_root;
use balancer_test_support::peers::Uas;

/// Runs the daemon with `extra` arguments and environment, makes one change,
/// detaches, and returns what it wrote to stderr.
fn run(bed: &Bed, inst: &str, extra: &[&str], env: &[(&str, &str)]) -> String {
    let backend = format!("{}:5060", bed::backend_ip(0));
    let mut args = Bed::attach_args("dnat", inst, std::slice::from_ref(&backend));
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = in_netns(&bed.ns("lb"));
    cmd.args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.starts_with("ready"))),
        "the daemon never got ready"
    );
    cli_ok(inst, &["backend", "set-weight", &backend, "2"]);
    cli_ok(inst, &["detach"]);
    let status = child.wait().unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(50));
    reader.join().unwrap()
}

#[test]
fn lines_carry_their_level() {
    require_root();
    let bed = Bed::new("log", 1);
    let _uas = Uas::start(&bed.backend_ns(0), &format!("{}:5060", bed::backend_ip(0)));

    let journal = run(&bed, "test-log-j", &[], &[("JOURNAL_STREAM", "8:1234")]);
    assert!(!journal.is_empty());
    for l in journal.lines() {
        assert!(
            l.len() > 3 && l.starts_with('<') && l.as_bytes()[2] == b'>',
            "a journal line without its priority: {l:?}\n{journal}"
        );
    }
    assert!(
        journal
            .lines()
            .any(|l| l.starts_with("<6>") && l.contains("weight")),
        "{journal}"
    );

    let quiet = run(&bed, "test-log-w", &["--log-level", "warn"], &[]);
    assert!(
        !quiet.contains("weight"),
        "information at --log-level warn: {quiet}"
    );
    let env = run(&bed, "test-log-e", &[], &[("RUST_LOG", "warn")]);
    assert!(
        !env.contains("weight"),
        "information at RUST_LOG=warn: {env}"
    );
    let plain = run(&bed, "test-log-p", &[], &[]);
    assert!(plain.lines().any(|l| l.contains("weight")), "{plain}");
    assert!(!plain.contains("<6>"), "{plain}");
}
