//! Probes of the addresses DNS answers: other regions' edges (`[dns] edge_check`: their
//! `/readyz`, or a TCP connect) and internal names' targets (a name's `check`: TCP). One task
//! per (address, probe), jittered; results go through the same rise/fall hysteresis as backend
//! checks into health state that survives reloads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dns::zone::{DnsConfig, Endpoint, NameKind, ProbeKind, ProbeSpec};
use crate::health::BackendHealth;
use crate::observe::events::EventLog;
use crate::route::select::rand_f64;

/// What a running probe was started with.
type Running = (ProbeSpec, Arc<BackendHealth>, CancellationToken);

/// Running probe tasks by (what, address).
pub(crate) struct Probes {
    running: HashMap<(Arc<str>, SocketAddr), Running>,
    events: Arc<EventLog>,
}

impl Probes {
    pub(crate) fn new(events: Arc<EventLog>) -> Probes {
        Probes {
            running: HashMap::new(),
            events,
        }
    }

    /// Start probes for new endpoints, restart changed ones, stop removed ones.
    pub(crate) fn reconcile(
        &mut self,
        cfg: Option<&DnsConfig>,
        tasks: &TaskTracker,
        parent: &CancellationToken,
    ) {
        let mut wanted: HashMap<(Arc<str>, SocketAddr), (ProbeSpec, Arc<BackendHealth>)> =
            HashMap::new();
        if let Some(cfg) = cfg {
            let mut add = |what: &Arc<str>, spec: &ProbeSpec, e: &Endpoint| {
                if let Some(addr) = e.check {
                    wanted.insert((what.clone(), addr), (spec.clone(), e.health.clone()));
                }
            };
            if let Some(spec) = &cfg.edge_check {
                let what: Arc<str> = "edge".into();
                for e in cfg.regions.iter().flat_map(|r| r.edges.iter()) {
                    add(&what, spec, e);
                }
            }
            for n in cfg.names.iter() {
                if let NameKind::Targets {
                    targets,
                    check: Some(spec),
                    ..
                } = &n.kind
                {
                    let what: Arc<str> = Arc::from(&*n.name);
                    for e in targets.iter().flat_map(|t| t.addrs.iter()) {
                        add(&what, spec, e);
                    }
                }
            }
        }
        self.running.retain(|key, (spec, health, token)| {
            let keep = wanted
                .get(key)
                .is_some_and(|(s, h)| s == spec && Arc::ptr_eq(h, health));
            if !keep {
                token.cancel();
            }
            keep
        });
        for (key, (spec, health)) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let token = parent.child_token();
            tasks.spawn(probe_loop(
                spec.clone(),
                key.clone(),
                health.clone(),
                token.clone(),
                self.events.clone(),
            ));
            self.running.insert(key, (spec, health, token));
        }
    }
}

async fn probe_loop(
    spec: ProbeSpec,
    (what, addr): (Arc<str>, SocketAddr),
    health: Arc<BackendHealth>,
    cancel: CancellationToken,
    events: Arc<EventLog>,
) {
    // Spread the first probes over one interval so they never synchronise.
    let mut wait = spec.interval.mul_f64(rand_f64());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return,
        }
        let ok = tokio::select! {
            ok = tokio::time::timeout(spec.timeout, probe(&spec.kind, addr)) => ok.unwrap_or(false),
            _ = cancel.cancelled() => return,
        };
        if let Some(up) = health.observe_check(ok, spec.rise, spec.fall) {
            let state = if up { "healthy" } else { "unhealthy" };
            tracing::info!(%addr, what = &*what, "dns {what} {addr} is {state}");
            events.push(format!("dns: {what} {addr} is {state} (probe)"));
        }
        wait = spec.interval.mul_f64(0.9 + 0.2 * rand_f64());
    }
}

async fn probe(kind: &ProbeKind, addr: SocketAddr) -> bool {
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let ProbeKind::Http { path } = kind else {
        return true;
    };
    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return false;
    };
    let conn = tokio::spawn(conn);
    let Ok(req) = Request::get(&**path)
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, "geolb-dns-edge-check")
        .body(Empty::<Bytes>::new())
    else {
        conn.abort();
        return false;
    };
    let ok = send
        .send_request(req)
        .await
        .is_ok_and(|r| r.status().is_success());
    conn.abort();
    ok
}
