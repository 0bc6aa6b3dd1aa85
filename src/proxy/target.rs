//! Phase 1: which route serves this request. Method policy, the Host (URI authority over
//! `Host`, SNI for HTTP/1.0 without one), the certificate check (421) and the route match.

use http::header::{self, HeaderValue};
use http::{Method, Request, Version};

use crate::observe::access_log::LogRecord;
use crate::proxy::ConnInfo;
use crate::proxy::error::ProxyError;
use crate::route::{RouteIdx, Snapshot, normalize_host};

/// The route a request matched and the host it named.
#[derive(Debug)]
pub(crate) struct Target {
    /// The route that matched.
    pub(crate) route: RouteIdx,
    /// The client's host as sent (for `X-Forwarded-Host` and `preserve_host`).
    pub(crate) orig_host: Option<HeaderValue>,
}

/// Resolve the request's host and route. Errors are answered before any routing work.
pub(crate) fn resolve<B>(
    req: &Request<B>,
    conn: &ConnInfo,
    snap: &Snapshot,
    log: &mut LogRecord,
) -> Result<Target, ProxyError> {
    // geolb is a reverse proxy: no tunnels for clients, no TRACE reflection (as nginx).
    if req.method() == Method::CONNECT || req.method() == Method::TRACE {
        return Err(ProxyError::MethodNotAllowed);
    }
    // Host: the URI authority (h2 :authority or absolute-form) wins over Host (RFC 9112 §3.2.2).
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_hdr = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    let raw_host = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => match host_hdr.map(|h| h.to_str()) {
            Some(Ok(h)) => h,
            Some(Err(_)) => return Err(ProxyError::BadRequest("invalid Host header")),
            // HTTP/1.0 may omit Host: over TLS the SNI name stands in for it (so the 421
            // check still applies); in plain HTTP only a catch-all route can match.
            None if req.version() == Version::HTTP_10 => conn
                .tls
                .as_ref()
                .and_then(|t| t.sni.as_deref())
                .unwrap_or(""),
            None => return Err(ProxyError::BadRequest("missing Host header")),
        },
    };
    let mut buf = [0u8; 256];
    let Some(host) = normalize_host(raw_host, &mut buf) else {
        return Err(ProxyError::BadRequest("invalid host"));
    };
    let orig_host = match host_hdr {
        Some(h) if req.uri().authority().is_none() => Some(h.clone()),
        _ => HeaderValue::from_str(raw_host).ok(),
    };
    log.set_host(host);
    if let Some(tls) = &conn.tls {
        if !host.is_empty() && !tls.certs.covers(tls.cert_idx, host) {
            return Err(ProxyError::Misdirected);
        }
    }
    let Some(route) = snap.table.match_route_idx(host, req.uri().path()) else {
        return Err(ProxyError::NoRoute);
    };
    log.route = Some(snap.table.routes[route].name.clone());
    Ok(Target { route, orig_host })
}
