//! Property tests of the parsers that face the network or the operator: the host
//! normaliser, the request-path normaliser, the client address behind forwarding headers
//! (X-Forwarded-For, Forwarded, a single-value header), the PROXY protocol v1/v2 reader, and
//! duration values.
//!
//! Cases run from a fixed seed so a run is reproducible; `PROPTEST_RNG_SEED=<n>` explores
//! others and `PROPTEST_CASES=<n>` runs more (or fewer) cases.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use geolb::fuzzing::{
    client_ip_target, host_target, normalize_path, parse_duration, path_target,
    proxy_protocol_target, read_proxy_header, written_addresses,
};
use geolb::route::client_ip::{IpHeader, TrustedNets, resolve};
use geolb::route::normalize_host;
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

/// `cases` from a fixed seed, unless the environment asks otherwise.
fn config(cases: u32) -> ProptestConfig {
    let env = ProptestConfig::default();
    let set = |v: &str| std::env::var_os(v).is_some();
    ProptestConfig {
        cases: if set("PROPTEST_CASES") {
            env.cases
        } else {
            cases
        },
        rng_seed: if set("PROPTEST_RNG_SEED") {
            env.rng_seed
        } else {
            RngSeed::Fixed(0x9e01b)
        },
        failure_persistence: None,
        ..env
    }
}

fn norm(raw: &str) -> Option<String> {
    let mut buf = [0u8; 256];
    normalize_host(raw, &mut buf).map(str::to_owned)
}

/// Host-like text: names, ports, brackets, IPv6 literals, dots and case, and plain noise.
fn host_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._-]{0,30}(:[0-9]{0,6})?",
        "[a-zA-Z0-9.:_-]{0,40}",
        "\\[[0-9a-fA-F:.]{0,40}\\](:[0-9a-z]{0,6})?\\.?",
        any::<Ipv6Addr>().prop_map(|ip| ip.to_string().to_uppercase()),
        (any::<Ipv6Addr>(), any::<u16>()).prop_map(|(ip, p)| format!("[{ip}]:{p}")),
        "[ -~]{0,60}",
        "\\PC{0,40}",
    ]
}

proptest! {
    #![proptest_config(config(4000))]

    /// Never panics; lowercase, no port, no trailing dot; a fixed point.
    #[test]
    fn host_normaliser_invariants(raw in host_text()) {
        host_target(raw.as_bytes());
    }

    /// A name with any case, port and one trailing dot becomes the lowercase name.
    #[test]
    fn host_port_case_and_dot_are_dropped(
        name in "[a-zA-Z0-9_-]{1,20}(\\.[a-zA-Z0-9_-]{1,20}){0,3}",
        port in proptest::option::of(any::<u16>()),
        dot in any::<bool>(),
    ) {
        let mut raw = name.clone();
        if dot {
            raw.push('.');
        }
        if let Some(p) = port {
            raw = format!("{raw}:{p}");
        }
        prop_assert_eq!(norm(&raw), Some(name.to_ascii_lowercase()));
    }

    /// IPv6 literals keep their colons, with or without brackets and port.
    #[test]
    fn ipv6_hosts_keep_their_colons(ip in any::<Ipv6Addr>(), port in any::<u16>()) {
        let s = ip.to_string();
        prop_assert_eq!(norm(&format!("[{s}]:{port}")), Some(s.clone()));
        prop_assert_eq!(norm(&format!("[{s}]")), Some(s.clone()));
        prop_assert_eq!(norm(&s), Some(s));
    }
}

#[test]
fn host_normaliser_examples() {
    for (raw, want) in [
        ("Example.COM:8443", Some("example.com")),
        ("a.b.", Some("a.b")),
        ("a.b.:80", Some("a.b")),
        ("[2001:DB8::1]:443", Some("2001:db8::1")),
        ("2001:db8::1", Some("2001:db8::1")),
        ("", Some("")),
        // Found by the properties: these used to come out with a port, a trailing dot, or a
        // truncated address, so normalising twice gave a different host.
        ("a.com:80:90", None),
        ("a..", None),
        ("a:b", None),
        ("[::1]x", None),
        ("[not-v6]", None),
        ("bad host", None),
        ("x/y", None),
    ] {
        assert_eq!(norm(raw).as_deref(), want, "{raw:?}");
    }
}

fn trusted() -> TrustedNets {
    TrustedNets::new(vec![
        "10.0.0.0/8".parse().unwrap(),
        "fd00::/8".parse().unwrap(),
    ])
}

/// Client addresses, half of them in `trusted()`.
fn hop() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 3]>().prop_map(|[a, b, c]| IpAddr::V4(Ipv4Addr::new(10, a, b, c))),
        any::<Ipv4Addr>().prop_map(IpAddr::V4),
        any::<u64>().prop_map(|x| IpAddr::V6(Ipv6Addr::from((0xfd_u128 << 120) | u128::from(x)))),
        any::<Ipv6Addr>().prop_map(|ip| IpAddr::V6(ip).to_canonical()),
    ]
}

/// How a hop is written: bare, with a port, bracketed (IPv6), quoted (Forwarded).
fn spell(ip: IpAddr, style: u8, forwarded: bool) -> String {
    let s = match (ip, style % 3) {
        (IpAddr::V4(v4), 1) => format!("{v4}:{}", 1000 + u16::from(style)),
        (IpAddr::V6(v6), 1) => format!("[{v6}]:{}", 1000 + u16::from(style)),
        (IpAddr::V6(v6), 2) => format!("[{v6}]"),
        _ => ip.to_string(),
    };
    match (forwarded, style % 2) {
        (false, _) => s,
        (true, 0) => format!("for=\"{s}\";proto=https"),
        (true, _) => format!("by=10.9.9.9;For={s}"),
    }
}

/// `hops` (left to right) as header lines of `name`, split into lines at `cuts`.
fn header(name: &'static str, hops: &[String], cuts: &[usize]) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut start = 0;
    for end in cuts
        .iter()
        .map(|c| c % (hops.len() + 1))
        .chain([hops.len()])
    {
        if end > start {
            let line = hops[start..end].join(", ");
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_str(&line).unwrap(),
            );
            start = end;
        }
    }
    h
}

/// Header lines that look like forwarding headers, and noise.
fn header_lines() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        "[0-9a-fA-F:.,; =\"\\[\\]forFOR_-]{0,60}",
        "((for|by|proto)=\"?\\[?[0-9a-f:.]{1,20}\\]?(:[0-9]{1,5})?\"?[;,] ?){0,4}",
        proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|v| String::from_utf8_lossy(&v).into_owned()),
    ];
    (any::<[u8; 4]>(), proptest::collection::vec(line, 0..4)).prop_map(|(head, lines)| {
        let mut out = head.to_vec();
        out.extend_from_slice(lines.join("\n").as_bytes());
        out
    })
}

proptest! {
    #![proptest_config(config(3000))]

    /// Arbitrary header values: never a panic, and never an address from nowhere.
    #[test]
    fn client_ip_never_invents_an_address(data in header_lines()) {
        client_ip_target(&data);
    }

    /// Trusted-hop walking, XFF and Forwarded alike, across header lines: the answer is the
    /// rightmost untrusted hop; when every hop is trusted, the leftmost; an untrusted peer's
    /// headers are ignored.
    #[test]
    fn the_rightmost_untrusted_hop_is_the_client(
        peer in hop(),
        hops in proptest::collection::vec((hop(), any::<u8>()), 0..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..3),
        forwarded in any::<bool>(),
    ) {
        let t = trusted();
        let (name, how) = if forwarded {
            ("forwarded", IpHeader::Forwarded)
        } else {
            ("x-forwarded-for", IpHeader::XForwardedFor)
        };
        let written: Vec<String> = hops.iter().map(|&(ip, s)| spell(ip, s, forwarded)).collect();
        let h = header(name, &written, &cuts);
        let got = resolve(peer, &h, &t, &how);
        let want = if !t.contains(peer) {
            peer
        } else {
            hops.iter()
                .rev()
                .map(|&(ip, _)| ip)
                .find(|&ip| !t.contains(ip))
                .or_else(|| hops.first().map(|&(ip, _)| ip))
                .unwrap_or(peer)
        };
        prop_assert_eq!(got, want, "{:?}", h);
        prop_assert!(got == peer || written_addresses(&h).contains(&got));
    }

    /// An entry that is not an address ends the walk at the last good hop to its right.
    #[test]
    fn garbage_stops_the_walk_at_the_last_good_hop(
        left in proptest::collection::vec(hop(), 0..3),
        right in proptest::collection::vec(
            any::<[u8; 3]>().prop_map(|[a, b, c]| IpAddr::V4(Ipv4Addr::new(10, a, b, c))),
            0..3,
        ),
        junk in "[a-z_]{1,8}|unknown|\\[::1",
    ) {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let mut hops: Vec<String> = left.iter().map(IpAddr::to_string).collect();
        hops.push(junk);
        hops.extend(right.iter().map(IpAddr::to_string));
        let h = header("x-forwarded-for", &hops, &[]);
        let got = resolve(peer, &h, &trusted(), &IpHeader::XForwardedFor);
        prop_assert_eq!(got, right.first().copied().unwrap_or(peer));
    }
}

/// Request-path-like text: segments of letters, dots, escapes (some malformed) and slashes.
fn path_text() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just(String::new()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E%2e".to_owned()),
        Just("%2F".to_owned()),
        "[a-zA-Z0-9._~-]{1,6}",
        "%[0-9a-fA-F]{2}",
        "%[0-9a-zA-Z]{0,2}",
        "[!$&'()*+,;=:@]{1,3}",
    ];
    (
        any::<bool>(),
        proptest::collection::vec(segment, 0..8),
        proptest::option::of("[a-z=&/.]{0,8}"),
    )
        .prop_map(|(lead, segs, q)| {
            let mut p = if lead { "/".to_owned() } else { String::new() };
            p.push_str(&segs.join("/"));
            if let Some(q) = q {
                p.push('?');
                p.push_str(&q);
            }
            p
        })
}

proptest! {
    #![proptest_config(config(4000))]

    /// Never panics; no `//`, `/./`, `/../`; starts with `/`; normalising twice changes
    /// nothing.
    #[test]
    fn path_normaliser_invariants(p in prop_oneof![path_text(), "\\PC{0,30}", "[ -~]{0,40}"]) {
        path_target(p.as_bytes());
    }

    /// Dot segments resolve like RFC 3986 §5.2.4 on plain segments: the result is the stack
    /// of names left after popping one per `..`, or a refusal when `..` climbs above the root.
    #[test]
    fn dot_segments_resolve_as_a_stack(segs in proptest::collection::vec(prop_oneof!["[a-z]{1,4}", Just(".".to_owned()), Just("..".to_owned())], 1..8)) {
        let path = format!("/{}", segs.join("/"));
        let mut stack: Vec<&str> = Vec::new();
        let mut climbs = false;
        for s in &segs {
            match s.as_str() {
                "." => {}
                ".." => climbs |= stack.pop().is_none(),
                name => stack.push(name),
            }
        }
        let got = normalize_path(&path);
        if climbs {
            prop_assert!(got.is_err(), "{path} -> {got:?}");
        } else {
            let trailing = matches!(segs.last().map(String::as_str), Some("." | ".."));
            let mut want = format!("/{}", stack.join("/"));
            if trailing && !stack.is_empty() {
                want.push('/');
            }
            let out = got.unwrap().unwrap_or_else(|| path.clone());
            prop_assert_eq!(out, want, "{}", path);
        }
    }
}

/// A PROXY v1 line for `src` → `dst`.
fn v1(src: SocketAddr, dst: SocketAddr) -> String {
    let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
}

/// A same-family (source, destination) pair.
fn endpoints() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    prop_oneof![
        (any::<(Ipv4Addr, u16)>(), any::<(Ipv4Addr, u16)>())
            .prop_map(|(a, b)| (SocketAddr::from(a), SocketAddr::from(b))),
        (any::<(Ipv6Addr, u16)>(), any::<(Ipv6Addr, u16)>())
            .prop_map(|(a, b)| (SocketAddr::from(a), SocketAddr::from(b))),
    ]
}

proptest! {
    #![proptest_config(config(3000))]

    /// Arbitrary bytes, and bytes behind a real signature: no panic, no byte read past the
    /// header.
    #[test]
    fn proxy_reader_never_reads_past_the_header(
        prefix in prop_oneof![
            Just(&b""[..]),
            Just(&b"PROXY "[..]),
            Just(&b"\r\n\r\n\0\r\nQUIT\n"[..]),
            Just(&b"\r\n\r\n\0\r\nQUIT\n\x21\x11"[..]),
        ],
        rest in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut data = prefix.to_vec();
        data.extend_from_slice(&rest);
        proxy_protocol_target(&data);
    }

    /// Well-formed v1 lines are read back exactly, and the payload after them is untouched.
    #[test]
    fn proxy_v1_round_trips((src, dst) in endpoints(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let line = v1(src, dst);
        let mut data = line.clone().into_bytes();
        data.extend_from_slice(&payload);
        let (r, used) = read_proxy_header(&data);
        prop_assert_eq!(r, Ok(Some(src)));
        prop_assert_eq!(used, line.len());
    }

    /// Well-formed v2 headers (PROXY or LOCAL, with TLVs) are read back exactly.
    #[test]
    fn proxy_v2_round_trips(
        (src, dst) in endpoints(),
        local in any::<bool>(),
        tlvs in proptest::collection::vec((0xe0u8..=0xef, proptest::collection::vec(any::<u8>(), 0..40)), 0..4),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let command = if local { ppp::v2::Command::Local } else { ppp::v2::Command::Proxy };
        let mut b = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | command,
            ppp::v2::Protocol::Stream,
            (src, dst),
        );
        for (kind, value) in &tlvs {
            b = b.write_tlv(*kind, value).unwrap();
        }
        let header = b.build().unwrap();
        let mut data = header.clone();
        data.extend_from_slice(&payload);
        let (r, used) = read_proxy_header(&data);
        prop_assert_eq!(r, Ok(if local { None } else { Some(src) }));
        prop_assert_eq!(used, header.len());
    }
}

/// `d` written with the unit `unit` ("ms", "s", "m", "h") when it is a whole number of them.
fn spelled(ms: u64, unit: u8) -> (String, Duration) {
    let d = Duration::from_millis(ms);
    match unit % 5 {
        0 => (format!("{ms}ms"), d),
        1 => (format!("{}s", ms / 1000), Duration::from_secs(ms / 1000)),
        2 => (
            format!("{}m", ms / 60_000),
            Duration::from_secs(ms / 60_000 * 60),
        ),
        3 => (
            format!("{}h", ms / 3_600_000),
            Duration::from_secs(ms / 3_600_000 * 3600),
        ),
        _ => (format!("{}.{:03}s", ms / 1000, ms % 1000), d),
    }
}

proptest! {
    #![proptest_config(config(4000))]

    /// Formatted durations parse back to exactly the same value (a binary float used to be
    /// off by nanoseconds: "18657403.352s").
    #[test]
    fn durations_round_trip(ms in 0u64..=365 * 86_400_000, unit in any::<u8>()) {
        let (text, want) = spelled(ms, unit);
        prop_assert_eq!(parse_duration(&text), Ok(want), "{}", text);
    }

    /// Nanosecond precision in every unit.
    #[test]
    fn fractions_are_exact(whole in 0u64..1000, frac in 0u64..1_000_000_000) {
        let text = format!("{whole}.{frac:09}s");
        prop_assert_eq!(parse_duration(&text), Ok(Duration::new(whole, frac as u32)), "{}", text);
        let text = format!("{whole}.{frac:09}ms");
        let want = Duration::from_nanos(whole * 1_000_000 + frac / 1000);
        prop_assert_eq!(parse_duration(&text), Ok(want), "{}", text);
    }

    /// Garbage never panics; whatever is accepted is within a year.
    #[test]
    fn durations_never_panic(s in prop_oneof!["\\PC{0,20}", "[0-9.]{0,12} ?(ms|s|m|h|x|)", "[-+0-9eE.a-z ]{0,16}"]) {
        if let Ok(d) = parse_duration(&s) {
            prop_assert!(d <= Duration::from_secs(365 * 86_400), "{s:?} -> {d:?}");
        }
    }

    /// A number without a unit is refused (only "0" means zero).
    #[test]
    fn durations_need_a_unit(n in 1u64..1_000_000) {
        prop_assert!(parse_duration(&n.to_string()).is_err());
    }
}
