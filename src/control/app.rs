//! Starting and stopping geolb: `App::start` (what `main`, tests and benches call) builds the
//! `Shared` state, binds the listeners, starts checks and the file watcher; `Running` waits for
//! signals and shuts down with a drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::checker::Checker;
use crate::control::config::{self, CompileCtx, ConfigErrors};
use crate::control::shared::{
    ReloadStatus, Shared, build_snapshot, force_up_all, one_error, preparse_buckets,
};
use crate::geo::GeoDb;
use crate::health::HealthRegistry;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::{
    CONFIG_GENERATION, CONFIG_LAST_RELOAD_SUCCESS, CountryCounters, GeoMetrics,
};
use crate::proxy::{Edge, ListenerKind};
use crate::time::unix_now;
use crate::upstream::UpstreamPool;

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
    /// Bound address of the DNS UDP listener, when configured.
    pub dns_udp: Option<SocketAddr>,
    /// Bound address of the DNS TCP listener, when configured.
    pub dns_tcp: Option<SocketAddr>,
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
        let dns = compiled.dns.take();
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
            hygiene: crate::observe::metrics::PathMetrics::new(),
            access_log,
            events: events.clone(),
            drain: CancellationToken::new(),
            hard,
            tasks: TaskTracker::new(),
            https_port: AtomicU16::new(443),
        });
        let edge_events = events.clone();
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
            admin_server: crate::control::admin::server,
            dns: crate::control::dns::DnsRuntime::new(edge_events),
        });
        metrics::gauge!(CONFIG_GENERATION).set(1.0);
        metrics::counter!(crate::observe::metrics::GEO_DATABASE_REJECTED_TOTAL).increment(0);
        metrics::gauge!(CONFIG_LAST_RELOAD_SUCCESS).set(unix_now());
        {
            let snap = shared.edge.snapshot.load_full();
            let mut checker = shared.checker.lock().unwrap_or_else(|e| e.into_inner());
            checker.reconcile(&snap.table, &shared.background, &shared.edge.hard);
            force_up_all(&force_up);
            tracing::info!("configuration loaded: {}", snap.summary);
        }
        let dns_bound = shared.dns.bind(dns.as_deref()).map_err(StartError::Bind)?;
        let moved = shared.bind_moved(&settings).map_err(StartError::Bind)?;
        shared.start_listeners(moved);
        shared.publish_dns(dns, shared.edge.snapshot.load_full(), dns_bound);
        let (dns_udp, dns_tcp) = shared.dns.bound();
        let running = Running {
            https: shared.bound(ListenerKind::Https),
            http: shared.bound(ListenerKind::Http),
            admin: shared.bound(ListenerKind::Admin),
            dns_udp,
            dns_tcp,
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

impl Running {
    /// Returns on SIGTERM or SIGINT; reloads the configuration on SIGHUP.
    pub async fn wait_for_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading configuration");
                    let _ = self.shared.reload().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn histogram_buckets_are_read_ahead_of_the_full_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(&p, "[metrics]\nbuckets = [0.01, 0.1, 1]\n").unwrap();
        assert_eq!(
            crate::control::shared::preparse_buckets(&p),
            vec![0.01, 0.1, 1.0]
        );
        std::fs::write(&p, "not toml [").unwrap();
        assert!(crate::control::shared::preparse_buckets(&p).is_empty());
    }
}
