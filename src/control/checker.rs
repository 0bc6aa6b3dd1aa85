//! Active health checks: one task per (service, backend), jittered, faster while unhealthy,
//! cancelled when the backend leaves the configuration or its check changes.

use std::collections::HashMap;
use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, Request, Uri, header};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::dbprobe::DbProbeTasks;
use crate::health::db::DbRole;
use crate::health::{BackendHealth, BackendKey};
use crate::observe::events::EventLog;
use crate::route::select::rand_f64;
use crate::route::{CheckKind, CheckSpec, RoutingTable};
use crate::time::unix_ms;
use crate::upstream::body::ReqBody;
use crate::upstream::{PoolKey, UpstreamClient};

/// What a running probe was started with, and its cancel token.
type Running = (
    CheckSpec,
    PoolKey,
    Option<(HeaderName, HeaderName)>,
    CancellationToken,
);

/// Running probe tasks by backend identity, and the database probes.
pub(crate) struct Checker {
    /// Probe tasks by backend identity, with what they were started with.
    running: HashMap<BackendKey, Running>,
    /// Database probes (`[services.NAME.data] databases`), reconciled alongside.
    databases: DbProbeTasks,
    events: Arc<EventLog>,
}

struct Target {
    /// Health-answer headers carrying the database role and lag (services with a data layer).
    report: Option<(HeaderName, HeaderName)>,
    service: Arc<str>,
    backend: Arc<str>,
    scheme: Scheme,
    authority: Authority,
    client: UpstreamClient,
    health: Arc<BackendHealth>,
}

impl Checker {
    pub(crate) fn new(events: Arc<EventLog>) -> Self {
        Checker {
            running: HashMap::new(),
            databases: DbProbeTasks::new(events.clone()),
            events,
        }
    }

    /// Start probes for new backends, restart changed ones, stop removed ones; the same for
    /// database probes.
    pub(crate) fn reconcile(
        &mut self,
        table: &RoutingTable,
        tasks: &TaskTracker,
        parent: &CancellationToken,
    ) {
        self.databases.reconcile(table, tasks, parent);
        let mut wanted: HashMap<BackendKey, (CheckSpec, PoolKey, Target)> = HashMap::new();
        for svc in table.services.iter() {
            let Some(spec) = &svc.check else { continue };
            for b in svc.backends.iter() {
                let key = BackendKey::new(&svc.name, &b.name);
                let target = Target {
                    report: svc
                        .data
                        .as_ref()
                        .map(|d| (d.role_header.clone(), d.lag_header.clone())),
                    service: svc.name.clone(),
                    backend: b.name.clone(),
                    scheme: b.scheme.clone(),
                    authority: b.authority.clone(),
                    client: svc.client.clone(),
                    health: b.health.clone(),
                };
                wanted.insert(key, (spec.clone(), svc.pool_key.clone(), target));
            }
        }
        // A probe restarts when its check or its connection pool changed (so it never keeps
        // an old pool, and that pool's connections, alive).
        self.running.retain(|key, (spec, client, report, token)| {
            let keep = wanted
                .get(key)
                .is_some_and(|(s, c, t)| s == spec && c == client && t.report == *report);
            if !keep {
                token.cancel();
            }
            keep
        });
        for (key, (spec, client, target)) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let token = parent.child_token();
            let report = target.report.clone();
            tasks.spawn(probe_loop(
                spec.clone(),
                target,
                token.clone(),
                self.events.clone(),
            ));
            self.running.insert(key, (spec, client, report, token));
        }
    }
}

async fn probe_loop(spec: CheckSpec, t: Target, cancel: CancellationToken, events: Arc<EventLog>) {
    // Spread the first probes over one interval so checks never synchronise.
    let mut wait = spec.interval.mul_f64(rand_f64());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return,
        }
        let ok = tokio::select! {
            ok = probe(&spec, &t) => ok,
            _ = cancel.cancelled() => return,
        };
        if let Some(up) = t.health.observe_check(ok, spec.rise, spec.fall) {
            // Held writes wait for a primary region to become available.
            crate::health::db::notify_changed();
            if up {
                tracing::info!(service = %t.service, backend = %t.backend, "backend is healthy");
            } else {
                tracing::warn!(service = %t.service, backend = %t.backend, "backend is unhealthy");
            }
            let state = if up { "healthy" } else { "unhealthy" };
            events.push(format!(
                "service {}: backend {} is {state} (active check)",
                t.service, t.backend
            ));
        }
        let base = if t.health.is_up() {
            spec.interval
        } else {
            spec.unhealthy_interval
        };
        wait = base.mul_f64(0.85 + 0.3 * rand_f64());
    }
}

/// Record the database role and lag a health answer reports (`X-Db-Role: primary|replica`,
/// `X-Db-Replica-Lag: 1.25` seconds). A failed check or a missing role forgets the report.
fn record_db(t: &Target, h: &HeaderMap, role: &HeaderName, lag: &HeaderName, ok: bool) {
    let role_v = h
        .get(role)
        .and_then(|v| v.to_str().ok())
        .map_or(DbRole::Unknown, DbRole::parse);
    if !ok || role_v == DbRole::Unknown {
        t.health.db.clear();
        return;
    }
    let lag_ms = h
        .get(lag)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|l| l.is_finite() && *l >= 0.0 && *l < 1e9)
        .map(|l| (l * 1000.0).round() as u64);
    if t.health.db.record(role_v, lag_ms, unix_ms()) {
        tracing::info!(service = %t.service, backend = %t.backend, role = role_v.as_str(), "backend reports a new database role");
    }
}

async fn probe(spec: &CheckSpec, t: &Target) -> bool {
    match &spec.kind {
        CheckKind::Tcp => {
            let addr = t.authority.as_str().to_owned();
            matches!(
                tokio::time::timeout(spec.timeout, tokio::net::TcpStream::connect(addr)).await,
                Ok(Ok(_))
            )
        }
        CheckKind::Http {
            method,
            path,
            host,
            expect,
        } => {
            let Ok(pq) = PathAndQuery::try_from(path.as_str()) else {
                return false;
            };
            let Ok(uri) = Uri::builder()
                .scheme(t.scheme.clone())
                .authority(t.authority.clone())
                .path_and_query(pq)
                .build()
            else {
                return false;
            };
            let host = host.as_deref().unwrap_or(t.authority.as_str());
            let Ok(req) = Request::builder()
                .method(method.clone())
                .uri(uri)
                .header(header::HOST, host)
                .header(header::USER_AGENT, "geolb-health-check")
                .body(ReqBody::Empty)
            else {
                return false;
            };
            match tokio::time::timeout(spec.timeout, t.client.request(req)).await {
                Ok(Ok(resp)) => {
                    let s = resp.status().as_u16();
                    let ok = expect.iter().any(|(a, b)| (*a..=*b).contains(&s));
                    if let Some((role, lag)) = &t.report {
                        record_db(t, resp.headers(), role, lag, ok);
                    }
                    // Drain nothing: dropping the body closes or returns the connection.
                    ok
                }
                _ => false,
            }
        }
    }
}
