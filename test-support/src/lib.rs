//! What the balancer's integration tests, benchmarks and lab example share: a
//! dev-dependency of `balancer`, which it depends on in turn (Cargo allows that
//! cycle for dev-dependencies; integration tests, benches and examples link the
//! one `balancer` library both see).
//!
//! - [`bed`]: the netns test bed (client, balancer host, switch, backends);
//! - [`ha`]: several balancers behind a router (BGP with BFD and ECMP, or VRRP);
//! - [`binomial`]: how far a hash's spread may stray from the weights;
//! - [`daemon`]: the balancer binary run in the bed, and its CLI;
//! - [`figures`]: figures a benchmark hands to `cargo xtask bench`'s goals summary;
//! - [`forge`]: forged frames with any source address, captures, and
//!   packet-filter counters, for the hostile-network tests;
//! - [`peers`], [`kamailio`], [`sipp`]: SIP peers, from minimal UDP ones to real
//!   servers and callers (the sipp scenarios are in `sipp/` beside this crate);
//! - [`netns`], [`packet`], [`sip`], [`xdp`]: the kernel fixtures' namespace,
//!   frames built and parsed byte by byte, SIP messages, and the loaded program
//!   run with BPF_PROG_TEST_RUN.

pub mod bed;
pub mod binomial;
pub mod daemon;
pub mod figures;
pub mod forge;
pub mod ha;
pub mod kamailio;
pub mod netns;
pub mod packet;
pub mod peers;
pub mod sip;
pub mod sipp;
pub mod xdp;

use std::time::{Duration, Instant};

/// Polls `f` every `every` until it holds, at most `limit`; whether it did.
pub fn until(limit: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(every);
    }
}
