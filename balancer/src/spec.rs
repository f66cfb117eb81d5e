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
    #[error("a service needs at least one backend")]
    NoBackends,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
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
