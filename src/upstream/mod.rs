//! Pooled upstream clients (HTTP/1.1 keep-alive, optional h2, optional TLS with verification,
//! SNI and client certificates) and classification of their errors.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::ServerName;

use crate::tls::{TlsError, load_certs, load_key};
use body::ReqBody;

pub(crate) mod body;
pub(crate) mod failure;

/// A pooled client; cheap to clone (shares the pool).
pub(crate) type UpstreamClient = Client<ConnectTimeout, ReqBody>;

/// The TLS-capable connector with one deadline over TCP connect *and* TLS handshake, so a
/// backend that stalls its handshake fails over like one that refuses connections.
#[derive(Clone)]
pub struct ConnectTimeout {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

type Conn = hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for ConnectTimeout {
    type Response = Conn;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let fut = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "upstream connect (TCP + TLS) timed out",
                )) as BoxError),
            }
        })
    }
}

/// Everything that distinguishes one connection pool from another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub http2_prior_knowledge: bool,
    pub http2_alpn: bool,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
    /// The backends this pool serves (sorted). A reload that removes a backend gets a new
    /// pool; the old one, and its idle connections, close once no request uses them.
    pub backends: Vec<String>,
}

/// Why an upstream client could not be built (a `[services.*.upstream_tls]` problem).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A CA bundle, client certificate or client key file could not be read.
    #[error(transparent)]
    File(#[from] TlsError),
    /// A certificate in the CA bundle was rejected as a trust anchor.
    #[error("{}: {source}", path.display())]
    Ca {
        /// The CA bundle.
        path: PathBuf,
        /// Why the certificate was rejected.
        source: rustls::Error,
    },
    /// The client certificate and key were rejected.
    #[error("client certificate {}: {source}", cert.display())]
    ClientCert {
        /// The client certificate file.
        cert: PathBuf,
        /// Why rustls rejected the pair.
        source: rustls::Error,
    },
    /// `server_name` is not a DNS name or IP address.
    #[error("{name}: {source}")]
    ServerName {
        /// The configured name.
        name: String,
        /// Why it is invalid.
        source: rustls_pki_types::InvalidDnsNameError,
    },
}

/// Clients shared across reloads, so a reload keeps warm connections.
#[derive(Default)]
pub struct UpstreamPool {
    clients: Mutex<HashMap<PoolKey, UpstreamClient>>,
}

impl UpstreamPool {
    /// The client for `key`, built on first use.
    pub fn client(&self, key: &PoolKey) -> Result<UpstreamClient, PoolError> {
        let mut map = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(key) {
            return Ok(c.clone());
        }
        let c = build_client(key)?;
        map.insert(key.clone(), c.clone());
        Ok(c)
    }

    /// Forget clients no longer referenced by `keep` (their idle connections close).
    pub fn retain(&self, keep: &[PoolKey]) {
        let mut map = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, _| keep.contains(k));
    }
}

fn build_client(key: &PoolKey) -> Result<UpstreamClient, PoolError> {
    let mut roots = RootCertStore::empty();
    match &key.ca {
        Some(ca) => {
            for cert in load_certs(ca)? {
                roots.add(cert).map_err(|source| PoolError::Ca {
                    path: ca.clone(),
                    source,
                })?;
            }
        }
        None => {
            // The system's trust store; the bundled Mozilla roots when it has none.
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
        }
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let tls = match &key.client_cert {
        Some((cert, k)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(k)?)
            .map_err(|source| PoolError::ClientCert {
                cert: cert.clone(),
                source,
            })?,
        None => builder.with_no_client_auth(),
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(key.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let b = match &key.server_name {
        Some(name) => {
            let sn =
                ServerName::try_from(name.clone()).map_err(|source| PoolError::ServerName {
                    name: name.clone(),
                    source,
                })?;
            b.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(sn))
        }
        None => b,
    };
    let inner = if key.http2_alpn || key.http2_prior_knowledge {
        b.enable_all_versions().wrap_connector(http)
    } else {
        b.enable_http1().wrap_connector(http)
    };
    let connector = ConnectTimeout {
        inner,
        timeout: key.connect_timeout,
    };
    let mut cb = Client::builder(TokioExecutor::new());
    cb.timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(key.idle_timeout)
        .pool_max_idle_per_host(key.max_idle)
        .retry_canceled_requests(true)
        .set_host(false)
        .http2_only(key.http2_prior_knowledge)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .http2_adaptive_window(true);
    Ok(cb.build(connector))
}
