//! `[hooks]`: commands the daemon runs on events, as keepalived's `notify`.
//!
//! ```toml
//! [hooks]
//! backend_state = "/etc/balancer/backend-changed"   # BACKEND OLD NEW
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    /// Run on every change of a backend's state as `COMMAND BACKEND OLD NEW`
    /// (`10.0.2.11:5060 active down`), with `BALANCER_INSTANCE` and
    /// `BALANCER_SERVICE` in its environment. States are those of `backend
    /// list`, plus `none` (before it was added) and `removed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_state: Option<PathBuf>,
}

impl HooksConfig {
    pub fn is_empty(&self) -> bool {
        *self == HooksConfig::default()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(p) = &self.backend_state {
            if !p.is_absolute() {
                return Err(ConfigError::Hooks(format!(
                    "`backend_state = \"{}\"` must be an absolute path",
                    p.display()
                )));
            }
        }
        Ok(())
    }
}
