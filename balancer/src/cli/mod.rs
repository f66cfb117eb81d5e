pub mod attach;
pub mod backend;
pub mod block;
pub mod check;
pub mod detach;
pub mod docs;
pub mod import;
pub mod inspect;
pub mod peers;
pub mod reload;
pub mod service;
pub mod stats;
pub mod top;
pub mod whereis;

use anyhow::Result;
use balancer::control::protocol::{Applied, Status};
use balancer::control::{call, Request};
use balancer::model::Op;

/// Sends changes to the daemon and prints what it did.
pub fn apply(instance: &str, ops: Vec<Op>) -> Result<()> {
    let a: Applied = call(instance, &Request::Apply { ops })?;
    for c in &a.changes {
        println!("{c}");
    }
    Ok(())
}

pub fn status(instance: &str) -> Result<Status> {
    call(instance, &Request::Status)
}
