//! Phases 3 and 4: how the request body can be sent (and re-sent), and the request head every
//! attempt sends: hop-by-hop hygiene, forwarding headers, `Via`, the client's country.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Version};
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;

use crate::observe::metrics::PathMetrics;
use crate::proxy::ConnInfo;
use crate::proxy::error::ProxyError;
use crate::proxy::headers::{
    self, X_FORWARDED_HOST, X_FORWARDED_PORT, X_FORWARDED_PROTO, X_GEOLB_COUNTRY,
};
use crate::proxy::target::Target;
use crate::route::client_ip::IpHeader;
use crate::route::{Service, Settings};
use crate::upstream::body::{BodyLimits, BodySlot, Cut, ReqBody, buffer_small};

static HTTPS: HeaderValue = HeaderValue::from_static("https");
static HTTP: HeaderValue = HeaderValue::from_static("http");

/// How the request body can be sent (again).
#[derive(Debug)]
pub(crate) enum BodyPlan {
    /// No body.
    Empty,
    /// Read whole up front: replayable on any attempt.
    Buffered(Bytes),
    /// Streamed from the client by the first attempt that polls it; not replayable after.
    Stream(Arc<BodySlot>),
}

impl BodyPlan {
    /// The body for the next attempt; `None` once a streamed body has been claimed.
    pub(crate) fn body(&self, s: &Settings) -> Option<ReqBody> {
        Some(match self {
            BodyPlan::Empty => ReqBody::Empty,
            BodyPlan::Buffered(b) => ReqBody::Full(Some(b.clone())),
            BodyPlan::Stream(slot) if slot.started() => return None,
            BodyPlan::Stream(slot) => ReqBody::stream(
                slot.clone(),
                BodyLimits {
                    max: s.limits.max_body_bytes,
                    idle: s.timeouts.request_body,
                    min_rate: s.limits.min_request_body_rate,
                    grace: s.timeouts.request_body_grace,
                    total: s.timeouts.request_body_total,
                },
            ),
        })
    }

    /// The body can still be sent to another backend.
    pub(crate) fn replayable(&self) -> bool {
        match self {
            BodyPlan::Stream(slot) => !slot.started(),
            _ => true,
        }
    }

    /// The streamed body's slot, when the body is streamed.
    pub(crate) fn slot(&self) -> Option<&BodySlot> {
        match self {
            BodyPlan::Stream(slot) => Some(slot),
            _ => None,
        }
    }
}

/// A request ready to be attempted: its head (rewritten once, cloned per attempt), its body
/// plan and, for a WebSocket upgrade, the client side of the upgrade.
pub(crate) struct Prepared {
    /// Method, URI, version and the rewritten headers.
    pub(crate) parts: Parts,
    /// How the body is sent.
    pub(crate) plan: BodyPlan,
    /// Safe to send twice (RFC 9110 §9.2.2).
    pub(crate) idempotent: bool,
    /// The client's side of a WebSocket upgrade.
    pub(crate) client_upgrade: Option<OnUpgrade>,
    /// Path and query sent to every backend.
    pub(crate) path_and_query: PathAndQuery,
    content_length: Option<u64>,
    h2_backend: bool,
}

impl Prepared {
    /// Check the body's declared size and decide how it is sent: small idempotent bodies are
    /// buffered so a retry can resend them, the rest stream.
    pub(crate) async fn new(
        mut req: Request<Incoming>,
        settings: &Settings,
        svc: &Service,
        m: &PathMetrics,
    ) -> Result<Prepared, ProxyError> {
        let content_length = req.body().size_hint().exact();
        if let (Some(limit), Some(len)) = (settings.limits.max_body_bytes, content_length) {
            if len > limit {
                return Err(ProxyError::BodyTooLarge);
            }
        }
        let upgrade = req.version() == Version::HTTP_11 && headers::wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let idempotent = is_idempotent(&parts.method);
        let plan = if body.is_end_stream() {
            BodyPlan::Empty
        } else if idempotent
            && svc.retry.attempts > 1
            && content_length.is_some_and(|l| l <= svc.retry.buffer_bytes)
        {
            let read = buffer_small(body, svc.retry.buffer_bytes);
            match tokio::time::timeout(settings.timeouts.request_body, read).await {
                Ok(Ok(b)) => BodyPlan::Buffered(b),
                Ok(Err(_)) => return Err(ProxyError::ClientBody),
                Err(_) => {
                    // The whole (small) body did not arrive within timeouts.request_body.
                    m.body_cut[Cut::Total as usize - 1].increment(1);
                    return Err(ProxyError::ClientBodyTimeout);
                }
            }
        } else {
            BodyPlan::Stream(BodySlot::new(body))
        };
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Ok(Prepared {
            parts,
            plan,
            idempotent,
            client_upgrade,
            path_and_query,
            content_length,
            h2_backend: svc.pool_key.http2_alpn,
        })
    }
}

/// Rewrite the request head once for every attempt: hop-by-hop headers out, client-sent
/// `X-Geolb-*` out, forwarding headers and `Via` in. A peer that is not a trusted proxy loses
/// every identity header it sent (`X-Forwarded-Host/-Proto/-Port`, `X-Real-IP`, `Forwarded`,
/// the configured single client-address header; `X-Forwarded-For` is appended to, so its last
/// entry is the peer); a trusted proxy's are kept and extended.
pub(crate) fn rewrite_headers(
    req: &mut Prepared,
    conn: &ConnInfo,
    settings: &Settings,
    target: &Target,
    country: Option<&'static str>,
) {
    let upgrade = req.client_upgrade.is_some();
    let version = req.parts.version;
    let h = &mut req.parts.headers;
    if headers::strip_hop_by_hop(h, upgrade) && !upgrade {
        headers::accept_trailers(h);
    }
    headers::strip_geolb(h);
    if version == Version::HTTP_2 {
        // RFC 9113 §8.2.3: split cookie fields are joined before going to HTTP/1.1.
        headers::join_cookies(h);
    }
    // A body of unknown length must be sent chunked; hyper would otherwise send GET/HEAD
    // bodies as empty. (Only for HTTP/1.1 backends; h2 frames bodies itself.)
    if matches!(req.plan, BodyPlan::Stream(_)) && req.content_length.is_none() && !req.h2_backend {
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    let trusted = settings.trusted.contains(conn.source);
    if !trusted {
        let extra = match &settings.ip_header {
            IpHeader::Single(name) => Some(name),
            _ => None,
        };
        headers::strip_untrusted_forwarding(h, extra);
    }
    forwarding(h, conn, settings, target, trusted);
    let via = match version {
        Version::HTTP_10 => &settings.hygiene.via[0],
        Version::HTTP_2 => &settings.hygiene.via[2],
        _ => &settings.hygiene.via[1],
    };
    h.append(header::VIA, via.clone());
    if let Some(c) = country {
        h.insert(&X_GEOLB_COUNTRY, HeaderValue::from_static(c));
    }
    if settings.preserve_host {
        if let Some(v) = &target.orig_host {
            h.insert(header::HOST, v.clone());
        }
    }
}

/// `X-Forwarded-For` (appended), `-Proto`, `-Host`, `-Port` (a trusted proxy's own values
/// are kept) and, when enabled, an RFC 7239 `Forwarded` element.
fn forwarding(
    h: &mut http::HeaderMap,
    conn: &ConnInfo,
    settings: &Settings,
    target: &Target,
    trusted: bool,
) {
    headers::append_xff_value(h, &conn.source_value);
    let proto = if conn.tls.is_some() { &HTTPS } else { &HTTP };
    if !trusted || !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(&X_FORWARDED_PROTO, proto.clone());
    }
    if let Some(v) = &target.orig_host {
        if !trusted || !h.contains_key(&X_FORWARDED_HOST) {
            h.insert(&X_FORWARDED_HOST, v.clone());
        }
    }
    if !trusted || !h.contains_key(&X_FORWARDED_PORT) {
        h.insert(&X_FORWARDED_PORT, conn.port_value.clone());
    }
    if settings.hygiene.forwarded {
        headers::append_forwarded(
            h,
            conn.source,
            conn.tls.is_some(),
            target.orig_host.as_ref(),
        );
    }
}

/// Safe to repeat (RFC 9110 §9.2.2).
pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}
