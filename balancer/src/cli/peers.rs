//! `balancer peers [--json]`

use anyhow::Result;
use balancer::control::{call, protocol::Peers, Request};

/// The balancers this one shares affinity entries with (`[sync]`): when each
/// was last heard, entries each way, lag, refusals.
#[derive(clap::Args)]
pub struct Args {
    /// {"listen","peers":[{"address","last_heard_ms","lag_ms",...}],"totals":{...}}
    #[arg(long)]
    json: bool,
}

pub fn run(instance: &str, a: Args) -> Result<()> {
    let p: Peers = call(instance, &Request::Peers)?;
    if a.json {
        println!("{}", serde_json::to_string(&p)?);
        return Ok(());
    }
    let Some(listen) = p.listen else {
        println!("no [sync] section: this balancer shares no affinity entries");
        return Ok(());
    };
    println!("sync on {listen}");
    println!(
        "{:<22} {:>11} {:>8} {:>10} {:>10} {:>9}  state",
        "peer", "last heard", "lag", "sent", "received", "rejected"
    );
    for r in &p.peers {
        let heard = r.last_heard_ms.map_or("never".to_string(), |ms| {
            format!("{:.1}s ago", ms as f64 / 1000.0)
        });
        let lag = r.lag_ms.map_or("-".to_string(), |ms| format!("{ms}ms"));
        let state = match (r.last_heard_ms, r.catching_up) {
            (None, _) => "not heard",
            (Some(ms), _) if ms > 3_000 => "silent",
            (_, true) => "catching up",
            _ => "in sync",
        };
        println!(
            "{:<22} {:>11} {:>8} {:>10} {:>10} {:>9}  {state}",
            r.address.to_string(),
            heard,
            lag,
            r.sent_entries,
            r.received_entries,
            r.rejected.total()
        );
    }
    let t = &p.totals;
    println!(
        "entries: {} made here, {} sent, {} received, {} applied, {} kept (newer here), {} for unknown services, {} for unknown backends",
        t.events, t.sent_entries, t.received_entries, t.applied, t.kept_newer, t.unknown_service, t.unknown_backend
    );
    println!(
        "datagrams: {} sent, {} refused from peers, {} from non-peers; {} bulk pages answered; {} errors",
        t.sent_datagrams, t.rejected, t.not_a_peer, t.bulk_pages, t.errors
    );
    Ok(())
}
