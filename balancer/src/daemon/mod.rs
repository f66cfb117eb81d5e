//! The long-running daemon: owns the data plane and the configuration, answers
//! the control socket, writes every change back to the configuration file.

mod announce;
mod answers;
mod blocks;
mod guard;
mod hooks;
mod host;
mod interfaces;
mod metrics;
mod notify;
mod probes;
mod socket;
mod sync;
mod threads;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aya::programs::XdpMode;

use crate::control::protocol::{Detached, Reply};
use crate::control::{self, Request, Response};
use crate::health::{Event, Prober, Tracker};
use crate::kernel::requirements::{self, KernelError, Rejected};
use crate::kernel::Dataplane;
use crate::model::file::CommitError;
use crate::model::{Config, ConfigError, Mode};
pub use host::enter_netns;
use host::{check_pins_outlive, ensure_bpffs, instance_lock, warn_forwarding, RemoveOnDrop};

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
    /// Egress interface of each backend address, as the kernel's routing
    /// answered (`route.rs`), refreshed on routing notifications (`guard.rs`).
    routes: HashMap<IpAddr, String>,
    /// Probe state per backend address.
    health: HashMap<SocketAddr, Tracker>,
    prober: Option<Prober>,
    /// Table rebuilds caused by health changes (churn shows here).
    health_rebuilds: u64,
    /// Writes the announcement routes (`[announce]` enabled).
    announcer: Option<announce::Announcer>,
    /// Tells the peers about affinity entries (`[sync]`).
    syncer: Option<sync::Syncer>,
    /// Backend states as the hooks last saw them (`[hooks]`).
    hook_states: Option<hooks::States>,
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

/// SIGTERM and SIGHUP, caught from the first moment: during the start (which
/// can take seconds: loading, the first probe round) their default action
/// would end the process, the pins of a run without `--persist` left behind
/// and a reload lost. They wait, and are answered once the daemon serves.
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn catch(rt: &tokio::runtime::Runtime) -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let _in = rt.enter();
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Runs until SIGINT/SIGTERM or `balancer detach`.
pub fn run(opts: Options) -> Result<()> {
    control::check_instance(&opts.instance)?;
    // `serve` runs on this thread, outside the runtime's workers: its blocking
    // work (the grace period, fsync, `ip`) never holds up the connection tasks
    // or the prober, which run on the workers.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let signals = Signals::catch(&rt)?;
    if opts.config.interfaces.is_empty() {
        bail!(ConfigError::NoInterfaces);
    }
    requirements::check()?;
    let release = requirements::release();
    if requirements::older_than_tested(&release) {
        log::warn!(
            "kernel {release} is older than the oldest tested ({}): it has what the program uses, but is untested",
            requirements::MINIMUM
        );
    }
    let _lock = instance_lock(&opts.instance)?;
    ensure_bpffs()?;
    if opts.persist {
        check_pins_outlive()?;
    }
    // Written beside the file before anything is loaded or attached: a full
    // or read-only disk stops the start here, with nothing left behind.
    let staged = opts
        .config
        .stage(&opts.config_path)
        .with_context(|| format!("writing {}", opts.config_path.display()))?;
    let pins = control::pin_dir(&opts.instance);
    let dp = open_dataplane(&opts, &pins)?;
    if dp.adopted_services() > 0 {
        log::info!(
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
        announcer: None,
        syncer: None,
        hook_states: None,
    };
    let config = d.opts.config.clone();
    if let Err(e) = d
        .restore_health(&config)
        .and_then(|_| d.ensure_interfaces(&config))
        .and_then(|_| d.dp.sync(&config))
        .and_then(|_| d.update_guard())
        .and_then(|_| d.drop_stale_links())
    {
        if !d.opts.persist {
            let _ = d.dp.unpin();
        }
        return Err(e);
    }
    match staged.commit() {
        Ok(()) => {}
        Err(e @ CommitError::SyncDirectory(_)) => {
            log::warn!("{}: {e}", d.opts.config_path.display())
        }
        Err(e) => {
            if !d.opts.persist {
                let _ = d.dp.unpin();
            }
            return Err(e).with_context(|| format!("writing {}", d.opts.config_path.display()));
        }
    }
    if config.services.iter().any(|s| s.mode == Mode::Dnat) {
        warn_forwarding(config.services.iter().any(|s| s.vip.is_ipv4()));
    }

    let exit = rt.block_on(d.serve(signals));
    notify::notify("STOPPING=1");
    // Without --persist, or on detach, the routing daemon stops announcing
    // this host before the data plane goes.
    let keep = d.opts.persist && matches!(exit, Ok(Exit::Signal));
    // Entries queued until now still go out.
    drop(d.syncer.take());
    if let Some(a) = d.announcer.take() {
        a.finish(!keep);
    }
    let exit = match exit {
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
            log::info!("{name:>20} {n}");
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
    async fn serve(&mut self, signals: Signals) -> Result<Exit> {
        let Signals { mut term, mut hup } = signals;
        let path = control::socket_path(&self.opts.instance);
        let mut jobs = socket::listen(&path)?;
        let _socket = RemoveOnDrop(path.clone());

        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        self.prober = Some(Prober::new(tx).await?);
        self.update_probes()?;
        self.first_probe_round(&mut events).await?;
        let a = &self.dp.config().announce;
        if a.enabled {
            self.announcer = Some(announce::Announcer::start(
                crate::route::announce::Place {
                    table: a.table,
                    protocol: a.protocol,
                },
                crate::route::announced::path(&self.opts.instance),
            ));
            self.update_announce();
        }
        if let Some(c) = self.dp.config().sync.clone() {
            let pins = control::pin_dir(&self.opts.instance);
            self.syncer = Some(sync::Syncer::start(&c, &pins, sync::directory(self))?);
        }
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
        notify::notify(&format!(
            "READY=1\nSTATUS=serving {} services",
            self.dp.config().services.len()
        ));
        // Petted from this loop: a daemon stuck in it is restarted by
        // systemd (with --persist, without losing a datagram).
        let mut watchdog = notify::watchdog().map(tokio::time::interval);
        let mut scrapes = match &self.dp.config().metrics {
            Some(m) => Some(metrics::serve(m.listen, control::pin_dir(&self.opts.instance)).await?),
            None => None,
        };
        self.run_hooks();

        let mut routing = guard::watch();
        // Routes were looked up at start: changes from then on count.
        let mut follow_at: Option<tokio::time::Instant> = None;
        let mut expiry = tokio::time::interval(blocks::EXPIRY_CHECK);
        let mut threads_check = tokio::time::interval(Duration::from_secs(1));
        loop {
            let follow = follow_at
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(Exit::Signal),
                _ = term.recv() => return Ok(Exit::Signal),
                // SIGHUP re-reads the file, as systemd's ExecReload sends it.
                _ = hup.recv() => {
                    notify::notify("RELOADING=1");
                    match self.reload() {
                        Ok(a) if a.changes.is_empty() => log::info!("reload: {}: nothing changed", self.opts.config_path.display()),
                        Ok(_) => {}
                        Err(e) => log::error!("reload: {e:#}"),
                    }
                    notify::notify("READY=1");
                }
                Some(s) = async { scrapes.as_mut().unwrap().recv().await }, if scrapes.is_some() => {
                    let text = self.metrics_text(s.affinity).unwrap_or_else(|e| {
                        log::error!("metrics: {e:#}");
                        "# EOF\n".to_string()
                    });
                    let _ = s.answer.send(text);
                }
                _ = async { watchdog.as_mut().unwrap().tick().await }, if watchdog.is_some() => {
                    notify::notify("WATCHDOG=1");
                }
                Some(ev) = events.recv() => self.on_probe(ev),
                Some(()) = routing.recv() => {
                    follow_at.get_or_insert_with(|| tokio::time::Instant::now() + guard::QUIET);
                }
                _ = tokio::time::sleep_until(follow), if follow_at.is_some() => {
                    follow_at = None;
                    self.follow_routes().await;
                }
                _ = expiry.tick() => self.expire_blocks(),
                _ = threads_check.tick() => {
                    let failed = self.syncer.as_ref().and_then(|s| s.failure())
                        .or_else(|| self.announcer.as_ref().and_then(|a| a.failure()));
                    if let Some(why) = failed {
                        bail!("{why}; exiting, for a restart to bring it back");
                    }
                }
                Some(job) = jobs.recv() => {
                    if self.answer(job).await {
                        return Ok(Exit::Detach);
                    }
                }
            }
            // Health and configuration change only in the branches above.
            self.update_announce();
            self.run_hooks();
            if let Some(s) = &self.syncer {
                s.set_directory(sync::directory(self));
            }
        }
    }

    /// Waits for every backend's first probe outcome, at most the longest probe
    /// timeout (and 2 s): the round resolves the backends' neighbour entries,
    /// and until they are, the program passes what it would forward to them
    /// (counted `fib_no_neigh`). Only then is the daemon ready.
    async fn first_probe_round(
        &mut self,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    ) -> Result<()> {
        let params = self.dp.config().health_params()?;
        let mut waiting: HashSet<SocketAddr> = params.iter().map(|(a, _)| *a).collect();
        let longest = params
            .iter()
            .map(|(_, p)| p.timeout)
            .max()
            .unwrap_or_default();
        let wait = (longest + Duration::from_millis(100)).min(Duration::from_secs(2));
        let deadline = tokio::time::Instant::now() + wait;
        while !waiting.is_empty() {
            tokio::select! {
                Some(ev) = events.recv() => {
                    waiting.remove(&ev.backend);
                    self.on_probe(ev);
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        Ok(())
    }

    /// Answers one request; returns whether it asked the daemon to detach
    /// (then only once the answer is written, or could not be).
    async fn answer(&mut self, job: socket::Job) -> bool {
        let socket::Job { request, answer } = job;
        if request == Request::Detach {
            let (tx, written) = tokio::sync::oneshot::channel();
            let mut a =
                socket::Answer::of(&Response::ok(Reply::Detached(Detached { detached: true })));
            a.written = Some(tx);
            if answer.send(a).is_ok() {
                let _ = tokio::time::timeout(socket::WRITE_TIMEOUT, written).await;
            }
            return true;
        }
        let resp = match self.handle(request) {
            Ok(v) => Response::ok(v),
            Err(e) => Response::error(format!("{e:#}")),
        };
        // The client may have gone: its change stands all the same.
        let _ = answer.send(socket::Answer::of(&resp));
        false
    }

    fn handle(&mut self, req: Request) -> Result<Reply> {
        Ok(match req {
            Request::Apply { ops } => Reply::Applied(self.apply(&ops)?),
            Request::Status => Reply::Status(self.status()?),
            Request::Whereis { service, key } => Reply::Whereis(self.whereis(service, &key)?),
            Request::Stats => Reply::Stats(self.stats()?),
            Request::Blocks => Reply::Blocks(self.blocks()?),
            Request::Reload => Reply::Applied(self.reload()?),
            Request::Peers => {
                Reply::Peers(self.syncer.as_ref().map_or_else(sync::none, |s| s.report()))
            }
            Request::Detach => unreachable!("handled by answer"),
        })
    }
}
