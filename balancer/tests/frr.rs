//! `dist/announce/frr.conf` run as shipped, with only the bed's addresses put
//! in: FRR (zebra, bgpd, bfdd) beside the balancer daemon in the bed's
//! balancer namespace, and BIRD 2 in the client's namespace as the upstream
//! router, over BGP with BFD. The router learns the VIP while it has a usable
//! backend, and loses it when it has none or the daemon exits.
//!
//! FRR runs as its service would run it (user `frr`, the daemons started
//! empty, then `vtysh -b` loading the integrated configuration), but with
//! every path of its own under a temporary directory: nothing of the host's
//! /etc/frr or /run/frr is read or written. (The daemons' crash-log
//! directories, /var/tmp/frr/DAEMON.PID, are not theirs to choose; a clean
//! exit removes them, and so does the test after any other.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use balancer_test_support::bed::{self, Bed, CLIENT, LB_CLIENT_SIDE, VIP};
use balancer_test_support::daemon::{cli_ok, Daemon};
use balancer_test_support::ha;
use balancer_test_support::netns::{self, require_root, sh, sh_out};

/// The bed's prefix and the balancer instance's name: `Bed`'s cleanup then
/// removes the instance's configuration and pins too.
const NAME: &str = "test-frr";
/// The table the example imports: `[announce]`'s default.
const TABLE: u32 = 251;
/// Where Debian's package puts FRR's daemons.
const FRR_DAEMONS: &str = "/usr/lib/frr";
/// From the start of FRR and BIRD to BGP and BFD up (BIRD tries to connect
/// every second; BFD starts at one packet a second).
const CONVERGE: Duration = Duration::from_secs(40);
/// From a change in the balancer to the router's kernel route: the announce
/// thread, zebra, bgpd, BIRD, on two shared cores.
const PROPAGATE: Duration = Duration::from_secs(10);
/// A route in the table that is no VIP: the example's route-map must keep it
/// from the router.
const NOT_A_VIP: &str = "10.9.9.0/24";

fn until(limit: Duration, f: impl FnMut() -> bool) -> bool {
    balancer_test_support::until(limit, Duration::from_millis(100), f)
}

/// `cmd` with at most ten seconds to answer: a wedged daemon must not hang
/// the test. Its stdout and stderr.
fn bounded(cmd: &str) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("timeout 10 {cmd} 2>&1"))
        .output()
        .expect("sh");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A process in a network namespace, its output in `log`; ended on drop.
struct Proc {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Proc {
    fn spawn(ns: &str, name: &str, argv: &[String], log: PathBuf) -> Proc {
        // Appending: FRR writes its log to the same file (`--log file:`).
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = netns::spawn_logged(ns, name, argv, out);
        Proc {
            child,
            name: name.to_string(),
            log,
        }
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    /// SIGTERM, which FRR and BIRD exit cleanly on (zebra removing what it
    /// installed); SIGKILL after five seconds.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} ({}):\n{}",
                self.name,
                self.log.display(),
                self.tail()
            );
        }
        // Not once reaped: the pid may be another process's by now.
        if matches!(self.child.try_wait(), Ok(None)) {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        }
        let end = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// zebra, bgpd and bfdd in a namespace, loaded with `conf` as FRR's service
/// loads /etc/frr/frr.conf.
struct Frr {
    procs: Vec<Proc>,
    /// Configuration (`frr.conf`, `vtysh.conf`) and logs.
    dir: PathBuf,
    /// Pid files and sockets, owned by the `frr` user the daemons run as.
    run: PathBuf,
}

impl Frr {
    fn start(ns: &str, dir: &Path, conf: &str) -> Frr {
        let run = dir.join("run");
        std::fs::create_dir_all(&run).unwrap();
        sh(&format!("chown frr:frr {}", run.display()));
        std::fs::write(dir.join("frr.conf"), conf).unwrap();
        // vtysh reads it from its configuration directory and complains
        // when there is none.
        std::fs::write(dir.join("vtysh.conf"), "").unwrap();
        let empty = dir.join("empty.conf");
        std::fs::write(&empty, "").unwrap();
        let mut frr = Frr {
            procs: Vec::new(),
            dir: dir.to_path_buf(),
            run: run.clone(),
        };
        let p = |f: &str| run.join(f).display().to_string();
        // zebra first, and the others connected to it before the
        // configuration, as watchfrr starts them: a BGP neighbor's `bfd`
        // configured while bgpd has no zebra connection yet is never
        // registered with bfdd (FRR 8.4 does not retry it), and BGP would
        // not follow BFD.
        for (daemons, clients) in [
            (&["zebra"][..], &[][..]),
            (&["bgpd", "bfdd"], &["bgp", "bfd"]),
        ] {
            for d in daemons {
                // Written by the daemon as user frr, and by its stdout.
                let log = dir.join(format!("{d}.log"));
                std::fs::write(&log, "").unwrap();
                sh(&format!("chown frr:frr {}", log.display()));
                let mut argv: Vec<String> = vec![
                    format!("{FRR_DAEMONS}/{d}"),
                    "-f".into(),
                    empty.display().to_string(),
                    "-i".into(),
                    p(&format!("{d}.pid")),
                    "-z".into(),
                    p("zserv.api"),
                    "--vty_socket".into(),
                    p(""),
                    // No TCP vty: the unix socket is enough for vtysh.
                    "-P".into(),
                    "0".into(),
                    "--log".into(),
                    format!("file:{}", log.display()),
                ];
                if *d == "bfdd" {
                    argv.extend(["--bfdctl".into(), p("bfdd.sock")]);
                }
                frr.procs.push(Proc::spawn(ns, d, &argv, log));
            }
            let up = until(Duration::from_secs(20), || {
                frr.procs.iter_mut().all(|p| !p.exited())
                    && daemons
                        .iter()
                        .all(|d| run.join(format!("{d}.vty")).exists())
                    && run.join("zserv.api").exists()
                    && (clients.is_empty() || {
                        let said = frr.vtysh_with("-d zebra -c 'show zebra client summary'");
                        clients
                            .iter()
                            .all(|c| said.lines().any(|l| l.starts_with(&format!("{c} "))))
                    })
            });
            let gone: Vec<String> = frr
                .procs
                .iter_mut()
                .filter_map(|p| p.exited().then(|| p.name.clone()))
                .collect();
            assert!(
                up && gone.is_empty(),
                "FRR did not start: {daemons:?} not up or not connected to zebra (exited: {gone:?})"
            );
        }
        // What watchfrr does once the daemons are up. vtysh exits 0 even
        // when a line fails: anything it says is a failure.
        let said = frr.vtysh_with("-b");
        assert!(
            said.trim().is_empty(),
            "FRR rejected dist/announce/frr.conf:\n{said}"
        );
        frr
    }

    /// `vtysh` with `args`, on this FRR's sockets and configuration.
    fn vtysh_with(&self, args: &str) -> String {
        bounded(&format!(
            "vtysh --vty_socket {} --config_dir {} {args}",
            self.run.display(),
            self.dir.display()
        ))
    }

    fn vtysh(&self, cmd: &str) -> String {
        self.vtysh_with(&format!("-c '{cmd}'"))
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        while let Some(p) = self.procs.pop() {
            let crash_dir = format!("/var/tmp/frr/{}.{}", p.name, p.child.id());
            drop(p);
            // Where FRR keeps a daemon's crash log; a clean exit removes it.
            let _ = std::fs::remove_dir_all(crash_dir);
        }
        // FRR made it if there was none; a running FRR would have its own
        // directories in it and keep it.
        let _ = std::fs::remove_dir("/var/tmp/frr");
    }
}

/// BIRD 2 as the router, in `ns`: BGP with BFD (100 ms x 3) to the balancer
/// host, what it learns into its kernel table.
fn start_router(ns: &str, dir: &Path) -> Proc {
    let conf = dir.join("router.conf");
    std::fs::write(
        &conf,
        format!(
            "router id {CLIENT};\n\
             log stderr all;\n\
             protocol device {{ scan time 1; }}\n\
             protocol kernel {{ ipv4 {{ export where source = RTS_BGP; import none; }}; }}\n\
             protocol bfd {{\n  interface \"c0\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};\n}}\n\
             protocol bgp lb {{\n  local {CLIENT} as 65000;\n  neighbor {LB_CLIENT_SIDE} as 65001;\n  bfd on;\n  \
             connect delay time 1;\n  connect retry time 1;\n  error wait time 1, 5;\n  \
             ipv4 {{ import all; export none; }};\n}}\n"
        ),
    )
    .unwrap();
    let argv = [
        "bird".to_string(),
        "-f".into(),
        "-c".into(),
        conf.display().to_string(),
        "-s".into(),
        router_socket(dir),
    ];
    Proc::spawn(ns, "bird", &argv, dir.join("router.log"))
}

fn router_socket(dir: &Path) -> String {
    dir.join("router.ctl").display().to_string()
}

fn birdc(dir: &Path, cmd: &str) -> String {
    bounded(&format!("birdc -s {} {cmd}", router_socket(dir)))
}

/// The router's kernel route to the VIP, as `ip route` shows it.
fn router_route(ns: &str) -> String {
    sh_out(&format!("ip -n {ns} route show exact {VIP}/32"))
}

/// The router forwards the VIP to the balancer host, by what BIRD learnt.
fn router_has_vip(ns: &str) -> bool {
    let r = router_route(ns);
    r.contains(&format!("via {LB_CLIENT_SIDE}")) && r.contains("proto bird")
}

/// What there is to see when the router did not get what it should.
fn diagnose(lb: &str, router: &str, frr: &Frr, dir: &Path) -> String {
    let mut out = String::new();
    out += &format!(
        "balancer host, table {TABLE}:\n{}",
        bounded(&format!("ip -n {lb} route show table {TABLE}"))
    );
    for c in ["show bgp summary", "show ip route", "show bfd peers brief"] {
        out += &format!("FRR: {c}\n{}", frr.vtysh(c));
    }
    for c in [
        "show protocols all lb",
        "show route all",
        "show bfd sessions",
    ] {
        out += &format!("router: birdc {c}\n{}", birdc(dir, c));
    }
    out += &format!("router's kernel route: {}", router_route(router));
    out
}

/// What a killed run left running in the bed's namespaces (FRR, BIRD, the
/// daemon): deleting a namespace ends no process.
fn kill_leftovers() {
    for role in ["lb", "cli"] {
        let pids = Command::new("ip")
            .args(["netns", "pids", &format!("{NAME}-{role}")])
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if pid <= 1 {
                continue;
            }
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // Killed, FRR's daemons leave their crash-log directories.
            if ["zebra", "bgpd", "bfdd"].contains(&comm.trim()) {
                let _ = std::fs::remove_dir_all(format!("/var/tmp/frr/{}.{pid}", comm.trim()));
            }
        }
    }
    let _ = std::fs::remove_dir("/var/tmp/frr");
}

#[test]
fn frr_announces_the_vip_with_bfd() {
    require_root();
    if !ha::tools_present(&["bird", "birdc", "vtysh"]) {
        return;
    }
    assert!(
        Path::new(FRR_DAEMONS).join("zebra").exists(),
        "vtysh is here but not {FRR_DAEMONS}/zebra: not Debian's frr package?"
    );
    kill_leftovers();
    // Dropped in the reverse order: the router, FRR and the daemon before the
    // namespaces they run in, the directory with their logs last.
    let dir = TempDir(PathBuf::from(format!("/tmp/balancer-{NAME}")));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();

    let bed = Bed::new(NAME, 1);
    let (lb, router) = (bed.ns("lb"), bed.ns("cli"));
    let backend = format!("{}:5060", bed::backend_ip(0));

    // The example as shipped, for the bed's addresses. What the bed takes
    // from it as it is must still be there: the table (the balancer's default,
    // which the daemon below keeps) and the AS numbers the router peers with.
    let conf = ha::dist_example(
        "frr.conf",
        &[("192.0.2.254", CLIENT), ("192.0.2.1", LB_CLIENT_SIDE)],
    );
    for kept in [
        format!("ip import-table {TABLE}\n"),
        format!("redistribute table {TABLE} "),
        "router bgp 65001\n".into(),
        "remote-as 65000\n".into(),
    ] {
        assert!(
            conf.contains(&kept),
            "dist/announce/frr.conf no longer has {kept:?}: update balancer/tests/frr.rs"
        );
    }

    // No probes: the admin state alone decides whether the VIP is carried.
    let args = Bed::attach_args("dnat", NAME, std::slice::from_ref(&backend));
    let path = bed::config_path(NAME);
    let text = std::fs::read_to_string(&path).unwrap()
        + "\n[health]\nenabled = false\n\n[announce]\nenabled = true\n";
    std::fs::write(&path, text).unwrap();
    let d = Daemon::start(&lb, &args);
    let written = || {
        sh_out(&format!(
            "ip -n {lb} route show table {TABLE} proto 252 2>/dev/null || true"
        ))
        .contains(&format!("blackhole {VIP}"))
    };
    assert!(
        until(PROPAGATE, written),
        "the daemon wrote no route in table {TABLE}"
    );
    // Not the balancer's (another protocol), not a host route.
    sh(&format!(
        "ip -n {lb} route add blackhole {NOT_A_VIP} table {TABLE} proto static"
    ));

    let t0 = Instant::now();
    let frr = Frr::start(&lb, &dir.0, &conf);
    let _router = start_router(&router, &dir.0);

    let learnt = until(CONVERGE, || router_has_vip(&router));
    assert!(
        learnt,
        "the router did not learn {VIP}/32 from FRR\n{}",
        diagnose(&lb, &router, &frr, &dir.0)
    );
    let learnt_after = t0.elapsed();

    // Both ends see BFD up, at the example's 100 ms (the session BGP asked
    // for is the one the example's `bfd` block configures), and BGP follows it.
    let bfd = || {
        let r = birdc(&dir.0, "show bfd sessions");
        let f = frr.vtysh("show bfd peers") + &frr.vtysh("show bfd peers brief");
        let b = frr.vtysh(&format!("show bgp neighbors {CLIENT}"));
        r.lines()
            .any(|l| l.starts_with(LB_CLIENT_SIDE) && l.contains(" Up ") && l.contains("0.100"))
            && f.contains(&format!("peer {CLIENT}"))
            && f.contains("Status: up")
            && f.contains("Session count: 1")
            && b.contains("BFD: Type: single hop")
            && b.contains("Status: Up")
    };
    assert!(
        until(CONVERGE, bfd),
        "BFD not up at 100 ms, or BGP not following it\n{}\nFRR: show bgp neighbors {CLIENT}\n{}",
        diagnose(&lb, &router, &frr, &dir.0),
        frr.vtysh(&format!("show bgp neighbors {CLIENT}"))
    );
    eprintln!(
        "frr: after FRR's start, the router learnt the VIP in {learnt_after:?}, BFD was up for BGP in {:?}",
        t0.elapsed()
    );

    let t = Instant::now();
    cli_ok(NAME, &["backend", "disable", &backend]);
    assert!(
        until(PROPAGATE, || !router_has_vip(&router)),
        "the router kept {VIP}/32 after the only backend was disabled\n{}",
        diagnose(&lb, &router, &frr, &dir.0)
    );
    let withdrawn = t.elapsed();
    let t = Instant::now();
    cli_ok(NAME, &["backend", "enable", &backend]);
    assert!(
        until(PROPAGATE, || router_has_vip(&router)),
        "the router did not learn {VIP}/32 again after the backend was enabled\n{}",
        diagnose(&lb, &router, &frr, &dir.0)
    );
    eprintln!(
        "frr: the router lost the VIP {withdrawn:?} after `backend disable`, had it again {:?} after `enable`",
        t.elapsed()
    );
    let learnt_routes = birdc(&dir.0, "show route protocol lb");
    assert!(
        !learnt_routes.contains(NOT_A_VIP),
        "FRR announced {NOT_A_VIP}, no host route:\n{learnt_routes}"
    );

    // Exit without --persist: the daemon withdraws, so does the router.
    assert!(d.stop(), "the daemon did not detach");
    assert!(
        until(PROPAGATE, || !router_has_vip(&router)),
        "the router kept {VIP}/32 after the daemon exited\n{}",
        diagnose(&lb, &router, &frr, &dir.0)
    );
}
