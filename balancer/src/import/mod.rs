//! Configurations written for other SIP balancers, turned into ours.

pub mod kamailio;
