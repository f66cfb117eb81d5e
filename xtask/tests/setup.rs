//! `cargo xtask setup` leaves no service of the packages it installs enabled
//! or running on the host, also when one was enabled and running before it
//! ran: a system Kamailio is made to look freshly installed (enabled, and
//! running from its pid file as its service runs it), setup runs, and then
//! every service of every package setup lists is checked, by means of its
//! own: `systemctl is-enabled` (which reads the unit links without systemd
//! too), SysV start links, `systemctl is-active` where systemd runs, and the
//! pid files the services write.
//!
//! Root only; without dpkg (not Debian) there is nothing to check.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");
const KAMAILIO_PID: &str = "/run/kamailio/kamailio.pid";

/// Pid files the Debian packages' init scripts and units write (the units of
/// BIRD and keepalived name none, their init scripts do; FRR's names only
/// watchfrr's, not those of the daemons it starts).
const KNOWN_PIDFILES: &[(&str, &str)] = &[
    ("kamailio", KAMAILIO_PID),
    ("bird", "/run/bird/bird.pid"),
    ("keepalived", "/run/keepalived.pid"),
    ("prometheus", "/run/prometheus/prometheus.pid"),
    ("frr", "/run/frr/zebra.pid"),
    ("frr", "/run/frr/staticd.pid"),
    ("frr", "/run/frr/bgpd.pid"),
    ("frr", "/run/frr/bfdd.pid"),
];

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn out(cmd: &str) -> String {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// A live (not zombie) process whose pid `pidfile` holds.
fn live_pid(pidfile: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    (pid > 1 && state != "Z").then_some(pid)
}

/// Stops and disables the Kamailio this test started, whatever happened.
struct Cleanup {
    netns: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if systemd_runs() {
            sh("systemctl disable --now kamailio");
        } else {
            sh("systemctl disable kamailio");
            if let Some(pid) = live_pid(KAMAILIO_PID) {
                if out(&format!("cat /proc/{pid}/comm")) == "kamailio" {
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
        }
        sh("update-rc.d kamailio disable");
        if let Some(ns) = self.netns.take() {
            // After kamailio went: the namespace's sockets go with it.
            let t0 = Instant::now();
            while live_pid(KAMAILIO_PID).is_some() && t0.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(100));
            }
            sh(&format!("ip netns del {ns}"));
        }
    }
}

/// Kamailio as its package leaves it where nothing prevents it: enabled at
/// boot and running. Under systemd, by its unit; elsewhere as the unit runs
/// it (daemonising, writing its pid file), inside a scratch network namespace
/// so it answers no one on the host meanwhile.
fn kamailio_enabled_and_running(c: &mut Cleanup) {
    assert!(sh("systemctl enable kamailio"), "systemctl enable kamailio");
    assert!(
        sh("update-rc.d kamailio enable"),
        "update-rc.d kamailio enable"
    );
    if systemd_runs() {
        assert!(sh("systemctl start kamailio"), "systemctl start kamailio");
    } else {
        let ns = format!("xs-setup-{}", std::process::id());
        assert!(sh(&format!(
            "ip netns add {ns} && ip -n {ns} link set lo up"
        )));
        c.netns = Some(ns.clone());
        assert!(sh(
            "install -d -o kamailio -g kamailio -m 770 /run/kamailio"
        ));
        // Daemonises: the command returns once the workers are up.
        let ok = Command::new("timeout")
            .args(["30", "nsenter", &format!("--net=/run/netns/{ns}"), "--"])
            .args([
                "/usr/sbin/kamailio",
                "-P",
                KAMAILIO_PID,
                "-f",
                "/etc/kamailio/kamailio.cfg",
                "-m",
                "64",
                "-M",
                "8",
                "-u",
                "kamailio",
                "-g",
                "kamailio",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "starting the system kamailio failed");
    }
    let t0 = Instant::now();
    while live_pid(KAMAILIO_PID).is_none() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        live_pid(KAMAILIO_PID).is_some(),
        "the system kamailio did not start"
    );
    assert_eq!(out("systemctl is-enabled kamailio"), "enabled");
}

/// Units and init scripts `pkg` installed, as `name.service`-like unit names.
fn services_of(pkg: &str) -> Vec<String> {
    let mut v = Vec::new();
    for f in out(&format!("dpkg -L {pkg}")).lines() {
        let p = Path::new(f);
        let dir = p.parent().and_then(|d| d.to_str()).unwrap_or("");
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if matches!(dir, "/lib/systemd/system" | "/usr/lib/systemd/system")
            && name.contains(".")
            && !name.ends_with(".target")
            && !name.contains('@')
        {
            v.push(name);
        } else if dir == "/etc/init.d" {
            v.push(format!("{name}.service"));
        }
    }
    v.sort();
    v.dedup();
    v
}

/// What is wrong with `unit` (enabled, active, running): none when nothing.
fn problems(unit: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let name = unit.rsplit_once('.').map(|(n, _)| n).unwrap_or(unit);
    let state = out(&format!("systemctl is-enabled {unit}"));
    if matches!(state.as_str(), "enabled" | "enabled-runtime" | "alias") {
        bad.push(format!("{unit} is {state}"));
    }
    for rc in ["0", "1", "2", "3", "4", "5", "6", "S"] {
        let links = out(&format!("ls /etc/rc{rc}.d 2>/dev/null"));
        if links
            .lines()
            .any(|l| l.starts_with('S') && l.get(3..) == Some(name))
        {
            bad.push(format!("{name} starts in runlevel {rc}"));
        }
    }
    if systemd_runs() && sh(&format!("systemctl is-active --quiet {unit}")) {
        bad.push(format!("{unit} is active"));
    }
    let mut pidfiles: Vec<String> = KNOWN_PIDFILES
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, f)| f.to_string())
        .collect();
    for dir in ["/lib/systemd/system", "/usr/lib/systemd/system"] {
        let text = std::fs::read_to_string(format!("{dir}/{unit}")).unwrap_or_default();
        pidfiles.extend(
            text.lines()
                .filter_map(|l| l.trim().strip_prefix("PIDFile="))
                .map(str::to_string),
        );
    }
    for f in pidfiles {
        if let Some(pid) = live_pid(&f) {
            bad.push(format!("{name} runs (pid {pid} in {f})"));
        }
    }
    bad
}

#[test]
fn setup_leaves_no_service_enabled_or_running() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "run as root (cargo xtask test)"
    );
    if !sh("command -v dpkg && command -v apt-get") {
        eprintln!("no dpkg/apt-get here: setup installs no Debian packages, nothing to check");
        return;
    }
    assert!(
        sh("dpkg-query -W -f='${Status}' kamailio | grep -q 'install ok installed'"),
        "kamailio is not installed: run `cargo xtask setup` first"
    );
    let mut cleanup = Cleanup { netns: None };
    kamailio_enabled_and_running(&mut cleanup);

    let mut child = Command::new(XTASK)
        .arg("setup")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run xtask setup");
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(480) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cargo xtask setup took more than 8 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let o = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(status.success(), "cargo xtask setup failed:\n{said}");
    assert!(
        said.contains("kamailio"),
        "setup said nothing about the kamailio it stopped:\n{said}"
    );

    let packages = out(&format!("{XTASK} setup --list"));
    assert!(packages.lines().any(|p| p == "kamailio"), "{packages}");
    let mut bad = Vec::new();
    let mut checked = 0;
    for pkg in packages.lines() {
        for unit in services_of(pkg) {
            checked += 1;
            bad.extend(problems(&unit).into_iter().map(|p| format!("{pkg}: {p}")));
        }
    }
    assert!(checked >= 3, "only {checked} services found");
    assert!(
        bad.is_empty(),
        "after setup:\n{}\nsetup said:\n{said}",
        bad.join("\n")
    );
    let policy = std::fs::read_to_string("/usr/sbin/policy-rc.d").unwrap_or_default();
    assert!(
        !policy.contains("cargo xtask setup"),
        "setup left its policy-rc.d behind"
    );
}
