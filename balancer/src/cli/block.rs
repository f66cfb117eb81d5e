//! `balancer block add|list|remove`

use std::time::{Duration, SystemTime};

use anyhow::Result;
use balancer::{
    control::{call, protocol::Blocks, Request},
    model::{
        parse_cidr, parse_duration,
        policy::{whole_seconds, BlockEntry},
        Op,
    },
};
use ipnet::IpNet;

/// The block list: sources dropped before any service sees them.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Block a network or an address (or change the expiry and reason of its entry).
    Add {
        /// 203.0.113.0/24, 2001:db8::/48, or one address.
        #[arg(value_parser = parse_cidr_arg)]
        cidr: IpNet,
        /// How long (30s, 10m, 12h); without it, until removed.
        #[arg(long = "for", value_parser = parse_duration_arg)]
        duration: Option<Duration>,
        /// Why, kept in the configuration file.
        #[arg(long)]
        reason: Option<String>,
    },
    /// What is blocked: configured entries and sources blocked for going over
    /// a service's limits, with the time left.
    List {
        /// {"configured":[{"cidr","until","remaining_s","reason"}],"automatic":[{"service","source","remaining_s"}]}
        #[arg(long)]
        json: bool,
    },
    /// Remove an entry (exactly as listed).
    Remove {
        #[arg(value_parser = parse_cidr_arg)]
        cidr: IpNet,
    },
}

fn parse_cidr_arg(s: &str) -> Result<IpNet, String> {
    parse_cidr(s).map_err(|e| e.to_string())
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("`{s}`: a block lasts longer than nothing")),
        d => Ok(d),
    }
}

pub fn run(instance: &str, c: Command) -> Result<()> {
    match c {
        Command::Add {
            cidr,
            duration,
            reason,
        } => {
            // The file keeps whole seconds: round the end up, never short.
            let until =
                duration.map(|d| whole_seconds(SystemTime::now() + d + Duration::from_millis(999)));
            let entry = BlockEntry {
                cidr,
                until,
                reason,
            };
            super::apply(instance, vec![Op::BlockAdd { entry }])
        }
        Command::Remove { cidr } => super::apply(instance, vec![Op::BlockRemove { cidr }]),
        Command::List { json } => {
            let b: Blocks = call(instance, &Request::Blocks)?;
            if json {
                println!("{}", serde_json::to_string(&b)?);
                return Ok(());
            }
            println!(
                "{:<24} {:<22} {:>10}  reason",
                "blocked", "until", "remaining"
            );
            for e in &b.configured {
                println!(
                    "{:<24} {:<22} {:>10}  {}",
                    e.cidr,
                    e.until.as_deref().unwrap_or("-"),
                    e.remaining_s
                        .map_or("permanent".to_string(), |s| format!("{s}s")),
                    e.reason.as_deref().unwrap_or("")
                );
            }
            for a in &b.automatic {
                println!(
                    "{:<24} {:<22} {:>10}  over the limits of {}",
                    a.source,
                    "",
                    format!("{}s", a.remaining_s),
                    a.service
                );
            }
            Ok(())
        }
    }
}
