//! `balancer stats [--json]`

use anyhow::Result;
use balancer::control::{call, protocol::Stats, Request};
use balancer_common::maps::reason;

/// Counters: per verdict/reason, per service, per backend.
#[derive(clap::Args)]
pub struct Args {
    /// {"reasons":{NAME:N},"services":[{"vip",...,"backends":[...]}]}
    #[arg(long)]
    json: bool,
}

pub fn run(instance: &str, a: Args) -> Result<()> {
    let s: Stats = call(instance, &Request::Stats)?;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    println!("verdicts");
    // In the kernel's order, which groups them by what happened.
    for name in reason::NAMES {
        if let Some(n) = s.reasons.get(name) {
            println!("  {name:<20} {n:>14}");
        }
    }
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |m| format!("{m:.3}"));
    for svc in &s.status.services {
        println!(
            "service {} ({}, {}): {} packets, {} bytes",
            svc.vip,
            svc.algorithm.name(),
            svc.mode.name(),
            svc.packets,
            svc.bytes
        );
        for b in &svc.backends {
            println!(
                "  {:<28} {:<9} {:>12} packets {:>14} bytes  probe rtt avg {} ms, max {} ms, {} of {} probes failed",
                b.address.to_string(),
                b.state.name(),
                b.packets,
                b.bytes,
                ms(b.rtt_avg_ms),
                ms(b.rtt_max_ms),
                b.probe_failures,
                b.probes
            );
        }
    }
    Ok(())
}
