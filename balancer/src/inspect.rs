//! `balancer inspect`: what the kernel would extract from a SIP message.

use balancer_common::{
    callid::call_id,
    hash::hash_bytes,
    keys::message_dispatch,
    maps::{reason, ALG_CALL_ID},
};
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
    /// The counter the kernel bumps for this message to a Call-ID service
    /// (`reason::NAMES`): `callid`, or the source-address fallback it takes,
    /// `fallback_no_callid` or `fallback_keepalive`.
    pub reason: &'static str,
}

pub fn inspect(file: &str, message: &[u8]) -> Inspection {
    let id = call_id(message);
    // The source address only matters to the fallback's hash, which is not shown.
    let counted = message_dispatch(message, ALG_CALL_ID, &[0; 16], 2).reason;
    debug_assert_eq!(id.is_some(), counted == reason::CALLID);
    Inspection {
        file: file.to_string(),
        call_id: id.map(|v| String::from_utf8_lossy(v).into_owned()),
        call_id_hex: id.map(hex),
        hash: id.map(|v| format!("{:08x}", hash_bytes(v))),
        reason: reason::NAMES[counted as usize],
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
