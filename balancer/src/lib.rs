//! User space of the SIP XDP balancer. `docs/ARCHITECTURE.md` walks through the
//! crates, a packet's path and a CLI change's path.
//!
//! - [`model`]: the configuration an operator writes and the edits the CLI sends;
//! - [`kernel`]: loading the XDP object, planning the maps' contents from a
//!   configuration and writing them;
//! - [`health`]: SIP OPTIONS probes and the per-backend state machine;
//! - [`control`]: the control socket's typed protocol and instance paths;
//! - [`daemon`]: the long-running process that ties them together;
//! - [`sync`]: affinity entries exchanged with the other balancers behind
//!   the same ECMP route (the wire format, its authentication and bounds);
//! - [`import`]: configurations from other balancers (Kamailio's dispatcher);
//! - [`select`], [`inspect`]: what the kernel decides, predicted in user space.

pub mod control;
pub mod daemon;
pub mod health;
pub mod import;
pub mod inspect;
pub mod kernel;
pub mod logging;
pub mod model;
pub mod route;
pub mod select;
pub mod sync;
