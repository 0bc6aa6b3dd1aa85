//! The client's real address: socket peer (or PROXY-protocol source), then forwarding headers
//! from trusted peers only, walking right to left past trusted hops (as nginx `real_ip_recursive`).

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};
use ipnet::IpNet;

/// A set of trusted networks. Small lists are scanned; that is faster than a trie below ~32 nets.
#[derive(Debug, Clone, Default)]
pub struct TrustedNets {
    nets: Vec<IpNet>,
}

impl TrustedNets {
    /// The trusted networks.
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedNets { nets }
    }

    /// No network is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// True when `ip` (canonicalised) lies in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

/// Which request header carries the client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpHeader {
    /// `X-Forwarded-For`, a comma-separated list appended by each hop.
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=…`.
    Forwarded,
    /// A single-value header set by the trusted proxy (`X-Real-IP`, `CF-Connecting-IP`, …).
    Single(HeaderName),
}

/// Resolve the client address. `peer` is the TCP peer or the PROXY-protocol source.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedNets, how: &IpHeader) -> IpAddr {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    match how {
        IpHeader::XForwardedFor => walk(peer, trusted, list_entries(headers, &XFF)),
        IpHeader::Forwarded => walk(peer, trusted, forwarded_entries(headers)),
        IpHeader::Single(name) => {
            let mut values = headers.get_all(name).iter();
            match (values.next(), values.next()) {
                (Some(v), None) => v.to_str().ok().and_then(parse_addr).unwrap_or(peer),
                _ => peer,
            }
        }
    }
}

static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Walk entries right to left: skip trusted hops, stop at the first untrusted address.
/// An unparsable entry ends the walk at the last good address.
fn walk<'a>(peer: IpAddr, trusted: &TrustedNets, entries: impl Iterator<Item = &'a str>) -> IpAddr {
    let mut current = peer;
    for entry in entries {
        match parse_addr(entry) {
            Some(ip) => {
                current = ip;
                if !trusted.contains(ip) {
                    return ip;
                }
            }
            None => return current,
        }
    }
    current
}

/// All comma-separated entries of every line of `name`, last first.
fn list_entries<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .rev()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").rsplit(','))
        .map(str::trim)
}

fn forwarded_entries(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    list_entries(headers, &FORWARDED).map(|element| {
        element
            .split(';')
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| v.trim().trim_matches('"'))
            })
            .unwrap_or("\u{0}")
    })
}

/// Parse `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:80`.
pub fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        return rest[..end]
            .parse::<IpAddr>()
            .ok()
            .map(|ip| ip.to_canonical());
    }
    s.parse::<SocketAddr>()
        .ok()
        .map(|sa| sa.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn nets(list: &[&str]) -> TrustedNets {
        TrustedNets::new(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let h = hm(&[("x-forwarded-for", "1.2.3.4")]);
        let t = nets(&["10.0.0.0/8"]);
        assert_eq!(
            resolve(ip("192.0.2.9"), &h, &t, &IpHeader::XForwardedFor),
            ip("192.0.2.9")
        );
        assert_eq!(
            resolve(ip("10.1.1.1"), &h, &t, &IpHeader::XForwardedFor),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn xff_walks_past_trusted_hops_across_lines() {
        let t = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        let h = hm(&[
            ("x-forwarded-for", "6.6.6.6, 1.2.3.4"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        assert_eq!(
            resolve(ip("127.0.0.1"), &h, &t, &IpHeader::XForwardedFor),
            ip("1.2.3.4")
        );
        // All hops trusted: the leftmost wins.
        let h = hm(&[("x-forwarded-for", "10.0.0.3, 10.0.0.2")]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &t, &IpHeader::XForwardedFor),
            ip("10.0.0.3")
        );
        // Garbage stops the walk at the last good hop.
        let h = hm(&[("x-forwarded-for", "1.2.3.4, bogus, 10.0.0.2")]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &t, &IpHeader::XForwardedFor),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn forwarded_and_single_headers() {
        let t = nets(&["127.0.0.0/8"]);
        let h = hm(&[(
            "forwarded",
            "for=192.0.2.60;proto=http, For=\"[2001:db8:cafe::17]:4711\"",
        )]);
        assert_eq!(
            resolve(ip("127.0.0.1"), &h, &t, &IpHeader::Forwarded),
            ip("2001:db8:cafe::17")
        );
        let real = IpHeader::Single(HeaderName::from_static("x-real-ip"));
        let h = hm(&[("x-real-ip", "203.0.113.7")]);
        assert_eq!(resolve(ip("127.0.0.1"), &h, &t, &real), ip("203.0.113.7"));
        let h = hm(&[("x-real-ip", "203.0.113.7"), ("x-real-ip", "1.1.1.1")]);
        assert_eq!(resolve(ip("127.0.0.1"), &h, &t, &real), ip("127.0.0.1"));
    }

    #[test]
    fn mapped_addresses_are_canonical() {
        let t = nets(&["127.0.0.0/8"]);
        let h = hm(&[("x-forwarded-for", "::ffff:1.2.3.4")]);
        assert_eq!(
            resolve(ip("::ffff:127.0.0.1"), &h, &t, &IpHeader::XForwardedFor),
            ip("1.2.3.4")
        );
        assert_eq!(parse_addr("1.2.3.4:80"), Some(ip("1.2.3.4")));
        assert_eq!(parse_addr("[::1]:80"), Some(ip("::1")));
        assert_eq!(parse_addr("unknown"), None);
    }
}
