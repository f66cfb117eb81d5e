//! `--persist` only where the pins outlive the daemon: under `ip netns exec`
//! (a private mount namespace with its own /sys, whose bpffs vanishes with
//! the process) the start is refused in one line that says what to run
//! instead; `--netns NAME` enters the namespace itself, and what it pinned
//! survives its exit, the program still attached to the interface.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use balancer_test_support::daemon::{balancer_bin, in_netns, Daemon};
use balancer_test_support::netns::{require_root, sh_out, Netns};

/// One namespace with a veth pair in it, a configuration file, an instance
/// name; on drop: the instance detached (also its pins), the files removed,
/// the namespace deleted.
struct Bed {
    ns: Netns,
    instance: String,
    config: String,
}

impl Bed {
    fn new(tag: &str) -> Bed {
        let ns = Netns::new(tag);
        ns.ip("link add pa0 type veth peer name pa1");
        ns.ip("link set pa0 up");
        ns.ip("link set pa1 up");
        let instance = format!("{}-{}", tag, std::process::id());
        let config = format!("/tmp/balancer-test-{instance}.toml");
        let _ = std::fs::remove_file(&config);
        Bed {
            ns,
            instance,
            config,
        }
    }

    fn pins(&self) -> String {
        format!("/sys/fs/bpf/balancer/{}", self.instance)
    }

    fn attach_args(&self) -> Vec<String> {
        [
            "--instance",
            &self.instance,
            "attach",
            "pa0",
            "--config",
            &self.config,
            "--xdp-mode",
            "generic",
            "--persist",
        ]
        .map(String::from)
        .to_vec()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = in_netns(&self.ns.name)
            .args(["--instance", &self.instance, "detach"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(self.pins());
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Runs `cmd`, which must exit within a minute; returns (success, stdout, stderr).
fn bounded(mut cmd: Command) -> (bool, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still ran after a minute");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn ip_netns_exec_with_persist_is_refused_in_one_line() {
    require_root();
    let bed = Bed::new("pnx");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &bed.ns.name])
        .arg(balancer_bin())
        .args(bed.attach_args());
    let (ok, out, err) = bounded(cmd);
    assert!(!ok, "the start must be refused: {out}{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line, not: {err}");
    assert!(
        lines[0].starts_with("balancer: attach: --persist: "),
        "{err}"
    );
    for hint in ["nsenter --net=/run/netns/NAME", "--netns NAME"] {
        assert!(lines[0].contains(hint), "no `{hint}` in: {err}");
    }
    // Refused before anything was attached or pinned.
    assert!(!std::path::Path::new(&bed.pins()).exists());
    let link = sh_out(&format!("ip -n {} link show dev pa0", bed.ns.name));
    assert!(!link.contains("xdp"), "{link}");
}

#[test]
fn netns_option_persists_pins_beyond_the_process() {
    require_root();
    let bed = Bed::new("pnn");
    // From the host's namespaces, as a plain command: the daemon enters the
    // network namespace itself.
    let mut cmd = Command::new(balancer_bin());
    cmd.args(bed.attach_args()).args(["--netns", &bed.ns.name]);
    let d = Daemon::start_cmd(cmd, None);
    let link = sh_out(&format!("ip -n {} link show dev pa0", bed.ns.name));
    assert!(
        link.contains("xdp"),
        "not attached in the namespace: {link}"
    );
    let daemon_ns = std::fs::read_link(format!("/proc/{}/ns/net", d.pid())).unwrap();
    let ns_ino = std::fs::metadata(format!("/run/netns/{}", bed.ns.name))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    assert_eq!(
        daemon_ns.to_string_lossy(),
        format!("net:[{ns_ino}]"),
        "the daemon is not in the namespace"
    );
    // SIGTERM with --persist: it exits, the data plane stays.
    let (ok, said) = d.terminate();
    assert!(ok, "{said:?}");
    assert!(
        said.iter().any(|l| l.contains("stays attached")),
        "{said:?}"
    );
    let pins = std::fs::read_dir(bed.pins())
        .map(|r| r.count())
        .unwrap_or(0);
    assert!(pins > 0, "nothing pinned in {} after the exit", bed.pins());
    let link = sh_out(&format!("ip -n {} link show dev pa0", bed.ns.name));
    assert!(
        link.contains("xdp"),
        "the program went with the process: {link}"
    );
}
