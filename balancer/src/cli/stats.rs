//! `balancer stats [--json]`

use anyhow::Result;
use balancer::control::{call, Request};

/// Counters: per verdict/reason, per service, per backend.
#[derive(clap::Args)]
pub struct Args {
    /// {"reasons":{NAME:N},"services":[{"vip",...,"backends":[...]}]}
    #[arg(long)]
    json: bool,
}

pub fn run(instance: &str, a: Args) -> Result<()> {
    let v = call(instance, &Request::Stats)?;
    if a.json {
        println!("{v}");
        return Ok(());
    }
    println!("verdicts");
    for (name, n) in v["reasons"].as_object().into_iter().flatten() {
        println!("  {name:<20} {:>14}", n.to_string());
    }
    for s in v["services"].as_array().into_iter().flatten() {
        println!(
            "service {} ({}, {}): {} packets, {} bytes",
            s["vip"].as_str().unwrap_or_default(),
            s["algorithm"].as_str().unwrap_or_default(),
            s["mode"].as_str().unwrap_or_default(),
            s["packets"],
            s["bytes"]
        );
        for b in s["backends"].as_array().into_iter().flatten() {
            println!(
                "  {:<28} {:<9} {:>12} packets {:>14} bytes  probe rtt avg {} ms, max {} ms, {} of {} probes failed",
                b["address"].as_str().unwrap_or_default(),
                b["state"].as_str().unwrap_or_default(),
                b["packets"].to_string(),
                b["bytes"].to_string(),
                b["rtt_avg_ms"],
                b["rtt_max_ms"],
                b["probe_failures"],
                b["probes"]
            );
        }
    }
    Ok(())
}
