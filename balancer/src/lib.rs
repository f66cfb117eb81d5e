//! User space of the SIP XDP balancer: loading and feeding the data plane,
//! Maglev tables, interface discovery, message inspection.

pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod dispatcher;
pub mod ebpf_log;
pub mod health;
pub mod inspect;
pub mod prober;
pub mod requirements;
pub mod route;
pub mod select;
pub mod spec;
