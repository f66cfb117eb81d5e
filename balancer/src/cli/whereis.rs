//! `balancer whereis [--service VIP:PORT] [--json] KEY`

use std::net::SocketAddr;

use anyhow::Result;
use balancer::{
    control::{call, protocol::Whereis, Request},
    model::parse_addr,
};

/// The backend the kernel picks right now for a Call-ID (or the service's key:
/// From/To URI, Request-URI user, source IP), read from the live tables.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_parser = parse_addr)]
    service: Option<SocketAddr>,
    /// {"service","algorithm","key","hash","backend"}; backend is null when none.
    #[arg(long)]
    json: bool,
    key: String,
}

pub fn run(instance: &str, a: Args) -> Result<()> {
    let w: Whereis = call(
        instance,
        &Request::Whereis {
            service: a.service,
            key: a.key,
        },
    )?;
    if a.json {
        println!("{}", serde_json::to_string(&w)?);
    } else {
        match w.backend {
            Some(b) => println!("{b}"),
            None => println!("no backend (the service's table is empty)"),
        }
    }
    Ok(())
}
