//! The netns test bed: a client, the balancer host as a
//! gateway with a client-side and a backend-side interface, a switch (bridge)
//! and N backends, each in a namespace of its own, joined by veth pairs. The
//! client and backend ends send like wire hosts (`tx off`) and receive redirected
//! frames like NICs (`gro on`). Everything is deleted on drop.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::netns::sh;

pub struct Bed {
    pub prefix: String,
}

pub const MAX_BACKENDS: usize = 16;
pub const VIP: &str = "10.0.0.10";
pub const CLIENT: &str = "10.0.1.2";
pub const LB_CLIENT_SIDE: &str = "10.0.1.1";
pub const LB_BACKEND_SIDE: &str = "10.0.2.1";
/// The attacker of [`Bed::add_attacker`], on a client-facing network of its own.
pub const ATTACKER: &str = "10.0.3.2";
pub const LB_ATTACKER_SIDE: &str = "10.0.3.1";

pub fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2, 11 + i as u8)
}

pub const VIP6: &str = "fd00::10";
pub const CLIENT6: &str = "fd00:1::2";

pub fn backend_ip6(i: usize) -> String {
    format!("fd00:2::{}", 11 + i)
}

/// Where a test instance keeps its configuration file.
pub fn config_path(instance: &str) -> String {
    format!("/tmp/balancer-test-{instance}.toml")
}

/// A counter of the `Udp:` lines of /proc/net/snmp in namespace `ns`, e.g.
/// `RcvbufErrors`: datagrams the kernel dropped at a full socket.
pub fn udp_counter(ns: &str, name: &str) -> u64 {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
        .output()
        .expect("ip netns exec");
    let text = String::from_utf8_lossy(&o.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        panic!("no Udp lines in /proc/net/snmp of {ns}: {text}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no Udp counter {name} in {ns}: {names}"))
}

impl Bed {
    /// Datagrams the test bed itself dropped: what the kernel counts as dropped on
    /// every interface of the bed (a veth whose peer's ring is full, its NAPI
    /// thread starved of CPU, drops there), and frames redirected into such a full
    /// ring. Not the balancer's own verdicts (`XDP_DROP` is counted apart). Returns
    /// the total and the non-zero counters.
    pub fn drops(&self, backends: usize) -> (u64, String) {
        let run = |cmd: &[&str]| {
            let o = std::process::Command::new(cmd[0])
                .args(&cmd[1..])
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let mut ns = vec![self.ns("cli"), self.ns("lb"), self.ns("sw")];
        ns.extend((0..backends).map(|i| self.backend_ns(i)));
        let (mut total, mut said) = (0, String::new());
        for n in &ns {
            let v: serde_json::Value =
                serde_json::from_str(&run(&["ip", "-n", n, "-s", "-j", "link", "show"]))
                    .expect("ip -j");
            for l in v.as_array().unwrap() {
                for dir in ["rx", "tx"] {
                    let d = l["stats64"][dir]["dropped"].as_u64().unwrap_or(0);
                    if d > 0 {
                        said += &format!("{n} {} {dir} dropped {d}\n", l["ifname"]);
                    }
                    total += d;
                }
            }
        }
        for iface in ["l0", "l1"] {
            let out = run(&[
                "ip",
                "netns",
                "exec",
                &self.ns("lb"),
                "ethtool",
                "-S",
                iface,
            ]);
            for line in out.lines().filter(|l| l.contains("xdp_xmit_errors")) {
                let d: u64 = line.rsplit(' ').next().unwrap().parse().unwrap_or(0);
                if d > 0 {
                    said += &format!("{iface} {}\n", line.trim());
                }
                total += d;
            }
        }
        (total, said)
    }

    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    pub fn backend_ns(&self, i: usize) -> String {
        self.ns(&format!("b{i}"))
    }

    /// Builds the topology. `prefix` must be unique per concurrent bed.
    pub fn new(prefix: &str, backends: usize) -> Bed {
        assert!(backends <= MAX_BACKENDS, "at most {MAX_BACKENDS} backends");
        let bed = Bed {
            prefix: prefix.to_string(),
        };
        // Leftovers from a run that was killed: remove first.
        bed.cleanup();
        let (cli, lb, sw) = (bed.ns("cli"), bed.ns("lb"), bed.ns("sw"));
        for n in [&cli, &lb, &sw] {
            sh(&format!("ip netns add {n} && ip -n {n} link set lo up"));
        }
        // client <-> balancer
        sh(&format!(
            "ip link add c0 netns {cli} type veth peer name l0 netns {lb}"
        ));
        // balancer <-> switch
        sh(&format!(
            "ip link add l1 netns {lb} type veth peer name s0 netns {sw}"
        ));
        sh(&format!(
            "ip -n {sw} link add br0 type bridge && ip -n {sw} link set br0 up && ip -n {sw} link set s0 master br0 up"
        ));
        sh(&format!(
            "ip -n {cli} addr add {CLIENT}/24 dev c0 && ip -n {cli} link set c0 up"
        ));
        sh(&format!(
            "ip -n {cli} route add default via {LB_CLIENT_SIDE}"
        ));
        sh(&format!(
            "ip -n {lb} addr add {LB_CLIENT_SIDE}/24 dev l0 && ip -n {lb} link set l0 up"
        ));
        sh(&format!(
            "ip -n {lb} addr add {LB_BACKEND_SIDE}/24 dev l1 && ip -n {lb} link set l1 up"
        ));
        sh(&format!(
            "ip netns exec {lb} sysctl -qw net.ipv4.ip_forward=1"
        ));
        for i in 0..backends {
            let b = bed.backend_ns(i);
            sh(&format!("ip netns add {b} && ip -n {b} link set lo up"));
            sh(&format!(
                "ip link add e0 netns {b} type veth peer name s{} netns {sw}",
                i + 1
            ));
            sh(&format!("ip -n {sw} link set s{} master br0 up", i + 1));
            sh(&format!(
                "ip -n {b} addr add {}/24 dev e0 && ip -n {b} link set e0 up && ip -n {b} route add default via {LB_BACKEND_SIDE}",
                backend_ip(i)
            ));
            sh(&format!(
                "ip netns exec {b} ethtool -K e0 tx off gro on >/dev/null"
            ));
        }
        // Hosts send complete checksums like wire hosts; redirect targets' peers run
        // NAPI (GRO) like NICs; the balancer's ingress veths use threaded NAPI.
        sh(&format!(
            "ip netns exec {cli} ethtool -K c0 tx off gro on >/dev/null"
        ));
        sh(&format!(
            "ip netns exec {sw} ethtool -K s0 gro on >/dev/null"
        ));
        for d in ["l0", "l1"] {
            // Threaded NAPI needs NAPI, which a veth runs once GRO (or XDP) is on.
            sh(&format!(
                "ip netns exec {lb} ethtool -K {d} gro on >/dev/null"
            ));
            sh(&format!(
                "ip netns exec {lb} sh -c 'echo 1 > /sys/class/net/{d}/threaded'"
            ));
        }
        bed
    }

    /// An attacker: namespace `atk` (address 10.0.3.2, interface `a0`) behind a
    /// second client-facing interface of the balancer host, `l2` (10.0.3.1), on
    /// a network of its own. A daemon that is to see its traffic attaches to `l2`
    /// too (`interfaces = ["l0", "l2"]`). It sends like a wire host and the
    /// balancer's side runs NAPI, as on the client's link.
    pub fn add_attacker(&self) {
        let (atk, lb) = (self.ns("atk"), self.ns("lb"));
        sh(&format!("ip netns add {atk} && ip -n {atk} link set lo up"));
        sh(&format!(
            "ip link add a0 netns {atk} type veth peer name l2 netns {lb}"
        ));
        sh(&format!(
            "ip -n {atk} addr add {ATTACKER}/24 dev a0 && ip -n {atk} link set a0 up && ip -n {atk} route add default via {LB_ATTACKER_SIDE}"
        ));
        sh(&format!(
            "ip -n {lb} addr add {LB_ATTACKER_SIDE}/24 dev l2 && ip -n {lb} link set l2 up"
        ));
        sh(&format!(
            "ip netns exec {atk} ethtool -K a0 tx off gro on >/dev/null"
        ));
        sh(&format!(
            "ip netns exec {lb} ethtool -K l2 gro on >/dev/null && ip netns exec {lb} sh -c 'echo 1 > /sys/class/net/l2/threaded'"
        ));
    }

    /// A one-armed balancer host: client, balancer and backends on one switch,
    /// the balancer attached by its one interface `l0`. The client (10.0.1.2)
    /// and the backends (10.0.2.11, ...) are on two subnets of that one link,
    /// both routed through the balancer host (10.0.1.1 and 10.0.2.1 on `l0`), so
    /// that backends' replies to clients pass it (on a single subnet they would
    /// go to the client directly and never be reverse-NATed). Datagrams leave by
    /// the interface they came in on (`XDP_TX`); the host sends no ICMP
    /// redirects, which a router on a stick otherwise would.
    pub fn one_armed(prefix: &str, backends: usize) -> Bed {
        assert!(backends <= MAX_BACKENDS, "at most {MAX_BACKENDS} backends");
        let bed = Bed {
            prefix: prefix.to_string(),
        };
        bed.cleanup();
        let (cli, lb, sw) = (bed.ns("cli"), bed.ns("lb"), bed.ns("sw"));
        for n in [&cli, &lb, &sw] {
            sh(&format!("ip netns add {n} && ip -n {n} link set lo up"));
        }
        sh(&format!(
            "ip -n {sw} link add br0 type bridge && ip -n {sw} link set br0 up"
        ));
        sh(&format!(
            "ip link add l0 netns {lb} type veth peer name s0 netns {sw}"
        ));
        sh(&format!(
            "ip link add c0 netns {cli} type veth peer name sc netns {sw}"
        ));
        sh(&format!(
            "ip -n {sw} link set s0 master br0 up && ip -n {sw} link set sc master br0 up"
        ));
        sh(&format!(
            "ip -n {cli} addr add {CLIENT}/24 dev c0 && ip -n {cli} link set c0 up && ip -n {cli} route add default via {LB_CLIENT_SIDE}"
        ));
        sh(&format!(
            "ip -n {lb} addr add {LB_CLIENT_SIDE}/24 dev l0 && ip -n {lb} addr add {LB_BACKEND_SIDE}/24 dev l0 && ip -n {lb} link set l0 up"
        ));
        sh(&format!(
            "ip netns exec {lb} sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.l0.send_redirects=0"
        ));
        for i in 0..backends {
            let b = bed.backend_ns(i);
            sh(&format!("ip netns add {b} && ip -n {b} link set lo up"));
            sh(&format!(
                "ip link add e0 netns {b} type veth peer name s{} netns {sw}",
                i + 1
            ));
            sh(&format!("ip -n {sw} link set s{} master br0 up", i + 1));
            sh(&format!(
                "ip -n {b} addr add {}/24 dev e0 && ip -n {b} link set e0 up && ip -n {b} route add default via {LB_BACKEND_SIDE}",
                backend_ip(i)
            ));
            sh(&format!(
                "ip netns exec {b} ethtool -K e0 tx off gro on >/dev/null"
            ));
        }
        sh(&format!(
            "ip netns exec {cli} ethtool -K c0 tx off gro on >/dev/null"
        ));
        // Frames the balancer sends back out of `l0` (XDP_TX) land on the
        // switch port `s0`; a veth wakes its peer for them only when the peer
        // has an XDP program of its own (GRO alone does for redirects, not for
        // XDP_TX), so `s0` gets one that passes everything.
        xdp_pass(&sw, "s0");
        sh(&format!(
            "ip netns exec {lb} ethtool -K l0 gro on >/dev/null && ip netns exec {lb} sh -c 'echo 1 > /sys/class/net/l0/threaded'"
        ));
        bed
    }

    /// The `balancer attach` arguments for this bed: client side `l0`, the VIP on
    /// port 5060, `mode`, `instance`, and the backends (`IP:PORT[,weight=N]`).
    /// Writes the instance's configuration file first with the VIP's service
    /// and no per-source limits, which `attach` keeps: the tests' one client
    /// starts dialogs faster than the default limits allow.
    pub fn attach_args(mode: &str, instance: &str, backends: &[String]) -> Vec<String> {
        std::fs::write(
            config_path(instance),
            format!(
                "[[service]]\nvip = \"{VIP}:5060\"\n\n[service.limits]\ndatagrams = 0\ndialogs = 0\n"
            ),
        )
        .expect("writing the test configuration");
        let mut args: Vec<String> = [
            "attach",
            "l0",
            "--vip",
            &format!("{VIP}:5060"),
            "--mode",
            mode,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "--instance".to_string(),
            instance.to_string(),
            "--config".to_string(),
            config_path(instance),
            "--backend".to_string(),
        ]);
        args.extend(backends.iter().cloned());
        args
    }

    /// IPv6 beside IPv4 on the same links: client fd00:1::2, balancer fd00:1::1
    /// and fd00:2::1, backends fd00:2::11.. (no duplicate address detection, so
    /// the addresses are usable at once).
    pub fn add_ipv6(&self, backends: usize) {
        let (cli, lb) = (self.ns("cli"), self.ns("lb"));
        sh(&format!(
            "ip -n {cli} addr add {CLIENT6}/64 dev c0 nodad && ip -n {cli} route add default via fd00:1::1"
        ));
        sh(&format!(
            "ip -n {lb} addr add fd00:1::1/64 dev l0 nodad && ip -n {lb} addr add fd00:2::1/64 dev l1 nodad"
        ));
        sh(&format!(
            "ip netns exec {lb} sysctl -qw net.ipv6.conf.all.forwarding=1"
        ));
        for i in 0..backends {
            let b = self.backend_ns(i);
            sh(&format!(
                "ip -n {b} addr add {}/64 dev e0 nodad && ip -n {b} route add default via fd00:2::1",
                backend_ip6(i)
            ));
        }
    }

    /// Direct server return: every backend holds the VIP on its loopback.
    pub fn vip_on_backends(&self, n: usize) {
        for i in 0..n {
            sh(&format!(
                "ip -n {} addr add {VIP}/32 dev lo",
                self.backend_ns(i)
            ));
        }
    }

    /// What an operator would look at when datagrams go missing: neighbours, XDP
    /// attachment, and the non-zero veth counters on the path.
    pub fn diagnose(&self) -> String {
        let (cli, lb, sw) = (self.ns("cli"), self.ns("lb"), self.ns("sw"));
        let cmds = [
            format!("ip -n {lb} neigh"),
            format!("ip -n {lb} -d link show l0 | grep -i xdp"),
            format!("ip -n {lb} -d link show l1 | grep -i xdp"),
            format!("ip netns exec {lb} ethtool -S l0 | grep -v ': 0$'"),
            format!("ip netns exec {lb} ethtool -S l1 | grep -v ': 0$'"),
            format!("ip netns exec {sw} ethtool -S s0 | grep -v ': 0$'"),
            format!("ip netns exec {cli} ethtool -S c0 | grep -v ': 0$'"),
            format!("ip netns exec {lb} nstat -az | grep -E 'UdpIn|InCsum|Forw|Discard' | grep -v ' 0 '"),
            format!("ip netns exec {cli} nstat -az | grep -E 'Udp' | grep -v ' 0 '"),
        ];
        let mut out = String::new();
        for c in cmds {
            let o = Command::new("sh").arg("-c").arg(&c).output();
            out.push_str(&format!("$ {c}\n"));
            if let Ok(o) = o {
                out.push_str(&String::from_utf8_lossy(&o.stdout));
            }
        }
        out
    }

    pub fn cleanup(&self) {
        // Instances in tests are named like their bed.
        let _ = std::fs::remove_file(config_path(&self.prefix));
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/balancer/{}", self.prefix));
        let mut names = vec![self.ns("cli"), self.ns("lb"), self.ns("sw"), self.ns("atk")];
        for i in 0..MAX_BACKENDS {
            names.push(self.backend_ns(i));
        }
        for n in names {
            let _ = Command::new("ip")
                .args(["netns", "del", &n])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Attaches an XDP program that passes every frame to `dev` in namespace `ns`.
fn xdp_pass(ns: &str, dev: &str) {
    crate::xdp::attach_verdict(ns, dev, crate::xdp::XDP_PASS);
}
