//! `[sync]`: the balancers behind the same ECMP route that this one tells
//! about its dialogs' affinity entries (see `crate::sync`). Absent: no
//! socket is opened and nothing is sent.
//!
//! ```toml
//! [sync]
//! listen = "10.0.1.1:5099"
//! peers = ["10.0.1.2:5099", "10.0.1.3:5099"]
//! key_file = "/etc/balancer/sync.key"   # or key = "hex or base64"
//!
//! [sync.limits]                         # per peer; these are the defaults
//! datagrams = 2000
//! entries = 40000
//! max_skew = "30s"
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use balancer_common::limits::MAX_RATE;
use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::sync::auth::Key;

/// Datagrams a second taken from one peer unless configured: a dialog start
/// rate of tens of thousands a second, entries batched by up to 27.
pub const DATAGRAMS: u32 = 2_000;
/// Entries a second written for one peer unless configured.
pub const ENTRIES: u32 = 40_000;
/// How far a peer's clock may be from this one's unless configured.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// This balancer's sync address: datagrams are received on it and sent
    /// from it, so a peer lists exactly this address.
    pub listen: SocketAddr,
    /// The other balancers' `listen` addresses. Datagrams from anywhere
    /// else are dropped unread.
    pub peers: Vec<SocketAddr>,
    /// The shared key, hex or base64 (16 to 64 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyText>,
    /// A file holding the key (mode 0600): keeps it out of a configuration
    /// that is shown, copied or versioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "SyncLimits::is_empty")]
    pub limits: SyncLimits,
}

/// The key as written in the configuration. Its `Debug` hides it: a
/// configuration printed for debugging must not hand out the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyText(pub String);

impl std::fmt::Debug for KeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyText(..)")
    }
}

/// `[sync.limits]`, per peer. Absent fields take the defaults; a rate of 0
/// turns that limit off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datagrams: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datagrams_burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries_burst: Option<u32>,
    #[serde(
        default,
        with = "super::duration::optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_skew: Option<Duration>,
}

/// The limits with the defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EffectiveSync {
    pub datagrams: u32,
    pub datagrams_burst: u32,
    pub entries: u32,
    pub entries_burst: u32,
    pub max_skew: Duration,
}

impl SyncLimits {
    pub fn is_empty(&self) -> bool {
        *self == SyncLimits::default()
    }

    pub fn effective(&self) -> EffectiveSync {
        let datagrams = self.datagrams.unwrap_or(DATAGRAMS);
        let entries = self.entries.unwrap_or(ENTRIES);
        EffectiveSync {
            datagrams,
            datagrams_burst: self.datagrams_burst.unwrap_or(datagrams),
            entries,
            entries_burst: self.entries_burst.unwrap_or(entries),
            max_skew: self.max_skew.unwrap_or(MAX_SKEW),
        }
    }
}

impl SyncConfig {
    /// The key, from the configuration or its file.
    pub fn load_key(&self) -> Result<Key, ConfigError> {
        match (&self.key, &self.key_file) {
            (Some(k), None) => {
                Key::parse(&k.0).map_err(|e| ConfigError::Sync(format!("`key` {e}")))
            }
            (None, Some(f)) => {
                Key::read(f).map_err(|e| ConfigError::Sync(format!("`key_file` {e}")))
            }
            _ => Err(ConfigError::Sync(
                "needs one of `key` and `key_file`".into(),
            )),
        }
    }

    /// What serde cannot check. The key file is not read here: validation
    /// runs on every CLI change, the file is read when sync starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError::Sync(m));
        let l = self.listen;
        if l.ip().is_unspecified() || l.port() == 0 {
            // Peers accept datagrams by their source address: an address
            // picked by the route would not be the one they list.
            return err(format!("`listen = \"{l}\"` needs a given address and port"));
        }
        if self.peers.is_empty() {
            return err("`peers` is empty: list the other balancers' listen addresses".into());
        }
        let mut seen = HashSet::new();
        for p in &self.peers {
            if *p == l {
                return err(format!("`{p}` in peers is this balancer's listen address"));
            }
            if p.is_ipv4() != l.is_ipv4() {
                return err(format!(
                    "`{p}` in peers is {}, listen is {}",
                    super::family(p),
                    super::family(&l)
                ));
            }
            if p.ip().is_unspecified() || p.port() == 0 {
                return err(format!("`{p}` in peers needs a given address and port"));
            }
            if !seen.insert(*p) {
                return err(format!("`{p}` is listed twice in peers"));
            }
        }
        match (&self.key, &self.key_file) {
            (Some(_), None) => {
                self.load_key()?;
            }
            (None, Some(_)) => {}
            (Some(_), Some(_)) => return err("`key` and `key_file`: give only one".into()),
            (None, None) => return err("needs one of `key` and `key_file`".into()),
        }
        let e = self.limits.effective();
        for (name, rate, burst) in [
            ("datagrams", e.datagrams, e.datagrams_burst),
            ("entries", e.entries, e.entries_burst),
        ] {
            if rate > MAX_RATE || burst > MAX_RATE {
                return err(format!("`{name}` and its burst are at most {MAX_RATE}"));
            }
            if rate > 0 && burst == 0 {
                return err(format!(
                    "`{name}_burst = 0` with `{name} = {rate}` admits nothing (0 for {name} turns the limit off)"
                ));
            }
        }
        if e.entries > 0 && e.entries_burst < crate::sync::wire::MAX_ENTRIES as u32 {
            return err(format!(
                "`entries_burst = {}` is below a full datagram's {} entries",
                e.entries_burst,
                crate::sync::wire::MAX_ENTRIES
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&e.max_skew) {
            return err(format!(
                "`max_skew = \"{}\"` must be from 1s to 1h",
                super::fmt_duration(e.max_skew)
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn good() -> String {
        format!(
            r#"
interfaces = ["eth0"]

[sync]
listen = "10.0.1.1:5099"
peers = ["10.0.1.2:5099", "10.0.1.3:5099"]
key = "{KEY}"

[sync.limits]
datagrams = 500
max_skew = "10s"
"#
        )
    }

    #[test]
    fn parses_defaults_and_round_trips() {
        let c = Config::parse(&good()).unwrap();
        let s = c.sync.as_ref().unwrap();
        assert_eq!(s.peers.len(), 2);
        let e = s.limits.effective();
        assert_eq!(
            (e.datagrams, e.datagrams_burst, e.entries, e.entries_burst),
            (500, 500, super::ENTRIES, super::ENTRIES)
        );
        assert_eq!(e.max_skew.as_secs(), 10);
        assert!(s.load_key().is_ok());
        assert!(!format!("{c:?}").contains("0a0b"), "the key in Debug");
        let text = c.to_toml();
        assert_eq!(Config::parse(&text).unwrap(), c);
        assert!(!text.contains("entries_burst"), "{text}");
        // Absent: disabled, and not written back.
        let none = Config::parse("interfaces = [\"eth0\"]\n").unwrap();
        assert!(none.sync.is_none());
        assert!(!none.to_toml().contains("sync"));
    }

    #[test]
    fn errors_name_the_field() {
        let err = |from: &str, to: &str| {
            let text = good().replace(from, to);
            assert_ne!(text, good(), "{from}");
            Config::parse(&text).unwrap_err().to_string()
        };
        let e = err("10.0.1.1:5099", "0.0.0.0:5099");
        assert!(e.contains("line 5") && e.contains("listen"), "{e}");
        let e = err("\"10.0.1.3:5099\"", "\"10.0.1.1:5099\"");
        assert!(e.contains("listen address"), "{e}");
        let e = err("\"10.0.1.3:5099\"", "\"10.0.1.2:5099\"");
        assert!(e.contains("twice"), "{e}");
        let e = err("\"10.0.1.3:5099\"", "\"[2001:db8::3]:5099\"");
        assert!(e.contains("line 6") && e.contains("IPv6"), "{e}");
        let e = err("\"10.0.1.2:5099\", \"10.0.1.3:5099\"", "");
        assert!(e.contains("peers") && e.contains("empty"), "{e}");
        let e = err(KEY, "00ff");
        assert!(e.contains("`key`") && e.contains("2 bytes"), "{e}");
        let e = err(&format!("key = \"{KEY}\""), "");
        assert!(e.contains("key_file"), "{e}");
        let e = err(
            &format!("key = \"{KEY}\""),
            &format!("key = \"{KEY}\"\nkey_file = \"/k\""),
        );
        assert!(e.contains("only one"), "{e}");
        let e = err("max_skew = \"10s\"", "max_skew = \"2h\"");
        assert!(e.contains("line 11") && e.contains("max_skew"), "{e}");
        let e = err("datagrams = 500", "datagrams = 500\ndatagrams_burst = 0");
        assert!(e.contains("admits nothing"), "{e}");
        let e = err("datagrams = 500", "entries_burst = 5");
        assert!(e.contains("line 10") && e.contains("27"), "{e}");
        let e = err("datagrams = 500", "datagram = 500");
        assert!(e.contains("datagram"), "{e}");
    }
}
