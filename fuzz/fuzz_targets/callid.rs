//! The Call-ID, From and To header scans: `callid::call_id`, `scan` and the
//! stepped `HeaderScan` agree, stay inside the window, never read past it,
//! finish within the kernel's step count, and agree with the RFC 3261 oracle
//! where it applies; the in-place Call-ID scan (`line_scan`) answers as they
//! do or defers (`balancer-common/tests/properties`).
#![no_main]

#[allow(dead_code)]
#[path = "../../balancer-common/tests/properties/mod.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    properties::check_header_scans(data);
    properties::check_line_scan(data);
});
