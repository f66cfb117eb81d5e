//! `balancer reload`

use anyhow::Result;
use balancer::control::{call, protocol::Applied, Request};

/// Re-reads the configuration file and applies what differs, as SIGHUP
/// does (the backends' health is kept); prints each change.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(instance: &str, _: Args) -> Result<()> {
    let a: Applied = call(instance, &Request::Reload)?;
    if a.changes.is_empty() {
        println!("nothing changed");
    }
    for c in &a.changes {
        println!("{c}");
    }
    Ok(())
}
