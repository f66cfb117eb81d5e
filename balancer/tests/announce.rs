//! `[announce]` end to end: the daemon in the bed's balancer namespace writes
//! `blackhole VIP/32 table 251 proto 252` while the VIP has a usable backend,
//! withdraws it when none is (health down, admin disabled), keeps it across a
//! `--persist` restart, removes it on `detach` (also when the daemon was
//! killed and only its data plane runs); a real BIRD 2 learns it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use balancer_test_support::bed;
use balancer_test_support::daemon::{cli_ok, Daemon};
use balancer_test_support::kamailio::{Behaviour, Kamailio};
use balancer_test_support::netns::{require_root, sh_out};

/// From a change (a probe verdict, a CLI answer) to the route written: a
/// thread's netlink round trip, on two shared cores.
const WRITE: Duration = Duration::from_secs(5);
/// How long a route must stay put to count as kept.
const HOLD: Duration = Duration::from_secs(2);

fn backend(i: usize) -> String {
    format!("{}:5060", bed::backend_ip(i))
}

/// The announcement routes in `ns`, as `ip route` lists them.
/// Empty while the table does not exist yet (no route was ever written to
/// it: `ip` then fails with "FIB table does not exist").
fn routes(ns: &str) -> String {
    sh_out(&format!(
        "ip -n {ns} route show table 251 proto 252 2>/dev/null || true"
    ))
}

fn carried(ns: &str) -> bool {
    routes(ns).contains(&format!("blackhole {}", bed::VIP))
}

fn until(limit: Duration, f: impl FnMut() -> bool) -> bool {
    balancer_test_support::until(limit, Duration::from_millis(50), f)
}

/// Whether `f` holds all along `d`.
fn holds(d: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if !f() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// `attach` arguments for the bed's VIP with `backends`, the file given
/// `extra` (health settings) and `[announce] enabled`.
fn args(inst: &str, backends: &[String], extra: &str, persist: bool) -> Vec<String> {
    let mut a = bed::Bed::attach_args("dnat", inst, backends);
    let path = bed::config_path(inst);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text += &format!("\n{extra}\n[announce]\nenabled = true\n");
    std::fs::write(&path, text).unwrap();
    if persist {
        a.push("--persist".into());
    }
    a
}

#[test]
fn the_vip_route_follows_usable_backends() {
    require_root();
    let bed = bed::Bed::new("anr", 2);
    let lb = bed.ns("lb");
    let inst = "test-announce-r";
    let mut k: Vec<Kamailio> = (0..2)
        .map(|i| {
            Kamailio::start(
                &bed.backend_ns(i),
                backend(i).parse().unwrap(),
                Behaviour::Normal,
            )
        })
        .collect();
    let health = "[health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nfall = 2\nrise = 1\n";
    let bs: Vec<String> = (0..2).map(backend).collect();
    let d = Daemon::start(&lb, &args(inst, &bs, health, true));

    assert!(until(WRITE, || carried(&lb)), "{}", routes(&lb));
    let main = sh_out(&format!("ip -n {lb} route show table main"));
    assert!(!main.contains(bed::VIP), "main table touched: {main}");

    // One backend down: still carried.
    k[0].stop();
    let down = |b: &str| {
        let v: serde_json::Value =
            serde_json::from_str(&cli_ok(inst, &["backend", "list", "--json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .any(|r| r["address"] == b && r["state"] == "down")
    };
    assert!(until(WRITE, || down(&backend(0))), "backend 0 never down");
    assert!(holds(HOLD, || carried(&lb)), "{}", routes(&lb));

    // Both down: withdrawn; one back: carried again.
    k[1].stop();
    assert!(until(WRITE, || !carried(&lb)), "{}", routes(&lb));
    k[1].restart();
    assert!(until(WRITE, || carried(&lb)), "{}", routes(&lb));

    // The one usable backend disabled by the operator: withdrawn; enabled: back.
    cli_ok(inst, &["backend", "disable", &backend(1)]);
    assert!(until(WRITE, || !carried(&lb)), "{}", routes(&lb));
    cli_ok(inst, &["backend", "enable", &backend(1)]);
    assert!(until(WRITE, || carried(&lb)), "{}", routes(&lb));

    // A hitless restart keeps the route, then the new daemon adopts it.
    let _ = d.stop();
    assert!(holds(HOLD, || carried(&lb)), "{}", routes(&lb));
    let run = [
        "run",
        "--config",
        &bed::config_path(inst),
        "--instance",
        inst,
        "--persist",
    ]
    .map(String::from)
    .to_vec();
    let d = Daemon::start(&lb, &run);
    assert!(holds(HOLD, || carried(&lb)), "{}", routes(&lb));
    assert_eq!(routes(&lb).lines().count(), 1, "{}", routes(&lb));

    // `detach` withdraws it.
    // (The daemon withdraws after answering, then exits.)
    cli_ok(inst, &["detach"]);
    assert!(
        until(WRITE, || routes(&lb).trim().is_empty()),
        "{}",
        routes(&lb)
    );
    drop(d);

    // A daemon killed under --persist leaves the route (its data plane still
    // forwards); `detach`, run from another namespace with no daemon to ask,
    // withdraws it in the namespace it was written in.
    let d = Daemon::start(&lb, &args(inst, &bs, health, true));
    assert!(until(WRITE, || carried(&lb)), "{}", routes(&lb));
    d.crash();
    assert!(holds(HOLD, || carried(&lb)), "{}", routes(&lb));
    let said = cli_ok(inst, &["detach"]);
    assert!(
        said.contains(&format!("withdrew the announcement of {}", bed::VIP)),
        "{said}"
    );
    assert!(routes(&lb).trim().is_empty(), "{}", routes(&lb));
    let record = format!("/run/balancer/{inst}.announced");
    assert!(!std::path::Path::new(&record).exists(), "{record} left");
}

/// BIRD 2 in the balancer's namespace, learning table 251.
struct Bird {
    child: Child,
    socket: String,
    dir: String,
}

impl Bird {
    fn start(ns: &str) -> Bird {
        let dir = format!("/tmp/bird-announce-{}", std::process::id());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let conf = format!("{dir}/bird.conf");
        std::fs::write(
            &conf,
            "router id 10.0.1.1;\n\
             protocol device {}\n\
             protocol kernel balancer {\n  kernel table 251;\n  learn;\n  scan time 1;\n  \
             ipv4 { import all; export none; };\n}\n",
        )
        .unwrap();
        let socket = format!("{dir}/bird.ctl");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(["--", "bird", "-f", "-c", &conf, "-s", &socket])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn bird");
        Bird { child, socket, dir }
    }

    fn show_route(&self) -> String {
        let o = Command::new("birdc")
            .args(["-s", &self.socket, "show", "route", "all"])
            .output()
            .expect("run birdc");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn bird_learns_and_drops_the_vip() {
    require_root();
    if Command::new("bird").arg("--version").output().is_err() {
        eprintln!("skipped: no bird here (cargo xtask setup installs bird2)");
        return;
    }
    let bed = bed::Bed::new("anb", 1);
    let lb = bed.ns("lb");
    let inst = "test-announce-b";
    // No probes: only the admin state decides.
    let d = Daemon::start(
        &lb,
        &args(inst, &[backend(0)], "[health]\nenabled = false\n", false),
    );
    let bird = Bird::start(&lb);
    let vip = format!("{}/32", bed::VIP);
    let learnt = |b: &Bird| {
        let r = b.show_route();
        // `krt_source`, shown as `Kernel.source` by BIRD 2.0.
        r.lines()
            .any(|l| l.starts_with(&vip) && l.contains("blackhole [balancer "))
            && r.contains("source: 252")
    };
    assert!(
        until(Duration::from_secs(10), || learnt(&bird)),
        "BIRD did not learn {vip}: {}",
        bird.show_route()
    );
    cli_ok(inst, &["backend", "disable", &backend(0)]);
    assert!(
        until(WRITE, || !bird.show_route().contains(&vip)),
        "BIRD kept {vip}: {}",
        bird.show_route()
    );
    cli_ok(inst, &["backend", "enable", &backend(0)]);
    assert!(until(WRITE, || learnt(&bird)), "{}", bird.show_route());
    // Exit without --persist: withdrawn.
    assert!(d.stop(), "the daemon did not detach");
    assert!(!carried(&lb), "{}", routes(&lb));
    assert!(
        until(WRITE, || !bird.show_route().contains(&vip)),
        "{}",
        bird.show_route()
    );
}
