//! The contenders of the throughput bench, each set up on the bed and torn
//! down again, so the next one finds the balancer namespace as a plain router:
//! our balancer (dnat, dsr), the trivial XDP rewrite (this machine's ceiling),
//! Kamailio's stateless dispatcher, and nftables DNAT on the kernel's forwarding
//! path.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aya::programs::XdpMode;
use balancer::kernel::Dataplane;
use balancer_common::maps::TrivialTarget;

use balancer_test_support::bed::{self, Bed, VIP};
use balancer_test_support::daemon::Daemon;

pub const BACKENDS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    Dnat,
    Dsr,
    Trivial,
    Kamailio,
    Nftables,
}

impl Contender {
    pub const ALL: [Contender; 5] = [
        Contender::Trivial,
        Contender::Dnat,
        Contender::Dsr,
        Contender::Nftables,
        Contender::Kamailio,
    ];

    /// Short name (BENCH_CONTENDERS, JSON).
    pub fn key(self) -> &'static str {
        match self {
            Contender::Dnat => "dnat",
            Contender::Dsr => "dsr",
            Contender::Trivial => "trivial",
            Contender::Kamailio => "kamailio",
            Contender::Nftables => "nftables",
        }
    }

    /// What the report calls it.
    pub fn title(self) -> &'static str {
        match self {
            Contender::Dnat => "balancer dnat (Call-ID, affinity)",
            Contender::Dsr => "balancer dsr (Call-ID, affinity)",
            Contender::Trivial => "trivial XDP rewrite (ceiling)",
            Contender::Kamailio => "Kamailio 5.6 dispatcher",
            Contender::Nftables => "nftables DNAT (jhash sport)",
        }
    }

    pub fn colour(self) -> &'static str {
        match self {
            Contender::Dnat => "#d62728",
            Contender::Dsr => "#ff7f0e",
            Contender::Trivial => "#2ca02c",
            Contender::Kamailio => "#1f77b4",
            Contender::Nftables => "#9467bd",
        }
    }
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "command failed: {cmd}");
}

fn sh_out(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn backends() -> Vec<String> {
    (0..BACKENDS)
        .map(|i| format!("{}:5060", bed::backend_ip(i)))
        .collect()
}

/// A contender while it runs; tearing it down is dropping it.
pub enum Running {
    Balancer {
        daemon: Option<Daemon>,
        dsr: bool,
        backend_ns: Vec<String>,
    },
    Trivial {
        stop: mpsc::Sender<()>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    Kamailio {
        child: Child,
        dir: String,
        lb: String,
    },
    Nftables {
        lb: String,
    },
}

pub fn start(c: Contender, bed: &Bed, kamailio_children: u32) -> Running {
    let lb = bed.ns("lb");
    match c {
        Contender::Dnat | Contender::Dsr => {
            let dsr = c == Contender::Dsr;
            if dsr {
                bed.vip_on_backends(BACKENDS);
            }
            // `attach_args` writes the configuration file (the service, no
            // per-source limits); then health checks on, but never marking
            // down: the sinks do not answer OPTIONS, and a benchmark must not
            // measure a table with no backends.
            let args = Bed::attach_args(if dsr { "dsr" } else { "dnat" }, &bed.prefix, &backends());
            let path = bed::config_path(&bed.prefix);
            let mut conf = std::fs::read_to_string(&path).unwrap();
            conf.push_str("\n[health]\nenabled = false\n");
            std::fs::write(&path, conf).unwrap();
            Running::Balancer {
                daemon: Some(Daemon::start(&lb, &args)),
                dsr,
                backend_ns: (0..BACKENDS).map(|i| bed.backend_ns(i)).collect(),
            }
        }
        Contender::Trivial => {
            let b0 = bed.backend_ns(0);
            let dmac = mac(&format!("ip -n {b0} -o link show e0"));
            let smac = mac(&format!("ip -n {lb} -o link show l1"));
            let ifindex: u32 = sh_out(&format!("ip -n {lb} -o link show l1"))
                .split(':')
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let (stop, wait) = mpsc::channel::<()>();
            let (ready_tx, ready) = mpsc::channel::<Result<(), String>>();
            let ns = lb.clone();
            // The attach names an interface of the balancer namespace: do it from
            // a thread that lives there, and keep the program (and so the link)
            // alive in it until told to stop.
            let thread = std::thread::spawn(move || {
                let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
                assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
                let r = (|| -> anyhow::Result<Dataplane> {
                    let mut dp = Dataplane::load()?;
                    dp.add_tx_port(ifindex)?;
                    dp.set_trivial_target(TrivialTarget {
                        addr: bed::backend_ip(0).octets(),
                        port: 5060u16.to_be(),
                        dmac,
                        smac,
                        _pad: [0; 2],
                        ifindex,
                    })?;
                    dp.attach_trivial("l0", XdpMode::Driver)?;
                    Ok(dp)
                })();
                match r {
                    Ok(dp) => {
                        ready_tx.send(Ok(())).unwrap();
                        let _ = wait.recv();
                        drop(dp);
                    }
                    Err(e) => ready_tx.send(Err(format!("{e:#}"))).unwrap(),
                }
            });
            if let Err(e) = ready.recv().unwrap() {
                panic!("trivial program: {e}");
            }
            Running::Trivial {
                stop,
                thread: Some(thread),
            }
        }
        Contender::Nftables => {
            let rules = format!(
                "table ip sipbench {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
ip daddr {VIP} udp dport 5060 dnat to jhash udp sport mod {BACKENDS} map {{ {} }}\n  }}\n}}\n",
                (0..BACKENDS)
                    .map(|i| format!("{i} : {}", bed::backend_ip(i)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let path = format!("/tmp/sipbench-{}.nft", bed.prefix);
            std::fs::write(&path, rules).unwrap();
            sh(&format!("ip netns exec {lb} nft -f {path}"));
            Running::Nftables { lb }
        }
        Contender::Kamailio => start_kamailio(bed, kamailio_children),
    }
}

fn mac(link_show: &str) -> [u8; 6] {
    let out = sh_out(link_show);
    let s = out
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no MAC in {out}"));
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate() {
        m[i] = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

/// The comparison every VoIP operator knows: Kamailio as a stateless Call-ID
/// dispatcher (`ds_select_dst("1", "0")`, hash over Call-ID, then `forward()`),
/// no transaction module, probing off, on the VIP of the balancer namespace,
/// pinned to the balancer's CPU. TLSF allocator and a 4 MB receive buffer
/// (on this bed, twice the rate Debian's default allocator gives).
fn start_kamailio(bed: &Bed, children: u32) -> Running {
    let lb = bed.ns("lb");
    let dir = format!("/tmp/sipbench-kamailio-{}", bed.prefix);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(format!("{dir}/run")).unwrap();
    let list: String = (0..BACKENDS)
        .map(|i| format!("1 sip:{}:5060 0 0\n", bed::backend_ip(i)))
        .collect();
    std::fs::write(format!("{dir}/dispatcher.list"), list).unwrap();
    let cfg = format!(
        r#"#!KAMAILIO
# Written by balancer/benches/throughput: stateless Call-ID dispatcher.
debug=-1
log_stderror=yes
children={children}
dns=no
rev_dns=no
use_dns_cache=no
disable_tcp=yes
disable_sctp=yes
auto_aliases=no
maxbuffer=4194304
listen=udp:{VIP}:5060
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"

loadmodule "dispatcher.so"
modparam("dispatcher", "list_file", "{dir}/dispatcher.list")
modparam("dispatcher", "ds_ping_interval", 0)

request_route {{
    if (!ds_select_dst("1", "0")) {{
        drop;
    }}
    forward();
    exit;
}}
"#
    );
    std::fs::write(format!("{dir}/kamailio.cfg"), cfg).unwrap();
    sh(&format!("ip -n {lb} addr add {VIP}/32 dev lo"));
    let log = std::fs::File::create(format!("{dir}/kamailio.log")).unwrap();
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{lb}"))
        .args(["--", "taskset", "-c", "1", "kamailio", "-f"])
        .arg(format!("{dir}/kamailio.cfg"))
        .args(["-DD", "-E", "-x", "tlsf", "-m", "64", "-M", "8", "-Y"])
        .arg(format!("{dir}/run"))
        .arg("-P")
        .arg(format!("{dir}/kamailio.pid"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        // Its own process group: the teardown kills the forked workers too.
        .process_group(0)
        .spawn()
        .expect("kamailio");
    let t0 = Instant::now();
    // Ready once the socket is bound and the workers had a moment to start.
    while sh_out(&format!("ip netns exec {lb} ss -Hlun 'sport = :5060'"))
        .trim()
        .is_empty()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "kamailio did not bind: {}",
            std::fs::read_to_string(format!("{dir}/kamailio.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    Running::Kamailio { child, dir, lb }
}

impl Drop for Running {
    fn drop(&mut self) {
        match self {
            Running::Balancer {
                daemon,
                dsr,
                backend_ns,
            } => {
                if let Some(d) = daemon.take() {
                    d.stop();
                }
                if *dsr {
                    for b in backend_ns {
                        let _ = Command::new("ip")
                            .args(["-n", b, "addr", "del", &format!("{VIP}/32"), "dev", "lo"])
                            .status();
                    }
                }
            }
            Running::Trivial { stop, thread } => {
                let _ = stop.send(());
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
            Running::Kamailio { child, dir, lb } => {
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                let _ = Command::new("ip")
                    .args(["-n", lb, "addr", "del", &format!("{VIP}/32"), "dev", "lo"])
                    .status();
                let _ = std::fs::remove_dir_all(dir);
            }
            Running::Nftables { lb } => {
                let _ = Command::new("ip")
                    .args([
                        "netns", "exec", lb, "nft", "delete", "table", "ip", "sipbench",
                    ])
                    .status();
            }
        }
    }
}
