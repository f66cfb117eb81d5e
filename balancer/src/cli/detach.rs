//! `balancer detach`

use anyhow::Result;
use balancer::{
    control::{self, call, protocol::Detached, Request},
    kernel::remove_pins,
};

/// Stop the daemon and remove its programs, links, pins and socket. Works also
/// when no daemon runs but a persisted data plane is still attached.
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
    remove_pins(&pins)?;
    let _ = std::fs::remove_file(control::socket_path(instance));
    println!("detached instance {instance}");
    Ok(())
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
