//! `balancer attach IFACE...` and `balancer run --config FILE`: start the daemon.

use std::path::PathBuf;

use anyhow::Result;
use balancer::{
    daemon::{self, parse_xdp_mode, Options},
    model::{parse_addr, Algorithm, BackendConfig, Config, MetricsConfig, Mode, ServiceConfig},
};
use balancer_common::maglev::DEFAULT_TABLE;

/// Start the daemon on client-facing interfaces; optionally with one service.
///
/// The configuration is FILE (default /var/lib/balancer/INSTANCE.toml): read if it
/// exists, updated with these arguments, and written back after every change.
#[derive(clap::Args)]
pub struct AttachArgs {
    /// Client-facing interfaces (where SIP traffic to the VIPs arrives).
    #[arg(required = true)]
    ifaces: Vec<String>,
    /// A service to serve: replaces one with the same VIP in the file, whose
    /// access policy (allow, drop_scanners, max_size, limits) it keeps.
    #[arg(long, value_parser = parse_addr)]
    vip: Option<std::net::SocketAddr>,
    /// The service's backends, IP:PORT[,weight=N]; repeat the flag or list several.
    #[arg(long = "backend", num_args = 1.., requires = "vip")]
    backends: Vec<BackendConfig>,
    /// dnat (rewrite destination, reverse-NAT replies) or dsr (rewrite MAC only).
    #[arg(long, default_value = "dnat")]
    mode: Mode,
    /// call-id, from-uri, to-uri, request-uri, source, round-robin, random, priority, weighted.
    #[arg(long, default_value = "call-id")]
    algorithm: Algorithm,
    /// Maglev table size, a prime up to 65537.
    #[arg(long, default_value_t = DEFAULT_TABLE)]
    table_size: u32,
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

/// Start the daemon from a configuration file (what the systemd unit runs).
#[derive(clap::Args)]
pub struct RunArgs {
    /// The configuration; every change made through the CLI is written back to it.
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
struct Common {
    /// Run in the network namespace /run/netns/NAME (entered before anything
    /// else; bpffs and /run stay the host's, so --persist works, which it does
    /// not under `ip netns exec`).
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// Leave programs, links and maps pinned when the daemon exits or crashes, so
    /// traffic keeps flowing and the next start adopts them (hitless restart).
    #[arg(long)]
    persist: bool,
    /// XDP attach mode: auto (native where the driver has it), native, generic.
    #[arg(long, default_value = "auto")]
    xdp_mode: String,
    /// Where the kernel verifier's whole log goes if it refuses the program
    /// (for a bug report); default /run/balancer/INSTANCE.verifier.log.
    #[arg(long, value_name = "FILE")]
    verifier_log: Option<PathBuf>,
    /// Serve Prometheus' /metrics on IP:PORT (sets `[metrics] listen`).
    #[arg(long, value_name = "IP:PORT", value_parser = parse_addr)]
    metrics: Option<std::net::SocketAddr>,
}

impl Common {
    fn apply(&self, c: &mut Config) {
        if let Some(listen) = self.metrics {
            c.metrics = Some(MetricsConfig { listen });
        }
    }
}

pub fn attach(instance: &str, a: AttachArgs) -> Result<()> {
    if let Some(ns) = &a.common.netns {
        daemon::enter_netns(ns)?;
    }
    balancer::control::check_instance(instance)?;
    let path = a
        .config
        .unwrap_or_else(|| PathBuf::from(format!("/var/lib/balancer/{instance}.toml")));
    let mut config = if path.exists() {
        Config::load(&path)?
    } else {
        Config::default()
    };
    config.interfaces = a.ifaces;
    if let Some(vip) = a.vip {
        let mut s = ServiceConfig::with_backends(vip, a.backends);
        s.mode = a.mode;
        s.algorithm = a.algorithm;
        s.table_size = a.table_size;
        // Who may use the service is not said on this command line: keep
        // what the file says rather than silently lifting it.
        if let Some(old) = config.services.iter().find(|x| x.vip == vip) {
            s.allow = old.allow.clone();
            s.drop_scanners = old.drop_scanners;
            s.max_size = old.max_size;
            s.limits = old.limits.clone();
        }
        config.services.retain(|x| x.vip != vip);
        config.services.push(s);
    }
    a.common.apply(&mut config);
    config.validate()?;
    daemon::run(Options {
        instance: instance.into(),
        config_path: path,
        config,
        persist: a.common.persist,
        xdp_mode: parse_xdp_mode(&a.common.xdp_mode)?,
        verifier_log: a.common.verifier_log,
    })
}

pub fn run(instance: &str, a: RunArgs) -> Result<()> {
    if let Some(ns) = &a.common.netns {
        daemon::enter_netns(ns)?;
    }
    let mut config = Config::load(&a.config)?;
    a.common.apply(&mut config);
    daemon::run(Options {
        instance: instance.into(),
        config_path: a.config,
        config,
        persist: a.common.persist,
        xdp_mode: parse_xdp_mode(&a.common.xdp_mode)?,
        verifier_log: a.common.verifier_log,
    })
}
