//! What the data path knows about a client connection: its peer, source, TLS facts, and
//! the activity count that drives the keep-alive idle timer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use http::HeaderValue;

use crate::time::now_ms;
use crate::tls::CertSet;

/// Which public listener a socket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// The TLS listener.
    Https,
    /// Plain HTTP; serves or redirects per the live `listeners.http.mode`.
    Http,
    /// The admin listener.
    Admin,
}

impl ListenerKind {
    /// The listener's name in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            ListenerKind::Https => "https",
            ListenerKind::Http => "http",
            ListenerKind::Admin => "admin",
        }
    }
}

/// Facts about the client connection a request arrived on.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    /// TCP peer.
    pub peer: SocketAddr,
    /// The PROXY-protocol source when present, else the peer's address.
    pub source: IpAddr,
    /// `source` as a header value (for `X-Forwarded-For`), formatted once.
    pub source_value: HeaderValue,
    /// The listener's port as a header value (for `X-Forwarded-Port`), formatted once.
    pub port_value: HeaderValue,
    pub tls: Option<TlsConnInfo>,
    /// Requests in flight on this connection, for the idle timer.
    pub activity: ConnActivity,
    /// `geolb_requests_active{listener}`.
    pub requests_active: metrics::Gauge,
    /// The listener's connection slot, held while the connection (or its tunnel) lives.
    pub permit: Arc<tokio::sync::OwnedSemaphorePermit>,
}

/// Requests in flight on a connection (until their response body ends) and when the last
/// one finished, in `now_ms()`.
#[derive(Debug)]
pub(crate) struct ConnActivity {
    active: std::sync::atomic::AtomicU32,
    last_ms: std::sync::atomic::AtomicU64,
}

impl ConnActivity {
    /// A connection that opened now.
    pub(crate) fn new() -> Self {
        ConnActivity {
            active: 0.into(),
            last_ms: now_ms().into(),
        }
    }
}

impl Default for ConnActivity {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnInfo {
    /// A connection accepted on `listener` from `peer` (`source` after any PROXY header).
    pub(crate) fn new(
        peer: SocketAddr,
        source: IpAddr,
        local_port: u16,
        permit: Arc<tokio::sync::OwnedSemaphorePermit>,
        listener: ListenerKind,
        tls: Option<TlsConnInfo>,
    ) -> ConnInfo {
        ConnInfo {
            peer,
            source,
            source_value: crate::proxy::headers::ip_value(source),
            port_value: HeaderValue::from(local_port),
            tls,
            activity: ConnActivity::new(),
            requests_active: metrics::gauge!(
                crate::observe::metrics::REQUESTS_ACTIVE,
                "listener" => listener.label()
            ),
            permit,
        }
    }

    /// No request in flight and none finished within `idle`.
    pub(crate) fn is_idle_for(&self, idle: std::time::Duration) -> bool {
        let a = &self.activity;
        a.active.load(Relaxed) == 0
            && now_ms().saturating_sub(a.last_ms.load(Relaxed)) >= idle.as_millis() as u64
    }

    pub(crate) fn begin(&self) {
        self.activity.active.fetch_add(1, Relaxed);
        self.requests_active.increment(1.0);
    }

    pub(crate) fn end(&self) {
        self.activity.last_ms.store(now_ms(), Relaxed);
        self.activity.active.fetch_sub(1, Relaxed);
        self.requests_active.decrement(1.0);
    }
}

/// Ends a request's activity on its connection when dropped (with the response body).
#[derive(Debug)]
pub(crate) struct ActivityGuard(pub(crate) Arc<ConnInfo>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.end();
    }
}

#[derive(Debug)]
pub(crate) struct TlsConnInfo {
    pub certs: Arc<CertSet>,
    /// Which certificate this connection was served.
    pub cert_idx: usize,
    pub version: &'static str,
    pub alpn: &'static str,
    /// The SNI name the client sent (lowercase), if any.
    pub sni: Option<Box<str>>,
}
