//! `balancer service add|remove|list`

use std::net::SocketAddr;

use anyhow::Result;
use balancer::{
    control::protocol::ServiceRow,
    model::{parse_addr, Algorithm, Mode, Op, ServiceConfig},
};
use balancer_common::maglev::DEFAULT_TABLE;

/// Services (VIPs).
#[derive(clap::Subcommand)]
pub enum Command {
    /// Add a service (no backends yet: add them with `backend add`).
    Add {
        #[arg(value_parser = parse_addr)]
        vip: SocketAddr,
        /// call-id, from-uri, to-uri, request-uri, source, round-robin, random, priority, weighted.
        #[arg(long, default_value = "call-id")]
        algorithm: Algorithm,
        /// dnat or dsr.
        #[arg(long, default_value = "dnat")]
        mode: Mode,
        /// Maglev table size, a prime up to 65537.
        #[arg(long, default_value_t = DEFAULT_TABLE)]
        table_size: u32,
    },
    /// Remove a service and its backends.
    Remove {
        #[arg(value_parser = parse_addr)]
        vip: SocketAddr,
    },
    /// List services.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(instance: &str, c: Command) -> Result<()> {
    match c {
        Command::Add {
            vip,
            algorithm,
            mode,
            table_size,
        } => {
            if algorithm == Algorithm::RoundRobin {
                eprintln!(
                    "warning: round-robin picks per datagram: messages of one dialog go to \
                     different backends (until dialog affinity exists); `random` is per dialog"
                );
            }
            let mut service = ServiceConfig::new(vip);
            service.algorithm = algorithm;
            service.mode = mode;
            service.table_size = table_size;
            super::apply(instance, vec![Op::ServiceAdd { service }])
        }
        Command::Remove { vip } => super::apply(instance, vec![Op::ServiceRemove { vip }]),
        Command::List { json } => {
            let status = super::status(instance)?;
            let rows: Vec<ServiceRow> = status.services.iter().map(ServiceRow::from).collect();
            if json {
                println!("{}", serde_json::to_string(&rows)?);
                return Ok(());
            }
            println!(
                "{:<28} {:<12} {:<5} {:>6} {:>8} {:>12} {:>14}",
                "vip", "algorithm", "mode", "table", "backends", "packets", "bytes"
            );
            for s in rows {
                println!(
                    "{:<28} {:<12} {:<5} {:>6} {:>8} {:>12} {:>14}",
                    s.vip.to_string(),
                    s.algorithm.name(),
                    s.mode.name(),
                    s.table_size,
                    s.backends,
                    s.packets,
                    s.bytes
                );
            }
            Ok(())
        }
    }
}
