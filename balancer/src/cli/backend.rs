//! `balancer backend add|remove|drain|disable|enable|set-weight|list`

use std::net::SocketAddr;

use anyhow::Result;
use balancer::{
    control::protocol::BackendStatus,
    health::Health,
    model::{parse_addr, AdminState, BackendConfig, Op},
};

#[derive(clap::Args)]
pub struct Target {
    /// The service (may be left out when there is only one).
    #[arg(long, value_parser = parse_addr)]
    service: Option<SocketAddr>,
    /// The backend, IP:PORT.
    #[arg(value_parser = parse_addr)]
    address: SocketAddr,
}

/// Backends of a service.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Add a backend; it takes new dialogs at once.
    Add {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// For the `priority` algorithm: higher first (as in Kamailio).
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        priority: i32,
    },
    /// Remove a backend: its keys move to the others, nothing else moves.
    Remove {
        #[command(flatten)]
        target: Target,
    },
    /// No new dialogs; traffic of existing ones still reaches it.
    Drain {
        #[command(flatten)]
        target: Target,
    },
    /// Admin down: out of the table (health checks never bring it back).
    Disable {
        #[command(flatten)]
        target: Target,
    },
    /// Back in service after drain or disable.
    Enable {
        #[command(flatten)]
        target: Target,
    },
    /// Change the weight (0 takes it out of the table).
    SetWeight {
        #[command(flatten)]
        target: Target,
        weight: u32,
    },
    /// List backends with state, weight and traffic.
    List {
        #[arg(long, value_parser = parse_addr)]
        service: Option<SocketAddr>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(instance: &str, c: Command) -> Result<()> {
    let state = |t: Target, state| Op::BackendState {
        service: t.service,
        address: t.address,
        state,
    };
    let op = match c {
        Command::Add {
            target,
            weight,
            priority,
        } => Op::BackendAdd {
            service: target.service,
            backend: BackendConfig {
                weight,
                priority,
                ..BackendConfig::new(target.address)
            },
        },
        Command::Remove { target } => Op::BackendRemove {
            service: target.service,
            address: target.address,
        },
        Command::Drain { target } => state(target, AdminState::Draining),
        Command::Disable { target } => state(target, AdminState::Disabled),
        Command::Enable { target } => state(target, AdminState::Active),
        Command::SetWeight { target, weight } => Op::BackendWeight {
            service: target.service,
            address: target.address,
            weight,
        },
        Command::List { service, json } => return list(instance, service, json),
    };
    super::apply(instance, vec![op])
}

fn list(instance: &str, service: Option<SocketAddr>, json: bool) -> Result<()> {
    let status = super::status(instance)?;
    if let Some(vip) = service {
        if !status.services.iter().any(|s| s.vip == vip) {
            anyhow::bail!("no service {vip}");
        }
    }
    let rows: Vec<&BackendStatus> = status
        .services
        .iter()
        .filter(|s| service.is_none_or(|vip| s.vip == vip))
        .flat_map(|s| &s.backends)
        .collect();
    if json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<24} {:<9} {:>6} {:>8} {:>12} {:>14}  {:>20}",
        "backend",
        "service",
        "state",
        "weight",
        "priority",
        "packets",
        "bytes",
        "rtt ms last/avg/max"
    );
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |m| format!("{m:.1}"));
    for b in rows {
        println!(
            "{:<24} {:<24} {:<9} {:>6} {:>8} {:>12} {:>14}  {:>20}",
            b.address.to_string(),
            b.service.to_string(),
            b.state.name(),
            b.weight,
            b.priority,
            b.packets,
            b.bytes,
            format!(
                "{}/{}/{}",
                ms(b.rtt_last_ms),
                ms(b.rtt_avg_ms),
                ms(b.rtt_max_ms)
            )
        );
        if let (Some(l), false) = (&b.last_probe, b.health == Health::Up) {
            println!("    last probe: {l}");
        }
    }
    Ok(())
}
