//! `balancer inspect`: what the kernel would extract from a SIP message.

use balancer_common::{callid::call_id, hash::hash_bytes};
use serde::Serialize;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Inspection {
    pub file: String,
    /// The Call-ID as text (lossy UTF-8), or null.
    pub call_id: Option<String>,
    /// The raw Call-ID bytes in hex, or null.
    pub call_id_hex: Option<String>,
    /// The kernel's 32-bit key hash in hex, or null.
    pub hash: Option<String>,
}

pub fn inspect(file: &str, message: &[u8]) -> Inspection {
    let id = call_id(message);
    Inspection {
        file: file.to_string(),
        call_id: id.map(|v| String::from_utf8_lossy(v).into_owned()),
        call_id_hex: id.map(hex),
        hash: id.map(|v| format!("{:08x}", hash_bytes(v))),
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
