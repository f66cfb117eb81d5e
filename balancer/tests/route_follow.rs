//! A backend whose route moves to another interface is followed under
//! traffic: the daemon hears of it over rtnetlink, attaches the program to
//! the new interface, drops the program's cached next hops and says so; calls
//! keep being answered from the VIP (forwarded out of, and reverse-NATed on,
//! the new interface).

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use balancer_test_support::daemon::{cli_ok, in_netns};
use balancer_test_support::netns::require_root;
use balancer_test_support::netns::{sh, sh_out};
use balancer_test_support::{bed, peers};

fn vip() -> SocketAddr {
    format!("{}:5060", bed::VIP).parse().unwrap()
}

/// The daemon, its stdout and stderr lines on one channel; killed on drop.
struct Run {
    child: Option<Child>,
    lines: Receiver<String>,
}

impl Run {
    fn start(netns: &str, args: &[&str]) -> Run {
        use std::io::BufRead;
        let mut child = in_netns(netns)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn balancer");
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("daemon: {l}");
                let _ = tx2.send(l);
            }
        });
        let mut run = Run {
            child: Some(child),
            lines,
        };
        run.wait_for("ready", Duration::from_secs(60))
            .expect("balancer printed `ready`");
        run
    }

    /// The first line from now on that contains `what`.
    fn wait_for(&mut self, what: &str, limit: Duration) -> Option<String> {
        let end = Instant::now() + limit;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    fn terminate(mut self) -> bool {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Received packets of `dev` in namespace `ns`.
fn rx_packets(ns: &str, dev: &str) -> u64 {
    sh_out(&format!(
        "ip netns exec {ns} cat /sys/class/net/{dev}/statistics/rx_packets"
    ))
    .trim()
    .parse()
    .unwrap()
}

#[test]
fn a_backend_whose_route_moves_is_followed_under_traffic() {
    require_root();
    let inst = format!("rf{}", std::process::id());
    let bed = bed::Bed::new(&inst, 1);
    let (lb, b0) = (bed.ns("lb"), bed.backend_ns(0));
    let b = bed::backend_ip(0);
    // A second link between the balancer and backend 0, set up like the
    // bed's own (NAPI on both sides, full checksums from the backend).
    sh(&format!(
        "ip link add l2 netns {lb} type veth peer name e1 netns {b0}"
    ));
    sh(&format!(
        "ip -n {lb} addr add 10.0.3.1/24 dev l2 && ip -n {lb} link set l2 up"
    ));
    sh(&format!(
        "ip -n {b0} addr add 10.0.3.2/24 dev e1 && ip -n {b0} link set e1 up"
    ));
    sh(&format!(
        "ip netns exec {b0} ethtool -K e1 tx off gro on >/dev/null"
    ));
    sh(&format!(
        "ip netns exec {lb} ethtool -K l2 gro on >/dev/null && ip netns exec {lb} sh -c 'echo 1 > /sys/class/net/l2/threaded'"
    ));

    let conf = bed::config_path(&inst);
    std::fs::write(
        &conf,
        format!(
            "interfaces = [\"l0\"]\n\n[[service]]\nvip = \"{}\"\n\n[[service.backend]]\naddress = \"{b}:5060\"\n",
            vip()
        ),
    )
    .unwrap();
    let mut d = Run::start(&lb, &["run", "--config", &conf, "--instance", &inst]);
    let _uas = peers::Uas::start(&b0, "0.0.0.0:5060");
    let link = sh_out(&format!("ip -n {lb} -d link show l2"));
    assert!(!link.contains("xdp"), "not on l2 before the move: {link}");

    // Calls flow through l1 ...
    let through = peers::Stream::start(&bed.ns("cli"), vip(), Duration::from_millis(2), "t");
    std::thread::sleep(Duration::from_secs(1));
    let e1_before = rx_packets(&b0, "e1");

    // ... when a more specific route moves the backend to l2.
    sh(&format!("ip -n {lb} route add {b}/32 via 10.0.3.2 dev l2"));
    let moved = d
        .wait_for(
            &format!("backend {b} is now reached through l2 (was l1)"),
            Duration::from_secs(3),
        )
        .expect("the daemon says the backend's route moved");
    eprintln!("{moved}");
    d.wait_for(
        &format!("next hops towards {b} refreshed"),
        Duration::from_secs(1),
    )
    .expect("the daemon says it refreshed the next hops");
    // The backend's own way back moves with it (from its own address: the UAS
    // answers from whatever source its route picks). Until then its answers
    // come in on l1, where GUARD now refuses them: the few calls of that
    // moment are lost, none answered from the backend's address.
    sh(&format!(
        "ip -n {b0} route replace default via 10.0.3.1 dev e1 src {b}"
    ));
    let link = sh_out(&format!("ip -n {lb} -d link show l2"));
    assert!(link.contains("xdp"), "attached to l2: {link}");
    let stats: serde_json::Value =
        serde_json::from_str(&cli_ok(&inst, &["stats", "--json"])).unwrap();
    assert!(
        stats["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == "l2"),
        "{stats}"
    );

    // New calls after the move: every one answered from the VIP, and they
    // reached the backend through its second link.
    let after = peers::Stream::start(&bed.ns("cli"), vip(), Duration::from_millis(2), "a");
    std::thread::sleep(Duration::from_secs(2));
    let (sent, answered, wrong) = after.finish();
    eprintln!(
        "after the move: {sent} sent, {answered} answered from the VIP, {wrong} from elsewhere"
    );
    if answered != sent {
        eprintln!("{}", cli_ok(&inst, &["stats", "--json"]));
        eprintln!("{}", sh_out(&format!("ip -n {lb} -s -d link show l2; ip -n {lb} -s link show l1; ip -n {b0} -s link; ip -n {b0} route; ip -n {lb} route")));
    }
    assert!(sent >= 200, "{sent} sent");
    assert_eq!(
        (answered, wrong),
        (sent, 0),
        "every call after the move answered from the VIP"
    );
    let via_e1 = rx_packets(&b0, "e1") - e1_before;
    assert!(
        via_e1 >= u64::from(sent),
        "the calls reached the backend through l2/e1: {via_e1} packets for {sent} calls"
    );

    // The calls that flowed across the move: at most a few lost at the switch.
    let (sent, answered, wrong) = through.finish();
    eprintln!(
        "across the move: {sent} sent, {answered} answered from the VIP, {wrong} from elsewhere"
    );
    assert_eq!(wrong, 0, "no answer across the move escaped un-NATed");
    assert!(
        answered + 50 >= sent,
        "calls across the move: {answered} of {sent} answered"
    );
    assert!(d.terminate());
}
