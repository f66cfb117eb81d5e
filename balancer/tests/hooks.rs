//! `[hooks] backend_state`: the command runs with the backend, its old and
//! its new state on every change, health's (a backend stops answering) and
//! the operator's (`backend disable`, a backend added), and not at start.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use balancer_test_support::bed::{self, Bed};
use balancer_test_support::daemon::{cli_ok, Daemon};
use balancer_test_support::netns::require_root;
use balancer_test_support::peers::Uas;
use balancer_test_support::until;

fn backend(i: usize) -> String {
    format!("{}:5060", bed::backend_ip(i))
}

#[test]
fn the_hook_hears_every_backend_state_change() {
    require_root();
    let bed = Bed::new("hok", 3);
    let inst = "test-hooks";
    let dir = std::env::temp_dir().join(format!("balancer-hooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("calls");
    let hook = dir.join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$BALANCER_INSTANCE $BALANCER_SERVICE $1 $2 $3\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut uas: Vec<Option<Uas>> = (0..2)
        .map(|i| Some(Uas::start(&bed.backend_ns(i), &backend(i))))
        .collect();
    let args = Bed::attach_args("dnat", inst, &[backend(0), backend(1)]);
    let path = bed::config_path(inst);
    let text = std::fs::read_to_string(&path).unwrap()
        + &format!(
            "\n[health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nfall = 2\nrise = 1\n\n[hooks]\nbackend_state = \"{}\"\n",
            hook.display()
        );
    std::fs::write(&path, text).unwrap();
    let d = Daemon::start(&bed.ns("lb"), &args);
    let calls = || std::fs::read_to_string(&log).unwrap_or_default();
    let heard = |line: &str| {
        until(Duration::from_secs(5), Duration::from_millis(50), || {
            calls().contains(line)
        })
    };
    let vip = format!("{}:5060", bed::VIP);

    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(calls(), "", "a hook ran at start");

    // Health: backend 0 stops answering.
    uas[0] = None;
    assert!(
        heard(&format!("{inst} {vip} {} active trying", backend(0))),
        "{}",
        calls()
    );
    assert!(heard(&format!("{} trying down", backend(0))), "{}", calls());

    // The operator: disable, and add.
    cli_ok(inst, &["backend", "disable", &backend(1)]);
    assert!(
        heard(&format!("{} active disabled", backend(1))),
        "{}",
        calls()
    );
    cli_ok(inst, &["backend", "add", &backend(2)]);
    assert!(heard(&format!("{} none ", backend(2))), "{}", calls());
    cli_ok(inst, &["backend", "remove", &backend(2)]);
    let removed = || {
        calls()
            .lines()
            .any(|l| l.contains(&backend(2)) && l.ends_with(" removed"))
    };
    assert!(
        until(Duration::from_secs(5), Duration::from_millis(50), removed),
        "{}",
        calls()
    );

    assert!(d.stop());
    let _ = std::fs::remove_dir_all(&dir);
}
