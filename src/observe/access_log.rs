//! Access log: one line per request (JSON or text), formatted on the request path and written
//! by a background task so a slow disk never slows proxying (lines are dropped and counted
//! when the writer falls behind).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, Request, uri::PathAndQuery};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogSettings {
    pub enabled: bool,
    pub format: AccessLogFormat,
    pub path: Option<PathBuf>,
}

/// Most attempts one request may make (and the access log lists).
pub const MAX_ATTEMPTS: usize = 8;

/// One upstream attempt: the backend, its region, and the status (0 on error) or error code.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub backend: Arc<str>,
    pub region: Arc<str>,
    pub outcome: u16,
    pub error: Option<&'static str>,
}

/// Fixed-capacity attempt list (no allocation per request).
#[derive(Debug, Default)]
pub struct Attempts {
    items: [Option<Attempt>; MAX_ATTEMPTS],
    len: usize,
}

impl Attempts {
    pub fn push(&mut self, a: Attempt) {
        if self.len < MAX_ATTEMPTS {
            self.items[self.len] = Some(a);
            self.len += 1;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Attempt> {
        self.items[..self.len].iter().flatten()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What is known about a request by the time it is answered.
#[derive(Debug)]
pub struct LogRecord {
    /// Whether this record will be written (the snapshot's access log setting).
    pub enabled: bool,
    pub time: SystemTime,
    pub client_ip: IpAddr,
    pub country: Option<&'static str>,
    pub host: String,
    pub method: Method,
    pub path: Option<PathAndQuery>,
    pub version: http::Version,
    pub bytes_in: Option<u64>,
    /// Response body size when known up front (Content-Length); `None` for streamed bodies.
    pub bytes_out: Option<u64>,
    pub status: u16,
    pub duration: Duration,
    pub route: Option<Arc<str>>,
    pub region: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    pub attempts: Attempts,
    pub error: Option<&'static str>,
    pub tls_version: Option<&'static str>,
    pub alpn: Option<&'static str>,
}

impl LogRecord {
    /// A record for `req` from `client` (before any forwarded address is trusted); `tls` is
    /// the connection's (version, ALPN) when it is TLS.
    pub fn start<B: hyper::body::Body>(
        req: &Request<B>,
        client: IpAddr,
        tls: Option<(&'static str, &'static str)>,
        enabled: bool,
    ) -> Self {
        LogRecord {
            enabled,
            time: SystemTime::now(),
            client_ip: client,
            country: None,
            host: String::new(),
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            version: req.version(),
            bytes_in: req.body().size_hint().exact(),
            bytes_out: None,
            status: 0,
            duration: Duration::ZERO,
            route: None,
            region: None,
            backend: None,
            attempts: Attempts::default(),
            error: None,
            tls_version: tls.map(|t| t.0),
            alpn: tls.map(|t| t.1),
        }
    }

    /// Record the host (copied only when the access log is on: no allocation otherwise).
    pub fn set_host(&mut self, host: &str) {
        if self.enabled {
            self.host.push_str(host);
        }
    }

    /// Render one line (without the newline).
    pub fn render(&self, format: AccessLogFormat) -> String {
        let mut s = String::with_capacity(384);
        let ts = self
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let path = self.path.as_ref().map_or("/", |p| p.as_str());
        let dur_ms = self.duration.as_secs_f64() * 1000.0;
        match format {
            AccessLogFormat::Json => {
                let mut attempts = Vec::with_capacity(self.attempts.len());
                for a in self.attempts.iter() {
                    attempts.push(serde_json::json!({
                        "backend": &*a.backend, "region": &*a.region,
                        "status": (a.outcome != 0).then_some(a.outcome), "error": a.error,
                    }));
                }
                let v = serde_json::json!({
                    "time": ts.as_secs_f64(),
                    "client_ip": self.client_ip.to_string(),
                    "country": self.country,
                    "host": self.host,
                    "method": self.method.as_str(),
                    "path": path,
                    "protocol": format!("{:?}", self.version),
                    "status": self.status,
                    "bytes_in": self.bytes_in,
                    "bytes_out": self.bytes_out,
                    "duration_ms": (dur_ms * 1000.0).round() / 1000.0,
                    "route": self.route.as_deref(),
                    "region": self.region.as_deref(),
                    "backend": self.backend.as_deref(),
                    "attempts": attempts,
                    "error": self.error,
                    "tls_version": self.tls_version,
                    "alpn": self.alpn,
                });
                let _ = write!(s, "{v}");
            }
            AccessLogFormat::Text => {
                let _ = write!(
                    s,
                    "{} {} {} \"{} {} {:?}\" {} {:.3}ms route={} region={} backend={} attempts={}",
                    ts.as_secs(),
                    self.client_ip,
                    self.country.unwrap_or("-"),
                    self.method,
                    path,
                    self.version,
                    self.status,
                    dur_ms,
                    self.route.as_deref().unwrap_or("-"),
                    self.region.as_deref().unwrap_or("-"),
                    self.backend.as_deref().unwrap_or("-"),
                    self.attempts.len(),
                );
            }
        }
        s
    }
}

/// Sender side; cheap to call when disabled.
pub struct AccessLog {
    tx: mpsc::Sender<String>,
}

impl AccessLog {
    /// Start the writer task. Lines go to `path` (append) or stdout; the task ends on `cancel`
    /// after draining what is queued.
    pub fn start(
        path: Option<std::path::PathBuf>,
        cancel: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> AccessLog {
        let (tx, mut rx) = mpsc::channel::<String>(16_384);
        tasks.spawn(async move {
            let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &path {
                Some(p) => match tokio::fs::OpenOptions::new().create(true).append(true).open(p).await {
                    Ok(f) => Box::new(f),
                    Err(e) => {
                        tracing::error!(path = %p.display(), error = %e, "cannot open access log; using stdout");
                        Box::new(tokio::io::stdout())
                    }
                },
                None => Box::new(tokio::io::stdout()),
            };
            let mut buf = Vec::with_capacity(64 * 1024);
            loop {
                let line = tokio::select! {
                    l = rx.recv() => l,
                    _ = cancel.cancelled() => { rx.close(); rx.recv().await }
                };
                let Some(line) = line else { break };
                buf.extend_from_slice(line.as_bytes());
                buf.push(b'\n');
                while let Ok(l) = rx.try_recv() {
                    buf.extend_from_slice(l.as_bytes());
                    buf.push(b'\n');
                    if buf.len() > 256 * 1024 {
                        break;
                    }
                }
                if let Err(e) = out.write_all(&buf).await {
                    tracing::error!(error = %e, "access log write failed");
                }
                let _ = out.flush().await;
                buf.clear();
            }
        });
        AccessLog { tx }
    }

    /// Queue a record if the snapshot enables logging; never waits.
    pub fn send(&self, cfg: &AccessLogSettings, rec: LogRecord) {
        if cfg.enabled {
            queue(&self.tx, rec.render(cfg.format));
        }
    }

    /// A record finished when the response body ends: it counts the bytes sent and the
    /// whole duration, and is queued when dropped. `None` when logging is off.
    pub fn pending(
        &self,
        cfg: &AccessLogSettings,
        rec: LogRecord,
        started: std::time::Instant,
    ) -> Option<Box<PendingLog>> {
        cfg.enabled.then(|| {
            Box::new(PendingLog {
                tx: self.tx.clone(),
                format: cfg.format,
                rec,
                started,
            })
        })
    }
}

fn queue(tx: &mpsc::Sender<String>, line: String) {
    if tx.try_send(line).is_err() {
        metrics::counter!(crate::observe::metrics::ACCESS_LOG_DROPPED_TOTAL).increment(1);
    }
}

/// An access-log record waiting for its response body to finish.
#[derive(Debug)]
pub struct PendingLog {
    tx: mpsc::Sender<String>,
    format: AccessLogFormat,
    rec: LogRecord,
    started: std::time::Instant,
}

impl PendingLog {
    /// Count response body bytes as they are sent.
    pub fn sent(&mut self, n: usize) {
        *self.rec.bytes_out.get_or_insert(0) += n as u64;
    }
}

impl Drop for PendingLog {
    fn drop(&mut self) {
        self.rec.duration = self.started.elapsed();
        queue(&self.tx, self.rec.render(self.format));
    }
}
