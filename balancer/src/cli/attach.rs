//! `balancer attach IFACE --vip IP:PORT --backend IP:PORT[,weight=N]...`
//!
//! Foreground: loads the data plane, attaches it to the client-facing interface and
//! to every interface the routing table uses towards the backends, prints `ready`,
//! and detaches cleanly on SIGINT/SIGTERM.

use std::io::Write;
use std::os::fd::AsRawFd;

use anyhow::{bail, Context, Result};
use aya::programs::XdpMode;
use balancer::{
    dataplane::Dataplane,
    neigh, route,
    spec::{parse_addr, BackendSpec, Mode, ServiceSpec},
};
use balancer_common::maglev::DEFAULT_TABLE;

/// How often the backends get an OPTIONS to keep their neighbour entries fresh.
const NEIGH_REFRESH: std::time::Duration = std::time::Duration::from_secs(20);

#[derive(clap::Args)]
pub struct Args {
    /// Client-facing interface (where SIP traffic to the VIP arrives).
    iface: String,
    /// Service address clients send to.
    #[arg(long, value_parser = parse_addr)]
    vip: std::net::SocketAddr,
    /// A backend, IP:PORT[,weight=N]; repeat the flag or list several.
    #[arg(long = "backend", required = true, num_args = 1..)]
    backends: Vec<BackendSpec>,
    /// dnat (rewrite destination, reverse-NAT replies) or dsr (rewrite MAC only).
    #[arg(long, default_value = "dnat")]
    mode: Mode,
    /// Maglev table size, a prime up to 65537.
    #[arg(long, default_value_t = DEFAULT_TABLE)]
    table_size: u32,
    /// Instance name: several instances on one host must have different names.
    #[arg(long, env = "BALANCER_INSTANCE", default_value = "default")]
    instance: String,
    /// XDP attach mode: auto (native where the driver has it), native, generic.
    #[arg(long, default_value = "auto")]
    xdp_mode: String,
}

pub fn run(a: Args) -> Result<()> {
    let spec = ServiceSpec {
        vip: a.vip,
        mode: a.mode,
        table_size: a.table_size,
        backends: a.backends,
    };
    spec.validate()?;
    let xdp_mode = match a.xdp_mode.as_str() {
        "auto" => XdpMode::Default,
        "native" => XdpMode::Driver,
        "generic" => XdpMode::Skb,
        m => bail!("--xdp-mode {m}: expected auto, native or generic"),
    };
    let _lock = instance_lock(&a.instance)?;

    let mut dp = Dataplane::load()?;
    let slots = dp.install_service(&spec)?.slots.clone();

    let mut ifaces = vec![a.iface.clone()];
    for b in &spec.backends {
        let dev = route::egress_interface(b.addr.ip())?;
        if !ifaces.contains(&dev) {
            ifaces.push(dev);
        }
    }
    for i in &ifaces {
        let idx = route::ifindex(i)?;
        dp.add_tx_port(idx)?;
        dp.attach(i, xdp_mode)?;
        if route::is_veth(i) && xdp_mode != XdpMode::Skb {
            eprintln!(
                "note: {i} is a veth: frames redirected into it are received only if its peer runs NAPI \
                 (an XDP program, or `ethtool -K <peer> gro on`); otherwise they are silently lost"
            );
        }
    }
    if spec.mode == Mode::Dnat {
        warn_forwarding(spec.vip.is_ipv4());
    }
    let addrs: Vec<std::net::SocketAddr> = spec.backends.iter().map(|b| b.addr).collect();
    neigh::prime(&addrs, 1);
    println!(
        "ready: instance {} serving {} ({:?}) with {} backends on {}",
        a.instance,
        spec.vip,
        spec.mode,
        spec.backends.len(),
        ifaces.join(", ")
    );
    std::io::stdout().flush()?;

    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            let mut refresh = tokio::time::interval(NEIGH_REFRESH);
            refresh.tick().await;
            let mut seq = 1;
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                    _ = refresh.tick() => {
                        seq += 1;
                        neigh::prime(&addrs, seq);
                    }
                }
            }
            anyhow::Ok(())
        })?;

    for (name, n) in dp.stats()? {
        if n > 0 {
            eprintln!("{name:>20} {n}");
        }
    }
    for (b, slot) in spec.backends.iter().zip(slots) {
        let t = dp.backend_traffic(slot)?;
        eprintln!("{:>20} {} packets, {} bytes", b.addr, t.packets, t.bytes);
    }
    drop(dp); // detaches every link
    println!("detached");
    Ok(())
}

/// An exclusive lock per instance name, so two daemons never share pins or a socket.
fn instance_lock(name: &str) -> Result<std::fs::File> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("instance name `{name}`: use letters, digits, '-' and '_'");
    }
    let dir = std::path::Path::new("/run/balancer");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.lock"));
    let f = std::fs::File::create(&path).with_context(|| format!("opening {}", path.display()))?;
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "instance `{name}` is already running (lock {} held); pick another --instance",
            path.display()
        );
    }
    Ok(f)
}

fn warn_forwarding(v4: bool) {
    let path = if v4 {
        "/proc/sys/net/ipv4/ip_forward"
    } else {
        "/proc/sys/net/ipv6/conf/all/forwarding"
    };
    if std::fs::read_to_string(path)
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
    {
        eprintln!("warning: {path} is 0: in dnat mode this host is a router; the kernel refuses to forward and rewritten datagrams are dropped");
    }
}
