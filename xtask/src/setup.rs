//! `cargo xtask setup`: everything building and testing needs, idempotent.
//!
//! - Debian's rustc-web (with rust-src) linked into rustup as `balancer-bpf`, since
//!   rustup cannot download nightly components on every machine; a nightly with
//!   rust-src, where present, works as well and is used when there is no apt.
//! - bpf-linker 0.13.0 built against Debian's LLVM 22.
//! - iproute2 and ethtool for the test bed; bpffs mounted.
//! - The SIP peers and routing daemons the tests run themselves (sipp, Kamailio,
//!   BIRD 2, keepalived), their services disabled.
//! - QEMU and what prepares Debian's kernel packages for the VM tests.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// rustup's name for the Debian toolchain.
pub const TOOLCHAIN: &str = "balancer-bpf";
const BPF_LINKER: &str = "0.13.0";
const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
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

pub fn run() -> Result<()> {
    if let Ok(t) = std::env::var("BALANCER_EBPF_TOOLCHAIN") {
        say(&format!(
            "BALANCER_EBPF_TOOLCHAIN={t}: using that toolchain for the eBPF object"
        ));
    } else if have("apt-get") {
        apt()?;
        link_toolchain()?;
    } else if !nightly_has_rust_src() {
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

fn apt() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        say("Debian packages present");
        return Ok(());
    }
    say(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    // Debian enables (and, under systemd, starts) BIRD and keepalived on
    // installation: not on a build or test host, where the tests run their own.
    for (pkg, service, pidfile) in [
        ("bird2", "bird", "/run/bird/bird.pid"),
        ("keepalived", "keepalived", "/run/keepalived.pid"),
    ] {
        if missing.contains(&pkg) {
            disable_service(service, pidfile);
        }
    }
    Ok(())
}

/// Stops `service` and keeps it from starting at boot, under systemd or
/// without it (a container, where `invoke-rc.d` may or may not have started
/// it): the daemon the package started is stopped by its own pid file, never
/// by name, which would hit the tests' own BIRDs and keepaliveds.
fn disable_service(service: &str, pidfile: &str) {
    say(&format!(
        "disabling the {service} service (the tests start their own)"
    ));
    if have("systemctl") {
        quiet(Command::new("systemctl").args(["disable", "--now", service]));
    }
    if have("update-rc.d") {
        quiet(Command::new("update-rc.d").args([service, "disable"]));
    }
    let pid: Option<i32> = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if let Some(pid) = pid.filter(|p| *p > 1) {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == service {
            say(&format!(
                "stopping the {service} the package started (pid {pid})"
            ));
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
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
