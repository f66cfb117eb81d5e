//! What the data plane needs from the kernel: present on every supported
//! kernel (this binary runs on the host and in each VM of `cargo xtask
//! kernels`), and an older kernel refused in one line that names what it lacks
//! (run by `cargo xtask kernels` in a VM booting Debian 11's 5.10).

use std::process::Command;

use balancer::kernel::requirements;
use balancer_test_support::netns::*;

#[test]
fn this_kernel_has_what_the_data_plane_needs() {
    require_root();
    if let Err(e) = requirements::check() {
        panic!("{e}");
    }
}

#[test]
#[ignore = "needs a kernel older than 5.17: `cargo xtask kernels` runs it in a Linux 5.10 VM"]
fn an_older_kernel_is_refused_in_one_line() {
    require_root();
    let ns = Netns::new("old");
    let config = format!("/tmp/balancer-old-{}.toml", std::process::id());
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .arg(env!("CARGO_BIN_EXE_balancer"))
        .args(["--instance", &format!("old{}", std::process::id())])
        .args(["attach", "lo", "--vip", "127.0.0.10:5060"])
        .args(["--backend", "127.0.0.11:5060", "--config", &config])
        .output()
        .expect("running balancer attach");
    let _ = std::fs::remove_file(&config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "attach must fail here: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    let release = requirements::release();
    for want in [
        release.as_str(),
        "bpf_loop (Linux 5.17+)",
        "bpf_xdp_load_bytes (Linux 5.18+)",
        "Linux 6.1 or later",
    ] {
        assert!(err.contains(want), "{want:?} missing from: {err}");
    }
    assert!(!err.contains("processed"), "no verifier dump: {err}");
}
