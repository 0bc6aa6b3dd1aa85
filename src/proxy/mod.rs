//! The one `async fn` per request: client IP → geo → route → select → upstream, with bounded
//! failover, header hygiene and passive health feedback.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::observe::access_log::LogRecord;
use crate::proxy::body::RespBody;
use crate::proxy::error::ProxyError;
use crate::route::{RouteIdx, Snapshot, SrIdx};

pub(crate) mod attempt;
pub(crate) mod body;
pub(crate) mod conn;
pub(crate) mod data;
pub(crate) mod edge;
pub(crate) mod error;
pub mod headers;
pub(crate) mod locate;
pub(crate) mod path;
pub(crate) mod plan;
pub(crate) mod stats;
pub(crate) mod target;
pub(crate) mod tunnel;

pub use conn::ListenerKind;
pub(crate) use conn::{ActivityGuard, ConnInfo, TlsConnInfo};
pub use edge::Edge;

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
    if let Some(r) = route.and_then(|i| snap.table.routes.get(i.0)) {
        // One handle per service region, then one for "none" (answered by geolb).
        let none = r.metrics.len() - 1;
        let m = &r.metrics[region.map_or(none, |sr| sr.0.min(none))];
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

/// A served request (response, route index, serving service region) or an error (and the
/// route, when one matched).
type Routed = Result<(Response<RespBody>, RouteIdx, SrIdx), (ProxyError, Option<RouteIdx>)>;

/// The request pipeline, as named phases: find the route, locate the client, plan the body,
/// rewrite the headers, then try backends until one answers or the policy says stop.
async fn route_request(
    req: Request<Incoming>,
    conn: &ConnInfo,
    edge: &Edge,
    snap: &Snapshot,
    log: &mut LogRecord,
) -> Routed {
    let mut req = req;
    let hygiene = &snap.settings.hygiene;
    if headers::via_contains(req.headers(), &hygiene.via_name) {
        edge.hygiene.loops.increment(1);
        return Err((ProxyError::LoopDetected, None));
    }
    if hygiene.normalize_path {
        path::apply(&mut req, &edge.hygiene).map_err(|e| (e, None))?;
    }
    let target = target::resolve(&req, conn, snap, log).map_err(|e| (e, None))?;
    let route = &snap.table.routes[target.route];
    let err = |e: ProxyError| (e, Some(target.route));
    let mut client = locate::locate(&req, conn, edge, snap, route, log);
    let data_plan = data::plan(&req, route, &mut client).await.map_err(err)?;
    let mut req = plan::Prepared::new(req, &snap.settings, &route.service, &edge.hygiene)
        .await
        .map_err(err)?;
    plan::rewrite_headers(&mut req, conn, &snap.settings, &target, client.country);
    match attempt::run(&req, conn, edge, snap, route, &client, log).await {
        attempt::Outcome::Served(mut resp, sr) => {
            data::finish(data_plan, route, conn, Some((&mut resp, sr)));
            Ok((resp, target.route, sr))
        }
        attempt::Outcome::Failed(e) => {
            data::finish(data_plan, route, conn, None);
            Err(err(e))
        }
    }
}
