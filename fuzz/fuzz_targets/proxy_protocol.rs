//! `cargo +nightly fuzz run proxy_protocol`: see `geolb::fuzzing::proxy_protocol_target` for the input and the
//! invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| geolb::fuzzing::proxy_protocol_target(data));
