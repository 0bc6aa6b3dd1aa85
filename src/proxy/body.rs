//! The response body sent to the client, and the accounting it carries until it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::health::BackendHealth;

/// The backend's request in flight, which must outlive the response headers: released when
/// the body ends or drops.
#[derive(Debug)]
pub(crate) struct InflightGuard {
    backend: Arc<BackendHealth>,
}

impl InflightGuard {
    pub(crate) fn new(backend: Arc<BackendHealth>) -> Self {
        backend.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard { backend }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.backend.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Response body sent to the client.
#[derive(Debug)]
pub(crate) enum RespBody {
    Full(Option<Bytes>),
    Upstream {
        inner: Incoming,
        guard: Option<InflightGuard>,
        /// The connection's activity count; released with the body.
        activity: Option<crate::proxy::conn::ActivityGuard>,
        /// The access-log record, written when the body ends (with bytes and duration).
        log: Option<Box<crate::observe::access_log::PendingLog>>,
    },
}

impl RespBody {
    pub(crate) fn full(b: impl Into<Bytes>) -> RespBody {
        RespBody::Full(Some(b.into()))
    }

    pub(crate) fn empty() -> RespBody {
        RespBody::Full(None)
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RespBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Upstream {
                inner,
                guard,
                activity,
                log,
            } => {
                let r = Pin::new(inner).poll_frame(cx);
                match &r {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(l), Some(d)) = (log.as_mut(), frame.data_ref()) {
                            l.sent(d.len());
                        }
                    }
                    Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                        guard.take();
                        activity.take();
                        log.take();
                    }
                    Poll::Pending => {}
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(b) => b.is_none(),
            RespBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}
