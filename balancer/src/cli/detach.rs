//! `balancer detach`

use anyhow::{Context, Result};
use balancer::{
    control::{self, call, protocol::Detached, Request},
    kernel::remove_pins,
    route::announced,
};

/// Stop the daemon and remove its programs, links, pins and socket. Works also
/// when no daemon runs but a persisted data plane is still attached (its
/// `[announce]` routes are then withdrawn too).
#[derive(clap::Args)]
pub struct Args {}

pub fn run(instance: &str, _a: Args) -> Result<()> {
    control::check_instance(instance)?;
    let pins = control::pin_dir(instance);
    match call::<Detached>(instance, &Request::Detach) {
        // The daemon unpins and exits: its instance lock is free once it is gone.
        Ok(_) => wait_for_exit(instance),
        Err(e) if pins.exists() => eprintln!("{e:#}; removing the pinned data plane"),
        Err(e) => return Err(e),
    }
    // A daemon withdraws its routes itself; one killed under --persist left
    // them. Withdrawn first, as a daemon does: routers stop sending here
    // before the data plane goes.
    let withdrawn = announced::withdraw(instance);
    remove_pins(&pins)?;
    let _ = std::fs::remove_file(control::socket_path(instance));
    for v in withdrawn.as_ref().ok().into_iter().flatten().flatten() {
        println!("withdrew the announcement of {v}");
    }
    println!("detached instance {instance}");
    withdrawn
        .map(|_| ())
        .context("the data plane is detached, but its announcement routes stay (a routing daemon may still advertise this host)")
}

fn wait_for_exit(instance: &str) {
    use std::os::fd::AsRawFd;
    let path = std::path::Path::new(control::RUN_DIR).join(format!("{instance}.lock"));
    let Ok(f) = std::fs::File::open(&path) else {
        return;
    };
    for _ in 0..200 {
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
