//! `Shared`: the process state behind a running geolb — the data path's `Edge`, what survives
//! reloads (health, pools), the listeners, and the one reload path (file change, SIGHUP,
//! `POST /reload`): load → compile → publish.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::checker::Checker;
use crate::control::config::{self, CompileCtx, Compiled, ConfigErrors};
use crate::geo::GeoDb;
use crate::health::{BackendHealth, HealthRegistry};
use crate::net::server;
use crate::observe::metrics::{
    CONFIG_GENERATION, CONFIG_LAST_RELOAD_SUCCESS, CONFIG_RELOADS_TOTAL,
    GEO_DATABASE_REJECTED_TOTAL,
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
    pub(super) checker: Mutex<Checker>,
    pub(super) listeners: Mutex<Vec<ListenerSlot>>,
    pub(super) generation: AtomicU64,
    pub(super) reload_lock: tokio::sync::Mutex<()>,
    pub(super) embedded_geo: Mutex<Option<Arc<GeoDb>>>,
    /// Serves the admin listener (the admin module sits above this one, so `App::start`
    /// supplies it).
    pub(super) admin_server: AdminServer,
    /// GeoDNS: the published zone, its listeners and probes.
    pub(crate) dns: crate::control::dns::DnsRuntime,
}

/// Starts the admin server on a listener until its token is cancelled.
pub(crate) type AdminServer = fn(
    TcpListener,
    Arc<Shared>,
    CancellationToken,
)
    -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

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
                count_geo_rejections(&e);
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
        let dns = c.dns.take();
        let dns_bound = self
            .dns
            .bind(dns.as_deref())
            .map_err(|e| one_error(&self.config_path, e))?;
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
        self.publish_dns(dns, snap.clone(), dns_bound);
        let mut checker = self.checker.lock().unwrap_or_else(|e| e.into_inner());
        checker.reconcile(&snap.table, &self.background, &self.edge.hard);
        // After the reconcile has stopped the probes of removed checks.
        force_up_all(&force_up);
        self.pool.retain(&keys);
        Ok(summary)
    }

    /// Publish the DNS zone with the snapshot it was compiled with; start moved DNS listeners.
    pub(super) fn publish_dns(
        &self,
        dns: Option<Arc<crate::dns::DnsConfig>>,
        snap: Arc<Snapshot>,
        bound: Option<crate::control::dns::Bound>,
    ) {
        self.dns.publish(
            dns,
            snap,
            bound,
            &self.background,
            &self.edge.drain,
            &self.edge.hard,
        );
    }

    /// Bind every listener whose configured address differs from the running one.
    /// All-or-nothing: on error the new sockets are dropped and nothing changes.
    pub(super) fn bind_moved(&self, s: &Settings) -> Result<Vec<Moved>, String> {
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
    pub(super) fn start_listeners(self: &Arc<Self>, moved: Vec<Moved>) {
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
                self.background
                    .spawn((self.admin_server)(listener, self.clone(), stop.clone()));
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
pub(super) struct ListenerSlot {
    kind: ListenerKind,
    configured: SocketAddr,
    bound: SocketAddr,
    stop: CancellationToken,
}

/// A listener to (re)start, or `None` to remove it.
pub(super) struct Moved {
    kind: ListenerKind,
    configured: Option<SocketAddr>,
    listener: Option<TcpListener>,
}

pub(super) fn build_snapshot(
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
pub(super) fn force_up_all(backends: &[Arc<BackendHealth>]) {
    for h in backends {
        h.force_up();
    }
}

/// `[metrics] buckets` read ahead of the full load: histograms need them before any handle
/// is created. Invalid values are reported by the full compile.
pub(super) fn preparse_buckets(path: &Path) -> Vec<f64> {
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

/// A refused geo database (unreadable, or failing verification) is counted and logged on its
/// own: the running database keeps answering, and an operator watching for a bad download
/// should not have to parse the configuration errors.
fn count_geo_rejections(errors: &ConfigErrors) {
    for e in errors.0.iter().filter(|e| e.path == "geo.database") {
        metrics::counter!(GEO_DATABASE_REJECTED_TOTAL).increment(1);
        tracing::error!(
            error = %e.message,
            "geo database refused; the running database keeps serving"
        );
    }
}

pub(super) fn one_error(file: &Path, message: String) -> ConfigErrors {
    ConfigErrors(vec![config::ConfigError {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        path: String::new(),
        message,
    }])
}
