//! `cargo xtask setup`: everything building and testing needs, idempotent.
//!
//! - Debian's rustc-web (with rust-src) linked into rustup as `balancer-bpf`, since
//!   rustup cannot download nightly components on every machine; a nightly with
//!   rust-src, where present, works as well and is used when there is no apt.
//! - bpf-linker 0.13.0 built against Debian's LLVM 22.
//! - iproute2 and ethtool for the test bed; bpffs mounted.
//! - The SIP peers and routing daemons the tests run themselves (sipp, Kamailio,
//!   BIRD 2, FRR, keepalived, Prometheus). Nothing is left enabled or running
//!   on the host: apt installs under a `policy-rc.d` that forbids starts, the
//!   units of what it installed (dependencies included) are disabled, and
//!   those of Kamailio, BIRD, FRR, keepalived and Prometheus are disabled and
//!   stopped on every run, also when they were there before.
//! - QEMU and what prepares Debian's kernel packages for the VM tests.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// rustup's name for the Debian toolchain.
pub const TOOLCHAIN: &str = "balancer-bpf";
const BPF_LINKER: &str = "0.13.0";
/// What builds the eBPF object: not needed when `BALANCER_EBPF_TOOLCHAIN` names
/// a toolchain of one's own.
const TOOLCHAIN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// What the tests, the lab and the benches run.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    // nsenter and setpriv for the tests (essential on Debian; listed to be sure).
    "util-linux",
    // Real SIP peers for the health-check tests and the lab.
    "kamailio",
    "sip-tester",
    "sipsak",
    // A real routing daemon reading the VIP announcement routes (tests/announce.rs);
    // its service is disabled after installation, the tests run their own.
    "bird2",
    // VRRP for the active/standby test (tests/ha.rs); disabled like BIRD.
    "keepalived",
    // FRR running dist/announce/frr.conf (tests/frr.rs); disabled like BIRD,
    // the test starts its own daemons.
    "frr",
    // promtool and a Prometheus server for the metrics test (tests/metrics.rs);
    // disabled like BIRD, the test runs its own.
    "prometheus",
    // The plain-Linux contender of the throughput bench (nft DNAT).
    "nftables",
    // The VM tests on Debian's own kernels (`cargo xtask kernels`): QEMU, a
    // static busybox for the initramfs, and what unpacks kernel packages.
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
    "zstd",
];

/// The daemons the tests run themselves, each in its own namespace: a system
/// one is never wanted on a build or test host (Kamailio would answer SIP on
/// every address, BIRD, FRR and keepalived would speak to the network), so their
/// services are disabled and stopped on every run of setup, also when they
/// were installed before it. (package, service, the pid file its service
/// writes, the process name that pid must have). FRR's service runs several
/// processes and watchfrr, which restarts the others, exits alone on SIGTERM:
/// one entry each, watchfrr first.
const PEERS: &[(&str, &str, &str, &str)] = &[
    (
        "kamailio",
        "kamailio",
        "/run/kamailio/kamailio.pid",
        "kamailio",
    ),
    ("bird2", "bird", "/run/bird/bird.pid", "bird"),
    (
        "keepalived",
        "keepalived",
        "/run/keepalived.pid",
        "keepalived",
    ),
    (
        "prometheus",
        "prometheus",
        "/run/prometheus/prometheus.pid",
        "prometheus",
    ),
    ("frr", "frr", "/run/frr/watchfrr.pid", "watchfrr"),
    ("frr", "frr", "/run/frr/zebra.pid", "zebra"),
    ("frr", "frr", "/run/frr/staticd.pid", "staticd"),
    ("frr", "frr", "/run/frr/bgpd.pid", "bgpd"),
    ("frr", "frr", "/run/frr/bfdd.pid", "bfdd"),
];

/// Packages of every Debian system whose services are the host's own
/// (`fstrim.timer`, module loading, the firewall's `nftables.service`): setup
/// leaves their enablement as the administrator set it. Installed by setup
/// (only nftables ever is), their services are disabled like any other's.
pub const HOST_OWNED: &[&str] = &["util-linux", "kmod", "nftables"];

/// The packages (with the toolchain's) whose services setup keeps off.
pub fn quiet_packages() -> Vec<&'static str> {
    TEST_PACKAGES
        .iter()
        .chain(TOOLCHAIN_PACKAGES)
        .copied()
        .filter(|p| !HOST_OWNED.contains(p))
        .collect()
}

/// Written while apt installs, so that no package's maintainer scripts start
/// a service (`invoke-rc.d` and `deb-systemd-invoke` both ask it; 101 is
/// "action forbidden"); removed afterwards. The marker tells a leftover of an
/// interrupted setup from the administrator's own policy, which is kept.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
const POLICY_MARKER: &str = "# written by cargo xtask setup";

pub fn run() -> Result<()> {
    let own = std::env::var("BALANCER_EBPF_TOOLCHAIN").ok();
    if let Some(t) = &own {
        say(&format!(
            "BALANCER_EBPF_TOOLCHAIN={t}: using that toolchain for the eBPF object"
        ));
    }
    if have("apt-get") {
        let mut packages = TEST_PACKAGES.to_vec();
        if own.is_none() {
            packages.extend(TOOLCHAIN_PACKAGES);
        }
        let new = apt(&packages)?;
        quiet_services(&new)?;
        if own.is_none() {
            link_toolchain()?;
        }
    } else if own.is_none() && !nightly_has_rust_src() {
        bail!("no apt-get here: install a nightly toolchain with rust-src (rustup toolchain install nightly --component rust-src) and bpf-linker, or set BALANCER_EBPF_TOOLCHAIN");
    }
    bpf_linker()?;
    bpffs();
    say("ready");
    Ok(())
}

/// The toolchain build.rs should use, if setup made one.
pub fn ebpf_toolchain() -> Option<String> {
    if let Ok(t) = std::env::var("BALANCER_EBPF_TOOLCHAIN") {
        return Some(t);
    }
    quiet(Command::new("rustup").args(["run", TOOLCHAIN, "rustc", "--version"]))
        .then(|| TOOLCHAIN.to_string())
}

pub fn say(s: &str) {
    eprintln!("setup: {s}");
}

fn have(bin: &str) -> bool {
    quiet(
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {bin}")),
    )
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Every package dpkg has installed.
fn installed_now() -> std::collections::BTreeSet<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter(|l| l.ends_with(" install ok installed"))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

/// Installs what is missing, with no service started meanwhile; returns what
/// it installed, the dependencies apt chose included (installing FRR brings
/// `logrotate` and its enabled timer, for one).
fn apt(packages: &[&'static str]) -> Result<Vec<String>> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        say("Debian packages present");
        return Ok(Vec::new());
    }
    let before = installed_now();
    say(&format!(
        "installing Debian packages (no service started): {}",
        missing.join(" ")
    ));
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    let _policy = NoStarts::new()?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(installed_now().difference(&before).cloned().collect())
}

/// `policy-rc.d` forbidding every start while it lives (see [`POLICY_RC_D`]).
struct NoStarts {
    ours: bool,
}

impl NoStarts {
    fn new() -> Result<NoStarts> {
        let path = std::path::Path::new(POLICY_RC_D);
        if let Ok(existing) = std::fs::read_to_string(path) {
            if !existing.contains(POLICY_MARKER) {
                say(&format!(
                    "{POLICY_RC_D} exists: keeping it (services are disabled and stopped after installation)"
                ));
                return Ok(NoStarts { ours: false });
            }
        }
        std::fs::write(path, format!("#!/bin/sh\n{POLICY_MARKER}\nexit 101\n"))
            .with_context(|| format!("writing {POLICY_RC_D}"))?;
        let mut perm = std::fs::metadata(path)?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(path, perm)?;
        Ok(NoStarts { ours: true })
    }
}

impl Drop for NoStarts {
    fn drop(&mut self) {
        if self.ours {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}

/// The services (systemd units, SysV init scripts) a package installed:
/// `kamailio` for `/lib/systemd/system/kamailio.service` and
/// `/etc/init.d/kamailio`. Template units (`name@.service`) run only when
/// instantiated and are left out.
pub fn services_of(pkg: &str) -> Vec<String> {
    let out = Command::new("dpkg")
        .args(["-L", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut found: Vec<String> = Vec::new();
    for line in out.lines() {
        let p = std::path::Path::new(line);
        let (Some(dir), Some(name)) = (p.parent().and_then(|d| d.to_str()), p.file_name()) else {
            continue;
        };
        let name = name.to_string_lossy();
        let unit = matches!(dir, "/lib/systemd/system" | "/usr/lib/systemd/system")
            && [".service", ".socket", ".timer", ".path"]
                .iter()
                .any(|s| name.ends_with(s))
            && !name.contains('@');
        let service = if unit {
            name.to_string()
        } else if dir == "/etc/init.d" {
            format!("{name}.service")
        } else {
            continue;
        };
        if !found.contains(&service) {
            found.push(service);
        }
    }
    found
}

/// Disables (and stops) the services of every package installed just now,
/// and those of the test peers ([`PEERS`]) whenever they are enabled or run.
fn quiet_services(new: &[String]) -> Result<()> {
    let mut pending = Vec::new();
    for pkg in new {
        if !PEERS.iter().any(|p| p.0 == pkg.as_str()) {
            for unit in services_of(pkg) {
                pending.push((unit, None));
            }
        }
    }
    for &(pkg, service, pidfile, comm) in PEERS {
        if installed(pkg) {
            pending.push((format!("{service}.service"), Some((pidfile, comm))));
        }
    }
    let mut left = Vec::new();
    // A unit with several daemons (FRR's) comes once per daemon.
    let mut disabled: Vec<String> = Vec::new();
    for (unit, daemon) in pending {
        let name = unit.rsplit_once('.').map(|(n, _)| n).unwrap_or(&unit);
        let running = daemon.and_then(|(pidfile, comm)| pid_alive(pidfile, comm));
        if !enabled(&unit) && !active(&unit) && running.is_none() {
            continue;
        }
        if !disabled.contains(&unit) {
            say(&format!(
                "disabling and stopping the {unit} the package installed (the tests start their own)"
            ));
            if systemd_runs() {
                quiet(Command::new("systemctl").args(["disable", "--now", &unit]));
            } else if have("systemctl") {
                // Without systemd as init, `systemctl disable` still removes the unit's links.
                quiet(Command::new("systemctl").args(["disable", &unit]));
            }
            if have("update-rc.d") && std::path::Path::new("/etc/init.d").join(name).exists() {
                quiet(Command::new("update-rc.d").args([name, "disable"]));
            }
            disabled.push(unit.clone());
        }
        // Where systemd does not run, an init script (or `invoke-rc.d`) may
        // have started it: stop it by its pid file, never by name, which
        // would hit the tests' own daemons.
        if let (Some(pid), Some((pidfile, comm))) = (running, daemon) {
            say(&format!(
                "stopping the {comm} the {name} service started (pid {pid})"
            ));
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let t0 = std::time::Instant::now();
            while pid_alive(pidfile, comm) == Some(pid)
                && t0.elapsed() < std::time::Duration::from_secs(10)
            {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        let still_running = daemon.and_then(|(pidfile, comm)| pid_alive(pidfile, comm));
        if (enabled(&unit) || active(&unit) || still_running.is_some()) && !left.contains(&unit) {
            left.push(unit);
        }
    }
    if !left.is_empty() {
        bail!(
            "could not disable and stop {}: do it by hand (systemctl disable --now, update-rc.d NAME disable)",
            left.join(", ")
        );
    }
    Ok(())
}

/// systemd is the init system (`systemctl is-active` means something).
pub fn systemd_runs() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

/// Enabled at boot: by systemd's links (which `systemctl is-enabled` reads
/// without systemd running, too) or by a SysV start link in a runlevel.
fn enabled(unit: &str) -> bool {
    let by_systemd = have("systemctl")
        && Command::new("systemctl")
            .args(["is-enabled", unit])
            .output()
            .map(|o| {
                matches!(
                    String::from_utf8_lossy(&o.stdout).trim(),
                    "enabled" | "enabled-runtime" | "alias"
                )
            })
            .unwrap_or(false);
    let name = unit.rsplit_once('.').map(|(n, _)| n).unwrap_or(unit);
    by_systemd || sysv_start_links(name)
}

/// `/etc/rcN.d/S??name` in any runlevel.
pub fn sysv_start_links(name: &str) -> bool {
    (0..=6)
        .map(|l| format!("/etc/rc{l}.d"))
        .chain(["/etc/rcS.d".into()])
        .any(|d| {
            std::fs::read_dir(d)
                .map(|rd| {
                    rd.flatten().any(|e| {
                        let f = e.file_name().to_string_lossy().into_owned();
                        f.starts_with('S') && f.get(3..) == Some(name)
                    })
                })
                .unwrap_or(false)
        })
}

fn active(unit: &str) -> bool {
    systemd_runs() && quiet(Command::new("systemctl").args(["is-active", "--quiet", unit]))
}

/// The pid in `pidfile`, if that process lives and is named `comm`.
pub fn pid_alive(pidfile: &str, comm: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    if pid <= 1 {
        return None;
    }
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (name.trim() == comm).then_some(pid)
}

fn link_toolchain() -> Result<()> {
    if ebpf_toolchain().is_some() {
        say(&format!("rustup toolchain {TOOLCHAIN} present"));
        return Ok(());
    }
    say(&format!(
        "linking Debian's rustc-web into rustup as {TOOLCHAIN}"
    ));
    run_cmd(Command::new("rustup").args(["toolchain", "link", TOOLCHAIN, "/usr"]))
}

fn nightly_has_rust_src() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            let root = String::from_utf8_lossy(&o.stdout).trim().to_string();
            std::path::Path::new(&root)
                .join("lib/rustlib/src/rust/library/core")
                .is_dir()
        })
        .unwrap_or(false)
}

fn bpf_linker() -> Result<()> {
    let current = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if current.contains(BPF_LINKER) {
        say(&format!("bpf-linker {BPF_LINKER} present"));
        return Ok(());
    }
    say(&format!(
        "building bpf-linker {BPF_LINKER} against LLVM 22 (a few minutes)"
    ));
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["install", &format!("bpf-linker@{BPF_LINKER}"), "--force"]);
    if std::path::Path::new("/usr/lib/llvm-22").is_dir() {
        cmd.args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22");
    }
    run_cmd(&mut cmd)
}

fn bpffs() {
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
        })
        .unwrap_or(false);
    if !mounted {
        say("mounting bpffs at /sys/fs/bpf");
        let _ = quiet(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]));
    }
}
