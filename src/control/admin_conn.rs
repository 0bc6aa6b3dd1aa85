//! One admin connection under `[admin]` limits. A watchdog follows the connection through
//! its phases — idle, reading a request head, an exchange (head read → last response byte
//! written) — and closes it when a phase outlives its timeout: an idle keep-alive connection
//! gracefully, a stalled head or an overrunning exchange (a client that stopped reading
//! included) at once. The connection limit itself is the accept loop's (`admin::serve`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::route::AdminLimits;
use crate::time::now_ms;

/// Where a connection is in its request/response cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Between exchanges (or before the first): nothing of a request has arrived.
    Idle,
    /// Bytes of a request head have arrived; the handler has not been called yet.
    Head,
    /// The handler was called and its response is not completely handed to hyper yet.
    Exchange,
}

/// A connection's phase and timestamps (`now_ms()` milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clock {
    pub(crate) phase: Phase,
    /// When the current phase began.
    pub(crate) since: u64,
    /// When the last exchange began (its deadline also covers writing its response).
    pub(crate) exchange: u64,
}

/// What the watchdog does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    /// Idle too long: close gracefully.
    Close,
    /// A stalled head or an exchange past its deadline: drop the connection now.
    Cut(&'static str),
}

/// The watchdog's rule. `blocked` is true while a write to the client cannot proceed (the
/// response is written but not taken): that still belongs to the last exchange.
pub(crate) fn verdict(c: &Clock, blocked: bool, now: u64, lim: &AdminLimits) -> Verdict {
    let ms = |d: Duration| d.as_millis() as u64;
    let exchange_over = now.saturating_sub(c.exchange) >= ms(lim.request);
    match c.phase {
        Phase::Exchange if exchange_over => Verdict::Cut("request deadline"),
        Phase::Idle if blocked && exchange_over => Verdict::Cut("client stopped reading"),
        Phase::Head if now.saturating_sub(c.since) >= ms(lim.request_header) => {
            Verdict::Cut("request head timeout")
        }
        Phase::Idle if !blocked && now.saturating_sub(c.since) >= ms(lim.keepalive_idle) => {
            Verdict::Close
        }
        _ => Verdict::Keep,
    }
}

/// A connection's shared state: its clock, and since when a write has been blocked (0: none).
#[derive(Debug)]
struct Watch {
    clock: Mutex<Clock>,
    blocked_since: std::sync::atomic::AtomicU64,
}

impl Watch {
    fn new(now: u64) -> Watch {
        Watch {
            clock: Mutex::new(Clock {
                phase: Phase::Idle,
                since: now,
                exchange: now,
            }),
            blocked_since: Default::default(),
        }
    }

    fn set(&self, from: Option<Phase>, to: Phase) {
        let mut c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        if from.is_none_or(|f| f == c.phase) {
            let now = now_ms();
            c.phase = to;
            c.since = now;
            if to == Phase::Exchange {
                c.exchange = now;
            }
        }
    }

    fn record_write<T>(&self, r: &Poll<T>) {
        use std::sync::atomic::Ordering::Relaxed;
        match (r.is_pending(), self.blocked_since.load(Relaxed)) {
            (true, 0) => self.blocked_since.store(now_ms().max(1), Relaxed),
            (false, s) if s != 0 => self.blocked_since.store(0, Relaxed),
            _ => {}
        }
    }

    fn verdict(&self, lim: &AdminLimits) -> Verdict {
        let c = *self.clock.lock().unwrap_or_else(|e| e.into_inner());
        let blocked = self
            .blocked_since
            .load(std::sync::atomic::Ordering::Relaxed)
            != 0;
        verdict(&c, blocked, now_ms(), lim)
    }
}

/// Ends the exchange when the response body is dropped (hyper has taken all of it).
struct ExchangeEnd(Arc<Watch>);

impl Drop for ExchangeEnd {
    fn drop(&mut self) {
        self.0.set(Some(Phase::Exchange), Phase::Idle);
    }
}

/// A response body that ends its exchange when hyper drops it (all of it was taken).
struct Tracked {
    body: Full<Bytes>,
    _end: ExchangeEnd,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Serve one admin connection with `handler` until it closes, a limit closes it, or `hard`
/// fires. The caller holds the connection's permit for as long as this runs.
pub(crate) async fn serve<H, F>(
    stream: TcpStream,
    lim: AdminLimits,
    hard: CancellationToken,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let watch = Arc::new(Watch::new(now_ms()));
    let io = Watched {
        io: stream,
        watch: watch.clone(),
    };
    let w = watch.clone();
    let handler = Arc::new(handler);
    let svc = service_fn(move |req| {
        w.set(None, Phase::Exchange);
        let end = ExchangeEnd(w.clone());
        let fut = handler(req);
        async move {
            let resp = fut.await;
            Ok::<_, Infallible>(resp.map(move |body| Tracked { body, _end: end }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let shortest = lim.request_header.min(lim.keepalive_idle).min(lim.request);
    let tick = (shortest / 4).clamp(Duration::from_millis(10), Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = hard.cancelled() => return,
            _ = tokio::time::sleep(tick) => match watch.verdict(&lim) {
                Verdict::Keep => {}
                Verdict::Close => break,
                Verdict::Cut(why) => {
                    tracing::debug!(reason = why, "admin connection closed");
                    return;
                }
            },
        }
    }
    // Idle: an HTTP/1 connection with nothing in flight closes at once; bounded regardless.
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = tokio::time::timeout(lim.request, conn) => {}
        _ = hard.cancelled() => {}
    }
}

/// The client socket, reporting to the connection's [`Watch`]: the first bytes read while
/// idle start a request head; writes that cannot proceed are timed.
struct Watched {
    io: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.set(Some(Phase::Idle), Phase::Head);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch.record_write(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch.record_write(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.watch.record_write(&r);
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> AdminLimits {
        AdminLimits {
            max_connections: 4,
            request_header: Duration::from_millis(100),
            keepalive_idle: Duration::from_millis(1000),
            request: Duration::from_millis(500),
        }
    }

    fn clock(phase: Phase, since: u64, exchange: u64) -> Clock {
        Clock {
            phase,
            since,
            exchange,
        }
    }

    #[test]
    fn each_phase_has_its_own_timeout() {
        let l = lim();
        // Idle: keep-alive idle, gracefully.
        assert_eq!(
            verdict(&clock(Phase::Idle, 0, 0), false, 999, &l),
            Verdict::Keep
        );
        assert_eq!(
            verdict(&clock(Phase::Idle, 0, 0), false, 1000, &l),
            Verdict::Close
        );
        // A head that started arriving: the header timeout, measured from its first byte.
        let head = clock(Phase::Head, 5000, 0);
        assert_eq!(verdict(&head, false, 5099, &l), Verdict::Keep);
        assert!(matches!(verdict(&head, false, 5100, &l), Verdict::Cut(_)));
        // An exchange: the request deadline, even while the handler is busy.
        let ex = clock(Phase::Exchange, 100, 100);
        assert_eq!(verdict(&ex, false, 599, &l), Verdict::Keep);
        assert!(matches!(verdict(&ex, false, 600, &l), Verdict::Cut(_)));
    }

    #[test]
    fn a_response_the_client_does_not_take_counts_against_its_exchange() {
        let l = lim();
        // The handler finished at 200 (idle since then) but the write is still blocked: the
        // deadline of the exchange that began at 100 applies, not keep-alive idleness.
        let c = clock(Phase::Idle, 200, 100);
        assert_eq!(verdict(&c, true, 599, &l), Verdict::Keep);
        assert_eq!(
            verdict(&c, true, 600, &l),
            Verdict::Cut("client stopped reading")
        );
        // Blocked writes never count as idle.
        assert_eq!(verdict(&c, true, 250, &l), Verdict::Keep);
    }
}
