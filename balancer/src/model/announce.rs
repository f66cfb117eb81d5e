//! `[announce]`: whether, and where, the daemon writes the kernel routes that
//! tell a routing daemon (BIRD, FRR) which VIPs this host should carry.
//!
//! ```toml
//! [announce]
//! enabled = true
//! table = 251      # routing table of the announcement routes
//! protocol = 252   # their route protocol number (`ip route` shows `proto 252`)
//! ```

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Default table of the announcement routes: one no rule points to, so the
/// main table's forwarding is untouched, and one that both BIRD and FRR
/// import (FRR refuses 252, Linux's `RT_TABLE_COMPAT`).
pub const ANNOUNCE_TABLE: u32 = 251;
/// Default route protocol number of the announcement routes: unassigned in
/// `/etc/iproute2/rt_protos` (zebra is 11, bird 12, bgp 186), so a routing
/// daemon can match on it.
pub const ANNOUNCE_PROTOCOL: u8 = 252;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_table")]
    pub table: u32,
    #[serde(default = "default_protocol")]
    pub protocol: u8,
}

fn default_table() -> u32 {
    ANNOUNCE_TABLE
}
fn default_protocol() -> u8 {
    ANNOUNCE_PROTOCOL
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        AnnounceConfig {
            enabled: false,
            table: ANNOUNCE_TABLE,
            protocol: ANNOUNCE_PROTOCOL,
        }
    }
}

impl AnnounceConfig {
    pub fn is_default(&self) -> bool {
        *self == AnnounceConfig::default()
    }

    /// Not the kernel's own tables (unspec 0, compat 252, default 253, main
    /// 254, local 255: FRR will not import 252), nor a protocol number the kernel or a routing daemon uses for its
    /// own routes (0 to 4: unspec, redirect, kernel, boot, static; zebra 11,
    /// bird 12, bgp 186 and the other FRR numbers 187 to 196).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if matches!(self.table, 0 | 252..=255) {
            return Err(ConfigError::AnnounceTable(self.table));
        }
        if matches!(self.protocol, 0..=4 | 11 | 12 | 186..=196) {
            return Err(ConfigError::AnnounceProtocol(self.protocol));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Config;

    #[test]
    fn absent_is_disabled_with_the_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.announce, AnnounceConfig::default());
        assert!(!c.announce.enabled);
        assert!(!c.to_toml().contains("announce"), "{}", c.to_toml());
    }

    #[test]
    fn a_section_is_read_checked_and_written_back() {
        let c = Config::parse("[announce]\nenabled = true\ntable = 100\n").unwrap();
        assert!(c.announce.enabled);
        assert_eq!(c.announce.table, 100);
        assert_eq!(c.announce.protocol, ANNOUNCE_PROTOCOL);
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
        for (text, want) in [
            ("table = 254", ConfigError::AnnounceTable(254)),
            ("table = 0", ConfigError::AnnounceTable(0)),
            ("table = 252", ConfigError::AnnounceTable(252)),
            ("protocol = 12", ConfigError::AnnounceProtocol(12)),
            ("protocol = 4", ConfigError::AnnounceProtocol(4)),
        ] {
            let e = Config::parse(&format!("[announce]\n{text}\n")).unwrap_err();
            assert_eq!(e, want, "{text}");
        }
        assert!(Config::parse("[announce]\nprotocl = 9\n").is_err());
    }
}
