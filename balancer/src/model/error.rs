//! What is wrong with a configuration or a change to it, said so an operator
//! can fix it.

use std::net::SocketAddr;

use balancer_common::maglev::MAX_TABLE;
use balancer_common::maps::{
    ALLOW_ENTRIES, BLOCK_ENTRIES, MAX_BACKENDS, MAX_SERVICES, MAX_UA_PATTERNS, UA_PATTERN_MAX,
};
use ipnet::IpNet;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0}")]
    Syntax(String),
    #[error("[announce] table {0}: not one of the kernel's own (0, 252-255)")]
    AnnounceTable(u32),
    #[error(
        "[announce] protocol {0}: taken by the kernel (0-4) or a routing daemon (11, 12, 186-196)"
    )]
    AnnounceProtocol(u8),
    #[error("`{0}` is not IP:PORT (IPv6 as [ADDR]:PORT)")]
    Addr(String),
    #[error("`{0}`: unknown backend option (expected weight=N)")]
    BackendOption(String),
    #[error("`{0}`: weight must be an integer from 0 to 65535")]
    WeightText(String),
    #[error("`{0}` is not a mode (dnat or dsr)")]
    Mode(String),
    #[error("`{0}` is not an algorithm (call-id, from-uri, to-uri, request-uri, source, round-robin, random, priority, weighted)")]
    Algorithm(String),
    #[error("service {0} exists already")]
    ServiceExists(SocketAddr),
    #[error("no service {0}")]
    NoService(SocketAddr),
    #[error("there is no service yet: add one with `balancer service add VIP:PORT`")]
    NoServices,
    #[error("there are {0} services: say which one with --service VIP:PORT")]
    WhichService(usize),
    #[error("backend {0} is already in service {1}")]
    BackendExists(SocketAddr, SocketAddr),
    #[error("service {1} has no backend {0}")]
    NoBackend(SocketAddr, SocketAddr),
    #[error("backend {backend} is {bfam}, service {vip} is {vfam}")]
    Family {
        backend: SocketAddr,
        bfam: &'static str,
        vip: SocketAddr,
        vfam: &'static str,
    },
    #[error("backend {0} is in DNAT services {1} and {2}: its replies could not be told apart")]
    SharedDnatBackend(SocketAddr, SocketAddr, SocketAddr),
    #[error("{0} is both a service VIP and a backend")]
    VipIsBackend(SocketAddr),
    #[error("service {vip}: table size {size} must be a prime from 3 to {MAX_TABLE}")]
    TableSize { vip: SocketAddr, size: u32 },
    #[error("backend {0}: weight {1} is over 65535")]
    Weight(SocketAddr, u32),
    #[error("at most {MAX_SERVICES} services")]
    TooManyServices,
    #[error("at most {MAX_BACKENDS} distinct backends")]
    TooManyBackends,
    #[error("no interfaces: say which interface clients reach the VIPs on")]
    NoInterfaces,
    #[error("interface name `{0}` is not valid")]
    Interface(String),
    #[error("backend {0}: {1}")]
    Health(SocketAddr, String),
    #[error("[health]: {0}")]
    GlobalHealth(String),
    #[error("affinity_entries {0} must be from 1024 to 16777216")]
    AffinityEntries(u32),
    #[error("`{0}` is not a CIDR (like 203.0.113.0/24 or 2001:db8::/48) or an IP address")]
    Cidr(String),
    #[error("`{0}` has host bits set: the network is {1}")]
    HostBits(String, IpNet),
    #[error("{0} is blocked twice")]
    BlockedTwice(IpNet),
    #[error("{0} is not in the block list")]
    NotBlocked(IpNet),
    #[error("at most {BLOCK_ENTRIES} block-list entries")]
    TooManyBlocks,
    #[error("at most {ALLOW_ENTRIES} allow-list entries over all services")]
    TooManyAllowed,
    #[error("user_agents: {0} patterns, at most {MAX_UA_PATTERNS}")]
    TooManyUserAgents(usize),
    #[error("user_agents: `{0}` must be printable ASCII, 1 to {UA_PATTERN_MAX} bytes")]
    UserAgent(String),
    #[error("service {0}: [service.limits] {1}")]
    Limits(SocketAddr, String),
    #[error("service {0}: max_size {1} must be from 1 to 65535 bytes")]
    MaxSize(SocketAddr, u32),
    #[error("[sync] {0}")]
    Sync(String),
    #[error("[hooks] {0}")]
    Hooks(String),
}

impl ConfigError {
    /// The address the error is about, to point at its line in a file.
    pub(super) fn subject(&self) -> Option<String> {
        use ConfigError::*;
        match self {
            ServiceExists(a) | VipIsBackend(a) | Weight(a, _) => Some(a.to_string()),
            BackendExists(a, _) | SharedDnatBackend(a, _, _) => Some(a.to_string()),
            Family { backend, .. } => Some(backend.to_string()),
            TableSize { vip, .. } => Some(vip.to_string()),
            Interface(i) | UserAgent(i) => Some(i.clone()),
            Cidr(c) | HostBits(c, _) => Some(c.clone()),
            BlockedTwice(n) => Some(n.to_string()),
            MaxSize(_, n) => Some(format!("max_size = {n}")),
            Limits(_, e) | Sync(e) | Hooks(e) => e.split('`').nth(1).map(str::to_string),
            Health(_, e) | GlobalHealth(e) => e.split('`').nth(1).map(str::to_string),
            _ => None,
        }
    }
}
