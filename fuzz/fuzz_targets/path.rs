//! `cargo +nightly fuzz run path`: see `geolb::fuzzing::path_target` for the input and the
//! invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| geolb::fuzzing::path_target(data));
