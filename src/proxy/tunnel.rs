//! Upgraded-connection (WebSocket) plumbing: an I/O wrapper that records when bytes last
//! moved in either direction, for the tunnel idle timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::Edge;

use crate::time::now_ms;

/// Tunnel an upgraded (WebSocket) connection until either side closes or shutdown.
pub(crate) fn spawn_tunnel(
    edge: &Edge,
    client: OnUpgrade,
    upstream: OnUpgrade,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
    idle: Duration,
) {
    let hard = edge.hard.clone();
    edge.tasks.spawn(async move {
        let _permit = permit; // the tunnel keeps its connection slot
        let (Ok(c), Ok(u)) = tokio::join!(client, upstream) else {
            tracing::debug!("upgrade failed on one side");
            return;
        };
        let last = Arc::new(std::sync::atomic::AtomicU64::new(now_ms()));
        let mut c = Tracked::new(TokioIo::new(c), last.clone());
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
                    let quiet = now_ms().saturating_sub(last.load(Ordering::Relaxed));
                    if quiet >= idle.as_millis() as u64 {
                        tracing::debug!("tunnel idle for {quiet} ms; closing");
                        return;
                    }
                }
            }
        }
    });
}

/// Wraps one side of a tunnel; every read or write that moves bytes stamps `last` (now_ms).
pub(crate) struct Tracked<T> {
    inner: T,
    last: Arc<AtomicU64>,
}

impl<T> Tracked<T> {
    pub(crate) fn new(inner: T, last: Arc<AtomicU64>) -> Self {
        Tracked { inner, last }
    }

    fn touch(&self) {
        self.last.store(now_ms(), Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
