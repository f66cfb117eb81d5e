pub mod attach;
pub mod backend;
pub mod detach;
pub mod import;
pub mod inspect;
pub mod service;
pub mod stats;
pub mod whereis;

use anyhow::Result;
use balancer::control::{call, Op, Request};
use serde_json::Value;

/// Sends changes to the daemon and prints what it did.
pub fn apply(instance: &str, ops: Vec<Op>, json: bool) -> Result<()> {
    let v = call(instance, &Request::Apply { ops })?;
    if json {
        println!("{v}");
    } else {
        for c in v["changes"].as_array().into_iter().flatten() {
            println!("{}", c.as_str().unwrap_or_default());
        }
    }
    Ok(())
}

pub fn status(instance: &str) -> Result<Value> {
    call(instance, &Request::Status)
}
