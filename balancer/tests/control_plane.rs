//! The daemon and its CLI, end to end in the netns bed: changes while traffic
//! flows, a crash and hitless restart, bad input refused whole.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use balancer_test_support::daemon::{cli, cli_ok, Daemon};
use balancer_test_support::netns::require_root;
use balancer_test_support::{bed, daemon, peers};
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

/// Sends `n` fresh Call-IDs once each; returns, per backend index, the Call-IDs
/// it received, after checking each went to exactly the backend `whereis` names.
fn phase(bed: &bed::Bed, inst: &str, uas: &[peers::Uas], tag: &str, n: usize) -> Vec<usize> {
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}@10.0.1.2")).collect();
    let answers = peers::run_client(&bed.ns("cli"), vip(), &ids, 1, 64);
    assert_eq!(
        answers.by_call_id.len(),
        n,
        "{tag}: every Call-ID answered\n{}",
        bed.diagnose()
    );
    let seen: Vec<HashMap<String, u32>> =
        uas.iter().map(|u| u.seen.lock().unwrap().clone()).collect();
    let mut per = vec![0usize; uas.len()];
    for (k, id) in ids.iter().enumerate() {
        let holders: Vec<usize> = (0..uas.len())
            .filter(|&b| seen[b].contains_key(id))
            .collect();
        assert_eq!(holders.len(), 1, "{id} reached {holders:?}");
        per[holders[0]] += 1;
        // `whereis` reads the live kernel table: it must name the same backend.
        if k % 10 == 0 {
            let w = cli_ok(inst, &["whereis", id]);
            assert_eq!(w.trim(), backend(holders[0]), "{id}: whereis agrees");
        }
    }
    per
}

fn assert_shares(per: &[usize], want: &[f64], what: &str) {
    let total: usize = per.iter().sum();
    for (b, (&n, &w)) in per.iter().zip(want).enumerate() {
        let share = n as f64 / total as f64;
        assert!(
            (share - w).abs() < 0.04,
            "{what}: backend {b} got {share:.3}, expected {w:.3}: {per:?}"
        );
    }
}

#[test]
fn backends_change_while_traffic_flows() {
    require_root();
    let inst = format!("cp{}", std::process::id());
    let bed = bed::Bed::new(&inst, 4);
    let uas: Vec<peers::Uas> = (0..4)
        .map(|i| peers::Uas::start(&bed.backend_ns(i), "0.0.0.0:5060"))
        .collect();
    let args = bed::Bed::attach_args("dnat", &inst, &[backend(0), backend(1), backend(2)]);
    let d = Daemon::start(&bed.ns("lb"), &args);

    // Only root may talk to the daemon.
    let sock = format!("/run/balancer/{inst}.sock");
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{sock} is 0600");
    let as_nobody = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(daemon::balancer_bin())
        .args(["--instance", &inst, "service", "list"])
        .output()
        .unwrap();
    assert!(!as_nobody.status.success());
    let err = String::from_utf8_lossy(&as_nobody.stderr);
    assert!(err.contains("ermission denied"), "{err}");

    let (dropped_before, _) = bed.drops(uas.len());
    let stream = peers::Dialogs::start(&bed.ns("cli"), vip(), Duration::from_millis(1), "bg");

    let per = phase(&bed, &inst, &uas, "p0", 3000);
    assert_shares(&per[..3], &[1.0 / 3.0; 3], "three backends");
    assert_eq!(per[3], 0);

    let out = cli_ok(&inst, &["backend", "add", &backend(3)]);
    assert!(out.contains("added"), "{out}");
    let per = phase(&bed, &inst, &uas, "p1", 4000);
    assert_shares(&per, &[0.25; 4], "backend 3 added");

    cli_ok(&inst, &["backend", "drain", &backend(1)]);
    let per = phase(&bed, &inst, &uas, "p2", 3000);
    assert_eq!(per[1], 0, "a draining backend takes no new dialogs");
    assert_shares(
        &[per[0], per[2], per[3]],
        &[1.0 / 3.0; 3],
        "backend 1 draining",
    );

    cli_ok(&inst, &["backend", "remove", &backend(2)]);
    cli_ok(&inst, &["backend", "set-weight", &backend(0), "3"]);
    let per = phase(&bed, &inst, &uas, "p3", 4000);
    assert_eq!(per[1] + per[2], 0);
    assert_shares(&[per[0], per[3]], &[0.75, 0.25], "weights 3:1");

    let sent = stream.finish();
    let (dropped_after, where_dropped) = bed.drops(uas.len());
    let bed_lost = dropped_after - dropped_before;
    let unanswered = sent
        .ids
        .iter()
        .filter(|(id, _)| !sent.answers.contains_key(id))
        .count();
    eprintln!(
        "background stream: {} Call-IDs sent, {unanswered} unanswered, {} answers from \
         elsewhere; the bed dropped {bed_lost}",
        sent.ids.len(),
        sent.elsewhere.len()
    );
    assert!(sent.ids.len() > 1000);
    let twice: Vec<_> = sent.answers.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "answered more than once: {twice:?}");
    // Datagrams already at backend 2 when it was removed may answer after its
    // reverse-NAT entry is gone, and the bed's own veths may drop some (the
    // kernel counts those); nothing else may be lost.
    assert!(
        unanswered as u64 <= 3 + bed_lost,
        "{} sent, {unanswered} unanswered, the bed dropped {bed_lost}\n{where_dropped}\n{}",
        sent.ids.len(),
        bed.diagnose()
    );

    // The state as the CLI shows it, and as the file holds it.
    let list = json(&inst, &["backend", "list", "--json"]);
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let row = |a: &str| rows.iter().find(|r| r["address"] == a).unwrap().clone();
    assert_eq!(row(&backend(0))["weight"], 3);
    assert_eq!(row(&backend(1))["state"], "draining");
    assert_eq!(row(&backend(3))["state"], "active");
    assert!(row(&backend(0))["packets"].as_u64().unwrap() > 3000);
    assert!(row(&backend(0))["bytes"].as_u64().unwrap() > 300_000);
    assert_eq!(row(&backend(0))["service"], vip().to_string());
    let svc = json(&inst, &["service", "list", "--json"]);
    assert_eq!(svc[0]["vip"], vip().to_string());
    assert_eq!(svc[0]["backends"], 3);
    assert_eq!(svc[0]["algorithm"], "call-id");
    let stats = json(&inst, &["stats", "--json"]);
    assert!(stats["reasons"]["callid"].as_u64().unwrap() >= 14000);
    assert!(stats["reasons"]["reverse_nat"].as_u64().unwrap() >= 14000);
    let w = json(&inst, &["whereis", "--json", "abc@host"]);
    assert_eq!(w["service"], vip().to_string());
    assert!(w["backend"].is_string());

    let saved = std::fs::read_to_string(bed::config_path(&inst)).unwrap();
    assert!(
        saved.contains(&backend(3)) && !saved.contains(&backend(2)),
        "{saved}"
    );
    // `attach` kept the file's limits for its VIP.
    assert!(saved.contains("dialogs = 0"), "{saved}");
    assert!(
        saved.contains("state = \"draining\"") && saved.contains("weight = 3"),
        "{saved}"
    );

    assert!(d.stop(), "detaches cleanly on SIGTERM");
    assert!(!std::path::Path::new(&sock).exists(), "socket removed");
}

/// From a datagram's send to the XDP program reading it: veth queues and NAPI
/// threads on two shared cores.
const TRANSIT: Duration = Duration::from_millis(50);

/// `(backend index, weight)` of the restart test's service.
type Members = [(usize, u32)];

/// The configuration file of the restart test: one service with `members`,
/// without per-source limits (the tests' one client starts thousands of
/// dialogs a second, more than the default 2000).
fn restart_config(members: &Members) -> String {
    let mut c = format!(
        "interfaces = [\"l0\"]\n\n[[service]]\nvip = \"{}\"\n\n\
         [service.limits]\ndatagrams = 0\ndialogs = 0\n",
        vip()
    );
    for &(i, w) in members {
        c += &format!(
            "\n[[service.backend]]\naddress = \"{}\"\nweight = {w}\n",
            backend(i)
        );
    }
    c
}

/// The service's Maglev table over `members`, built by the balancer's own
/// code: the backend index a fresh Call-ID goes to.
fn table(members: &Members) -> impl Fn(&str) -> usize {
    let specs: Vec<balancer::model::BackendConfig> = members
        .iter()
        .map(|&(i, weight)| balancer::model::BackendConfig {
            weight,
            ..balancer::model::BackendConfig::new(backend(i).parse().unwrap())
        })
        .collect();
    let sel = balancer::select::Selector::build(&specs, 65537).unwrap();
    move |id: &str| {
        let addr = sel
            .whereis(id.as_bytes())
            .expect("a backend")
            .address
            .to_string();
        (0..bed::MAX_BACKENDS)
            .find(|&i| backend(i) == addr)
            .unwrap()
    }
}

/// Which backends received `id`.
fn holders_of(uas: &[peers::Uas], id: &str) -> Vec<(usize, u32)> {
    uas.iter()
        .enumerate()
        .filter_map(|(i, u)| u.seen.lock().unwrap().get(id).map(|&n| (i, n)))
        .collect()
}

/// The daemon as a child of this test, so that it can be sent SIGTERM or
/// SIGKILL and its exit read.
struct Run {
    child: Option<std::process::Child>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Run {
    /// Starts `balancer <args>` in `netns`; returns once it printed `ready`.
    fn start(netns: &str, args: &[String]) -> Run {
        use std::io::BufRead;
        let mut child = daemon::in_netns(netns)
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
        // Loading includes the verifier: seconds on a busy machine.
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

    /// SIGTERM; returns whether it exited 0, and what it printed on the way out.
    fn terminate(mut self) -> (bool, Vec<String>) {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let ok = child.wait().map(|s| s.success()).unwrap_or(false);
        (ok, self.lines.iter().collect())
    }

    /// SIGKILL: a crash, as far as the daemon can tell.
    fn crash(mut self) {
        self.kill();
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

/// What the kernel shows of an instance's data plane.
#[derive(Debug, Clone, PartialEq)]
struct Kernel {
    /// Interface -> id of the XDP program `ip link` shows on it.
    programs: std::collections::BTreeMap<String, u32>,
    /// Interface -> (link id, program id) of its pinned link.
    links: std::collections::BTreeMap<String, (u32, u32)>,
    /// Pinned map -> map id.
    maps: std::collections::BTreeMap<String, u32>,
    /// Interface -> the pinned maps its program uses.
    uses: std::collections::BTreeMap<String, Vec<String>>,
}

impl Kernel {
    fn read(bed: &bed::Bed, inst: &str) -> Kernel {
        let pins = format!("/sys/fs/bpf/balancer/{inst}");
        let mut k = Kernel {
            programs: Default::default(),
            links: Default::default(),
            maps: Default::default(),
            uses: Default::default(),
        };
        for e in std::fs::read_dir(&pins).expect("pin directory") {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(iface) = name.strip_prefix("link_") {
                let link = aya::programs::links::PinnedLink::from_pin(e.path()).unwrap();
                let info = aya::programs::links::FdLink::from(link).info().unwrap();
                k.links
                    .insert(iface.to_string(), (info.id(), info.program_id()));
                k.programs
                    .insert(iface.to_string(), xdp_program(bed, iface));
            } else {
                let info = aya::maps::MapInfo::from_pin(e.path()).unwrap();
                k.maps.insert(name, info.id());
            }
        }
        assert!(k.links.contains_key("l0") && k.maps.len() > 10, "{k:?}");
        for (iface, (_, prog)) in &k.links {
            assert_eq!(
                k.programs[iface], *prog,
                "{iface} runs its pinned link's program: {k:?}"
            );
            let ids: Vec<u32> = aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .find(|p| p.id() == *prog)
                .expect("the program is loaded")
                .map_ids()
                .unwrap()
                .unwrap_or_default();
            let uses: Vec<String> = k
                .maps
                .iter()
                .filter(|(_, id)| ids.contains(id))
                .map(|(m, _)| m.clone())
                .collect();
            for m in ["SERVICES", "BACKENDS", "MAGLEV", "AFFINITY", "STATS"] {
                assert!(
                    uses.iter().any(|u| u == m),
                    "{iface}: uses pinned {m}: {k:?}"
                );
            }
            k.uses.insert(iface.clone(), uses);
        }
        k
    }

    /// What the README promises of a restart: "adopts the pinned maps and
    /// replaces the program on the same XDP link atomically". The same links
    /// and maps, a new program on each link, and that program uses the pinned
    /// maps the old one used.
    fn assert_replaced_by(&self, after: &Kernel, what: &str) {
        assert_eq!(self.maps, after.maps, "{what}: the pinned maps adopted");
        assert_eq!(
            self.uses, after.uses,
            "{what}: the new program uses the pinned maps"
        );
        for (iface, (link, prog)) in &self.links {
            let (link2, prog2) = after.links[iface];
            assert_eq!(link2, *link, "{what}: {iface} keeps its link");
            assert_ne!(prog2, *prog, "{what}: {iface} runs a new program");
        }
    }
}

/// Which of the service's two table halves the kernel reads now (the pinned
/// `SERVICES` entry of the VIP).
fn live_half(inst: &str) -> u32 {
    let pin = format!("/sys/fs/bpf/balancer/{inst}/SERVICES");
    let map = aya::maps::Map::HashMap(aya::maps::MapData::from_pin(pin).unwrap());
    let services: aya::maps::HashMap<
        aya::maps::MapData,
        balancer_common::maps::Endpoint,
        balancer_common::maps::Service,
    > = map.try_into().unwrap();
    services
        .get(&balancer_common::maps::Endpoint::from(vip()), 0)
        .expect("the service in the kernel")
        .active
}

/// The id of the XDP program attached to `iface` in the balancer's namespace.
fn xdp_program(bed: &bed::Bed, iface: &str) -> u32 {
    let o = std::process::Command::new("ip")
        .args([
            "-n",
            &bed.ns("lb"),
            "-j",
            "-d",
            "link",
            "show",
            "dev",
            iface,
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).expect("ip -j");
    let xdp = &v[0]["xdp"];
    xdp["prog"]["id"]
        .as_u64()
        .or_else(|| xdp["attached"][0]["prog"]["id"].as_u64())
        .unwrap_or_else(|| panic!("no XDP program on {iface}: {v}")) as u32
}

#[test]
fn restarts_lose_no_dialog_and_keep_established_ones() {
    require_root();
    let inst = format!("rs{}", std::process::id());
    let bed = bed::Bed::new(&inst, 3);
    let uas: Vec<peers::Uas> = (0..3)
        .map(|i| peers::Uas::start(&bed.backend_ns(i), "0.0.0.0:5060"))
        .collect();
    let conf = bed::config_path(&inst);
    std::fs::write(&conf, restart_config(&[(0, 1), (1, 2)])).unwrap();
    let run = ["run", "--config", &conf, "--persist", "--instance", &inst].map(String::from);
    let d = Run::start(&bed.ns("lb"), &run);
    cli_ok(&inst, &["backend", "drain", &backend(0)]);
    cli_ok(&inst, &["backend", "enable", &backend(0)]);
    cli_ok(&inst, &["backend", "set-weight", &backend(0), "3"]);
    let before = json(&inst, &["backend", "list", "--json"]);
    let old: &Members = &[(0, 3), (1, 2)];
    let k0 = Kernel::read(&bed, &inst);

    // Traffic flows throughout: before, while no daemon runs, and after each
    // start, every time for a few hundred Call-IDs.
    let (dropped_before, _) = bed.drops(uas.len());
    let stream = peers::Dialogs::start(&bed.ns("cli"), vip(), Duration::from_millis(1), "rs");
    let phase = 400;
    // Where in the stream each step happened, for the failure messages.
    let mut marks: Vec<(usize, &str)> = Vec::new();
    stream.await_more(phase);
    marks.push((stream.sent(), "SIGTERM"));

    // 1. SIGTERM with --persist: the daemon exits and leaves the data plane
    // (programs, links, maps) running with the last tables.
    let (ok, said) = d.terminate();
    assert!(ok, "exits 0 on SIGTERM: {said:?}");
    assert!(
        said.iter()
            .any(|l| l.contains("the data plane stays attached")),
        "with --persist, SIGTERM leaves the data plane attached; it said {said:?}"
    );
    assert_eq!(
        Kernel::read(&bed, &inst),
        k0,
        "untouched while no daemon runs"
    );
    stream.await_more(phase);
    marks.push((stream.sent(), "start"));
    let d = Run::start(&bed.ns("lb"), &run);
    marks.push((stream.sent(), "ready"));
    let k1 = Kernel::read(&bed, &inst);
    k0.assert_replaced_by(&k1, "after SIGTERM");
    stream.await_more(phase);

    // 2. SIGKILL: the same, without the daemon's help.
    marks.push((stream.sent(), "SIGKILL"));
    d.crash();
    assert_eq!(Kernel::read(&bed, &inst), k1, "untouched after a crash");
    stream.await_more(phase);
    marks.push((stream.sent(), "start"));
    let d = Run::start(&bed.ns("lb"), &run);
    marks.push((stream.sent(), "ready"));
    let k2 = Kernel::read(&bed, &inst);
    k1.assert_replaced_by(&k2, "after SIGKILL");
    stream.await_more(phase);

    let after = json(&inst, &["backend", "list", "--json"]);
    let strip = |v: &Value| -> Vec<(String, String, u64)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["address"].as_str().unwrap().to_string(),
                    r["state"].as_str().unwrap().to_string(),
                    r["weight"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        strip(&before),
        strip(&after),
        "same state after the restarts"
    );
    // Counters live in the pinned maps: they carried on, every datagram sent
    // so far counted (once it got through).
    let total = |v: &Value| -> u64 {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["packets"].as_u64().unwrap())
            .sum()
    };
    let sent_so_far = stream.sent() as u64;
    let t0 = std::time::Instant::now();
    loop {
        let now = json(&inst, &["backend", "list", "--json"]);
        if total(&now) >= sent_so_far {
            break;
        }
        // A deadline for the last few in flight, not the claim.
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{sent_so_far} sent: {now}"
        );
        std::thread::sleep(TRANSIT / 10);
    }

    // 3. A configuration change while the daemon is down (backend 2 added,
    // backend 0 reweighted): dialogs begun before keep their backend (the
    // affinity map is adopted, slots keep their backends), new ones follow the
    // new table.
    let new: &Members = &[(0, 1), (1, 2), (2, 1)];
    let stopped = std::time::Instant::now();
    marks.push((stream.sent(), "SIGTERM"));
    let (ok, said) = d.terminate();
    assert!(ok, "{said:?}");
    let half = live_half(&inst);
    std::fs::write(&conf, restart_config(new)).unwrap();
    stream.await_more(phase);
    let starting = std::time::Instant::now();
    marks.push((stream.sent(), "start"));
    let d = Run::start(&bed.ns("lb"), &run);
    let ready = std::time::Instant::now();
    marks.push((stream.sent(), "ready"));
    let k3 = Kernel::read(&bed, &inst);
    k2.assert_replaced_by(&k3, "after a configuration change");
    // The new table went into the idle half, then the service switched to it
    // (writing the live half in place would let packets read a half-written
    // table, which the traffic here could not tell).
    assert_eq!(
        live_half(&inst),
        1 - half,
        "the new table is in the other half"
    );
    stream.await_more(phase);

    // Every Call-ID is sent once and the backend answers every request once:
    // each must be answered exactly once (twice: duplicated; never: lost), by
    // exactly one backend, the one the table in force named (the old one until
    // the new daemon starts, the new one from `ready`, either in between).
    // Datagrams the bed's own veths dropped before or after the balancer (the
    // kernel counts them) are not the balancer's: at most that many may go
    // unanswered.
    let sent = stream.finish();
    let (dropped_after, where_dropped) = bed.drops(uas.len());
    let bed_lost = dropped_after - dropped_before;
    let (old_table, new_table) = (table(old), table(new));
    eprintln!(
        "across three restarts: {} Call-IDs sent, {} answered; the bed dropped {bed_lost} datagrams",
        sent.ids.len(),
        sent.answers.len()
    );
    assert!(sent.elsewhere.is_empty(), "{:?}", sent.elsewhere);
    let twice: Vec<_> = sent.answers.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "answered more than once: {twice:?}");
    let unanswered: Vec<String> = sent
        .ids
        .iter()
        .enumerate()
        .filter(|(_, (id, _))| !sent.answers.contains_key(id))
        .map(|(k, (id, _))| {
            format!(
                "#{k} reached {:?}, table old {} new {}",
                holders_of(&uas, id),
                old_table(id),
                new_table(id)
            )
        })
        .collect();
    assert!(
        unanswered.len() as u64 <= bed_lost,
        "{} of {} Call-IDs not answered, the bed dropped {bed_lost} datagrams (stream \
         position of each step: {marks:?}):\n{}\n{}\n{where_dropped}",
        unanswered.len(),
        sent.ids.len(),
        unanswered.join("\n"),
        cli_ok(&inst, &["stats"]),
    );
    for (id, t) in &sent.ids {
        let h = holders_of(&uas, id);
        let (o, n) = (old_table(id), new_table(id));
        let allowed: &[usize] = if *t + TRANSIT < starting {
            &[o]
        } else if *t > ready {
            &[n]
        } else {
            &[o, n]
        };
        // One the bed dropped on its way there reached none.
        let dropped = h.is_empty() && !sent.answers.contains_key(id);
        assert!(
            dropped || (h.len() == 1 && h[0].1 == 1 && allowed.contains(&h[0].0)),
            "{id} reached {h:?}, the table said {allowed:?}"
        );
    }

    // Dialogs from before the change: those the new table would move, and as
    // many it would not, sent again.
    let established: Vec<(String, usize)> = sent
        .ids
        .iter()
        .filter(|(id, t)| *t + TRANSIT < stopped && sent.answers.contains_key(id))
        .map(|(id, _)| (id.clone(), old_table(id)))
        .collect();
    let moved: Vec<&(String, usize)> = established
        .iter()
        .filter(|(id, b)| new_table(id) != *b)
        .take(600)
        .collect();
    let kept: Vec<&(String, usize)> = established
        .iter()
        .filter(|(id, b)| new_table(id) == *b)
        .take(600)
        .collect();
    assert!(
        moved.len() >= 300,
        "only {} established dialogs the new table moves",
        moved.len()
    );
    let again: Vec<String> = moved
        .iter()
        .chain(&kept)
        .map(|(id, _)| id.clone())
        .collect();
    let answers = peers::run_client(&bed.ns("cli"), vip(), &again, 1, 64);
    assert_eq!(answers.by_call_id.len(), again.len(), "{}", bed.diagnose());
    for (k, (id, b)) in moved.iter().chain(&kept).enumerate() {
        assert_eq!(
            holders_of(&uas, id),
            vec![(*b, 2)],
            "{id} stays with backend {b}"
        );
        if k % 20 == 0 {
            let w = json(&inst, &["whereis", "--json", id]);
            assert_eq!(w["backend"], backend(*b), "{id}: {w}");
            if new_table(id) != *b {
                assert_eq!(w["via"], "affinity", "{id}: {w}");
            }
        }
    }
    // New dialogs: the new table, as user space predicts it.
    let fresh: Vec<String> = (0..3000).map(|i| format!("new-{i}@10.0.1.2")).collect();
    let answers = peers::run_client(&bed.ns("cli"), vip(), &fresh, 1, 64);
    assert_eq!(answers.by_call_id.len(), fresh.len(), "{}", bed.diagnose());
    for (k, id) in fresh.iter().enumerate() {
        assert_eq!(
            holders_of(&uas, id),
            vec![(new_table(id), 1)],
            "{id} follows the new table"
        );
        if k % 50 == 0 {
            let w = cli_ok(&inst, &["whereis", id]);
            assert_eq!(w.trim(), backend(new_table(id)), "{id}: whereis agrees");
        }
    }
    let list = json(&inst, &["backend", "list", "--json"]);
    let mut rows = strip(&list);
    rows.sort();
    let mut want: Vec<(String, String, u64)> = new
        .iter()
        .map(|&(i, w)| (backend(i), "active".to_string(), u64::from(w)))
        .collect();
    want.sort();
    assert_eq!(rows, want, "the changed configuration is served");

    // With --persist, SIGTERM leaves the data plane; `detach` removes it all.
    let (ok, said) = d.terminate();
    assert!(ok, "{said:?}");
    let pins = format!("/sys/fs/bpf/balancer/{inst}");
    assert!(std::path::Path::new(&pins).exists());
    let out = cli_ok(&inst, &["detach"]);
    assert!(out.contains("detached"), "{out}");
    assert!(!std::path::Path::new(&pins).exists(), "pins removed");
    for iface in k3.links.keys() {
        let link = std::process::Command::new("ip")
            .args(["-n", &bed.ns("lb"), "-d", "link", "show", iface])
            .output()
            .unwrap();
        let link = String::from_utf8_lossy(&link.stdout);
        assert!(
            !link.contains("prog/xdp"),
            "XDP detached from {iface}: {link}"
        );
    }
}

#[test]
fn bad_input_is_refused_whole() {
    require_root();
    let inst = format!("bad{}", std::process::id());
    let bed = bed::Bed::new(&inst, 2);
    let conf = bed::config_path(&inst);

    // A malformed configuration: the daemon does not start, and says where.
    std::fs::write(
        &conf,
        "interfaces = [\"l0\"]\n[[service]]\nvip = 10.0.0.10:5060\n",
    )
    .unwrap();
    let o = daemon::in_netns(&bed.ns("lb"))
        .args(["run", "--config", &conf, "--instance", &inst])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 3"), "{err}");

    std::fs::remove_file(&conf).unwrap();
    let args = bed::Bed::attach_args("dnat", &inst, &[backend(0)]);
    let d = Daemon::start(&bed.ns("lb"), &args);
    // What a refused command must not change: the configuration as the daemon
    // holds it and as the file says (health comes and goes on its own).
    let state = || {
        let v = json(&inst, &["backend", "list", "--json"]);
        let rows: Vec<(String, String, u64)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["address"].as_str().unwrap().to_string(),
                    r["service"].as_str().unwrap().to_string(),
                    r["weight"].as_u64().unwrap(),
                )
            })
            .collect();
        (rows, std::fs::read(&conf).unwrap())
    };
    let before = state();

    let refused = |args: &[&str], says: &str| {
        let (ok, _, err) = cli(&inst, args);
        assert!(!ok, "{args:?} must fail");
        assert!(err.contains(says), "{args:?}: `{err}` should say `{says}`");
        assert_eq!(state(), before, "{args:?} changed nothing");
    };
    refused(&["backend", "add", &backend(0)], "already");
    refused(
        &["backend", "add", "--service", "10.0.0.99:5060", &backend(1)],
        "no service 10.0.0.99:5060",
    );
    refused(&["backend", "add", "[fd00::1]:5060"], "IPv6");
    refused(&["backend", "add", "10.0.2.12"], "IP:PORT");
    refused(&["backend", "set-weight", &backend(0), "70000"], "65535");
    refused(
        &["service", "add", "10.0.0.11:5060", "--table-size", "100"],
        "prime",
    );

    let list = format!("/tmp/{inst}-dispatcher.list");
    std::fs::write(
        &list,
        format!(
            "# set 1\n1 sip:{} 0 0 weight=2\n1 sip:asterisk.example.com 0\n",
            backend(1)
        ),
    )
    .unwrap();
    refused(&["import-dispatcher", &list], "line 3");
    std::fs::write(
        &list,
        format!("1 sip:{} 0x8 0 weight=2;maxload=20\n", backend(1)),
    )
    .unwrap();
    let (ok, out, err) = cli(&inst, &["import-dispatcher", &list]);
    let _ = std::fs::remove_file(&list);
    assert!(ok, "{err}");
    assert!(out.contains(&backend(1)), "{out}");
    assert!(
        err.contains("maxload") && err.contains("0x8"),
        "unsupported parts are reported: {err}"
    );
    let rows = json(&inst, &["backend", "list", "--json"]);
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert!(d.stop());
}
