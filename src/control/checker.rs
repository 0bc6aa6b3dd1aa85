//! Active health checks: one task per (service, backend), jittered, faster while unhealthy,
//! cancelled when the backend leaves the configuration or its check changes.

use std::collections::HashMap;
use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri, header};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::BackendHealth;
use crate::observe::events::EventLog;
use crate::route::select::rand_f64;
use crate::route::{CheckKind, CheckSpec, RoutingTable};
use crate::upstream::body::ReqBody;
use crate::upstream::{PoolKey, UpstreamClient};

/// Running probe tasks by backend identity.
pub(crate) struct Checker {
    /// Probe tasks by backend identity, with what they were started with.
    running: HashMap<String, (CheckSpec, PoolKey, CancellationToken)>,
    events: Arc<EventLog>,
}

struct Target {
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
            events,
        }
    }

    /// Start probes for new backends, restart changed ones, stop removed ones.
    pub(crate) fn reconcile(
        &mut self,
        table: &RoutingTable,
        tasks: &TaskTracker,
        parent: &CancellationToken,
    ) {
        let mut wanted: HashMap<String, (CheckSpec, PoolKey, Target)> = HashMap::new();
        for svc in table.services.iter() {
            let Some(spec) = &svc.check else { continue };
            for b in svc.backends.iter() {
                let key = format!("{}|{}", svc.name, b.name);
                let target = Target {
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
        self.running.retain(|key, (spec, client, token)| {
            let keep = wanted
                .get(key)
                .is_some_and(|(s, c, _)| s == spec && c == client);
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
            tasks.spawn(probe_loop(
                spec.clone(),
                target,
                token.clone(),
                self.events.clone(),
            ));
            self.running.insert(key, (spec, client, token));
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
                    // Drain nothing: dropping the body closes or returns the connection.
                    expect.iter().any(|(a, b)| (*a..=*b).contains(&s))
                }
                _ => false,
            }
        }
    }
}
