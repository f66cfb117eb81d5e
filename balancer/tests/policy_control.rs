//! The hostile-network controls from user space, end to end in the netns bed:
//! the block list through the CLI (into the kernel's `BLOCKED`, kept across a
//! restart, expired by the daemon) and `GUARD` filled from the routing table
//! and following it when a backend's route moves.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use balancer_common::maps::{Block, Cidr, Guard, SourceAddr};
use balancer_test_support::daemon::{cli, cli_ok, in_netns};
use balancer_test_support::netns::require_root;
use balancer_test_support::netns::sh;
use balancer_test_support::{bed, peers};
use serde_json::Value;

fn vip() -> SocketAddr {
    format!("{}:5060", bed::VIP).parse().unwrap()
}

fn backend(i: usize) -> String {
    format!("{}:5060", bed::backend_ip(i))
}

fn json(instance: &str, args: &[&str]) -> Value {
    serde_json::from_str(&cli_ok(instance, args)).expect("JSON output")
}

/// The daemon under test, killed on drop; `terminate` is SIGTERM.
struct Run {
    child: Option<std::process::Child>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Run {
    fn start(netns: &str, args: &[String]) -> Run {
        use std::io::BufRead;
        let mut child = in_netns(netns)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn balancer");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut run = Run {
            child: Some(child),
            lines,
        };
        loop {
            match run.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l.starts_with("ready") => return run,
                Ok(_) => {}
                Err(_) => {
                    run.kill();
                    panic!("balancer did not print `ready`");
                }
            }
        }
    }

    fn terminate(mut self) -> bool {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().map(|s| s.success()).unwrap_or(false)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(backends: &[usize]) -> String {
    let mut c = format!(
        "interfaces = [\"l0\"]\n\n[[service]]\nvip = \"{}\"\n",
        vip()
    );
    for i in backends {
        c += &format!("\n[[service.backend]]\naddress = \"{}\"\n", backend(*i));
    }
    c
}

fn pin(inst: &str, map: &str) -> MapData {
    MapData::from_pin(format!("/sys/fs/bpf/balancer/{inst}/{map}")).expect("pinned map")
}

/// The pinned `BLOCKED`: (prefix length, CIDR) -> until.
fn blocked(inst: &str) -> HashMap<(u32, IpAddr), u64> {
    let m: LpmTrie<MapData, Cidr, Block> = Map::LpmTrie(pin(inst, "BLOCKED")).try_into().unwrap();
    m.iter()
        .map(Result::unwrap)
        .map(|(k, v)| {
            let c = k.data();
            let ip = if c.family == 2 {
                IpAddr::from([c.addr[0], c.addr[1], c.addr[2], c.addr[3]])
            } else {
                IpAddr::from(c.addr)
            };
            ((k.prefix_len(), ip), v.until)
        })
        .collect()
}

/// The pinned `GUARD`: address -> ifindex.
fn guard(inst: &str) -> HashMap<IpAddr, u32> {
    let m: BpfHashMap<MapData, SourceAddr, Guard> =
        Map::HashMap(pin(inst, "GUARD")).try_into().unwrap();
    m.iter()
        .map(Result::unwrap)
        .map(|(k, v)| {
            let ip = if k.family == 2 {
                IpAddr::from([k.addr[0], k.addr[1], k.addr[2], k.addr[3]])
            } else {
                IpAddr::from(k.addr)
            };
            (ip, v.ifindex)
        })
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn ifindex(bed: &bed::Bed, dev: &str) -> u32 {
    let out =
        balancer_test_support::netns::sh_out(&format!("ip -n {} -o link show {dev}", bed.ns("lb")));
    out.split(':').next().unwrap().trim().parse().unwrap()
}

/// Waits up to `limit` for `f` to hold; returns how long it took.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn block_list_reaches_the_kernel_survives_a_restart_and_expires() {
    require_root();
    let inst = format!("bl{}", std::process::id());
    let bed = bed::Bed::new(&inst, 2);
    let _uas: Vec<peers::Uas> = (0..2)
        .map(|i| peers::Uas::start(&bed.backend_ns(i), "0.0.0.0:5060"))
        .collect();
    let conf = bed::config_path(&inst);
    // A second service, without backends, whose limit blocks a source at its
    // eleventh datagram for 30 s.
    let limited = "10.0.0.11:5060";
    let text = format!(
        "{}\n[[service]]\nvip = \"{limited}\"\n\n[service.limits]\ndatagrams = 10\nblock_for = \"30s\"\n",
        config(&[0, 1])
    );
    std::fs::write(&conf, text).unwrap();
    let run = ["run", "--config", &conf, "--persist", "--instance", &inst].map(String::from);
    let d = Run::start(&bed.ns("lb"), &run);

    // GUARD: the backends on the interface their route uses, the VIP and the
    // host's own addresses never from outside.
    let l1 = ifindex(&bed, "l1");
    let g = guard(&inst);
    assert_eq!(g.get(&bed::backend_ip(0).into()), Some(&l1), "{g:?}");
    assert_eq!(g.get(&bed::backend_ip(1).into()), Some(&l1), "{g:?}");
    for never in [
        bed::VIP,
        bed::LB_CLIENT_SIDE,
        bed::LB_BACKEND_SIDE,
        "127.0.0.1",
    ] {
        assert_eq!(g.get(&ip(never)), Some(&0), "{never}: {g:?}");
    }
    assert_eq!(g.get(&ip(bed::CLIENT)), None);

    // The client gets answers; blocked, it gets none, and the kernel says why.
    let ids = |tag: &str| -> Vec<String> { (0..20).map(|i| format!("{tag}-{i}@c")).collect() };
    let a = peers::run_client(&bed.ns("cli"), vip(), &ids("before"), 1, 20);
    assert_eq!(a.by_call_id.len(), 20);
    let out = cli_ok(
        &inst,
        &["block", "add", bed::CLIENT, "--reason", "test client"],
    );
    assert!(out.contains("10.0.1.2/32 blocked until removed"), "{out}");
    cli_ok(&inst, &["block", "add", "203.0.113.0/24"]);
    cli_ok(&inst, &["block", "add", "2001:db8:bad::/48", "--for", "3s"]);
    let a = peers::run_client(&bed.ns("cli"), vip(), &ids("blocked"), 1, 20);
    assert!(a.by_call_id.is_empty(), "blocked, yet answered: {a:?}");
    let stats = json(&inst, &["stats", "--json"]);
    assert!(
        stats["reasons"]["blocked"].as_u64().unwrap() >= 20,
        "{stats}"
    );
    // `stats` shows it among the drops.
    let human = cli_ok(&inst, &["stats"]);
    let drops = human.split("  dropped\n").nth(1).expect("a dropped group");
    assert!(
        drops
            .lines()
            .any(|l| l.trim_start().starts_with("blocked ")),
        "{human}"
    );

    let b = blocked(&inst);
    assert_eq!(b.len(), 3, "{b:?}");
    assert_eq!(b[&(32 + 32, ip(bed::CLIENT))], 0);
    assert_eq!(b[&(32 + 24, ip("203.0.113.0"))], 0);
    let until = b[&(32 + 48, ip("2001:db8:bad::"))];
    let now = monotonic_ns();
    assert!(
        until > now && until < now + 5_000_000_000,
        "expires in about 3 s on the monotonic clock: {until} vs {now}"
    );
    let list = json(&inst, &["block", "list", "--json"]);
    let rows = list["configured"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{list}");
    assert!(list["automatic"].as_array().unwrap().is_empty(), "{list}");
    assert_eq!(rows[0]["cidr"], "10.0.1.2/32");
    assert_eq!(rows[0]["reason"], "test client");
    assert_eq!(rows[0]["until"], Value::Null);
    assert!(rows[2]["remaining_s"].as_u64().unwrap() <= 4, "{list}");
    let human = cli_ok(&inst, &["block", "list"]);
    assert!(
        human.contains("10.0.1.2/32")
            && human.contains("permanent")
            && human.contains("test client"),
        "{human}"
    );

    // The 3 s entry expires: the daemon removes it from its list, the kernel
    // and the file.
    let gone = within(Duration::from_secs(12), || {
        json(&inst, &["block", "list", "--json"])["configured"]
            .as_array()
            .unwrap()
            .len()
            == 2
    });
    assert!(gone.is_some(), "the expired entry is removed");
    assert_eq!(blocked(&inst).len(), 2);
    let saved = std::fs::read_to_string(&conf).unwrap();
    assert!(
        saved.contains("10.0.1.2/32") && !saved.contains("2001:db8:bad::"),
        "{saved}"
    );

    // A restart (SIGTERM with --persist) comes back with the same entries.
    let before = blocked(&inst);
    let guard_before = guard(&inst);
    assert!(d.terminate());
    let d = Run::start(&bed.ns("lb"), &run);
    assert_eq!(blocked(&inst), before, "the block list after a restart");
    assert_eq!(guard(&inst), guard_before, "GUARD after a restart");
    let list = json(&inst, &["block", "list", "--json"]);
    assert_eq!(list["configured"].as_array().unwrap().len(), 2, "{list}");

    // Removed: answered again.
    let (ok, _, err) = cli(&inst, &["block", "remove", "198.51.100.0/24"]);
    assert!(!ok && err.contains("not in the block list"), "{err}");
    let (ok, _, err) = cli(&inst, &["block", "add", "10.0.1.2/24"]);
    assert!(!ok && err.contains("host bits"), "{err}");
    let out = cli_ok(&inst, &["block", "remove", "10.0.1.2"]);
    assert!(out.contains("unblocked"), "{out}");
    assert_eq!(blocked(&inst).len(), 1);
    let a = peers::run_client(&bed.ns("cli"), vip(), &ids("after"), 1, 20);
    assert_eq!(a.by_call_id.len(), 20);

    // Over the second service's limit: blocked automatically, and listed so.
    let flood: Vec<String> = (0..30).map(|i| format!("flood-{i}@c")).collect();
    peers::run_client(&bed.ns("cli"), limited.parse().unwrap(), &flood, 1, 30);
    let list = json(&inst, &["block", "list", "--json"]);
    let auto = list["automatic"].as_array().unwrap();
    assert_eq!(auto.len(), 1, "{list}");
    assert_eq!(auto[0]["service"], limited);
    assert_eq!(auto[0]["source"], "10.0.1.2/32");
    let left = auto[0]["remaining_s"].as_u64().unwrap();
    assert!((20..=30).contains(&left), "{list}");
    let stats = json(&inst, &["stats", "--json"]);
    assert_eq!(stats["reasons"]["auto_blocked"], 1, "{stats}");
    let human = cli_ok(&inst, &["block", "list"]);
    assert!(
        human.contains("over the limits of 10.0.0.11:5060"),
        "{human}"
    );

    assert!(d.terminate());
    cli_ok(&inst, &["detach"]);
}

#[test]
fn guard_follows_a_backends_route_to_another_interface() {
    require_root();
    let inst = format!("gd{}", std::process::id());
    let bed = bed::Bed::new(&inst, 1);
    let (lb, b0) = (bed.ns("lb"), bed.backend_ns(0));
    // A second link between the balancer and backend 0.
    sh(&format!(
        "ip link add l2 netns {lb} type veth peer name e1 netns {b0}"
    ));
    sh(&format!(
        "ip -n {lb} addr add 10.0.3.1/24 dev l2 && ip -n {lb} link set l2 up"
    ));
    sh(&format!(
        "ip -n {b0} addr add 10.0.3.2/24 dev e1 && ip -n {b0} link set e1 up"
    ));
    let conf = bed::config_path(&inst);
    std::fs::write(&conf, config(&[0])).unwrap();
    let run = ["run", "--config", &conf, "--instance", &inst].map(String::from);
    let d = Run::start(&lb, &run);
    let (l1, l2) = (ifindex(&bed, "l1"), ifindex(&bed, "l2"));
    let b = IpAddr::from(bed::backend_ip(0));
    assert_eq!(guard(&inst).get(&b), Some(&l1));
    assert_eq!(guard(&inst).get(&ip("10.0.3.1")), Some(&0));

    // A more specific route moves the backend to l2: GUARD follows, and the
    // program is attached there.
    sh(&format!("ip -n {lb} route add {b}/32 via 10.0.3.2 dev l2"));
    let took = within(Duration::from_secs(3), || guard(&inst).get(&b) == Some(&l2));
    assert!(
        took.is_some(),
        "GUARD follows the route: {:?}",
        guard(&inst)
    );
    eprintln!("GUARD followed the route in {took:?}");
    let link = balancer_test_support::netns::sh_out(&format!("ip -n {lb} -d link show l2"));
    assert!(link.contains("xdp"), "attached to l2: {link}");
    let status = json(&inst, &["stats", "--json"]);
    assert!(
        status["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == "l2"),
        "{status}"
    );

    // An address added to the host is never accepted from outside; the route
    // removed, the backend is back on l1.
    sh(&format!("ip -n {lb} addr add 10.0.9.1/32 dev lo"));
    sh(&format!("ip -n {lb} route del {b}/32"));
    let took = within(Duration::from_secs(3), || {
        let g = guard(&inst);
        g.get(&b) == Some(&l1) && g.get(&ip("10.0.9.1")) == Some(&0)
    });
    assert!(took.is_some(), "GUARD follows back: {:?}", guard(&inst));
    assert!(d.terminate());
}
