//! `balancer top [--interval DURATION] [--count N]`

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use balancer::control::{call, protocol::Stats, Request};
use balancer::model::parse_duration;

/// A live view: packets and bytes per second per service and backend, each
/// backend's state and last probe round trip, verdicts per second. Redraws
/// in place on a terminal; otherwise prints one block per interval.
#[derive(clap::Args)]
pub struct Args {
    /// Between two refreshes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Stop after this many refreshes (default: until interrupted).
    #[arg(long)]
    count: Option<u64>,
}

pub fn run(instance: &str, a: Args) -> Result<()> {
    let tty = std::io::stdout().is_terminal();
    let interval = a.interval.max(Duration::from_millis(100));
    let mut prev: Stats = call(instance, &Request::Stats)?;
    let mut at = Instant::now();
    let mut shown = 0u64;
    while a.count.is_none_or(|n| shown < n) {
        std::thread::sleep(interval);
        let now: Stats = call(instance, &Request::Stats)?;
        let secs = at.elapsed().as_secs_f64().max(1e-3);
        at = Instant::now();
        let text = render(instance, &prev, &now, secs);
        let mut out = std::io::stdout().lock();
        if tty {
            // Home and clear: the view stays in place.
            write!(out, "\x1b[H\x1b[2J{text}")?;
        } else {
            writeln!(out, "{text}")?;
        }
        out.flush()?;
        prev = now;
        shown += 1;
    }
    Ok(())
}

fn rate(now: u64, before: u64, secs: f64) -> f64 {
    now.saturating_sub(before) as f64 / secs
}

fn render(instance: &str, prev: &Stats, now: &Stats, secs: f64) -> String {
    let mut t = format!(
        "balancer top: instance {instance}, on {}, over the last {secs:.1}s\n",
        now.status.interfaces.join(", ")
    );
    let before: HashMap<(SocketAddr, SocketAddr), (u64, u64)> = prev
        .status
        .services
        .iter()
        .flat_map(|s| {
            s.backends
                .iter()
                .map(|b| ((s.vip, b.address), (b.packets, b.bytes)))
        })
        .collect();
    for s in &now.status.services {
        let p = prev.status.services.iter().find(|p| p.vip == s.vip);
        t += &format!(
            "\nservice {} ({}, {}): {:.0} pkt/s, {:.0} B/s\n",
            s.vip,
            s.algorithm.name(),
            s.mode.name(),
            rate(s.packets, p.map_or(s.packets, |p| p.packets), secs),
            rate(s.bytes, p.map_or(s.bytes, |p| p.bytes), secs),
        );
        t += &format!(
            "  {:<24} {:<9} {:<7} {:>9} {:>11} {:>8}\n",
            "backend", "state", "health", "pkt/s", "B/s", "rtt ms"
        );
        for b in &s.backends {
            let (pp, pb) = before
                .get(&(s.vip, b.address))
                .copied()
                .unwrap_or((b.packets, b.bytes));
            t += &format!(
                "  {:<24} {:<9} {:<7} {:>9.0} {:>11.0} {:>8}\n",
                b.address.to_string(),
                b.state.name(),
                b.health.name(),
                rate(b.packets, pp, secs),
                rate(b.bytes, pb, secs),
                b.rtt_last_ms.map_or("-".to_string(), |r| format!("{r:.2}")),
            );
        }
    }
    let mut moving: Vec<(&String, f64)> = now
        .reasons
        .iter()
        .map(|(k, v)| {
            (
                k,
                rate(*v, prev.reasons.get(k).copied().unwrap_or(*v), secs),
            )
        })
        .filter(|(_, r)| *r > 0.0)
        .collect();
    moving.sort_by(|a, b| b.1.total_cmp(&a.1));
    t += "\nverdicts per second\n";
    if moving.is_empty() {
        t += "  (none)\n";
    }
    for (k, r) in moving {
        t += &format!("  {k:<24} {r:>9.0}\n");
    }
    t
}
