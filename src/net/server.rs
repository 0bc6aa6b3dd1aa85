//! Accept loops for the public listeners: connection limit, EMFILE backoff, PROXY protocol,
//! TLS with a handshake timeout, hyper's HTTP/1.1 or h2 connection (by ALPN, else by sniffing
//! for the h2 preface) with header-read timer and h2 flood limits, and graceful drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::net::prefixed::{Prefixed, WriteStall};
use crate::observe::metrics::{
    CLIENT_SEND_TIMEOUTS_TOTAL, CONNECTIONS_ACTIVE, CONNECTIONS_TOTAL, TLS_HANDSHAKES_TOTAL,
};
use crate::proxy::Edge;
use crate::proxy::body::RespBody;
use crate::proxy::{self, ConnInfo, ListenerKind, TlsConnInfo};
use crate::route::{HttpMode, Snapshot};

/// Accept until `stop` fires (shutdown, or the listener moved to another address).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    shared: Arc<Edge>,
    stop: tokio_util::sync::CancellationToken,
) {
    let max = shared.snapshot.load().settings.limits.max_connections;
    let permits = Arc::new(Semaphore::new(max));
    let label = kind.label();
    let active = metrics::gauge!(CONNECTIONS_ACTIVE, "listener" => label);
    let total = metrics::counter!(CONNECTIONS_TOTAL, "listener" => label);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let Some((stream, peer)) = crate::net::accept::next(&listener, &stop, label).await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        total.increment(1);
        active.increment(1.0);
        let shared2 = shared.clone();
        let active2 = active.clone();
        shared.tasks.spawn(async move {
            // The permit travels with the connection (and any WebSocket tunnel it becomes), so
            // `max_connections` also bounds upgraded connections.
            serve_conn(stream, peer, kind, shared2, Arc::new(permit)).await;
            active2.decrement(1.0);
        });
    }
}

async fn serve_conn(
    mut stream: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    shared: Arc<Edge>,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
) {
    let snap = shared.snapshot.load_full();
    let settings = &snap.settings;
    let mut source = peer.ip().to_canonical();
    if settings.proxy_protocol {
        if !settings.trusted.contains(source) {
            tracing::debug!(%peer, "PROXY header expected from an untrusted peer; closing");
            return;
        }
        // Boxed (as are the TLS handshake and the HTTP phase below): a task's future is as
        // large as its largest state, and an idle connection should carry only what it uses.
        let read = crate::net::proxy_protocol::read_header(&mut stream);
        // (`let` first: a temporary in an awaited statement would keep a slot in this future.)
        let read = Box::pin(tokio::time::timeout(settings.timeouts.proxy_protocol, read));
        match read.await {
            Ok(Ok(Some(addr))) => source = addr.ip().to_canonical(),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "bad PROXY header; closing");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "PROXY header timeout; closing");
                return;
            }
        }
    }
    match kind {
        // Boxed per branch: an idle plain connection does not carry the TLS branch's state.
        ListenerKind::Https => {
            let tls = Box::pin(serve_tls(stream, peer, source, permit, shared, snap));
            tls.await
        }
        ListenerKind::Admin => {}
        ListenerKind::Http => {
            let mode = settings.http.map_or(HttpMode::Serve, |(_, m)| m);
            let port = stream.local_addr().map_or(0, |a| a.port());
            let info = ConnInfo::new(peer, source, port, permit, ListenerKind::Http, None);
            let redirect = (mode == HttpMode::Redirect)
                .then(|| shared.https_port.load(std::sync::atomic::Ordering::Relaxed));
            let http = Box::pin(serve_http(
                stream,
                info,
                shared,
                snap,
                Proto::Sniff,
                redirect,
            ));
            http.await;
        }
    }
}

/// TLS handshake (bounded by `timeouts.tls_handshake`), then HTTP over it.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    source: std::net::IpAddr,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
    shared: Arc<Edge>,
    snap: Arc<Snapshot>,
) {
    let Some(tls) = snap.tls.clone() else { return };
    let settings = &snap.settings;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let hs = Box::pin(tokio::time::timeout(
        settings.timeouts.tls_handshake,
        acceptor.accept(stream),
    ));
    let hs = hs.await;
    let tls_stream = match hs {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            metrics::counter!(TLS_HANDSHAKES_TOTAL, "result" => "error", "version" => "none")
                .increment(1);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics::counter!(TLS_HANDSHAKES_TOTAL, "result" => "timeout", "version" => "none")
                .increment(1);
            return;
        }
    };
    let (_, conn) = tls_stream.get_ref();
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "other",
    };
    let alpn = match conn.alpn_protocol() {
        Some(b"h2") => "h2",
        Some(b"http/1.1") => "http/1.1",
        _ => "none",
    };
    metrics::counter!(TLS_HANDSHAKES_TOTAL, "result" => "ok", "version" => version).increment(1);
    let sni = conn.server_name().map(str::to_ascii_lowercase);
    let tls_info = TlsConnInfo {
        certs: tls.certs.clone(),
        cert_idx: tls.certs.index_for(sni.as_deref()),
        version,
        alpn,
        sni: sni.map(String::into_boxed_str),
    };
    let port = tls_stream.get_ref().0.local_addr().map_or(0, |a| a.port());
    let info = ConnInfo::new(
        peer,
        source,
        port,
        permit,
        ListenerKind::Https,
        Some(tls_info),
    );
    let proto = match alpn {
        "h2" => Proto::Http2,
        "http/1.1" => Proto::Http1,
        _ => Proto::Sniff,
    };
    serve_http(tls_stream, info, shared, snap, proto, None).await;
}

type ServiceFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<Response<RespBody>, std::convert::Infallible>>
            + Send,
    >,
>;

fn http1_builder(s: &Snapshot) -> http1::Builder {
    let lim = &s.settings.limits;
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(s.settings.timeouts.request_header)
        .max_buf_size(lim.max_header_bytes.max(8192))
        .max_headers(lim.max_headers)
        .keep_alive(true)
        .half_close(false);
    b
}

fn http2_builder(s: &Snapshot) -> http2::Builder<TokioExecutor> {
    let lim = &s.settings.limits;
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(lim.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(lim.h2_max_pending_resets)
        .max_local_error_reset_streams(lim.h2_max_local_error_resets)
        .max_header_list_size(lim.max_header_bytes as u32)
        .max_send_buf_size(256 * 1024)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http1,
    Http2,
    /// Not negotiated (plain text, or TLS without ALPN): HTTP/2 if the client opens with the
    /// connection preface (prior knowledge), else HTTP/1.x.
    Sniff,
}

async fn serve_http<I>(
    io: I,
    info: ConnInfo,
    shared: Arc<Edge>,
    snap: Arc<Snapshot>,
    proto: Proto,
    redirect_port: Option<u16>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stall = Arc::new(WriteStall::default());
    let mut io = Prefixed::new(io, stall.clone());
    let proto = match proto {
        Proto::Sniff => {
            let sniff = io.sniff_h2_preface();
            match tokio::time::timeout(snap.settings.timeouts.request_header, sniff).await {
                Ok(Ok(true)) => Proto::Http2,
                Ok(Ok(false)) => Proto::Http1,
                Ok(Err(_)) | Err(_) => return,
            }
        }
        p => p,
    };
    let info = Arc::new(info);
    let activity = info.clone();
    let shared2 = shared.clone();
    // The per-request future is boxed: hyper keeps the allocation for the service future for
    // the connection's lifetime, and an idle keep-alive connection should not carry the
    // whole proxying state machine (several KiB) while it waits.
    let svc = service_fn(move |req: Request<Incoming>| -> ServiceFuture {
        let info = info.clone();
        let shared = shared2.clone();
        Box::pin(async move {
            match redirect_port {
                Some(port) => Ok(redirect(&req, port)),
                None => proxy::handle(req, info, shared).await,
            }
        })
    });
    let limits = Lifetime {
        idle: snap.settings.timeouts.keepalive_idle,
        send: snap.settings.timeouts.client_send,
        stall,
    };
    // Boxed: the connection lives on the heap, sized for its own protocol only.
    if proto == Proto::Http2 {
        let conn = Box::pin(http2_builder(&snap).serve_connection(TokioIo::new(io), svc));
        drop(snap);
        drive(conn, |c| c.graceful_shutdown(), &shared, &activity, &limits).await;
    } else {
        let conn = http1_builder(&snap)
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        let conn = Box::pin(conn);
        drop(snap);
        drive(conn, |c| c.graceful_shutdown(), &shared, &activity, &limits).await;
    }
}

/// What ends a connection besides the client: idleness and a client that stopped reading.
struct Lifetime {
    /// No request in flight for this long: close gracefully.
    idle: Duration,
    /// A write to the client blocked for this long: close at once.
    send: Duration,
    stall: Arc<WriteStall>,
}

/// Run a connection to its end. Idle connections (no request in flight for `keepalive_idle`)
/// and all connections on drain are closed gracefully: HTTP/1.1 after the current exchange,
/// h2 with GOAWAY, then given `shutdown_drain` to finish. A connection whose client has not
/// taken any bytes for `client_send` while geolb had some to write is dropped there and then
/// (nginx's `send_timeout`).
async fn drive<C>(
    mut conn: std::pin::Pin<Box<C>>,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
    shared: &Edge,
    activity: &ConnInfo,
    limits: &Lifetime,
) where
    C: std::future::Future<Output = Result<(), hyper::Error>>,
{
    let tick = (limits.idle.min(limits.send) / 4).max(Duration::from_millis(50));
    let send_ms = limits.send.as_millis() as u64;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shared.drain.cancelled() => break,
            _ = tokio::time::sleep(tick) => {
                if limits.stall.blocked_ms() >= send_ms {
                    tracing::debug!(peer = %activity.peer, "client stopped reading; closing");
                    metrics::counter!(CLIENT_SEND_TIMEOUTS_TOTAL).increment(1);
                    return;
                }
                if activity.is_idle_for(limits.idle) {
                    break;
                }
            }
        }
    }
    graceful(conn.as_mut());
    let deadline = shared.snapshot.load().settings.timeouts.shutdown_drain;
    let _ = tokio::time::timeout(deadline, conn).await;
}

/// 308 to the same path on https.
fn redirect(req: &Request<Incoming>, port: u16) -> Response<RespBody> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.host().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| {
                    let mut b = [0u8; 256];
                    crate::route::normalize_host(h, &mut b)
                        .unwrap_or("")
                        .to_owned()
                })
        })
        .unwrap_or_default();
    if host.is_empty() {
        return crate::proxy::error::ProxyError::BadRequest("missing Host header").response();
    }
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    let location = if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    };
    let mut resp = Response::new(RespBody::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("geolb"));
    resp
}
