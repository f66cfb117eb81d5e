//! `balancer backend add|remove|drain|disable|enable|set-weight|list`

use std::net::SocketAddr;

use anyhow::Result;
use balancer::{
    config::{AdminState, BackendConfig},
    control::Op,
    spec::parse_addr,
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
    super::apply(instance, vec![op], false)
}

fn list(instance: &str, service: Option<SocketAddr>, json: bool) -> Result<()> {
    let v = super::status(instance)?;
    let want = service.map(|s| s.to_string());
    let rows: Vec<serde_json::Value> = v["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| want.is_none() || s["vip"].as_str() == want.as_deref())
        .flat_map(|s| s["backends"].as_array().cloned().unwrap_or_default())
        .collect();
    if let (Some(w), true) = (&want, rows.is_empty()) {
        if !v["services"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["vip"].as_str() == Some(w))
        {
            anyhow::bail!("no service {w}");
        }
    }
    if json {
        println!("{}", serde_json::Value::from(rows));
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
    // serde_json's Display ignores widths: numbers are turned into strings first.
    let ms = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |m| format!("{m:.1}"));
    for b in rows {
        println!(
            "{:<24} {:<24} {:<9} {:>6} {:>8} {:>12} {:>14}  {:>20}",
            b["address"].as_str().unwrap_or_default(),
            b["service"].as_str().unwrap_or_default(),
            b["state"].as_str().unwrap_or_default(),
            b["weight"].to_string(),
            b["priority"].to_string(),
            b["packets"].to_string(),
            b["bytes"].to_string(),
            format!(
                "{}/{}/{}",
                ms(&b["rtt_last_ms"]),
                ms(&b["rtt_avg_ms"]),
                ms(&b["rtt_max_ms"])
            )
        );
        if let Some(l) = b["last_probe"].as_str() {
            if b["health"] != "up" {
                println!("    last probe: {l}");
            }
        }
    }
    Ok(())
}
