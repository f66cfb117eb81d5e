//! The closed sets an operator picks from: forwarding mode, algorithm, a
//! backend's administrative state, what to do without a backend.

use std::str::FromStr;

use balancer_common::maps::{MODE_DNAT, MODE_DSR};
use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Destination address and port become the backend's; replies are reverse-NATed.
    #[default]
    Dnat,
    /// Only the destination MAC changes; backends hold the VIP and answer directly.
    Dsr,
}

impl Mode {
    /// What the kernel does (`Service::mode`).
    pub fn raw(self) -> u32 {
        match self {
            Mode::Dnat => MODE_DNAT,
            Mode::Dsr => MODE_DSR,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Dnat => "dnat",
            Mode::Dsr => "dsr",
        }
    }
}

/// How a service picks a backend, named as in Kamailio's dispatcher where there is
/// an equivalent. Every one goes through the service's weighted Maglev table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Hash of the Call-ID (dispatcher algorithm 0): every message of a dialog
    /// goes to the same backend.
    #[default]
    CallId,
    /// Hash of the From URI (1): one caller, one backend.
    FromUri,
    /// Hash of the To URI (2).
    ToUri,
    /// Hash of the Request-URI user (3): one called number, one backend.
    RequestUri,
    /// Hash of the source address (close to 4, which hashes Contact).
    Source,
    /// Per datagram, in turn (4 is per request in Kamailio): splits dialogs
    /// until dialog affinity exists.
    RoundRobin,
    /// A random backend per dialog: the Call-ID is random, so its hash is a
    /// uniform, stateless draw that every message of the dialog repeats (6).
    Random,
    /// Only the highest-priority usable backends take traffic, by Call-ID (8).
    Priority,
    /// Weighted by Call-ID (9); weights apply to every algorithm anyway.
    Weighted,
}

impl Algorithm {
    pub const ALL: [Algorithm; 9] = [
        Algorithm::CallId,
        Algorithm::FromUri,
        Algorithm::ToUri,
        Algorithm::RequestUri,
        Algorithm::Source,
        Algorithm::RoundRobin,
        Algorithm::Random,
        Algorithm::Priority,
        Algorithm::Weighted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::CallId => "call-id",
            Algorithm::FromUri => "from-uri",
            Algorithm::ToUri => "to-uri",
            Algorithm::RequestUri => "request-uri",
            Algorithm::Source => "source",
            Algorithm::RoundRobin => "round-robin",
            Algorithm::Random => "random",
            Algorithm::Priority => "priority",
            Algorithm::Weighted => "weighted",
        }
    }

    /// Whether dialog affinity learns from backends' messages: the key the
    /// backend's message carries must be the one the other party's answers
    /// carry. True for Call-ID, From and To; not for the Request-URI (answers
    /// fall back to the Call-ID), the source address or round-robin.
    pub fn learns(self) -> bool {
        !matches!(
            self,
            Algorithm::RequestUri | Algorithm::Source | Algorithm::RoundRobin
        )
    }

    /// What the kernel hashes (`Service::algorithm`).
    pub fn raw(self) -> u32 {
        use balancer_common::maps::*;
        match self {
            Algorithm::CallId | Algorithm::Random | Algorithm::Priority | Algorithm::Weighted => {
                ALG_CALL_ID
            }
            Algorithm::FromUri => ALG_FROM_URI,
            Algorithm::ToUri => ALG_TO_URI,
            Algorithm::RequestUri => ALG_REQUEST_URI,
            Algorithm::Source => ALG_SOURCE,
            Algorithm::RoundRobin => ALG_ROUND_ROBIN,
        }
    }
}

impl FromStr for Algorithm {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| ConfigError::Algorithm(s.into()))
    }
}

impl FromStr for Mode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "dnat" => Ok(Mode::Dnat),
            "dsr" => Ok(Mode::Dsr),
            _ => Err(ConfigError::Mode(s.into())),
        }
    }
}

/// Administrative state of a backend, set by the operator and never by probes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new dialogs.
    #[default]
    Active,
    /// Takes no new dialogs; its existing traffic still reaches it.
    Draining,
    /// Admin down: out of the table.
    Disabled,
}

impl AdminState {
    pub fn name(self) -> &'static str {
        match self {
            AdminState::Active => "active",
            AdminState::Draining => "draining",
            AdminState::Disabled => "disabled",
        }
    }
}

/// What a service does with datagrams when no backend can take them (all down,
/// drained, disabled or weight 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoBackend {
    /// Drop them, counted `no_backend`: clients retransmit and fail over.
    #[default]
    Drop,
    /// Hand them to the balancer host's own stack, counted `no_backend_pass`
    /// (for a local fallback SIP server on the VIP).
    Pass,
}
