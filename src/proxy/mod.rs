//! The one `async fn` per request: client IP → geo → route → select → upstream, with bounded
//! failover, header hygiene and passive health feedback.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Incoming};

use crate::observe::access_log::{Attempt, LogRecord};
use crate::proxy::body::{InflightGuard, RespBody};
use crate::proxy::error::ProxyError;
use crate::route::Snapshot;
use crate::route::client_ip;
use crate::route::select::{self, NoPick};
use crate::route::{HashKey, MAX_ATTEMPTS, Service};
use crate::time::now_ms;
use crate::upstream;
use crate::upstream::body::{BodySlot, ReqBody, buffer_small};
use headers::{X_FORWARDED_HOST, X_FORWARDED_PROTO, X_GEOLB_COUNTRY, X_GEOLB_REGION};

pub(crate) mod body;
pub(crate) mod conn;
pub(crate) mod edge;
pub(crate) mod error;
pub mod headers;
pub(crate) mod stats;
pub(crate) mod tunnel;

pub use conn::ListenerKind;
pub(crate) use conn::{ActivityGuard, ConnInfo, TlsConnInfo};
pub use edge::Edge;

static VIA_11: HeaderValue = HeaderValue::from_static("1.1 geolb");
static VIA_2: HeaderValue = HeaderValue::from_static("2 geolb");
static VIA_10: HeaderValue = HeaderValue::from_static("1.0 geolb");
static HTTPS: HeaderValue = HeaderValue::from_static("https");
static HTTP: HeaderValue = HeaderValue::from_static("http");

/// Serve one request. Never fails: errors become small geolb responses.
pub(crate) async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    shared: Arc<Edge>,
) -> Result<Response<RespBody>, std::convert::Infallible> {
    let started = Instant::now();
    conn.begin();
    let activity = ActivityGuard(conn.clone());
    let snap = shared.snapshot.load_full();
    let mut log = LogRecord::start(
        &req,
        conn.source,
        conn.tls.as_ref().map(|t| (t.version, t.alpn)),
        snap.settings.access_log.enabled,
    );
    let result = match snap.settings.timeouts.request {
        Some(limit) => {
            match tokio::time::timeout(limit, route_request(req, &conn, &shared, &snap, &mut log))
                .await
            {
                Ok(r) => r,
                Err(_) => Err((ProxyError::RequestTimeout, None)),
            }
        }
        None => route_request(req, &conn, &shared, &snap, &mut log).await,
    };
    let (resp, route, region) = match result {
        Ok((resp, route, region)) => (resp, Some(route), Some(region)),
        Err((e, route)) => {
            log.error = Some(e.code());
            (e.response(), route, None)
        }
    };
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    if let Some(r) = route.and_then(|i| snap.table.routes.get(i)) {
        let m = &r.metrics[region
            .unwrap_or(r.metrics.len() - 1)
            .min(r.metrics.len() - 1)];
        m.requests[crate::observe::metrics::class_index(status)].increment(1);
        m.duration.record(elapsed.as_secs_f64());
    }
    log.status = status;
    log.duration = elapsed;
    let mut resp = resp;
    match resp.body_mut() {
        RespBody::Upstream {
            activity: slot,
            log: log_slot,
            ..
        } => {
            // Both end when the response body does.
            *slot = Some(activity);
            *log_slot = shared
                .access_log
                .pending(&snap.settings.access_log, log, started);
        }
        RespBody::Full(b) => {
            log.bytes_out = Some(b.as_ref().map_or(0, |b| b.len() as u64));
            shared.access_log.send(&snap.settings.access_log, log);
        }
    }
    Ok(resp)
}

type Routed = Result<(Response<RespBody>, usize, usize), (ProxyError, Option<usize>)>;

/// How the request body can be sent (again).
enum BodyPlan {
    Empty,
    Buffered(Bytes),
    Stream(Arc<BodySlot>),
}

async fn route_request(
    mut req: Request<Incoming>,
    conn: &ConnInfo,
    shared: &Edge,
    snap: &Snapshot,
    log: &mut LogRecord,
) -> Routed {
    let settings = &snap.settings;
    // geolb is a reverse proxy: no tunnels for clients, no TRACE reflection (as nginx).
    if req.method() == Method::CONNECT || req.method() == Method::TRACE {
        return Err((ProxyError::MethodNotAllowed, None));
    }
    // Host: the URI authority (h2 :authority or absolute-form) wins over Host (RFC 9112 §3.2.2).
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_hdr = hosts.next();
    if hosts.next().is_some() {
        return Err((ProxyError::BadRequest("more than one Host header"), None));
    }
    let raw_host = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => match host_hdr.map(|h| h.to_str()) {
            Some(Ok(h)) => h,
            Some(Err(_)) => return Err((ProxyError::BadRequest("invalid Host header"), None)),
            // HTTP/1.0 may omit Host: over TLS the SNI name stands in for it (so the 421
            // check still applies); in plain HTTP only a catch-all route can match.
            None if req.version() == Version::HTTP_10 => conn
                .tls
                .as_ref()
                .and_then(|t| t.sni.as_deref())
                .unwrap_or(""),
            None => return Err((ProxyError::BadRequest("missing Host header"), None)),
        },
    };
    let mut buf = [0u8; 256];
    let Some(host) = crate::route::normalize_host(raw_host, &mut buf) else {
        return Err((ProxyError::BadRequest("invalid host"), None));
    };
    let orig_host = match host_hdr {
        Some(h) if req.uri().authority().is_none() => Some(h.clone()),
        _ => HeaderValue::from_str(raw_host).ok(),
    };
    log.set_host(host);
    if let Some(tls) = &conn.tls {
        if !host.is_empty() && !tls.certs.covers(tls.cert_idx, host) {
            return Err((ProxyError::Misdirected, None));
        }
    }
    let Some(route_idx) = snap.table.match_route_idx(host, req.uri().path()) else {
        return Err((ProxyError::NoRoute, None));
    };
    let route = &snap.table.routes[route_idx];
    let svc = &route.service;
    log.route = Some(route.name.clone());
    let err = |e: ProxyError| (e, Some(route_idx));

    // Where is the client?
    let ip = client_ip::resolve(
        conn.source,
        req.headers(),
        &settings.trusted,
        &settings.ip_header,
    );
    log.client_ip = ip;
    let loc = snap.geo.locate(ip);
    match &loc {
        Some(l) if l.source == crate::geo::LocSource::Record => {
            shared.geo_metrics.city.increment(1)
        }
        Some(_) => shared.geo_metrics.country.increment(1),
        None => shared.geo_metrics.unknown.increment(1),
    }
    let country = loc.as_ref().and_then(|l| l.country_str());
    shared.countries.record(country);
    log.country = country;
    let order = select::order_regions(route, &snap.table.regions, ip, loc.as_ref());
    let hash = match &svc.hash_key {
        HashKey::ClientIp => select::hash_ip(ip),
        // Without the key, fall back to the client address rather than one shared hash.
        HashKey::Header(h) => req
            .headers()
            .get(h)
            .map_or_else(|| select::hash_ip(ip), |v| select::hash_bytes(v.as_bytes())),
        HashKey::Cookie(name) => {
            cookie(req.headers(), name).map_or_else(|| select::hash_ip(ip), select::hash_bytes)
        }
    };

    // Body limits and replay plan.
    let content_length = req.body().size_hint().exact();
    if let (Some(limit), Some(len)) = (
        settings.limits.max_body_bytes,
        req.body().size_hint().exact(),
    ) {
        if len > limit {
            return Err(err(ProxyError::BodyTooLarge));
        }
    }
    let upgrade = req.version() == Version::HTTP_11 && headers::wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
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
            Ok(Err(_)) => return Err(err(ProxyError::ClientBody)),
            Err(_) => return Err(err(ProxyError::ClientBodyTimeout)),
        }
    } else {
        BodyPlan::Stream(BodySlot::new(body))
    };

    // Request headers, shared by every attempt.
    let version = parts.version;
    if headers::strip_hop_by_hop(&mut parts.headers, upgrade) && !upgrade {
        headers::accept_trailers(&mut parts.headers);
    }
    headers::strip_geolb(&mut parts.headers);
    if version == Version::HTTP_2 {
        // RFC 9113 §8.2.3: split cookie fields are joined before going to HTTP/1.1.
        headers::join_cookies(&mut parts.headers);
    }
    // A body of unknown length must be sent chunked; hyper would otherwise send GET/HEAD
    // bodies as empty. (Only for HTTP/1.1 backends; h2 frames bodies itself.)
    if matches!(plan, BodyPlan::Stream(_)) && content_length.is_none() && !svc.pool_key.http2_alpn {
        parts.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    headers::append_xff_value(&mut parts.headers, &conn.source_value);
    let h = &mut parts.headers;
    h.insert(
        &X_FORWARDED_PROTO,
        if conn.tls.is_some() {
            HTTPS.clone()
        } else {
            HTTP.clone()
        },
    );
    if let Some(v) = &orig_host {
        h.insert(&X_FORWARDED_HOST, v.clone());
    }
    h.append(
        header::VIA,
        match version {
            Version::HTTP_2 => VIA_2.clone(),
            Version::HTTP_10 => VIA_10.clone(),
            _ => VIA_11.clone(),
        },
    );
    if let Some(c) = country {
        h.insert(&X_GEOLB_COUNTRY, HeaderValue::from_static(c));
    }
    if settings.preserve_host {
        if let Some(v) = orig_host {
            h.insert(header::HOST, v);
        }
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));

    // Attempts.
    let mut tried = [usize::MAX; MAX_ATTEMPTS];
    let mut last_err = ProxyError::NoHealthyBackend;
    for attempt in 0..svc.retry.attempts {
        let pick = match select::pick(svc, &order, now_ms(), hash, &tried[..attempt]) {
            Ok(p) => p,
            Err(NoPick::NoHealthy) if attempt == 0 => {
                return Err(err(ProxyError::NoHealthyBackend));
            }
            Err(_) => break,
        };
        if attempt > 0 {
            let active = svc.active.load(Relaxed);
            let allowed = (f64::from(active) * svc.retry.budget) as u32;
            if svc.retries_active.load(Relaxed) >= allowed.max(svc.retry.min_retries) {
                last_err = ProxyError::RetryBudget;
                break;
            }
            stats::retries(svc).increment(1);
        }
        tried[attempt] = pick.backend;
        let backend = &svc.backends[pick.backend];
        let sr = backend.region;
        let region = &snap.table.regions[svc.regions[sr].region];
        let body = match &plan {
            BodyPlan::Empty => ReqBody::Empty,
            BodyPlan::Buffered(b) => ReqBody::Full(Some(b.clone())),
            BodyPlan::Stream(slot) if slot.started() => break,
            BodyPlan::Stream(slot) => ReqBody::stream(
                slot.clone(),
                settings.limits.max_body_bytes,
                settings.timeouts.request_body,
            ),
        };
        let uri = Uri::builder()
            .scheme(backend.scheme.clone())
            .authority(backend.authority.clone())
            .path_and_query(path_and_query.clone())
            .build();
        let Ok(uri) = uri else {
            return Err(err(ProxyError::BadRequest("invalid request target")));
        };
        let mut up = Request::new(body);
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri;
        *up.headers_mut() = parts.headers.clone();
        up.headers_mut()
            .insert(&X_GEOLB_REGION, region.header.clone());
        if !settings.preserve_host || !up.headers().contains_key(header::HOST) {
            up.headers_mut()
                .insert(header::HOST, backend.host_header.clone());
        }
        let guard = InflightGuard::new(backend.health.clone(), svc.clone());
        let _retry = (attempt > 0).then(|| RetryGuard::new(svc));
        // The backend's response clock starts once the request body is fully sent: a slow
        // upload is the client's business (see timeouts.request_body), not the backend's.
        let body_sent = async {
            if let BodyPlan::Stream(slot) = &plan {
                slot.sent().await;
            }
            tokio::time::sleep(settings.timeouts.upstream_response_header).await;
        };
        let sent = tokio::select! {
            r = svc.client.request(up) => Ok(r),
            () = body_sent => Err(()),
        };
        let replayable = match &plan {
            BodyPlan::Stream(slot) => !slot.started(),
            _ => true,
        };
        let mut sent_err_source: Option<bool> = None;
        let outcome = match sent {
            Ok(Ok(mut resp)) => {
                let status = resp.status();
                let retry_status = idempotent
                    && replayable
                    && attempt + 1 < svc.retry.attempts
                    && svc.retry.on_status.contains(&status.as_u16());
                if status.is_server_error() && svc.passive.on_5xx {
                    passive_failure(svc, pick.backend, &shared.events);
                } else {
                    backend.health.observe_success();
                }
                log.attempts.push(Attempt {
                    backend: backend.name.clone(),
                    region: region.name.clone(),
                    outcome: status.as_u16(),
                    error: None,
                });
                if retry_status {
                    last_err = ProxyError::UpstreamReset;
                    continue;
                }
                if pick.position > 0 {
                    stats::spillover(route, &snap.table.regions, svc, order.idx[0], sr);
                }
                svc.regions[sr].served.fetch_add(1, Relaxed);
                log.region = Some(region.name.clone());
                log.backend = Some(backend.name.clone());
                let mut out_resp =
                    finish_response(&mut resp, settings.response_region, &region.header);
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client) = client_upgrade {
                        let upstream_up = hyper::upgrade::on(&mut resp);
                        tunnel::spawn_tunnel(
                            shared,
                            client,
                            upstream_up,
                            conn.permit.clone(),
                            settings.timeouts.tunnel_idle,
                        );
                    }
                }
                *out_resp.body_mut() = RespBody::Upstream {
                    inner: resp.into_body(),
                    guard: Some(guard),
                    activity: None,
                    log: None,
                };
                return Ok((out_resp, route_idx, sr));
            }
            Ok(Err(e)) => {
                sent_err_source = Some(upstream::body_side(&e));
                upstream::classify(&e)
            }
            Err(_) => ProxyError::UpstreamTimeout,
        };
        drop(guard);
        log.attempts.push(Attempt {
            backend: backend.name.clone(),
            region: region.name.clone(),
            outcome: 0,
            error: Some(outcome.code()),
        });
        stats::upstream_error(svc, backend, outcome);
        if outcome == ProxyError::BodyTooLarge {
            return Err(err(outcome));
        }
        if let BodyPlan::Stream(slot) = &plan {
            if slot.over_limit() {
                return Err(err(ProxyError::BodyTooLarge));
            }
            if slot.timed_out() {
                return Err(err(ProxyError::ClientBodyTimeout));
            }
            if slot.client_failed() {
                return Err(err(ProxyError::ClientBody));
            }
        }
        // Failures caused by the request body (not the backend) do not count against it.
        if !matches!(sent_err_source, Some(true)) {
            passive_failure(svc, pick.backend, &shared.events);
        }
        last_err = outcome;
        let may_retry = match outcome {
            ProxyError::UpstreamConnect | ProxyError::UpstreamConnectTimeout => {
                svc.retry.on_connect && replayable
            }
            ProxyError::UpstreamTimeout => svc.retry.on_timeout && idempotent && replayable,
            _ => svc.retry.on_reset && idempotent && replayable,
        };
        if !may_retry {
            break;
        }
    }
    Err(err(last_err))
}

/// Counts a retry in flight for the service's retry budget; released however the attempt ends.
struct RetryGuard<'a>(&'a Service);

impl<'a> RetryGuard<'a> {
    fn new(svc: &'a Service) -> Self {
        svc.retries_active.fetch_add(1, Relaxed);
        RetryGuard(svc)
    }
}

impl Drop for RetryGuard<'_> {
    fn drop(&mut self) {
        self.0.retries_active.fetch_sub(1, Relaxed);
    }
}

/// Record a passive failure, respecting the region's ejection cap.
fn passive_failure(svc: &Service, b: usize, events: &crate::observe::events::EventLog) {
    let backend = &svc.backends[b];
    let region = &svc.regions[backend.region];
    let _serial = region.eject_lock.lock().unwrap_or_else(|e| e.into_inner());
    let now = now_ms();
    // Only ejections of actively healthy backends count against the cap: passive detection
    // alone may not empty a region, but a backend the checker already failed costs nothing.
    let ejected = region
        .backends
        .iter()
        .filter(|&&i| svc.backends[i].health.is_ejected(now) && svc.backends[i].health.is_up())
        .count();
    // As Envoy: the percentage caps ejections, but one backend may always be ejected.
    let pct = svc.passive.max_ejection_percent as usize;
    let cap = if pct == 0 {
        0
    } else {
        (region.backends.len() * pct / 100).max(1)
    };
    if backend.health.observe_failure(&svc.passive, ejected < cap) {
        tracing::warn!(service = %svc.name, backend = %backend.name, "backend ejected by passive detection");
        events.push(format!(
            "service {}: backend {} ejected (passive detection)",
            svc.name, backend.name
        ));
    }
}

/// Copy the upstream response head, minus hop-by-hop headers (kept for 101).
fn finish_response(
    resp: &mut Response<Incoming>,
    add_region: bool,
    region: &HeaderValue,
) -> Response<RespBody> {
    let mut out = Response::new(RespBody::empty());
    *out.status_mut() = resp.status();
    *out.version_mut() = Version::HTTP_11;
    let mut h = std::mem::take(resp.headers_mut());
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // RFC 9112 §6.3: with Transfer-Encoding present, Content-Length is not the length of
        // the decoded body; drop it and let the client connection frame the body itself.
        if h.contains_key(header::TRANSFER_ENCODING) {
            h.remove(header::CONTENT_LENGTH);
        }
        let _ = headers::strip_hop_by_hop(&mut h, false);
    }
    if add_region {
        h.insert(&X_GEOLB_REGION, region.clone());
    }
    *out.headers_mut() = h;
    out
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The value of cookie `name`, without allocating.
fn cookie<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    h.get_all(header::COOKIE).iter().find_map(|v| {
        v.to_str().ok()?.split(';').find_map(|kv| {
            let (k, val) = kv.trim().split_once('=')?;
            (k == name).then_some(val.as_bytes())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_lookup() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sid=xyz; b=2"),
        );
        assert_eq!(cookie(&h, "sid"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&h, "zz"), None);
    }
}
