//! The request body sent upstream: empty, buffered (replayable), or streamed from the client
//! through a slot that one attempt at most may claim.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client stopped sending its body for longer than `timeouts.request_body`.
#[derive(Debug, thiserror::Error)]
#[error("client request body timed out")]
pub(crate) struct BodyTimeout;

/// The body limit was crossed while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body over the limit")]
pub(crate) struct OverLimit;

/// Shared between attempts: the client body stays here until an attempt first polls it.
#[derive(Debug)]
pub struct BodySlot {
    body: Mutex<Option<Incoming>>,
    /// Claimed by the first attempt that polls it; only that attempt may ever read it.
    started: AtomicBool,
    over_limit: AtomicBool,
    timed_out: AtomicBool,
    /// The client's body failed (bad framing, reset): the client's fault, not the backend's.
    client_failed: AtomicBool,
    /// The whole body was handed to the upstream connection.
    finished: AtomicBool,
    finished_notify: tokio::sync::Notify,
    hint: SizeHint,
}

impl BodySlot {
    pub fn new(body: Incoming) -> Arc<BodySlot> {
        let hint = body.size_hint();
        Arc::new(BodySlot {
            body: Mutex::new(Some(body)),
            started: AtomicBool::new(false),
            over_limit: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            client_failed: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            finished_notify: tokio::sync::Notify::new(),
            hint,
        })
    }

    /// True once an attempt has read from the client body (it can no longer be replayed).
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    pub fn over_limit(&self) -> bool {
        self.over_limit.load(Ordering::Acquire)
    }

    /// The client stalled while sending its body.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Acquire)
    }

    /// The client's body itself failed (malformed chunking, reset stream).
    pub fn client_failed(&self) -> bool {
        self.client_failed.load(Ordering::Acquire)
    }

    fn finish(&self) {
        if !self.finished.swap(true, Ordering::AcqRel) {
            self.finished_notify.notify_waiters();
        }
    }

    /// Resolves once the whole body has been handed upstream (the backend's response clock
    /// starts then, so a slow upload is never blamed on the backend).
    pub async fn sent(&self) {
        let notified = self.finished_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.finished.load(Ordering::Acquire) {
            notified.await;
        }
    }
}

/// The body was already claimed by an earlier attempt: it cannot be sent twice.
#[derive(Debug, thiserror::Error)]
#[error("request body already consumed by an earlier attempt")]
pub(crate) struct AlreadyClaimed;

/// Request body sent upstream.
#[derive(Debug)]
pub enum ReqBody {
    Empty,
    /// Fully buffered (replayable any number of times by cloning the `Bytes`).
    Full(Option<Bytes>),
    /// Streams the client body; takes it from the slot on the first poll.
    Stream {
        slot: Arc<BodySlot>,
        inner: Option<Incoming>,
        seen: u64,
        limit: Option<u64>,
        /// Longest wait for the next piece of the client's body; reset on every frame.
        idle: std::time::Duration,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    },
}

impl ReqBody {
    pub fn stream(slot: Arc<BodySlot>, limit: Option<u64>, idle: std::time::Duration) -> ReqBody {
        ReqBody::Stream {
            slot,
            inner: None,
            seen: 0,
            limit,
            idle,
            timer: None,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Stream {
                slot,
                inner,
                seen,
                limit,
                idle,
                timer,
            } => {
                if inner.is_none() {
                    // Claim the body once; a later attempt must fail rather than send nothing.
                    if slot.started.swap(true, Ordering::AcqRel) {
                        return Poll::Ready(Some(Err(Box::new(AlreadyClaimed))));
                    }
                    *inner = slot.body.lock().unwrap_or_else(|e| e.into_inner()).take();
                }
                let Some(body) = inner.as_mut() else {
                    slot.finish();
                    return Poll::Ready(None);
                };
                let polled = Pin::new(body).poll_frame(cx);
                if polled.is_pending() {
                    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(*idle)));
                    if t.as_mut().poll(cx).is_ready() {
                        slot.timed_out.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                    }
                    return Poll::Pending;
                }
                *timer = None;
                match polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(d) = frame.data_ref() {
                            *seen += d.len() as u64;
                            if limit.is_some_and(|l| *seen > l) {
                                slot.over_limit.store(true, Ordering::Release);
                                return Poll::Ready(Some(Err(Box::new(OverLimit))));
                            }
                        }
                        if inner.as_ref().is_some_and(|b| b.is_end_stream()) {
                            slot.finish();
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        slot.client_failed.store(true, Ordering::Release);
                        Poll::Ready(Some(Err(Box::new(e))))
                    }
                    Poll::Ready(None) => {
                        slot.finish();
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream { inner: Some(b), .. } => b.is_end_stream(),
            ReqBody::Stream { slot, .. } => slot.hint.exact() == Some(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Stream { inner: Some(b), .. } => b.size_hint(),
            ReqBody::Stream { slot, .. } => slot.hint,
        }
    }
}

/// Read a whole client body known to be at most `cap` bytes (a replayable copy).
pub(crate) async fn buffer_small(body: Incoming, cap: u64) -> Result<Bytes, BoxError> {
    let limited = http_body_util::Limited::new(body, cap as usize);
    Ok(limited.collect().await?.to_bytes())
}
