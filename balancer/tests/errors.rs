//! Every error exit prints exactly one line, `balancer: <what>: <why>`, on
//! stderr and nothing on stdout: a bad configuration file (a syntax error
//! and an unknown field, which toml reports over several lines), a missing
//! daemon, an unknown backend and a bad value answered by a running daemon,
//! a file that is not there, a namespace that is not there, and the command
//! lines clap refuses (exit status 2).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use balancer_test_support::bed;
use balancer_test_support::daemon::{balancer_bin, Daemon};
use balancer_test_support::netns::require_root;

/// Runs `balancer args` (bounded: a minute); returns (exit code, stdout, stderr).
fn balancer(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(balancer_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn balancer");
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("balancer {args:?} still ran after a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The command fails with `status`, prints nothing on stdout and one line
/// `balancer: <what>: <why>` on stderr, which contains every `needle`.
fn one_line_error(args: &[&str], status: i32, needles: &[&str]) -> String {
    let (code, out, err) = balancer(args);
    assert_eq!(code, status, "balancer {args:?}: exit status\n{err}");
    assert_eq!(out, "", "balancer {args:?}: nothing on stdout");
    assert!(err.ends_with('\n'), "balancer {args:?}: {err:?}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "balancer {args:?}: one line, not:\n{err}");
    let line = lines[0];
    let rest = line
        .strip_prefix("balancer: ")
        .unwrap_or_else(|| panic!("balancer {args:?}: no `balancer: ` prefix: {line}"));
    let (what, why) = rest
        .split_once(": ")
        .unwrap_or_else(|| panic!("balancer {args:?}: not `<what>: <why>`: {line}"));
    assert!(
        !what.is_empty() && !why.trim().is_empty(),
        "balancer {args:?}: {line}"
    );
    for n in needles {
        assert!(line.contains(n), "balancer {args:?}: no `{n}` in: {line}");
    }
    line.to_string()
}

#[test]
fn bad_files_and_missing_things_are_one_line() {
    let dir = std::env::temp_dir().join(format!("balancer-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _gone = Gone(dir.clone());
    let syntax = dir.join("syntax.toml");
    std::fs::write(
        &syntax,
        "interfaces = [\"x\"]\n[[service]]\nvip = \"10.0.0.10:5060\"\nmode = \n",
    )
    .unwrap();
    let unknown = dir.join("unknown.toml");
    std::fs::write(
        &unknown,
        "interfaces = [\"x\"]\n[[service]]\nvip = \"10.0.0.10:5060\"\nbogus = 1\n",
    )
    .unwrap();
    let (syntax, unknown) = (syntax.to_str().unwrap(), unknown.to_str().unwrap());

    one_line_error(
        &["run", "--config", syntax],
        1,
        &[syntax, "line 4, column 8"],
    );
    one_line_error(
        &["run", "--config", unknown],
        1,
        &[unknown, "line 4", "unknown field `bogus`"],
    );
    one_line_error(
        &["run", "--config", "/nonexistent/balancer.toml"],
        1,
        &["/nonexistent/balancer.toml", "No such file"],
    );
    one_line_error(
        &["inspect", "/nonexistent/invite.sip"],
        1,
        &["No such file"],
    );
    let inst = format!("errnone{}", std::process::id());
    one_line_error(
        &["--instance", &inst, "stats"],
        1,
        &["no balancer daemon", &inst],
    );
    one_line_error(&["--instance", "a/b", "stats"], 1, &["a/b"]);
}

#[test]
fn usage_errors_are_one_line() {
    one_line_error(&["bogus"], 2, &["bogus", "--help"]);
    one_line_error(&["stats", "--bogus"], 2, &["--bogus"]);
    one_line_error(&["attach"], 2, &["<IFACES>"]);
    one_line_error(&["backend"], 2, &["backend", "balancer backend --help"]);
    one_line_error(
        &["backend", "add", "not-an-address"],
        2,
        &["not-an-address"],
    );
    // Help and version are no errors.
    let (code, out, _) = balancer(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("balancer "), "{out}");
    let (code, out, _) = balancer(&["backend", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("Usage: balancer backend"), "{out}");
}

#[test]
fn a_running_daemon_s_refusals_are_one_line() {
    require_root();
    let inst = format!("err{}", std::process::id());
    let bed = bed::Bed::new(&inst, 1);
    let backend = format!("{}:5060", bed::backend_ip(0));
    let args = bed::Bed::attach_args("dnat", &inst, &[backend]);
    let _d = Daemon::start(&bed.ns("lb"), &args);
    one_line_error(
        &["--instance", &inst, "backend", "remove", "10.9.9.9:5060"],
        1,
        &["10.9.9.9:5060"],
    );
    one_line_error(
        &["--instance", &inst, "service", "remove", "10.0.0.99:5060"],
        1,
        &["10.0.0.99:5060"],
    );
    // A second daemon of the same instance.
    one_line_error(
        &[
            "--instance",
            &inst,
            "run",
            "--config",
            &bed::config_path(&inst),
        ],
        1,
        &[&inst, "already running"],
    );
    one_line_error(
        &[
            "--instance",
            &format!("{inst}x"),
            "run",
            "--config",
            &bed::config_path(&inst),
            "--netns",
            "balancer-no-such-ns",
        ],
        1,
        &[
            "--netns balancer-no-such-ns",
            "/run/netns/balancer-no-such-ns",
        ],
    );
}
