//! `cargo +nightly fuzz run config`: see `geolb::fuzzing::config_target` for the input and the
//! invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| geolb::fuzzing::config_target(data));
