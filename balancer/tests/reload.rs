//! Reload: SIGHUP and `balancer reload` re-read the configuration file and
//! apply what differs, hitlessly: the daemon keeps running, the backends'
//! health is kept, a bad file changes nothing and says where it is wrong,
//! and what only a start reads is refused when it changed.

use std::time::Duration;

use balancer_test_support::bed::{self, Bed};
use balancer_test_support::daemon::{cli, cli_ok, Daemon};
use balancer_test_support::netns::require_root;
use balancer_test_support::peers::Uas;
use balancer_test_support::until;

fn backend(i: usize) -> String {
    format!("{}:5060", bed::backend_ip(i))
}

fn states(inst: &str) -> Vec<(String, String)> {
    let v: serde_json::Value =
        serde_json::from_str(&cli_ok(inst, &["backend", "list", "--json"])).unwrap();
    let mut out: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn sighup_and_reload_apply_the_file_and_keep_health() {
    require_root();
    let bed = Bed::new("rld", 3);
    let inst = "test-reload";
    let _uas: Vec<Uas> = (0..3)
        .map(|i| Uas::start(&bed.backend_ns(i), &backend(i)))
        .collect();
    let args = Bed::attach_args("dnat", inst, &[backend(0), backend(1)]);
    let path = bed::config_path(inst);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text += "\n[health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\n";
    std::fs::write(&path, &text).unwrap();
    let d = Daemon::start(&bed.ns("lb"), &args);
    let active = |n: usize| {
        let s = states(inst);
        s.len() == n && s.iter().all(|(_, st)| st == "active")
    };
    assert!(
        until(Duration::from_secs(5), Duration::from_millis(100), || {
            active(2)
        }),
        "{:?}",
        states(inst)
    );

    // A backend added by hand, then SIGHUP: applied; the daemon runs on and
    // the two it had are still active (their health was kept, not restarted).
    let written = std::fs::read_to_string(&path).unwrap();
    let added = format!(
        "{written}\n# added by hand\n[[service.backend]]\naddress = \"{}\"\n",
        backend(2)
    );
    std::fs::write(&path, &added).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    assert!(
        until(
            Duration::from_secs(5),
            Duration::from_millis(20),
            || states(inst).len() == 3
        ),
        "{:?}",
        states(inst)
    );
    let now = states(inst);
    assert_eq!(now[0].1, "active", "{now:?}");
    assert_eq!(now[1].1, "active", "{now:?}");
    assert!(
        until(Duration::from_secs(5), Duration::from_millis(100), || {
            active(3)
        }),
        "{:?}",
        states(inst)
    );
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("# added by hand"),
        "a reload does not rewrite the file"
    );

    // A CLI change keeps the operator's comment (the file is merged, not
    // rewritten).
    cli_ok(inst, &["backend", "set-weight", &backend(2), "3"]);
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(
        after.contains("# added by hand") && after.contains("weight = 3"),
        "{after}"
    );
    let added = after;

    // Nothing changed: said so.
    assert!(cli_ok(inst, &["reload"]).contains("nothing changed"));

    // A bad file: one line naming the line, nothing applied.
    std::fs::write(
        &path,
        format!(
            "{added}\n[[service.backend]]\naddress = \"{}\"\n",
            backend(2)
        ),
    )
    .unwrap();
    let (ok, _, err) = cli(inst, &["reload"]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("line ") && err.contains("already"), "{err}");
    assert_eq!(states(inst).len(), 3);

    // What only a start reads.
    std::fs::write(&path, format!("{added}\n[announce]\nenabled = true\n")).unwrap();
    let (ok, _, err) = cli(inst, &["reload"]);
    assert!(!ok);
    assert!(
        err.contains("[announce] changed") && err.contains("start only"),
        "{err}"
    );

    // A backend removed by `balancer reload`.
    std::fs::write(&path, &written).unwrap();
    let out = cli_ok(inst, &["reload"]);
    assert!(
        out.contains(&format!("backend {} removed", backend(2))),
        "{out}"
    );
    assert_eq!(states(inst).len(), 2);
    assert!(d.stop(), "the daemon did not stop cleanly");
}

/// Starts the daemon of `args` in `ns` and sends it `signal` half a second
/// in, while its first probe round still waits for a silent backend (2 s).
/// Returns the process, its stdout lines and its log (stderr) as it grows.
fn signalled_in_start(
    ns: &str,
    args: &[String],
    signal: i32,
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    std::sync::Arc<std::sync::Mutex<String>>,
) {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = balancer_test_support::daemon::in_netns(ns)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (err, sink) = (child.stderr.take().unwrap(), log.clone());
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("{l}");
            sink.lock().unwrap().push_str(&(l + "\n"));
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon ended before the signal"
    );
    assert!(lines.try_recv().is_err(), "ready before the signal");
    unsafe { libc::kill(child.id() as i32, signal) };
    (child, lines, log)
}

/// Waits (30 s at most) for `child` to exit; whether it exited 0.
fn exited_ok(child: &mut std::process::Child) -> bool {
    let mut status = None;
    until(Duration::from_secs(30), Duration::from_millis(50), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
    }
    status.is_some_and(|s| s.success())
}

#[test]
fn signals_during_the_start_wait_for_it() {
    require_root();
    let bed = Bed::new("rls", 1);
    let inst = "test-reload-start";
    // Nothing answers at the backend: the first probe round waits 2 s.
    let args = Bed::attach_args("dnat", inst, &[backend(0)]);
    let path = bed::config_path(inst);
    let text = std::fs::read_to_string(&path).unwrap()
        + "\n[health]\ninterval = \"3s\"\ntimeout = \"2s\"\n";
    std::fs::write(&path, &text).unwrap();
    let lb = bed.ns("lb");

    // SIGHUP (a reload) during the start: the daemon starts, then reloads.
    let (mut child, lines, log) = signalled_in_start(&lb, &args, libc::SIGHUP);
    let ready = lines
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_default();
    assert!(ready.starts_with("ready"), "{ready:?}");
    assert!(
        until(Duration::from_secs(5), Duration::from_millis(50), || log
            .lock()
            .unwrap()
            .contains("reload: ")),
        "no reload in the log"
    );
    assert!(child.try_wait().unwrap().is_none(), "the daemon ended");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(exited_ok(&mut child), "{}", log.lock().unwrap());

    // SIGTERM during the start: it ends cleanly once started, nothing pinned
    // left behind (no --persist).
    let (mut child, _lines, log) = signalled_in_start(&lb, &args, libc::SIGTERM);
    assert!(exited_ok(&mut child), "{}", log.lock().unwrap());
    let pins = format!("/sys/fs/bpf/balancer/{inst}");
    assert!(!std::path::Path::new(&pins).exists(), "{pins} left behind");
}
