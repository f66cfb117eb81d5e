//! Health checks: parameters, the SIP probe messages, and the per-backend state
//! machine. The prober (`prober.rs`) sends and times; this module decides.
//!
//! Names and meaning follow Kamailio's dispatcher where it has an equivalent:
//!
//! | here          | Kamailio dispatcher            | default |
//! |---------------|--------------------------------|---------|
//! | `interval`    | `ds_ping_interval`             | 1 s     |
//! | `timeout`     | tm `fr_timer` for the ping     | 500 ms  |
//! | `fall`        | `ds_probing_threshold`         | 3       |
//! | `rise`        | `ds_inactive_threshold`        | 2       |
//! | `reply_codes` | `ds_ping_reply_codes`          | 200     |
//! | `from`        | `ds_ping_from`                 | `sip:balancer@<host address>` |
//! | `method`      | `ds_ping_method`               | OPTIONS |

pub(crate) mod config;
mod probe;
pub mod prober;
mod tracker;

pub use config::{CodeMatch, HealthConfig, Params};
pub use probe::{parse_response, Ids, Probe, Response};
pub use prober::{Event, Prober};
pub use tracker::{Health, Outcome, Rtt, Tracker, Transition};
