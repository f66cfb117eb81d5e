//! Everything the XDP program and user space must agree on, defined once.
//!
//! The kernel program and the `balancer` binary both call these functions, so
//! `balancer inspect` and `balancer whereis` predict exactly what the data plane
//! does. The code is `no_std`, allocation-free on the hot path, and written so the
//! BPF verifier can follow it: every buffer index is masked into a fixed-size
//! array and every loop has a constant bound.
#![cfg_attr(not(any(feature = "user", test)), no_std)]

pub mod callid;
pub mod csum;
pub mod hash;
pub mod hints;
pub mod keys;
pub mod limits;
pub mod line_scan;
pub mod maglev;
pub mod maps;
pub mod sip;
pub mod useragent;

pub use callid::{HeaderScan, ScanBuf, Span};
