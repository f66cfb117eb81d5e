//! What an operator asks for: services and backends, parsed from the command line.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use balancer_common::maps::{Endpoint, AF_INET, AF_INET6, IPPROTO_UDP, MODE_DNAT, MODE_DSR};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("`{0}` is not IP:PORT (IPv6 as [ADDR]:PORT)")]
    Addr(String),
    #[error("`{0}`: unknown backend option (expected weight=N)")]
    Option(String),
    #[error("`{0}`: weight must be an integer from 0 to 65535")]
    Weight(String),
    #[error("backend {0} is listed twice")]
    Duplicate(SocketAddr),
    #[error("backend {backend} is {bfam}, the service {vip} is {vfam}")]
    Family {
        backend: SocketAddr,
        bfam: &'static str,
        vip: SocketAddr,
        vfam: &'static str,
    },
    #[error("`{0}` is not a mode (dnat or dsr)")]
    Mode(String),
    #[error("`{0}` is not an algorithm (call-id, from-uri, to-uri, request-uri, source, round-robin, random, priority, weighted)")]
    Algorithm(String),
    #[error("a service needs at least one backend")]
    NoBackends,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Destination address and port become the backend's; replies are reverse-NATed.
    #[default]
    Dnat,
    /// Only the destination MAC changes; backends hold the VIP and answer directly.
    Dsr,
}

impl Mode {
    pub fn raw(self) -> u32 {
        match self {
            Mode::Dnat => MODE_DNAT,
            Mode::Dsr => MODE_DSR,
        }
    }
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Dnat => "dnat",
            Mode::Dsr => "dsr",
        }
    }
}

/// How a service picks a backend, named as in Kamailio's dispatcher where there is
/// an equivalent. Every one goes through the service's weighted Maglev table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
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
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| SpecError::Algorithm(s.into()))
    }
}

impl FromStr for Mode {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "dnat" => Ok(Mode::Dnat),
            "dsr" => Ok(Mode::Dsr),
            _ => Err(SpecError::Mode(s.into())),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    pub weight: u32,
}

impl FromStr for BackendSpec {
    type Err = SpecError;
    /// `IP:PORT[,weight=N]`
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut parts = s.split(',');
        let addr = parse_addr(parts.next().unwrap_or_default())?;
        let mut weight = 1;
        for opt in parts {
            match opt.split_once('=') {
                Some(("weight", w)) => {
                    weight = w
                        .parse::<u16>()
                        .map_err(|_| SpecError::Weight(opt.into()))?
                        .into()
                }
                _ => return Err(SpecError::Option(opt.into())),
            }
        }
        Ok(BackendSpec { addr, weight })
    }
}

pub fn parse_addr(s: &str) -> Result<SocketAddr, SpecError> {
    SocketAddr::from_str(s.trim()).map_err(|_| SpecError::Addr(s.into()))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub vip: SocketAddr,
    pub mode: Mode,
    pub table_size: u32,
    pub backends: Vec<BackendSpec>,
}

impl ServiceSpec {
    /// Checks what the kernel cannot: families match, no duplicates.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.backends.is_empty() {
            return Err(SpecError::NoBackends);
        }
        let mut seen = std::collections::HashSet::new();
        for b in &self.backends {
            if !seen.insert(b.addr) {
                return Err(SpecError::Duplicate(b.addr));
            }
            if b.addr.is_ipv4() != self.vip.is_ipv4() {
                return Err(SpecError::Family {
                    backend: b.addr,
                    bfam: family_name(&b.addr),
                    vip: self.vip,
                    vfam: family_name(&self.vip),
                });
            }
        }
        Ok(())
    }
}

fn family_name(a: &SocketAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// The kernel's key for an address: IPv4 in the first four bytes, port in network order.
pub fn endpoint(a: SocketAddr) -> Endpoint {
    let mut addr = [0u8; 16];
    let family = match a.ip() {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            AF_INET
        }
        IpAddr::V6(v6) => {
            addr = v6.octets();
            AF_INET6
        }
    };
    Endpoint {
        addr,
        port: a.port().to_be(),
        family,
        proto: IPPROTO_UDP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_forms() {
        let b: BackendSpec = "10.0.2.11:5060,weight=3".parse().unwrap();
        assert_eq!(b.weight, 3);
        let b: BackendSpec = "[fd00::11]:5060".parse().unwrap();
        assert_eq!(b.weight, 1);
        assert!(matches!(
            "10.0.2.11".parse::<BackendSpec>(),
            Err(SpecError::Addr(_))
        ));
        assert!(matches!(
            "10.0.2.11:5060,w=1".parse::<BackendSpec>(),
            Err(SpecError::Option(_))
        ));
        assert!(matches!(
            "10.0.2.11:5060,weight=-1".parse::<BackendSpec>(),
            Err(SpecError::Weight(_))
        ));
    }

    #[test]
    fn validation() {
        let s = ServiceSpec {
            vip: "10.0.0.10:5060".parse().unwrap(),
            mode: Mode::Dnat,
            table_size: 65537,
            backends: vec!["[fd00::1]:5060".parse().unwrap()],
        };
        assert!(matches!(s.validate(), Err(SpecError::Family { .. })));
        let s = ServiceSpec {
            backends: vec![
                "10.0.2.1:5060".parse().unwrap(),
                "10.0.2.1:5060".parse().unwrap(),
            ],
            ..s
        };
        assert!(matches!(s.validate(), Err(SpecError::Duplicate(_))));
    }
}
