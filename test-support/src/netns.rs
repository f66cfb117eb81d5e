//! Network namespaces that clean up after themselves, shell commands that must
//! succeed, and the namespace the kernel fixture tests and the data plane
//! benchmark run their program in.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "command failed: {cmd}");
}

pub fn sh_out(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        o.status.success(),
        "command failed: {cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `argv` run in the network namespace `ns` (`nsenter --net`, which execs
/// it: the child's pid is the program's), its stdout and stderr into `log`.
/// `name` is for the panic message if it cannot be started.
pub fn spawn_logged(
    ns: &str,
    name: &str,
    argv: &[String],
    log: std::fs::File,
) -> std::process::Child {
    let err = log.try_clone().expect("log file");
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .args(argv)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name} ({argv:?}): {e}"))
}

pub fn require_root() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "these tests load XDP programs and make network namespaces: run them as root (cargo xtask test)"
    );
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A named network namespace, deleted (with everything in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!(
            "bt{}-{}-{}",
            tag,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        sh(&format!("ip netns add {name}"));
        sh(&format!("ip -n {name} link set lo up"));
        Netns { name }
    }

    pub fn exec(&self, cmd: &str) {
        sh(&format!("ip netns exec {} {cmd}", self.name));
    }

    pub fn ip(&self, args: &str) {
        sh(&format!("ip -n {} {args}", self.name));
    }

    /// Moves the calling thread into this namespace.
    pub fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("netns file");
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {}", self.name);
    }

    pub fn ifindex(&self, dev: &str) -> u32 {
        let out = sh_out(&format!("ip -n {} -o link show {dev}", self.name));
        out.split(':').next().unwrap().trim().parse().unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The balancer host of the fixture tests and the benchmark, in a namespace of
/// its own that the calling thread enters: client side `cli0` (10.0.1.1,
/// fd00:1::1, MAC 02:00:00:00:ff:01), backend side `bk0` (10.0.2.1, fd00:2::1,
/// MAC 02:00:00:00:fe:01), forwarding on, and static neighbours so FIB answers
/// are known: the client 10.0.1.2/fd00:1::2 at 02:00:00:00:01:02, backends
/// 10.0.2.H at 02:00:00:00:02:HH (H in hex) and fd00:2::H at 02:00:00:00:06:H
/// for H in 11, 12, 13, 21, 22. Returns the namespace and the two ifindexes.
pub fn fixture_net(tag: &str) -> (Netns, u32, u32) {
    let ns = Netns::new(tag);
    for args in fixture_ip() {
        ns.ip(&args);
    }
    ns.exec(FIXTURE_SYSCTL);
    let cli = ns.ifindex("cli0");
    let bk = ns.ifindex("bk0");
    ns.enter();
    (ns, cli, bk)
}

/// The host of [`fixture_net`], in a fresh unnamed namespace the calling thread
/// moves into: it goes away with the process, however that ends (a fuzzer is
/// killed or aborts on a finding, and no `Drop` runs). The commands this
/// thread starts run in it too. Returns the two ifindexes.
pub fn fixture_net_here() -> (u32, u32) {
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET)");
    sh("ip link set lo up");
    for args in fixture_ip() {
        sh(&format!("ip {args}"));
    }
    sh(FIXTURE_SYSCTL);
    let ifindex = |dev: &str| -> u32 {
        let out = sh_out(&format!("ip -o link show {dev}"));
        out.split(':').next().unwrap().trim().parse().unwrap()
    };
    (ifindex("cli0"), ifindex("bk0"))
}

const FIXTURE_SYSCTL: &str = "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1";

/// The `ip` commands (without `ip`) that make the fixture host.
fn fixture_ip() -> Vec<String> {
    let mut c: Vec<String> = [
        "link add cli0 address 02:00:00:00:ff:01 type veth peer name cli0p",
        "link add bk0 address 02:00:00:00:fe:01 type veth peer name bk0p",
    ]
    .map(String::from)
    .into();
    for d in ["cli0", "cli0p", "bk0", "bk0p"] {
        c.push(format!("link set {d} up"));
    }
    c.extend(
        [
            "addr add 10.0.1.1/24 dev cli0",
            "addr add 10.0.2.1/24 dev bk0",
            "addr add fd00:1::1/64 dev cli0 nodad",
            "addr add fd00:2::1/64 dev bk0 nodad",
            "neigh add 10.0.1.2 lladdr 02:00:00:00:01:02 dev cli0 nud permanent",
            "neigh add fd00:1::2 lladdr 02:00:00:00:01:02 dev cli0 nud permanent",
        ]
        .map(String::from),
    );
    for h in [11, 12, 13, 21, 22] {
        c.push(format!(
            "neigh add 10.0.2.{h} lladdr 02:00:00:00:02:{h:02x} dev bk0 nud permanent"
        ));
        c.push(format!(
            "neigh add fd00:2::{h} lladdr 02:00:00:00:06:{h} dev bk0 nud permanent"
        ));
    }
    c
}
