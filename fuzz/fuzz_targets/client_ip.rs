//! `cargo +nightly fuzz run client_ip`: see `geolb::fuzzing::client_ip_target` for the input and the
//! invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| geolb::fuzzing::client_ip_target(data));
