//! The long-running daemon: owns the data plane and the configuration, answers
//! the control socket, writes every change back to the configuration file.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use aya::programs::XdpMode;
use balancer_common::hash::{hash_addr, hash_bytes};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::config::{AdminState, Config};
use crate::control::{self, Request, Response};
use crate::dataplane::Dataplane;
use crate::health::{Health, Tracker};
use crate::prober::{Event, Prober};
use crate::requirements::{self, KernelError, Rejected};
use crate::route;
use crate::spec::{endpoint, Algorithm, Mode};

pub struct Options {
    pub instance: String,
    /// Read at start, written after every change.
    pub config_path: PathBuf,
    pub config: Config,
    /// Leave programs, links and maps pinned when exiting.
    pub persist: bool,
    pub xdp_mode: XdpMode,
    /// Where the verifier's log goes if the kernel refuses the program
    /// (default: [`control::verifier_log_path`]).
    pub verifier_log: Option<PathBuf>,
}

pub struct Daemon {
    opts: Options,
    dp: Dataplane,
    /// Interfaces the program is attached to, in order.
    ifaces: Vec<String>,
    /// Egress interface of each backend address, as `ip route get` said.
    routes: HashMap<IpAddr, String>,
    /// Probe state per backend address.
    health: HashMap<SocketAddr, Tracker>,
    prober: Option<Prober>,
    /// Table rebuilds caused by health changes (churn shows here).
    health_rebuilds: u64,
}

enum Exit {
    Signal,
    Detach,
}

pub fn parse_xdp_mode(s: &str) -> Result<XdpMode> {
    Ok(match s {
        "auto" => XdpMode::Default,
        "native" => XdpMode::Driver,
        "generic" => XdpMode::Skb,
        m => bail!("--xdp-mode {m}: expected auto, native or generic"),
    })
}

/// Runs until SIGINT/SIGTERM or `balancer detach`.
pub fn run(opts: Options) -> Result<()> {
    control::check_instance(&opts.instance)?;
    if opts.config.interfaces.is_empty() {
        bail!(crate::config::ConfigError::NoInterfaces);
    }
    requirements::check()?;
    let release = requirements::release();
    if requirements::older_than_tested(&release) {
        eprintln!(
            "warning: kernel {release} is older than the oldest tested ({}): it has what the program uses, but is untested",
            requirements::MINIMUM
        );
    }
    let _lock = instance_lock(&opts.instance)?;
    ensure_bpffs()?;
    let pins = control::pin_dir(&opts.instance);
    let dp = open_dataplane(&opts, &pins)?;
    if dp.adopted_services() > 0 {
        eprintln!(
            "adopting the pinned data plane of an earlier run ({} services): traffic keeps flowing",
            dp.adopted_services()
        );
    }
    let mut d = Daemon {
        opts,
        dp,
        ifaces: Vec::new(),
        routes: HashMap::new(),
        health: HashMap::new(),
        prober: None,
        health_rebuilds: 0,
    };
    let config = d.opts.config.clone();
    if let Err(e) = d
        .ensure_interfaces(&config)
        .and_then(|_| d.dp.sync(&config))
    {
        if !d.opts.persist {
            let _ = d.dp.unpin();
        }
        return Err(e);
    }
    config
        .save(&d.opts.config_path)
        .with_context(|| format!("writing {}", d.opts.config_path.display()))?;
    if config.services.iter().any(|s| s.mode == Mode::Dnat) {
        warn_forwarding(config.services.iter().any(|s| s.vip.is_ipv4()));
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let exit = match rt.block_on(d.serve()) {
        Ok(e) => e,
        Err(e) => {
            if !d.opts.persist {
                let _ = d.dp.unpin();
            }
            return Err(e);
        }
    };
    for (name, n) in d.dp.stats()? {
        if n > 0 {
            eprintln!("{name:>20} {n}");
        }
    }
    if d.opts.persist && matches!(exit, Exit::Signal) {
        println!(
            "exiting; the data plane stays attached ({}): the next start adopts it",
            control::pin_dir(&d.opts.instance).display()
        );
    } else {
        d.dp.unpin()?;
        drop(d.dp); // detaches every link this process holds
        println!("detached");
    }
    Ok(())
}

/// Loads the data plane; a program the verifier refuses becomes one line, its
/// whole log a file.
fn open_dataplane(opts: &Options, pins: &Path) -> Result<Dataplane> {
    let e = match Dataplane::open_with(Some(pins), opts.config.affinity_entries) {
        Ok(dp) => return Ok(dp),
        Err(e) => e,
    };
    let rejected = e.downcast::<Rejected>()?;
    let log = opts
        .verifier_log
        .clone()
        .unwrap_or_else(|| control::verifier_log_path(&opts.instance));
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&log, &rejected.log) {
        bail!(
            "{rejected}; writing its whole log to {} failed: {e}",
            log.display()
        );
    }
    Err(KernelError::Rejected {
        release: requirements::release(),
        rejected,
        log,
    }
    .into())
}

impl Daemon {
    /// Attaches to the client-facing interfaces and to every interface the
    /// routing table names towards a backend.
    fn ensure_interfaces(&mut self, c: &Config) -> Result<()> {
        let mut want = c.interfaces.clone();
        for s in &c.services {
            for b in &s.backends {
                // `ip route get` is a process: once per backend address, not
                // once per backend per change.
                let ip = b.address.ip();
                let dev = match self.routes.get(&ip) {
                    Some(d) => d.clone(),
                    None => {
                        let d = route::egress_interface(ip)?;
                        self.routes.insert(ip, d.clone());
                        d
                    }
                };
                if !want.contains(&dev) {
                    want.push(dev);
                }
            }
        }
        for i in want {
            if self.ifaces.contains(&i) {
                continue;
            }
            let idx = route::ifindex(&i)?;
            self.dp.add_tx_port(idx)?;
            self.dp.attach(&i, self.opts.xdp_mode)?;
            if route::is_veth(&i) && self.opts.xdp_mode != XdpMode::Skb {
                eprintln!(
                    "note: {i} is a veth: frames redirected into it are received only if its peer runs NAPI \
                     (an XDP program, or `ethtool -K <peer> gro on`); otherwise they are silently lost"
                );
            }
            self.ifaces.push(i);
        }
        Ok(())
    }

    /// Points the prober at the configured backends and forgets removed ones.
    fn update_probes(&mut self) -> Result<()> {
        let want = self.dp.config().health_params()?;
        let addrs: HashSet<SocketAddr> = want.iter().map(|(a, _)| *a).collect();
        self.health.retain(|a, _| addrs.contains(a));
        if let Some(p) = self.prober.as_mut() {
            p.update(&want);
        }
        Ok(())
    }

    fn down_set(&self) -> HashSet<SocketAddr> {
        self.health
            .iter()
            .filter(|(_, t)| t.health == Health::Down)
            .map(|(a, _)| *a)
            .collect()
    }

    /// One probe result: a change of health is logged with its reason, and one
    /// into or out of `down` rebuilds the tables at once.
    fn on_probe(&mut self, ev: Event) {
        let Some(params) = self
            .prober
            .as_ref()
            .and_then(|p| p.params(ev.backend))
            .cloned()
        else {
            return;
        };
        let t = self.health.entry(ev.backend).or_default();
        let Some(tr) = t.record(&params, &ev.outcome) else {
            return;
        };
        eprintln!(
            "health: backend {} {} -> {} ({})",
            ev.backend,
            tr.from.name(),
            tr.to.name(),
            tr.reason
        );
        if tr.from != Health::Down && tr.to != Health::Down {
            return;
        }
        let down = self.down_set();
        self.dp.set_down(down);
        self.health_rebuilds += 1;
        let config = self.dp.config().clone();
        match self.dp.sync(&config) {
            Ok(r) => eprintln!(
                "health: tables rebuilt, in the kernel after {:.2} ms",
                r.to_kernel.as_secs_f64() * 1e3
            ),
            Err(e) => eprintln!("error: rebuilding the tables after a health change: {e:#}"),
        }
    }

    async fn serve(&mut self) -> Result<Exit> {
        use tokio::signal::unix::{signal, SignalKind};
        let path = control::socket_path(&self.opts.instance);
        let _ = std::fs::remove_file(&path); // stale: we hold the instance lock
        let listener =
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let _socket = RemoveOnDrop(path.clone());

        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        self.prober = Some(Prober::new(tx).await?);
        self.update_probes()?;
        // Let the first probe round go out before saying ready: it resolves the
        // backends' neighbour entries.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let c = self.dp.config();
        println!(
            "ready: instance {} serving {} services, {} backends on {} (control: {})",
            self.opts.instance,
            c.services.len(),
            c.services.iter().map(|s| s.backends.len()).sum::<usize>(),
            self.ifaces.join(", "),
            path.display()
        );
        use std::io::Write;
        std::io::stdout().flush()?;

        let mut term = signal(SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(Exit::Signal),
                _ = term.recv() => return Ok(Exit::Signal),
                Some(ev) = events.recv() => self.on_probe(ev),
                conn = listener.accept() => {
                    let Ok((stream, _)) = conn else { continue };
                    if self.converse(stream).await {
                        return Ok(Exit::Detach);
                    }
                }
            }
        }
    }

    /// Answers one request; returns whether it asked the daemon to detach.
    async fn converse(&mut self, stream: UnixStream) -> bool {
        let (r, mut w) = stream.into_split();
        let mut line = String::new();
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            BufReader::new(r).read_line(&mut line),
        )
        .await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            return false;
        }
        let (resp, detach) = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Detach) => (ok(json!({"detached": true})), true),
            Ok(req) => (
                match self.handle(req) {
                    Ok(v) => ok(v),
                    Err(e) => Response {
                        ok: false,
                        error: Some(format!("{e:#}")),
                        data: Value::Null,
                    },
                },
                false,
            ),
            Err(e) => (
                Response {
                    ok: false,
                    error: Some(format!("bad request: {e}")),
                    data: Value::Null,
                },
                false,
            ),
        };
        let mut out = serde_json::to_string(&resp).unwrap_or_default();
        out.push('\n');
        let _ = w.write_all(out.as_bytes()).await;
        detach
    }

    fn handle(&mut self, req: Request) -> Result<Value> {
        match req {
            Request::Apply { ops } => self.apply(&ops),
            Request::Status => self.status(),
            Request::Whereis { service, key } => self.whereis(service, &key),
            Request::Stats => self.stats(),
            Request::Detach => unreachable!("handled by converse"),
        }
    }

    /// All or nothing: plan on a copy, attach and sync, save; on a failure after
    /// the kernel changed, sync back to the previous configuration.
    fn apply(&mut self, ops: &[control::Op]) -> Result<Value> {
        let prev = self.dp.config().clone();
        let (next, said) = control::plan(&prev, ops)?;
        // A removed backend's health is forgotten: added again, it starts up.
        let keep: HashSet<SocketAddr> = next
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.address))
            .collect();
        self.health.retain(|a, _| keep.contains(a));
        self.dp.set_down(self.down_set());
        let result = self
            .ensure_interfaces(&next)
            .and_then(|_| self.dp.sync(&next))
            .and_then(|r| {
                next.save(&self.opts.config_path)
                    .with_context(|| format!("writing {}", self.opts.config_path.display()))?;
                Ok(r)
            });
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                if let Err(e2) = self.dp.sync(&prev) {
                    eprintln!("error: restoring the previous state failed too: {e2:#}");
                }
                return Err(e);
            }
        };
        for s in &said {
            eprintln!(
                "{s} (in the kernel after {:.2} ms)",
                report.to_kernel.as_secs_f64() * 1e3
            );
        }
        self.update_probes()?;
        Ok(json!({
            "changes": said,
            "tables": report.tables,
            "to_kernel_us": report.to_kernel.as_micros() as u64,
            "total_us": report.total.as_micros() as u64,
        }))
    }

    fn status(&self) -> Result<Value> {
        let mut services = Vec::new();
        for (vip, live) in self.dp.live() {
            let members: Vec<SocketAddr> = live.selector.backends.iter().map(|b| b.addr).collect();
            let t = self.dp.service_traffic(live.id)?;
            let mut backends = Vec::new();
            for b in &live.config.backends {
                let traffic = match self.dp.slot_of(b.address) {
                    Some(s) => self.dp.backend_traffic(s)?,
                    None => Default::default(),
                };
                let t = self.health.get(&b.address);
                let health = t.map_or(Health::Up, |t| t.health);
                let state = match (b.state, health) {
                    (AdminState::Active, Health::Down) => "down",
                    (AdminState::Active, Health::Trying) => "trying",
                    (AdminState::Active, _) if !members.contains(&b.address) => "standby",
                    (s, _) => s.name(),
                };
                let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3);
                backends.push(json!({
                    "address": b.address,
                    "service": vip,
                    "state": state,
                    "health": health.name(),
                    "weight": b.weight,
                    "priority": b.priority,
                    "packets": traffic.packets,
                    "bytes": traffic.bytes,
                    "rtt_last_ms": ms(t.and_then(|t| t.rtt.last)),
                    "rtt_avg_ms": ms(t.and_then(|t| t.rtt.avg())),
                    "rtt_max_ms": ms(t.map(|t| t.rtt.max).filter(|m| !m.is_zero())),
                    "probes": t.map_or(0, |t| t.probes),
                    "probe_failures": t.map_or(0, |t| t.failures),
                    "last_probe": t.and_then(|t| t.last.as_ref()).map(|o| o.to_string()),
                }));
            }
            services.push(json!({
                "vip": vip,
                "algorithm": live.config.algorithm.name(),
                "mode": live.config.mode.name(),
                "no_backend": match live.config.no_backend {
                    crate::config::NoBackend::Drop => "drop",
                    crate::config::NoBackend::Pass => "pass",
                },
                "affinity": live.config.affinity,
                "table_size": live.config.table_size,
                "packets": t.packets,
                "bytes": t.bytes,
                "backends": backends,
            }));
        }
        Ok(json!({
            "instance": self.opts.instance,
            "interfaces": self.ifaces,
            "config": self.opts.config_path,
            "health_rebuilds": self.health_rebuilds,
            "services": services,
        }))
    }

    fn stats(&self) -> Result<Value> {
        let mut reasons = serde_json::Map::new();
        for (name, n) in self.dp.stats()? {
            reasons.insert(name.into(), n.into());
        }
        let mut v = self.status()?;
        v["reasons"] = Value::Object(reasons);
        Ok(v)
    }

    /// The live kernel table's answer, with the kernel's own hash functions.
    fn whereis(&self, service: Option<SocketAddr>, key: &str) -> Result<Value> {
        let c = self.dp.config();
        let vip = c.resolve(service)?;
        let alg = c.service(vip)?.algorithm;
        let hash = match alg {
            Algorithm::RoundRobin => {
                bail!("service {vip} is round-robin: the backend depends on the turn, not on a key")
            }
            Algorithm::Source => {
                let ip: IpAddr = key.parse().map_err(|_| {
                    anyhow!("service {vip} hashes the source address: `{key}` is not an IP address")
                })?;
                let e = endpoint(SocketAddr::new(ip, 0));
                hash_addr(&e.addr, e.family)
            }
            _ => hash_bytes(key.trim().as_bytes()),
        };
        let (backend, via) = self.dp.lookup(vip, hash)?;
        Ok(json!({
            "service": vip,
            "algorithm": alg.name(),
            "key": key,
            "hash": format!("{hash:08x}"),
            "backend": backend,
            "via": via,
        }))
    }
}

fn ok(data: Value) -> Response {
    Response {
        ok: true,
        error: None,
        data,
    }
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An exclusive lock per instance name, so two daemons never share pins or a socket.
fn instance_lock(name: &str) -> Result<std::fs::File> {
    let dir = Path::new(control::RUN_DIR);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
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

/// Pins need bpffs at /sys/fs/bpf; mount it when the host has not.
fn ensure_bpffs() -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let root = std::ffi::CString::new("/sys/fs/bpf")?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(root.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fs = std::ffi::CString::new("bpf")?;
    if unsafe { libc::mount(fs.as_ptr(), root.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) } != 0 {
        bail!(
            "no bpffs at /sys/fs/bpf and mounting one failed ({}): mount it (mount -t bpf bpf /sys/fs/bpf), or give the container one",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
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
