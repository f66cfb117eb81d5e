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

/// The verdict counters by what happened to the datagram.
const GROUPS: &[(&str, &[&str])] = &[
    (
        "dispatched (by what)",
        &[
            "callid",
            "uri",
            "source",
            "round_robin",
            "fallback_no_callid",
            "fallback_keepalive",
            "fragment_follow",
            "reverse_nat",
        ],
    ),
    (
        "dialog affinity",
        &[
            "affinity_hit",
            "affinity_new",
            "affinity_replaced",
            "affinity_learned",
        ],
    ),
    ("sent", &["tx", "redirect"]),
    (
        "to the host's stack",
        &[
            "pass_not_ip",
            "pass_not_udp",
            "pass_no_service",
            "pass_local",
            "malformed",
            "fragment_miss",
            "no_backend_pass",
            "fib_no_neigh",
            "fib_fail",
            "ttl_exceeded",
        ],
    ),
    (
        "dropped",
        &[
            "no_backend",
            "spoofed",
            "blocked",
            "not_allowed",
            "rate_limited",
            "dialog_limited",
            "auto_blocked",
            "too_big",
            "scanner",
            "zero_checksum",
        ],
    ),
];

pub fn run(instance: &str, a: Args) -> Result<()> {
    let s: Stats = call(instance, &Request::Stats)?;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    println!("verdicts");
    for (group, names) in GROUPS {
        println!("  {group}");
        for name in *names {
            if let Some(n) = s.reasons.get(*name) {
                println!("    {name:<20} {n:>14}");
            }
        }
    }
    // A counter of a newer program than this table knows.
    let other: Vec<&str> = reason::NAMES
        .iter()
        .copied()
        .filter(|n| !GROUPS.iter().any(|(_, g)| g.contains(n)))
        .collect();
    if !other.is_empty() {
        println!("  other");
        for name in other {
            if let Some(n) = s.reasons.get(name) {
                println!("    {name:<20} {n:>14}");
            }
        }
    }
    if let Some(t) = &s.sync {
        println!("  affinity sync (balancer peers: per peer)");
        for (name, n) in [
            ("entries made", t.events),
            ("entries sent", t.sent_entries),
            ("entries received", t.received_entries),
            ("entries applied", t.applied),
            ("kept (newer here)", t.kept_newer),
            ("unknown service", t.unknown_service),
            ("unknown backend", t.unknown_backend),
            ("datagrams sent", t.sent_datagrams),
            ("refused (peers)", t.rejected),
            ("refused (others)", t.not_a_peer),
            ("bulk pages sent", t.bulk_pages),
            ("errors", t.errors),
        ] {
            println!("    {name:<20} {n:>14}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_in_one_group() {
        for name in reason::NAMES {
            let n = GROUPS.iter().filter(|(_, g)| g.contains(&name)).count();
            assert_eq!(n, 1, "{name} is in {n} groups");
        }
        let listed: usize = GROUPS.iter().map(|(_, g)| g.len()).sum();
        assert_eq!(listed, reason::NAMES.len());
    }
}
