//! What a start finds and what a failed change leaves, in the netns bed: pins
//! of an incompatible build refused in one line; a crash whose interface was
//! re-created (and one no longer configured) followed by a start that needs no
//! `detach`; the health the last run knew kept across a restart; a change that
//! fails after the kernel changed leaves the health as it was.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aya::maps::{Array, Map, MapData};
use balancer_common::maps::{Backend, Endpoint, MAX_BACKENDS};
use balancer_test_support::daemon::{cli, cli_ok, in_netns, Daemon};
use balancer_test_support::netns::require_root;
use balancer_test_support::{bed, peers};
use serde_json::Value;

fn backend(i: usize) -> String {
    format!("{}:5060", bed::backend_ip(i))
}

fn pins(inst: &str) -> String {
    format!("/sys/fs/bpf/balancer/{inst}")
}

/// A configuration on `interfaces` with one service over backends `members`,
/// fast health checks, and no per-source limits.
fn config(interfaces: &[&str], members: &[usize], health: &str) -> String {
    let ifs: Vec<String> = interfaces.iter().map(|i| format!("\"{i}\"")).collect();
    let mut c = format!(
        "interfaces = [{}]\n\n[health]\n{health}\n\n[[service]]\nvip = \"{}:5060\"\n\n\
         [service.limits]\ndatagrams = 0\ndialogs = 0\n",
        ifs.join(", "),
        bed::VIP
    );
    for &i in members {
        c += &format!("\n[[service.backend]]\naddress = \"{}\"\n", backend(i));
    }
    c
}

fn run_args(inst: &str) -> Vec<String> {
    let conf = bed::config_path(inst);
    ["run", "--config", &conf, "--instance", inst]
        .map(String::from)
        .to_vec()
}

/// Runs a start that must fail; returns its stderr. Bounded: a start that
/// wrongly succeeds is killed.
fn failed_start(netns: &str, inst: &str) -> String {
    let mut child = in_netns(netns)
        .args(run_args(inst))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn balancer");
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(!st.success(), "the start must fail: {err}");
            return err;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the start was expected to fail, it is still running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// Whether `ip` shows an XDP program on `iface` in namespace `ns`.
fn has_xdp(ns: &str, iface: &str) -> bool {
    let o = Command::new("ip")
        .args(["-n", ns, "-d", "link", "show", iface])
        .output()
        .unwrap();
    assert!(o.status.success(), "no {iface} in {ns}");
    String::from_utf8_lossy(&o.stdout).contains("prog/xdp")
}

/// The flags of `addr`'s slot in the pinned `BACKENDS` map.
fn backend_flags(inst: &str, addr: &str) -> Option<u8> {
    let m = MapData::from_pin(format!("{}/BACKENDS", pins(inst))).unwrap();
    let m: Array<MapData, Backend> = Map::Array(m).try_into().unwrap();
    let want = Endpoint::from(addr.parse::<SocketAddr>().unwrap());
    (0..MAX_BACKENDS)
        .map(|s| m.get(&s, 0).unwrap())
        .find(|b| b.family == want.family && b.addr == want.addr && b.port == want.port)
        .map(|b| b.flags)
}

/// `backend list`'s health of `addr`.
fn health(inst: &str, addr: &str) -> String {
    let v: Value = serde_json::from_str(&cli_ok(inst, &["backend", "list", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == addr)
        .unwrap_or_else(|| panic!("{addr} not listed: {v}"))["health"]
        .as_str()
        .unwrap()
        .to_string()
}

fn await_health(inst: &str, addr: &str, want: &str, within: Duration) {
    let t0 = Instant::now();
    loop {
        let h = health(inst, addr);
        if h == want {
            return;
        }
        assert!(
            t0.elapsed() < within,
            "{addr} still {h} after {within:?}, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pins_of_an_incompatible_layout_are_refused_in_one_line() {
    require_root();
    let inst = format!("pl{}", std::process::id());
    let bed = bed::Bed::new(&inst, 1);
    std::fs::write(bed::config_path(&inst), config(&["l0"], &[0], "")).unwrap();
    let dir = pins(&inst);
    std::fs::create_dir_all(&dir).unwrap();

    // A `BACKENDS` of another value size, as an older or newer build might
    // have left it: refused before anything is attached, naming the map.
    let wrong: Array<MapData, [u8; 8]> = Array::create(MAX_BACKENDS, 0).unwrap();
    wrong.pin(format!("{dir}/BACKENDS")).unwrap();
    let err = failed_start(&bed.ns("lb"), &inst);
    let line = err
        .lines()
        .find(|l| l.contains("BACKENDS"))
        .unwrap_or_else(|| panic!("the error names the map: {err}"));
    let size = std::mem::size_of::<Backend>();
    assert!(
        line.contains(&format!(
            "value size 8 where this balancer's program has {size}"
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!("balancer --instance {inst} detach")),
        "says what to do: {line}"
    );
    assert!(!has_xdp(&bed.ns("lb"), "l0"), "nothing attached");
    assert!(Path::new(&format!("{dir}/BACKENDS")).exists(), "pin kept");

    // What the message says to do works.
    let out = cli_ok(&inst, &["detach"]);
    assert!(out.contains("detached"), "{out}");

    // Pins of another version: refused too, even with every layout right.
    std::fs::create_dir_all(&dir).unwrap();
    let mut version: Array<MapData, u32> = Array::create(1, 0).unwrap();
    version.set(0, balancer::kernel::pins::ABI + 1, 0).unwrap();
    version.pin(format!("{dir}/ABI")).unwrap();
    let err = failed_start(&bed.ns("lb"), &inst);
    assert!(
        err.contains(&format!(
            "of version {}, this balancer's are of version {}",
            balancer::kernel::pins::ABI + 1,
            balancer::kernel::pins::ABI
        )) && err.contains("detach"),
        "{err}"
    );
    cli_ok(&inst, &["detach"]);

    // A version pin that is not one: refused the same way.
    std::fs::create_dir_all(&dir).unwrap();
    let odd: Array<MapData, u64> = Array::create(1, 0).unwrap();
    odd.pin(format!("{dir}/ABI")).unwrap();
    let err = failed_start(&bed.ns("lb"), &inst);
    assert!(
        err.contains("pinned map ABI") && err.contains("detach"),
        "{err}"
    );
    cli_ok(&inst, &["detach"]);

    // A clean start pins its version beside the maps, and a restart adopts them.
    let d = Daemon::start(&bed.ns("lb"), &run_args(&inst));
    assert!(Path::new(&format!("{dir}/ABI")).exists());
    d.crash();
    let d = Daemon::start(&bed.ns("lb"), &run_args(&inst));
    assert!(d.stop());
}

#[test]
fn a_start_after_a_crash_needs_no_detach_when_interfaces_changed() {
    require_root();
    let inst = format!("pc{}", std::process::id());
    let bed = bed::Bed::new(&inst, 1);
    let _uas = peers::Uas::start(&bed.backend_ns(0), "0.0.0.0:5060");
    let lb = bed.ns("lb");
    for i in ["l8", "l9"] {
        sh(&format!(
            "ip -n {lb} link add {i} type veth peer name p{i} && ip -n {lb} link set {i} up && ip -n {lb} link set p{i} up"
        ));
    }
    let conf = bed::config_path(&inst);
    std::fs::write(&conf, config(&["l0", "l8", "l9"], &[0], "")).unwrap();
    let d = Daemon::start(&lb, &run_args(&inst));
    // A crash (without --persist) leaves links, maps, socket and lock behind.
    d.crash();
    let dir = pins(&inst);
    for i in ["l0", "l8", "l9"] {
        assert!(Path::new(&format!("{dir}/link_{i}")).exists(), "{i}");
    }
    let run = balancer::control::RUN_DIR;
    assert!(Path::new(&format!("{run}/{inst}.sock")).exists());
    assert!(Path::new(&format!("{run}/{inst}.lock")).exists());

    // l8 re-created under the same name (its old link is attached nowhere);
    // l9 no longer configured.
    sh(&format!(
        "ip -n {lb} link del l8 && ip -n {lb} link add l8 type veth peer name pl8 && ip -n {lb} link set l8 up && ip -n {lb} link set pl8 up"
    ));
    assert!(!has_xdp(&lb, "l8"));
    std::fs::write(&conf, config(&["l0", "l8"], &[0], "")).unwrap();
    let d = Daemon::start(&lb, &run_args(&inst));
    assert!(has_xdp(&lb, "l0") && has_xdp(&lb, "l8"));
    assert!(Path::new(&format!("{dir}/link_l8")).exists());
    assert!(
        !has_xdp(&lb, "l9"),
        "the unconfigured interface is detached"
    );
    assert!(!Path::new(&format!("{dir}/link_l9")).exists());
    cli_ok(&inst, &["backend", "list"]);

    // After another crash, the link made anew on l8 is taken over.
    d.crash();
    let d = Daemon::start(&lb, &run_args(&inst));
    assert!(has_xdp(&lb, "l8"));
    assert!(d.stop());
    assert!(!Path::new(&dir).exists(), "pins removed on exit");
    assert!(!has_xdp(&lb, "l0") && !has_xdp(&lb, "l8"));
}

/// Probes every 300 ms, three failures in a row for down, two successes for up.
const SLOW_FALL: &str = "interval = \"300ms\"\ntimeout = \"100ms\"\nfall = 3\nrise = 2";

#[test]
fn a_restart_keeps_a_down_backend_down() {
    require_root();
    let inst = format!("hr{}", std::process::id());
    let bed = bed::Bed::new(&inst, 2);
    let _uas0 = peers::Uas::start(&bed.backend_ns(0), "0.0.0.0:5060");
    std::fs::write(bed::config_path(&inst), config(&["l0"], &[0, 1], SLOW_FALL)).unwrap();
    let d = Daemon::start(&bed.ns("lb"), &run_args(&inst));
    await_health(&inst, &backend(1), "down", Duration::from_secs(5));
    assert_eq!(backend_flags(&inst, &backend(1)), Some(0), "not sticky");
    d.crash();

    // The first probe round alone would only make it `trying` (fall = 3):
    // still down after the start, out of the tables from the first sync on.
    let d = Daemon::start(&bed.ns("lb"), &run_args(&inst));
    assert_eq!(health(&inst, &backend(1)), "down");
    assert_eq!(backend_flags(&inst, &backend(1)), Some(0), "not sticky");
    assert_eq!(health(&inst, &backend(0)), "up");

    // And back once it answers `rise` probes.
    let _uas1 = peers::Uas::start(&bed.backend_ns(1), "0.0.0.0:5060");
    await_health(&inst, &backend(1), "up", Duration::from_secs(5));
    assert_eq!(backend_flags(&inst, &backend(1)), Some(1), "sticky again");
    assert!(d.stop());
}

/// Removes the directory that stands where the configuration file was.
struct RemoveDir(String);
impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_failed_change_keeps_down_marks() {
    require_root();
    let inst = format!("hf{}", std::process::id());
    let bed = bed::Bed::new(&inst, 2);
    let _uas0 = peers::Uas::start(&bed.backend_ns(0), "0.0.0.0:5060");
    let conf = bed::config_path(&inst);
    std::fs::write(&conf, config(&["l0"], &[0, 1], SLOW_FALL)).unwrap();
    let d = Daemon::start(&bed.ns("lb"), &run_args(&inst));
    await_health(&inst, &backend(1), "down", Duration::from_secs(5));
    assert_eq!(backend_flags(&inst, &backend(1)), Some(0));

    // The file cannot be replaced (a directory stands in its place): the change
    // reaches the kernel, fails at the save, and is rolled back.
    std::fs::remove_file(&conf).unwrap();
    std::fs::create_dir_all(format!("{conf}/x")).unwrap();
    let _dir = RemoveDir(conf.clone());
    let (ok, _, err) = cli(&inst, &["backend", "remove", &backend(1)]);
    assert!(!ok, "the change must fail");
    assert!(err.contains(&conf), "{err}");

    // Back as it was: listed, down, and not sticky in the kernel.
    assert_eq!(health(&inst, &backend(1)), "down");
    assert_eq!(backend_flags(&inst, &backend(1)), Some(0), "{err}");
    // The next probe keeps it down (a forgotten mark would have started it
    // over as up, then trying).
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(health(&inst, &backend(1)), "down");
    assert!(d.stop());
}
