//! `balancer top` when not on a terminal: one plain block per interval, with
//! each backend's rate, state and health, and the verdicts per second, read
//! while a client streams calls through the bed.

use std::time::Duration;

use balancer_test_support::bed::{self, Bed};
use balancer_test_support::daemon::{cli_ok, Daemon};
use balancer_test_support::netns::require_root;
use balancer_test_support::peers::{Stream, Uas};

#[test]
fn top_shows_rates_per_backend_and_per_verdict() {
    require_root();
    let bed = Bed::new("top", 2);
    let inst = "test-top";
    let backend = |i: usize| format!("{}:5060", bed::backend_ip(i));
    let _uas: Vec<Uas> = (0..2)
        .map(|i| Uas::start(&bed.backend_ns(i), &backend(i)))
        .collect();
    let d = Daemon::start(
        &bed.ns("lb"),
        &Bed::attach_args("dnat", inst, &[backend(0), backend(1)]),
    );
    let vip = format!("{}:5060", bed::VIP).parse().unwrap();
    let stream = Stream::start(&bed.ns("cli"), vip, Duration::from_millis(2), "top");
    let out = cli_ok(inst, &["top", "--interval", "500ms", "--count", "2"]);
    stream.finish();
    let blocks: Vec<&str> = out
        .split("balancer top: ")
        .filter(|b| !b.is_empty())
        .collect();
    assert_eq!(blocks.len(), 2, "{out}");
    assert!(!out.contains('\x1b'), "terminal codes on a pipe: {out:?}");
    let last = blocks[1];
    assert!(
        last.contains(&format!("service {}:5060", bed::VIP)),
        "{last}"
    );
    let rows: Vec<&str> = last
        .lines()
        .filter(|l| {
            l.trim_start()
                .starts_with(&bed::backend_ip(0).to_string()[..7])
        })
        .collect();
    assert_eq!(rows.len(), 2, "{last}");
    // Some backend took datagrams at a rate, and the client's were dispatched by Call-ID.
    let busy = rows.iter().any(|r| {
        r.split_whitespace()
            .nth(3)
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0)
    });
    assert!(busy, "{last}");
    assert!(
        rows.iter()
            .all(|r| r.contains("active") && r.contains(" up ")),
        "{last}"
    );
    assert!(
        last.contains("verdicts per second") && last.contains("callid"),
        "{last}"
    );
    assert!(d.stop());
}
