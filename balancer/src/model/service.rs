//! A service and its backends, as configured.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use balancer_common::maglev::DEFAULT_TABLE;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{AdminState, Algorithm, ConfigError, Limits, Mode, NoBackend};
use crate::health::HealthConfig;

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn default_table() -> u32 {
    DEFAULT_TABLE
}
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
fn is_one(w: &u32) -> bool {
    *w == 1
}
fn is_default_table(t: &u32) -> bool {
    *t == DEFAULT_TABLE
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: SocketAddr,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: u32,
    /// For `algorithm = "priority"`: only the usable backends with the highest
    /// priority take traffic (Kamailio: higher value, higher priority).
    #[serde(default, skip_serializing_if = "is_default")]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "is_default")]
    pub state: AdminState,
    /// Overrides of the service's and the global health-check settings.
    #[serde(default, skip_serializing_if = "HealthConfig::is_empty")]
    pub health: HealthConfig,
}

impl BackendConfig {
    pub fn new(address: SocketAddr) -> Self {
        BackendConfig {
            address,
            weight: 1,
            priority: 0,
            state: AdminState::Active,
            health: HealthConfig::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub vip: SocketAddr,
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default = "default_table", skip_serializing_if = "is_default_table")]
    pub table_size: u32,
    #[serde(default, skip_serializing_if = "is_default")]
    pub no_backend: NoBackend,
    /// Dialog affinity: every message of a dialog to the backend its first one
    /// reached, whatever changes in the table meanwhile.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub affinity: bool,
    /// Affinity entries idle longer than this are ignored (default 12h, like
    /// Kamailio's dialog timeout).
    #[serde(
        default,
        with = "super::duration::optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub affinity_idle: Option<Duration>,
    /// Only these sources may use the service (empty: everyone).
    #[serde(
        default,
        with = "super::policy::cidrs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allow: Vec<IpNet>,
    /// Drop requests whose User-Agent begins with one of `user_agents`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub drop_scanners: bool,
    /// Largest UDP payload accepted, bytes (absent: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u32>,
    /// Per-source rate limits.
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    #[serde(default, skip_serializing_if = "HealthConfig::is_empty")]
    pub health: HealthConfig,
    #[serde(default, rename = "backend", skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendConfig>,
}

impl ServiceConfig {
    pub fn new(vip: SocketAddr) -> Self {
        ServiceConfig {
            vip,
            algorithm: Algorithm::default(),
            mode: Mode::default(),
            table_size: DEFAULT_TABLE,
            no_backend: NoBackend::Drop,
            affinity: true,
            affinity_idle: None,
            allow: Vec::new(),
            drop_scanners: false,
            max_size: None,
            limits: Limits::default(),
            health: HealthConfig::default(),
            backends: Vec::new(),
        }
    }

    /// A service with these backends and every other setting at its default.
    pub fn with_backends(vip: SocketAddr, backends: Vec<BackendConfig>) -> Self {
        ServiceConfig {
            backends,
            ..ServiceConfig::new(vip)
        }
    }

    pub fn backend_mut(&mut self, addr: SocketAddr) -> Result<&mut BackendConfig, ConfigError> {
        let vip = self.vip;
        self.backends
            .iter_mut()
            .find(|b| b.address == addr)
            .ok_or(ConfigError::NoBackend(addr, vip))
    }

    /// The backends that take new dialogs, in configuration order: active, not
    /// down by health checks, weighted, and for `priority` only the highest
    /// priority among those (so a lower one takes over when they all fail).
    pub fn members(&self, down: &HashSet<SocketAddr>) -> Vec<&BackendConfig> {
        let usable: Vec<&BackendConfig> = self
            .backends
            .iter()
            .filter(|b| b.state == AdminState::Active && b.weight > 0 && !down.contains(&b.address))
            .collect();
        if self.algorithm != Algorithm::Priority {
            return usable;
        }
        let top = usable.iter().map(|b| b.priority).max();
        usable
            .into_iter()
            .filter(|b| Some(b.priority) == top)
            .collect()
    }
}

impl FromStr for BackendConfig {
    type Err = ConfigError;
    /// `IP:PORT[,weight=N]`, as the command line takes a backend.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let mut parts = s.split(',');
        let mut b = BackendConfig::new(parse_addr(parts.next().unwrap_or_default())?);
        for opt in parts {
            match opt.split_once('=') {
                Some(("weight", w)) => {
                    b.weight = w
                        .parse::<u16>()
                        .map_err(|_| ConfigError::WeightText(opt.into()))?
                        .into()
                }
                _ => return Err(ConfigError::BackendOption(opt.into())),
            }
        }
        Ok(b)
    }
}

/// `IP:PORT`, IPv6 as `[ADDR]:PORT`.
pub fn parse_addr(s: &str) -> Result<SocketAddr, ConfigError> {
    SocketAddr::from_str(s.trim()).map_err(|_| ConfigError::Addr(s.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_forms() {
        let b: BackendConfig = "10.0.2.11:5060,weight=3".parse().unwrap();
        assert_eq!(b.weight, 3);
        assert_eq!(b.address, "10.0.2.11:5060".parse().unwrap());
        let b: BackendConfig = "[fd00::11]:5060".parse().unwrap();
        assert_eq!(b.weight, 1);
        assert_eq!(b.address, "[fd00::11]:5060".parse().unwrap());
        assert_eq!(
            "10.0.2.11".parse::<BackendConfig>(),
            Err(ConfigError::Addr("10.0.2.11".into()))
        );
        assert_eq!(
            "10.0.2.11:5060,w=1".parse::<BackendConfig>(),
            Err(ConfigError::BackendOption("w=1".into()))
        );
        assert_eq!(
            "10.0.2.11:5060,weight=-1".parse::<BackendConfig>(),
            Err(ConfigError::WeightText("weight=-1".into()))
        );
        assert_eq!(
            "10.0.2.11:5060,weight=65536".parse::<BackendConfig>(),
            Err(ConfigError::WeightText("weight=65536".into()))
        );
    }
}
