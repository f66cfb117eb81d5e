//! Affinity entries shared between the balancers behind one ECMP route.
//!
//! Maglev tables agree between balancers by construction, but the affinity
//! maps (`AFFINITY`, `LEARNED`) hold what only one balancer saw: a dialog
//! kept on its backend after the backend set changed, or started by a
//! backend. When ECMP moves such a dialog's packets to another balancer
//! (one failed, a route changed), that balancer must already know the
//! entry, or the dialog lands on another backend. So each balancer sends
//! its new entries and removals to its peers over UDP.
//!
//! This module is the part that needs no kernel: the datagram format, its
//! authentication, replay protection and per-peer bounds. Feeding it from
//! the kernel (a ring buffer of new entries) and writing what peers send
//! into the maps come later.
//!
//! # Wire format, version 1
//!
//! Every integer is little-endian; every field is at a fixed offset.
//!
//! | Offset | Size | Header field                                           |
//! |-------:|-----:|--------------------------------------------------------|
//! | 0      | 4    | magic `SLBS`                                           |
//! | 4      | 1    | version (1)                                            |
//! | 5      | 1    | kind: 1 entries, 2 removals, 3 bulk request, 4 bulk chunk |
//! | 6      | 2    | entry count (at most 27; 0 in a bulk request)          |
//! | 8      | 8    | sender id (FNV-1a of the sender's `listen` address)    |
//! | 16     | 8    | epoch: the sender daemon's start, ms since Unix epoch  |
//! | 24     | 8    | sequence number within the epoch, from 1               |
//! | 32     | 8    | timestamp, ms since Unix epoch                         |
//! | 40     | 8    | cursor (bulk kinds; 0 otherwise, and after the last chunk) |
//!
//! Then `count` entries of 48 bytes:
//!
//! | Offset | Size | Entry field                                            |
//! |-------:|-----:|--------------------------------------------------------|
//! | 0      | 1    | map: 0 client (`AFFINITY`), 1 learned (`LEARNED`)      |
//! | 1      | 1    | VIP family: 4 or 6                                     |
//! | 2      | 1    | backend family: 4 or 6 (the VIP's)                     |
//! | 3      | 1    | reserved, 0                                            |
//! | 4      | 4    | key hash (`AffinityKey::hash`)                         |
//! | 8      | 16   | VIP address (IPv4: 4 bytes, then 12 zero bytes)        |
//! | 24     | 2    | VIP port                                               |
//! | 26     | 16   | backend address (as the VIP's)                         |
//! | 42     | 2    | backend port                                           |
//! | 44     | 4    | age: ms since the dialog's last message on the sender  |
//!
//! Then a 32-byte HMAC-SHA256 tag, with the peers' shared key, over all that
//! comes before it. A datagram is at most 1,400 bytes (48 + 27 × 48 + 32 =
//! 1,376), so never fragmented. Entries name services and backends by
//! address, as slot numbers and service ids differ between balancers.
//!
//! A receiver takes a datagram only from a configured peer, within that
//! peer's datagram and entry rates, with a whole and right tag, a strict
//! layout, the sender id of that peer's address, a timestamp within the
//! allowed skew, and an (epoch, sequence) it has not taken before (see
//! [`replay`]). Anything else is dropped and counted by reason ([`Counters`]).

pub mod auth;
pub mod directory;
pub mod limits;
pub mod peer;
pub mod replay;
pub mod wire;

pub use auth::Key;
pub use peer::{Counters, PeerReport, Peers, Reject, Rejected, Sender};
pub use wire::{Datagram, Entry, Kind, Map};
