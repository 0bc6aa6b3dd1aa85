//! The running process: the published snapshot, state that survives reloads, listeners,
//! background tasks, reload and shutdown. `App::start` is what `main`, tests and benches call.

use std::net::SocketAddr;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;

use arc_swap::ArcSwap;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::config::compile::Summary;
use crate::config::{self, CompileCtx, Compiled, ConfigErrors};
use crate::geo::GeoDb;
use crate::health::HealthRegistry;
use crate::health::checker::Checker;
use crate::metrics::{
    CONFIG_GENERATION, CONFIG_LAST_RELOAD_SUCCESS, CONFIG_RELOADS_TOTAL, GeoMetrics,
};
use crate::routing::{RoutingTable, Settings};
use crate::server::{self, ListenerKind};
use crate::tls::CertSet;
use crate::upstream::UpstreamPool;

/// TLS material for new connections.
#[derive(Clone)]
pub struct TlsState {
    pub certs: Arc<CertSet>,
    pub config: Arc<rustls::ServerConfig>,
}

/// Everything a request needs, published atomically.
pub struct Snapshot {
    pub table: RoutingTable,
    pub settings: Settings,
    pub geo: Arc<GeoDb>,
    pub tls: Option<TlsState>,
    pub generation: u64,
    pub summary: Summary,
    /// Upstream pools this configuration uses (others are dropped on reload).
    pub client_keys: Vec<crate::upstream::ClientKey>,
}

/// Result of the last reload attempt, for `/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    pub last_result: Option<&'static str>,
    pub last_error: Option<String>,
    /// Unix seconds.
    pub last_success: Option<f64>,
    pub last_attempt: Option<f64>,
}

/// Process-wide state shared by every connection and task.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub health: HealthRegistry,
    pub pool: UpstreamPool,
    pub config_path: PathBuf,
    pub reload_status: Mutex<ReloadStatus>,
    pub geo_metrics: GeoMetrics,
    pub access_log: AccessLog,
    /// Stop accepting and drain connections gracefully.
    pub drain: CancellationToken,
    /// Stop everything now (tunnels, checkers, background tasks).
    pub hard: CancellationToken,
    pub tasks: TaskTracker,
    /// Background tasks (checkers, watcher, access log): outlive connection draining.
    pub background: TaskTracker,
    checker: Mutex<Checker>,
    /// Recent state changes, for `/status`.
    pub events: Arc<crate::events::EventLog>,
    /// Requests by client country (bounded labels).
    pub countries: crate::metrics::CountryCounters,
    listeners: Mutex<Vec<ListenerSlot>>,
    /// Bound port of the https listener (redirect target); 443 when there is none.
    pub https_port: std::sync::atomic::AtomicU16,
    generation: AtomicU64,
    reload_lock: tokio::sync::Mutex<()>,
    embedded_geo: Mutex<Option<Arc<GeoDb>>>,
}

impl Shared {
    /// Tunnel an upgraded (WebSocket) connection until either side closes or shutdown.
    pub fn spawn_tunnel(
        &self,
        client: OnUpgrade,
        upstream: OnUpgrade,
        permit: Arc<tokio::sync::OwnedSemaphorePermit>,
        idle: Duration,
    ) {
        let hard = self.hard.clone();
        self.tasks.spawn(async move {
            let _permit = permit; // the tunnel keeps its connection slot
            let (Ok(c), Ok(u)) = tokio::join!(client, upstream) else {
                tracing::debug!("upgrade failed on one side");
                return;
            };
            let last = Arc::new(std::sync::atomic::AtomicU64::new(crate::health::now_ms()));
            let mut c = crate::tunnel::Tracked::new(TokioIo::new(c), last.clone());
            let mut u = TokioIo::new(u);
            let copy = tokio::io::copy_bidirectional(&mut c, &mut u);
            tokio::pin!(copy);
            let tick = (idle / 4).max(Duration::from_millis(20));
            loop {
                tokio::select! {
                    r = &mut copy => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "tunnel closed with an error");
                        }
                        return;
                    }
                    _ = hard.cancelled() => return,
                    _ = tokio::time::sleep(tick) => {
                        let quiet = crate::health::now_ms().saturating_sub(last.load(Ordering::Relaxed));
                        if quiet >= idle.as_millis() as u64 {
                            tracing::debug!("tunnel idle for {quiet} ms; closing");
                            return;
                        }
                    }
                }
            }
        });
    }

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
                self.events
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
                self.events
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
    /// swap the snapshot, start the moved listeners and stop the old ones, reconcile checks.
    fn publish(self: &Arc<Self>, c: Compiled) -> Result<Summary, ConfigErrors> {
        let old = self.snapshot.load_full();
        let moved = self
            .bind_moved(&c.settings)
            .map_err(|e| one_error(&self.config_path, e))?;
        let snap = build_snapshot(
            c,
            self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            || self.embedded_geo(),
        )?;
        let summary = snap.summary;
        let changes = crate::config::diff::diff(
            &crate::config::diff::ConfigView::of(&old.table),
            &crate::config::diff::ConfigView::of(&snap.table),
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
        let keys = snap.client_keys.clone();
        let snap = Arc::new(snap);
        self.snapshot.store(snap.clone());
        self.start_listeners(moved);
        let mut checker = self.checker.lock().unwrap_or_else(|e| e.into_inner());
        checker.reconcile(&snap.table, &self.background, &self.hard);
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
                Some(addr) => {
                    Some(server::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?)
                }
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
                &self.hard
            } else {
                &self.drain
            };
            let stop = parent.child_token();
            if m.kind == ListenerKind::Https {
                self.https_port.store(bound.port(), Ordering::Relaxed);
            }
            if m.kind == ListenerKind::Admin {
                self.background
                    .spawn(crate::admin::serve(listener, self.clone(), stop.clone()));
            } else {
                self.background.spawn(server::accept_loop(
                    listener,
                    m.kind,
                    self.clone(),
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
        client_keys: c.client_keys,
        table: c.table,
        settings: c.settings,
        geo,
        tls,
        generation,
        summary: c.summary,
    })
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

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// How to start geolb.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// Watch the configuration directory and reload on change.
    pub watch: bool,
}

/// The entry point for main, tests and benches.
pub struct App;

/// A started geolb: bound addresses and a shutdown handle.
pub struct Running {
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub shared: Arc<Shared>,
}

impl App {
    /// Load the configuration (errors are returned, nothing starts), bind every listener,
    /// start health checks and (optionally) the file watcher.
    pub async fn start(opts: Options) -> Result<Running, StartError> {
        crate::metrics::install(&preparse_buckets(&opts.config));
        let events = Arc::new(crate::events::EventLog::default());
        let health = HealthRegistry::default();
        let pool = UpstreamPool::default();
        let compiled = {
            let ctx = CompileCtx {
                health: &health,
                pool: &pool,
            };
            config::load(&opts.config, &ctx).map_err(StartError::Config)?
        };
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
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snap),
            health,
            pool,
            config_path: opts.config.clone(),
            reload_status: Mutex::new(ReloadStatus {
                last_result: Some("ok"),
                last_success: Some(unix_now()),
                last_attempt: Some(unix_now()),
                last_error: None,
            }),
            geo_metrics: GeoMetrics::new(),
            access_log,
            drain: CancellationToken::new(),
            hard,
            tasks: TaskTracker::new(),
            background,
            checker: Mutex::new(Checker::new(events.clone())),
            events,
            countries: crate::metrics::CountryCounters::new(),
            listeners: Mutex::new(Vec::new()),
            https_port: std::sync::atomic::AtomicU16::new(443),
            generation: AtomicU64::new(1),
            reload_lock: tokio::sync::Mutex::new(()),
            embedded_geo: embedded,
        });
        metrics::gauge!(CONFIG_GENERATION).set(1.0);
        metrics::gauge!(CONFIG_LAST_RELOAD_SUCCESS).set(unix_now());
        {
            let snap = shared.snapshot.load_full();
            let mut checker = shared.checker.lock().unwrap_or_else(|e| e.into_inner());
            checker.reconcile(&snap.table, &shared.background, &shared.hard);
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
            crate::reload::watch(shared.clone()).map_err(StartError::Watch)?;
        }
        Ok(running)
    }
}

/// Why geolb could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("{0}")]
    Bind(String),
    #[error("cannot watch the configuration: {0}")]
    Watch(String),
}

impl Running {
    /// Stop accepting, let in-flight requests finish (up to `shutdown_drain`), then stop
    /// everything else. Returns when all tasks have ended.
    pub async fn shutdown(self) {
        let shared = self.shared;
        let drain = shared.snapshot.load().settings.timeouts.shutdown_drain;
        shared.drain.cancel();
        shared.tasks.close();
        if tokio::time::timeout(drain + Duration::from_secs(1), shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain deadline passed; closing remaining connections");
        }
        shared.hard.cancel();
        shared.background.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.background.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), shared.tasks.wait()).await;
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
