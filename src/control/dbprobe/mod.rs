//! Database probes: one task per (service, region) with a configured database asks it, every
//! `probe_interval`, whether it is the primary and how far behind it is, and writes the answer
//! into the region's `RegionDb` (`probe`, `probe_ok`), which routing reads lock-free.
//!
//! Each task keeps one long-lived connection, reconnects with capped exponential backoff, and
//! runs connect and every query under `probe_timeout`, so a server that accepts TCP and never
//! answers cannot hang it. A probe never elects a primary by itself: an unreachable database
//! only makes its region ineligible (`probe_ok = false`); the primary is whatever a reachable
//! database says. Tasks are started, restarted (only when their endpoint changed) and stopped
//! by `reconcile` on start and on every reload, and end on hard shutdown.

mod mysql;
mod pg;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::db::{DbRole, LAG_UNBOUNDED_MS, ProbeError, RegionDb};
use crate::health::dbspec::{DbEndpoint, DbKind};
use crate::observe::events::EventLog;
use crate::observe::metrics::DbProbeMetrics;
use crate::route::RoutingTable;
use crate::route::select::rand_f64;
use crate::time::unix_ms;

/// Longest wait between reconnect attempts (unless the interval itself is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What one probe read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reading {
    role: DbRole,
    /// Replica lag in ms (`LAG_UNBOUNDED_MS` when replication is stopped or broken).
    lag_ms: Option<u64>,
}

/// Why one probe failed, with a message for operators (never holds a password).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    why: ProbeError,
    message: String,
}

impl Failure {
    fn new(why: ProbeError, message: impl Into<String>) -> Failure {
        Failure {
            why,
            message: message.into(),
        }
    }

    fn timeout(what: &str, after: Duration) -> Failure {
        Failure::new(
            ProbeError::Timeout,
            format!("{what} did not finish within {after:?} (probe_timeout)"),
        )
    }
}

/// Seconds (as reported by a database) → ms of lag; negative (clock skew) is 0, anything not
/// finite or absurd is unbounded.
fn secs_to_lag_ms(secs: f64) -> u64 {
    if !secs.is_finite() || secs > 1e12 {
        return LAG_UNBOUNDED_MS;
    }
    (secs.max(0.0) * 1000.0).round() as u64
}

/// Connection phase, for classifying errors (a peer that garbles the handshake is not a
/// database; one that garbles a query answer is a protocol error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connect,
    Query,
}

/// An open connection to the probed database.
enum Conn {
    Pg(pg::PgConn),
    My(mysql::MyConn),
}

impl Conn {
    async fn open(p: &Probe) -> Result<Conn, Failure> {
        match p.endpoint.kind {
            DbKind::Postgres => pg::connect(&p.endpoint, &p.tasks, &p.cancel)
                .await
                .map(Conn::Pg),
            DbKind::Mysql => mysql::connect(&p.endpoint).await.map(Conn::My),
        }
    }

    async fn read(&mut self, ep: &DbEndpoint) -> Result<Reading, Failure> {
        match self {
            Conn::Pg(c) => c.read(ep).await,
            Conn::My(c) => c.read(ep).await,
        }
    }

    /// Close politely, never waiting longer than `timeout`.
    async fn close(self, timeout: Duration) {
        match self {
            Conn::Pg(c) => drop(c),
            Conn::My(c) => c.close(timeout).await,
        }
    }
}

/// Running probe tasks by `service|region`.
pub(crate) struct DbProbeTasks {
    running: HashMap<String, Running>,
    events: Arc<EventLog>,
}

struct Running {
    endpoint: Arc<DbEndpoint>,
    db: Arc<RegionDb>,
    token: CancellationToken,
}

/// A probe the configuration asks for.
struct Wanted {
    service: Arc<str>,
    region: Arc<str>,
    endpoint: Arc<DbEndpoint>,
    db: Arc<RegionDb>,
}

impl DbProbeTasks {
    pub(crate) fn new(events: Arc<EventLog>) -> Self {
        DbProbeTasks {
            running: HashMap::new(),
            events,
        }
    }

    /// Start probes for newly configured databases, restart those whose endpoint changed
    /// (URL, credentials, TLS, heartbeat, interval or timeout), stop removed ones.
    pub(crate) fn reconcile(
        &mut self,
        table: &RoutingTable,
        tasks: &TaskTracker,
        parent: &CancellationToken,
    ) {
        let mut wanted = wanted(table);
        self.running.retain(|key, r| {
            let keep = wanted
                .get(key)
                .is_some_and(|w| w.endpoint == r.endpoint && Arc::ptr_eq(&w.db, &r.db));
            if !keep {
                r.token.cancel();
                if !wanted.contains_key(key) {
                    // Nothing probes this region any more: a later probe starts afresh.
                    r.db.probe_stopped();
                }
            }
            keep
        });
        wanted.retain(|key, _| !self.running.contains_key(key));
        for (key, w) in wanted {
            let token = parent.child_token();
            let probe = Probe {
                metrics: DbProbeMetrics::new(
                    &w.service,
                    &w.region,
                    ProbeError::ALL.map(ProbeError::as_str),
                ),
                service: w.service,
                region: w.region,
                endpoint: w.endpoint.clone(),
                db: w.db.clone(),
                events: self.events.clone(),
                tasks: tasks.clone(),
                cancel: token.clone(),
            };
            tasks.spawn(probe.run());
            self.running.insert(
                key,
                Running {
                    endpoint: w.endpoint,
                    db: w.db,
                    token,
                },
            );
        }
    }
}

/// Every configured database endpoint by `service|region`.
fn wanted(table: &RoutingTable) -> HashMap<String, Wanted> {
    let mut out = HashMap::new();
    for svc in table.services.iter() {
        let Some(policy) = &svc.data else { continue };
        let Some(probes) = &policy.probes else {
            continue;
        };
        for (i, ep) in probes.regions.iter().enumerate() {
            let Some(ep) = ep else { continue };
            let region = table.regions[svc.regions[i].region].name.clone();
            out.insert(
                format!("{}|{region}", svc.name),
                Wanted {
                    service: svc.name.clone(),
                    region,
                    endpoint: ep.clone(),
                    db: policy.regions[i].clone(),
                },
            );
        }
    }
    out
}

/// One probe task's state.
struct Probe {
    service: Arc<str>,
    region: Arc<str>,
    endpoint: Arc<DbEndpoint>,
    db: Arc<RegionDb>,
    metrics: DbProbeMetrics,
    events: Arc<EventLog>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

/// What the last probe found, to log changes only (not every interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Never,
    Ok(DbRole),
    Failed(ProbeError),
}

impl Probe {
    async fn run(self) {
        let mut conn: Option<Conn> = None;
        let mut seen = Seen::Never;
        let mut failures: u32 = 0;
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                r = self.once(&mut conn) => r,
                _ = self.cancel.cancelled() => break,
            };
            self.metrics.seconds.record(started.elapsed().as_secs_f64());
            if self.cancel.is_cancelled() {
                break;
            }
            let interval = self.endpoint.interval;
            let wait = match result {
                Ok(r) => {
                    failures = 0;
                    self.db.probe_succeeded(r.role, r.lag_ms, unix_ms());
                    seen = self.log_ok(seen, r);
                    interval.saturating_sub(started.elapsed())
                }
                Err(f) => {
                    failures = failures.saturating_add(1);
                    self.db.probe_failed(f.why, &f.message);
                    let i = ProbeError::ALL.iter().position(|e| *e == f.why);
                    if let Some(i) = i {
                        self.metrics.errors[i].increment(1);
                    }
                    seen = self.log_failure(seen, &f);
                    if conn.is_some() {
                        interval.saturating_sub(started.elapsed())
                    } else {
                        backoff(interval, failures)
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.cancel.cancelled() => break,
            }
        }
        if let Some(c) = conn {
            c.close(self.endpoint.timeout).await;
        }
    }

    /// One probe: connect when needed, then read role and lag. A reused connection that
    /// fails for another reason than a timeout or a query error (the server or a proxy closed
    /// it) gets one fresh connection before the probe counts as failed.
    async fn once(&self, conn: &mut Option<Conn>) -> Result<Reading, Failure> {
        let reused = conn.is_some();
        let first = self.read_on(conn).await;
        match first {
            Err(f) if reused && conn.is_none() && f.why != ProbeError::Timeout => {
                self.read_on(conn).await
            }
            r => r,
        }
    }

    /// Read on `conn`, opening it first when there is none; a failure other than a query
    /// error closes it.
    async fn read_on(&self, conn: &mut Option<Conn>) -> Result<Reading, Failure> {
        let ep = &self.endpoint;
        let c = match conn {
            Some(c) => c,
            None => conn.insert(Conn::open(self).await?),
        };
        let r = c.read(ep).await;
        if let Err(f) = &r {
            if f.why != ProbeError::Query {
                if let Some(c) = conn.take() {
                    c.close(ep.timeout).await;
                }
            }
        }
        r
    }

    fn log_ok(&self, seen: Seen, r: Reading) -> Seen {
        let now = Seen::Ok(r.role);
        if now != seen {
            let lag = match r.lag_ms {
                Some(LAG_UNBOUNDED_MS) => "unbounded (replication stopped)".to_owned(),
                Some(l) => format!("{:.3}s", l as f64 / 1000.0),
                None => "unknown".to_owned(),
            };
            tracing::info!(
                service = %self.service,
                region = %self.region,
                source = self.endpoint.kind.as_str(),
                role = r.role.as_str(),
                lag = %lag,
                "database probe ok"
            );
            self.events.push(format!(
                "service {}: region {} database ({}) is reachable: {}",
                self.service,
                self.region,
                self.endpoint.kind.as_str(),
                r.role.as_str()
            ));
        }
        now
    }

    fn log_failure(&self, seen: Seen, f: &Failure) -> Seen {
        let now = Seen::Failed(f.why);
        if now != seen {
            tracing::warn!(
                service = %self.service,
                region = %self.region,
                source = self.endpoint.kind.as_str(),
                reason = f.why.as_str(),
                error = %f.message,
                "database probe failed: the region is not eligible for writes until it answers"
            );
            self.events.push(format!(
                "service {}: region {} database ({}) probe failed ({}): {}",
                self.service,
                self.region,
                self.endpoint.kind.as_str(),
                f.why.as_str(),
                f.message
            ));
        }
        now
    }
}

/// Wait before reconnect attempt `failures + 1`: one interval, doubling, capped at
/// `MAX_BACKOFF` (or the interval when that is longer), ±10 % jitter.
fn backoff(interval: Duration, failures: u32) -> Duration {
    let cap = MAX_BACKOFF.max(interval);
    let exp = failures.saturating_sub(1).min(16);
    let base = interval.saturating_mul(1u32 << exp).min(cap);
    base.mul_f64(0.9 + 0.2 * rand_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_interval_and_is_capped() {
        let s = Duration::from_secs(1);
        let near = |d: Duration, want: f64| (d.as_secs_f64() - want).abs() <= want * 0.11;
        assert!(near(backoff(s, 1), 1.0));
        assert!(near(backoff(s, 2), 2.0));
        assert!(near(backoff(s, 4), 8.0));
        assert!(near(backoff(s, 9), 10.0));
        assert!(near(backoff(s, u32::MAX), 10.0));
        assert!(near(backoff(Duration::from_secs(30), 5), 30.0));
    }

    #[test]
    fn seconds_become_lag() {
        assert_eq!(secs_to_lag_ms(1.2345), 1235);
        assert_eq!(secs_to_lag_ms(-3.0), 0);
        assert_eq!(secs_to_lag_ms(f64::NAN), LAG_UNBOUNDED_MS);
        assert_eq!(secs_to_lag_ms(f64::INFINITY), LAG_UNBOUNDED_MS);
    }
}
