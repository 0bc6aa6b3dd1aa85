//! The request body sent upstream: empty, buffered (replayable), or streamed from the client
//! through a slot that one attempt at most may claim.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's body was cut: paused too long, too slow, or too long overall (the slot's
/// `cut()` says which).
#[derive(Debug, thiserror::Error)]
#[error("client request body timed out")]
pub(crate) struct BodyTimeout;

/// The body limit was crossed while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body over the limit")]
pub(crate) struct OverLimit;

/// Shared between attempts: the client body stays here until an attempt first polls it.
#[derive(Debug)]
pub(crate) struct BodySlot {
    body: Mutex<Option<Incoming>>,
    /// Claimed by the first attempt that polls it; only that attempt may ever read it.
    started: AtomicBool,
    over_limit: AtomicBool,
    /// Why the client's body was cut (`Cut` as u8; 0 = not cut).
    cut: AtomicU8,
    /// The client's body failed (bad framing, reset): the client's fault, not the backend's.
    client_failed: AtomicBool,
    /// The whole body was handed to the upstream connection.
    finished: AtomicBool,
    finished_notify: tokio::sync::Notify,
    hint: SizeHint,
}

impl BodySlot {
    pub(crate) fn new(body: Incoming) -> Arc<BodySlot> {
        let hint = body.size_hint();
        Arc::new(BodySlot {
            body: Mutex::new(Some(body)),
            started: AtomicBool::new(false),
            over_limit: AtomicBool::new(false),
            cut: AtomicU8::new(0),
            client_failed: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            finished_notify: tokio::sync::Notify::new(),
            hint,
        })
    }

    /// True once an attempt has read from the client body (it can no longer be replayed).
    pub(crate) fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    pub(crate) fn over_limit(&self) -> bool {
        self.over_limit.load(Ordering::Acquire)
    }

    /// Why the client's body was cut (paused too long, too slow, too long overall).
    pub(crate) fn cut(&self) -> Option<Cut> {
        match self.cut.load(Ordering::Acquire) {
            1 => Some(Cut::Idle),
            2 => Some(Cut::Rate),
            3 => Some(Cut::Total),
            _ => None,
        }
    }

    /// The client's body itself failed (malformed chunking, reset stream).
    pub(crate) fn client_failed(&self) -> bool {
        self.client_failed.load(Ordering::Acquire)
    }

    fn finish(&self) {
        if !self.finished.swap(true, Ordering::AcqRel) {
            self.finished_notify.notify_waiters();
        }
    }

    /// Resolves once the whole body has been handed upstream (the backend's response clock
    /// starts then, so a slow upload is never blamed on the backend).
    pub(crate) async fn sent(&self) {
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

/// How long and how slowly a client may send its request body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    /// Largest body, bytes.
    pub(crate) max: Option<u64>,
    /// Longest pause between pieces of the body.
    pub(crate) idle: Duration,
    /// Bytes per second the body must average once `grace` has passed (0 = no minimum):
    /// the body is cut when `now > start + grace + seen / min_rate` (Apache mod_reqtimeout's
    /// MinRate).
    pub(crate) min_rate: u64,
    /// Time before the minimum rate applies.
    pub(crate) grace: Duration,
    /// Longest time for the whole body.
    pub(crate) total: Option<Duration>,
}

/// Why a client's body was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Paused longer than `idle`.
    Idle = 1,
    /// Slower than `min_rate` after the grace period.
    Rate = 2,
    /// Longer than `total`.
    Total = 3,
}

/// State of a streamed body while it is read.
#[derive(Debug)]
pub struct StreamBody {
    slot: Arc<BodySlot>,
    inner: Option<Incoming>,
    seen: u64,
    limits: BodyLimits,
    /// First poll, and the last frame (tokio clock).
    started: Option<Instant>,
    last_frame: Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Request body sent upstream.
#[derive(Debug)]
pub enum ReqBody {
    /// No body.
    Empty,
    /// Fully buffered (replayable any number of times by cloning the `Bytes`).
    Full(Option<Bytes>),
    /// Streams the client body; takes it from the slot on the first poll.
    Stream(Box<StreamBody>),
}

impl ReqBody {
    /// Stream the client body held by `slot`, within `limits`.
    pub(crate) fn stream(slot: Arc<BodySlot>, limits: BodyLimits) -> ReqBody {
        ReqBody::Stream(Box::new(StreamBody {
            slot,
            inner: None,
            seen: 0,
            limits,
            started: None,
            last_frame: Instant::now(),
            timer: None,
        }))
    }
}

impl StreamBody {
    /// The earliest deadline now, and the reason it would cut.
    fn deadline(&self) -> (Instant, Cut) {
        let l = &self.limits;
        let mut d = (self.last_frame + l.idle, Cut::Idle);
        let start = self.started.unwrap_or(self.last_frame);
        if l.min_rate > 0 {
            let earned = Duration::from_secs_f64(self.seen as f64 / l.min_rate as f64);
            let rate = start + l.grace + earned;
            if rate < d.0 {
                d = (rate, Cut::Rate);
            }
        }
        if let Some(t) = l.total {
            if start + t < d.0 {
                d = (start + t, Cut::Total);
            }
        }
        d
    }

    fn cut(&self, why: Cut) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.slot.cut.store(why as u8, Ordering::Release);
        Poll::Ready(Some(Err(Box::new(BodyTimeout))))
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.inner.is_none() {
            // Claim the body once; a later attempt must fail rather than send nothing.
            if self.slot.started.swap(true, Ordering::AcqRel) {
                return Poll::Ready(Some(Err(Box::new(AlreadyClaimed))));
            }
            self.inner = self
                .slot
                .body
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let now = Instant::now();
            self.started = Some(now);
            self.last_frame = now;
        }
        let Some(body) = self.inner.as_mut() else {
            self.slot.finish();
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        let (deadline, why) = self.deadline();
        if polled.is_pending() {
            let t = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if t.deadline() != deadline {
                t.as_mut().reset(deadline);
            }
            if t.as_mut().poll(cx).is_ready() {
                return self.cut(why);
            }
            return Poll::Pending;
        }
        if why != Cut::Idle && Instant::now() > deadline {
            // Trickling: every piece arrives within the pause limit, but too slowly overall.
            return self.cut(why);
        }
        self.last_frame = Instant::now();
        self.frame(polled)
    }

    fn frame(
        &mut self,
        polled: Poll<Option<Result<Frame<Bytes>, hyper::Error>>>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.seen += d.len() as u64;
                    if self.limits.max.is_some_and(|l| self.seen > l) {
                        self.slot.over_limit.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(OverLimit))));
                    }
                }
                if self.inner.as_ref().is_some_and(|b| b.is_end_stream()) {
                    self.slot.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.slot.client_failed.store(true, Ordering::Release);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                self.slot.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
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
            ReqBody::Stream(s) => s.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream(s) => match &s.inner {
                Some(b) => b.is_end_stream(),
                None => s.slot.hint.exact() == Some(0),
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Stream(s) => match &s.inner {
                Some(b) => b.size_hint(),
                None => s.slot.hint,
            },
        }
    }
}

/// Read a whole client body known to be at most `cap` bytes (a replayable copy).
pub(crate) async fn buffer_small(body: Incoming, cap: u64) -> Result<Bytes, BoxError> {
    let limited = http_body_util::Limited::new(body, cap as usize);
    Ok(limited.collect().await?.to_bytes())
}
