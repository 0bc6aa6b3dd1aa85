//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/status` (JSON or HTML),
//! `/explain`, and `POST /reload`. Optional bearer token (required for all but `/healthz`).

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use metrics::SharedString;
use serde_json::json;
use tokio::net::TcpListener;

use crate::control::explain;
use crate::control::shared::Shared;
use crate::observe::metrics::{
    BACKEND_EJECTED, BACKEND_INFLIGHT, BACKEND_UP, DATA_SPLIT_BRAIN, PRIMARY_REGION, REGION_HEALTH,
    REGION_REPLICA_LAG, REGION_STATE, REGION_TRAFFIC_SHARE,
};
use crate::route::Snapshot;
use crate::time::now_ms;
use crate::time::unix_now;

type AdminResp = Response<Full<Bytes>>;

/// [`serve`] as the boxed future `Shared` keeps a pointer to.
pub(crate) fn server(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: tokio_util::sync::CancellationToken,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(serve(listener, shared, stop))
}

/// Serve the admin listener until `stop` (moved) or hard shutdown: at most
/// `admin.max_connections` at a time (read when the listener starts; further connections wait
/// in the accept queue), each under the `[admin]` timeouts current when it was accepted.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: tokio_util::sync::CancellationToken,
) {
    let max = shared
        .edge
        .snapshot
        .load()
        .settings
        .admin_limits
        .max_connections;
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let Some((stream, _)) = crate::net::accept::next(&listener, &stop, "admin").await else {
            return;
        };
        let limits = shared.edge.snapshot.load().settings.admin_limits.clone();
        let shared2 = shared.clone();
        let hard = shared.edge.hard.clone();
        shared.background.spawn(async move {
            let handler = move |req| {
                let shared = shared2.clone();
                async move { route(req, &shared).await }
            };
            crate::control::admin_conn::serve(stream, limits, hard, handler).await;
            drop(permit);
        });
    }
}

fn text(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> AdminResp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_resp(status: StatusCode, v: &serde_json::Value) -> AdminResp {
    text(
        status,
        "application/json",
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )
}

fn query(q: &str, key: &str) -> Option<String> {
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn route(req: Request<Incoming>, shared: &Arc<Shared>) -> AdminResp {
    let path = req.uri().path();
    let snap = shared.edge.snapshot.load_full();
    // Liveness and readiness are open: peers' GeoDNS edge checks and cloud load balancers
    // probe them without the token (they say nothing but ready or not).
    if !matches!(path, "/healthz" | "/readyz") && !authorized(&req, &snap) {
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "401 Unauthorized (geolb admin)\n",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    match (req.method(), path) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => readyz(&snap),
        (&Method::GET, "/metrics") => {
            update_gauges(&snap);
            let handle = crate::observe::metrics::handle();
            handle.run_upkeep();
            text(StatusCode::OK, "text/plain; version=0.0.4", handle.render())
        }
        (&Method::GET, "/status") => status(&req, shared, &snap),
        (&Method::GET, "/config") => json_resp(
            StatusCode::OK,
            &json!(crate::control::config::diff::ConfigView::of(&snap.table)),
        ),
        (&Method::GET, "/explain") if query(req.uri().query().unwrap_or(""), "dns").is_some() => {
            dns_explain(req.uri().query().unwrap_or(""), shared)
        }
        (&Method::GET, "/explain") => explain_query(req.uri().query().unwrap_or(""), &snap),
        (&Method::POST, "/reload") => reload(shared).await,
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "404 Not Found (geolb admin: /metrics /healthz /readyz /status /explain /config POST /reload)\n",
        ),
    }
}

/// No token configured, or the request carries it as a bearer token.
fn authorized(req: &Request<Incoming>, snap: &Snapshot) -> bool {
    let Some(token) = &snap.settings.admin_token else {
        return true;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_eq(t.as_bytes(), token.as_bytes()))
}

/// Ready when some region of some service can serve.
fn readyz(snap: &Snapshot) -> AdminResp {
    let now = now_ms();
    let ready = snap.table.services.iter().any(|svc| {
        svc.srs()
            .any(|sr| crate::route::select::region_health(svc, sr, now) > 0.0)
    });
    if ready {
        text(StatusCode::OK, "text/plain", "ready\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: no region can serve\n",
        )
    }
}

/// Live state as JSON, or as the HTML page when the client asks for it.
fn status(req: &Request<Incoming>, shared: &Shared, snap: &Snapshot) -> AdminResp {
    let mut v = explain::status(snap);
    let reload = shared
        .reload_status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    v["reload"] = json!(reload);
    v["events"] = json!(shared.edge.events.recent());
    v["dns"] = match shared.dns.views.load().as_deref() {
        Some(view) => crate::dns::explain::status(&view.config, &view.snap),
        None => serde_json::Value::Null,
    };
    v["time"] = json!(unix_now());
    let wants_html = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if wants_html {
        text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::control::status_page::render(&v),
        )
    } else {
        json_resp(StatusCode::OK, &v)
    }
}

/// `/explain?ip=…&host=…&path=…`.
fn explain_query(q: &str, snap: &Snapshot) -> AdminResp {
    let Some(ip) = query(q, "ip").and_then(|s| s.parse::<IpAddr>().ok()) else {
        return json_resp(
            StatusCode::BAD_REQUEST,
            &json!({"error": "missing or invalid ?ip="}),
        );
    };
    let host = query(q, "host").unwrap_or_default();
    let path = query(q, "path").unwrap_or_else(|| "/".into());
    let method = match query(q, "method")
        .map(|m| http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()))
    {
        None => Method::GET,
        Some(Ok(m)) => m,
        Some(Err(_)) => {
            return json_resp(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid ?method="}),
            );
        }
    };
    let wrote_secs_ago = query(q, "wrote_secs_ago").and_then(|s| s.parse::<f64>().ok());
    let query = explain::Query {
        ip,
        host: &host,
        path: &path,
        method,
        wrote_secs_ago,
    };
    json_resp(StatusCode::OK, &explain::explain_query(snap, &query))
}

/// `/explain?dns=NAME&ip=…[&subnet=ADDR/LEN][&qtype=AAAA]`: what DNS would answer.
fn dns_explain(q: &str, shared: &Shared) -> AdminResp {
    let Some(ip) = query(q, "ip").and_then(|s| s.parse::<IpAddr>().ok()) else {
        return json_resp(
            StatusCode::BAD_REQUEST,
            &json!({"error": "missing or invalid ?ip="}),
        );
    };
    let subnet = match query(q, "subnet").map(|s| crate::dns::explain::parse_subnet(&s)) {
        None => None,
        Some(Some(s)) => Some(s),
        Some(None) => {
            return json_resp(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid ?subnet= (ADDRESS/PREFIX)"}),
            );
        }
    };
    let Some(view) = shared.dns.views.load_full() else {
        return json_resp(
            StatusCode::NOT_FOUND,
            &json!({"error": "DNS is not configured ([dns] in routes.toml)"}),
        );
    };
    let name = query(q, "dns").unwrap_or_default();
    let aaaa = query(q, "qtype").is_some_and(|t| t.eq_ignore_ascii_case("aaaa"));
    let dq = crate::dns::explain::DnsQuery {
        name: &name,
        ip,
        subnet,
        aaaa,
    };
    json_resp(
        StatusCode::OK,
        &crate::dns::explain::explain(&view.config, &view.snap, &dq),
    )
}

/// `POST /reload`: the same path as a file change or SIGHUP. The reload runs as a task of
/// its own, so a client that goes away (or overruns `admin.request`) does not cancel it.
async fn reload(shared: &Arc<Shared>) -> AdminResp {
    let sh = shared.clone();
    let done = shared.background.spawn(async move { sh.reload().await });
    let Ok(result) = done.await else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "reload task failed\n",
        );
    };
    match result {
        Ok(summary) => json_resp(
            StatusCode::OK,
            &json!({"result": "ok", "summary": summary, "generation": shared.edge.snapshot.load().generation}),
        ),
        Err(e) => json_resp(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"result": "error", "errors": e.0.iter().map(|x| x.to_string()).collect::<Vec<_>>()}),
        ),
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refresh state gauges from the live snapshot just before rendering.
fn update_gauges(snap: &Snapshot) {
    let now = now_ms();
    for svc in snap.table.services.iter() {
        let s = SharedString::from_shared(svc.name.clone());
        if let Some(policy) = &svc.data {
            data_gauges(snap, svc, policy, &s, now);
        }
        for (sr, r) in svc.srs().zip(svc.regions.iter()) {
            let region = SharedString::from_shared(snap.table.regions[r.region].name.clone());
            metrics::gauge!(REGION_HEALTH, "service" => s.clone(), "region" => region.clone())
                .set(crate::route::select::region_health(svc, sr, now));
            let state = crate::control::explain::region_state(svc, sr, now);
            for st in ["healthy", "spilling", "recovering", "down"] {
                metrics::gauge!(REGION_STATE, "service" => s.clone(), "region" => region.clone(), "state" => st)
                    .set(if st == state { 1.0 } else { 0.0 });
            }
            let total: u64 = svc
                .regions
                .iter()
                .map(|x| x.served.load(std::sync::atomic::Ordering::Relaxed))
                .sum();
            let served = r.served.load(std::sync::atomic::Ordering::Relaxed);
            metrics::gauge!(REGION_TRAFFIC_SHARE, "service" => s.clone(), "region" => region.clone())
                .set(if total > 0 { served as f64 / total as f64 } else { 0.0 });
            for &b in r.backends.iter() {
                let be = &svc.backends[b];
                let labels = [
                    ("service", s.clone()),
                    ("region", region.clone()),
                    ("backend", SharedString::from_shared(be.name.clone())),
                ];
                let lv: Vec<metrics::Label> = labels
                    .iter()
                    .map(|(k, v)| metrics::Label::new(*k, v.clone()))
                    .collect();
                metrics::gauge!(BACKEND_UP, lv.clone()).set(if be.health.is_available(now) {
                    1.0
                } else {
                    0.0
                });
                metrics::gauge!(BACKEND_EJECTED, lv.clone()).set(if be.health.is_ejected(now) {
                    1.0
                } else {
                    0.0
                });
                metrics::gauge!(BACKEND_INFLIGHT, lv).set(f64::from(
                    be.health
                        .inflight
                        .load(std::sync::atomic::Ordering::Relaxed),
                ));
            }
        }
    }
}

/// Primary, split brain and replica lag of a service with a data layer.
fn data_gauges(
    snap: &Snapshot,
    svc: &crate::route::Service,
    policy: &crate::route::data::DataPolicy,
    s: &SharedString,
    now: u64,
) {
    use crate::route::data::{self, Primary};
    let primary = data::primary(svc, policy, now);
    metrics::gauge!(DATA_SPLIT_BRAIN, "service" => s.clone()).set(
        if primary == Primary::SplitBrain {
            1.0
        } else {
            0.0
        },
    );
    for (sr, r) in svc.srs().zip(svc.regions.iter()) {
        let region = SharedString::from_shared(snap.table.regions[r.region].name.clone());
        let lag = match data::region_view(svc, sr, now).lag_ms {
            None => f64::NAN,
            // Replication stopped or broken: infinitely behind.
            Some(crate::health::db::LAG_UNBOUNDED_MS) => f64::INFINITY,
            Some(l) => l as f64 / 1000.0,
        };
        metrics::gauge!(REGION_REPLICA_LAG, "service" => s.clone(), "region" => region.clone())
            .set(lag);
        metrics::gauge!(PRIMARY_REGION, "service" => s.clone(), "region" => region).set(
            if primary == Primary::One(sr) {
                1.0
            } else {
                0.0
            },
        );
    }
}
