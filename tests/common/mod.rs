//! Shared integration-test helpers: real backends, real certificates, a generated `.mmdb`,
//! and geolb started on `127.0.0.1:0` from a routes.toml written into a temp dir.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// Deadline for anything a test waits on (generous: CI machines are slow and loaded).
pub const WAIT: Duration = Duration::from_secs(20);

/// Wait for `cond` to hold, polling; panics with `what` after `WAIT`.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Backends

/// Backend behaviour switch.
pub const MODE_OK: u8 = 0;
pub const MODE_503: u8 = 1;
/// Health checks fail (503) but real requests are served.
pub const MODE_HEALTH_FAIL: u8 = 2;
/// Health checks alternate fail/pass, one per check; real requests are served.
pub const MODE_FLAP: u8 = 3;

/// A real HTTP/1.1 + h2c backend on 127.0.0.1 that can be stopped and restarted on its port.
pub struct TestBackend {
    pub name: String,
    pub region: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    pub mode: Arc<AtomicU8>,
    /// Counts requests received (for waiting on "the backend has the request").
    pub arrivals: tokio::sync::watch::Receiver<u64>,
    arrivals_tx: Arc<tokio::sync::watch::Sender<u64>>,
    /// TCP connections currently open to this backend.
    pub open_conns: Arc<AtomicU64>,
    /// What `/healthz` reports of the backend's database (see [`DbState`]).
    pub db: Arc<DbState>,
    /// Milliseconds every request but `/healthz` waits before it is answered (a slow backend
    /// whose health checks stay green).
    pub delay_ms: Arc<AtomicU64>,
    /// Requests (not `/healthz`) being handled now.
    pub inflight: Arc<AtomicU64>,
    /// `x-test-id` of every request other than GET/HEAD received, in arrival order.
    pub post_ids: Arc<std::sync::Mutex<Vec<String>>>,
    /// Reset (RST) the open plain-HTTP connections when stopping (see [`TestBackend::kill`]).
    reset_on_stop: Arc<AtomicBool>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl TestBackend {
    /// A backend speaking HTTPS (HTTP/1.1 and h2 by ALPN) with `tls`.
    pub async fn spawn_tls(name: &str, region: &str, mut tls: rustls::ServerConfig) -> TestBackend {
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::spawn_with(name, region, Some(Arc::new(tls))).await
    }

    /// A plain HTTP/1.1 + h2c backend.
    pub async fn spawn(name: &str, region: &str) -> TestBackend {
        Self::spawn_with(name, region, None).await
    }

    async fn spawn_with(
        name: &str,
        region: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, rx) = tokio::sync::watch::channel(0);
        let mut b = TestBackend {
            name: name.into(),
            region: region.into(),
            addr: listener.local_addr().unwrap(),
            hits: Arc::new(AtomicU64::new(0)),
            mode: Arc::new(AtomicU8::new(MODE_OK)),
            arrivals: rx,
            arrivals_tx: Arc::new(tx),
            open_conns: Arc::new(AtomicU64::new(0)),
            db: Arc::new(DbState::default()),
            delay_ms: Arc::new(AtomicU64::new(0)),
            inflight: Arc::new(AtomicU64::new(0)),
            post_ids: Arc::default(),
            reset_on_stop: Arc::new(AtomicBool::new(false)),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            tls,
        };
        b.serve(listener);
        b
    }

    fn serve(&mut self, listener: TcpListener) {
        let cancel = self.cancel.clone();
        let tasks = self.tasks.clone();
        let tls = self.tls.clone();
        let open_conns = self.open_conns.clone();
        let reset_on_stop = self.reset_on_stop.clone();
        let ctx = Arc::new(Ctx {
            delay_ms: self.delay_ms.clone(),
            inflight: self.inflight.clone(),
            post_ids: self.post_ids.clone(),
            checks: AtomicU64::new(0),
            name: self.name.clone(),
            region: self.region.clone(),
            hits: self.hits.clone(),
            mode: self.mode.clone(),
            arrivals: self.arrivals_tx.clone(),
            db: self.db.clone(),
        });
        self.tasks.spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(x) => x, Err(_) => continue },
                    _ = cancel.cancelled() => return,
                };
                let ctx = ctx.clone();
                let cancel = cancel.clone();
                let tls = tls.clone();
                let reset = reset_on_stop.clone();
                let open = OpenConn::new(open_conns.clone());
                tasks.spawn(async move {
                    let _open = open;
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
                            let svc = service_fn(move |req| handle(req, ctx.clone(), None));
                            let conn =
                                builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                            tokio::pin!(conn);
                            tokio::select! {
                                _ = &mut conn => {}
                                _ = cancel.cancelled() => {
                                    if reset.load(Ordering::Relaxed) {
                                        // SAFETY: `conn` owns the socket and lives until the
                                        // end of this block; closing it then sends the RST.
                                        let fd =
                                            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                                        let _ = socket2::SockRef::from(&fd)
                                            .set_linger(Some(Duration::ZERO));
                                    }
                                }
                            }
                        }
                        Some(cfg) => {
                            let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await
                            else {
                                return;
                            };
                            let info = TlsSeen {
                                sni: s.get_ref().1.server_name().map(str::to_owned),
                                client_cert: s
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .is_some_and(|c| !c.is_empty()),
                            };
                            let info = Arc::new(info);
                            let svc =
                                service_fn(move |req| handle(req, ctx.clone(), Some(info.clone())));
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(s), svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = cancel.cancelled() => {}
                            }
                        }
                    }
                });
            }
        });
    }

    /// Stop listening and drop every open connection (a dead server: connects are refused).
    pub async fn stop(&mut self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Die like a crashed process: stop listening and reset (RST) every open plain-HTTP
    /// connection, failing the requests in flight on them.
    pub async fn kill(&mut self) {
        self.reset_on_stop.store(true, Ordering::Relaxed);
        self.stop().await;
        self.reset_on_stop.store(false, Ordering::Relaxed);
    }

    /// Requests being handled now (not `/healthz`).
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Listen again on the same address.
    pub async fn restart(&mut self) {
        self.cancel = CancellationToken::new();
        self.tasks = TaskTracker::new();
        let listener = bind_retry(self.addr).await;
        self.serve(listener);
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// Counts an open connection for as long as it lives.
struct OpenConn(Arc<AtomicU64>);

impl OpenConn {
    fn new(c: Arc<AtomicU64>) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        OpenConn(c)
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn bind_retry(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_nonblocking(true).unwrap();
        if s.bind(&addr.into()).is_ok() && s.listen(1024).is_ok() {
            return TcpListener::from_std(s.into()).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cannot rebind {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A backend's view of its database, reported in its health answers as `X-Db-Role` and
/// `X-Db-Replica-Lag` (seconds) when a role is set; and the writes it received.
#[derive(Default)]
pub struct DbState {
    role: std::sync::Mutex<String>,
    /// Replica lag, ms.
    pub lag_ms: AtomicU64,
    /// Non-GET/HEAD requests received.
    pub writes: AtomicU64,
    /// Non-GET/HEAD requests received while the role was not `primary`.
    pub writes_as_replica: AtomicU64,
}

impl DbState {
    /// Report `role` ("primary", "replica", or "" for no header) and `lag_ms`.
    pub fn set(&self, role: &str, lag_ms: u64) {
        *self.role.lock().unwrap() = role.to_owned();
        self.lag_ms.store(lag_ms, Ordering::Relaxed);
    }

    pub fn role(&self) -> String {
        self.role.lock().unwrap().clone()
    }

    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    pub fn writes_as_replica(&self) -> u64 {
        self.writes_as_replica.load(Ordering::Relaxed)
    }
}

struct Ctx {
    delay_ms: Arc<AtomicU64>,
    inflight: Arc<AtomicU64>,
    post_ids: Arc<std::sync::Mutex<Vec<String>>>,
    db: Arc<DbState>,
    checks: AtomicU64,
    name: String,
    region: String,
    hits: Arc<AtomicU64>,
    mode: Arc<AtomicU8>,
    arrivals: Arc<tokio::sync::watch::Sender<u64>>,
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

/// What a TLS backend saw of geolb's handshake.
#[derive(Debug)]
struct TlsSeen {
    sni: Option<String>,
    client_cert: bool,
}

async fn handle(
    mut req: Request<Incoming>,
    ctx: Arc<Ctx>,
    tls: Option<Arc<TlsSeen>>,
) -> Result<Response<Body>, Infallible> {
    ctx.arrivals.send_modify(|n| *n += 1);
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        let status = match ctx.mode.load(Ordering::Relaxed) {
            MODE_503 | MODE_HEALTH_FAIL => 503,
            MODE_FLAP if ctx.checks.fetch_add(1, Ordering::Relaxed) % 2 == 0 => 503,
            _ => 200,
        };
        let mut r = status_resp(status, "health");
        let role = ctx.db.role();
        if !role.is_empty() {
            let lag = ctx.db.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0;
            r.headers_mut().insert("x-db-role", role.parse().unwrap());
            r.headers_mut()
                .insert("x-db-replica-lag", format!("{lag:.3}").parse().unwrap());
        }
        return Ok(r);
    }
    ctx.hits.fetch_add(1, Ordering::Relaxed);
    let _inflight = OpenConn::new(ctx.inflight.clone());
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        if let Some(id) = req.headers().get("x-test-id") {
            let id = id.to_str().unwrap_or("").to_owned();
            ctx.post_ids.lock().unwrap().push(id);
        }
        ctx.db.writes.fetch_add(1, Ordering::Relaxed);
        if ctx.db.role() != "primary" {
            ctx.db.writes_as_replica.fetch_add(1, Ordering::Relaxed);
        }
    }
    let delay = ctx.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if ctx.mode.load(Ordering::Relaxed) == MODE_503 {
        return Ok(status_resp(503, "unavailable"));
    }
    let resp = match path.as_str() {
        "/hang" => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        "/delay" => {
            let ms = query_u64(&req, "ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            echo(&req, &ctx)
        }
        "/upload" => {
            // Stream the body: count bytes and a position-weighted checksum.
            let mut body = req.into_body();
            let (mut n, mut sum) = (0u64, 0u64);
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return Ok(status_resp(400, "body error"));
                };
                if let Some(d) = frame.data_ref() {
                    for &b in d.iter() {
                        sum = sum.wrapping_mul(31).wrapping_add(u64::from(b));
                    }
                    n += d.len() as u64;
                }
            }
            json(serde_json::json!({"backend": ctx.name, "bytes": n, "sum": sum}))
        }
        "/download" => {
            let total = query_u64(&req, "bytes").unwrap_or(1 << 20);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(total, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let n = left.min(chunk.len() as u64);
                    Some((
                        Ok::<_, Infallible>(Frame::data(chunk.slice(..n as usize))),
                        left - n,
                    ))
                }
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut()
                .insert("x-backend", ctx.name.parse().unwrap());
            r
        }
        "/trailers" => {
            // A gRPC-style reply: data, then trailer fields; reports the TE it was sent.
            let te = req.headers().get("te").cloned();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"ok"))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                frames,
            ))));
            r.headers_mut()
                .insert("trailer", http::HeaderValue::from_static("grpc-status"));
            if let Some(te) = te {
                r.headers_mut().insert("x-saw-te", te);
            }
            r
        }
        "/ws" => {
            let key = req.headers().get("sec-websocket-key").cloned();
            let Some(key) = key else {
                return Ok(status_resp(400, "no key"));
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(up) = on_upgrade.await else { return };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(up),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
            });
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(full(""))
                .unwrap()
        }
        p if p.starts_with("/status/") => {
            let code = p[8..].parse().unwrap_or(500);
            status_resp(code, "status")
        }
        "/hop" => {
            let mut r = echo(&req, &ctx);
            r.headers_mut()
                .insert("connection", "x-hop-secret".parse().unwrap());
            r.headers_mut().insert("x-hop-secret", "1".parse().unwrap());
            r.headers_mut()
                .insert("keep-alive", "timeout=5".parse().unwrap());
            r
        }
        _ => {
            let mut r = echo(&req, &ctx);
            if let Some(t) = tls {
                r.headers_mut().insert(
                    "x-tls-sni",
                    t.sni.clone().unwrap_or_default().parse().unwrap(),
                );
                r.headers_mut().insert(
                    "x-tls-client-cert",
                    t.client_cert.to_string().parse().unwrap(),
                );
            }
            r
        }
    };
    Ok(resp)
}

fn status_resp(code: u16, text: &'static str) -> Response<Body> {
    let mut r = Response::new(full(text));
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r
}

fn json(v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(&v).unwrap()));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn echo(req: &Request<Incoming>, ctx: &Ctx) -> Response<Body> {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.to_string())
            .or_default()
            .push(v.to_str().unwrap_or("").to_owned());
    }
    let mut r = json(serde_json::json!({
        "backend": ctx.name,
        "region": ctx.region,
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    }));
    r.headers_mut()
        .insert("x-backend", ctx.name.parse().unwrap());
    r
}

// ---------------------------------------------------------------------------------------------
// Certificates and geo fixtures

/// A test CA and two leaf certificates, written as PEM files into `dir`.
pub struct TestCerts {
    pub ca_der: CertificateDer<'static>,
    pub dir: PathBuf,
}

impl TestCerts {
    /// `a.pem/a.key`: localhost, 127.0.0.1, a.geolb.test, *.geolb.test.
    /// `b.pem/b.key`: b.other.test.
    pub fn generate(dir: &Path) -> TestCerts {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "geolb test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf = |names: Vec<String>, stem: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, stem);
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
        };
        leaf(
            vec![
                "localhost".into(),
                "127.0.0.1".into(),
                "a.geolb.test".into(),
                "*.geolb.test".into(),
            ],
            "a",
        );
        leaf(vec!["b.other.test".into()], "b");
        leaf(vec!["backend.internal".into()], "backend");
        leaf(vec!["geolb-client".into()], "client");
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        TestCerts {
            ca_der: ca.der().clone(),
            dir: dir.to_path_buf(),
        }
    }
}

/// Test address plan for the generated City database.
pub const IP_FRANKFURT: &str = "192.0.2.10"; // DE, Frankfurt
pub const IP_BERLIN: &str = "192.0.2.200"; // DE, Berlin (same /24 split below)
pub const IP_SINGAPORE: &str = "198.51.100.7"; // SG
pub const IP_TOKYO: &str = "203.0.113.5"; // JP
pub const IP_CHINA: &str = "203.0.113.130"; // CN (override target)
pub const IP_BRAZIL_COUNTRY_ONLY: &str = "100.64.1.1"; // BR, country only → centroid
pub const IP_V6_FRANKFURT: &str = "2001:db8:1::42";
pub const IP_V6_SINGAPORE: &str = "2001:db8:2::42";
pub const IP_UNKNOWN: &str = "192.0.2.66"; // deliberately absent? no: see UNKNOWN_V4
pub const IP_NOWHERE: &str = "233.252.0.1"; // not in the database

/// Write a GeoIP2-City-layout database mapping the test ranges, return its path.
pub fn write_city_mmdb(dir: &Path) -> PathBuf {
    use maxminddb::geoip2::{self, Names, city};
    use mmdb_writer::{Writer, ipnet::IpNet};
    let rec = |cc: &'static str, cont: &'static str, name: &'static str, lat: f64, lon: f64| {
        geoip2::City {
            country: city::Country {
                iso_code: Some(cc),
                ..Default::default()
            },
            continent: city::Continent {
                code: Some(cont),
                ..Default::default()
            },
            city: city::City {
                names: Names {
                    english: Some(name),
                    ..Default::default()
                },
                ..Default::default()
            },
            location: city::Location {
                latitude: Some(lat),
                longitude: Some(lon),
                accuracy_radius: Some(20),
                ..Default::default()
            },
            ..Default::default()
        }
    };
    let mut w = Writer::builder("GeoIP2-City")
        .description(&[("en", "geolb test fixture")])
        .build_epoch(std::time::UNIX_EPOCH)
        .build();
    let ins = |w: &mut Writer, net: &str, r: &geoip2::City| {
        w.insert(net.parse::<IpNet>().unwrap(), r).unwrap()
    };
    let cities: [(&str, &'static str, &'static str, &'static str, f64, f64); 7] = [
        ("192.0.2.0/25", "DE", "EU", "Frankfurt", 50.11, 8.68),
        ("192.0.2.128/25", "DE", "EU", "Berlin", 52.52, 13.40),
        ("198.51.100.0/24", "SG", "AS", "Singapore", 1.29, 103.85),
        ("203.0.113.0/25", "JP", "AS", "Tokyo", 35.68, 139.75),
        ("203.0.113.128/25", "CN", "AS", "Shanghai", 31.23, 121.47),
        ("2001:db8:1::/48", "DE", "EU", "Frankfurt", 50.11, 8.68),
        ("2001:db8:2::/48", "SG", "AS", "Singapore", 1.29, 103.85),
    ];
    for (net, cc, cont, name, lat, lon) in cities {
        ins(&mut w, net, &rec(cc, cont, name, lat, lon));
    }
    let country_only = geoip2::City {
        country: city::Country {
            iso_code: Some("BR"),
            ..Default::default()
        },
        ..Default::default()
    };
    ins(&mut w, "100.64.0.0/16", &country_only);
    let path = dir.join("test-city.mmdb");
    std::fs::write(&path, w.to_bytes().unwrap()).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// geolb

/// A running geolb with its temp dir (certificates, database, routes.toml).
pub struct Geolb {
    pub running: Option<geolb::Running>,
    pub dir: tempfile::TempDir,
    pub certs: TestCerts,
    pub config: PathBuf,
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// Listener, TLS and geo sections shared by most tests. `{dir}` is the temp dir.
pub fn base_config(dir: &Path) -> String {
    format!(
        r#"
[listeners]
https = "127.0.0.1:0"
http = {{ address = "127.0.0.1:0", mode = "serve" }}
admin = "127.0.0.1:0"

[client_ip]
trusted_proxies = ["127.0.0.0/8"]

[geo]
database = "{db}"

[access_log]
enabled = false

[[tls.certificates]]
names = ["localhost", "127.0.0.1", "a.geolb.test", "*.geolb.test"]
cert = "{dir}/a.pem"
key = "{dir}/a.key"
default = true

[[tls.certificates]]
names = ["b.other.test"]
cert = "{dir}/b.pem"
key = "{dir}/b.key"

[regions.eu-central]
location = [50.11, 8.68]

[regions.ap-southeast]
location = [1.29, 103.85]
"#,
        dir = dir.display(),
        db = dir.join("test-city.mmdb").display(),
    )
}

/// Prepare a temp dir with certificates and the database; returns it for building configs.
pub fn prepare() -> (tempfile::TempDir, TestCerts) {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path());
    write_city_mmdb(dir.path());
    (dir, certs)
}

impl Geolb {
    /// Start geolb on `config_body` (appended to `base_config`), watching the file.
    pub async fn start(services_and_routes: &str) -> Geolb {
        let (dir, certs) = prepare();
        let text = format!("{}\n{}", base_config(dir.path()), services_and_routes);
        Self::start_raw(dir, certs, &text, true).await
    }

    pub async fn start_raw(
        dir: tempfile::TempDir,
        certs: TestCerts,
        text: &str,
        watch: bool,
    ) -> Geolb {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let config = dir.path().join("routes.toml");
        std::fs::write(&config, text).unwrap();
        let running = geolb::App::start(geolb::Options {
            config: config.clone(),
            watch,
        })
        .await
        .unwrap_or_else(|e| panic!("geolb did not start: {e}"));
        Geolb {
            https: running.https,
            http: running.http,
            admin: running.admin,
            running: Some(running),
            dir,
            certs,
            config,
        }
    }

    pub fn shared(&self) -> &Arc<geolb::Shared> {
        &self.running.as_ref().unwrap().shared
    }

    pub async fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// TLS client config trusting the test CA, with the given ALPN.
    pub fn tls_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.certs.ca_der.clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        cfg
    }

    /// Open a TLS connection to the https listener with `sni`.
    pub async fn tls_connect(
        &self,
        sni: &str,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.https.unwrap()).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.tls_config(alpn)));
        connector
            .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
            .await
            .unwrap()
    }

    /// A pooled HTTPS client (HTTP/1.1, or h2 when `h2`) for `https://localhost:PORT/…`.
    pub fn client(
        &self,
        h2: bool,
    ) -> hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Body,
    > {
        let cfg = self.tls_config(&[]);
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(cfg)
            .https_only();
        let conn = if h2 {
            b.enable_http2().build()
        } else {
            b.enable_http1().build()
        };
        let mut cb = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        cb.http2_only(h2);
        cb.build(conn)
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https.unwrap().port())
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http.unwrap().port())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.unwrap())
    }
}

/// Plain HTTP/1.1 client (for the http listener and the admin API).
pub fn plain_client()
-> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// GET with an `X-Forwarded-For` client address; returns (status, headers, body).
pub async fn get_as<C>(
    client: &hyper_util::client::legacy::Client<C, Body>,
    url: &str,
    xff: Option<&str>,
) -> (StatusCode, http::HeaderMap, Bytes)
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let mut b = Request::get(url);
    if let Some(ip) = xff {
        b = b.header("x-forwarded-for", ip);
    }
    let resp = tokio::time::timeout(WAIT, client.request(b.body(full("")).unwrap()))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (status, headers, body)
}

/// Parse an echo body.
pub fn echo_json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

/// Fetch an admin path as text.
pub async fn admin_get(g: &Geolb, path: &str) -> (StatusCode, String) {
    let (s, _, b) = get_as(&plain_client(), &g.admin_url(path), None).await;
    (s, String::from_utf8_lossy(&b).into_owned())
}

/// `services.NAME` with backends, as TOML.
pub fn service_toml(name: &str, backends: &[&TestBackend], extra: &str) -> String {
    let mut s = format!("[services.{name}]\n{extra}\nbackends = [\n");
    for b in backends {
        s.push_str(&format!(
            "  {{ region = \"{}\", address = \"{}\" }},\n",
            b.region, b.addr
        ));
    }
    s.push_str("]\n");
    s
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Reload helpers: steady load, config writing, status and metric reading

pub fn write_atomic(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Two HTTP/1.1 keep-alive clients and two h2 clients, each sending GETs back to back.
pub fn start_load(g: &Geolb) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for h2 in [false, false, true, true] {
        let client = g.client(h2);
        let url = g.url("/");
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, _, _) = get_as(&client, &url, Some(IP_FRANKFURT)).await;
                if status == StatusCode::OK {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    Load {
        stop,
        ok,
        failed,
        tasks,
    }
}

impl Load {
    pub async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    pub async fn wait_for_requests(&self, n: u64) {
        let ok = self.ok.clone();
        eventually("load is flowing", || ok.load(Ordering::Relaxed) >= n).await;
    }
}

pub fn routes(a: &TestBackend, b: &TestBackend, weight_a: u32, extra: &str) -> String {
    format!(
        "[services.app]\nbackends = [\n  {{ region = \"eu-central\", address = \"{}\", weight = {weight_a} }},\n  {{ region = \"eu-central\", address = \"{}\" }},\n]\n\n[[routes]]\nservice = \"app\"\n{extra}",
        a.addr, b.addr
    )
}

pub async fn reload_status(g: &Geolb) -> serde_json::Value {
    let (_, text) = admin_get(g, "/status").await;
    serde_json::from_str(&text).unwrap()
}

/// This process's resident memory in KiB (`VmRSS`).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// True when `task` is still running after `window`: used to show something is *not* served
/// (a false pass on a slow machine is possible, a false failure is not).
pub async fn still_pending_after<T>(task: &tokio::task::JoinHandle<T>, window: Duration) -> bool {
    tokio::time::timeout(window, async {
        while !task.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_err()
}

// ---------------------------------------------------------------------------------------------
// Fixed-rate (open-loop) load

/// What a [`RateLoad`] saw.
#[derive(Default)]
pub struct RateStats {
    /// Requests sent.
    pub sent: AtomicU64,
    pub get_ok: AtomicU64,
    pub get_failed: AtomicU64,
    pub post_ok: AtomicU64,
    pub post_failed: AtomicU64,
    /// `x-test-id` of every POST answered 200.
    pub post_ok_ids: std::sync::Mutex<Vec<String>>,
    /// "METHOD status error" of the first failures, for assertion messages.
    pub failures: std::sync::Mutex<Vec<String>>,
}

impl RateStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Requests at a fixed rate, each on its own task, so a slow or failing backend never slows
/// the offered load; the client never retries.
pub struct RateLoad {
    stop: Arc<AtomicBool>,
    ticker: tokio::task::JoinHandle<()>,
    requests: TaskTracker,
    pub stats: Arc<RateStats>,
}

/// `per_sec` requests per second to `path` on geolb's plain-HTTP listener, as a client in
/// Frankfurt; every `post_every`-th is a POST carrying a unique `x-test-id` (0 = GETs only).
pub fn start_rate_load(g: &Geolb, per_sec: u32, path: &str, post_every: u64) -> RateLoad {
    let client: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .retry_canceled_requests(false)
            .build_http();
    let url = g.http_url(path);
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(RateStats::default());
    let requests = TaskTracker::new();
    let (stop2, stats2, tracker) = (stop.clone(), stats.clone(), requests.clone());
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / per_sec);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut n = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            tick.tick().await;
            n += 1;
            let post = post_every != 0 && n % post_every == 0;
            let mut b = if post {
                Request::post(&url).header("x-test-id", n.to_string())
            } else {
                Request::get(&url)
            };
            b = b.header("x-forwarded-for", IP_FRANKFURT);
            let req = b.body(full(if post { "order" } else { "" })).unwrap();
            let (client, stats) = (client.clone(), stats2.clone());
            stats.sent.fetch_add(1, Ordering::Relaxed);
            tracker.spawn(async move {
                let sent = tokio::time::timeout(WAIT, client.request(req)).await;
                let (ok, what) = match sent {
                    Ok(Ok(resp)) => {
                        let status = resp.status();
                        let err = resp.headers().get("x-geolb-error").cloned();
                        let _ = resp.into_body().collect().await;
                        (status == StatusCode::OK, format!("{status} {err:?}"))
                    }
                    Ok(Err(e)) => (false, format!("client error {e}")),
                    Err(_) => (false, "timed out".to_owned()),
                };
                let counter = match (post, ok) {
                    (false, true) => &stats.get_ok,
                    (false, false) => &stats.get_failed,
                    (true, true) => &stats.post_ok,
                    (true, false) => &stats.post_failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if post && ok {
                    stats.post_ok_ids.lock().unwrap().push(n.to_string());
                }
                if !ok {
                    let mut f = stats.failures.lock().unwrap();
                    if f.len() < 50 {
                        f.push(format!(
                            "{} #{n}: {what}",
                            if post { "POST" } else { "GET" }
                        ));
                    }
                }
            });
        }
    });
    RateLoad {
        stop,
        ticker,
        requests,
        stats,
    }
}

impl RateLoad {
    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.stats.sent.load(Ordering::Relaxed)
    }

    /// Stop sending and wait for every request to be answered.
    pub async fn finish(self) -> Arc<RateStats> {
        self.stop.store(true, Ordering::Relaxed);
        self.ticker.await.unwrap();
        self.requests.close();
        self.requests.wait().await;
        self.stats
    }
}
