//! `[metrics]`: where Prometheus scrapes `/metrics` (`--metrics IP:PORT` on
//! `attach`/`run` sets it).
//!
//! ```toml
//! [metrics]
//! listen = "127.0.0.1:9464"
//! ```

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}
