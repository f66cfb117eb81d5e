//! The key search of every payload-dependent algorithm (`KeyScan`, as the
//! kernel steps it) and `message_dispatch` for every algorithm: inside the
//! window, within `KeyScan::steps`, equal to the plain reference, and to the
//! RFC 3261 oracle where it applies (`balancer-common/tests/properties`).
#![no_main]

#[allow(dead_code)]
#[path = "../../balancer-common/tests/properties/mod.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    properties::check_keys(data);
});
