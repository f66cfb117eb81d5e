//! The multi-balancer bed (issue 16): several balancer hosts behind a router,
//! announcing the VIP by BGP with BFD (BIRD 2 on every host, ECMP on the
//! router) or holding it by VRRP (keepalived on the balancers).
//!
//! ```text
//!   client 10.1.1.2 (sipp uac, phone uas)
//!      | c0 -- rc 10.1.1.1
//!   router (BIRD 2: BGP+BFD to each balancer, ECMP for the VIP, L4 hash;
//!      |     rule: from 10.1.2.0/24 to 10.1.1.0/24 lookup 100, whose route
//!      |     goes through the balancers: a BIRD static multipath with BFD)
//!      +-- rl 10.1.9.1 -- bridge brl --+-- e0 10.1.9.11 balancer 0 (XDP, BIRD)
//!      |                               +-- e0 10.1.9.12 balancer 1
//!      |                               +-- e0 10.1.9.13 balancer 2
//!      +-- rb 10.1.2.1 -- bridge brb --+-- e0 10.1.2.11 backend 0 (sipp uas)
//!                                      +-- e0 10.1.2.12 backend 1 ...
//! ```
//!
//! The balancers are one-armed: a datagram for the VIP comes in on `e0` from
//! the router, is rewritten towards its backend and leaves by `e0` again
//! (`XDP_TX`) back to the router, which forwards it to the backend network.
//! Backends answer clients through the router, whose policy rule sends what
//! goes from the backend network to the client network to a balancer, which
//! rewrites the source to the VIP: any balancer can, their tables are the same.
//! Both bridges live in a switch namespace: a balancer's link going down is
//! not a carrier loss for the router, BFD must find it.
//!
//! In VRRP mode there is no BIRD: the router reaches the VIP on its balancer
//! link (an on-link /32, ARP) and sends the backends' answers to the VIP as
//! next hop, so both follow keepalived's address and gratuitous ARP.
//!
//! Everything (processes first, then namespaces and files) goes on drop.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::{self, Daemon};
use crate::netns::{sh, sh_out};
pub use crate::until;

pub const VIP: &str = "10.1.0.10";
pub const CLIENT: &str = "10.1.1.2";
pub const CLIENT_NET: &str = "10.1.1.0/24";
pub const BACKEND_NET: &str = "10.1.2.0/24";
pub const ROUTER_CLIENT_SIDE: &str = "10.1.1.1";
pub const ROUTER_BACKEND_SIDE: &str = "10.1.2.1";
pub const ROUTER_BALANCER_SIDE: &str = "10.1.9.1";
/// The router's routing table for what backends send to clients.
pub const RETURN_TABLE: u32 = 100;
pub const SYNC_PORT: u16 = 5099;
pub const SYNC_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
pub const MAX_BALANCERS: usize = 4;
pub const MAX_BACKENDS: usize = 8;
/// BFD on every session: 100 ms x 3.
const BFD: &str = "min rx interval 100 ms; min tx interval 100 ms; multiplier 3;";

pub fn balancer_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 9, 11 + i as u8)
}

pub fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 2, 11 + i as u8)
}

/// `IP:5060` of backend `i`.
pub fn backend(i: usize) -> String {
    format!("{}:5060", backend_ip(i))
}

pub fn vip() -> String {
    format!("{VIP}:5060")
}

/// How the balancers make the router send them the VIP's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// BIRD 2 everywhere: BGP with BFD, ECMP on the router.
    Ecmp,
    /// keepalived on the balancers, the router on one L2 segment with them.
    Vrrp,
}

/// Whether the tools a test needs are here. Missing ones skip the test
/// (`false`, after saying so) on a developer's machine, like the other tests
/// that need an optional peer; under CI (`CI` set) they fail it, so a broken
/// setup cannot pass as skipped.
pub fn tools_present(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "missing {} (cargo xtask setup installs bird2, frr, keepalived and sip-tester)",
        missing.join(", ")
    );
    assert!(std::env::var_os("CI").is_none(), "{msg}");
    eprintln!("skipped: {msg}");
    false
}

/// A process of the bed (BIRD, keepalived), killed on drop, with the pid
/// files of the children it forked (keepalived's VRRP process), which are
/// killed too.
struct Proc {
    child: Option<Child>,
    name: String,
    children: Vec<PathBuf>,
}

impl Proc {
    fn spawn(ns: &str, name: &str, argv: &[String], log: &PathBuf) -> Proc {
        let out = std::fs::File::create(log).expect("log file");
        let child = crate::netns::spawn_logged(ns, name, argv, out);
        Proc {
            child: Some(child),
            name: name.to_string(),
            children: Vec::new(),
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; then whatever forked
    /// children are left, by the pids they wrote.
    fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let end = Instant::now() + grace;
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for f in &self.children {
            let pid: Option<i32> = std::fs::read_to_string(f)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            if let Some(pid) = pid.filter(|p| *p > 1) {
                // Only a process still named like ours: a stale file's pid may
                // have been reused by now.
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == self.name {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// A BIRD 2 in a namespace, with a control socket of its own.
pub struct Bird {
    _proc: Proc,
    pub socket: String,
}

impl Bird {
    fn start(ns: &str, dir: &std::path::Path, name: &str, conf: &str) -> Bird {
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf).unwrap();
        let socket = dir.join(format!("{name}.ctl")).display().to_string();
        let pid = dir.join(format!("{name}.pid")).display().to_string();
        let argv = [
            "bird",
            "-f",
            "-c",
            &path.display().to_string(),
            "-s",
            &socket,
            "-P",
            &pid,
        ]
        .map(String::from);
        let proc = Proc::spawn(ns, "bird", &argv, &dir.join(format!("{name}.out")));
        Bird {
            _proc: proc,
            socket,
        }
    }

    /// `birdc -s SOCKET ARGS...`; its output.
    pub fn birdc(&self, args: &str) -> String {
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("birdc -s {} {args}", self.socket))
            .output()
            .expect("birdc");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// The multi-balancer bed. See the module's documentation.
pub struct HaBed {
    pub prefix: String,
    pub mode: Mode,
    pub balancers: usize,
    pub backends: usize,
    /// Configurations, BIRD sockets and logs.
    pub dir: PathBuf,
    router: Option<Bird>,
    birds: Vec<Option<Bird>>,
    keepalived: Vec<Option<Proc>>,
    daemons: Vec<Option<Daemon>>,
}

impl HaBed {
    /// Builds the namespaces and links; in ECMP mode starts the router's BIRD.
    /// `prefix` must be unique per test (namespaces, instances and files are
    /// named after it).
    pub fn new(prefix: &str, mode: Mode, balancers: usize, backends: usize) -> HaBed {
        assert!((1..=MAX_BALANCERS).contains(&balancers));
        assert!(backends <= MAX_BACKENDS);
        let dir = dir(prefix);
        let mut bed = HaBed {
            prefix: prefix.to_string(),
            mode,
            balancers,
            backends,
            dir,
            router: None,
            birds: (0..balancers).map(|_| None).collect(),
            keepalived: (0..balancers).map(|_| None).collect(),
            daemons: (0..balancers).map(|_| None).collect(),
        };
        // Leftovers of a run that was killed: remove first.
        bed.cleanup();
        std::fs::create_dir_all(&bed.dir).unwrap();
        bed.wire();
        if mode == Mode::Ecmp {
            let conf = bed.router_conf();
            bed.router = Some(Bird::start(&bed.router_ns(), &bed.dir, "router", &conf));
        }
        bed
    }

    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }
    pub fn router_ns(&self) -> String {
        self.ns("rt")
    }
    pub fn client_ns(&self) -> String {
        self.ns("cli")
    }
    pub fn switch_ns(&self) -> String {
        self.ns("sw")
    }
    pub fn balancer_ns(&self, i: usize) -> String {
        self.ns(&format!("lb{i}"))
    }
    pub fn backend_ns(&self, i: usize) -> String {
        self.ns(&format!("b{i}"))
    }
    /// The balancer instance (control socket, configuration file) of host `i`.
    pub fn instance(&self, i: usize) -> String {
        format!("{}-lb{i}", self.prefix)
    }

    fn wire(&self) {
        let (rt, cli, sw) = (self.router_ns(), self.client_ns(), self.switch_ns());
        let mut all = vec![rt.clone(), cli.clone(), sw.clone()];
        all.extend((0..self.balancers).map(|i| self.balancer_ns(i)));
        all.extend((0..self.backends).map(|i| self.backend_ns(i)));
        for n in &all {
            sh(&format!("ip netns add {n} && ip -n {n} link set lo up"));
        }
        sh(&format!(
            "ip -n {sw} link add brl type bridge && ip -n {sw} link add brb type bridge && ip -n {sw} link set brl up && ip -n {sw} link set brb up"
        ));
        // Router: client link, balancer link, backend link.
        sh(&format!(
            "ip link add rc netns {rt} type veth peer name c0 netns {cli}"
        ));
        sh(&format!(
            "ip link add rl netns {rt} type veth peer name srl netns {sw}"
        ));
        sh(&format!(
            "ip link add rb netns {rt} type veth peer name srb netns {sw}"
        ));
        sh(&format!(
            "ip -n {sw} link set srl master brl up && ip -n {sw} link set srb master brb up"
        ));
        for (dev, addr) in [
            ("rc", ROUTER_CLIENT_SIDE),
            ("rl", ROUTER_BALANCER_SIDE),
            ("rb", ROUTER_BACKEND_SIDE),
        ] {
            sh(&format!(
                "ip -n {rt} addr add {addr}/24 dev {dev} && ip -n {rt} link set {dev} up"
            ));
            sh(&format!(
                "ip netns exec {rt} ethtool -K {dev} tx off >/dev/null"
            ));
        }
        sh(&format!(
            "ip netns exec {rt} sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1 \
             net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.all.rp_filter=0 \
             net.ipv4.conf.rc.rp_filter=0 net.ipv4.conf.rl.rp_filter=0 net.ipv4.conf.rb.rp_filter=0"
        ));
        // What backends send to clients goes through a balancer.
        sh(&format!(
            "ip -n {rt} rule add from {BACKEND_NET} to {CLIENT_NET} lookup {RETURN_TABLE} pref 100"
        ));
        // Never to the client directly, unrewritten, while no balancer is known.
        sh(&format!(
            "ip -n {rt} route add unreachable {CLIENT_NET} metric 4000 table {RETURN_TABLE}"
        ));
        if self.mode == Mode::Vrrp {
            // The VIP is on the balancers' segment, wherever keepalived puts it;
            // the backends' answers go to it as their next hop.
            sh(&format!("ip -n {rt} route add {VIP}/32 dev rl"));
            sh(&format!(
                "ip -n {rt} route add {CLIENT_NET} via {VIP} dev rl onlink table {RETURN_TABLE}"
            ));
        }
        // Client.
        sh(&format!(
            "ip -n {cli} addr add {CLIENT}/24 dev c0 && ip -n {cli} link set c0 up && ip -n {cli} route add default via {ROUTER_CLIENT_SIDE}"
        ));
        sh(&format!(
            "ip netns exec {cli} ethtool -K c0 tx off >/dev/null"
        ));
        for i in 0..self.balancers {
            self.wire_balancer(i);
        }
        for i in 0..self.backends {
            let b = self.backend_ns(i);
            sh(&format!(
                "ip link add e0 netns {b} type veth peer name sb{i} netns {sw}"
            ));
            sh(&format!("ip -n {sw} link set sb{i} master brb up"));
            sh(&format!(
                "ip -n {b} addr add {}/24 dev e0 && ip -n {b} link set e0 up && ip -n {b} route add default via {ROUTER_BACKEND_SIDE}",
                backend_ip(i)
            ));
            sh(&format!(
                "ip netns exec {b} ethtool -K e0 tx off >/dev/null"
            ));
        }
    }

    fn wire_balancer(&self, i: usize) {
        let (lb, sw) = (self.balancer_ns(i), self.switch_ns());
        sh(&format!(
            "ip link add e0 netns {lb} type veth peer name sl{i} netns {sw}"
        ));
        sh(&format!("ip -n {sw} link set sl{i} master brl up"));
        sh(&format!(
            "ip -n {lb} addr add {}/24 dev e0 && ip -n {lb} link set e0 up && ip -n {lb} route add default via {ROUTER_BALANCER_SIDE}",
            balancer_ip(i)
        ));
        sh(&format!(
            "ip netns exec {lb} sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 \
             net.ipv4.conf.e0.send_redirects=0 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.e0.rp_filter=0"
        ));
        // One-armed: what the balancer sends back out of e0 (XDP_TX) lands on
        // the switch port, whose veth wakes for it only with an XDP program of
        // its own (see `Bed::one_armed`).
        crate::xdp::attach_verdict(&sw, &format!("sl{i}"), crate::xdp::XDP_PASS);
        sh(&format!(
            "ip netns exec {lb} ethtool -K e0 tx off gro on >/dev/null && ip netns exec {lb} sh -c 'echo 1 > /sys/class/net/e0/threaded'"
        ));
    }

    fn router_conf(&self) -> String {
        let mut c = format!(
            "router id {ROUTER_BALANCER_SIDE};\n\
             log \"{}/router.log\" all;\n\
             protocol device {{ scan time 1; }}\n\
             ipv4 table back;\n\
             # The VIP from every balancer that announces it, merged into one\n\
             # multipath route.\n\
             protocol kernel main_k {{\n  merge paths on;\n  ipv4 {{ export where source = RTS_BGP; import none; }};\n}}\n\
             # What backends send to clients: through any balancer BFD sees.\n\
             protocol kernel back_k {{\n  kernel table {RETURN_TABLE};\n  ipv4 {{ table back; export all; import none; }};\n}}\n\
             protocol bfd {{\n  interface \"rl\" {{ {BFD} }};\n}}\n\
             protocol static back_s {{\n  ipv4 {{ table back; }};\n  route {CLIENT_NET}",
            self.dir.display()
        );
        for i in 0..self.balancers {
            c += &format!(" via {} bfd", balancer_ip(i));
        }
        c += ";\n}\n";
        c += &format!(
            "template bgp balancers {{\n  local {ROUTER_BALANCER_SIDE} as 65000;\n  bfd on;\n  \
             connect delay time 1;\n  connect retry time 1;\n  error wait time 1, 5;\n  \
             ipv4 {{ import where net = {VIP}/32; export none; }};\n}}\n"
        );
        for i in 0..self.balancers {
            c += &format!(
                "protocol bgp lb{i} from balancers {{ neighbor {} as 65001; }}\n",
                balancer_ip(i)
            );
        }
        c
    }

    /// A balancer host's BIRD: dist/announce/bird.conf itself, with this
    /// bed's addresses and interface, and BGP timers short enough for a test
    /// (BIRD waits 5 s before its first connection and 120 s before trying
    /// again by default).
    pub fn balancer_bird_conf(&self, i: usize) -> String {
        let me = balancer_ip(i).to_string();
        let timers =
            "bfd on;\n  connect delay time 1;\n  connect retry time 1;\n  error wait time 1, 5;";
        let text = dist_example(
            "bird.conf",
            &[
                ("192.0.2.254", ROUTER_BALANCER_SIDE),
                ("192.0.2.1", &me),
                ("\"eth0\"", "\"e0\""),
                ("scan time 10;", "scan time 1;"),
                ("bfd on;", timers),
            ],
        );
        format!("log \"{}/lb{i}-bird.log\" all;\n{text}", self.dir.display())
    }

    /// The configuration of balancer `i`: `top` (top-level tables such as
    /// `[health]`), `[announce]` on, `[sync]` with the other balancers when
    /// `sync`, the VIP's service without per-source limits (one client
    /// starts all the dialogs), and `backends` (`[[service.backend]]` tables,
    /// see [`backend_toml`]).
    pub fn balancer_config(&self, i: usize, top: &str, backends: &str, sync: bool) -> String {
        let mut c = format!("interfaces = [\"e0\"]\n\n{top}\n[announce]\nenabled = true\n");
        if sync {
            let peers: Vec<String> = (0..self.balancers)
                .filter(|j| *j != i)
                .map(|j| format!("\"{}:{SYNC_PORT}\"", balancer_ip(j)))
                .collect();
            c += &format!(
                "\n[sync]\nlisten = \"{}:{SYNC_PORT}\"\npeers = [{}]\nkey = \"{SYNC_KEY}\"\n",
                balancer_ip(i),
                peers.join(", ")
            );
        }
        c += &format!(
            "\n[[service]]\nvip = \"{VIP}:5060\"\nmode = \"dnat\"\n\n[service.limits]\ndatagrams = 0\ndialogs = 0\n\n{backends}"
        );
        c
    }

    /// Starts every balancer daemon (at once: each load is a verifier run)
    /// from [`HaBed::balancer_config`], and in ECMP mode each host's BIRD.
    /// Balancer `i`'s log lines read `lbI: ...`.
    pub fn start_balancers(&mut self, top: &str, backends: &str, sync: bool) {
        self.start_balancers_each(sync, |_| (top.to_string(), backends.to_string()));
    }

    /// [`HaBed::start_balancers`] with `top` and `backends` of each balancer's
    /// own: `each(i)`.
    pub fn start_balancers_each(&mut self, sync: bool, each: impl Fn(usize) -> (String, String)) {
        let configs: Vec<(String, String, String)> = (0..self.balancers)
            .map(|i| {
                let path = crate::bed::config_path(&self.instance(i));
                let (top, backends) = each(i);
                std::fs::write(&path, self.balancer_config(i, &top, &backends, sync)).unwrap();
                (self.balancer_ns(i), self.instance(i), path)
            })
            .collect();
        let daemons: Vec<Daemon> = std::thread::scope(|s| {
            let hs: Vec<_> = configs
                .iter()
                .enumerate()
                .map(|(i, (ns, inst, path))| {
                    s.spawn(move || {
                        let args = ["--instance", inst, "run", "--config", path].map(String::from);
                        Daemon::start_labelled(ns, &args, &format!("lb{i}"))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, d) in daemons.into_iter().enumerate() {
            self.daemons[i] = Some(d);
        }
        if self.mode == Mode::Ecmp {
            for i in 0..self.balancers {
                let conf = self.balancer_bird_conf(i);
                self.birds[i] = Some(Bird::start(
                    &self.balancer_ns(i),
                    &self.dir,
                    &format!("lb{i}-bird"),
                    &conf,
                ));
            }
        }
    }

    /// keepalived on balancer `i` (VRRP mode): VRRPv3 with unicast peers,
    /// adverts every 100 ms, `priority`, the VIP on `e0`, and a
    /// `vrrp_script` running dist/announce/balancer-carries.
    pub fn start_keepalived(&mut self, i: usize, priority: u8) {
        assert_eq!(self.mode, Mode::Vrrp);
        let carries = format!(
            "{}/../dist/announce/balancer-carries",
            env!("CARGO_MANIFEST_DIR")
        );
        let peers: String = (0..self.balancers)
            .filter(|j| *j != i)
            .map(|j| format!("    {}\n", balancer_ip(j)))
            .collect();
        // dist/announce/keepalived.conf itself, with this bed's addresses,
        // VRRPv3 adverts every 100 ms to unicast peers.
        let instance = dist_example(
            "keepalived.conf",
            &[
                ("/usr/local/bin/balancer-carries", &carries),
                ("10.0.0.10", VIP),
                ("interface eth0", "interface e0"),
                ("priority 150", &format!("priority {priority}")),
                (
                    "advert_int 1\n",
                    &format!(
                        "advert_int 0.1\n  unicast_src_ip {}\n  unicast_peer {{\n{peers}  }}\n",
                        balancer_ip(i)
                    ),
                ),
            ],
        );
        let conf = format!(
            "global_defs {{\n  router_id lb{i}\n  vrrp_version 3\n  script_user root\n  \
             vrrp_garp_master_delay 1\n  vrrp_garp_master_repeat 3\n}}\n{instance}"
        );
        let d = &self.dir;
        let file = |n: &str| {
            d.join(format!("lb{i}-keepalived.{n}"))
                .display()
                .to_string()
        };
        std::fs::write(file("conf"), conf).unwrap();
        let argv = [
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--vrrp",
            "--use-file",
            &file("conf"),
            "--pid",
            &file("pid"),
            "--vrrp_pid",
            &file("vrrp.pid"),
            "--checkers_pid",
            &file("checkers.pid"),
        ]
        .map(String::from);
        let mut p = Proc::spawn(
            &self.balancer_ns(i),
            "keepalived",
            &argv,
            &self.dir.join(format!("lb{i}-keepalived.out")),
        );
        p.children = vec![file("vrrp.pid").into(), file("checkers.pid").into()];
        self.keepalived[i] = Some(p);
    }

    /// Stops keepalived on balancer `i` (SIGTERM: it gives the VIP up and
    /// tells its peers, priority 0).
    pub fn stop_keepalived(&mut self, i: usize) {
        if let Some(mut p) = self.keepalived[i].take() {
            p.stop(Duration::from_secs(3));
        }
    }

    /// Whether keepalived of balancer `i` still runs.
    pub fn keepalived_running(&mut self, i: usize) -> bool {
        self.keepalived[i].as_mut().is_some_and(|p| p.running())
    }

    /// The balancers holding the VIP as an address (VRRP mode).
    pub fn vip_holders(&self) -> Vec<usize> {
        (0..self.balancers)
            .filter(|i| {
                let out = sh_out(&format!(
                    "ip -n {} -o -4 addr show dev e0",
                    self.balancer_ns(*i)
                ));
                out.contains(&format!(" {VIP}/32 "))
            })
            .collect()
    }

    /// The MAC address the router has for the VIP (VRRP mode), if any.
    pub fn router_vip_mac(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&sh_out(&format!(
            "ip -n {} -j neigh show {VIP} dev rl",
            self.router_ns()
        )))
        .ok()?;
        v.as_array()?
            .iter()
            .find_map(|n| n["lladdr"].as_str().map(String::from))
    }

    /// The MAC address of balancer `i`'s link.
    pub fn balancer_mac(&self, i: usize) -> String {
        let v: serde_json::Value = serde_json::from_str(&sh_out(&format!(
            "ip -n {} -j link show e0",
            self.balancer_ns(i)
        )))
        .unwrap();
        v[0]["address"].as_str().unwrap().to_string()
    }

    /// Cuts balancer `i` off: its link goes down inside its namespace (the
    /// router's link stays up: only BFD or VRRP can tell). Returns when.
    pub fn cut(&self, i: usize) -> Instant {
        let t = Instant::now();
        sh(&format!("ip -n {} link set e0 down", self.balancer_ns(i)));
        t
    }

    /// Balancer `i`'s link up again (its default route with it).
    pub fn restore(&self, i: usize) {
        let lb = self.balancer_ns(i);
        sh(&format!("ip -n {lb} link set e0 up"));
        sh(&format!(
            "ip -n {lb} route replace default via {ROUTER_BALANCER_SIDE}"
        ));
    }

    /// `balancer --instance INSTANCE ARGS` on balancer host `i` (in its
    /// namespace, as its operator would run it); the command must succeed;
    /// returns its output.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        let o = daemon::in_netns(&self.balancer_ns(i))
            .arg("--instance")
            .arg(self.instance(i))
            .args(args)
            .output()
            .expect("run balancer");
        assert!(
            o.status.success(),
            "balancer {args:?} on balancer {i} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `balancer stats --json` of balancer `i`.
    pub fn stats(&self, i: usize) -> serde_json::Value {
        serde_json::from_str(&self.cli(i, &["stats", "--json"])).expect("stats --json")
    }

    /// Counters of balancer `i`.
    pub fn counters(&self, i: usize) -> Counters {
        let s = self.stats(i);
        let r = |n: &str| s["reasons"][n].as_u64().unwrap_or(0);
        let service = s["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["vip"] == vip().as_str())
            .map(|v| v["packets"].as_u64().unwrap_or(0))
            .unwrap_or(0);
        Counters {
            service,
            forwarded: r("tx") + r("redirect"),
            reverse: r("reverse_nat"),
            learned: r("affinity_learned"),
            affinity_hit: r("affinity_hit"),
            no_backend: r("no_backend"),
        }
    }

    /// The router's next hops for the VIP (`ip -j route show VIP`), in order.
    pub fn vip_next_hops(&self) -> Vec<String> {
        next_hops(&sh_out(&format!(
            "ip -n {} -j route show {VIP}/32",
            self.router_ns()
        )))
    }

    /// The router's next hops for backends' answers to clients (table 100).
    pub fn return_next_hops(&self) -> Vec<String> {
        next_hops(&sh_out(&format!(
            "ip -n {} -j route show table {RETURN_TABLE} {CLIENT_NET} proto bird",
            self.router_ns()
        )))
    }

    /// Balancer addresses as next hops, for comparing with the above.
    pub fn hops(&self, balancers: &[usize]) -> Vec<String> {
        let mut v: Vec<String> = balancers
            .iter()
            .map(|i| balancer_ip(*i).to_string())
            .collect();
        v.sort();
        v
    }

    /// Waits until the router sends the VIP (and, in ECMP mode, backends'
    /// answers) through exactly `balancers`: BGP sessions up, BFD up, routes
    /// in the kernel. Returns how long it took, or panics with what the
    /// router sees after `limit`.
    pub fn wait_routes(&self, balancers: &[usize], limit: Duration) -> Duration {
        let want = self.hops(balancers);
        let t = Instant::now();
        let ok = until(limit, Duration::from_millis(5), || {
            let mut v = self.vip_next_hops();
            v.sort();
            let mut r = self.return_next_hops();
            r.sort();
            v == want && r == want
        });
        assert!(
            ok,
            "the router did not converge on {want:?} within {limit:?}\n{}",
            self.diagnose()
        );
        t.elapsed()
    }

    /// Waits until the router's route for the VIP goes through exactly
    /// `balancers` (polling every 2 ms); how long it took, or `None` after
    /// `limit`.
    pub fn wait_vip_next_hops(&self, balancers: &[usize], limit: Duration) -> Option<Duration> {
        let want = self.hops(balancers);
        let t = Instant::now();
        until(limit, Duration::from_millis(2), || {
            let mut v = self.vip_next_hops();
            v.sort();
            v == want
        })
        .then(|| t.elapsed())
    }

    /// Waits until the router's route for backends' answers (table 100) no
    /// longer goes through balancer `i`; how long it took, or `None`.
    pub fn wait_return_without(&self, i: usize, limit: Duration) -> Option<Duration> {
        let gone = balancer_ip(i).to_string();
        let t = Instant::now();
        until(limit, Duration::from_millis(2), || {
            !self.return_next_hops().contains(&gone)
        })
        .then(|| t.elapsed())
    }

    /// Waits until every balancer carries the VIP and the router routes it
    /// through all of them (ECMP), or until one balancer holds the VIP and
    /// the router's ARP points to it (VRRP). Returns the time it took.
    pub fn wait_converged(&self, limit: Duration) -> Duration {
        match self.mode {
            Mode::Ecmp => {
                let all: Vec<usize> = (0..self.balancers).collect();
                self.wait_routes(&all, limit)
            }
            Mode::Vrrp => {
                let t = Instant::now();
                let ok = until(limit, Duration::from_millis(20), || {
                    self.poke_vip();
                    self.vip_holder_seen_by_router().is_some()
                });
                assert!(
                    ok,
                    "no balancer took the VIP within {limit:?}\n{}",
                    self.diagnose()
                );
                t.elapsed()
            }
        }
    }

    /// VRRP: the one balancer that holds the VIP, if the router's ARP entry
    /// for the VIP names its MAC too (and nobody else holds it).
    pub fn vip_holder_seen_by_router(&self) -> Option<usize> {
        let h = self.vip_holders();
        if h.len() != 1 {
            return None;
        }
        (self.router_vip_mac()? == self.balancer_mac(h[0])).then_some(h[0])
    }

    /// One datagram from the router to the VIP (port 9, discard), so that
    /// the router resolves the VIP's MAC address (the bed has no `ping`).
    pub fn poke_vip(&self) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.router_ns(),
                "bash",
                "-c",
                &format!("echo poke > /dev/udp/{VIP}/9"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// `birdc` on the router (ECMP mode).
    pub fn router_birdc(&self, args: &str) -> String {
        self.router
            .as_ref()
            .map(|b| b.birdc(args))
            .unwrap_or_default()
    }

    /// `birdc` on balancer `i`'s BIRD (ECMP mode).
    pub fn balancer_birdc(&self, i: usize, args: &str) -> String {
        self.birds[i]
            .as_ref()
            .map(|b| b.birdc(args))
            .unwrap_or_default()
    }

    /// What the router and the balancers see: for failure messages.
    pub fn diagnose(&self) -> String {
        let rt = self.router_ns();
        let mut cmds = vec![
            format!("ip -n {rt} route"),
            format!("ip -n {rt} route show table {RETURN_TABLE}"),
            format!("ip -n {rt} neigh"),
        ];
        for i in 0..self.balancers {
            let lb = self.balancer_ns(i);
            cmds.push(format!("ip -n {lb} -br addr"));
            cmds.push(format!("ip -n {lb} route show table 251"));
        }
        let mut out = String::new();
        for c in cmds {
            out += &format!("$ {c}\n");
            if let Ok(o) = Command::new("sh").arg("-c").arg(&c).output() {
                out += &String::from_utf8_lossy(&o.stdout);
            }
        }
        if self.mode == Mode::Ecmp {
            out += "router: birdc show protocols\n";
            out += &self.router_birdc("show protocols");
            out += "router: birdc show bfd sessions\n";
            out += &self.router_birdc("show bfd sessions");
            for i in 0..self.balancers {
                out += &format!("lb{i}: birdc show protocols\n");
                out += &self.balancer_birdc(i, "show protocols");
            }
        }
        out
    }

    /// Stops balancer `i`'s daemon (SIGTERM, detaches).
    pub fn stop_balancer(&mut self, i: usize) {
        if let Some(d) = self.daemons[i].take() {
            let _ = d.stop();
        }
    }

    /// Stops every balancer daemon (before the backends, whose stop the
    /// probes would otherwise report).
    pub fn stop_balancers(&mut self) {
        for i in 0..self.balancers {
            self.stop_balancer(i);
        }
    }

    pub fn cleanup(&self) {
        cleanup(&self.prefix);
    }
}

impl Drop for HaBed {
    fn drop(&mut self) {
        // Processes before the namespaces they run in.
        for k in &mut self.keepalived {
            drop(k.take());
        }
        for d in &mut self.daemons {
            drop(d.take());
        }
        for b in &mut self.birds {
            drop(b.take());
        }
        drop(self.router.take());
        if std::thread::panicking() {
            // Keep the BIRD and keepalived logs for the post-mortem.
            let keep = PathBuf::from(format!("{}-failed", self.dir.display()));
            let _ = std::fs::remove_dir_all(&keep);
            if std::fs::rename(&self.dir, &keep).is_ok() {
                eprintln!("bed logs kept in {}", keep.display());
            }
        }
        self.cleanup();
    }
}

/// Configurations, BIRD sockets and logs of the bed named `prefix`.
fn dir(prefix: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/balancer-ha-{prefix}"))
}

/// Removes what a bed named `prefix` made: kills every process left in its
/// namespaces, deletes them, its balancers' configurations and pins, and its
/// directory. For a handler that has no [`HaBed`] at hand (Ctrl-C); a bed
/// does this on drop.
pub fn cleanup(prefix: &str) {
    let ns = |role: String| format!("{prefix}-{role}");
    let mut names = vec![ns("rt".into()), ns("cli".into()), ns("sw".into())];
    for i in 0..MAX_BALANCERS {
        names.push(ns(format!("lb{i}")));
        let inst = format!("{prefix}-lb{i}");
        let _ = std::fs::remove_file(crate::bed::config_path(&inst));
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/balancer/{inst}"));
    }
    for i in 0..MAX_BACKENDS {
        names.push(ns(format!("b{i}")));
    }
    for n in names {
        // What a killed run left running in its namespaces (its BIRDs,
        // daemons, sipps), by pid: deleting a namespace ends no process.
        if let Ok(o) = Command::new("ip")
            .args(["netns", "pids", &n])
            .stderr(Stdio::null())
            .output()
        {
            for pid in String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .filter(|p| *p > 1)
            {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &n])
            .stderr(Stdio::null())
            .status();
    }
    let _ = std::fs::remove_dir_all(dir(prefix));
}

/// An example of `dist/announce/` with each `(from, to)` replaced; every
/// `from` must be there, so an edit of the example that the bed no longer
/// fits fails here rather than testing something else.
pub fn dist_example(name: &str, edits: &[(&str, &str)]) -> String {
    let path = format!("{}/../dist/announce/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    for (from, to) in edits {
        assert!(
            text.contains(from),
            "{path} no longer has {from:?}: update the test that runs it"
        );
        text = text.replace(from, to);
    }
    text
}

/// A balancer's counters, from `stats --json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams to the VIP's service.
    pub service: u64,
    /// Datagrams sent on (`tx` + `redirect`): to backends and, rewritten, to
    /// clients.
    pub forwarded: u64,
    /// Backends' datagrams rewritten to come from the VIP.
    pub reverse: u64,
    pub learned: u64,
    pub affinity_hit: u64,
    pub no_backend: u64,
}

/// A `[[service.backend]]` table: `weight`, and `probed = false` for a host
/// that is never marked down (per-backend `[service.backend.health] enabled
/// = false`), such as a backend whose SIP port is a caller.
pub fn backend_toml(address: &str, weight: u32, probed: bool) -> String {
    let mut t = format!("[[service.backend]]\naddress = \"{address}\"\nweight = {weight}\n");
    if !probed {
        t += "\n[service.backend.health]\nenabled = false\n";
    }
    t + "\n"
}

/// The gateways of the routes in `ip -j route` output (one route, with
/// `gateway` or with `nexthops`).
fn next_hops(json: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let mut out = BTreeSet::new();
    for r in v.as_array().into_iter().flatten() {
        if let Some(g) = r["gateway"].as_str() {
            out.insert(g.to_string());
        }
        for h in r["nexthops"].as_array().into_iter().flatten() {
            if let Some(g) = h["gateway"].as_str() {
                out.insert(g.to_string());
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_of_one_path_and_of_many() {
        let one = r#"[{"dst":"10.1.0.10","gateway":"10.1.9.12","dev":"rl","protocol":"bird","metric":32,"flags":[]}]"#;
        assert_eq!(next_hops(one), vec!["10.1.9.12"]);
        let many = r#"[{"dst":"10.1.0.10","protocol":"bird","metric":32,"flags":[],"nexthops":[{"gateway":"10.1.9.13","dev":"rl","weight":1,"flags":[]},{"gateway":"10.1.9.11","dev":"rl","weight":1,"flags":[]}]}]"#;
        assert_eq!(next_hops(many), vec!["10.1.9.11", "10.1.9.13"]);
        assert!(next_hops("[]").is_empty());
        assert!(next_hops("").is_empty());
    }

    #[test]
    fn a_sync_section_names_the_other_balancers() {
        let bed = HaBed {
            prefix: "x".into(),
            mode: Mode::Ecmp,
            balancers: 3,
            backends: 0,
            dir: PathBuf::from("/nonexistent"),
            router: None,
            birds: vec![],
            keepalived: vec![],
            daemons: vec![],
        };
        let c = bed.balancer_config(1, "", &backend_toml("10.1.2.11:5060", 1, true), true);
        assert!(c.contains("listen = \"10.1.9.12:5099\""), "{c}");
        assert!(
            c.contains("peers = [\"10.1.9.11:5099\", \"10.1.9.13:5099\"]"),
            "{c}"
        );
        assert!(c.contains(&format!("key = \"{SYNC_KEY}\"")), "{c}");
        // Without [sync] (not parsed by every build yet), the balancer reads it.
        let plain = bed.balancer_config(
            0,
            "[health]\ninterval = \"500ms\"\n",
            &(backend_toml("10.1.2.11:5060", 1, true) + &backend_toml("10.1.2.15:5060", 0, false)),
            false,
        );
        let cfg = balancer::model::Config::parse(&plain).unwrap_or_else(|e| panic!("{e}: {plain}"));
        assert_eq!(cfg.services[0].backends.len(), 2);
        // The dist examples still fit the bed.
        let bird = bed.balancer_bird_conf(2);
        assert!(bird.contains("local 10.1.9.13 as 65001;"), "{bird}");
        assert!(bird.contains("neighbor 10.1.9.1 as 65000;"), "{bird}");
        assert!(bird.contains("interface \"e0\""), "{bird}");
        // Not built: its drop must not touch namespaces of that name.
        std::mem::forget(bed);
    }
}
