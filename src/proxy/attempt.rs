//! Phase 5: the attempt loop. Pick a backend (preferring regions not yet failed in), send,
//! classify a failure once (`UpstreamFailure`), feed passive health, and retry while the
//! policy, the body plan and the retry budget allow.

use std::sync::OnceLock;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use http::uri::Uri;
use http::{Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;

use crate::health::BackendHealth;
use crate::observe::access_log::{Attempt, LogRecord};
use crate::observe::events::EventLog;
use crate::proxy::body::{InflightGuard, RespBody};
use crate::proxy::error::ProxyError;
use crate::proxy::headers::{self, X_GEOLB_REGION};
use crate::proxy::locate::Client;
use crate::proxy::plan::Prepared;
use crate::proxy::{ConnInfo, Edge, stats, tunnel};
use crate::route::select::{self, NoPick, Pick};
use crate::route::{
    Backend, BackendIdx, LbPolicy, MAX_ATTEMPTS, Region, Route, Service, Snapshot, SrIdx,
};
use crate::time::now_ms;
use crate::upstream::failure::{Side, UpstreamFailure};

/// How the attempts ended.
pub(crate) enum Outcome {
    /// A backend answered (any status): the response and the service region that served.
    Served(Response<RespBody>, SrIdx),
    /// No backend answered: the error the client gets.
    Failed(ProxyError),
}

/// What one attempt produced.
enum Step {
    Done(Outcome),
    /// Try another backend (the error to report if none is left).
    Retry(ProxyError),
    /// Stop trying; answer with this error.
    Stop(ProxyError),
    /// Nothing more can be sent (the streamed body is gone): answer with the last error.
    GiveUp,
}

/// Try backends until one answers or the retry policy, the body plan or the budget stops.
pub(crate) async fn run(
    req: &Prepared,
    conn: &ConnInfo,
    edge: &Edge,
    snap: &Snapshot,
    route: &Route,
    client: &Client,
    log: &mut LogRecord,
) -> Outcome {
    let svc = &*route.service;
    let mut tried = [BackendIdx(usize::MAX); MAX_ATTEMPTS];
    let mut last_err = ProxyError::NoHealthyBackend;
    // Every request earns the retry budget its share; every retry spends from it — except a
    // retry after a failure where nothing reached a backend (connect refused or timed out):
    // it adds no load anywhere, and a dead region must not turn into client errors while the
    // health checks catch up. Such retries are still bounded by `retry.attempts`.
    svc.retry_budget.deposit(now_ms());
    let mut free_retry = false;
    for attempt in 0..svc.retry.attempts {
        let pick = match select::pick(svc, &client.order, now_ms(), client.hash, &tried[..attempt])
        {
            Ok(p) => p,
            Err(NoPick::NoHealthy) if attempt == 0 => {
                return Outcome::Failed(ProxyError::NoHealthyBackend);
            }
            Err(_) => break,
        };
        if attempt > 0 {
            if !free_retry && !svc.retry_budget.try_withdraw(now_ms()) {
                svc.retry_budget_exhausted.increment(1);
                last_err = ProxyError::RetryBudget;
                break;
            }
            stats::retries(svc).increment(1);
        }
        tried[attempt] = pick.backend;
        let ctx = AttemptCtx {
            req,
            conn,
            edge,
            snap,
            route,
            client,
            pick,
            last: attempt + 1 == svc.retry.attempts,
        };
        match one(ctx, log).await {
            Step::Done(o) => return o,
            Step::Retry(e) => {
                free_retry = matches!(
                    e,
                    ProxyError::UpstreamConnect | ProxyError::UpstreamConnectTimeout
                );
                last_err = e;
            }
            Step::Stop(e) => return Outcome::Failed(e),
            Step::GiveUp => break,
        }
    }
    Outcome::Failed(last_err)
}

/// Everything one attempt reads.
struct AttemptCtx<'a> {
    req: &'a Prepared,
    conn: &'a ConnInfo,
    edge: &'a Edge,
    snap: &'a Snapshot,
    route: &'a Route,
    client: &'a Client,
    pick: Pick,
    /// No attempt follows this one.
    last: bool,
}

impl AttemptCtx<'_> {
    fn backend(&self) -> &Backend {
        &self.route.service.backends[self.pick.backend]
    }

    fn region(&self) -> &Region {
        let svc = &self.route.service;
        self.snap.table.region_of(svc, self.backend().region)
    }
}

/// Send the request to the picked backend once.
async fn one(cx: AttemptCtx<'_>, log: &mut LogRecord) -> Step {
    let svc = &*cx.route.service;
    let settings = &cx.snap.settings;
    let backend = cx.backend();
    let Some(body) = cx.req.plan.body(settings) else {
        // A streamed body already went to an earlier backend: it cannot go to another.
        return Step::GiveUp;
    };
    let uri = Uri::builder()
        .scheme(backend.scheme.clone())
        .authority(backend.authority.clone())
        .path_and_query(cx.req.path_and_query.clone())
        .build();
    let Ok(uri) = uri else {
        return Step::Stop(ProxyError::BadRequest("invalid request target"));
    };
    let mut up = Request::new(body);
    *up.method_mut() = cx.req.parts.method.clone();
    *up.uri_mut() = uri;
    *up.headers_mut() = cx.req.parts.headers.clone();
    up.headers_mut()
        .insert(&X_GEOLB_REGION, cx.region().header.clone());
    if !settings.preserve_host || !up.headers().contains_key(header::HOST) {
        up.headers_mut()
            .insert(header::HOST, backend.host_header.clone());
    }
    let guard = InflightGuard::new(backend.health.clone());
    // The backend's response clock starts once the request body is fully sent: a slow
    // upload is the client's business (see timeouts.request_body), not the backend's. The
    // latency that `lb = "peak_ewma"` balances on is measured from the same moment.
    let start =
        (svc.lb == LbPolicy::PeakEwma || svc.passive.latency_factor > 0.0).then(Instant::now);
    let body_done = OnceLock::new();
    let body_sent = async {
        if let Some(slot) = cx.req.plan.slot() {
            slot.sent().await;
            if start.is_some() {
                let _ = body_done.set(Instant::now());
            }
        }
        tokio::time::sleep(settings.timeouts.upstream_response_header).await;
    };
    let sent = tokio::select! {
        r = svc.client.request(up) => r.map_err(|e| UpstreamFailure::of(&e, cx.req.plan.slot())),
        () = body_sent => Err(UpstreamFailure::RESPONSE_TIMEOUT),
    };
    if let Some(start) = start {
        record_latency(&cx, &sent, body_done.get().copied().unwrap_or(start));
    }
    match sent {
        Ok(resp) => answered(&cx, resp, guard, log),
        Err(f) => {
            drop(guard);
            failed(&cx, f, log)
        }
    }
}

/// Feed the backend's peak-EWMA latency: the time to response headers, or the whole wait
/// when they timed out. Other failures carry no latency (a refused connect is fast, not good).
fn record_latency<T>(cx: &AttemptCtx<'_>, sent: &Result<T, UpstreamFailure>, since: Instant) {
    if matches!(sent, Ok(_) | Err(UpstreamFailure::RESPONSE_TIMEOUT)) {
        let svc = &*cx.route.service;
        let us = since.elapsed().as_secs_f64() * 1e6;
        let now = now_ms();
        cx.backend()
            .health
            .observe_latency(us, now, svc.ewma_decay_ms);
        if svc.passive.latency_factor > 0.0 {
            latency_outlier(svc, cx.pick.backend, now, &cx.edge.events);
        }
    }
}

/// Most backends of a region the latency-outlier median looks at.
const MEDIAN_OF: usize = 64;

/// Eject `b` through the passive path (region cap included) once its latency estimate has
/// stayed above `passive.latency_factor` × the median of its region's available backends for
/// `passive.latency_window`. Needs three measured backends; allocation-free.
fn latency_outlier(svc: &Service, b: BackendIdx, now: u64, events: &EventLog) {
    let backend = &svc.backends[b];
    let decay = svc.ewma_decay_ms;
    let mut est = [0.0f64; MEDIAN_OF];
    let mut n = 0;
    for &i in svc.regions[backend.region].backends.iter() {
        let h = &svc.backends[i].health;
        let e = h.latency_estimate(now, decay);
        if n < MEDIAN_OF && e > 0.0 && h.is_available(now) {
            est[n] = e;
            n += 1;
        }
    }
    if n < 3 {
        return;
    }
    let (_, &mut median, _) = est[..n].select_nth_unstable_by(n / 2, f64::total_cmp);
    let mine = backend.health.latency_estimate(now, decay);
    let slow = mine > svc.passive.latency_factor * median;
    if backend
        .health
        .observe_latency_outlier(slow, now, svc.passive.latency_window_ms)
    {
        eject_capped(svc, b, events, "latency outlier", |h, may| {
            h.eject_latency_outlier(&svc.passive, may)
        });
    }
}

/// A backend answered: retry on a configured status, else hand the response on.
fn answered(
    cx: &AttemptCtx<'_>,
    mut resp: Response<Incoming>,
    guard: InflightGuard,
    log: &mut LogRecord,
) -> Step {
    let svc = &*cx.route.service;
    let backend = cx.backend();
    let region = cx.region();
    let status = resp.status();
    let retry_status = cx.req.idempotent
        && cx.req.plan.replayable()
        && !cx.last
        && svc.retry.on_status.contains(&status.as_u16());
    if status.is_server_error() && svc.passive.on_5xx {
        passive_failure(svc, cx.pick.backend, &cx.edge.events);
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
        return Step::Retry(ProxyError::UpstreamReset);
    }
    let sr = backend.region;
    if cx.pick.position > 0 {
        stats::spillover(
            cx.route,
            &cx.snap.table.regions,
            svc,
            cx.client.order.idx[0],
            sr,
        );
    }
    svc.regions[sr].served.fetch_add(1, Relaxed);
    log.region = Some(region.name.clone());
    log.backend = Some(backend.name.clone());
    let settings = &cx.snap.settings;
    let mut out = finish_response(&mut resp, settings.response_region, &region.header);
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = cx.req.client_upgrade.as_ref() {
            let upstream = hyper::upgrade::on(&mut resp);
            tunnel::spawn_tunnel(
                cx.edge,
                client.clone(),
                upstream,
                cx.conn.permit.clone(),
                settings.timeouts.tunnel_idle,
            );
        }
    }
    *out.body_mut() = RespBody::Upstream {
        inner: resp.into_body(),
        guard: Some(guard),
        activity: None,
        log: None,
    };
    Step::Done(Outcome::Served(out, sr))
}

/// An attempt failed: record it, blame the backend only for its own failures, and say
/// whether another backend may be tried.
fn failed(cx: &AttemptCtx<'_>, f: UpstreamFailure, log: &mut LogRecord) -> Step {
    let svc = &*cx.route.service;
    let backend = cx.backend();
    let e = ProxyError::from(f);
    log.attempts.push(Attempt {
        backend: backend.name.clone(),
        region: cx.region().name.clone(),
        outcome: 0,
        error: Some(e.code()),
    });
    stats::upstream_error(svc, backend, e);
    if f.client_body() {
        if let Some(cut) = cx.req.plan.slot().and_then(|s| s.cut()) {
            cx.edge.hygiene.body_cut[cut as usize - 1].increment(1);
        }
        return Step::Stop(e);
    }
    if f.side == Side::Backend {
        passive_failure(svc, cx.pick.backend, &cx.edge.events);
    }
    if svc
        .retry
        .allows(f, cx.req.idempotent, cx.req.plan.replayable())
    {
        Step::Retry(e)
    } else {
        Step::Stop(e)
    }
}

/// Record a passive failure, respecting the region's ejection cap.
fn passive_failure(svc: &Service, b: BackendIdx, events: &EventLog) {
    eject_capped(svc, b, events, "passive detection", |h, may| {
        h.observe_failure(&svc.passive, may)
    });
}

/// Run `eject` (given whether the region's ejection cap allows one more) under the region's
/// ejection lock; log and record an event when it ejected the backend.
fn eject_capped(
    svc: &Service,
    b: BackendIdx,
    events: &EventLog,
    why: &str,
    eject: impl FnOnce(&BackendHealth, bool) -> bool,
) {
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
    if eject(&backend.health, ejected < cap) {
        tracing::warn!(service = %svc.name, backend = %backend.name, "backend ejected ({why})");
        events.push(format!(
            "service {}: backend {} ejected ({why})",
            svc.name, backend.name
        ));
    }
}

/// Copy the upstream response head, minus hop-by-hop headers (kept for 101).
fn finish_response(
    resp: &mut Response<Incoming>,
    add_region: bool,
    region: &http::HeaderValue,
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
