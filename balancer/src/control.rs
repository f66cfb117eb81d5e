//! The control socket: what the CLI asks the daemon, and the answers.
//!
//! One request per connection, one JSON line each way. The socket lives in
//! `/run/balancer/INSTANCE.sock` with mode 0600 in a 0700 directory: only root
//! talks to the daemon.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::{AdminState, BackendConfig, Config, ConfigError, ServiceConfig};

/// Where instances keep their socket and lock.
pub const RUN_DIR: &str = "/run/balancer";
/// Where instances pin their programs, links and maps.
pub const PIN_ROOT: &str = "/sys/fs/bpf/balancer";

pub fn check_instance(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("instance name `{name}`: use letters, digits, '-' and '_'");
    }
    Ok(())
}

pub fn socket_path(instance: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{instance}.sock"))
}

/// Where the verifier's log goes when the kernel refuses the program.
pub fn verifier_log_path(instance: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{instance}.verifier.log"))
}

pub fn pin_dir(instance: &str) -> PathBuf {
    PathBuf::from(PIN_ROOT).join(instance)
}

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
        })
    }
}

/// Applies `ops` to a copy of `c` and checks the result whole.
pub fn plan(c: &Config, ops: &[Op]) -> Result<(Config, Vec<String>), ConfigError> {
    let mut next = c.clone();
    let mut said = Vec::new();
    for op in ops {
        said.push(op.apply(&mut next)?);
    }
    next.validate()?;
    Ok((next, said))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// Changes, all or nothing.
    Apply { ops: Vec<Op> },
    /// Services and backends with their counters.
    Status,
    /// The backend the live kernel table picks for a key.
    Whereis {
        service: Option<SocketAddr>,
        key: String,
    },
    /// Verdict counters and traffic.
    Stats,
    /// Detach everywhere, remove the pins and exit.
    Detach,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// Sends one request to the instance's daemon and returns its answer's data.
pub fn call(instance: &str, req: &Request) -> Result<serde_json::Value> {
    check_instance(instance)?;
    let path = socket_path(instance);
    let mut s = UnixStream::connect(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow!(
            "no balancer daemon for instance `{instance}` ({}): start one with `balancer attach` or `balancer run`",
            path.display()
        ),
        std::io::ErrorKind::PermissionDenied => {
            anyhow!("{}: permission denied (only root may control the balancer)", path.display())
        }
        _ => anyhow!("connecting to {}: {e}", path.display()),
    })?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .context("reading the daemon's answer")?;
    let r: Response = serde_json::from_str(&answer)
        .with_context(|| format!("the daemon's answer is not understood: {answer}"))?;
    if !r.ok {
        bail!("{}", r.error.unwrap_or_else(|| "failed".into()));
    }
    Ok(r.data)
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
        let e = plan(&c, &ops).unwrap_err();
        assert!(matches!(e, ConfigError::Family { .. }), "{e}");
        assert_eq!(c, base());
        let (next, said) = plan(&c, &ops[..1]).unwrap();
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
        assert!(plan(&c, &[dup])
            .unwrap_err()
            .to_string()
            .contains("10.0.2.11:5060"));
        let unknown = Op::BackendRemove {
            service: Some("10.0.0.99:5060".parse().unwrap()),
            address: "10.0.2.11:5060".parse().unwrap(),
        };
        assert_eq!(
            plan(&c, &[unknown]).unwrap_err().to_string(),
            "no service 10.0.0.99:5060"
        );
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
