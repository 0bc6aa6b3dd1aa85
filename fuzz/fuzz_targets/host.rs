//! `cargo +nightly fuzz run host`: see `geolb::fuzzing::host_target` for the input and the
//! invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| geolb::fuzzing::host_target(data));
