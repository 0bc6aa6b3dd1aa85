//! Entry points for fuzzing and property tests (cargo feature `fuzzing`, off by default).
//!
//! Two kinds of functions: thin wrappers that make crate-private parsers callable from
//! outside ([`read_proxy_header`], [`parse_duration`]), and the body of each fuzz target
//! (`*_target`): it feeds one arbitrary input through a parser and panics when an invariant
//! breaks, as a fuzzer expects. `fuzz/fuzz_targets/*.rs` (cargo fuzz, nightly) and
//! `tests/fuzz_smoke.rs` (a bounded run on stable, part of `cargo test`) both call them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::route::client_ip::{IpHeader, TrustedNets, parse_addr, resolve};
use crate::route::normalize_host;

/// Read a PROXY protocol v1/v2 header from the front of `bytes`: the declared client address
/// (or the error, as text) and how many bytes the reader consumed.
pub fn read_proxy_header(bytes: &[u8]) -> (Result<Option<SocketAddr>, String>, usize) {
    let mut rest = bytes;
    let r = {
        let fut = std::pin::pin!(crate::net::proxy_protocol::read_header(&mut rest));
        // Reading from a slice never waits, so one poll finishes.
        match fut.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r.map_err(|e| e.to_string()),
            Poll::Pending => Err("pending on a slice".into()),
        }
    };
    (r, bytes.len() - rest.len())
}

/// `"250ms"`, `"10s"`, `"1.5m"`, `"1h"`, `"0"`: the configuration's duration syntax.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::control::config::values::parse_duration(s).map_err(|e| e.to_string())
}

/// Normalise a request path as the proxy does before routing: `Ok(None)` when it is already
/// normal, `Ok(Some(normalised))`, or why it is refused.
pub fn normalize_path(path: &str) -> Result<Option<String>, String> {
    crate::proxy::path::normalize_path(path).map_err(|e| e.to_string())
}

/// Fuzz target `path`: any text as a request path. Never panics; for what the URI parser
/// admits (the only paths the proxy sees), the result starts with `/` when the path did, has
/// no `//`, `/./` or `/../` (nor a trailing `/.` or `/..`), and is a fixed point.
pub fn path_target(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = normalize_path(text);
    let Ok(pq) = http::uri::PathAndQuery::try_from(text) else {
        return;
    };
    let path = pq.path();
    let Ok(out) = normalize_path(path) else {
        return;
    };
    let out = out.as_deref().unwrap_or(path);
    if path.starts_with('/') {
        assert!(out.starts_with('/'), "{path:?} -> {out:?}");
        for bad in ["//", "/./", "/../"] {
            assert!(!out.contains(bad), "{path:?} -> {out:?}");
        }
        assert!(
            !out.ends_with("/.") && !out.ends_with("/.."),
            "{path:?} -> {out:?}"
        );
    }
    assert_eq!(
        normalize_path(out),
        Ok(None),
        "not idempotent: {path:?} -> {out:?}"
    );
}

/// Fuzz target `proxy_protocol`: any bytes in front of a connection. Never panics, and never
/// consumes a byte past the header: exactly the header when it is accepted, at most the
/// length the header declares (v2) or the longest v1 line otherwise.
pub fn proxy_protocol_target(data: &[u8]) {
    const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
    let (r, used) = read_proxy_header(data);
    assert!(used <= data.len());
    let limit = if data.starts_with(V2_SIG) && data.len() >= 16 {
        16 + usize::from(u16::from_be_bytes([data[14], data[15]]))
    } else if data.starts_with(b"PROXY ") {
        data.windows(2)
            .position(|w| w == b"\r\n")
            .map_or(107, |i| (i + 2).min(107))
    } else {
        16
    };
    assert!(used <= limit, "consumed {used} of a {limit}-byte header");
    if r.is_ok() {
        assert_eq!(used, limit, "an accepted header is consumed exactly");
    }
}

/// Fuzz target `host`: a `Host` header or URI authority. Never panics; the result is
/// lowercase, without port or trailing dot, has `:` only as an IPv6 literal, and is a fixed
/// point (normalising it again changes nothing).
pub fn host_target(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let mut buf = [0u8; 256];
    let Some(h) = normalize_host(raw, &mut buf) else {
        return;
    };
    assert!(
        !h.bytes().any(|b| b.is_ascii_uppercase()),
        "{raw:?} -> {h:?}"
    );
    assert!(!h.ends_with('.'), "{raw:?} -> {h:?}");
    assert!(
        !h.contains(':') || h.parse::<Ipv6Addr>().is_ok(),
        "{raw:?} -> {h:?} keeps a port"
    );
    let mut again = [0u8; 256];
    assert_eq!(
        normalize_host(h, &mut again),
        Some(h),
        "not idempotent: {raw:?}"
    );
}

/// Fuzz target `client_ip`: forwarding headers from a trusted or untrusted peer. The first
/// bytes choose the peer, the trusted networks and the header kind; the rest, split at
/// `\n`, are header lines. Never panics; the result is the peer when the peer is not
/// trusted, and otherwise the peer or an address written in the header.
pub fn client_ip_target(data: &[u8]) {
    let Some((&[kind, a, b, prefix], rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let peer = IpAddr::V4(Ipv4Addr::new(10, a, b, 1));
    let net = IpNet::new(IpAddr::V4(Ipv4Addr::new(10, a, 0, 0)), prefix % 33)
        .map_or_else(|_| Vec::new(), |n| vec![n.trunc()]);
    let trusted = TrustedNets::new(net);
    let (name, how) = match kind % 3 {
        0 => ("x-forwarded-for", IpHeader::XForwardedFor),
        1 => ("forwarded", IpHeader::Forwarded),
        _ => (
            "x-real-ip",
            IpHeader::Single(HeaderName::from_static("x-real-ip")),
        ),
    };
    let mut headers = HeaderMap::new();
    for line in rest.split(|&c| c == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(HeaderName::from_static(name), v);
        }
    }
    let got = resolve(peer, &headers, &trusted, &how);
    if !trusted.contains(peer) {
        assert_eq!(got, peer);
    } else if got != peer {
        assert!(
            written_addresses(&headers).contains(&got),
            "{got} is not in {headers:?}"
        );
    }
}

/// Every address written anywhere in `headers`' values, however it is quoted or bracketed.
pub fn written_addresses(headers: &HeaderMap) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for v in headers.values() {
        let Ok(s) = v.to_str() else { continue };
        let pieces = s
            .split(',')
            .chain(s.split([',', ';', '=', '"', ' ', '\t']))
            .chain(std::iter::once(s));
        out.extend(pieces.filter_map(parse_addr));
    }
    out
}

/// Fuzz target `config`: any text as `routes.toml`. Compiling never panics, whatever the
/// text. Inputs naming device or kernel files are skipped (a certificate path of
/// `/dev/zero` would be read forever); relative paths resolve under a directory that does
/// not exist.
pub fn config_target(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    let health = crate::health::HealthRegistry::default();
    let pool = crate::upstream::UpstreamPool::default();
    let ctx = crate::control::config::CompileCtx {
        health: &health,
        pool: &pool,
    };
    let path = Path::new("/nonexistent-geolb-fuzz/routes.toml");
    let _ = crate::control::config::compile_str(text, path, &ctx);
}
