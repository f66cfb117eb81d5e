//! Backend selection as the kernel does it, from the same table: used to fill the
//! kernel map and to answer "where does this Call-ID go".

use std::net::SocketAddr;

use balancer_common::{
    hash::hash_bytes,
    maglev::{self, Member},
};

use crate::model::BackendConfig;

/// A built Maglev table over a service's backends.
#[derive(Clone, Debug)]
pub struct Selector {
    pub backends: Vec<BackendConfig>,
    /// Indices into `backends`.
    pub table: Vec<Option<usize>>,
}

/// A backend's stable identity for the Maglev permutation: address and port bytes.
pub fn identity(a: &SocketAddr) -> Vec<u8> {
    let mut id = match a.ip() {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    id.extend_from_slice(&a.port().to_be_bytes());
    id
}

impl Selector {
    pub fn build(backends: &[BackendConfig], size: u32) -> Result<Self, maglev::BuildError> {
        let members: Vec<Member> = backends
            .iter()
            .map(|b| Member {
                id: identity(&b.address),
                weight: b.weight,
            })
            .collect();
        Ok(Selector {
            backends: backends.to_vec(),
            table: maglev::build(&members, size)?,
        })
    }

    /// The backend for a key hash.
    pub fn pick(&self, hash: u32) -> Option<&BackendConfig> {
        let i = maglev::index(hash, self.table.len() as u32) as usize;
        self.table[i].map(|b| &self.backends[b])
    }

    /// The backend for a Call-ID.
    pub fn whereis(&self, call_id: &[u8]) -> Option<&BackendConfig> {
        self.pick(hash_bytes(call_id))
    }
}
