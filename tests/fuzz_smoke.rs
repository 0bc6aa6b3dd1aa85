//! A bounded run of every fuzz target on stable Rust, as part of `cargo test`: each target's
//! body (`geolb::fuzzing::*_target`, the same function `fuzz/fuzz_targets/` runs under
//! libFuzzer) gets a few thousand inputs — valid seeds mutated by proptest (bit flips,
//! inserted, deleted and duplicated bytes, truncation) and plain random bytes. The long,
//! coverage-guided runs are `cargo +nightly fuzz run <target>` (README, "Fuzzing").

use geolb::fuzzing::{
    client_ip_target, config_target, host_target, path_target, proxy_protocol_target,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

/// One edit of a seed; positions are taken modulo the input's length.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Duplicate(usize, usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Edit::Flip(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Set(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Insert(p, b)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), 1usize..32).prop_map(|(p, n)| Edit::Duplicate(p, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let at = |p: usize, len: usize| if len == 0 { 0 } else { p % len };
        let n = v.len();
        match *e {
            Edit::Flip(p, b) if n > 0 => v[at(p, n)] ^= 1 << b,
            Edit::Set(p, b) if n > 0 => v[at(p, n)] = b,
            Edit::Insert(p, b) => v.insert(at(p, n + 1), b),
            Edit::Delete(p) if n > 0 => {
                v.remove(at(p, n));
            }
            Edit::Duplicate(p, len) if n > 0 => {
                let start = at(p, n);
                let piece = v[start..(start + len).min(n)].to_vec();
                v.splice(start..start, piece);
            }
            Edit::Truncate(p) => v.truncate(at(p, n + 1)),
            _ => {}
        }
    }
    v
}

/// Run `target` on `cases` inputs: mutated `seeds` and random bytes (fixed seed; override
/// with `PROPTEST_RNG_SEED`).
fn smoke(name: &str, cases: u32, seeds: Vec<Vec<u8>>, target: fn(&[u8])) {
    let rng_seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(RngSeed::Fixed(0xf022), RngSeed::Fixed);
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed,
        failure_persistence: None,
        ..Config::default()
    });
    let mutated = (
        proptest::sample::select(seeds),
        proptest::collection::vec(edit(), 0..8),
    )
        .prop_map(|(seed, edits)| apply(seed, &edits));
    let input = prop_oneof![
        4 => mutated,
        1 => proptest::collection::vec(any::<u8>(), 0..256),
    ];
    let t = std::time::Instant::now();
    let result = runner.run(&input, |data| {
        target(&data);
        Ok(())
    });
    eprintln!("{name}: {cases} inputs in {:?}", t.elapsed());
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

fn v2_header(src: &str, dst: &str) -> Vec<u8> {
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            src.parse::<std::net::SocketAddr>().unwrap(),
            dst.parse::<std::net::SocketAddr>().unwrap(),
        ),
    )
    .write_tlv(0xe1, b"tlv")
    .unwrap()
    .build()
    .unwrap()
}

/// Inputs the coverage-guided fuzzers found, replayed on every run.
#[test]
fn fuzz_findings_stay_fixed() {
    // `ppp` sliced a v1 line inside a multi-byte character and panicked.
    proxy_protocol_target(b"PROXY  \xd0\x90RO \r\xd0\x90\xd0\x90RO \r\n\0\n\x19POX ");
    proxy_protocol_target("PROXY TCP4 1.2.3.4 5.6.7.8 1 2é\r\n".as_bytes());
    // An unknown empty key sent the error locator into an endless loop.
    config_target(br#"""="""T""""#);
    config_target(b"[listeners]\n\"\" = 1\n");
}

#[test]
fn proxy_protocol() {
    let seeds = vec![
        b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 443\r\nGET / HTTP/1.1\r\n".to_vec(),
        b"PROXY TCP6 2001:db8::7 ::1 1234 443\r\n\x16\x03\x01".to_vec(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        v2_header("203.0.113.9:5555", "10.0.0.1:443"),
        v2_header("[2001:db8::7]:1234", "[::1]:443"),
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
    ];
    smoke("proxy_protocol", 4000, seeds, proxy_protocol_target);
}

#[test]
fn client_ip() {
    let seeds = [
        &b"\x00\x00\x00\x08203.0.113.7, 10.0.0.2\n10.0.0.3"[..],
        b"\x01\x00\x00\x08for=192.0.2.60;proto=http, For=\"[2001:db8:cafe::17]:4711\"",
        b"\x02\x00\x00\x08 198.51.100.1 ",
        b"\x00\x05\x06\x10::ffff:1.2.3.4, [::1]:80, bogus, 10.5.6.1",
    ];
    smoke(
        "client_ip",
        4000,
        seeds.iter().map(|s| s.to_vec()).collect(),
        client_ip_target,
    );
}

#[test]
fn host() {
    let seeds = [
        &b"Example.COM:8443"[..],
        b"[2001:DB8::1]:443",
        b"2001:db8::1",
        b"a.b.",
        b"xn--bcher-kva.example",
        b"localhost",
    ];
    smoke(
        "host",
        4000,
        seeds.iter().map(|s| s.to_vec()).collect(),
        host_target,
    );
}

#[test]
fn path() {
    let seeds = [
        &b"/a/b/../c/./d//e"[..],
        b"/%7Euser/%2e%2E/x%2fy%5c?q=1",
        b"/a%2F..%2Fb",
        b"*",
        b"/",
        b"/..",
        b"/%41%zz",
    ];
    smoke(
        "path",
        4000,
        seeds.iter().map(|s| s.to_vec()).collect(),
        path_target,
    );
}

#[test]
fn config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let seeds = ["conf/routes.toml", "conf/demo.toml"]
        .iter()
        .map(|f| std::fs::read(format!("{root}/{f}")).unwrap())
        .collect();
    smoke("config", 1000, seeds, config_target);
}
