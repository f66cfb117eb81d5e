//! The control socket: what the CLI asks the daemon, and the answers.
//!
//! One request per connection, one JSON line each way. The socket lives in
//! `/run/balancer/INSTANCE.sock` with mode 0600 in a 0700 directory: only root
//! talks to the daemon. An instance's other files (lock, verifier log, pins)
//! are named here too.

mod client;
pub mod protocol;

use std::path::PathBuf;

use anyhow::{bail, Result};

pub use client::call;
pub use protocol::{Reply, Request, Response};

/// Where instances keep their socket and lock.
pub const RUN_DIR: &str = "/run/balancer";
/// Where instances pin their programs, links and maps.
pub const PIN_ROOT: &str = "/sys/fs/bpf/balancer";

pub fn check_instance(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("instance name `{name}`: use letters, digits, '-' and '_'");
    }
    Ok(())
}

pub fn socket_path(instance: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{instance}.sock"))
}

/// Where the verifier's log goes when the kernel refuses the program.
pub fn verifier_log_path(instance: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{instance}.verifier.log"))
}

pub fn pin_dir(instance: &str) -> PathBuf {
    PathBuf::from(PIN_ROOT).join(instance)
}
