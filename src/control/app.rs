//! The running process: the published snapshot, state that survives reloads, listeners,
//! background tasks, reload and shutdown. `App::start` is what `main`, tests and benches call.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::checker::Checker;
use crate::control::config::{self, CompileCtx, Compiled, ConfigErrors};
use crate::geo::GeoDb;
use crate::health::{BackendHealth, HealthRegistry};
use crate::net::server;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::{
    CONFIG_GENERATION, CONFIG_LAST_RELOAD_SUCCESS, CONFIG_RELOADS_TOTAL, CountryCounters,
    GeoMetrics,
};
use crate::proxy::{Edge, ListenerKind};
use crate::route::{Settings, Snapshot, Summary, TlsState};
use crate::time::unix_now;
use crate::upstream::UpstreamPool;

/// Result of the last reload attempt, for `/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    /// `"ok"` or `"error"`; `None` before the first attempt.
    pub last_result: Option<&'static str>,
    /// The full error text of the last rejected reload.
    pub last_error: Option<String>,
    /// Unix seconds.
    pub last_success: Option<f64>,
    /// Unix seconds of the last attempt.
    pub last_attempt: Option<f64>,
}

/// Process-wide state: the data path's `Edge` plus what only the control path owns.
pub struct Shared {
    /// What every connection and request reads.
    pub edge: Arc<Edge>,
    /// Health state by backend identity; survives reloads.
    pub health: HealthRegistry,
    /// Upstream connection pools by key; survive reloads.
    pub pool: UpstreamPool,
    /// The configuration file being served.
    pub config_path: PathBuf,
    /// The last reload's outcome, for `/status`.
    pub reload_status: Mutex<ReloadStatus>,
    /// Background tasks (checkers, watcher, access log): outlive connection draining.
    pub background: TaskTracker,
    checker: Mutex<Checker>,
    listeners: Mutex<Vec<ListenerSlot>>,
    generation: AtomicU64,
    reload_lock: tokio::sync::Mutex<()>,
    embedded_geo: Mutex<Option<Arc<GeoDb>>>,
}

impl Shared {
    /// Read → parse → compile → swap. On error nothing changes and the error is recorded.
    pub async fn reload(self: &Arc<Self>) -> Result<Summary, ConfigErrors> {
        let _guard = self.reload_lock.lock().await;
        let now = unix_now();
        let path = self.config_path.clone();
        // Parsing, certificate and database loading block: keep them off the proxy's threads.
        let sh = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let ctx = CompileCtx {
                health: &sh.health,
                pool: &sh.pool,
            };
            config::load(&path, &ctx)
        })
        .await
        .unwrap_or_else(|e| Err(one_error(&self.config_path, format!("reload failed: {e}"))));
        let mut st = self.reload_status.lock().unwrap_or_else(|e| e.into_inner());
        st.last_attempt = Some(now);
        match result.and_then(|c| self.publish(c)) {
            Ok(summary) => {
                self.edge
                    .events
                    .push(format!("configuration reloaded: {summary}"));
                st.last_result = Some("ok");
                st.last_error = None;
                st.last_success = Some(now);
                metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => "ok").increment(1);
                metrics::gauge!(CONFIG_LAST_RELOAD_SUCCESS).set(now);
                Ok(summary)
            }
            Err(e) => {
                tracing::error!("configuration rejected, still serving the previous one:\n{e}");
                self.edge
                    .events
                    .push(format!("configuration rejected: {} error(s)", e.0.len()));
                st.last_result = Some("error");
                st.last_error = Some(e.to_string());
                metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => "error").increment(1);
                Err(e)
            }
        }
    }

    fn embedded_geo(&self) -> Result<Arc<GeoDb>, ConfigErrors> {
        let mut slot = self.embedded_geo.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = &*slot {
            return Ok(db.clone());
        }
        let db =
            Arc::new(GeoDb::embedded().map_err(|e| one_error(&self.config_path, e.to_string()))?);
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Publish a compiled configuration: bind moved listeners (before anything changes),
    /// swap the snapshot, start the moved listeners and stop the old ones, reconcile checks,
    /// mark backends that lost their checks up.
    fn publish(self: &Arc<Self>, mut c: Compiled) -> Result<Summary, ConfigErrors> {
        let old = self.edge.snapshot.load_full();
        let force_up = std::mem::take(&mut c.force_up);
        let moved = self
            .bind_moved(&c.settings)
            .map_err(|e| one_error(&self.config_path, e))?;
        let snap = build_snapshot(
            c,
            self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            || self.embedded_geo(),
        )?;
        let summary = snap.summary;
        let changes = crate::control::config::diff::diff(
            &crate::control::config::diff::ConfigView::of(&old.table),
            &crate::control::config::diff::ConfigView::of(&snap.table),
        );
        tracing::info!(
            generation = snap.generation,
            "configuration loaded: {summary}; changes: {}",
            if changes.is_empty() {
                "none to routes, services or backends".to_string()
            } else {
                changes.join("; ")
            }
        );
        metrics::gauge!(CONFIG_GENERATION).set(snap.generation as f64);
        let keys = snap.pool_keys.clone();
        let snap = Arc::new(snap);
        self.edge.snapshot.store(snap.clone());
        self.start_listeners(moved);
        let mut checker = self.checker.lock().unwrap_or_else(|e| e.into_inner());
        checker.reconcile(&snap.table, &self.background, &self.edge.hard);
        // After the reconcile has stopped the probes of removed checks.
        force_up_all(&force_up);
        self.pool.retain(&keys);
        Ok(summary)
    }

    /// Bind every listener whose configured address differs from the running one.
    /// All-or-nothing: on error the new sockets are dropped and nothing changes.
    fn bind_moved(&self, s: &Settings) -> Result<Vec<Moved>, String> {
        let slots = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (kind, want) in [
            (ListenerKind::Https, s.https),
            (ListenerKind::Http, s.http.map(|(a, _)| a)),
            (ListenerKind::Admin, s.admin),
        ] {
            let current = slots.iter().find(|l| l.kind == kind).map(|l| l.configured);
            if current == want {
                continue;
            }
            let listener = match want {
                Some(addr) => Some(
                    crate::net::accept::bind(addr)
                        .map_err(|e| format!("cannot listen on {addr}: {e}"))?,
                ),
                None => None,
            };
            out.push(Moved {
                kind,
                configured: want,
                listener,
            });
        }
        Ok(out)
    }

    /// Start accept loops for newly bound listeners; stop the ones they replace (their open
    /// connections carry on until they close or the drain).
    fn start_listeners(self: &Arc<Self>, moved: Vec<Moved>) {
        let mut slots = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for m in moved {
            if let Some(pos) = slots.iter().position(|l| l.kind == m.kind) {
                let old = slots.remove(pos);
                tracing::info!(listener = m.kind.label(), address = %old.bound, "listener stopped (address changed)");
                old.stop.cancel();
            }
            let (Some(configured), Some(listener)) = (m.configured, m.listener) else {
                continue;
            };
            let bound = listener.local_addr().unwrap_or(configured);
            let parent = if m.kind == ListenerKind::Admin {
                &self.edge.hard
            } else {
                &self.edge.drain
            };
            let stop = parent.child_token();
            if m.kind == ListenerKind::Https {
                self.edge.https_port.store(bound.port(), Ordering::Relaxed);
            }
            if m.kind == ListenerKind::Admin {
                self.background.spawn(crate::control::admin::serve(
                    listener,
                    self.clone(),
                    stop.clone(),
                ));
            } else {
                self.background.spawn(server::accept_loop(
                    listener,
                    m.kind,
                    self.edge.clone(),
                    stop.clone(),
                ));
            }
            tracing::info!(listener = m.kind.label(), address = %bound, "listening");
            slots.push(ListenerSlot {
                kind: m.kind,
                configured,
                bound,
                stop,
            });
        }
    }

    /// The address a listener is bound to now.
    pub fn bound(&self, kind: ListenerKind) -> Option<SocketAddr> {
        let slots = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        slots.iter().find(|l| l.kind == kind).map(|l| l.bound)
    }
}

/// A running listener.
struct ListenerSlot {
    kind: ListenerKind,
    configured: SocketAddr,
    bound: SocketAddr,
    stop: CancellationToken,
}

/// A listener to (re)start, or `None` to remove it.
struct Moved {
    kind: ListenerKind,
    configured: Option<SocketAddr>,
    listener: Option<TcpListener>,
}

fn build_snapshot(
    c: Compiled,
    generation: u64,
    embedded: impl FnOnce() -> Result<Arc<GeoDb>, ConfigErrors>,
) -> Result<Snapshot, ConfigErrors> {
    let geo = match c.geo {
        Some(g) => g,
        None => embedded()?,
    };
    let tls = match c.certs {
        Some(certs) => {
            let config = crate::tls::server_config(certs.clone())
                .map_err(|e| one_error(Path::new("tls"), e.to_string()))?;
            Some(TlsState { certs, config })
        }
        None => None,
    };
    Ok(Snapshot {
        pool_keys: c.pool_keys,
        table: c.table,
        settings: c.settings,
        geo,
        tls,
        generation,
        summary: c.summary,
    })
}

/// Apply `Compiled::force_up` once its snapshot is live.
fn force_up_all(backends: &[Arc<BackendHealth>]) {
    for h in backends {
        h.force_up();
    }
}

/// `[metrics] buckets` read ahead of the full load: histograms need them before any handle
/// is created. Invalid values are reported by the full compile.
fn preparse_buckets(path: &Path) -> Vec<f64> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    table
        .get("metrics")
        .and_then(|m| m.get("buckets"))
        .and_then(|b| b.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
                .collect()
        })
        .unwrap_or_default()
}

fn one_error(file: &Path, message: String) -> ConfigErrors {
    ConfigErrors(vec![config::ConfigError {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        path: String::new(),
        message,
    }])
}

/// How to start geolb.
#[derive(Debug, Clone)]
pub struct Options {
    /// The configuration file (routes.toml).
    pub config: PathBuf,
    /// Watch the configuration directory and reload on change.
    pub watch: bool,
}

/// The entry point for main, tests and benches.
pub struct App;

/// A started geolb: bound addresses and a shutdown handle.
pub struct Running {
    /// Bound address of the https listener, when configured.
    pub https: Option<SocketAddr>,
    /// Bound address of the plain-HTTP listener, when configured.
    pub http: Option<SocketAddr>,
    /// Bound address of the admin listener, when configured.
    pub admin: Option<SocketAddr>,
    /// The process state (snapshot, health, pools, listeners).
    pub shared: Arc<Shared>,
}

impl App {
    /// Load the configuration (errors are returned, nothing starts), bind every listener,
    /// start health checks and (optionally) the file watcher.
    pub async fn start(opts: Options) -> Result<Running, StartError> {
        crate::observe::metrics::install(&preparse_buckets(&opts.config));
        let events = Arc::new(crate::observe::events::EventLog::default());
        let health = HealthRegistry::default();
        let pool = UpstreamPool::default();
        let mut compiled = {
            let ctx = CompileCtx {
                health: &health,
                pool: &pool,
            };
            config::load(&opts.config, &ctx).map_err(StartError::Config)?
        };
        let force_up = std::mem::take(&mut compiled.force_up);
        let embedded = Mutex::new(None);
        let snap = build_snapshot(compiled, 1, || {
            let db =
                Arc::new(GeoDb::embedded().map_err(|e| one_error(&opts.config, e.to_string()))?);
            *embedded.lock().unwrap_or_else(|e| e.into_inner()) = Some(db.clone());
            Ok(db)
        })
        .map_err(StartError::Config)?;
        let settings = snap.settings.clone();
        let hard = CancellationToken::new();
        let background = TaskTracker::new();
        let access_log =
            AccessLog::start(settings.access_log.path.clone(), hard.clone(), &background);
        let edge = Arc::new(Edge {
            snapshot: ArcSwap::from_pointee(snap),
            geo_metrics: GeoMetrics::new(),
            countries: CountryCounters::new(),
            access_log,
            events: events.clone(),
            drain: CancellationToken::new(),
            hard,
            tasks: TaskTracker::new(),
            https_port: AtomicU16::new(443),
        });
        let shared = Arc::new(Shared {
            edge,
            health,
            pool,
            config_path: opts.config.clone(),
            reload_status: Mutex::new(ReloadStatus {
                last_result: Some("ok"),
                last_success: Some(unix_now()),
                last_attempt: Some(unix_now()),
                last_error: None,
            }),
            background,
            checker: Mutex::new(Checker::new(events)),
            listeners: Mutex::new(Vec::new()),
            generation: AtomicU64::new(1),
            reload_lock: tokio::sync::Mutex::new(()),
            embedded_geo: embedded,
        });
        metrics::gauge!(CONFIG_GENERATION).set(1.0);
        metrics::gauge!(CONFIG_LAST_RELOAD_SUCCESS).set(unix_now());
        {
            let snap = shared.edge.snapshot.load_full();
            let mut checker = shared.checker.lock().unwrap_or_else(|e| e.into_inner());
            checker.reconcile(&snap.table, &shared.background, &shared.edge.hard);
            force_up_all(&force_up);
            tracing::info!("configuration loaded: {}", snap.summary);
        }
        let moved = shared.bind_moved(&settings).map_err(StartError::Bind)?;
        shared.start_listeners(moved);
        let running = Running {
            https: shared.bound(ListenerKind::Https),
            http: shared.bound(ListenerKind::Http),
            admin: shared.bound(ListenerKind::Admin),
            shared: shared.clone(),
        };
        if opts.watch {
            crate::control::reload::watch(shared.clone()).map_err(StartError::Watch)?;
        }
        Ok(running)
    }
}

/// Why geolb could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    /// The configuration is invalid (every error, positioned).
    Config(ConfigErrors),
    #[error("{0}")]
    /// A listener could not be bound.
    Bind(String),
    #[error("cannot watch the configuration: {0}")]
    /// The configuration directory cannot be watched.
    Watch(String),
}

impl Running {
    /// Stop accepting, let in-flight requests finish (up to `shutdown_drain`), then stop
    /// everything else. Returns when all tasks have ended.
    pub async fn shutdown(self) {
        let shared = self.shared;
        let drain = shared.edge.snapshot.load().settings.timeouts.shutdown_drain;
        shared.edge.drain.cancel();
        shared.edge.tasks.close();
        if tokio::time::timeout(drain + Duration::from_secs(1), shared.edge.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain deadline passed; closing remaining connections");
        }
        shared.edge.hard.cancel();
        shared.background.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.background.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), shared.edge.tasks.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn histogram_buckets_are_read_ahead_of_the_full_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(&p, "[metrics]\nbuckets = [0.01, 0.1, 1]\n").unwrap();
        assert_eq!(super::preparse_buckets(&p), vec![0.01, 0.1, 1.0]);
        std::fs::write(&p, "not toml [").unwrap();
        assert!(super::preparse_buckets(&p).is_empty());
    }
}
