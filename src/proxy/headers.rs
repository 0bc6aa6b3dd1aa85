//! Header hygiene (RFC 9110 §7.6.1): hop-by-hop removal and forwarding headers.

use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Port`.
pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
/// `X-Real-IP`.
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `Forwarded` (RFC 7239).
pub static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// `X-Geolb-Region`: the region that served (to the backend, and optionally to the client).
pub static X_GEOLB_REGION: HeaderName = HeaderName::from_static("x-geolb-region");
/// `X-Geolb-Client-Country`: the client country geolb located (to the backend).
pub static X_GEOLB_COUNTRY: HeaderName = HeaderName::from_static("x-geolb-client-country");

/// Remove hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`,
/// `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`,
/// `Transfer-Encoding`, and `Upgrade` unless `keep_upgrade` (then `Connection: upgrade` stays).
/// `Trailer` is end-to-end (RFC 9110 §6.6.2) and stays: HTTP/1.1 sends only declared trailers.
/// Returns whether the removed `TE` accepted `trailers` (see [`accept_trailers`]).
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) -> bool {
    let trailers = h.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|c| c.trim().eq_ignore_ascii_case("trailers"))
            })
        })
    });
    if h.contains_key(header::CONNECTION) {
        // Collect the names Connection lists (rare path; tokens are short).
        let listed: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        for n in listed {
            h.remove(n);
        }
        h.remove(header::CONNECTION);
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(header::PROXY_AUTHENTICATE);
    h.remove(header::PROXY_AUTHORIZATION);
    h.remove(header::TE);
    h.remove(header::TRANSFER_ENCODING);
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
    trailers
}

/// For a request whose client accepts trailer fields: tell the backend so with `TE: trailers`.
/// geolb relays trailers, and gRPC backends require this header (RFC 9110 §10.1.4,
/// RFC 9113 §8.2.2). No `Connection: te` option goes with it: hyper's h2 client would take
/// that as an order to drop `TE` for h2 backends, and HTTP/1.1 servers honour `TE` without it
/// (as behind Envoy).
pub fn accept_trailers(h: &mut HeaderMap) {
    h.insert(header::TE, HeaderValue::from_static("trailers"));
}

/// Is this an HTTP/1.1 WebSocket upgrade (`Connection: upgrade` + `Upgrade: websocket`)?
/// Other protocols (notably `h2c`, which would open a raw tunnel past routing and header
/// hygiene) are not tunnelled: their Upgrade header is stripped like any hop-by-hop header.
pub fn wants_upgrade(h: &HeaderMap) -> bool {
    let mut upgrades = h.get_all(header::UPGRADE).iter();
    let websocket = match (upgrades.next(), upgrades.next()) {
        (Some(v), None) => v
            .to_str()
            .is_ok_and(|s| s.trim().eq_ignore_ascii_case("websocket")),
        _ => false,
    };
    websocket
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Join several `Cookie` fields into one, separated by "; " (RFC 9113 §8.2.3).
pub fn join_cookies(h: &mut HeaderMap) {
    let mut values = h.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in h.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(header::COOKIE, v);
    }
}

/// Append `peer` to `X-Forwarded-For` (one combined line), as nginx
/// `$proxy_add_x_forwarded_for` does.
pub fn append_xff(h: &mut HeaderMap, peer: IpAddr) {
    append_xff_value(h, &ip_value(peer));
}

/// An address as a header value (`192.0.2.1`, `2001:db8::1`); a connection builds its peer's
/// once.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut buf = BytesMut::with_capacity(48);
    use std::fmt::Write;
    let _ = write!(IoFmt(&mut buf), "{ip}");
    HeaderValue::from_maybe_shared(buf.freeze()).expect("an address is a valid header value")
}

/// [`append_xff`] with the peer already formatted by [`ip_value`]: without an incoming
/// `X-Forwarded-For` this allocates nothing.
pub fn append_xff_value(h: &mut HeaderMap, peer: &HeaderValue) {
    if !h.contains_key(&X_FORWARDED_FOR) {
        h.insert(&X_FORWARDED_FOR, peer.clone());
        return;
    }
    let mut buf = BytesMut::with_capacity(64);
    for v in h.get_all(&X_FORWARDED_FOR) {
        buf.put_slice(v.as_bytes());
        buf.put_slice(b", ");
    }
    buf.put_slice(peer.as_bytes());
    if let Ok(v) = HeaderValue::from_maybe_shared(buf.freeze()) {
        h.insert(&X_FORWARDED_FOR, v);
    }
}

struct IoFmt<'a>(&'a mut BytesMut);

impl std::fmt::Write for IoFmt<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

/// Remove the identity headers a client that is not a trusted proxy may have forged:
/// `X-Forwarded-Host/Proto/Port`, `X-Real-IP`, `Forwarded` and `extra` (the configured
/// single-value client-address header). geolb then sets its own. `X-Forwarded-For` stays and
/// gets the peer appended: its last entry is always the address geolb saw.
pub(crate) fn strip_untrusted_forwarding(h: &mut HeaderMap, extra: Option<&HeaderName>) -> bool {
    let mut removed = false;
    for n in [
        &X_FORWARDED_HOST,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_PORT,
        &X_REAL_IP,
        &FORWARDED,
    ]
    .into_iter()
    .chain(extra)
    {
        removed |= h.remove(n).is_some();
    }
    removed
}

/// Append an RFC 7239 `Forwarded` element for this hop: `for` the peer geolb received the
/// request from, `proto` and `host` as the client asked. (Opt-in; formats per request.)
pub(crate) fn append_forwarded(
    h: &mut HeaderMap,
    peer: IpAddr,
    tls: bool,
    host: Option<&HeaderValue>,
) {
    use std::fmt::Write as _;
    let mut v = String::with_capacity(96);
    let _ = match peer {
        IpAddr::V4(a) => write!(v, "for={a}"),
        IpAddr::V6(a) => write!(v, "for=\"[{a}]\""),
    };
    v.push_str(if tls { ";proto=https" } else { ";proto=http" });
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        if host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            let _ = write!(v, ";host=\"{host}\"");
        }
    }
    let joined = match h.get(&FORWARDED).and_then(|x| x.to_str().ok()) {
        Some(prev) => format!("{prev}, {v}"),
        None => v,
    };
    if let Ok(value) = HeaderValue::from_str(&joined) {
        h.insert(&FORWARDED, value);
    }
}

/// Does a `Via` header name this instance's pseudonym (the request has looped back)?
pub(crate) fn via_contains(h: &HeaderMap, pseudonym: &str) -> bool {
    h.get_all(header::VIA).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|hop| {
                // `received-protocol SP received-by [ SP comment ]`
                hop.split_whitespace()
                    .nth(1)
                    .is_some_and(|by| by.eq_ignore_ascii_case(pseudonym))
            })
        })
    })
}

/// Drop client-supplied `X-Geolb-*` headers so a client cannot forge geolb's decisions.
pub fn strip_geolb(h: &mut HeaderMap) {
    h.remove(&X_GEOLB_REGION);
    h.remove(&X_GEOLB_COUNTRY);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_loops_and_forwarded_elements() {
        let mut h = HeaderMap::new();
        h.append(
            header::VIA,
            HeaderValue::from_static("1.1 cdn, 1.1 edge-eu (geolb)"),
        );
        assert!(via_contains(&h, "EDGE-eu"));
        assert!(!via_contains(&h, "geolb"), "a comment is not a pseudonym");
        append_forwarded(
            &mut h,
            "2001:db8::1".parse().unwrap(),
            true,
            Some(&HeaderValue::from_static("a.test:8443")),
        );
        append_forwarded(&mut h, "192.0.2.1".parse().unwrap(), false, None);
        assert_eq!(
            h[&FORWARDED],
            "for=\"[2001:db8::1]\";proto=https;host=\"a.test:8443\", for=192.0.2.1;proto=http"
        );
        h.insert(&X_REAL_IP, HeaderValue::from_static("1.2.3.4"));
        assert!(strip_untrusted_forwarding(&mut h, None));
        assert!(h.get(&FORWARDED).is_none() && h.get(&X_REAL_IP).is_none());
    }

    #[test]
    fn removes_hop_by_hop_and_connection_listed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        assert!(strip_hop_by_hop(&mut h, false), "TE accepted trailers");
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn te_trailers_is_recognised_among_codings() {
        for (te, yes) in [
            ("trailers", true),
            ("gzip, Trailers", true),
            ("deflate;q=0.5, trailers;q=1", true),
            ("gzip", false),
            ("trailersx", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert("te", HeaderValue::from_str(te).unwrap());
            assert_eq!(strip_hop_by_hop(&mut h, false), yes, "{te}");
            assert!(h.is_empty());
        }
        let mut h = HeaderMap::new();
        assert!(!strip_hop_by_hop(&mut h, false));
        accept_trailers(&mut h);
        assert_eq!(h["te"], "trailers");
        assert!(!h.contains_key("connection"));
    }

    #[test]
    fn upgrade_is_kept_when_tunnelling() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
        let _ = strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn only_websocket_upgrades_are_tunnelled() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        assert!(!wants_upgrade(&h));
        h.insert("upgrade", HeaderValue::from_static("WebSocket"));
        assert!(wants_upgrade(&h));
    }

    #[test]
    fn cookies_are_joined() {
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append("cookie", HeaderValue::from_static("b=2"));
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2");
    }

    #[test]
    fn xff_appends_across_lines() {
        let mut h = HeaderMap::new();
        append_xff(&mut h, "192.0.2.1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        append_xff(&mut h, "2001:db8::1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 10.0.0.1, 2001:db8::1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }
}
