//! Changes to a configuration, as the CLI sends them: applied to a copy, all or
//! nothing.

use std::net::SocketAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::policy::{self, fmt_time};
use super::{AdminState, BackendConfig, BlockEntry, Config, ConfigError, ServiceConfig};

/// One change to the configuration. A request carries a list of them, applied
/// all or nothing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    ServiceAdd {
        service: ServiceConfig,
    },
    ServiceRemove {
        vip: SocketAddr,
    },
    BackendAdd {
        service: Option<SocketAddr>,
        backend: BackendConfig,
    },
    BackendRemove {
        service: Option<SocketAddr>,
        address: SocketAddr,
    },
    BackendState {
        service: Option<SocketAddr>,
        address: SocketAddr,
        state: AdminState,
    },
    BackendWeight {
        service: Option<SocketAddr>,
        address: SocketAddr,
        weight: u32,
    },
    /// Blocks a CIDR, or changes the expiry and reason of its entry.
    BlockAdd {
        entry: BlockEntry,
    },
    BlockRemove {
        #[serde(with = "policy::cidr")]
        cidr: IpNet,
    },
}

impl Op {
    /// Applies the change to `c`, saying what it did.
    pub fn apply(&self, c: &mut Config) -> Result<String, ConfigError> {
        Ok(match self {
            Op::ServiceAdd { service } => {
                if c.service(service.vip).is_ok() {
                    return Err(ConfigError::ServiceExists(service.vip));
                }
                c.services.push(service.clone());
                format!(
                    "service {} added ({}, {})",
                    service.vip,
                    service.algorithm.name(),
                    service.mode.name()
                )
            }
            Op::ServiceRemove { vip } => {
                c.service(*vip)?;
                c.services.retain(|s| s.vip != *vip);
                format!("service {vip} removed")
            }
            Op::BackendAdd { service, backend } => {
                let vip = c.resolve(*service)?;
                let s = c.service_mut(vip)?;
                if s.backends.iter().any(|b| b.address == backend.address) {
                    return Err(ConfigError::BackendExists(backend.address, vip));
                }
                s.backends.push(backend.clone());
                format!(
                    "backend {} added to {vip} (weight {})",
                    backend.address, backend.weight
                )
            }
            Op::BackendRemove { service, address } => {
                let vip = c.resolve(*service)?;
                let s = c.service_mut(vip)?;
                s.backend_mut(*address)?;
                s.backends.retain(|b| b.address != *address);
                format!("backend {address} removed from {vip}")
            }
            Op::BackendState {
                service,
                address,
                state,
            } => {
                let vip = c.resolve(*service)?;
                c.service_mut(vip)?.backend_mut(*address)?.state = *state;
                format!("backend {address} of {vip} is {}", state.name())
            }
            Op::BackendWeight {
                service,
                address,
                weight,
            } => {
                let vip = c.resolve(*service)?;
                c.service_mut(vip)?.backend_mut(*address)?.weight = *weight;
                format!("backend {address} of {vip} has weight {weight}")
            }
            Op::BlockAdd { entry } => {
                let until = match entry.until {
                    Some(t) => format!("until {}", fmt_time(t)),
                    None => "until removed".to_string(),
                };
                match c.blocks.iter_mut().find(|b| b.cidr == entry.cidr) {
                    Some(b) => {
                        *b = entry.clone();
                        format!("{} stays blocked, now {until}", entry.cidr)
                    }
                    None => {
                        c.blocks.push(entry.clone());
                        format!("{} blocked {until}", entry.cidr)
                    }
                }
            }
            Op::BlockRemove { cidr } => {
                if !c.blocks.iter().any(|b| b.cidr == *cidr) {
                    return Err(ConfigError::NotBlocked(*cidr));
                }
                c.blocks.retain(|b| b.cidr != *cidr);
                format!("{cidr} unblocked")
            }
        })
    }
}

/// Applies `ops` to a copy of `c` and checks the result whole: the new
/// configuration and what each change did, or the first error and nothing.
pub fn apply(c: &Config, ops: &[Op]) -> Result<(Config, Vec<String>), ConfigError> {
    let mut next = c.clone();
    let mut said = Vec::new();
    for op in ops {
        said.push(op.apply(&mut next)?);
    }
    next.validate()?;
    Ok((next, said))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        Config::parse(
            "interfaces = [\"eth0\"]\n[[service]]\nvip = \"10.0.0.10:5060\"\n\
             [[service.backend]]\naddress = \"10.0.2.11:5060\"\n",
        )
        .unwrap()
    }

    #[test]
    fn a_failing_op_leaves_nothing_applied() {
        let c = base();
        let ops = vec![
            Op::BackendAdd {
                service: None,
                backend: BackendConfig::new("10.0.2.12:5060".parse().unwrap()),
            },
            Op::BackendAdd {
                service: None,
                backend: BackendConfig::new("[fd00::1]:5060".parse().unwrap()),
            },
        ];
        let e = apply(&c, &ops).unwrap_err();
        assert!(matches!(e, ConfigError::Family { .. }), "{e}");
        assert_eq!(c, base());
        let (next, said) = apply(&c, &ops[..1]).unwrap();
        assert_eq!(next.services[0].backends.len(), 2);
        assert!(said[0].contains("10.0.2.12:5060"));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let c = base();
        let dup = Op::BackendAdd {
            service: None,
            backend: BackendConfig::new("10.0.2.11:5060".parse().unwrap()),
        };
        assert!(apply(&c, &[dup])
            .unwrap_err()
            .to_string()
            .contains("10.0.2.11:5060"));
        let unknown = Op::BackendRemove {
            service: Some("10.0.0.99:5060".parse().unwrap()),
            address: "10.0.2.11:5060".parse().unwrap(),
        };
        assert_eq!(
            apply(&c, &[unknown]).unwrap_err().to_string(),
            "no service 10.0.0.99:5060"
        );
    }

    #[test]
    fn blocks_are_added_updated_and_removed() {
        let c = base();
        let net = policy::parse_cidr("203.0.113.0/24").unwrap();
        let add = |until: Option<&str>| Op::BlockAdd {
            entry: BlockEntry {
                cidr: net,
                until: until.map(|t| policy::parse_time(t).unwrap()),
                reason: Some("scan".into()),
            },
        };
        let (c1, said) = apply(&c, &[add(None)]).unwrap();
        assert_eq!(said, vec!["203.0.113.0/24 blocked until removed"]);
        assert_eq!(c1.blocks.len(), 1);
        let (c2, said) = apply(&c1, &[add(Some("2026-11-30T09:00:00Z"))]).unwrap();
        assert_eq!(c2.blocks.len(), 1);
        assert!(said[0].contains("until 2026-11-30T09:00:00Z"), "{said:?}");
        assert_eq!(Config::parse(&c2.to_toml()).unwrap(), c2);
        let rm = Op::BlockRemove { cidr: net };
        let (c3, _) = apply(&c2, std::slice::from_ref(&rm)).unwrap();
        assert!(c3.blocks.is_empty());
        assert_eq!(apply(&c3, &[rm]).unwrap_err(), ConfigError::NotBlocked(net));
        let j = serde_json::to_string(&add(None)).unwrap();
        assert!(j.contains("\"cidr\":\"203.0.113.0/24\""), "{j}");
        assert_eq!(serde_json::from_str::<Op>(&j).unwrap(), add(None));
    }

    #[test]
    fn ops_travel_as_json() {
        let op = Op::BackendState {
            service: None,
            address: "10.0.2.11:5060".parse().unwrap(),
            state: AdminState::Draining,
        };
        let j = serde_json::to_string(&op).unwrap();
        assert!(
            j.contains("\"op\":\"backend-state\"") && j.contains("\"draining\""),
            "{j}"
        );
        assert_eq!(serde_json::from_str::<Op>(&j).unwrap(), op);
    }
}

/// What changed from `prev` to `next`, one line each, as a reload logs and
/// answers it: services and backends added, removed or changed, and the
/// other settings by name.
pub fn differences(prev: &Config, next: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for s in &prev.services {
        if !next.services.iter().any(|n| n.vip == s.vip) {
            out.push(format!("service {} removed", s.vip));
        }
    }
    for n in &next.services {
        let Some(p) = prev.services.iter().find(|p| p.vip == n.vip) else {
            out.push(format!(
                "service {} added with {} backends",
                n.vip,
                n.backends.len()
            ));
            continue;
        };
        for b in &p.backends {
            if !n.backends.iter().any(|x| x.address == b.address) {
                out.push(format!("backend {} removed from {}", b.address, n.vip));
            }
        }
        for b in &n.backends {
            match p.backends.iter().find(|x| x.address == b.address) {
                None => out.push(format!("backend {} added to {}", b.address, n.vip)),
                Some(old) if old != b => {
                    out.push(format!("backend {} of {} changed", b.address, n.vip))
                }
                Some(_) => {}
            }
        }
        let (mut a, mut b) = (p.clone(), n.clone());
        a.backends.clear();
        b.backends.clear();
        if a != b {
            out.push(format!("service {} settings changed", n.vip));
        }
    }
    // Everything but the services, compared as the file writes it.
    let rest = |c: &Config| {
        let mut c = c.clone();
        c.services.clear();
        toml::Value::try_from(&c).expect("the configuration always serialises")
    };
    if let (toml::Value::Table(a), toml::Value::Table(b)) = (rest(prev), rest(next)) {
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            if a.get(k) != b.get(k) {
                out.push(format!("{k} changed"));
            }
        }
    }
    out
}

#[cfg(test)]
mod differences_tests {
    use super::*;

    #[test]
    fn differences_name_what_changed() {
        let prev = Config::parse(
            "interfaces = [\"eth0\"]\n[[service]]\nvip = \"10.0.0.10:5060\"\n[[service.backend]]\naddress = \"10.0.2.11:5060\"\n[[service.backend]]\naddress = \"10.0.2.12:5060\"\n",
        )
        .unwrap();
        assert!(differences(&prev, &prev).is_empty());
        let next = Config::parse(
            "interfaces = [\"eth0\", \"eth1\"]\n[[service]]\nvip = \"10.0.0.10:5060\"\nalgorithm = \"from-uri\"\n[[service.backend]]\naddress = \"10.0.2.11:5060\"\nweight = 3\n[[service.backend]]\naddress = \"10.0.2.13:5060\"\n[[service]]\nvip = \"10.0.0.11:5060\"\n",
        )
        .unwrap();
        assert_eq!(
            differences(&prev, &next),
            [
                "backend 10.0.2.12:5060 removed from 10.0.0.10:5060",
                "backend 10.0.2.11:5060 of 10.0.0.10:5060 changed",
                "backend 10.0.2.13:5060 added to 10.0.0.10:5060",
                "service 10.0.0.10:5060 settings changed",
                "service 10.0.0.11:5060 added with 0 backends",
                "interfaces changed",
            ]
        );
    }
}
